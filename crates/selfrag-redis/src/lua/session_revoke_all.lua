-- KEYS[1] the user's expiry index, KEYS[2] its created-at index
-- ARGV[1] the user's session key prefix (`<prefix>{u:<user>}:s:`)
-- ARGV[2] batch size
--
-- One batch of revoke_all: deletes up to ARGV[2] sessions of the user (the
-- first members of the expiry index, live or not) and their index entries.
-- Returns {live among them, how many were deleted, members left}; the caller
-- calls again while members are left, so that no single call holds the
-- server for long however many sessions the user has. Session keys share
-- KEYS[1]'s hash tag (see session_list.lua).
local now = now_ms()
local ids = redis.call('ZRANGE', KEYS[1], 0, tonumber(ARGV[2]) - 1)
local live = 0
for _, id in ipairs(ids) do
  local key = ARGV[1] .. id
  local f = redis.call('HMGET', key, 'last_ms', 'ttl_ms')
  if f[1] and now < tonumber(f[1]) + tonumber(f[2]) then
    live = live + 1
  end
  redis.call('DEL', key)
end
if #ids > 0 then
  redis.call('ZREM', KEYS[1], unpack(ids))
  redis.call('ZREM', KEYS[2], unpack(ids))
end
local left = redis.call('ZCARD', KEYS[1])
if left == 0 then
  -- The indexes hold the same members; this drops any stray of the other.
  redis.call('DEL', KEYS[2])
end
return {live, #ids, left}
