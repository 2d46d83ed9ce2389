-- KEYS[1] the limit's key base (see ratelimit_check.lua)
-- ARGV: the policy's window lengths in ms.
-- Deletes the buckets a check could read now (previous and current) and the
-- next one (in case the server clock stepped back).
local now = now_ms()
for i = 1, #ARGV do
  local w = tonumber(ARGV[i])
  local k = fdiv(now, w)
  local stem = KEYS[1] .. ':' .. int(w) .. ':'
  redis.call('DEL', stem .. int(k - 1), stem .. int(k), stem .. int(k + 1))
end
return 0
