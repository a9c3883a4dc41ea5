-- Release a claim after a failed attempt, so the next attempt runs again.
-- KEYS[1]  idempotency key
-- ARGV[1]  token of the attempt
-- Returns 1 when released, 0 when the claim was not this attempt's.
if redis.call('GET', KEYS[1]) == 'p:' .. ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
