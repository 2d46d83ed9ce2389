//! The one error type of selfrag storage.

use std::borrow::Cow;
use std::fmt;

/// A boxed error from a driver or another library, kept as the `source` of an
/// [`Error`] so that its chain is never flattened into a string.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Shorthand for `Result<T, selfrag_core::Error>`.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Every error a selfrag backend returns.
///
/// Variants are semantic: a caller decides what to do from [`Error::kind`] and
/// [`Error::is_retryable`], not from the message. Backends map their drivers'
/// errors into these variants and keep the driver error as the
/// [`source`](std::error::Error::source).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The caller passed a value the contract does not allow. Nothing was
    /// written.
    #[error("invalid input for `{field}`: {reason}")]
    InvalidInput {
        /// The field (or parameter) that was rejected, e.g. `content` or
        /// `vector[3]`.
        field: Cow<'static, str>,
        /// Why it was rejected.
        reason: String,
    },

    /// A write referred to something that does not exist, most often a user
    /// that was never created (or was deleted). Reads of absent records return
    /// `Ok(None)` instead.
    #[error("{what} `{id}` does not exist")]
    NotFound {
        /// What kind of thing was missing, e.g. `user`.
        what: &'static str,
        /// Its id.
        id: String,
    },

    /// A write collided with an existing record, e.g. a memory log id that is
    /// already taken. Nothing was written.
    #[error("{what} `{id}` already exists")]
    Conflict {
        /// What kind of record collided.
        what: &'static str,
        /// Its id.
        id: String,
    },

    /// The backend holds data or a schema this code cannot work with, e.g. a
    /// Qdrant collection with another dimension, or a migration history that
    /// was edited.
    #[error("{backend}: incompatible state: {message}")]
    Incompatible {
        /// Which backend reported it.
        backend: &'static str,
        /// What is incompatible.
        message: String,
    },

    /// The backend could not be reached or refused service for now
    /// (connection refused or lost, pool exhausted, server starting up,
    /// shutting down or overloaded). Retrying later can help.
    #[error("{backend} is unavailable: {message}")]
    Unavailable {
        /// Which backend.
        backend: &'static str,
        /// What happened.
        message: String,
        /// Whether the request may have reached the server before the
        /// failure, so that a write may have taken effect (the connection
        /// broke while the request was in flight). `false` when it failed
        /// before anything was sent: no connection could be had, or the
        /// server refused the session or said it cannot serve now. See
        /// [`Error::is_ambiguous`].
        maybe_applied: bool,
        /// The driver's error, if any.
        #[source]
        source: Option<BoxError>,
    },

    /// The operation did not finish within its deadline, and the call gave
    /// up. It may or may not have taken effect ([`Error::is_ambiguous`]);
    /// the writes of this crate are retry-safe by id (see the docs of each
    /// write), so retrying the same call is safe.
    #[error("{backend}: timed out: {message}")]
    Timeout {
        /// Which backend.
        backend: &'static str,
        /// What timed out.
        message: String,
        /// The driver's error, if any.
        #[source]
        source: Option<BoxError>,
    },

    /// Any other error from a backend. `retryable` says whether the backend
    /// judged the failure transient (a serialization failure, say).
    #[error("{backend}: {message}")]
    Backend {
        /// Which backend.
        backend: &'static str,
        /// What failed.
        message: String,
        /// Whether a retry can help.
        retryable: bool,
        /// The driver's error.
        #[source]
        source: Option<BoxError>,
    },
}

/// The category of an [`Error`], for callers that branch on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// See [`Error::InvalidInput`].
    InvalidInput,
    /// See [`Error::NotFound`].
    NotFound,
    /// See [`Error::Conflict`].
    Conflict,
    /// See [`Error::Incompatible`].
    Incompatible,
    /// See [`Error::Unavailable`].
    Unavailable,
    /// See [`Error::Timeout`].
    Timeout,
    /// See [`Error::Backend`].
    Backend,
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            ErrorKind::InvalidInput => "invalid input",
            ErrorKind::NotFound => "not found",
            ErrorKind::Conflict => "conflict",
            ErrorKind::Incompatible => "incompatible",
            ErrorKind::Unavailable => "unavailable",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Backend => "backend",
        };
        f.write_str(s)
    }
}

impl ErrorKind {
    /// A stable `snake_case` token for this kind (`invalid_input`,
    /// `not_found`, `conflict`, `incompatible`, `unavailable`, `timeout`,
    /// `backend`): the `error.type` of spans and metrics.
    pub const fn as_str(self) -> &'static str {
        match self {
            ErrorKind::InvalidInput => "invalid_input",
            ErrorKind::NotFound => "not_found",
            ErrorKind::Conflict => "conflict",
            ErrorKind::Incompatible => "incompatible",
            ErrorKind::Unavailable => "unavailable",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Backend => "backend",
        }
    }
}

impl Error {
    /// An [`Error::InvalidInput`] for `field`.
    pub fn invalid(field: impl Into<Cow<'static, str>>, reason: impl Into<String>) -> Self {
        Error::InvalidInput { field: field.into(), reason: reason.into() }
    }

    /// An [`Error::NotFound`] for a user id.
    pub fn user_not_found(id: impl fmt::Display) -> Self {
        Error::NotFound { what: "user", id: id.to_string() }
    }

    /// An [`Error::Unavailable`] from `backend`, keeping `source`, for a
    /// failure before the request was sent (`maybe_applied: false`).
    pub fn unavailable(backend: &'static str, message: impl Into<String>, source: impl Into<BoxError>) -> Self {
        Error::Unavailable { backend, message: message.into(), maybe_applied: false, source: Some(source.into()) }
    }

    /// An [`Error::Unavailable`] from `backend`, keeping `source`, for a
    /// connection lost while the request was in flight (`maybe_applied:
    /// true`).
    pub fn connection_lost(backend: &'static str, message: impl Into<String>, source: impl Into<BoxError>) -> Self {
        Error::Unavailable { backend, message: message.into(), maybe_applied: true, source: Some(source.into()) }
    }

    /// An [`Error::Timeout`] from `backend`: the call gave up at its deadline.
    pub fn timeout(backend: &'static str, message: impl Into<String>) -> Self {
        Error::Timeout { backend, message: message.into(), source: None }
    }

    /// An [`Error::Backend`] from `backend`, keeping `source`.
    pub fn backend(
        backend: &'static str,
        message: impl Into<String>,
        retryable: bool,
        source: impl Into<BoxError>,
    ) -> Self {
        Error::Backend { backend, message: message.into(), retryable, source: Some(source.into()) }
    }

    /// The category of this error.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::InvalidInput { .. } => ErrorKind::InvalidInput,
            Error::NotFound { .. } => ErrorKind::NotFound,
            Error::Conflict { .. } => ErrorKind::Conflict,
            Error::Incompatible { .. } => ErrorKind::Incompatible,
            Error::Unavailable { .. } => ErrorKind::Unavailable,
            Error::Timeout { .. } => ErrorKind::Timeout,
            Error::Backend { .. } => ErrorKind::Backend,
        }
    }

    /// Whether retrying the same call later can succeed: true for
    /// [`Error::Unavailable`], [`Error::Timeout`] and transient
    /// [`Error::Backend`] errors; false for bad input, conflicts, missing
    /// users and incompatible state, which a retry only repeats.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Unavailable { .. } | Error::Timeout { .. } => true,
            Error::Backend { retryable, .. } => *retryable,
            Error::InvalidInput { .. }
            | Error::NotFound { .. }
            | Error::Conflict { .. }
            | Error::Incompatible { .. } => false,
        }
    }

    /// Whether a write that failed with this error may nevertheless have
    /// taken effect, so that the caller cannot tell from the error alone:
    ///
    /// | kind | ambiguous |
    /// | --- | --- |
    /// | [`Error::Timeout`] | always: the call gave up, the server may have finished |
    /// | [`Error::Unavailable`] | when `maybe_applied` (the connection broke with the request in flight) |
    /// | every other kind | never: the backend refused the request, nothing was written |
    ///
    /// How to resolve an ambiguous failure: retry the same call. Memory
    /// appends are retry-safe by log id (a retry of a write that did commit
    /// returns the stored log); session creation is retry-safe when the
    /// caller chose the session id; rate-limit checks are not idempotent (a
    /// retry may count the request twice), and deletions report what they
    /// found, so a retried `revoke` may answer `false` for a session the
    /// first attempt ended.
    pub fn is_ambiguous(&self) -> bool {
        match self {
            Error::Timeout { .. } => true,
            Error::Unavailable { maybe_applied, .. } => *maybe_applied,
            _ => false,
        }
    }

    /// The field an [`Error::InvalidInput`] names, if this is one.
    pub fn field(&self) -> Option<&str> {
        match self {
            Error::InvalidInput { field, .. } => Some(field),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::error::Error as _;

    #[test]
    fn source_chain_is_kept() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        let err = Error::unavailable("postgres", "connect", io);
        assert_eq!(err.kind(), ErrorKind::Unavailable);
        assert!(err.is_retryable());
        let source = err.source().expect("source kept");
        assert_eq!(source.to_string(), "refused");
    }

    #[test]
    fn ambiguity_follows_the_documented_rule() {
        let io = || std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset");
        assert!(!Error::unavailable("postgres", "connect", io()).is_ambiguous());
        assert!(Error::connection_lost("postgres", "commit", io()).is_ambiguous());
        assert!(Error::connection_lost("postgres", "commit", io()).is_retryable());
        assert!(Error::timeout("redis", "deadline").is_ambiguous());
        assert!(!Error::invalid("content", "empty").is_ambiguous());
        assert!(!Error::backend("postgres", "serialization failure", true, "40001").is_ambiguous());
        assert!(!Error::Conflict { what: "memory log", id: "x".into() }.is_ambiguous());
    }

    #[test]
    fn invalid_input_names_the_field_and_is_final() {
        let err = Error::invalid("content", "must not be empty");
        assert_eq!(err.field(), Some("content"));
        assert!(!err.is_retryable());
        assert_eq!(err.to_string(), "invalid input for `content`: must not be empty");
    }

    #[test]
    fn backend_errors_carry_their_retry_judgement() {
        let e = Error::backend("postgres", "serialization failure", true, "40001");
        assert!(e.is_retryable());
        let e = Error::backend("postgres", "syntax error", false, "42601");
        assert!(!e.is_retryable());
    }
}
