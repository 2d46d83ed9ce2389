-- KEYS[1] session hash, KEYS[2] the user's expiry index, KEYS[3] its
-- created-at index
-- ARGV[1] session id
-- Slides the expiry to now + ttl and returns {created_ms, last_ms, ttl_ms,
-- data}, or nil when the session is absent or expired.
local f = redis.call('HMGET', KEYS[1], 'created_ms', 'last_ms', 'ttl_ms', 'data')
if not f[1] then
  return false
end
local now = now_ms()
local ttl = tonumber(f[3])
-- Redis judged the key live at the script's start; TIME may be a little
-- later, and a session never comes back to life once expired.
if now >= tonumber(f[2]) + ttl then
  return false
end
local exp = now + ttl
redis.call('HSET', KEYS[1], 'last_ms', int(now))
redis.call('PEXPIREAT', KEYS[1], int(exp - 1))
index_put(KEYS[2], KEYS[3], ARGV[1], exp, now)
return {f[1], int(now), f[3], f[4]}
