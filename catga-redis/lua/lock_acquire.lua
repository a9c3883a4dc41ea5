-- Take a lock when it is free and hand out the next fencing token.
-- KEYS[1]  lock key
-- KEYS[2]  fence counter (same hash slot)
-- ARGV[1]  token of the new holder
-- ARGV[2]  time to live in milliseconds
-- Returns the new fence, or false when someone holds the lock. The counter
-- moves only on success, so it always holds the latest term's fence: a message
-- carrying a lower one comes from a leader whose term is over.
--
-- The fence is at least Redis's clock in microseconds: should the counter be
-- lost (a restart without persistence, a replica promoted without the last
-- writes, an eviction), the next fence is still above every fence handed out
-- before, and the messages of the leaders of those terms stay refused.
--
-- A holder asking again with its own token (its earlier answer was lost on
-- the way back) gets its term back: the lease is renewed and the fence is
-- that term's, instead of a lease's wait with no leader.
local function next_fence()
  local fence = redis.call('INCR', KEYS[2])
  local now = redis.call('TIME')
  local floor = tonumber(now[1]) * 1000000 + tonumber(now[2])
  if fence < floor then
    redis.call('SET', KEYS[2], floor)
    fence = floor
  end
  return fence
end

local held = redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2], 'GET')
if not held then
  return next_fence()
end
if held == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  local fence = tonumber(redis.call('GET', KEYS[2]))
  if fence then
    return fence
  end
  return next_fence()
end
return false
