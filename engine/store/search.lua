-- One partition's page of a search: walks one time-ordered index of one workflow (a status index,
-- or the "all" index) from a cursor, keeps the rows whose instance exists and matches the filters,
-- and stops after a bounded number of rows examined, so a sparse filter (a rare id prefix or an old
-- version) costs pages, never a scan of the partition in one call. One round trip per page.
-- KEYS: 1 the index.
-- ARGV: 1 order ('desc' newest first, 'asc'), 2 the bound nearer the start (inclusive score: the
--       highest for desc, the lowest for asc), 3 the far bound (inclusive score), 4 the cursor's
--       member ('' = none): rows with the bound's score at or before it in this order were returned
--       already and are skipped, 5 at most this many rows, 6 at most this many rows examined,
--       7 the status rows must have ('' = any), 8 the version they must have (msgpack; '' = any),
--       9 the member prefix they must have ('wf:' .. id prefix), 10 and 11 the meta key of member M
--       is ARGV[10] .. M .. ARGV[11].
-- Returns {rows, stop}: rows is one string, a line per row: its score, member and status, space-separated
-- (names and ids have no spaces; one string costs the client far less to parse than an array per row); stop is {score, member} of the
-- last row examined when the examination budget ran out before the index did, else {}.
local index, desc, near, far = KEYS[1], ARGV[1] == 'desc', ARGV[2], ARGV[3]
local after, want, budget = ARGV[4], tonumber(ARGV[5]), tonumber(ARGV[6])
local status, version, prefix, pre, post = ARGV[7], ARGV[8], ARGV[9], ARGV[10], ARGV[11]
local chunk = math.max(want, 100)
local rows, offset, examined = {}, 0, 0
local near_score = tonumber(near)
while true do
  local batch
  if desc then
    batch = redis.call('ZREVRANGEBYSCORE', index, near, far, 'WITHSCORES', 'LIMIT', offset, chunk)
  else
    batch = redis.call('ZRANGEBYSCORE', index, near, far, 'WITHSCORES', 'LIMIT', offset, chunk)
  end
  for i = 1, #batch, 2 do
    local member, score = batch[i], batch[i + 1]
    -- Rows sharing the cursor's millisecond come in member order: those up to the cursor were returned.
    local seen = after ~= '' and tonumber(score) == near_score
      and ((desc and member >= after) or (not desc and member <= after))
    if not seen then
      examined = examined + 1
      if string.sub(member, 1, #prefix) == prefix then
        local meta = redis.call('HMGET', pre .. member .. post, 'status', 'ver')
        if meta[1] and (status == '' or meta[1] == status) and (version == '' or meta[2] == version) then
          rows[#rows + 1] = score .. ' ' .. member .. ' ' .. meta[1]
          if #rows == want then return {table.concat(rows, '\n'), {}} end
        end
      end
      if examined >= budget then return {table.concat(rows, '\n'), {score, member}} end
    end
  end
  if #batch < 2 * chunk then return {table.concat(rows, '\n'), {}} end
  offset = offset + chunk
end
