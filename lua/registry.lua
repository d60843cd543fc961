-- registry.lua: the instances sharing this store. Each one beats here
-- every few seconds; every beat also forgets the instances silent for
-- longer than the eviction time, so a dead instance leaves the count
-- within that time of its last beat whoever is alive, and an instance
-- evicted while alive (a long pause) is back at its next beat.
--
-- KEYS[1]  the registry hash: instance id -> its last beat (ms)
-- ARGV[1]  now, in milliseconds (the caller's clock)
-- ARGV[2]  this instance's id
-- ARGV[3]  evict after, in milliseconds
-- ARGV[4]  'beat', or 'leave' (graceful shutdown)
--
-- Returns how many instances are live after the beat (or the leave).
-- Atomic: the count and the evictions are one step.

local now = tonumber(ARGV[1])
local me = ARGV[2]
local evict = tonumber(ARGV[3])

if ARGV[4] == 'leave' then
  redis.call('HDEL', KEYS[1], me)
else
  redis.call('HSET', KEYS[1], me, now)
end
local all = redis.call('HGETALL', KEYS[1])
local live = 0
for i = 1, #all, 2 do
  if tonumber(all[i + 1]) + evict < now then
    redis.call('HDEL', KEYS[1], all[i])
  else
    live = live + 1
  end
end
if live > 0 then redis.call('PEXPIRE', KEYS[1], evict * 4) end
return live
