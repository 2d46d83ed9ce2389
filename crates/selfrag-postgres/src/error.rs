//! Mapping of driver, pool and migration errors into [`selfrag_core::Error`].
//!
//! The rules, in order:
//! - connection errors (refused, reset, closed, SQLSTATE class `08`, server
//!   shutting down `57P01`/`57P02`) and pool timeouts are
//!   [`Error::Unavailable`], retryable;
//! - `57014` (query canceled, which is how `statement_timeout` ends a
//!   statement) is [`Error::Timeout`], retryable;
//! - class `53` (insufficient resources, e.g. `53300` too many connections),
//!   `57P03` (cannot connect now), `40001` (serialization failure) and
//!   `40P01` (deadlock) are [`Error::Backend`] with `retryable = true`;
//! - everything else is [`Error::Backend`] with `retryable = false`.
//!
//! Constraint violations are mapped by the caller, who knows what they mean
//! (`23503` on `user_id` is an unknown user, `23505` on a primary key a
//! taken id). The driver error is always kept as the source.

use deadpool_postgres::{PoolError, TimeoutType};
use selfrag_core::{BoxError, Error, UserId};
use tokio_postgres::error::SqlState;

/// The `backend` name in errors.
pub(crate) const BACKEND: &str = "postgres";

/// How an error from Postgres should be reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Class {
    Unavailable,
    Timeout,
    Retryable,
    Final,
}

fn classify(err: &tokio_postgres::Error) -> Class {
    if let Some(db) = err.as_db_error() {
        let code = db.code().code();
        return match code {
            "57014" => Class::Timeout,
            "57P01" | "57P02" => Class::Unavailable,
            "57P03" | "40001" | "40P01" => Class::Retryable,
            _ if code.starts_with("08") => Class::Unavailable,
            _ if code.starts_with("53") => Class::Retryable,
            _ => Class::Final,
        };
    }
    // No SQLSTATE: the driver failed to talk to the server at all (connect
    // refused, connection reset or closed, I/O timeout).
    let mut source = std::error::Error::source(err);
    while let Some(s) = source {
        if s.is::<std::io::Error>() {
            return Class::Unavailable;
        }
        source = s.source();
    }
    if err.is_closed() {
        Class::Unavailable
    } else {
        Class::Final
    }
}

/// Builds the error for a driver failure, keeping it as the source.
fn build(pg: tokio_postgres::Error, message: String) -> Error {
    from_class(classify(&pg), message, Box::new(pg))
}

fn from_class(class: Class, message: String, source: BoxError) -> Error {
    match class {
        Class::Unavailable => Error::Unavailable { backend: BACKEND, message, maybe_applied: true, source: Some(source) },
        Class::Timeout => Error::Timeout { backend: BACKEND, message, source: Some(source) },
        Class::Retryable => Error::Backend { backend: BACKEND, message, retryable: true, source: Some(source) },
        Class::Final => Error::Backend { backend: BACKEND, message, retryable: false, source: Some(source) },
    }
}

fn describe(err: &tokio_postgres::Error) -> String {
    match err.as_db_error() {
        Some(db) => format!("{} (SQLSTATE {})", db.message(), db.code().code()),
        None => err.to_string(),
    }
}

/// Maps a driver error with no special meaning for the caller.
pub(crate) fn pg(err: tokio_postgres::Error) -> Error {
    let message = describe(&err);
    build(err, message)
}

/// Maps a driver error from a write on behalf of `user`: a foreign-key
/// violation means the user does not exist, a unique violation that `what`
/// with the id in the error's detail is taken.
pub(crate) fn write(err: tokio_postgres::Error, user: UserId, what: &'static str) -> Error {
    if let Some(db) = err.as_db_error() {
        if *db.code() == SqlState::FOREIGN_KEY_VIOLATION {
            return Error::user_not_found(user);
        }
        if *db.code() == SqlState::UNIQUE_VIOLATION {
            // The detail reads `Key (id)=(<uuid>) already exists.`
            let id = db
                .detail()
                .and_then(|d| d.split_once("=(")?.1.split_once(')').map(|(id, _)| id.to_owned()))
                .unwrap_or_else(|| "?".to_owned());
            return Error::Conflict { what, id };
        }
    }
    pg(err)
}

/// Maps a failure to get a connection from the pool.
pub(crate) fn pool(err: PoolError) -> Error {
    match err {
        PoolError::Backend(e) => {
            let message = format!("cannot connect: {}", describe(&e));
            build(e, message)
        }
        PoolError::Timeout(kind) => {
            let message = match kind {
                TimeoutType::Wait => "timed out waiting for a free pooled connection",
                TimeoutType::Create => "timed out connecting",
                TimeoutType::Recycle => "timed out checking a pooled connection",
            };
            Error::unavailable(BACKEND, message, err)
        }
        PoolError::Closed => Error::unavailable(BACKEND, "the connection pool is closed", err),
        PoolError::NoRuntimeSpecified | PoolError::PostCreateHook(_) => {
            Error::backend(BACKEND, "connection pool misconfigured", false, err)
        }
    }
}

/// Maps a migration failure: an incompatible history is
/// [`Error::Incompatible`]; database failures are classified like any other.
pub(crate) fn migration(err: selfrag_migrations::Error) -> Error {
    if err.is_incompatible() {
        return Error::Incompatible { backend: BACKEND, message: err.to_string() };
    }
    let message = err.to_string();
    match err.postgres_error() {
        Some(pg) => {
            // Classify on the driver error, but keep the whole chain.
            let (class, message) = (classify(pg), format!("{message}: {}", describe(pg)));
            from_class(class, message, Box::new(err))
        }
        None => Error::backend(BACKEND, message, false, err),
    }
}

/// An error for a row that does not hold what the schema promises (only
/// possible if someone wrote to the tables by hand).
pub(crate) fn bad_row(what: &str, source: impl Into<BoxError>) -> Error {
    Error::backend(BACKEND, format!("unexpected {what} in a stored row"), false, source)
}
