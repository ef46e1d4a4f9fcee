-- Atomic, sequence-checked transitions of distinct instances, of one partition or of several.
-- Every key of a partition shares its hash tag, so a call made for one partition stays in one
-- Redis Cluster slot (redis.py makes one call per partition on a Cluster, one for all on a
-- standalone server, where slots do not exist and every call saved is worth a fraction of a step).
--
-- KEYS: for each of the call's P partitions its timers, active set and owner (3P keys); then per
--       transition its meta, history and event buffer keys, followed by the old and new status
--       index keys when the transition changes the status.
-- ARGV: 1 P; 2 .. P+1 each partition's fence token ('' = unfenced); P+2 the pub/sub channel that
--   hears of instances reaching a final status (remote clients wait on it instead of polling);
--   then two per transition:
--   a header of space-separated tokens:
--     1 the partition's position (1..P), 2 expected seq, 3 creation ms to check ('-' = none),
--     4 active-set op (+ - .), 5 created ms (index score), 6 retention s (> 0 expire, < 0 persist),
--     7 reset history (1/0), 8 meta field and value items, 9 history records, 10 timers to add,
--     11 timers to remove, 12 events to buffer, 13 buffered events consumed, 14 status change (0 none,
--     1 changed, 2 changed to a final status: announced on the channel),
--     15.. the byte length of each blob part, then the due ms of each timer to add;
--   a blob: the parts back to back, instance member first, then the items counted by 8..13 in order.
--   (Two strings per transition rather than one per value: each argument costs more than its bytes
--   in the client, on the wire and in the server's Lua bridge.)
-- Returns one code per transition: 1 committed, 0 sequence conflict, -1 fence lost, -2 instance missing.
-- A transition that is not committed writes nothing. Writes to the partitions' shared keys (timers,
-- active sets, status indexes) are gathered and made once per key at the end, adds before removes:
-- the transitions are of distinct instances, so their members differ, and within one transition a
-- timer added then removed stays removed (the old and new status index are different keys).
local P, fenced, results, shared, order, finished = tonumber(ARGV[1]), {}, {}, {}, {}, {}
local k = 3 * P
local function later(command, key, ...)
  local id = command .. key
  if not shared[id] then shared[id] = {}; order[#order + 1] = {command, key, shared[id]} end
  for _, v in ipairs({...}) do table.insert(shared[id], v) end
end
for a = P + 3, #ARGV, 2 do
  local h, p, pos = {}, {}, 1
  for token in string.gmatch(ARGV[a], '%S+') do h[#h + 1] = tonumber(token) or token end
  local j, meta, hist, evbuf = h[1], KEYS[k + 1], KEYS[k + 2], KEYS[k + 3]
  local seq = h[3] == '-' and {redis.call('HGET', meta, 'seq')} or redis.call('HMGET', meta, 'seq', 'created')
  local result = 1
  if not seq[1] then result = -2
  -- An owner that built the instance from its start message also checks the creation time: a stale
  -- message of an earlier instance with the same id must not run.
  elseif tonumber(seq[1]) ~= h[2] or (h[3] ~= '-' and tonumber(seq[2]) ~= h[3]) then result = 0
  elseif ARGV[1 + j] ~= '' then
    if fenced[j] == nil then fenced[j] = redis.call('GET', KEYS[3 * j]) ~= ARGV[1 + j] end
    if fenced[j] then result = -1 end
  end
  results[#results + 1] = result
  if result == 1 then
    local n = h[8] + h[9] + h[10] + h[11] + h[12] + h[13]
    for i = 15, 15 + n do p[#p + 1] = string.sub(ARGV[a + 1], pos, pos + h[i] - 1); pos = pos + h[i] end
    local f = 2 + h[8]
    redis.call('HSET', meta, 'seq', seq[1] + 1, unpack(p, 2, f - 1))
    if h[7] == 1 then redis.call('DEL', hist, evbuf) end
    if h[9] > 0 then redis.call('RPUSH', hist, unpack(p, f, f + h[9] - 1)) end
    f = f + h[9]
    for i = 1, h[10] do later('ZADD', KEYS[3 * j - 2], h[15 + n + i], p[f]); f = f + 1 end
    for i = f, f + h[11] - 1 do later('ZREM', KEYS[3 * j - 2], p[i]) end
    f = f + h[11]
    if h[12] > 0 then redis.call('RPUSH', evbuf, unpack(p, f, f + h[12] - 1)) end
    for i = f + h[12], f + h[12] + h[13] - 1 do redis.call('LREM', evbuf, 1, p[i]) end
    if h[4] ~= '.' then later(h[4] == '+' and 'SADD' or 'SREM', KEYS[3 * j - 1], p[1]) end
    if h[14] > 0 then later('ZREM', KEYS[k + 4], p[1]); later('ZADD', KEYS[k + 5], h[5], p[1]) end
    if h[14] == 2 then finished[#finished + 1] = p[1] end
    for _, key in ipairs(h[6] ~= 0 and {meta, hist, evbuf} or {}) do
      if h[6] > 0 then redis.call('EXPIRE', key, h[6]) else redis.call('PERSIST', key) end
    end
  end
  k = k + 3 + (h[14] > 0 and 2 or 0)
end
for _, adding in ipairs({'ADD', 'REM'}) do
  for _, w in ipairs(order) do
    if string.sub(w[1], 2) == adding then -- in chunks that stay within Lua's unpack limit
      for i = 1, #w[3], 2000 do redis.call(w[1], w[2], unpack(w[3], i, math.min(i + 1999, #w[3]))) end
    end
  end
end
-- Announced after the writes: a subscriber that reads the instance on hearing this sees them.
for _, member in ipairs(finished) do redis.call('PUBLISH', ARGV[P + 2], member) end
return results
