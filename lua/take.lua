-- take.lua: check a batch of counters and take them all, or none.
--
-- KEYS[i]   counter key of hit i; a fixed window's key already ends in its
--           window start, so a new window starts from an absent key.
-- ARGV[1]   now, in milliseconds (the caller's clock, as window keys are)
-- ARGV[2]   1 = take all-or-nothing; 0 = give back (refund, never denies)
-- then 7 values per hit i, from ARGV[3 + 7*(i-1)]:
--   algorithm   0 = fixed_window, 1 = token_bucket
--   amount      the limit
--   ticks       refill ticks per period (token_bucket)
--   tick_ms     milliseconds per tick; period = ticks * tick_ms
--   cost        units to take or give back; 0 checks only
--   enforce     1, or 0 for a shadow rule (counted, never denies)
--   anchor      window start in ms (fixed_window) or the current tick
--               (token_bucket), computed by the caller
--
-- Returns { admitted, then per hit: over, remaining, reset_after_ms,
--           retry_after_ms }.
--
-- Atomic because Redis runs a script to completion before any other
-- command: no other client sees a batch half taken. This is a line-by-line
-- transcription of rls/src/store/arith.rs; keep the two in step. All values
-- are integers below 2^53, exact in Lua's doubles; the divisions are
-- corrected so floor/ceil never suffer from rounding.

local now = tonumber(ARGV[1])
local taking = ARGV[2] == '1'
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

-- State written earlier in this batch, so a later hit sees it.
local pending = {}

local function load(key, algorithm)
  local p = pending[key]
  if p then return p end
  local raw = redis.call('GET', key)
  if not raw then return nil end
  if algorithm == 0 then
    return { count = tonumber(raw) }
  end
  local level, tick = string.match(raw, '^(-?%d+):(%d+)$')
  if not level then return nil end
  return { level = tonumber(level), tick = tonumber(tick) }
end

local function time_to_level(amount, tick_ms, level, want, tick)
  if level >= want then return 0 end
  local ticks = div_ceil(want - level, amount)
  local t = (tick + ticks) * tick_ms - now
  if t < 0 then t = 0 end
  return t
end

local admitted = 1
local out = {}
local writes = {}

for i = 1, #KEYS do
  local base = 2 + 7 * (i - 1)
  local algorithm = tonumber(ARGV[base + 1])
  local amount = tonumber(ARGV[base + 2])
  local ticks = tonumber(ARGV[base + 3])
  local tick_ms = tonumber(ARGV[base + 4])
  local cost = tonumber(ARGV[base + 5])
  local enforce = ARGV[base + 6] == '1'
  local anchor = tonumber(ARGV[base + 7])
  local key = KEYS[i]
  local state = load(key, algorithm)
  local over, remaining, reset, retry, ttl, value, new_state

  if algorithm == 0 then
    local count = 0
    if state then count = state.count end
    reset = anchor + ticks * tick_ms - now
    if taking then
      over = count + cost > amount
      if not over then count = count + cost end
    else
      over = false
      count = count - cost
      if count < 0 then count = 0 end
    end
    remaining = amount - count
    if remaining < 0 then remaining = 0 end
    retry = reset
    ttl = reset
    new_state = { count = count }
    value = string.format('%d', count)
  else
    local cap = amount * ticks
    local level, tick = cap, anchor
    if state then
      level, tick = state.level, state.tick
      if tick < anchor then
        level = level + (anchor - tick) * amount
        if level > cap then level = cap end
        tick = anchor
      end
    end
    local need = cost * ticks
    if taking then
      over = level < need
      if not over then level = level - need end
    else
      over = false
      need = 0
      level = level + cost * ticks
      if level > cap then level = cap end
    end
    reset = time_to_level(amount, tick_ms, level, cap, tick)
    if need > cap then
      retry = reset
    else
      retry = time_to_level(amount, tick_ms, level, need, tick)
    end
    local positive = level
    if positive < 0 then positive = 0 end
    remaining = div_floor(positive, ticks)
    ttl = reset
    if ttl < 1 then ttl = 1 end
    new_state = { level = level, tick = tick }
    value = string.format('%d:%d', level, tick)
  end

  if over and enforce then admitted = 0 end
  pending[key] = new_state
  writes[#writes + 1] = { key, value, ttl }
  local o = 0
  if over then o = 1 end
  out[#out + 1] = o
  out[#out + 1] = remaining
  out[#out + 1] = reset
  out[#out + 1] = retry
end

if admitted == 1 or not taking then
  for _, w in ipairs(writes) do
    redis.call('SET', w[1], w[2], 'PX', w[3])
  end
end

table.insert(out, 1, admitted)
return out
