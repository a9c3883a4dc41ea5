-- Move an outbox entry that cannot be relayed to the dead-letter stream.
-- KEYS[1]  outbox stream
-- KEYS[2]  dead-letter stream (same hash slot)
-- ARGV[1]  consumer group
-- ARGV[2]  entry id
-- ARGV[3]  reason
-- ARGV[4]  about how many entries the dead-letter stream keeps
-- Returns 1 when moved, 0 when the entry no longer exists.
local entries = redis.call('XRANGE', KEYS[1], ARGV[2], ARGV[2])
if #entries == 0 then
  redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
  return 0
end
local fields = entries[1][2]
fields[#fields + 1] = 'reason'
fields[#fields + 1] = ARGV[3]
fields[#fields + 1] = 'entry_id'
fields[#fields + 1] = ARGV[2]
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[4], '*', unpack(fields))
redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
redis.call('XDEL', KEYS[1], ARGV[2])
return 1
