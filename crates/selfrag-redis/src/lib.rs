//! Redis SessionStore and RateLimiter for selfrag storage (deadpool-redis, atomic Lua)
