-- Complete an attempt: store its response and append its events to the outbox,
-- atomically, only while the attempt still holds the claim.
-- KEYS[1]  idempotency key
-- KEYS[2]  outbox stream (same hash slot as KEYS[1])
-- ARGV[1]  token of the attempt
-- ARGV[2]  encoded response
-- ARGV[3]  retention in milliseconds
-- ARGV[4]  number of events n
-- ARGV[5..] n events, 7 fields each: name, payload, content_type, message_id,
--           correlation_id, causation_id ('' when none), headers (MessagePack)
-- Returns 1 when stored, 0 when the claim is no longer this attempt's.
if redis.call('GET', KEYS[1]) ~= 'p:' .. ARGV[1] then
  return 0
end
redis.call('SET', KEYS[1], 'c:' .. ARGV[2], 'PX', ARGV[3])
local n = tonumber(ARGV[4])
for i = 0, n - 1 do
  local b = 5 + i * 7
  redis.call('XADD', KEYS[2], '*',
    'name', ARGV[b], 'payload', ARGV[b + 1], 'content_type', ARGV[b + 2],
    'message_id', ARGV[b + 3], 'correlation_id', ARGV[b + 4],
    'causation_id', ARGV[b + 5], 'headers', ARGV[b + 6])
end
return 1
