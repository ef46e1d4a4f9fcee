-- Create instances, each unless its id exists, of one partition or of several (see commit.lua).
-- KEYS: the active set of each of the call's P partitions; then 4 per instance: meta, its
--       workflow's queued index, its "all" index, its event buffer.
-- ARGV: 1 P; 2 the suffix of the sharded pub/sub channels that hear of the created instances
--       ('' = none), so partition owners start them without waiting for the broker: each
--       partition's channel is its prefix (its active set's key without ':active') and this suffix,
--       so it hashes to the partition's slot, as Redis Cluster requires of a script's SPUBLISH. One
--       message per partition and call, a record per instance (engine/store/announcements.py), its
--       header and blob when the blob is at most ARGV 3 bytes, else '- ' and its member; then two
--       per instance, a header and a blob (see
--       commit.lua): the header is space-separated tokens, the partition's position (1..P), created
--       ms, then the byte length of each blob part, and last, for an instance that starts with n
--       buffered events (create_or_send), a token 'e<n>'; the blob holds the instance member, the
--       meta field/value items, then those events, buffered in the same write so the instance never
--       exists without them. Such an instance is announced by member only: its owner must load it
--       (and its events); any other's announced header is as it was before events existed.
-- Returns one code per instance: 1 created, 0 already exists.
local parts, carried = tonumber(ARGV[1]), tonumber(ARGV[3])
local results, active, created = {}, {}, {}
for j = 1, parts do active[j] = {}; created[j] = {} end
local queued, all_index, workflows = {}, {}, {}
local k = parts
for a = 4, #ARGV, 2 do
  local h = {}
  for token in string.gmatch(ARGV[a], '%S+') do h[#h + 1] = token end
  if redis.call('EXISTS', KEYS[k + 1]) == 1 then
    results[#results + 1] = 0
  else
    local blob, pos, items, events = ARGV[a + 1], 1, {}, 0
    if string.sub(h[#h], 1, 1) == 'e' then events = tonumber(string.sub(h[#h], 2)); h[#h] = nil end
    for i = 3, #h do
      local n = tonumber(h[i])
      items[i - 2] = string.sub(blob, pos, pos + n - 1); pos = pos + n
    end
    local member = items[1]
    redis.call('HSET', KEYS[k + 1], unpack(items, 2, #items - events))
    if events > 0 then redis.call('RPUSH', KEYS[k + 4], unpack(items, #items - events + 1)) end
    local q = KEYS[k + 2]
    if not queued[q] then queued[q] = {}; all_index[q] = KEYS[k + 3]; workflows[#workflows + 1] = q end
    local list = queued[q]; list[#list + 1] = h[2]; list[#list + 1] = member
    local j = tonumber(h[1])
    local set = active[j]; set[#set + 1] = member
    if ARGV[2] ~= '' then
      local notices = created[j]
      notices[#notices + 1] = (#blob <= carried and events == 0) and (ARGV[a] .. '\n' .. blob) or ('- ' .. member .. '\n')
    end
    results[#results + 1] = 1
  end
  k = k + 4
end
-- The indexes and the active sets are written once per key (the members are distinct instances).
for _, q in ipairs(workflows) do
  local list, al = queued[q], all_index[q]
  for i = 1, #list, 2000 do
    local last = math.min(i + 1999, #list)
    redis.call('ZADD', q, unpack(list, i, last))
    redis.call('ZADD', al, unpack(list, i, last))
  end
end
for j = 1, parts do
  local set = active[j]
  for i = 1, #set, 2000 do redis.call('SADD', KEYS[j], unpack(set, i, math.min(i + 1999, #set))) end
end
-- Announced after the writes: an owner that loads an instance on hearing this sees it.
for j = 1, parts do
  if #created[j] > 0 then
    redis.call('SPUBLISH', string.sub(KEYS[j], 1, #KEYS[j] - #':active') .. ARGV[2], table.concat(created[j]))
  end
end
return results
