-- Complete an attempt that holds no events and no staged writes: store its
-- response, only while the attempt still holds the claim. The common case of
-- complete.lua, kept lean (Redis runs a short script with fewer arguments
-- measurably faster, and this one runs once per idempotent message).
-- KEYS[1]  idempotency key
-- ARGV[1]  the claim's value: 'p:' .. token of the attempt
-- ARGV[2]  the record to store: 'c:' .. encoded response
-- ARGV[3]  retention in milliseconds
-- Returns 'ok', or 'lost' (the claim is not this attempt's).
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return 'lost'
end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
return 'ok'
