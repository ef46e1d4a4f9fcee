-- Take or give back a slot of one concurrency limit (hutch.concurrency; keys.py limit_holders).
-- Every key is under the limit's own hash tag, so on Redis Cluster this is one script on one slot,
-- apart from the instance's commit (an instance's keys are under its partition's tag).
-- KEYS: 1 the holders (hash: instance member -> the owner's fencing token), 2 the waiters (sorted set).
-- ARGV: 1 'acquire' | 'release' | 'forget', 2 the limit, 3 the instance member, 4 the owner's token, 5 its
--       waiter score (priority, then creation: lower first).
-- acquire: a holder keeps its slot (the token is updated: a new owner of its partition took it
--   over); otherwise it joins the waiters (keeping its place if it waits already) and takes a slot
--   if one is free for it: its rank among the waiters is below the free slots, so a waiter ahead of
--   it is never overtaken.
-- release: the instance leaves the holders (only if its token is the caller's: an owner that lost
--   the partition cannot give back the slot of the new owner's run) and the waiters.
-- forget: the instance leaves the waiters, whatever its token (it no longer exists or has finished,
--   so it will never take the slot it is at the head for); idempotent.
-- Returns {granted 1/0, the 0-based place among the waiters (-1: none), then the waiters a free slot
-- is theirs to take (the caller wakes them; each takes it by its own acquire)}.
local holders, waiters = KEYS[1], KEYS[2]
local limit, member, token = tonumber(ARGV[2]), ARGV[3], ARGV[4]
local granted, place = 0, -1
if ARGV[1] == 'acquire' then
  if redis.call('HEXISTS', holders, member) == 1 then
    redis.call('HSET', holders, member, token)
    granted = 1
  else
    redis.call('ZADD', waiters, 'NX', ARGV[5], member)
    place = redis.call('ZRANK', waiters, member)
    if place < limit - redis.call('HLEN', holders) then
      redis.call('ZREM', waiters, member)
      redis.call('HSET', holders, member, token)
      granted, place = 1, -1
    end
  end
elseif ARGV[1] == 'forget' then
  redis.call('ZREM', waiters, member)
else
  if redis.call('HGET', holders, member) == token then redis.call('HDEL', holders, member) end
  redis.call('ZREM', waiters, member)
end
local result = {granted, place}
local free = limit - redis.call('HLEN', holders)
if free > 0 then
  for _, m in ipairs(redis.call('ZRANGE', waiters, 0, free - 1)) do
    if m ~= member then result[#result + 1] = m end
  end
end
return result
