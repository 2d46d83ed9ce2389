-- KEYS[1] the user's session index
-- ARGV[1] the user's session key prefix (`<prefix>{u:<user>}:s:`)
-- Returns the live sessions flattened as {id, created_ms, last_ms, ttl_ms,
-- data, ...} and prunes index members whose session is gone.
--
-- The session keys are derived from the index here instead of being passed
-- in KEYS (their ids are only known inside the script); they carry the same
-- `{u:<user>}` hash tag as KEYS[1], so on Redis Cluster they live in the slot
-- the script is routed to.
local now = now_ms()
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', int(now))
local ids = redis.call('ZRANGE', KEYS[1], 0, -1)
local out = {}
for _, id in ipairs(ids) do
  local f = redis.call('HMGET', ARGV[1] .. id, 'created_ms', 'last_ms', 'ttl_ms', 'data')
  if f[1] and now < tonumber(f[2]) + tonumber(f[3]) then
    out[#out + 1] = id
    out[#out + 1] = f[1]
    out[#out + 1] = f[2]
    out[#out + 1] = f[3]
    out[#out + 1] = f[4]
  elseif not f[1] then
    redis.call('ZREM', KEYS[1], id)
  end
end
return out
