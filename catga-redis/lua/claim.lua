-- Claim an idempotency key for one attempt.
-- KEYS[1]  idempotency key
-- ARGV[1]  token of this attempt
-- ARGV[2]  lease in milliseconds
-- Returns {'acquired'}, {'in_progress'}, {'completed', response} or {'corrupt'}.
-- Stored values: 'p:<token>' while in progress, 'c:<response bytes>' when completed.
local v = redis.call('GET', KEYS[1])
if not v then
  redis.call('SET', KEYS[1], 'p:' .. ARGV[1], 'PX', ARGV[2])
  return {'acquired'}
end
local tag = string.sub(v, 1, 2)
if tag == 'p:' then
  return {'in_progress'}
end
if tag == 'c:' then
  return {'completed', string.sub(v, 3)}
end
return {'corrupt'}
