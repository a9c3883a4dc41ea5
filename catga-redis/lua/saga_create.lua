-- Create a saga state and list it as unfinished, in one step, unless a saga
-- with this id exists (so a retried start neither overwrites nor re-lists it).
-- KEYS[1]  saga hash (listed unfinished, not failed: see saga_save.lua)
-- KEYS[2]  unfinished set of its definition in this shard (same hash slot)
-- ARGV[1]  encoded state
-- ARGV[2]  version (0)
-- ARGV[3]  fence (0)
-- ARGV[4]  saga id
-- Returns 1 when created, 0 when it existed.
if redis.call('EXISTS', KEYS[1]) == 1 then
  return 0
end
redis.call('HSET', KEYS[1], 'state', ARGV[1], 'version', ARGV[2], 'fence', ARGV[3],
  'done', '0', 'failed', '0')
redis.call('SADD', KEYS[2], ARGV[4])
return 1
