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
-- the numbers they increment), as the writes before them leave them, before
-- anything is written; the first is made with pcall (nothing precedes it),
-- and only an error about its value becomes 'type:'. A unit of one write,
-- the common case, costs no check.
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
-- An integer value whose digits are not known (one an increment left).
local INT = {}
-- Whether `v` is an integer as Redis reads one: '0', or an optional '-' and
-- digits without a leading zero, within 64 bits; absent (false) is 0.
local function integer(v)
  if v == false or v == INT then
    return true
  end
  if v ~= '0' and not string.match(v, '^%-?[1-9]%d*$') then
    return false
  end
  local digits = string.gsub(v, '^%-', '')
  if #digits ~= 19 then
    return #digits < 19
  end
  if string.sub(v, 1, 1) == '-' then
    return digits <= '9223372036854775808'
  end
  return digits <= '9223372036854775807'
end
-- Whether adding `by` to `v` stays within 64 bits (loosely, with doubles:
-- a sum near the edge is refused; an unknown integer is taken to fit).
local function fits(v, by)
  if v == INT then
    return true
  end
  local sum = tonumber(v or '0') + tonumber(by)
  return sum > -9.2e18 and sum < 9.2e18
end
-- What the writes before the one checked leave: each key's type, a plain
-- key's value, a hash field's value (nil: not known yet, read on demand).
local kinds, values, fields = {}, {}, {}
local function kind_of(key)
  if kinds[key] == nil then
    kinds[key] = redis.call('TYPE', key)['ok']
  end
  return kinds[key]
end
local function value_of(key)
  if values[key] == nil then
    values[key] = redis.call('GET', key)
  end
  return values[key]
end
local function field_of(key, field)
  local k = key .. '\0' .. field
  if fields[k] == nil then
    fields[k] = redis.call('HGET', key, field)
  end
  return fields[k]
end
-- Records what write `op` leaves (its checks passed, or it is the first).
local function made(op, key, x, y)
  if op == 'set' then
    kinds[key], values[key] = 'string', x
  elseif op == 'del' then
    kinds[key], values[key] = 'none', false
  elseif op == 'hset' then
    kinds[key], fields[key .. '\0' .. x] = 'hash', y
  elseif op == 'hdel' then
    -- The last field gone, the key is gone: its type is read again if needed.
    kinds[key], fields[key .. '\0' .. x] = nil, false
  elseif op == 'incr' then
    kinds[key], values[key] = 'string', INT
  elseif op == 'hincr' then
    kinds[key], fields[key .. '\0' .. x] = 'hash', INT
  elseif op == 'rpush' then
    kinds[key] = 'list'
  end
end
-- Checks the writes after the first before any is made (see above).
for i = 0, w - 1 do
  local b = at + i * 4
  local op, index, x, y = ARGV[b], ARGV[b + 1], ARGV[b + 2], ARGV[b + 3]
  local key = KEYS[tonumber(index)]
  if i > 0 then
    local want = wants[op]
    local kind = kind_of(key)
    if want ~= 'any' and kind ~= 'none' and kind ~= want then
      return 'type:' .. index
    end
    if op == 'incr' then
      local v = value_of(key)
      if not integer(v) or not fits(v, x) then
        return 'type:' .. index
      end
    elseif op == 'hincr' then
      local v = field_of(key, x)
      if not integer(v) or not fits(v, y) then
        return 'type:' .. index
      end
    end
  end
  made(op, key, x, y)
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
    -- Only what the value explains is a wrong type; anything else (out of
    -- memory, a replica that was the primary) stays the error it is.
    local e = r.err
    if string.find(e, 'WRONGTYPE', 1, true) or string.find(e, 'not an integer', 1, true)
        or string.find(e, 'overflow', 1, true) then
      return 'type:' .. ARGV[b + 1]
    end
    return redis.error_reply(e)
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
