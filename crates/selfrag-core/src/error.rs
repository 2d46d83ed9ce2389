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
    /// (connection refused or lost, pool exhausted, server starting up or
    /// overloaded). Retrying later can help.
    #[error("{backend} is unavailable: {message}")]
    Unavailable {
        /// Which backend.
        backend: &'static str,
        /// What happened.
        message: String,
        /// The driver's error, if any.
        #[source]
        source: Option<BoxError>,
    },

    /// The operation did not finish within its deadline. It may or may not
    /// have taken effect; the operations of this crate are idempotent or
    /// atomic where that matters, so a retry is safe.
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

impl Error {
    /// An [`Error::InvalidInput`] for `field`.
    pub fn invalid(field: impl Into<Cow<'static, str>>, reason: impl Into<String>) -> Self {
        Error::InvalidInput { field: field.into(), reason: reason.into() }
    }

    /// An [`Error::NotFound`] for a user id.
    pub fn user_not_found(id: impl fmt::Display) -> Self {
        Error::NotFound { what: "user", id: id.to_string() }
    }

    /// An [`Error::Unavailable`] from `backend`, keeping `source`.
    pub fn unavailable(backend: &'static str, message: impl Into<String>, source: impl Into<BoxError>) -> Self {
        Error::Unavailable { backend, message: message.into(), source: Some(source.into()) }
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
