-- KEYS[1] session hash, KEYS[2] the user's expiry index, KEYS[3] the
--         user's created-at index (see common.lua)
-- ARGV[1] session id, ARGV[2] ttl in ms, ARGV[3] data (JSON object text),
-- ARGV[4] most live sessions per user, ARGV[5] `evict` or `refuse` at the
-- cap, ARGV[6] most sessions to evict
--
-- Never overwrites a live session. Returns one of
--   {'exists', created_ms, last_ms, ttl_ms, data}: the id is a live session
--     of this user (the caller tells a retry of this create from a clash);
--   {'full', live}: the user has ARGV[4] live sessions and ARGV[5] is
--     `refuse`; nothing was written;
--   {'created', now_ms, evicted}: created, after ending `evicted` sessions
--     of the user that expire soonest (ties: the smallest id).
-- The cap check and the insert are one script, so concurrent creates of a
-- user cannot both take the last place.
local now = now_ms()
local f = redis.call('HMGET', KEYS[1], 'created_ms', 'last_ms', 'ttl_ms', 'data')
if f[1] then
  if now < tonumber(f[2]) + tonumber(f[3]) then
    return {'exists', f[1], f[2], f[3], f[4]}
  end
  -- Expired in the millisecond since Redis last judged the key: it is gone
  -- by the contract, and the prune below drops its index entries.
  redis.call('DEL', KEYS[1])
end
index_prune(KEYS[2], KEYS[3], now)
-- Members the bounded prune left are expired: never counted.
local live = redis.call('ZCARD', KEYS[2]) - redis.call('ZCOUNT', KEYS[2], '-inf', int(now))
local max = tonumber(ARGV[4])
local evicted = 0
if live >= max then
  if ARGV[5] ~= 'evict' then
    return {'full', int(live)}
  end
  local n = math.min(live - max + 1, tonumber(ARGV[6]))
  -- Live members only (score > now), soonest expiry first.
  local victims = redis.call('ZRANGEBYSCORE', KEYS[2], '(' .. int(now), '+inf', 'LIMIT', 0, n)
  if #victims > 0 then
    -- Session keys share the prefix of KEYS[1] (and so its hash tag).
    local stem = string.sub(KEYS[1], 1, #KEYS[1] - #ARGV[1])
    for _, id in ipairs(victims) do
      redis.call('DEL', stem .. id)
    end
    redis.call('ZREM', KEYS[2], unpack(victims))
    redis.call('ZREM', KEYS[3], unpack(victims))
  end
  evicted = #victims
end
local ttl = tonumber(ARGV[2])
local exp = now + ttl
redis.call('HSET', KEYS[1], 'created_ms', int(now), 'last_ms', int(now), 'ttl_ms', int(ttl), 'data', ARGV[3])
-- Redis deletes a key once now > its expiry time; the contract says a
-- session is gone once now >= expires_at, hence the - 1.
redis.call('PEXPIREAT', KEYS[1], int(exp - 1))
redis.call('ZADD', KEYS[3], int(now), ARGV[1])
index_put(KEYS[2], KEYS[3], ARGV[1], exp, now)
return {'created', int(now), int(evicted)}
