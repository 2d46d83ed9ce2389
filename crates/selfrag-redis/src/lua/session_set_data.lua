-- KEYS[1] session hash
-- ARGV[1] data (JSON object text)
-- Replaces the data of a live session without touching its expiry (HSET
-- keeps the key's TTL). Returns {created_ms, last_ms, ttl_ms} or nil.
local f = redis.call('HMGET', KEYS[1], 'created_ms', 'last_ms', 'ttl_ms')
if not f[1] then
  return false
end
if now_ms() >= tonumber(f[2]) + tonumber(f[3]) then
  return false
end
redis.call('HSET', KEYS[1], 'data', ARGV[1])
return {f[1], f[2], f[3]}
