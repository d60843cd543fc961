-- lease.lua: grant one instance a slice of a counter for its lease.
-- (common.lua is prepended.) A transcription of `grant` in
-- rls/src/store/arith.rs.
--
-- KEYS[1]      the counter key (a fixed window's key ends in its window start)
-- ARGV[1]      now, in milliseconds (the caller's clock, as window keys are)
-- ARGV[2]      unit: one request's cost; a slice is whole multiples of it
-- ARGV[3]      want: the most to grant
-- ARGV[4]      instances sharing the store (the fair-share divisor)
-- ARGV[5..11]  the counter's 7 values, read by spec(4) (cost and flag unused)
--
-- Returns { granted, remaining, reset_after_ms, retry_after_ms }: granted
-- is at most floor(remaining / unit / instances) units, 0 when too little
-- is left to lease (the caller then decides in take.lua, one request at a
-- time).
--
-- Atomic because Redis runs a script to completion before any other
-- command: the slice is taken from the counter as it is granted, so two
-- instances can never be granted the same capacity.

local now = tonumber(ARGV[1])
local unit = tonumber(ARGV[2])
if unit < 1 then unit = 1 end
local want = tonumber(ARGV[3])
local instances = tonumber(ARGV[4])
if instances < 1 then instances = 1 end
local s = spec(4)
local key = KEYS[1]

local function fair(left)
  local units = div_floor(want, unit)
  local share = div_floor(div_floor(left, unit), instances)
  if share < units then units = share end
  return units * unit
end

if s.algorithm == 0 then
  local count = get_window(key) or 0
  local left = s.amount - count
  if left < 0 then left = 0 end
  local slice = fair(left)
  count = count + slice
  local remaining, reset = window_answer(s, now, count)
  if slice > 0 then set_window(key, count, reset) end
  return { slice, remaining, reset, reset }
end

local level, tick = get_bucket(key)
level, tick = refill(s, level, tick)
local positive = level
if positive < 0 then positive = 0 end
local slice = fair(div_floor(positive, s.ticks))
level = level - slice * s.ticks
local remaining, reset, retry = bucket_answer(s, now, level, tick, 0)
if slice > 0 then set_bucket(key, level, tick, reset) end
return { slice, remaining, reset, retry }
