-- Undo a create whose start message could not be sent: delete the instance if it is still as the
-- create left it (sequence 0). Its owner may have started it already from the create's
-- announcement; it then runs without a start message and is kept.
-- KEYS: meta, history, event buffer, the partition's active set, the queued index, the "all" index.
-- ARGV: 1 the instance member.
-- Returns 1 deleted, 0 kept (started, or gone).
if redis.call('HGET', KEYS[1], 'seq') ~= '0' then return 0 end
redis.call('DEL', KEYS[1], KEYS[2], KEYS[3])
redis.call('SREM', KEYS[4], ARGV[1])
redis.call('ZREM', KEYS[5], ARGV[1])
redis.call('ZREM', KEYS[6], ARGV[1])
return 1
