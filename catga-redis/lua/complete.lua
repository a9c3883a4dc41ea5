-- Complete an attempt, atomically and only while the attempt still holds the
-- claim and every condition of its unit of work holds: apply the unit of
-- work's writes, store the response, append the events to the outbox.
-- KEYS[1]  idempotency key
-- KEYS[2]  outbox stream (same hash slot as KEYS[1])
-- KEYS[3..] the unit of work's keys (same hash slot)
-- ARGV[1]  token of the attempt
-- ARGV[2]  encoded response
-- ARGV[3]  retention in milliseconds
-- ARGV[4]  number of events n (absent: 0, and nothing follows)
-- then     n events, 7 fields each: name, payload, content_type, message_id,
--          correlation_id, causation_id ('' when none), headers (MessagePack)
-- then     number of conditions c (absent: 0, and nothing follows), and c
--          conditions of 4 fields each: key index (into KEYS), field ('' for a
--          plain key), whether a value is expected ('1') or the key must be
--          absent ('0'), the value
-- then     number of writes w (absent: 0), and w writes of 4 fields each:
--          operation (set, del, hset, hdel, incr, hincr, rpush), key index, two
--          arguments
-- Returns 'ok', 'lost' (the claim is not this attempt's) or 'cond:<key index>'.
if redis.call('GET', KEYS[1]) ~= 'p:' .. ARGV[1] then
  return 'lost'
end
local n = tonumber(ARGV[4] or '0')
local at = 5 + n * 7
local c = tonumber(ARGV[at] or '0')
at = at + 1
for i = 0, c - 1 do
  local b = at + i * 4
  local key = KEYS[tonumber(ARGV[b])]
  local current
  if ARGV[b + 1] == '' then
    current = redis.call('GET', key)
  else
    current = redis.call('HGET', key, ARGV[b + 1])
  end
  local ok
  if ARGV[b + 2] == '1' then
    ok = current == ARGV[b + 3]
  else
    ok = current == false
  end
  if not ok then
    return 'cond:' .. ARGV[b]
  end
end
at = at + c * 4
local w = tonumber(ARGV[at] or '0')
at = at + 1
for i = 0, w - 1 do
  local b = at + i * 4
  local op, key, x, y = ARGV[b], KEYS[tonumber(ARGV[b + 1])], ARGV[b + 2], ARGV[b + 3]
  if op == 'set' then
    redis.call('SET', key, x)
  elseif op == 'del' then
    redis.call('DEL', key)
  elseif op == 'hset' then
    redis.call('HSET', key, x, y)
  elseif op == 'hdel' then
    redis.call('HDEL', key, x)
  elseif op == 'incr' then
    redis.call('INCRBY', key, x)
  elseif op == 'hincr' then
    redis.call('HINCRBY', key, x, y)
  elseif op == 'rpush' then
    redis.call('RPUSH', key, x)
  end
end
redis.call('SET', KEYS[1], 'c:' .. ARGV[2], 'PX', ARGV[3])
for i = 0, n - 1 do
  local b = 5 + i * 7
  redis.call('XADD', KEYS[2], '*',
    'name', ARGV[b], 'payload', ARGV[b + 1], 'content_type', ARGV[b + 2],
    'message_id', ARGV[b + 3], 'correlation_id', ARGV[b + 4],
    'causation_id', ARGV[b + 5], 'headers', ARGV[b + 6])
end
return 'ok'
