-- Take a lock when free and hand out the next fencing token.
-- KEYS[1]  lock key
-- KEYS[2]  fencing counter (same hash slot)
-- ARGV[1]  random token of the new holder
-- ARGV[2]  time to live in milliseconds
-- Returns the fencing token, or nil when someone holds the lock.
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return redis.call('INCR', KEYS[2])
end
return false
