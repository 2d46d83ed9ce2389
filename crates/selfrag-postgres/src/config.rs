//! Connection settings and the pool built from them.

use std::fmt;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use selfrag_core::{Error, Result};

use crate::error::BACKEND;
use crate::tls::PgTls;

/// How to reach Postgres, and how the pool behaves.
///
/// Build it with [`PostgresConfig::from_env`] or [`PostgresConfig::with_url`]
/// and the setters below, then [`PostgresConfig::build`] a pool:
///
/// ```no_run
/// # fn run() -> selfrag_core::Result<()> {
/// use std::time::Duration;
/// use selfrag_postgres::PostgresConfig;
///
/// let pool = PostgresConfig::with_url("postgres://app@db.internal:5432/app")
///     .max_connections(32)
///     .statement_timeout(Some(Duration::from_secs(10)))
///     .schema("selfrag")
///     .build()?;
/// # Ok(()) }
/// ```
///
/// TLS follows libpq's `sslmode` (default `prefer`), read from the URL
/// (`?sslmode=verify-full&sslrootcert=/etc/ca.crt`) or set with
/// [`PostgresConfig::tls`]; see [`PgTls`] and the crate docs.
#[derive(Clone, PartialEq, Eq)]
pub struct PostgresConfig {
    /// A `postgres://` URL or a `key=value` connection string, as
    /// `tokio_postgres::Config` parses them, plus libpq's TLS options
    /// `sslmode` (all five), `sslrootcert`, `sslcert` and `sslkey` (see
    /// [`parse_url_with_tls`](crate::parse_url_with_tls)).
    pub url: String,
    /// TLS settings; each field set here wins over the URL's. Default:
    /// none set (the URL's, else `prefer` with system roots).
    pub tls: PgTls,
    /// Most connections the pool opens. Default: 16.
    pub max_connections: usize,
    /// Longest wait for a new connection to be established. Default: 5 s.
    pub connect_timeout: Duration,
    /// Longest wait for a pooled connection, all of it: waiting for a free
    /// slot when all are busy *and* establishing a new connection. Past it a
    /// call fails with a retryable [`Error::Unavailable`] (nothing was
    /// sent). Default: 5 s.
    pub acquire_timeout: Duration,
    /// The deadline of every store call, from its start: getting a
    /// connection and every statement the call sends. Past it the call
    /// returns [`Error::Timeout`] (within a few milliseconds), a cancel
    /// request is sent for its statement, and its connection is closed
    /// rather than returned to the pool. Used by the stores' `with_config`
    /// (their `new` takes the default). Default: 10 s.
    pub operation_timeout: Duration,
    /// TCP keepalive idle time of every connection: a peer that vanished
    /// (crashed host, dropped NAT entry) is found by the kernel after about
    /// this plus 3 probes 10 s apart, even on an idle pooled connection.
    /// Default: 30 s.
    pub keepalive_idle: Duration,
    /// `TCP_USER_TIMEOUT` (Linux): a connection whose sent data stays
    /// unacknowledged this long is closed by the kernel, so a partitioned
    /// connection fails instead of hanging for the kernel's default of about
    /// 15 minutes. `None` keeps the system default. Default: 30 s.
    pub tcp_user_timeout: Option<Duration>,
    /// `statement_timeout` of every connection, so a runaway statement
    /// cannot hold a connection forever (`None`: the server's setting).
    /// Default: 30 s. Migrations lift it while they run.
    pub statement_timeout: Option<Duration>,
    /// Schema to use instead of the server's default `search_path` (tables
    /// are created there by the migrations, and found there by the stores).
    /// It must exist. Default: none (normally `public`).
    pub schema: Option<String>,
    /// `application_name` reported to the server. Default: `selfrag`.
    pub application_name: String,
}

impl fmt::Debug for PostgresConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresConfig")
            .field("url", &redact(&self.url))
            .field("tls", &self.tls)
            .field("max_connections", &self.max_connections)
            .field("connect_timeout", &self.connect_timeout)
            .field("acquire_timeout", &self.acquire_timeout)
            .field("operation_timeout", &self.operation_timeout)
            .field("keepalive_idle", &self.keepalive_idle)
            .field("tcp_user_timeout", &self.tcp_user_timeout)
            .field("statement_timeout", &self.statement_timeout)
            .field("schema", &self.schema)
            .field("application_name", &self.application_name)
            .finish()
    }
}

/// The URL as `Debug` shows it: see [`redact_url`](crate::redact_url).
fn redact(url: &str) -> String {
    crate::redact::redact_url(url)
}

impl PostgresConfig {
    /// Default [`PostgresConfig::max_connections`].
    pub const DEFAULT_MAX_CONNECTIONS: usize = 16;
    /// Default [`PostgresConfig::connect_timeout`] and
    /// [`PostgresConfig::acquire_timeout`].
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);
    /// Default [`PostgresConfig::statement_timeout`].
    pub const DEFAULT_STATEMENT_TIMEOUT: Duration = Duration::from_secs(30);
    /// Default [`PostgresConfig::operation_timeout`].
    pub const DEFAULT_OPERATION_TIMEOUT: Duration = Duration::from_secs(10);
    /// Default [`PostgresConfig::keepalive_idle`].
    pub const DEFAULT_KEEPALIVE_IDLE: Duration = Duration::from_secs(30);
    /// Default [`PostgresConfig::tcp_user_timeout`].
    pub const DEFAULT_TCP_USER_TIMEOUT: Duration = Duration::from_secs(30);

    /// The settings for `url`, with the defaults above.
    pub fn with_url(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            tls: PgTls::default(),
            max_connections: Self::DEFAULT_MAX_CONNECTIONS,
            connect_timeout: Self::DEFAULT_TIMEOUT,
            acquire_timeout: Self::DEFAULT_TIMEOUT,
            operation_timeout: Self::DEFAULT_OPERATION_TIMEOUT,
            keepalive_idle: Self::DEFAULT_KEEPALIVE_IDLE,
            tcp_user_timeout: Some(Self::DEFAULT_TCP_USER_TIMEOUT),
            statement_timeout: Some(Self::DEFAULT_STATEMENT_TIMEOUT),
            schema: None,
            application_name: "selfrag".to_owned(),
        }
    }

    /// The settings for the URL in `DATABASE_URL`, with the defaults above.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] (`DATABASE_URL`) when it is unset or not
    /// Unicode.
    pub fn from_env() -> Result<Self> {
        match std::env::var("DATABASE_URL") {
            Ok(url) if !url.trim().is_empty() => Ok(Self::with_url(url)),
            Ok(_) | Err(std::env::VarError::NotPresent) => {
                Err(Error::invalid("DATABASE_URL", "is not set (expected e.g. postgres://user@host:5432/db)"))
            }
            Err(e) => Err(Error::invalid("DATABASE_URL", e.to_string())),
        }
    }

    /// Sets [`PostgresConfig::tls`]: its fields that are set override the
    /// URL's TLS options.
    ///
    /// ```
    /// use selfrag_postgres::{PgTls, PostgresConfig, SslMode};
    /// let config = PostgresConfig::with_url("postgres://app@db.internal/app")
    ///     .tls(PgTls::new(SslMode::VerifyFull).root_cert_file("/etc/selfrag/db-ca.crt"));
    /// assert!(config.effective_tls().unwrap().summary().unwrap().verifies_host);
    /// ```
    pub fn tls(mut self, tls: PgTls) -> Self {
        self.tls = tls;
        self
    }

    /// The TLS settings in effect: [`PostgresConfig::tls`] over the URL's.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] as for [`parse_url_with_tls`](crate::parse_url_with_tls)
    /// and [`PgTls::summary`].
    pub fn effective_tls(&self) -> Result<PgTls> {
        let (_, from_url) = crate::redact::parse_url_with_tls(&self.url)?;
        let tls = self.tls.or(&from_url);
        tls.summary()?;
        Ok(tls)
    }

    /// Sets [`PostgresConfig::max_connections`].
    pub fn max_connections(mut self, n: usize) -> Self {
        self.max_connections = n;
        self
    }

    /// Sets [`PostgresConfig::connect_timeout`].
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Sets [`PostgresConfig::acquire_timeout`].
    pub fn acquire_timeout(mut self, timeout: Duration) -> Self {
        self.acquire_timeout = timeout;
        self
    }

    /// Sets [`PostgresConfig::operation_timeout`].
    pub fn operation_timeout(mut self, timeout: Duration) -> Self {
        self.operation_timeout = timeout;
        self
    }

    /// Sets [`PostgresConfig::keepalive_idle`].
    pub fn keepalive_idle(mut self, idle: Duration) -> Self {
        self.keepalive_idle = idle;
        self
    }

    /// Sets [`PostgresConfig::tcp_user_timeout`].
    pub fn tcp_user_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.tcp_user_timeout = timeout;
        self
    }

    /// Sets [`PostgresConfig::statement_timeout`].
    pub fn statement_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.statement_timeout = timeout;
        self
    }

    /// Sets [`PostgresConfig::schema`].
    pub fn schema(mut self, schema: impl Into<String>) -> Self {
        self.schema = Some(schema.into());
        self
    }

    /// Sets [`PostgresConfig::application_name`].
    pub fn application_name(mut self, name: impl Into<String>) -> Self {
        self.application_name = name.into();
        self
    }

    /// The driver configuration these settings make: the parsed URL plus the
    /// timeouts, `search_path`, application name and the driver's
    /// `sslmode` for the effective TLS settings (the certificate checks are
    /// the connector's: see [`PgTls::connector`]).
    ///
    /// # Errors
    /// [`Error::InvalidInput`] naming `url`, `schema`, `max_connections`,
    /// `application_name` or a TLS option (`sslmode`, `sslrootcert`,
    /// `sslcert`, `sslkey`).
    pub fn pg_config(&self) -> Result<tokio_postgres::Config> {
        let (mut pg, from_url) = crate::redact::parse_url_with_tls(&self.url)?;
        let tls = self.tls.or(&from_url);
        tls.summary()?;
        tls.apply_to(&mut pg);
        if self.max_connections == 0 {
            return Err(Error::invalid("max_connections", "must be at least 1"));
        }
        if let Some(schema) = &self.schema {
            check_identifier("schema", schema)?;
        }
        if self.application_name.chars().any(|c| c.is_control()) {
            return Err(Error::invalid("application_name", "must not contain control characters"));
        }
        for (field, value) in [
            ("connect_timeout", self.connect_timeout),
            ("acquire_timeout", self.acquire_timeout),
            ("operation_timeout", self.operation_timeout),
            ("keepalive_idle", self.keepalive_idle),
        ] {
            if value.is_zero() {
                return Err(Error::invalid(field, "must be positive"));
            }
        }
        if self.tcp_user_timeout.is_some_and(|t| t.is_zero()) {
            return Err(Error::invalid("tcp_user_timeout", "must be positive (or None for the system default)"));
        }
        // Connecting must end within the acquire timeout, which bounds the
        // whole wait for a connection.
        pg.connect_timeout(self.connect_timeout.min(self.acquire_timeout));
        pg.keepalives(true);
        pg.keepalives_idle(self.keepalive_idle);
        pg.keepalives_interval(Duration::from_secs(10));
        pg.keepalives_retries(3);
        if let Some(timeout) = self.tcp_user_timeout {
            pg.tcp_user_timeout(timeout);
        }
        pg.application_name(&self.application_name);
        // Session settings go in the startup packet's `options`, so every
        // pooled connection has them from its first statement, with no extra
        // round trip and no way for a recycled connection to lose them.
        let mut options = pg.get_options().unwrap_or_default().to_owned();
        if let Some(schema) = &self.schema {
            options.push_str(&format!(" -c search_path={schema}"));
        }
        if let Some(timeout) = self.statement_timeout {
            options.push_str(&format!(" -c statement_timeout={}", timeout.as_millis()));
        }
        pg.options(options.trim());
        Ok(pg)
    }

    /// Builds the connection pool. No connection is opened until one is
    /// needed, so this succeeds while the server is down. The TLS files
    /// (`sslrootcert`, `sslcert`, `sslkey`) and the system roots are read
    /// here, once: build a new pool to pick up rotated certificates.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] as for [`PostgresConfig::pg_config`], and
    /// as for [`PgTls::connector`] when a TLS file cannot be read.
    pub fn build(&self) -> Result<Pool> {
        let pg = self.pg_config()?;
        let obs = crate::conn::op_meta(&pg);
        let connector = self.effective_tls()?.connector()?;
        // `Fast` recycling checks only that the connection is open: a broken
        // connection is found on its next use and reported as retryable.
        let manager =
            Manager::from_config(pg, connector.clone(), ManagerConfig { recycling_method: RecyclingMethod::Fast });
        let pool = Pool::builder(manager)
            .max_size(self.max_connections)
            // The stores bound the whole wait (slot + connect) by
            // `acquire_timeout` themselves (see `conn.rs`); these keep the
            // pool's own steps within it for other users of the pool.
            .wait_timeout(Some(self.acquire_timeout))
            .create_timeout(Some(self.connect_timeout.min(self.acquire_timeout)))
            .recycle_timeout(Some(self.connect_timeout.min(self.acquire_timeout)))
            .runtime(Runtime::Tokio1)
            .build()
            .map_err(|e| Error::backend(BACKEND, "cannot build the connection pool", false, e))?;
        // The stores' cancel requests go through the same connector.
        crate::conn::register_cancel_tls(&pool, connector, obs);
        Ok(pool)
    }
}

/// Accepts plain lower-case SQL identifiers only, so a schema name can go
/// into `options` and SQL text without quoting.
fn check_identifier(field: &'static str, name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if ok {
        Ok(())
    } else {
        Err(Error::invalid(field, format!("`{name}` must be 1 to 63 of [a-z0-9_], not starting with a digit")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::SslMode;

    #[test]
    fn pg_config_carries_the_settings() {
        let cfg = PostgresConfig::with_url("postgres://u:secret@h:5433/d")
            .schema("t_abc")
            .statement_timeout(Some(Duration::from_millis(1500)));
        let pg = cfg.pg_config().unwrap();
        assert_eq!(pg.get_dbname(), Some("d"));
        assert_eq!(pg.get_options(), Some("-c search_path=t_abc -c statement_timeout=1500"));
        assert!(!format!("{cfg:?}").contains("secret"), "{cfg:?}");
    }

    #[test]
    fn bad_settings_name_their_field() {
        let base = PostgresConfig::with_url("postgres://u@h/d");
        assert_eq!(base.clone().schema("x; drop").pg_config().unwrap_err().field(), Some("schema"));
        assert_eq!(base.clone().schema("Upper").pg_config().unwrap_err().field(), Some("schema"));
        assert_eq!(base.clone().max_connections(0).build().unwrap_err().field(), Some("max_connections"));
        let bad_url = PostgresConfig::with_url("postgres://u@h:notaport/d");
        assert_eq!(bad_url.build().unwrap_err().field(), Some("url"));
    }

    #[test]
    fn tls_fields_override_the_url() {
        let cfg = PostgresConfig::with_url("postgres://u@h/d?sslmode=require&sslrootcert=/url-ca.crt")
            .tls(PgTls::new(SslMode::VerifyFull));
        let tls = cfg.effective_tls().unwrap();
        assert_eq!(tls.mode, Some(SslMode::VerifyFull));
        assert_eq!(tls.root_cert, Some(crate::RootCerts::File("/url-ca.crt".into())));
        assert_eq!(cfg.pg_config().unwrap().get_ssl_mode(), tokio_postgres::config::SslMode::Require);
        // A bad combination is refused when building, naming the option.
        let weak = PostgresConfig::with_url("postgres://u@h/d?sslrootcert=system&sslmode=require");
        assert_eq!(weak.build().unwrap_err().field(), Some("sslmode"));
        let missing = PostgresConfig::with_url("postgres://u@h/d?sslmode=verify-ca&sslrootcert=/no/such/ca.crt");
        assert_eq!(missing.build().unwrap_err().field(), Some("sslrootcert"));
    }

    #[test]
    fn redaction() {
        assert_eq!(redact("postgres://u:p@h/d"), "postgres://u:***@h:5432/d");
        assert_eq!(redact("postgres://u@h/d"), "postgres://u@h:5432/d");
        assert_eq!(redact("host=h password=p user=u"), "host=h user=u password=***");
    }

    /// Every form libpq accepts a password in, through `Debug` and the
    /// errors of `pg_config`: the password never shows.
    #[test]
    fn no_form_of_password_reaches_debug_or_errors() {
        const PW: &str = "Sup3rS3cret";
        for url in [
            format!("postgres://u:{PW}@h/d"),
            format!("postgresql://u:{PW}@h:5433/d?sslmode=disable"),
            format!("postgres://u@h/d?password={PW}"),
            format!("postgres://h/d?user=u&password={PW}&application_name=a"),
            format!("postgres://u:{PW}@@h/d"),
            format!("postgres://u:p@{PW}@h/d"),
            format!("postgres://u:{PW}/x@h/d"),
            format!("postgres://u:{PW}@h:notaport/d"),
            format!("host=h password={PW} user=u"),
            format!("host=h password = {PW} user=u"),
            format!("host=h password='{PW} with spaces' user=u"),
            // An escaped backslash and an escaped quote inside the quotes.
            format!(r"host=h password = 'a\\b\' {PW}' user=u"),
            format!("host=h password={PW} {PW}2=x"),
            format!("host=h password={PW} and more"),
            format!("host=h sslpassword={PW}"),
            format!("postgres://u:{PW}@h/d?sslmode=verify-full&sslrootcert=/ca.crt&sslkey=/k.key"),
            format!("host=h password={PW} sslmode=require sslcert=/c.crt sslkey=/c.key"),
            format!("host=h password='{PW} x' sslmode=allow"),
        ] {
            let config = PostgresConfig::with_url(url.as_str());
            let debug = format!("{config:?}");
            assert!(!debug.contains(PW), "{url}: {debug}");
            if let Err(e) = config.pg_config() {
                assert!(!format!("{e} {e:?}").contains(PW), "{url}: {e}");
            }
        }
    }
}
