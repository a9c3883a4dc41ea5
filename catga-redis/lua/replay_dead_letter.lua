-- Move a dead-lettered outbox entry back to its outbox stream, as it was
-- stored (without the dead-letter fields), so the relay publishes it again.
-- KEYS[1]  dead-letter stream
-- KEYS[2]  outbox stream (same hash slot)
-- ARGV[1]  dead-letter entry id
-- Returns 1 when moved, 0 when there is no such entry.
local entries = redis.call('XRANGE', KEYS[1], ARGV[1], ARGV[1])
if #entries == 0 then
  return 0
end
local fields = entries[1][2]
local out = {}
for i = 1, #fields, 2 do
  local k = fields[i]
  if k ~= 'reason' and k ~= 'entry_id' then
    out[#out + 1] = k
    out[#out + 1] = fields[i + 1]
  end
end
redis.call('XADD', KEYS[2], '*', unpack(out))
redis.call('XDEL', KEYS[1], ARGV[1])
return 1
