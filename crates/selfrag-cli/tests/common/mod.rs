//! What the CLI test binaries share.

/// Every variable the tool reads, removed so the caller's environment
/// cannot leak into a test.
pub(crate) const TOOL_VARS: &[&str] = &[
    "DATABASE_URL",
    "SELFRAG_POSTGRES_SCHEMA",
    "REDIS_URL",
    "SELFRAG_REDIS_PREFIX",
    "SELFRAG_REDIS_CLUSTER",
    "QDRANT_URL",
    "QDRANT_REST_URL",
    "QDRANT_API_KEY",
    "SELFRAG_QDRANT_COLLECTION",
    "SELFRAG_VECTOR_DIMENSION",
    "SELFRAG_VECTOR_DISTANCE",
    "SELFRAG_EDGE_PATH",
    "SELFRAG_BACKUP_DIR",
    "SELFRAG_PG_BIN_DIR",
    "SELFRAG_REDIS_TLS_CA",
    "SELFRAG_REDIS_TLS_CERT",
    "SELFRAG_REDIS_TLS_KEY",
    "SELFRAG_REDIS_TLS_INSECURE",
    "SELFRAG_REDIS_CONNECT_TIMEOUT_MS",
    "PGSSLMODE",
    "PGSSLROOTCERT",
    "PGSSLCERT",
    "PGSSLKEY",
];
