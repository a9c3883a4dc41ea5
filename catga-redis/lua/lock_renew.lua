-- Extend a lock's lease if the caller still holds it.
-- KEYS[1]  lock key
-- ARGV[1]  token of the holder
-- ARGV[2]  new time to live in milliseconds
-- Returns 1 when renewed, 0 otherwise.
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
