//! Connection settings: [`RedisConfig`] and its builder.

use std::time::Duration;

use deadpool_redis::{Pool, PoolConfig, Runtime, Timeouts};
use selfrag_core::{Error, Result};

/// How to reach Redis and how to name keys.
///
/// Build one with [`RedisConfig::builder`] or [`RedisConfig::from_env`]; the
/// fields are public for reading and for struct-update syntax, and are checked
/// again by [`RedisConfig::create_pool`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisConfig {
    /// The server URL, e.g. `redis://127.0.0.1:6379/0` or
    /// `rediss://user:pass@host:6380` (TLS needs a TLS feature of the
    /// re-exported `deadpool_redis`). Default `redis://127.0.0.1:6379`.
    pub url: String,
    /// Prepended to every key (default `selfrag:`), so several applications
    /// or test runs can share one database. At most 128 bytes, no `{` or `}`
    /// (the hash tag must stay the user's), no whitespace or control
    /// characters.
    pub key_prefix: String,
    /// Most connections the pool hands out at once (default 16). It does
    /// **not** bound the connections the stores hold: each store (with its
    /// clones) takes one connection out of the pool for good and multiplexes
    /// all its calls over it, and a taken connection no longer counts against
    /// the pool (see "Connections" in the crate docs). What it bounds is how
    /// many connections are being opened at once by the stores sharing the
    /// pool (on first use and on reconnects), plus any connections your own
    /// code checks out with `pool.get()`. 1 is enough for the stores alone.
    pub pool_size: usize,
    /// Longest wait for a pooled connection, including opening a new one
    /// (default 2 s).
    pub connect_timeout: Duration,
    /// Longest wait for the reply to one command or script (default 2 s); a
    /// call that takes longer fails with [`Error::Timeout`].
    pub response_timeout: Duration,
}

impl RedisConfig {
    /// The default server URL.
    pub const DEFAULT_URL: &'static str = "redis://127.0.0.1:6379";
    /// The default key prefix.
    pub const DEFAULT_KEY_PREFIX: &'static str = "selfrag:";
    /// The default pool size.
    pub const DEFAULT_POOL_SIZE: usize = 16;
    /// The default connect and response timeout.
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2);
    /// Longest key prefix, in bytes.
    pub const MAX_KEY_PREFIX_LEN: usize = 128;

    /// A builder starting from the defaults.
    pub fn builder() -> RedisConfigBuilder {
        RedisConfigBuilder { config: Self::default() }
    }

    /// The configuration from environment variables:
    ///
    /// | variable | field | default |
    /// | --- | --- | --- |
    /// | `REDIS_URL` | `url` | `redis://127.0.0.1:6379` |
    /// | `SELFRAG_REDIS_PREFIX` | `key_prefix` | `selfrag:` |
    /// | `SELFRAG_REDIS_POOL_SIZE` | `pool_size` | 16 |
    /// | `SELFRAG_REDIS_CONNECT_TIMEOUT_MS` | `connect_timeout` | 2000 |
    /// | `SELFRAG_REDIS_RESPONSE_TIMEOUT_MS` | `response_timeout` | 2000 |
    ///
    /// # Errors
    /// [`Error::InvalidInput`] naming the variable when a value does not
    /// parse, and as [`RedisConfigBuilder::build`].
    pub fn from_env() -> Result<Self> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// [`RedisConfig::from_env`] over any lookup function (for tests and for
    /// configuration systems other than the process environment).
    ///
    /// # Errors
    /// As [`RedisConfig::from_env`].
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self> {
        let mut b = Self::builder();
        if let Some(url) = lookup("REDIS_URL") {
            b = b.url(url);
        }
        if let Some(prefix) = lookup("SELFRAG_REDIS_PREFIX") {
            b = b.key_prefix(prefix);
        }
        if let Some(size) = lookup("SELFRAG_REDIS_POOL_SIZE") {
            b = b.pool_size(parse_num("SELFRAG_REDIS_POOL_SIZE", &size)?);
        }
        if let Some(ms) = lookup("SELFRAG_REDIS_CONNECT_TIMEOUT_MS") {
            b = b.connect_timeout(Duration::from_millis(parse_num("SELFRAG_REDIS_CONNECT_TIMEOUT_MS", &ms)?));
        }
        if let Some(ms) = lookup("SELFRAG_REDIS_RESPONSE_TIMEOUT_MS") {
            b = b.response_timeout(Duration::from_millis(parse_num("SELFRAG_REDIS_RESPONSE_TIMEOUT_MS", &ms)?));
        }
        b.build()
    }

    /// Checks every field.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] naming the field: `url` (empty or not a
    /// `redis://`, `rediss://` or `unix://` URL), `key_prefix` (see the
    /// field), `pool_size` (0), `connect_timeout` / `response_timeout` (zero).
    pub fn validate(&self) -> Result<()> {
        let url = self.url.trim();
        if !["redis://", "rediss://", "unix://", "redis+unix://"].iter().any(|s| url.starts_with(s)) {
            return Err(Error::invalid("url", "must start with redis://, rediss://, unix:// or redis+unix://"));
        }
        validate_prefix(&self.key_prefix)?;
        if self.pool_size == 0 {
            return Err(Error::invalid("pool_size", "must be at least 1"));
        }
        if self.connect_timeout.is_zero() {
            return Err(Error::invalid("connect_timeout", "must be positive"));
        }
        if self.response_timeout.is_zero() {
            return Err(Error::invalid("response_timeout", "must be positive"));
        }
        Ok(())
    }

    /// A connection pool for this configuration. Connections are opened
    /// lazily, on first use, so this succeeds while Redis is down (a rate
    /// limiter with a failure policy can start without it).
    ///
    /// # Errors
    /// [`Error::InvalidInput`] as [`RedisConfig::validate`], or when the
    /// driver rejects the URL (field `url`).
    pub fn create_pool(&self) -> Result<Pool> {
        self.validate()?;
        let mut cfg = deadpool_redis::Config::from_url(self.url.trim());
        let mut pool = PoolConfig::new(self.pool_size);
        pool.timeouts = Timeouts {
            wait: Some(self.connect_timeout),
            create: Some(self.connect_timeout),
            recycle: Some(self.connect_timeout),
        };
        cfg.pool = Some(pool);
        cfg.create_pool(Some(Runtime::Tokio1)).map_err(|e| Error::invalid("url", e.to_string()))
    }
}

impl Default for RedisConfig {
    fn default() -> Self {
        Self {
            url: Self::DEFAULT_URL.to_owned(),
            key_prefix: Self::DEFAULT_KEY_PREFIX.to_owned(),
            pool_size: Self::DEFAULT_POOL_SIZE,
            connect_timeout: Self::DEFAULT_TIMEOUT,
            response_timeout: Self::DEFAULT_TIMEOUT,
        }
    }
}

/// Builds a [`RedisConfig`]; [`build`](RedisConfigBuilder::build) checks it.
#[derive(Debug, Clone)]
pub struct RedisConfigBuilder {
    config: RedisConfig,
}

impl RedisConfigBuilder {
    /// Sets [`RedisConfig::url`].
    pub fn url(mut self, url: impl Into<String>) -> Self {
        self.config.url = url.into();
        self
    }

    /// Sets [`RedisConfig::key_prefix`].
    pub fn key_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.config.key_prefix = prefix.into();
        self
    }

    /// Sets [`RedisConfig::pool_size`].
    pub fn pool_size(mut self, size: usize) -> Self {
        self.config.pool_size = size;
        self
    }

    /// Sets [`RedisConfig::connect_timeout`].
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.config.connect_timeout = timeout;
        self
    }

    /// Sets [`RedisConfig::response_timeout`].
    pub fn response_timeout(mut self, timeout: Duration) -> Self {
        self.config.response_timeout = timeout;
        self
    }

    /// The checked configuration.
    ///
    /// # Errors
    /// As [`RedisConfig::validate`].
    pub fn build(self) -> Result<RedisConfig> {
        self.config.validate()?;
        Ok(self.config)
    }
}

fn parse_num<T: std::str::FromStr>(var: &'static str, value: &str) -> Result<T>
where
    T::Err: std::fmt::Display,
{
    value.trim().parse().map_err(|e| Error::invalid(var, format!("{value:?} is not a number: {e}")))
}

/// Checks a key prefix (see [`RedisConfig::key_prefix`]).
pub(crate) fn validate_prefix(prefix: &str) -> Result<()> {
    if prefix.len() > RedisConfig::MAX_KEY_PREFIX_LEN {
        return Err(Error::invalid(
            "key_prefix",
            format!("is {} bytes, the limit is {}", prefix.len(), RedisConfig::MAX_KEY_PREFIX_LEN),
        ));
    }
    // A `{` in the prefix would make Redis Cluster hash the prefix instead of
    // the user's tag, putting every user in one slot (or splitting a user's
    // keys across slots).
    if let Some(bad) = prefix.chars().find(|c| matches!(c, '{' | '}') || c.is_whitespace() || c.is_control()) {
        return Err(Error::invalid("key_prefix", format!("must not contain {bad:?}")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn lookup(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = vars.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
        move |k| map.get(k).cloned()
    }

    #[test]
    fn defaults_and_env() {
        let c = RedisConfig::from_lookup(lookup(&[])).unwrap();
        assert_eq!(c, RedisConfig::default());
        let c = RedisConfig::from_lookup(lookup(&[
            ("REDIS_URL", "redis://example:6380/2"),
            ("SELFRAG_REDIS_PREFIX", "app:"),
            ("SELFRAG_REDIS_POOL_SIZE", "4"),
            ("SELFRAG_REDIS_CONNECT_TIMEOUT_MS", "150"),
            ("SELFRAG_REDIS_RESPONSE_TIMEOUT_MS", "250"),
        ]))
        .unwrap();
        assert_eq!(c.url, "redis://example:6380/2");
        assert_eq!(c.key_prefix, "app:");
        assert_eq!(c.pool_size, 4);
        assert_eq!(c.connect_timeout, Duration::from_millis(150));
        assert_eq!(c.response_timeout, Duration::from_millis(250));
    }

    #[test]
    fn bad_values_name_their_field() {
        let err = RedisConfig::from_lookup(lookup(&[("SELFRAG_REDIS_POOL_SIZE", "many")])).unwrap_err();
        assert_eq!(err.field(), Some("SELFRAG_REDIS_POOL_SIZE"));
        assert_eq!(RedisConfig::builder().url("http://x").build().unwrap_err().field(), Some("url"));
        assert_eq!(RedisConfig::builder().key_prefix("a{b}").build().unwrap_err().field(), Some("key_prefix"));
        assert_eq!(RedisConfig::builder().key_prefix("a b").build().unwrap_err().field(), Some("key_prefix"));
        assert_eq!(RedisConfig::builder().key_prefix("x".repeat(129)).build().unwrap_err().field(), Some("key_prefix"));
        assert_eq!(RedisConfig::builder().pool_size(0).build().unwrap_err().field(), Some("pool_size"));
        assert_eq!(
            RedisConfig::builder().response_timeout(Duration::ZERO).build().unwrap_err().field(),
            Some("response_timeout")
        );
        assert!(RedisConfig::builder().key_prefix("").build().is_ok());
    }

    #[test]
    fn pool_is_created_without_a_server() {
        // Port 1 is closed: creating the pool must not connect.
        let pool = RedisConfig::builder().url("redis://127.0.0.1:1").build().unwrap().create_pool().unwrap();
        assert_eq!(pool.status().max_size, RedisConfig::DEFAULT_POOL_SIZE);
    }
}
