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
-- Returns 'ok', 'lost' (the claim is not this attempt's), 'cond:<key index>'
-- or 'type:<key index>' (a write that does not fit what its key holds: a
-- hash write to a list, an increment of what is not an integer; nothing is
-- written).
--
-- Redis keeps what a script wrote before an error, so no write may fail
-- halfway: the writes after the first are checked against the types (and
-- the numbers they increment) before anything is written, and the first is
-- made with pcall (nothing precedes it). A unit of one write, the common
-- case, costs no check.
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
local wants = {
  set = 'any', del = 'any', hset = 'hash', hdel = 'hash', hincr = 'hash',
  incr = 'string', rpush = 'list',
}
local function integer(v)
  return v == false or (#v <= 20 and string.match(v, '^%-?%d+$') ~= nil)
end
-- The type a write leaves its key with.
local function leaves(op)
  if op == 'del' then
    return 'none'
  elseif wants[op] == 'any' then
    return 'string'
  end
  return wants[op]
end
-- The type of each key once the writes before the one checked are made.
local after = {}
if w > 0 then
  after[KEYS[tonumber(ARGV[at + 1])]] = leaves(ARGV[at])
end
for i = 1, w - 1 do
  local b = at + i * 4
  local op, index, x = ARGV[b], ARGV[b + 1], ARGV[b + 2]
  local key = KEYS[tonumber(index)]
  local now = after[key]
  if now == nil then
    now = redis.call('TYPE', key)['ok']
    if op == 'incr' and now == 'string' and not integer(redis.call('GET', key)) then
      return 'type:' .. index
    end
    if op == 'hincr' and now == 'hash' and not integer(redis.call('HGET', key, x)) then
      return 'type:' .. index
    end
  end
  if wants[op] ~= 'any' and now ~= 'none' and now ~= wants[op] then
    return 'type:' .. index
  end
  after[key] = leaves(op)
end
for i = 0, w - 1 do
  local b = at + i * 4
  local op, key, x, y = ARGV[b], KEYS[tonumber(ARGV[b + 1])], ARGV[b + 2], ARGV[b + 3]
  local call = redis.call
  if i == 0 then
    call = redis.pcall
  end
  local r
  if op == 'set' then
    r = call('SET', key, x)
  elseif op == 'del' then
    r = call('DEL', key)
  elseif op == 'hset' then
    r = call('HSET', key, x, y)
  elseif op == 'hdel' then
    r = call('HDEL', key, x)
  elseif op == 'incr' then
    r = call('INCRBY', key, x)
  elseif op == 'hincr' then
    r = call('HINCRBY', key, x, y)
  elseif op == 'rpush' then
    r = call('RPUSH', key, x)
  end
  if type(r) == 'table' and r.err then
    return 'type:' .. ARGV[b + 1]
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
