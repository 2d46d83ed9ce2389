-- KEYS[1] session hash, KEYS[2] the user's session index
-- ARGV[1] session id, ARGV[2] ttl in ms, ARGV[3] data (JSON object text)
-- Returns the creation time in ms, or nil when the id is taken (never
-- overwrites: the caller draws a new id).
if redis.call('EXISTS', KEYS[1]) == 1 then
  return false
end
local now = now_ms()
local ttl = tonumber(ARGV[2])
local exp = now + ttl
redis.call('HSET', KEYS[1], 'created_ms', int(now), 'last_ms', int(now), 'ttl_ms', int(ttl), 'data', ARGV[3])
-- Redis deletes a key once now > its expiry time; the contract says a
-- session is gone once now >= expires_at, hence the - 1.
redis.call('PEXPIREAT', KEYS[1], int(exp - 1))
index_put(KEYS[2], ARGV[1], exp, now)
return int(now)
