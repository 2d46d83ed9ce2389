//! Turning the global settings into backend configurations.

use selfrag_core::IndexSpec;
use selfrag_postgres::{Pool, PostgresConfig};
use selfrag_qdrant::QdrantIndexConfig;
use selfrag_redis::RedisConfig;

use crate::cli::Global;
use crate::output::Failure;

/// An environment value that is set but blank counts as unset, as in
/// `Storage::from_env`.
fn present(value: &Option<String>) -> Option<&str> {
    value.as_deref().map(str::trim).filter(|v| !v.is_empty())
}

impl Global {
    /// The Postgres settings, if `DATABASE_URL` / `--database-url` is set.
    ///
    /// The pool is small (the tool runs a few statements at a time) and
    /// statements get no timeout: a migration or a check on a large table
    /// must not be cut off half way.
    pub(crate) fn postgres(&self) -> Option<PostgresConfig> {
        let url = present(&self.database_url)?;
        let mut config =
            PostgresConfig::with_url(url).max_connections(2).statement_timeout(None).application_name("selfrag-cli");
        if let Some(schema) = present(&self.schema) {
            config = config.schema(schema);
        }
        Some(config)
    }

    /// The Postgres pool, or a usage error naming the missing setting.
    pub(crate) fn postgres_pool(&self) -> Result<(PostgresConfig, Pool), Failure> {
        let config = self
            .postgres()
            .ok_or_else(|| Failure::usage("Postgres is not configured: set DATABASE_URL or --database-url"))?;
        let pool = config.build().map_err(|e| Failure::from_core("invalid Postgres configuration", &e))?;
        Ok((config, pool))
    }

    /// The Redis settings, if `REDIS_URL` / `--redis-url` is set, read as
    /// the library reads them ([`RedisConfig::from_lookup`]): several
    /// comma-separated URLs (or `--redis-cluster` /
    /// `SELFRAG_REDIS_CLUSTER=1`) are the seeds of a Redis Cluster; the
    /// other `SELFRAG_REDIS_*` variables (timeouts, TLS files) apply as in
    /// the services. The pool is small: the tool runs a few commands.
    pub(crate) fn redis(&self) -> Option<Result<RedisConfig, Failure>> {
        let url = present(&self.redis_url)?;
        let invalid = |e: selfrag_core::Error| Failure::from_core("invalid Redis configuration", &e);
        let lookup = |name: &str| match name {
            "REDIS_URL" => Some(url.to_owned()),
            "SELFRAG_REDIS_PREFIX" => Some(self.redis_prefix.clone()),
            "SELFRAG_REDIS_CLUSTER" => self.redis_cluster.clone(),
            other => std::env::var(other).ok(),
        };
        Some(RedisConfig::from_lookup(lookup).map_err(invalid).and_then(|mut config| {
            config.pool_size = 2;
            config.validate().map_err(invalid)?;
            Ok(config)
        }))
    }

    /// The index spec to check against, if a dimension was given.
    pub(crate) fn spec(&self) -> Option<Result<IndexSpec, Failure>> {
        let dimension = self.vector_dimension?;
        Some(
            IndexSpec::new(dimension, self.distance.into())
                .map_err(|e| Failure::from_core("invalid --vector-dimension", &e)),
        )
    }

    /// The Qdrant settings, if `QDRANT_URL` / `--qdrant-url` is set. Without
    /// a configured dimension the spec is a placeholder that only
    /// `QdrantIndex::report` sees (it does not compare vectors).
    pub(crate) fn qdrant(&self) -> Option<Result<QdrantIndexConfig, Failure>> {
        let url = present(&self.qdrant_url)?;
        Some((|| {
            let spec = match self.spec() {
                Some(spec) => spec?,
                None => IndexSpec::new(1, self.distance.into())
                    .map_err(|e| Failure::from_core("invalid vector spec", &e))?,
            };
            let mut config = QdrantIndexConfig::new(url, self.collection.clone(), spec);
            if let Some(key) = present(&self.qdrant_api_key) {
                config = config.api_key(key);
            }
            config.validate().map_err(|e| Failure::from_core("invalid Qdrant configuration", &e))?;
            Ok(config)
        })())
    }
}
