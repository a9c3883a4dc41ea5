-- Create a saga state unless one with this id exists.
-- KEYS[1]  saga hash
-- ARGV[1]  encoded state
-- ARGV[2]  version (0)
-- ARGV[3]  fence (0)
-- Returns 1 when created, 0 when it existed.
if redis.call('EXISTS', KEYS[1]) == 1 then
  return 0
end
redis.call('HSET', KEYS[1], 'state', ARGV[1], 'version', ARGV[2], 'fence', ARGV[3])
return 1
