-- KEYS[1] session hash, KEYS[2] the user's expiry index, KEYS[3] its
-- created-at index
-- ARGV[1] session id
-- Deletes the session; returns 1 when a live one existed, else 0.
local f = redis.call('HMGET', KEYS[1], 'last_ms', 'ttl_ms')
local live = 0
if f[1] and now_ms() < tonumber(f[1]) + tonumber(f[2]) then
  live = 1
end
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('ZREM', KEYS[3], ARGV[1])
return live
