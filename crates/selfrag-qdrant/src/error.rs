//! Mapping qdrant-client errors to [`selfrag_core::Error`].

use qdrant_client::QdrantError;
use selfrag_core::Error;
use tonic::Code;

use crate::convert::BACKEND;

/// Maps a qdrant-client error from `action` (e.g. "search `docs`") to the core
/// error, keeping the client error as the `source`.
///
/// | gRPC status | core error |
/// | --- | --- |
/// | `Unavailable`, `ResourceExhausted`, `Internal` "Failed to connect" (how the client reports a refused connection) | [`Error::Unavailable`] |
/// | `DeadlineExceeded`, `Cancelled` "Timeout expired" (the client-side timeout) | [`Error::Timeout`] |
/// | `Aborted`, `Unknown` (transport failures), other `Cancelled` | [`Error::Backend`], retryable |
/// | `NotFound` (collection missing), `Unimplemented` (server too old), `InvalidArgument` about a vector dimension | [`Error::Incompatible`] |
/// | `InvalidArgument`, `PermissionDenied`, `Unauthenticated`, anything else | [`Error::Backend`], not retryable |
///
/// Client-side failures: I/O errors are [`Error::Unavailable`]; conversion
/// and URI errors are non-retryable [`Error::Backend`] errors.
pub fn map_error(action: &str, err: QdrantError) -> Error {
    let backend = BACKEND;
    let (code, message) = match &err {
        QdrantError::ResponseError { status } => (status.code(), status.message().to_owned()),
        QdrantError::ResourceExhaustedError { status, retry_after_seconds } => {
            let message = format!(
                "{action}: server overloaded or rate limited ({}), retry after {retry_after_seconds} s",
                status.message()
            );
            return Error::Unavailable { backend, message, maybe_applied: false, source: Some(err.into()) };
        }
        QdrantError::Io(e) => {
            let message = format!("{action}: {e}");
            return Error::Unavailable { backend, message, maybe_applied: true, source: Some(err.into()) };
        }
        other => {
            let message = format!("{action}: {other}");
            return Error::Backend { backend, message, retryable: false, source: Some(err.into()) };
        }
    };
    let message = format!("{action}: {message} ({})", code.description());
    let source = Some(err.into());
    let lower = message.to_ascii_lowercase();
    match code {
        // Refused before the request was processed.
        Code::ResourceExhausted => Error::Unavailable { backend, message, maybe_applied: false, source },
        Code::Internal if lower.contains("failed to connect") => {
            Error::Unavailable { backend, message, maybe_applied: false, source }
        }
        // gRPC reports a transport that broke mid-call as `Unavailable` too,
        // so a write may have been applied.
        Code::Unavailable => Error::Unavailable { backend, message, maybe_applied: true, source },
        Code::DeadlineExceeded => Error::Timeout { backend, message, source },
        Code::Cancelled if lower.contains("timeout expired") => Error::Timeout { backend, message, source },
        Code::Aborted | Code::Unknown | Code::Cancelled => Error::Backend { backend, message, retryable: true, source },
        Code::NotFound => Error::Incompatible {
            backend,
            message: format!("{message}; was the collection created (`QdrantIndex::ensure`)?"),
        },
        Code::Unimplemented => {
            Error::Incompatible { backend, message: format!("{message}; the server is too old for this client") }
        }
        Code::InvalidArgument if lower.contains("dimension") => Error::Incompatible { backend, message },
        _ => Error::Backend { backend, message, retryable: false, source },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use selfrag_core::ErrorKind;
    use std::error::Error as _;
    use tonic::Status;

    fn status(code: Code, msg: &str) -> Error {
        map_error("search `c`", QdrantError::from(Status::new(code, msg)))
    }

    #[test]
    fn transient_statuses_are_retryable() {
        for (code, msg, kind) in [
            (Code::Unavailable, "connection refused", ErrorKind::Unavailable),
            (Code::ResourceExhausted, "too many requests", ErrorKind::Unavailable),
            (Code::Internal, "Failed to connect to http://x:6334/: tcp connect error", ErrorKind::Unavailable),
            (Code::DeadlineExceeded, "deadline", ErrorKind::Timeout),
            (Code::Cancelled, "Timeout expired", ErrorKind::Timeout),
            (Code::Aborted, "conflict", ErrorKind::Backend),
            (Code::Unknown, "transport error", ErrorKind::Backend),
            (Code::Cancelled, "request cancelled", ErrorKind::Backend),
        ] {
            let e = status(code, msg);
            assert_eq!(e.kind(), kind, "{code:?}");
            assert!(e.is_retryable(), "{code:?}");
            assert!(e.to_string().contains(msg), "{e}");
            assert!(e.to_string().contains("search `c`"), "{e}");
        }
    }

    #[test]
    fn final_statuses_are_not_retryable() {
        for (code, kind) in [
            (Code::InvalidArgument, ErrorKind::Backend),
            (Code::PermissionDenied, ErrorKind::Backend),
            (Code::Unauthenticated, ErrorKind::Backend),
            (Code::FailedPrecondition, ErrorKind::Backend),
            (Code::AlreadyExists, ErrorKind::Backend),
            (Code::Internal, ErrorKind::Backend),
            (Code::NotFound, ErrorKind::Incompatible),
            (Code::Unimplemented, ErrorKind::Incompatible),
        ] {
            let e = status(code, "nope");
            assert_eq!(e.kind(), kind, "{code:?}");
            assert!(!e.is_retryable(), "{code:?}");
        }
        let e = status(Code::InvalidArgument, "Wrong input: Vector dimension error: expected dim: 4, got 3");
        assert_eq!(e.kind(), ErrorKind::Incompatible);
        let e = status(Code::NotFound, "Collection `c` doesn't exist!");
        assert!(e.to_string().contains("ensure"), "{e}");
    }

    #[test]
    fn the_source_is_kept() {
        let e = status(Code::Unavailable, "down");
        let src = e.source().expect("source kept");
        assert!(src.downcast_ref::<QdrantError>().is_some());
        let e = map_error("x", QdrantError::Io(std::io::Error::other("broken pipe")));
        assert_eq!(e.kind(), ErrorKind::Unavailable);
        assert!(e.source().is_some());
        let e = map_error("x", QdrantError::ConversionError("bad".into()));
        assert_eq!(e.kind(), ErrorKind::Backend);
        assert!(!e.is_retryable());
        assert!(e.source().is_some());
    }

    #[test]
    fn rate_limits_carry_retry_after() {
        let mut s = Status::new(Code::ResourceExhausted, "rate limited");
        s.metadata_mut().insert("retry-after", "7".parse().unwrap());
        let e = map_error("upsert", QdrantError::from(s));
        assert_eq!(e.kind(), ErrorKind::Unavailable);
        assert!(e.is_retryable());
        assert!(e.to_string().contains("retry after 7 s"), "{e}");
    }
}
