-- KEYS[1] the limit's key base `<prefix>{u:<user>}:rl:<scope>`; bucket keys
--         are `<base>:<window_ms>:<bucket index>`, built here from the
--         server clock and sharing KEYS[1]'s hash tag (one cluster slot).
-- ARGV[1] cost; then for each window, shortest first: length in ms, limit.
--
-- Runs selfrag_core::ratelimit::evaluate on the server clock, and when every
-- window allows, adds `cost` to every window's current bucket (all or
-- nothing: Redis runs a script atomically).
--
-- Precision: lengths are at most 31 days (2.68e9 ms), limits and bucket
-- counts at most 1e6, so the largest product, (prev + curr + cost) * W, stays
-- below 8.1e15 < 2^53: every value here is an exact integer.
--
-- Returns {allowed (0/1), retry_after_ms, now_ms, then per window: allowed
-- (0/1), remaining}.
local now = now_ms()
local cost = tonumber(ARGV[1])
local n = (#ARGV - 1) / 2
local windows = {}
local all = true
local retry = 0
for i = 1, n do
  local w = tonumber(ARGV[2 * i])
  local limit = tonumber(ARGV[2 * i + 1])
  local k = fdiv(now, w)
  local e = now - k * w
  local stem = KEYS[1] .. ':' .. int(w) .. ':'
  local curr_key = stem .. int(k)
  local curr = tonumber(redis.call('GET', curr_key) or '0')
  local prev = tonumber(redis.call('GET', stem .. int(k - 1)) or '0')
  -- Scaled by W to stay in integers: used * W = prev * (W - e) + curr * W.
  local used = prev * (w - e) + curr * w
  local ok = used + cost * w <= limit * w
  if not ok then
    all = false
    local wait
    if curr + cost <= limit then
      -- Wait inside this bucket until prev's share has decayed.
      wait = cdiv(used + cost * w - limit * w, prev)
    else
      -- Wait for the next bucket, where this bucket becomes prev.
      wait = (w - e) + cdiv(w * (curr + cost - limit), curr)
    end
    if wait > retry then
      retry = wait
    end
  end
  windows[i] = { w = w, limit = limit, used = used, ok = ok, key = curr_key }
end
local out = { all and 1 or 0, retry, now }
for i = 1, n do
  local x = windows[i]
  local after = x.used
  if all then
    after = after + cost * x.w
    redis.call('INCRBY', x.key, int(cost))
    -- A bucket is read as prev during the next bucket: keep it 2 * W.
    redis.call('PEXPIRE', x.key, int(2 * x.w))
  end
  local remaining = x.limit * x.w - after
  if remaining < 0 then
    remaining = 0
  else
    remaining = fdiv(remaining, x.w)
  end
  out[#out + 1] = x.ok and 1 or 0
  out[#out + 1] = remaining
end
return out
