-- take.lua: check a batch of counters and take them all, or none.
-- (common.lua is prepended.)
--
-- KEYS[1..n] counter keys; a fixed window's key already ends in its window
--            start, so a new window starts from an absent key.
-- KEYS[n+1]  the reservation record key, when a record is given (ARGV[5])
-- ARGV[1]    now, in milliseconds (the caller's clock, as window keys are)
-- ARGV[2]    1 = take all-or-nothing; 0 = give back (refund, never denies);
--            2 = count each whatever its limit (envoyproxy/ratelimit's
--            INCRBY: over says it did not fit, the count keeps it)
-- ARGV[3]    holder id of the hold ('' = none): slots are held under it
-- ARGV[4]    hold time to live in ms (slot deadline and record expiry)
-- ARGV[5]    the reservation record (opaque bytes); '' = hold slots only
--            (Redis Cluster: the record lives in another slot's step)
-- then 7 values per counter from ARGV[6 + 7*(i-1)], read by spec():
--   algorithm (0 fixed_window, 1 token_bucket, 2 slots), amount, ticks,
--   tick_ms, cost (0 checks only), enforce ('1', or '0' for shadow),
--   anchor (window start ms, or the current tick)
--
-- Returns { admitted, then per counter: over, remaining, reset_after_ms,
--           retry_after_ms }.
--
-- Atomic because Redis runs a script to completion before any other
-- command: no client sees a batch half taken. A later counter of the batch
-- sees what an earlier one wrote (`pending`), as in the memory store.

local now = tonumber(ARGV[1])
local taking = ARGV[2] == '1'
local counting = ARGV[2] == '2'
local holder = ARGV[3]
local hold_ttl = tonumber(ARGV[4])
local record = ARGV[5]
local n = #KEYS
if record ~= '' then n = n - 1 end

local pending = {}
local writes = {}
local out = {}
local admitted = 1

for i = 1, n do
  local s = spec(5 + 7 * (i - 1))
  local key = KEYS[i]
  local p = pending[key]
  local over, remaining, reset, retry

  if s.algorithm == 0 then
    local count
    if p then count = p.count else count = get_window(key) or 0 end
    if taking then
      over = count + s.cost > s.amount
      if not over then count = count + s.cost end
    elseif counting then
      over = count + s.cost > s.amount
      count = count + s.cost
    else
      over = false
      count = count - s.cost
      if count < 0 then count = 0 end
    end
    remaining, reset = window_answer(s, now, count)
    retry = reset
    pending[key] = { count = count }
    writes[#writes + 1] = function() set_window(key, count, reset) end
  elseif s.algorithm == 1 then
    local level, tick
    if p then level, tick = p.level, p.tick else level, tick = get_bucket(key) end
    level, tick = refill(s, level, tick)
    local need = s.cost * s.ticks
    if taking then
      over = level < need
      if not over then level = level - need end
    elseif counting then
      over = level < need
      level = level - need
    else
      over = false
      need = 0
      level = level + s.cost * s.ticks
      if level > s.amount * s.ticks then level = s.amount * s.ticks end
    end
    if counting then need = 0 end
    remaining, reset, retry = bucket_answer(s, now, level, tick, need)
    if counting and over then retry = reset end
    pending[key] = { level = level, tick = tick }
    local l, t, r = level, tick, reset
    writes[#writes + 1] = function() set_bucket(key, l, t, r) end
  else
    local held
    if p then held = p.held else
      redis.call('ZREMRANGEBYSCORE', key, '-inf', now)
      held = redis.call('ZCARD', key)
    end
    local cost = s.cost
    if holder == '' or not taking then cost = 0 end
    over = (taking or counting) and held + cost > s.amount
    if not over and cost > 0 then
      held = held + 1
      writes[#writes + 1] = function()
        redis.call('ZADD', key, now + hold_ttl, holder)
        if redis.call('PTTL', key) < hold_ttl then redis.call('PEXPIRE', key, hold_ttl) end
      end
    end
    remaining = s.amount - held
    if remaining < 0 then remaining = 0 end
    reset = 0
    retry = 0
    if over then retry = 1000 end
    pending[key] = { held = held }
  end

  if over and s.flag == '1' then admitted = 0 end
  local o = 0
  if over then o = 1 end
  out[#out + 1] = o
  out[#out + 1] = remaining
  out[#out + 1] = reset
  out[#out + 1] = retry
end

if admitted == 1 or not taking then
  for _, w in ipairs(writes) do w() end
  if record ~= '' and taking then
    redis.call('SET', KEYS[n + 1], record, 'PX', hold_ttl)
  end
end

table.insert(out, 1, admitted)
return out
