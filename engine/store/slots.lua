-- Take or give back a slot of one concurrency limit (hutch.concurrency; keys.py limit_holders).
-- Every key is under the limit's own hash tag, so on Redis Cluster this is one script on one slot,
-- apart from the instance's commit (an instance's keys are under its partition's tag). The script
-- cannot read the partition's fencing token (another slot): what needs it, the caller reads and
-- passes in (consumers/slots.py).
-- KEYS: 1 the holders (hash: instance member -> the fencing token of the owner that took the slot),
--       2 the waiters (sorted set).
-- ARGV: 1 the operation, 2 the limit, 3 the instance member, 4 the caller's token, 5 its waiter
--       score (priority, then creation: lower first), 6 the holder's token expected (takeover, reap).
-- acquire: a holder under the caller's token keeps its slot (held); a holder under another token is
--   left as it is and that token returned (foreign): only the caller knows, by reading the
--   partition's token, whether it is the partition's owner now (the other one is an older owner:
--   it then takes the slot over) or a stale one (it must not touch the slot). Otherwise the
--   instance joins the waiters (keeping its place if it waits already) and takes a slot if one is
--   free for it (taken): its rank among the waiters is below the free slots, so a waiter ahead of it
--   is never overtaken.
-- takeover: as acquire, except that a holder still under the expected token passes to the caller's.
-- release: the instance leaves the holders (only if its token is the caller's: an owner that lost
--   the partition cannot give back the slot of the new owner's run) and the waiters.
-- forget: the instance leaves the waiters, whatever its token (it no longer exists or has finished,
--   so it will never take the slot it is at the head for); idempotent.
-- reap: the instance leaves the holders if its token is still the expected one (the caller read
--   that this token's owner lost the partition and that the instance does not run: a leak).
-- Returns {code, the 0-based place among the waiters (-1: none), the foreign holder's token (or ''),
-- then the waiters a free slot is theirs to take (the caller wakes them; each takes it by its own
-- acquire)}. Codes: 0 denied (it waits), 1 taken (this call made the holder record), 2 held (the
-- record is the caller's), 3 foreign (held under another token), 4 reaped, 5 done (release, forget,
-- or a reap that found the record changed).
local holders, waiters = KEYS[1], KEYS[2]
local op, limit, member, token = ARGV[1], tonumber(ARGV[2]), ARGV[3], ARGV[4]
local code, place, foreign = 5, -1, ''
if op == 'acquire' or op == 'takeover' then
  local current = redis.call('HGET', holders, member)
  if current and op == 'takeover' and current == ARGV[6] then
    redis.call('HSET', holders, member, token)
    current = token
  end
  if current == token then
    code = 2
  elseif current then
    code, foreign = 3, current
  else
    redis.call('ZADD', waiters, 'NX', ARGV[5], member)
    place = redis.call('ZRANK', waiters, member)
    code = 0
    if place < limit - redis.call('HLEN', holders) then
      redis.call('ZREM', waiters, member)
      redis.call('HSET', holders, member, token)
      code, place = 1, -1
    end
  end
elseif op == 'forget' then
  redis.call('ZREM', waiters, member)
elseif op == 'reap' then
  if redis.call('HGET', holders, member) == ARGV[6] then
    redis.call('HDEL', holders, member)
    code = 4
  end
else
  if redis.call('HGET', holders, member) == token then redis.call('HDEL', holders, member) end
  redis.call('ZREM', waiters, member)
end
local result = {code, place, foreign}
local free = limit - redis.call('HLEN', holders)
if free > 0 then
  for _, m in ipairs(redis.call('ZRANGE', waiters, 0, free - 1)) do
    if m ~= member then result[#result + 1] = m end
  end
end
return result
