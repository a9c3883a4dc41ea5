-- Remove the outbox consumers of relays that stopped: idle longer than the
-- given time with nothing pending. Checked and removed in one step, so a
-- relay that wakes up and reads entries in between cannot have them dropped
-- with its consumer (entries no one could then reclaim).
-- KEYS[1]  outbox stream
-- ARGV[1]  consumer group
-- ARGV[2]  this relay's consumer (kept)
-- ARGV[3]  idle time in milliseconds past which a consumer is stale
-- Returns the names of the consumers removed.
local removed = {}
for _, c in ipairs(redis.call('XINFO', 'CONSUMERS', KEYS[1], ARGV[1])) do
  local f = {}
  for i = 1, #c, 2 do
    f[c[i]] = c[i + 1]
  end
  if f['name'] ~= ARGV[2] and f['pending'] == 0 and f['idle'] > tonumber(ARGV[3]) then
    redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], f['name'])
    removed[#removed + 1] = f['name']
  end
end
return removed
