-- common.lua: helpers shared by take.lua and settle.lua (the Rust side
-- prepends this file to each). A transcription of rls/src/store/arith.rs:
-- keep the two in step. All values are integers below 2^53, exact in Lua's
-- doubles; the divisions are corrected so floor/ceil never suffer from
-- rounding.

local floor = math.floor

local function div_floor(a, b)
  local q = floor(a / b)
  if q * b > a then q = q - 1 end
  if (q + 1) * b <= a then q = q + 1 end
  return q
end

local function div_ceil(a, b)
  local q = div_floor(a, b)
  if q * b < a then q = q + 1 end
  return q
end

-- Reads the 7 per-counter values that start at ARGV[base + 1].
local function spec(base)
  return {
    algorithm = tonumber(ARGV[base + 1]), -- 0 window, 1 bucket, 2 slots
    amount = tonumber(ARGV[base + 2]),
    ticks = tonumber(ARGV[base + 3]),
    tick_ms = tonumber(ARGV[base + 4]),
    cost = tonumber(ARGV[base + 5]),
    flag = ARGV[base + 6],
    anchor = tonumber(ARGV[base + 7]), -- window start ms, or current tick
  }
end

local function get_window(key)
  local raw = redis.call('GET', key)
  if not raw then return nil end
  return tonumber(raw)
end

-- Returns level, tick of a bucket, or nil if absent (= full).
local function get_bucket(key)
  local raw = redis.call('GET', key)
  if not raw then return nil end
  local level, tick = string.match(raw, '^(-?%d+):(%d+)$')
  if not level then return nil end
  return tonumber(level), tonumber(tick)
end

-- A clock that went backwards refills nothing and keeps the later tick;
-- the level is held to this capacity even in the same tick (a bucket left
-- by a larger limit, lowered by a reload, gives no more than the new one).
local function refill(s, level, tick)
  local cap = s.amount * s.ticks
  if level == nil then return cap, s.anchor end
  if tick < s.anchor then
    level = level + (s.anchor - tick) * s.amount
    tick = s.anchor
  end
  if level > cap then level = cap end
  return level, tick
end

local function time_to_level(s, now, level, want, tick)
  if level >= want then return 0 end
  local t = (tick + div_ceil(want - level, s.amount)) * s.tick_ms - now
  if t < 0 then t = 0 end
  return t
end

-- Answer of a window holding `count`: remaining, reset, ttl.
local function window_answer(s, now, count)
  local reset = s.anchor + s.ticks * s.tick_ms - now
  local remaining = s.amount - count
  if remaining < 0 then remaining = 0 end
  return remaining, reset
end

-- Answer of a bucket at `level`: remaining, reset (time to full), retry.
local function bucket_answer(s, now, level, tick, need)
  local cap = s.amount * s.ticks
  local reset = time_to_level(s, now, level, cap, tick)
  -- A cost above the whole capacity never fits: retry when full.
  local retry = time_to_level(s, now, level, math.min(need, cap), tick)
  local positive = level
  if positive < 0 then positive = 0 end
  return div_floor(positive, s.ticks), reset, retry
end

local function set_window(key, count, ttl)
  redis.call('SET', key, string.format('%d', count), 'PX', ttl)
end

local function set_bucket(key, level, tick, ttl)
  if ttl < 1 then ttl = 1 end
  redis.call('SET', key, string.format('%d:%d', level, tick), 'PX', ttl)
end
