//! [`Storage`]: every trait object a self-RAG service needs, composed from
//! the environment.

use std::fmt;
use std::sync::Arc;

use selfrag_core::local::{LocalErasureLedger, LocalRateLimiter, LocalStore, LocalVectorIndex};

use crate::composed::{CascadingUsers, UserCheckedSessions};
use selfrag_core::{
    Distance, ErasureLedger, Error, IndexSpec, MemoryStore, RateLimitPolicy, RateLimiter, Result, SessionLimits,
    SessionStore, UserStore, VectorIndex,
};

/// The backends of one service, as trait objects.
///
/// Build it with [`Storage::local`] (everything in process) or
/// [`Storage::from_env`] (servers named by environment variables, in-process
/// backends for the rest).
#[derive(Clone)]
pub struct Storage {
    /// Users (owners of memory logs and sessions).
    pub users: Arc<dyn UserStore>,
    /// Memory logs.
    pub memory: Arc<dyn MemoryStore>,
    /// Sessions.
    pub sessions: Arc<dyn SessionStore>,
    /// Rate limits.
    pub rate_limiter: Arc<dyn RateLimiter>,
    /// Document chunks.
    pub vectors: Arc<dyn VectorIndex>,
    /// Which backend serves each part, e.g. `memory: postgres`.
    pub backends: Backends,
    /// The erasure ledger: Postgres (`erasures`) when `DATABASE_URL` is set,
    /// in process otherwise. Written by [`Storage::erase_user`].
    pub erasures: Arc<dyn ErasureLedger>,
    /// The session store of the users' own backend (Postgres or in
    /// process) when [`sessions`](Storage::sessions) is served by another
    /// one (Redis): sessions written there before Redis was configured are
    /// still the user's, so [`Storage::erase_user`] and
    /// [`Storage::export_user`] cover them too. `None` when `sessions` is
    /// that backend.
    pub user_sessions: Option<Arc<dyn SessionStore>>,
}

/// The name of the backend behind each part of a [`Storage`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backends {
    /// `local` or `postgres`.
    pub memory: &'static str,
    /// `local`, `postgres` or `redis`.
    pub sessions: &'static str,
    /// `local` or `redis`.
    pub rate_limiter: &'static str,
    /// `local`, `qdrant` or `edge`.
    pub vectors: &'static str,
}

impl fmt::Display for Backends {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "memory: {}, sessions: {}, rate limits: {}, vectors: {}",
            self.memory, self.sessions, self.rate_limiter, self.vectors
        )
    }
}

impl fmt::Debug for Storage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Storage").field("backends", &self.backends).finish_non_exhaustive()
    }
}

/// What [`Storage`] needs besides URLs.
#[derive(Debug, Clone, PartialEq)]
pub struct StorageOptions {
    /// Dimension and distance of the vectors (default: 384, cosine).
    pub spec: IndexSpec,
    /// Rate-limit windows (default: [`RateLimitPolicy::default`]).
    pub policy: RateLimitPolicy,
    /// Qdrant collection name when `QDRANT_URL` is set; `SELFRAG_QDRANT_COLLECTION`
    /// overrides it (default: `selfrag_chunks`).
    pub collection: String,
    /// Apply the Postgres migrations when `DATABASE_URL` is set (default:
    /// true; safe when several instances start together).
    pub migrate: bool,
    /// Deadline of [`Storage::from_env`] as a whole: connecting, migrating
    /// and ensuring the Qdrant collection (default: 60 s). Past it the call
    /// returns [`Error::Timeout`] instead of waiting on an unreachable
    /// server.
    pub startup_timeout: std::time::Duration,
    /// Bound on each user's live sessions, for every session backend
    /// (default: [`SessionLimits::default`], 100 evicting the oldest);
    /// `SELFRAG_SESSIONS_MAX_PER_USER` and `SELFRAG_SESSIONS_ON_LIMIT`
    /// override its fields in [`Storage::from_env`].
    pub session_limits: SessionLimits,
    /// Coalesce Postgres writes (default: false): the memory-log appends,
    /// and the session touches when Postgres serves sessions, that wait at
    /// the same moment go out as one statement and one commit, with the
    /// default `CoalesceConfig` (`docs/postgres.md`, "Coalesced appends").
    /// Each call's contract is unchanged. Worth it when many tasks write at
    /// once; `SELFRAG_POSTGRES_COALESCE` (`on`/`off`, `true`/`false`,
    /// `1`/`0`) overrides it in [`Storage::from_env`].
    pub coalesce_postgres_writes: bool,
}

impl Default for StorageOptions {
    fn default() -> Self {
        Self {
            spec: IndexSpec::new(384, Distance::Cosine).expect("384 is a valid dimension"),
            policy: RateLimitPolicy::default(),
            collection: "selfrag_chunks".into(),
            migrate: true,
            startup_timeout: std::time::Duration::from_secs(60),
            session_limits: SessionLimits::default(),
            coalesce_postgres_writes: false,
        }
    }
}

/// A switch read from variable `name`: `on`/`true`/`1` or `off`/`false`/`0`
/// (any case); anything else is [`Error::InvalidInput`] naming it.
fn switch(name: &'static str, value: &str) -> Result<bool> {
    match value.trim().to_ascii_lowercase().as_str() {
        "on" | "true" | "1" => Ok(true),
        "off" | "false" | "0" => Ok(false),
        _ => Err(Error::invalid(name, format!("{value:?} is not a switch: use on or off (true/false, 1/0)"))),
    }
}

impl Storage {
    /// Everything in process: [`LocalStore`] for users, memory logs and
    /// sessions, [`LocalRateLimiter`], [`LocalVectorIndex`],
    /// [`LocalErasureLedger`]. Nothing outlives the process.
    pub fn local(options: &StorageOptions) -> Self {
        let store = Arc::new(LocalStore::new().with_session_limits(options.session_limits));
        Self {
            users: store.clone(),
            memory: store.clone(),
            sessions: store,
            rate_limiter: Arc::new(LocalRateLimiter::new(options.policy.clone())),
            vectors: Arc::new(LocalVectorIndex::new(options.spec)),
            backends: Backends { memory: "local", sessions: "local", rate_limiter: "local", vectors: "local" },
            erasures: Arc::new(LocalErasureLedger::new()),
            user_sessions: None,
        }
    }

    /// Composes backends from environment variables; whatever is not named
    /// runs in process, as in [`Storage::local`]:
    ///
    /// | variable | feature | serves |
    /// | --- | --- | --- |
    /// | `DATABASE_URL` (+ `SELFRAG_POSTGRES_SCHEMA`, an existing schema) | `postgres` | users, memory logs, the erasure ledger, and sessions unless Redis is set (migrated first when [`StorageOptions::migrate`]) |
    /// | `REDIS_URL` (+ `SELFRAG_REDIS_*`) | `redis` | sessions and rate limits |
    /// | `QDRANT_URL` (+ `QDRANT_API_KEY`, `SELFRAG_QDRANT_COLLECTION`) | `qdrant` | vectors (the collection is ensured) |
    /// | `SELFRAG_EDGE_PATH` | `edge` | vectors, embedded, in that directory (when `QDRANT_URL` is unset) |
    /// | `SELFRAG_SESSIONS_MAX_PER_USER`, `SELFRAG_SESSIONS_ON_LIMIT` | | [`StorageOptions::session_limits`] of whichever backend serves sessions |
    /// | `SELFRAG_POSTGRES_COALESCE` | `postgres` | [`StorageOptions::coalesce_postgres_writes`] |
    ///
    /// # Errors
    /// [`Error::Incompatible`] when a variable names a backend this build
    /// was compiled without (enable the feature); the backends' own errors
    /// when a URL is invalid, a server is unreachable, migrations fail or a
    /// collection does not match the spec.
    pub async fn from_env(options: &StorageOptions) -> Result<Self> {
        Self::from_lookup(options, |name| std::env::var(name).ok().filter(|v| !v.trim().is_empty())).await
    }

    /// [`Storage::from_env`] over any lookup function (tests, other
    /// configuration systems).
    ///
    /// # Errors
    /// As [`Storage::from_env`].
    pub async fn from_lookup(options: &StorageOptions, lookup: impl Fn(&str) -> Option<String>) -> Result<Self> {
        let limit = options.startup_timeout;
        match tokio::time::timeout(limit, Self::compose(options, lookup)).await {
            Ok(storage) => storage,
            Err(_) => Err(Error::timeout(
                "selfrag",
                format!("start-up did not finish within StorageOptions::startup_timeout ({limit:?})"),
            )),
        }
    }

    async fn compose(options: &StorageOptions, lookup: impl Fn(&str) -> Option<String>) -> Result<Self> {
        const COALESCE: &str = "SELFRAG_POSTGRES_COALESCE";
        let coalesce_postgres_writes = match lookup(COALESCE).filter(|v| !v.trim().is_empty()) {
            Some(v) => switch(COALESCE, &v)?,
            None => options.coalesce_postgres_writes,
        };
        let options = &StorageOptions {
            session_limits: options.session_limits.overridden_by(&lookup)?,
            coalesce_postgres_writes,
            ..options.clone()
        };
        let mut storage = Self::local(options);
        if let Some(url) = lookup("DATABASE_URL") {
            postgres(&mut storage, options, url, lookup("SELFRAG_POSTGRES_SCHEMA")).await?;
        }
        if lookup("REDIS_URL").is_some() {
            redis(&mut storage, options, &lookup)?;
        }
        if let Some(url) = lookup("QDRANT_URL") {
            let collection = lookup("SELFRAG_QDRANT_COLLECTION").unwrap_or_else(|| options.collection.clone());
            qdrant(&mut storage, options, url, collection, lookup("QDRANT_API_KEY")).await?;
        } else if let Some(path) = lookup("SELFRAG_EDGE_PATH") {
            edge(&mut storage, options, path).await?;
        }
        storage.tie_sessions_to_users();
        Ok(storage)
    }

    /// When sessions are served by another backend than users (Redis next
    /// to Postgres or the in-process store), keeps the user contract across
    /// the two: deleting a user revokes its sessions, and a session cannot
    /// be created for an unknown user. See `docs/contracts.md`.
    fn tie_sessions_to_users(&mut self) {
        if self.backends.sessions == self.backends.memory {
            // One backend holds both, and deletes sessions with the user
            // itself (a cascading foreign key, or one in-process state).
            return;
        }
        let (users, sessions) = (self.users.clone(), self.sessions.clone());
        self.users = Arc::new(CascadingUsers { users: users.clone(), sessions: sessions.clone() });
        self.sessions = Arc::new(UserCheckedSessions { users, sessions });
    }
}

#[allow(dead_code)]
fn missing_feature(variable: &str, feature: &str) -> Error {
    Error::Incompatible {
        backend: "selfrag",
        message: format!("{variable} is set, but selfrag was built without its `{feature}` feature"),
    }
}

#[cfg(feature = "postgres")]
async fn postgres(storage: &mut Storage, options: &StorageOptions, url: String, schema: Option<String>) -> Result<()> {
    use selfrag_postgres::{
        CoalesceConfig, PostgresConfig, PostgresErasureLedger, PostgresMemoryStore, PostgresSessionStore,
        PostgresUserStore,
    };
    let mut config = PostgresConfig::with_url(url);
    if let Some(schema) = schema {
        config = config.schema(schema);
    }
    let pool = config.build()?;
    if options.migrate {
        selfrag_postgres::migrate(&pool).await?;
    }
    storage.users = Arc::new(PostgresUserStore::with_config(pool.clone(), &config));
    let mut memory = PostgresMemoryStore::with_config(pool.clone(), &config);
    let mut sessions = PostgresSessionStore::with_config(pool.clone(), &config).with_limits(options.session_limits);
    if options.coalesce_postgres_writes {
        memory = memory.coalescing(CoalesceConfig::new());
        sessions = sessions.coalescing(CoalesceConfig::new());
    }
    storage.memory = Arc::new(memory);
    storage.erasures = Arc::new(PostgresErasureLedger::with_config(pool, &config));
    storage.sessions = Arc::new(sessions);
    storage.backends.memory = "postgres";
    storage.backends.sessions = "postgres";
    Ok(())
}

#[cfg(not(feature = "postgres"))]
async fn postgres(_: &mut Storage, _: &StorageOptions, _: String, _: Option<String>) -> Result<()> {
    Err(missing_feature("DATABASE_URL", "postgres"))
}

#[cfg(feature = "redis")]
fn redis(storage: &mut Storage, options: &StorageOptions, lookup: &impl Fn(&str) -> Option<String>) -> Result<()> {
    use selfrag_redis::{RedisConfig, RedisRateLimiter, RedisSessionStore};
    let config = RedisConfig::from_lookup(lookup)?;
    // One server's pool, or a cluster client (several URLs in REDIS_URL, or
    // SELFRAG_REDIS_CLUSTER=1).
    let connector = config.connector()?;
    // The users' own session store stays reachable for erasure and export.
    storage.user_sessions = Some(storage.sessions.clone());
    storage.sessions =
        Arc::new(RedisSessionStore::with_config(connector.clone(), &config)?.with_limits(options.session_limits));
    storage.rate_limiter = Arc::new(RedisRateLimiter::with_config(connector, &config, options.policy.clone())?);
    storage.backends.sessions = "redis";
    storage.backends.rate_limiter = "redis";
    Ok(())
}

#[cfg(not(feature = "redis"))]
fn redis(_: &mut Storage, _: &StorageOptions, _: &impl Fn(&str) -> Option<String>) -> Result<()> {
    Err(missing_feature("REDIS_URL", "redis"))
}

#[cfg(feature = "qdrant")]
async fn qdrant(
    storage: &mut Storage,
    options: &StorageOptions,
    url: String,
    collection: String,
    api_key: Option<String>,
) -> Result<()> {
    let mut config = selfrag_qdrant::QdrantIndexConfig::new(url, collection, options.spec);
    if let Some(key) = api_key {
        config = config.api_key(key);
    }
    let index = config.build()?;
    index.ensure().await?;
    storage.vectors = Arc::new(index);
    storage.backends.vectors = "qdrant";
    Ok(())
}

#[cfg(not(feature = "qdrant"))]
async fn qdrant(_: &mut Storage, _: &StorageOptions, _: String, _: String, _: Option<String>) -> Result<()> {
    Err(missing_feature("QDRANT_URL", "qdrant"))
}

#[cfg(feature = "edge")]
async fn edge(storage: &mut Storage, options: &StorageOptions, path: String) -> Result<()> {
    let index = selfrag_edge::EdgeIndex::open(path, options.spec, selfrag_edge::EdgeIndexConfig::default()).await?;
    storage.vectors = Arc::new(index);
    storage.backends.vectors = "edge";
    Ok(())
}

#[cfg(not(feature = "edge"))]
async fn edge(_: &mut Storage, _: &StorageOptions, _: String) -> Result<()> {
    Err(missing_feature("SELFRAG_EDGE_PATH", "edge"))
}
