-- Save a saga state with optimistic versioning and fencing; a finished saga
-- leaves the unfinished set and expires after the retention, in the same step;
-- a saga saved unfinished (a failed one an operator resumed) is listed again
-- and kept. The failed set lists the definition's sagas that ended Failed.
-- The hash records where the saga is listed ('done', 'failed'), so that a
-- save touches the sets and the expiry only when that changes: a step's save
-- of a running saga is one read and one write.
-- KEYS[1]  saga hash (fields: state, version, fence, done, failed)
-- KEYS[2]  unfinished set of its definition in this shard (same hash slot)
-- KEYS[3]  failed set of its definition in this shard (same hash slot)
-- ARGV[1]  the version the writer read (the stored version must equal it)
-- ARGV[2]  the new version
-- ARGV[3]  the writer's fencing token (must not be below the stored one)
-- ARGV[4]  the encoded state
-- ARGV[5]  saga id
-- ARGV[6]  retention of a finished saga in milliseconds, or 0 while unfinished
-- ARGV[7]  1 when the saga ends Failed, else 0
-- Returns 'ok', 'missing', 'version' or 'fence'.
local stored = redis.call('HMGET', KEYS[1], 'version', 'fence', 'done', 'failed')
if not stored[1] then
  return 'missing'
end
if tonumber(stored[1]) ~= tonumber(ARGV[1]) then
  return 'version'
end
if tonumber(stored[2] or '0') > tonumber(ARGV[3]) then
  return 'fence'
end
local finished = tonumber(ARGV[6]) > 0
local done = finished and '1' or '0'
redis.call('HSET', KEYS[1], 'state', ARGV[4], 'version', ARGV[2], 'fence', ARGV[3],
  'done', done, 'failed', ARGV[7])
-- A record written before these fields existed (done = false) takes every
-- branch, as all saves did then.
if stored[3] ~= done then
  if finished then
    redis.call('SREM', KEYS[2], ARGV[5])
    redis.call('PEXPIRE', KEYS[1], ARGV[6])
  else
    redis.call('SADD', KEYS[2], ARGV[5])
    redis.call('PERSIST', KEYS[1])
  end
end
if stored[4] ~= ARGV[7] then
  if ARGV[7] == '1' then
    redis.call('SADD', KEYS[3], ARGV[5])
  else
    redis.call('SREM', KEYS[3], ARGV[5])
  end
end
return 'ok'
