//! Mapping of driver, pool and migration errors into [`selfrag_core::Error`].
//!
//! The rules, in order:
//! - the server says it cannot serve now: SQLSTATE class `08` (connection
//!   exception), `57P01`/`57P02` (shutting down), `57P03` (starting up,
//!   "cannot connect now") and class `53` (insufficient resources, e.g.
//!   `53300` too many connections) are [`Error::Unavailable`] with
//!   `maybe_applied: false`: the server answered with an error, so the
//!   statement did not commit;
//! - a connection that broke with no answer (reset, closed, I/O error) is
//!   [`Error::Unavailable`] with `maybe_applied: true` when a statement was
//!   in flight (it may have committed just before), and `false` while
//!   connecting (see [`pool`]);
//! - `57014` (query canceled, which is how `statement_timeout` ends a
//!   statement) is [`Error::Timeout`];
//! - `40001` (serialization failure) and `40P01` (deadlock) are
//!   [`Error::Backend`] with `retryable = true`;
//! - configuration the server or the client refuses, which no retry can
//!   fix, is [`Error::Backend`] with `retryable = false` and a message that
//!   says what to change: a TLS handshake that failed on a certificate
//!   (unknown CA, wrong host name, expired; a `rustls::Error` anywhere in
//!   the source chain) or on the server's alert, a server with TLS off
//!   under `sslmode=require` or stronger, a wrong password (`28P01`), and
//!   `pg_hba.conf` refusing the connection (`28000`: no entry for a
//!   plaintext connection, a missing or wrong client certificate);
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
    /// The server refused to serve the request.
    Unavailable,
    /// The connection broke without an answer.
    Lost,
    Timeout,
    Retryable,
    Final,
}

/// The rustls error in `err`'s source chain, if the failure was the TLS
/// handshake's. tokio-postgres wraps the connector's `io::Error`, which
/// wraps the `rustls::Error`; `io::Error::source` skips the error it wraps,
/// so each `io::Error` is opened with `get_ref`.
fn rustls_error<'a>(err: &'a (dyn std::error::Error + 'static)) -> Option<&'a rustls::Error> {
    let mut next = Some(err);
    while let Some(e) = next {
        if let Some(tls) = e.downcast_ref::<rustls::Error>() {
            return Some(tls);
        }
        if let Some(inner) = e.downcast_ref::<std::io::Error>().and_then(std::io::Error::get_ref) {
            if let Some(tls) = rustls_error(inner) {
                return Some(tls);
            }
        }
        next = e.source();
    }
    None
}

/// What to change, for a connection the client or the server refused on
/// configuration (see the module docs); `None` for other failures.
fn config_hint(err: &tokio_postgres::Error) -> Option<String> {
    use rustls::{AlertDescription, CertificateError};
    if let Some(db) = err.as_db_error() {
        let msg = db.message();
        return match db.code().code() {
            "28P01" => Some("authentication failed: check the user name and password".to_owned()),
            "28000" if msg.contains("no encryption") => Some(
                "the server accepts this user only over TLS (pg_hba.conf `hostssl`): set sslmode=verify-full \
                 (or require)"
                    .to_owned(),
            ),
            "28000" if msg.contains("certificate") => Some(
                "the server wants a valid client certificate for this user: set sslcert and sslkey (its CN must \
                 be the user name, signed by a CA the server trusts)"
                    .to_owned(),
            ),
            "28000" => Some(
                "the server refuses this user (an unknown role, or no pg_hba.conf entry for it): check the user, \
                 the database and sslmode"
                    .to_owned(),
            ),
            _ => None,
        };
    }
    if let Some(tls) = rustls_error(err) {
        let hint = match tls {
            // A bad signature: a CA of the same name but another key.
            rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer | CertificateError::BadSignature) => {
                "the server's certificate is not signed by a trusted root: set sslrootcert to the CA file that \
                 signed it (or sslmode=require to encrypt without checking)"
            }
            rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            ) => {
                "the server's certificate does not name the host connected to: connect by a name (or IP) the \
                 certificate holds, or use sslmode=verify-ca to check the chain only"
            }
            rustls::Error::InvalidCertificate(
                CertificateError::Expired | CertificateError::ExpiredContext { .. } | CertificateError::NotValidYet,
            ) => "the server's certificate is expired or not yet valid: renew it, or check the clocks",
            rustls::Error::InvalidCertificate(_) => {
                "the server's certificate was refused: check sslrootcert and the server's certificate"
            }
            rustls::Error::AlertReceived(
                AlertDescription::CertificateRequired
                | AlertDescription::BadCertificate
                | AlertDescription::UnknownCA
                | AlertDescription::CertificateUnknown
                | AlertDescription::AccessDenied,
            ) => "the server refused the client certificate: check sslcert and sslkey",
            _ => "the TLS handshake failed: check sslmode, sslrootcert and the server's TLS settings",
        };
        // The driver's message for a TLS failure does not include its cause.
        return Some(format!("{tls}; {hint}"));
    }
    let mut next: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = next {
        // The driver's fixed message when `sslmode=require` (or stronger)
        // meets a server with `ssl = off`.
        if e.to_string().contains("server does not support TLS") {
            return Some(
                "the server does not offer TLS (ssl = off) but sslmode requires it: turn ssl on, or use \
                 sslmode=prefer"
                    .to_owned(),
            );
        }
        next = e.source();
    }
    None
}

fn classify(err: &tokio_postgres::Error) -> Class {
    if let Some(db) = err.as_db_error() {
        return classify_code(db.code().code());
    }
    if config_hint(err).is_some() {
        return Class::Final;
    }
    // No SQLSTATE: the driver failed to talk to the server at all (connect
    // refused, connection reset or closed, I/O timeout).
    let mut source = std::error::Error::source(err);
    while let Some(s) = source {
        if s.is::<std::io::Error>() {
            return Class::Lost;
        }
        source = s.source();
    }
    if err.is_closed() {
        Class::Lost
    } else {
        Class::Final
    }
}

/// The class of an error the server answered with SQLSTATE `code`.
fn classify_code(code: &str) -> Class {
    match code {
        "57014" => Class::Timeout,
        "57P01" | "57P02" | "57P03" => Class::Unavailable,
        "40001" | "40P01" => Class::Retryable,
        _ if code.starts_with("08") || code.starts_with("53") => Class::Unavailable,
        _ => Class::Final,
    }
}

/// Builds the error for a driver failure, keeping it as the source.
fn build(pg: tokio_postgres::Error, message: String) -> Error {
    from_class(classify(&pg), message, Box::new(pg))
}

fn from_class(class: Class, message: String, source: BoxError) -> Error {
    match class {
        Class::Unavailable => {
            Error::Unavailable { backend: BACKEND, message, maybe_applied: false, source: Some(source) }
        }
        Class::Lost => Error::Unavailable { backend: BACKEND, message, maybe_applied: true, source: Some(source) },
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

/// Maps a failure to open a connection: what the stores do for the pool's
/// connections, for callers that connect themselves (`pg_dump`'s checks in
/// `selfrag-backup`). `target` names the server in the message (print it
/// through [`redact_url`](crate::redact_url)).
///
/// Refused configuration (TLS certificate, TLS off, wrong password,
/// `pg_hba.conf`) is a non-retryable [`Error::Backend`] whose message says
/// what to change; a server that cannot serve now or cannot be reached is
/// [`Error::Unavailable`] (nothing was sent).
pub fn connect_error(err: tokio_postgres::Error, target: &str) -> Error {
    connect_failure(err, &format!("cannot connect to {target}"))
}

fn connect_failure(err: tokio_postgres::Error, context: &str) -> Error {
    let message = match config_hint(&err) {
        Some(hint) => format!("{context}: {} ({hint})", describe(&err)),
        None => format!("{context}: {}", describe(&err)),
    };
    // Nothing of the caller's was sent on a connection that failed to open.
    let class = match classify(&err) {
        Class::Lost => Class::Unavailable,
        other => other,
    };
    from_class(class, message, Box::new(err))
}

/// Maps a failure to get a connection from the pool.
pub(crate) fn pool(err: PoolError) -> Error {
    match err {
        PoolError::Backend(e) => connect_failure(e, "cannot connect"),
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
    Error::backend(BACKEND, format!("a stored row cannot be read: {what}"), false, source)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_states_map_to_the_documented_kinds() {
        // Starting up, shutting down, crash recovery, connection exceptions
        // and resource exhaustion: the server cannot serve now.
        for code in ["57P01", "57P02", "57P03", "08006", "08001", "53300", "53100", "53200"] {
            let err = from_class(classify_code(code), code.into(), code.into());
            assert!(matches!(err, Error::Unavailable { maybe_applied: false, .. }), "{code}: {err:?}");
            assert!(err.is_retryable() && !err.is_ambiguous(), "{code}");
        }
        let err = from_class(classify_code("57014"), "canceled".into(), "57014".into());
        assert!(matches!(err, Error::Timeout { .. }), "{err:?}");
        for code in ["40001", "40P01"] {
            let err = from_class(classify_code(code), code.into(), code.into());
            assert!(matches!(err, Error::Backend { retryable: true, .. }), "{code}: {err:?}");
        }
        for code in ["42601", "23505", "22P02"] {
            let err = from_class(classify_code(code), code.into(), code.into());
            assert!(matches!(err, Error::Backend { retryable: false, .. }), "{code}: {err:?}");
        }
        let lost = from_class(Class::Lost, "reset".into(), "reset".into());
        assert!(lost.is_ambiguous() && lost.is_retryable(), "{lost:?}");
    }
}
