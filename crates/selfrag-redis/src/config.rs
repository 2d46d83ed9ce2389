//! Connection settings: [`RedisConfig`] and its builder, the pool they
//! build ([`RedisPool`]), and [`redact_url`].

use std::fmt;
use std::ops::Deref;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use deadpool_redis::{Pool, PoolConfig, Runtime, Timeouts};
use selfrag_core::{Error, Result};

/// How to reach Redis and how to name keys.
///
/// Build one with [`RedisConfig::builder`] or [`RedisConfig::from_env`]; the
/// fields are public for reading and for struct-update syntax, and are checked
/// again by [`RedisConfig::create_pool`].
///
/// `Debug` shows the URL through [`redact_url`]: never its password.
#[derive(Clone, PartialEq, Eq)]
pub struct RedisConfig {
    /// The server URL, e.g. `redis://127.0.0.1:6379/0`, or
    /// `rediss://user:pass@host:6380` for TLS (checked against the system's
    /// roots, or [`tls_ca_file`](Self::tls_ca_file)) and an ACL user. Default
    /// `redis://127.0.0.1:6379`.
    pub url: String,
    /// Seed nodes of a Redis Cluster: `redis://` or `rediss://` URLs with
    /// the same credentials and TLS mode. Empty (the default): one server at
    /// [`url`](Self::url). Non-empty: the stores talk to the cluster through
    /// [`RedisConfig::connector`]; one reachable seed is enough (the others
    /// are found with `CLUSTER SLOTS`), and `url` is not used.
    /// [`RedisConfig::from_env`] fills it from several comma-separated URLs
    /// in `REDIS_URL`, or from `SELFRAG_REDIS_CLUSTER=1`.
    pub cluster_nodes: Vec<String>,
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
    /// CA certificates (PEM file) that the server's certificate must chain
    /// to, instead of the system's roots. Needs a `rediss://` URL. Default:
    /// none (the system's roots).
    pub tls_ca_file: Option<PathBuf>,
    /// A client certificate (PEM, its chain may follow) to present, for
    /// servers started with `tls-auth-clients yes`. Needs
    /// [`tls_client_key_file`](Self::tls_client_key_file). Default: none.
    pub tls_client_cert_file: Option<PathBuf>,
    /// The client certificate's private key (PEM: PKCS#8, PKCS#1 or SEC1,
    /// not encrypted). Default: none.
    pub tls_client_key_file: Option<PathBuf>,
    /// Encrypt, but check no certificate (chain nor host name): like
    /// Postgres's `sslmode=require`, and like a `#insecure` fragment on the
    /// URL. Only for servers whose certificate cannot be checked; anyone on
    /// the path can then read and change the traffic. Default: `false`.
    pub tls_insecure: bool,
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
    /// | `REDIS_URL` | `url`; several comma-separated URLs: `cluster_nodes` | `redis://127.0.0.1:6379` |
    /// | `SELFRAG_REDIS_CLUSTER` | `1`/`true`: `REDIS_URL` names cluster seeds, even one; `0`/`false`: one server | by the number of URLs |
    /// | `SELFRAG_REDIS_PREFIX` | `key_prefix` | `selfrag:` |
    /// | `SELFRAG_REDIS_POOL_SIZE` | `pool_size` | 16 |
    /// | `SELFRAG_REDIS_CONNECT_TIMEOUT_MS` | `connect_timeout` | 2000 |
    /// | `SELFRAG_REDIS_RESPONSE_TIMEOUT_MS` | `response_timeout` | 2000 |
    /// | `SELFRAG_REDIS_TLS_CA` | `tls_ca_file` | none: system roots |
    /// | `SELFRAG_REDIS_TLS_CERT` | `tls_client_cert_file` | none |
    /// | `SELFRAG_REDIS_TLS_KEY` | `tls_client_key_file` | none |
    /// | `SELFRAG_REDIS_TLS_INSECURE` | `tls_insecure` (`1`/`true`, `0`/`false`) | `false` |
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
        let (url, seeds) = crate::cluster::urls_from_env(lookup("REDIS_URL"), lookup("SELFRAG_REDIS_CLUSTER"))?;
        if let Some(url) = url {
            b = b.url(url);
        }
        b = b.cluster_nodes(seeds);
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
        let path = |var: &str| lookup(var).filter(|v| !v.trim().is_empty()).map(PathBuf::from);
        b.config.tls_ca_file = path("SELFRAG_REDIS_TLS_CA");
        b.config.tls_client_cert_file = path("SELFRAG_REDIS_TLS_CERT");
        b.config.tls_client_key_file = path("SELFRAG_REDIS_TLS_KEY");
        if let Some(v) = lookup("SELFRAG_REDIS_TLS_INSECURE") {
            b = b.tls_insecure(match v.trim().to_ascii_lowercase().as_str() {
                "1" | "true" | "yes" | "on" => true,
                "" | "0" | "false" | "no" | "off" => false,
                _ => return Err(Error::invalid("SELFRAG_REDIS_TLS_INSECURE", "must be 1/true or 0/false")),
            });
        }
        b.build()
    }

    /// Checks every field.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] naming the field: `url` (empty or not a
    /// `redis://`, `rediss://` or `unix://` URL), `cluster_nodes` (a seed
    /// that is not a `redis://` or `rediss://` URL the driver accepts, or
    /// seeds differing in credentials or TLS mode), `key_prefix` (see the
    /// field), `pool_size` (0), `connect_timeout` / `response_timeout` (zero),
    /// the TLS fields (set without a `rediss://` URL; a certificate without
    /// its key or the reverse; `tls_insecure` with `tls_ca_file`, which it
    /// would ignore). Files are read by [`RedisConfig::create_pool`].
    pub fn validate(&self) -> Result<()> {
        let url = self.url.trim();
        if !["redis://", "rediss://", "unix://", "redis+unix://"].iter().any(|s| url.starts_with(s)) {
            return Err(Error::invalid("url", "must start with redis://, rediss://, unix:// or redis+unix://"));
        }
        crate::cluster::validate_nodes(&self.cluster_nodes)?;
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
        self.validate_tls()
    }

    /// A connection pool for this configuration. Connections are opened
    /// lazily, on first use, so this succeeds while Redis is down (a rate
    /// limiter with a failure policy can start without it).
    ///
    /// # Errors
    /// [`Error::InvalidInput`] as [`RedisConfig::validate`], when the
    /// driver rejects the URL (field `url`), or for a cluster configuration
    /// (field `cluster_nodes`: use [`RedisConfig::connector`]).
    pub fn create_pool(&self) -> Result<RedisPool> {
        self.validate()?;
        if !self.cluster_nodes.is_empty() {
            return Err(Error::invalid(
                "cluster_nodes",
                "a cluster has no single-server pool: use RedisConfig::connector",
            ));
        }
        let mut pool = PoolConfig::new(self.pool_size);
        pool.timeouts = Timeouts {
            wait: Some(self.connect_timeout),
            create: Some(self.connect_timeout),
            recycle: Some(self.connect_timeout),
        };
        // The driver's messages name what is wrong (`Invalid database
        // number`, `Missing hostname`), never the URL itself. The manager is
        // built from the connection info (not deadpool's `Config`, whose
        // serializable copy of it drops the TLS certificates).
        let info = self.connection_info(self.url.trim())?;
        let manager = deadpool_redis::Manager::new(info).map_err(|e| Error::invalid("url", e.to_string()))?;
        let pool = Pool::builder(manager)
            .config(pool)
            .runtime(Runtime::Tokio1)
            .build()
            .map_err(|e| Error::backend(crate::BACKEND, "cannot build the connection pool", false, e))?;
        Ok(RedisPool { pool, server: Some(redact_url(&self.url).into()) })
    }

    /// The driver's connection info for `url` with this configuration's TLS
    /// settings: the CA and client certificate files read now (a pool
    /// keeps them; build a new one to pick up rotated files), `tls_insecure`
    /// as the driver's `#insecure`.
    ///
    /// # Errors
    /// [`Error::InvalidInput`]: `url` when the driver rejects it, the TLS
    /// field naming a file that cannot be read or holds no PEM of the right
    /// kind (the message never quotes a key).
    pub fn connection_info(&self, url: &str) -> Result<deadpool_redis::redis::ConnectionInfo> {
        use deadpool_redis::redis::IntoConnectionInfo;
        let info = url.into_connection_info().map_err(|e| Error::invalid("url", e.to_string()))?;
        self.with_tls(info)
    }

    /// `info` with this configuration's TLS settings (see
    /// [`RedisConfig::connection_info`]); unchanged when it is not TLS.
    pub(crate) fn with_tls(
        &self,
        mut info: deadpool_redis::redis::ConnectionInfo,
    ) -> Result<deadpool_redis::redis::ConnectionInfo> {
        use deadpool_redis::redis::ConnectionAddr;
        let ConnectionAddr::TcpTls { insecure, .. } = &mut info.addr else {
            return Ok(info);
        };
        crate::tls::install_default_provider();
        if self.tls_insecure {
            *insecure = true;
        }
        match crate::tls::certificates(self)? {
            Some(certs) => deadpool_redis::redis::Client::build_with_tls(info, certs)
                .map(|client| client.get_connection_info().clone())
                .map_err(|e| Error::invalid("tls_ca_file", e.to_string())),
            None => Ok(info),
        }
    }

    fn validate_tls(&self) -> Result<()> {
        let tls_url = |u: &str| u.trim().starts_with("rediss://");
        let any_tls = tls_url(&self.url) || self.cluster_nodes.iter().any(|u| tls_url(u));
        for (field, set) in [
            ("tls_ca_file", self.tls_ca_file.is_some()),
            ("tls_client_cert_file", self.tls_client_cert_file.is_some()),
            ("tls_client_key_file", self.tls_client_key_file.is_some()),
            ("tls_insecure", self.tls_insecure),
        ] {
            if set && !any_tls {
                return Err(Error::invalid(field, "needs a rediss:// URL (TLS)"));
            }
        }
        match (&self.tls_client_cert_file, &self.tls_client_key_file) {
            (Some(_), None) => Err(Error::invalid("tls_client_key_file", "is needed with tls_client_cert_file")),
            (None, Some(_)) => Err(Error::invalid("tls_client_cert_file", "is needed with tls_client_key_file")),
            _ if self.tls_insecure && self.tls_ca_file.is_some() => Err(Error::invalid(
                "tls_insecure",
                "checks no certificate, so tls_ca_file would be ignored: set one or the other",
            )),
            _ => Ok(()),
        }
    }

    /// [`RedisConfig::url`] without its password: see [`redact_url`].
    pub fn redacted_url(&self) -> String {
        redact_url(&self.url)
    }
}

impl fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisConfig")
            .field("url", &redact_url(&self.url))
            .field("cluster_nodes", &self.cluster_nodes.iter().map(|u| redact_url(u)).collect::<Vec<_>>())
            .field("key_prefix", &self.key_prefix)
            .field("pool_size", &self.pool_size)
            .field("connect_timeout", &self.connect_timeout)
            .field("response_timeout", &self.response_timeout)
            .field("tls_ca_file", &self.tls_ca_file)
            .field("tls_client_cert_file", &self.tls_client_cert_file)
            .field("tls_client_key_file", &self.tls_client_key_file)
            .field("tls_insecure", &self.tls_insecure)
            .finish()
    }
}

/// A [`deadpool_redis::Pool`] whose `Debug` never shows the password.
///
/// The driver's pool prints its connection info, password included, when
/// formatted with `{:?}`; this wrapper prints the pool's status and the
/// server's URL through [`redact_url`] instead. It dereferences to the
/// driver's pool, so `pool.get()`, `pool.status()` and the rest work as
/// before, and converts both ways: the stores' constructors take anything
/// that converts into it (a [`RedisPool`] or a `deadpool_redis::Pool`), and
/// [`RedisPool::into_inner`] gives the driver's pool back. Cloning is cheap
/// (the pool is reference-counted), and clones share the connections.
#[derive(Clone)]
pub struct RedisPool {
    pool: Pool,
    /// The redacted URL, when the pool was built from a [`RedisConfig`] (a
    /// driver pool wrapped by `From` does not expose its URL).
    server: Option<Arc<str>>,
}

impl RedisPool {
    /// The driver's pool.
    pub fn into_inner(self) -> Pool {
        self.pool
    }

    /// The server's URL without its password (see [`redact_url`]), when the
    /// pool was built by [`RedisConfig::create_pool`].
    pub fn redacted_url(&self) -> Option<&str> {
        self.server.as_deref()
    }
}

impl Deref for RedisPool {
    type Target = Pool;

    fn deref(&self) -> &Pool {
        &self.pool
    }
}

impl AsRef<Pool> for RedisPool {
    fn as_ref(&self) -> &Pool {
        &self.pool
    }
}

impl From<Pool> for RedisPool {
    fn from(pool: Pool) -> Self {
        Self { pool, server: None }
    }
}

impl From<RedisPool> for Pool {
    fn from(pool: RedisPool) -> Self {
        pool.pool
    }
}

impl fmt::Debug for RedisPool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisPool").field("url", &self.server).field("status", &self.pool.status()).finish()
    }
}

/// What [`redact_url`] prints for a URL it cannot parse.
const UNPARSEABLE: &str = "<redacted: not a valid Redis URL>";
/// What [`redact_url`] prints for a URL with an `@` after its host.
const AMBIGUOUS: &str = "<redacted: Redis URL with an `@` after the host (percent-encode it as %40)>";

/// A Redis URL as it may be printed: the password replaced by `***`.
///
/// The URL is parsed by the driver's own parser ([`redis::parse_redis_url`],
/// so the result shows how the driver reads it) and printed again from its
/// parts: `redis://user:***@host:port/db`, `rediss://:***@host`,
/// `redis+unix:///path?db=1&pass=***`. Userinfo ends at the *last* `@`
/// before the host, so a password holding an unencoded `@` is hidden whole;
/// a user name without a password (which the driver ignores: most likely a
/// password missing its `:`) is hidden too.
/// Query values whose key names a secret (`pass`, `password`, a `token`, a
/// `key`, ...) are replaced by `***`; a fragment other than `#insecure` is
/// left out. A string that does not parse, or that holds an `@` after the
/// host (where a password with an unencoded `/` or `?` spills, leaving the
/// split unclear), gives a fixed placeholder, never any of the string.
///
/// [`redis::parse_redis_url`]: deadpool_redis::redis::parse_redis_url
pub fn redact_url(url: &str) -> String {
    let Some(parsed) = deadpool_redis::redis::parse_redis_url(url.trim()) else {
        return UNPARSEABLE.to_owned();
    };
    // An `@` after the host means the URL does not split where its author
    // meant: `redis://u:12/34@h` parses as host `u`, port 12, path `/34@h`
    // for a password `12/34`. No part of such a URL is safe to print.
    if [Some(parsed.path()), parsed.query(), parsed.fragment()].into_iter().flatten().any(|p| p.contains('@')) {
        return AMBIGUOUS.to_owned();
    }
    let mut out = format!("{}://", parsed.scheme());
    let user = parsed.username();
    match (user.is_empty(), parsed.password().is_some()) {
        (_, true) => out.push_str(&format!("{user}:***@")),
        // A user without a password is not sent to Redis at all: most
        // likely a password whose leading `:` was forgotten.
        (false, false) => out.push_str("***@"),
        (true, false) => {}
    }
    if let Some(host) = parsed.host_str() {
        out.push_str(host);
    }
    if let Some(port) = parsed.port() {
        out.push_str(&format!(":{port}"));
    }
    out.push_str(parsed.path());
    if parsed.query().is_some() {
        let pairs: Vec<String> = parsed
            .query_pairs()
            .map(|(k, v)| if is_secret_key(&k) { format!("{k}=***") } else { format!("{k}={v}") })
            .collect();
        out.push('?');
        out.push_str(&pairs.join("&"));
    }
    if parsed.fragment() == Some("insecure") {
        out.push_str("#insecure");
    }
    out
}

/// Whether a URL query key names a secret: `pass` (redis-rs reads the
/// password of a `redis+unix://` URL from it), `password`, and anything
/// naming a token, key, secret or credential, to be safe.
fn is_secret_key(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    ["pass", "secret", "token", "key", "auth", "cred"].iter().any(|s| key.contains(s))
}

impl Default for RedisConfig {
    fn default() -> Self {
        Self {
            url: Self::DEFAULT_URL.to_owned(),
            cluster_nodes: Vec::new(),
            key_prefix: Self::DEFAULT_KEY_PREFIX.to_owned(),
            pool_size: Self::DEFAULT_POOL_SIZE,
            connect_timeout: Self::DEFAULT_TIMEOUT,
            response_timeout: Self::DEFAULT_TIMEOUT,
            tls_ca_file: None,
            tls_client_cert_file: None,
            tls_client_key_file: None,
            tls_insecure: false,
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

    /// Sets [`RedisConfig::cluster_nodes`] (empty: one server at the URL).
    pub fn cluster_nodes<S: Into<String>>(mut self, seeds: impl IntoIterator<Item = S>) -> Self {
        self.config.cluster_nodes = seeds.into_iter().map(Into::into).collect();
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

    /// Sets [`RedisConfig::tls_ca_file`].
    pub fn tls_ca_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.config.tls_ca_file = Some(path.into());
        self
    }

    /// Sets [`RedisConfig::tls_client_cert_file`] and
    /// [`RedisConfig::tls_client_key_file`].
    pub fn tls_client_cert(mut self, cert: impl Into<PathBuf>, key: impl Into<PathBuf>) -> Self {
        self.config.tls_client_cert_file = Some(cert.into());
        self.config.tls_client_key_file = Some(key.into());
        self
    }

    /// Sets [`RedisConfig::tls_insecure`].
    pub fn tls_insecure(mut self, insecure: bool) -> Self {
        self.config.tls_insecure = insecure;
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
    fn urls_are_printed_without_passwords() {
        assert_eq!(redact_url("redis://127.0.0.1:6379"), "redis://127.0.0.1:6379");
        assert_eq!(redact_url(" redis://:pw@h:6379/0 "), "redis://:***@h:6379/0");
        assert_eq!(redact_url("rediss://user:pw@h"), "rediss://user:***@h");
        assert_eq!(redact_url("rediss://:pw@h:6380/#insecure"), "rediss://:***@h:6380/#insecure");
        assert_eq!(redact_url("redis://u:p@ss@h/1"), "redis://u:***@h/1", "userinfo ends at the last @");
        assert_eq!(redact_url("redis://h/2?protocol=resp3"), "redis://h/2?protocol=resp3");
        assert_eq!(redact_url("redis+unix:///tmp/r.sock?db=1&pass=pw"), "redis+unix:///tmp/r.sock?db=1&pass=***");
        assert_eq!(redact_url("unix:///tmp/r.sock?user=u&password=pw"), "unix:///tmp/r.sock?user=u&password=***");
        assert_eq!(redact_url("redis://h#fragment"), "redis://h");
        assert_eq!(redact_url("redis://pw@h"), "redis://***@h");
        assert_eq!(redact_url("redis://u:12/34@h"), AMBIGUOUS);
        assert_eq!(redact_url("redis://u:12?x=34@h"), AMBIGUOUS);
        assert_eq!(redact_url("http://u:pw@h"), UNPARSEABLE);
        assert_eq!(redact_url("redis://u:p w@h"), "redis://u:***@h");
        assert_eq!(redact_url("redis://h:notaport"), UNPARSEABLE);
    }

    /// Every form a Redis URL holds a password in: the config, the builder,
    /// the pool and the errors never show it, while the driver's own pool
    /// does (which is why [`RedisPool`] wraps it).
    #[test]
    fn no_form_of_password_reaches_debug_or_errors() {
        const PW: &str = "R3disS3cret";
        for url in [
            format!("redis://:{PW}@127.0.0.1:1"),
            format!("redis://user:{PW}@127.0.0.1:1/2"),
            format!("rediss://:{PW}@127.0.0.1:1"),
            format!("redis://u:p@{PW}@127.0.0.1:1"),
            format!("redis://u:{PW}@@127.0.0.1:1"),
            format!("redis://{PW}@127.0.0.1:1"),
            format!("redis+unix:///tmp/none.sock?pass={PW}"),
            format!("unix:///tmp/none.sock?password={PW}"),
            format!("redis://u:{PW}/x@127.0.0.1:1"),
            format!("redis://u:{PW}@127.0.0.1:1/notadb"),
            format!("redis://:{PW}@127.0.0.1:1/?protocol=bogus"),
            format!("http://:{PW}@127.0.0.1:1"),
        ] {
            let config = RedisConfig { url: url.clone(), ..RedisConfig::default() };
            let builder = RedisConfig::builder().url(url.as_str());
            for text in [format!("{config:?}"), format!("{builder:?}"), config.redacted_url()] {
                assert!(!text.contains(PW), "{url}: {text}");
            }
            match config.create_pool() {
                Ok(pool) => {
                    assert!(!format!("{pool:?}").contains(PW), "{url}: {pool:?}");
                    if url.starts_with("redis://:") {
                        let raw = format!("{:?}", pool.clone().into_inner());
                        assert!(raw.contains(PW), "the driver's pool shows it: the wrapper is needed");
                    }
                }
                Err(e) => assert!(!format!("{e} {e:?}").contains(PW), "{url}: {e}"),
            }
        }
    }

    #[test]
    fn pool_is_created_without_a_server() {
        // Port 1 is closed: creating the pool must not connect.
        let pool = RedisConfig::builder().url("redis://127.0.0.1:1").build().unwrap().create_pool().unwrap();
        assert_eq!(pool.status().max_size, RedisConfig::DEFAULT_POOL_SIZE);
    }
}
