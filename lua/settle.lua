-- settle.lua: settle a reservation once. (common.lua is prepended.)
--
-- KEYS[1]    the reservation record key (any key of this slot when unchecked)
-- KEYS[2..]  one counter key per operation: for a refund, the key the
--            tokens were taken from (window included); for a charge, the
--            counter's current key; for a release, the slots key
-- ARGV[1]    now, in milliseconds
-- ARGV[2]    holder id (the slot member to release)
-- ARGV[3]    '1' = apply only if the record exists (and delete it);
--            '0' = apply unconditionally (Redis Cluster: a later slot's step
--            after the checked one, or the rollback of a denied request)
-- then 7 values per operation from ARGV[4 + 7*(i-1)], read by spec(), with
-- `flag` = the operation: 'refund', 'charge' or 'release'
--
-- Returns 1 if the record existed and the operations were applied, 0 if it
-- was already gone (settled before, or expired): settle is idempotent
-- because deleting the record and applying the operations are one atomic
-- step.

if ARGV[3] == '1' and redis.call('DEL', KEYS[1]) == 0 then return 0 end
local now = tonumber(ARGV[1])
local holder = ARGV[2]

for i = 2, #KEYS do
  local s = spec(3 + 7 * (i - 2))
  local key = KEYS[i]
  if s.flag == 'release' then
    redis.call('ZREM', key, holder)
  elseif s.algorithm == 0 then
    local count = get_window(key)
    if s.flag == 'charge' then
      count = (count or 0) + s.cost
    elseif count then
      -- A refund into a window that ended (key gone) is dropped.
      count = count - s.cost
      if count < 0 then count = 0 end
    end
    if count then
      local _, reset = window_answer(s, now, count)
      set_window(key, count, reset)
    end
  else
    local level, tick = get_bucket(key)
    local absent = level == nil
    level, tick = refill(s, level, tick)
    if s.flag == 'charge' then
      level = level - s.cost * s.ticks
    elseif not absent then
      level = level + s.cost * s.ticks
      if level > s.amount * s.ticks then level = s.amount * s.ticks end
    end
    if s.flag == 'charge' or not absent then
      local _, reset = bucket_answer(s, now, level, tick, 0)
      set_bucket(key, level, tick, reset)
    end
  end
end
return 1
