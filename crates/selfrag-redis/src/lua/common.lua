-- Shared helpers, prepended to every selfrag script (see src/scripts.rs).
-- All numbers are Lua doubles: integers are exact below 2^53, which the core
-- bounds keep every product under (see ratelimit.lua).

-- The Redis server's clock in milliseconds since the Unix epoch. TIME makes
-- the script non-deterministic, which Redis >= 5 allows because scripts are
-- replicated by their effects, not verbatim.
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- An integer as a decimal string. Lua's own tostring uses "%.14g", which
-- would switch to exponent notation above 10^14.
local function int(x)
  return string.format('%.0f', x)
end

-- floor(a / b) for integers 0 <= a < 2^53, b > 0, exactly: the double
-- division may round across an integer, so step back or forward once.
local function fdiv(a, b)
  local q = math.floor(a / b)
  if q * b > a then
    q = q - 1
  elseif (q + 1) * b <= a then
    q = q + 1
  end
  return q
end

-- ceil(a / b) under the same bounds.
local function cdiv(a, b)
  return fdiv(a + b - 1, b)
end

-- A user's sessions are indexed twice, with the same members (session ids):
-- `index` scored by expiry (which sessions are live, which ends soonest) and
-- `created` scored by creation time (newest first for listing). Every script
-- that adds or removes a session does both.

-- Drops from both indexes up to 500 members that expired by `now` (Redis
-- has already deleted their hashes). Bounded, so no call does work
-- proportional to a backlog: members beyond it expired too and are dropped
-- by later calls; counts of live sessions subtract them with ZCOUNT.
local function index_prune(index, created, now)
  local gone = redis.call('ZRANGEBYSCORE', index, '-inf', int(now), 'LIMIT', 0, 500)
  if #gone > 0 then
    redis.call('ZREM', index, unpack(gone))
    redis.call('ZREM', created, unpack(gone))
  end
end

-- Records session `id` as expiring at `exp` in the user's expiry index,
-- prunes, and keeps both index keys alive exactly as long as the user's
-- latest session.
local function index_put(index, created, id, exp, now)
  index_prune(index, created, now)
  redis.call('ZADD', index, int(exp), id)
  local last = redis.call('ZRANGE', index, -1, -1, 'WITHSCORES')
  redis.call('PEXPIREAT', index, last[2])
  redis.call('PEXPIREAT', created, last[2])
end
