-- KEYS[1] the user's expiry index, KEYS[2] its created-at index
-- ARGV[1] the user's session key prefix (`<prefix>{u:<user>}:s:`)
-- ARGV[2] limit (1..1000), ARGV[3] most dead members to step over
--
-- Returns {complete, then per session: id, created_ms, last_ms, ttl_ms,
-- data}: the `limit` newest live sessions, newest first (created-at index
-- descending; equal times by id descending). Members whose session is gone
-- (expired, or evicted under memory pressure) are dropped from both indexes
-- on the way. Reads at most `limit` live sessions plus ARGV[3] dead ones:
-- past that it stops with complete = 0, having dropped what it stepped over,
-- and the caller asks again.
--
-- The session keys are derived from the index here instead of being passed
-- in KEYS (their ids are only known inside the script); they carry the same
-- `{u:<user>}` hash tag as KEYS[1], so on Redis Cluster they live in the slot
-- the script is routed to.
local now = now_ms()
index_prune(KEYS[1], KEYS[2], now)
local limit = tonumber(ARGV[2])
local budget = tonumber(ARGV[3])
local out = {'1'}
local found, dead, rank = 0, 0, 0
while found < limit do
  local ids = redis.call('ZREVRANGE', KEYS[2], rank, rank + (limit - found) - 1)
  if #ids == 0 then
    break
  end
  for _, id in ipairs(ids) do
    local key = ARGV[1] .. id
    local f = redis.call('HMGET', key, 'created_ms', 'last_ms', 'ttl_ms', 'data')
    if f[1] and now < tonumber(f[2]) + tonumber(f[3]) then
      out[#out + 1] = id
      out[#out + 1] = f[1]
      out[#out + 1] = f[2]
      out[#out + 1] = f[3]
      out[#out + 1] = f[4]
      found = found + 1
      -- Kept members stay in place; dropped ones shift the rest up.
      rank = rank + 1
    else
      redis.call('DEL', key)
      redis.call('ZREM', KEYS[1], id)
      redis.call('ZREM', KEYS[2], id)
      dead = dead + 1
    end
  end
  if dead >= budget and found < limit then
    out[1] = '0'
    break
  end
end
return out
