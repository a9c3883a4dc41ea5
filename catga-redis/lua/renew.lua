-- Extend a claim while its attempt's handler runs.
-- KEYS[1]  idempotency key
-- ARGV[1]  token of the attempt
-- ARGV[2]  lease in milliseconds
-- Returns 1 when renewed, 0 when the claim is no longer this attempt's.
if redis.call('GET', KEYS[1]) == 'p:' .. ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
