-- Acknowledge relayed outbox entries and delete them (the stream holds only
-- what is still to be relayed).
-- KEYS[1]  outbox stream
-- ARGV[1]  consumer group
-- ARGV[2..] entry ids
-- Returns the number of entries deleted.
local ids = {}
for i = 2, #ARGV do
  ids[#ids + 1] = ARGV[i]
end
if #ids == 0 then
  return 0
end
redis.call('XACK', KEYS[1], ARGV[1], unpack(ids))
return redis.call('XDEL', KEYS[1], unpack(ids))
