-- Atomic, sequence-checked transitions of distinct instances, of one partition or of several.
-- Every key of a partition shares its hash tag, so a call made for one partition stays in one
-- Redis Cluster slot (redis.py makes one call per partition on a Cluster, one for all on a
-- standalone server, where slots do not exist and every call saved is worth a fraction of a step).
--
-- KEYS: for each of the call's P partitions its timers, active set, owner, retention set and
--       watched set (5P keys); then per transition its meta, history and event buffer keys,
--       followed by the old and new status index keys when the transition changes the status.
-- ARGV: 1 P; 2 .. P+1 each partition's fence token ('' = unfenced); P+2 the suffix of the sharded
--   pub/sub channels that hear of instances reaching a final status (remote clients wait on them
--   instead of polling): a partition's channel is its prefix (its retention key without
--   ':retention') and this suffix, in its slot as a script's SPUBLISH must be on Redis Cluster; P+3
--   the suffix of the channels that hear of every commit of a watched instance (one a follower such
--   as a gateway's live dashboard page marked in the partition's watched set), built the same way;
--   P+4 how many index entries whose retention ended each finish prunes at most;
--   then two per transition:
--   a header of space-separated tokens:
--     1 the partition's position (1..P), 2 expected seq, 3 creation ms to check ('-' = none),
--     4 active-set op (+ - .), 5 created ms (index score), 6 retention s (> 0 expire, < 0 persist),
--     7 reset history (1/0; k<n>: cut it to its first n records, the event buffer kept: restart
--     from a step), 8 meta field and value items, 9 history records, 10 timers to add,
--     11 timers to remove, 12 events to buffer, 13 buffered events consumed, 14 status change (0 none,
--     1 changed, 2 changed to a final status: announced on the channel), 15 when it finished (epoch
--     ms; read only when 6 > 0: the retention ends 6 seconds later),
--     16.. the byte length of each blob part, then the due ms of each timer to add;
--   a blob: the parts back to back, instance member first, then the items counted by 8..13 in order.
--   (Two strings per transition rather than one per value: each argument costs more than its bytes
--   in the client, on the wire and in the server's Lua bridge.)
-- Watched instances: a commit of an instance in its partition's watched set publishes
-- '<new seq> <member>' on the partition's changed channel, so a follower reads the instance once per
-- change instead of polling it. An instance nobody follows costs one EXISTS per partition and call
-- (the set is absent), no publish: the per-step path stays as it was.
-- Returns one code per transition: 1 committed, 0 sequence conflict, -1 fence lost, -2 instance missing.
-- A transition that is not committed writes nothing. Writes to the partitions' shared keys (timers,
-- active sets, status indexes) are gathered and made once per key at the end, adds before removes:
-- the transitions are of distinct instances, so their members differ, and within one transition a
-- timer added then removed stays removed (the old and new status index are different keys).
--
-- Retention: a finished instance's data keys expire, but its status index entries would not. A
-- finish records when its retention ends in the partition's retention set and, as its share of the
-- cleaning, prunes up to ARGV[P+4] entries whose retention ended (the oldest first): bounded work,
-- only on finishes (never on a step's commit), and no scan. The keys of a pruned member are not in
-- KEYS (which members are due is only known here); they are built from the partition's prefix, so
-- they share its hash tag and slot, as Redis Cluster requires of the keys a script touches.
local P, fenced, results, shared, order, finished = tonumber(ARGV[1]), {}, {}, {}, {}, {}
local prune_per_finish, pruning, watching, changed = tonumber(ARGV[P + 4]), {}, {}, {}
local k = 5 * P
local function later(command, key, ...)
  local id = command .. key
  if not shared[id] then shared[id] = {}; order[#order + 1] = {command, key, shared[id]} end
  for _, v in ipairs({...}) do table.insert(shared[id], v) end
end
for a = P + 5, #ARGV, 2 do
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
    if fenced[j] == nil then fenced[j] = redis.call('GET', KEYS[5 * j - 2]) ~= ARGV[1 + j] end
    if fenced[j] then result = -1 end
  end
  results[#results + 1] = result
  if result == 1 then
    local n = h[8] + h[9] + h[10] + h[11] + h[12] + h[13]
    for i = 16, 16 + n do p[#p + 1] = string.sub(ARGV[a + 1], pos, pos + h[i] - 1); pos = pos + h[i] end
    local f = 2 + h[8]
    redis.call('HSET', meta, 'seq', seq[1] + 1, unpack(p, 2, f - 1))
    if h[7] == 1 then redis.call('DEL', hist, evbuf)
    elseif h[7] ~= 0 then
      local keep = tonumber(string.sub(h[7], 2))
      if keep > 0 then redis.call('LTRIM', hist, 0, keep - 1) else redis.call('DEL', hist) end
    end
    if h[9] > 0 then redis.call('RPUSH', hist, unpack(p, f, f + h[9] - 1)) end
    f = f + h[9]
    for i = 1, h[10] do later('ZADD', KEYS[5 * j - 4], h[16 + n + i], p[f]); f = f + 1 end
    for i = f, f + h[11] - 1 do later('ZREM', KEYS[5 * j - 4], p[i]) end
    f = f + h[11]
    if h[12] > 0 then redis.call('RPUSH', evbuf, unpack(p, f, f + h[12] - 1)) end
    for i = f + h[12], f + h[12] + h[13] - 1 do redis.call('LREM', evbuf, 1, p[i]) end
    if h[4] ~= '.' then later(h[4] == '+' and 'SADD' or 'SREM', KEYS[5 * j - 3], p[1]) end
    if h[14] > 0 then later('ZREM', KEYS[k + 4], p[1]); later('ZADD', KEYS[k + 5], h[5], p[1]) end
    if h[14] == 2 then finished[#finished + 1] = {j, p[1]} end
    if watching[j] == nil then watching[j] = redis.call('EXISTS', KEYS[5 * j]) == 1 end
    if watching[j] and redis.call('ZSCORE', KEYS[5 * j], p[1]) then
      changed[#changed + 1] = {j, (seq[1] + 1) .. ' ' .. p[1]}
    end
    -- The instance's blobs (keys.py: its history key with ":blobs" for ":hist") expire with it.
    local blobs = h[6] ~= 0 and string.sub(hist, 1, #hist - 4) .. 'blobs' or nil
    for _, key in ipairs(h[6] ~= 0 and {meta, hist, evbuf, blobs} or {}) do
      if h[6] > 0 then redis.call('EXPIRE', key, h[6]) else redis.call('PERSIST', key) end
    end
    if h[6] > 0 then
      later('ZADD', KEYS[5 * j - 1], h[15] + h[6] * 1000, p[1])
      local prune = pruning[j] or {now = h[15], budget = 0}
      pruning[j] = prune
      prune.now, prune.budget = math.max(prune.now, h[15]), prune.budget + prune_per_finish
    elseif h[6] < 0 then
      later('ZREM', KEYS[5 * j - 1], p[1]) -- restarted: kept until it finishes again
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
-- Pruned after the writes, so a member finishing in this call is seen with its new retention end.
-- A due member whose meta is gone expired: it leaves every index. One whose meta exists was created
-- again since (unfinished: a finish would have moved its retention end), so only the old
-- incarnation's final-status entries go. One still finished has not expired on Redis's clock yet
-- (the workers' clocks run ahead of it): it stays for a later finish to prune.
local final = {complete = true, errored = true, terminated = true}
local function prefix(j) return string.sub(KEYS[5 * j - 1], 1, #KEYS[5 * j - 1] - #':retention') end
for j, prune in pairs(pruning) do
  local retention, tag = KEYS[5 * j - 1], prefix(j)
  local due = redis.call('ZRANGEBYSCORE', retention, '-inf', prune.now, 'LIMIT', 0, prune.budget)
  local pruned = {}
  for _, member in ipairs(due) do
    local status = redis.call('HGET', tag .. ':i:' .. member .. ':meta', 'status')
    if not final[status] then
      local index = tag .. ':idx:' .. string.match(member, '^[^:]*') .. ':'
      for s in pairs(final) do redis.call('ZREM', index .. s, member) end
      if not status then redis.call('ZREM', index .. 'all', member) end
      pruned[#pruned + 1] = member
    end
  end
  if #pruned > 0 then redis.call('ZREM', retention, unpack(pruned)) end
end
-- Announced after the writes: a subscriber that reads the instance on hearing this sees them.
for _, f in ipairs(finished) do redis.call('SPUBLISH', prefix(f[1]) .. ARGV[P + 2], f[2]) end
for _, c in ipairs(changed) do redis.call('SPUBLISH', prefix(c[1]) .. ARGV[P + 3], c[2]) end
return results
