-- Delete a finished instance for good (a bulk delete): its data keys, its index entries and its
-- retention entry. An unfinished instance is kept: its owner may be running it.
-- KEYS: meta, history, event buffer, blobs, the partition's retention set, then the workflow's "all"
--       index and its complete, errored and terminated indexes.
-- ARGV: 1 the instance member.
-- Returns 1 deleted, 0 gone already, -1 kept (not finished).
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return 0 end
if status ~= 'complete' and status ~= 'errored' and status ~= 'terminated' then return -1 end
redis.call('DEL', KEYS[1], KEYS[2], KEYS[3], KEYS[4])
redis.call('ZREM', KEYS[5], ARGV[1])
for i = 6, 9 do redis.call('ZREM', KEYS[i], ARGV[1]) end
return 1
