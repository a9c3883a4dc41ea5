-- Take a lock when it is free and hand out the next fencing token.
-- KEYS[1]  lock key
-- KEYS[2]  fence counter (same hash slot)
-- ARGV[1]  token of the new holder
-- ARGV[2]  time to live in milliseconds
-- Returns the new fence, or false when someone holds the lock. The counter
-- moves only on success, so it always holds the latest term's fence: a message
-- carrying a lower one comes from a leader whose term is over.
--
-- The fence is at least Redis's clock in microseconds: should the counter be
-- lost (a restart without persistence, a replica promoted without the last
-- writes, an eviction), the next fence is still above every fence handed out
-- before, and the messages of the leaders of those terms stay refused.
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  local fence = redis.call('INCR', KEYS[2])
  local now = redis.call('TIME')
  local floor = tonumber(now[1]) * 1000000 + tonumber(now[2])
  if fence < floor then
    redis.call('SET', KEYS[2], floor)
    fence = floor
  end
  return fence
end
return false
