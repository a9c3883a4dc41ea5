-- Release a lock if the caller still holds it.
-- KEYS[1]  lock key
-- ARGV[1]  token of the holder
-- Returns 1 when released, 0 otherwise.
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
