-- Drop a saga from its definition's unfinished set, unless it is unfinished
-- after all: resumed by an operator or written again since the caller read
-- it finished (its hash says 'done' = '0'). A saga with no hash (never
-- stored, or expired) or one written before the field existed is dropped.
-- KEYS[1]  saga hash
-- KEYS[2]  unfinished set of its definition in this shard (same hash slot)
-- ARGV[1]  saga id
-- Returns 1 when dropped, 0 when kept (or not listed).
if redis.call('HGET', KEYS[1], 'done') == '0' then
  return 0
end
return redis.call('SREM', KEYS[2], ARGV[1])
