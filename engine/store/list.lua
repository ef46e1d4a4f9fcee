-- One partition's page of a status index, newest first, skipping entries whose instance is gone.
-- A finished instance's keys expire before a finishing commit prunes its index entries (commit.lua),
-- and an id created again after it expired still has the old incarnation's final-status entry: a
-- listing shows only instances whose meta exists, in the listed status. One round trip, however
-- many such entries lie in between (a partition with no finishes lately prunes nothing).
-- KEYS: 1 the status index.
-- ARGV: 1 highest score, 2 lowest score (ZREVRANGEBYSCORE bounds), 3 at most this many rows (0: every
--       row in the bounds), 4 the status each row's instance must have ('' = any: the "all" index),
--       5 and 6 the meta key of member M is ARGV[5] .. M .. ARGV[6].
-- Returns member, score, member, score... newest first.
local index, top, bottom, want, status = KEYS[1], ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4]
local chunk = math.max(want, 100)
local rows, offset, batch = {}, 0, nil
repeat
  if want > 0 then
    batch = redis.call('ZREVRANGEBYSCORE', index, top, bottom, 'WITHSCORES', 'LIMIT', offset, chunk)
  else
    batch = redis.call('ZREVRANGEBYSCORE', index, top, bottom, 'WITHSCORES')
  end
  for i = 1, #batch, 2 do
    local current = redis.call('HGET', ARGV[5] .. batch[i] .. ARGV[6], 'status')
    if current and (status == '' or current == status) then
      rows[#rows + 1] = batch[i]; rows[#rows + 1] = batch[i + 1]
      if #rows == 2 * want then return rows end
    end
  end
  offset = offset + chunk
until want == 0 or #batch < 2 * chunk
return rows
