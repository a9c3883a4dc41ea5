-- Take a lock when it is free and hand out the next fencing token.
-- KEYS[1]  lock key
-- KEYS[2]  fence counter (same hash slot)
-- ARGV[1]  token of the new holder
-- ARGV[2]  time to live in milliseconds
-- Returns the new fence, or false when someone holds the lock. The counter
-- moves only on success, so it always holds the latest term's fence: a message
-- carrying a lower one comes from a leader whose term is over.
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return redis.call('INCR', KEYS[2])
end
return false
