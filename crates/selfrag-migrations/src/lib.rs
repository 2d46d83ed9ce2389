//! Embedded, checksummed Postgres migrations for selfrag storage
