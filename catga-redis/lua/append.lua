-- Append events to an outbox stream.
-- KEYS[1]  outbox stream
-- ARGV[1]  number of events n
-- ARGV[2..] n events, 7 fields each (see complete.lua)
-- Returns n.
local n = tonumber(ARGV[1])
for i = 0, n - 1 do
  local b = 2 + i * 7
  redis.call('XADD', KEYS[1], '*',
    'name', ARGV[b], 'payload', ARGV[b + 1], 'content_type', ARGV[b + 2],
    'message_id', ARGV[b + 3], 'correlation_id', ARGV[b + 4],
    'causation_id', ARGV[b + 5], 'headers', ARGV[b + 6])
end
return n
