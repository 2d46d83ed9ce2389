//! Postgres MemoryStore and SessionStore for selfrag storage (tokio-postgres + deadpool)
