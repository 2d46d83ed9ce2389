-- KEYS[1] the user's session index
-- ARGV[1] the user's session key prefix (`<prefix>{u:<user>}:s:`)
-- Deletes every session of the user and the index; returns how many were
-- live. Session keys share KEYS[1]'s hash tag (see session_list.lua).
local now = now_ms()
local ids = redis.call('ZRANGE', KEYS[1], 0, -1)
local live = 0
for _, id in ipairs(ids) do
  local key = ARGV[1] .. id
  local f = redis.call('HMGET', key, 'last_ms', 'ttl_ms')
  if f[1] and now < tonumber(f[1]) + tonumber(f[2]) then
    live = live + 1
  end
  redis.call('DEL', key)
end
redis.call('DEL', KEYS[1])
return live
