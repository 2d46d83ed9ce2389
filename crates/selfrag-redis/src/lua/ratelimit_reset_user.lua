-- KEYS[1] the stem of one user's rate-limit keys, `<prefix>{u:<user>}:rl:`:
--         declared so the call is routed to the node owning the user's slot
--         (every key of the user carries the same hash tag).
-- ARGV[1] the SCAN cursor, ARGV[2] the stem as an escaped glob pattern
--         followed by `*`, ARGV[3] the SCAN COUNT.
-- One bounded SCAN step over this node's keys: deletes the keys it found
-- under the stem and returns {next cursor, keys deleted}. The caller loops
-- until the cursor is "0". SCAN inside a script is allowed because scripts
-- are replicated by their effects (Redis >= 5).
local found = redis.call('SCAN', ARGV[1], 'MATCH', ARGV[2], 'COUNT', ARGV[3])
local deleted = 0
for _, key in ipairs(found[2]) do
  deleted = deleted + redis.call('DEL', key)
end
return {found[1], deleted}
