//! Exit codes, errors and the two output modes (human text, JSON).

use std::fmt;
use std::process::ExitCode;

use selfrag_core::ErrorKind;
use serde_json::{json, Value};

use crate::secrets::scrub;

/// What the process exits with; cron jobs and monitors act on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Exit {
    /// Everything worked / every check passed (or was skipped).
    Ok = 0,
    /// A check or an operation failed.
    Failed = 1,
    /// Bad flags, environment or configuration.
    Usage = 2,
    /// A service was unreachable (and nothing else failed).
    Unreachable = 3,
}

impl Exit {
    pub(crate) fn code(self) -> u8 {
        self as u8
    }

    /// The worse of two outcomes: usage beats a failure, which beats an
    /// unreachable service, which beats ok. (A failed check needs a person;
    /// an unreachable service may be a blip a monitor retries.)
    pub(crate) fn worst(self, other: Exit) -> Exit {
        if other.severity() > self.severity() {
            other
        } else {
            self
        }
    }

    fn severity(self) -> u8 {
        match self {
            Exit::Ok => 0,
            Exit::Unreachable => 1,
            Exit::Failed => 2,
            Exit::Usage => 3,
        }
    }

    pub(crate) fn name(self) -> &'static str {
        match self {
            Exit::Ok => "ok",
            Exit::Failed => "failed",
            Exit::Usage => "usage",
            Exit::Unreachable => "unreachable",
        }
    }
}

impl From<Exit> for ExitCode {
    fn from(e: Exit) -> Self {
        ExitCode::from(e.code())
    }
}

/// An error that ends a command, with the exit code it maps to.
#[derive(Debug)]
pub(crate) struct Failure {
    pub(crate) exit: Exit,
    pub(crate) message: String,
}

impl Failure {
    pub(crate) fn usage(message: impl Into<String>) -> Self {
        Self { exit: Exit::Usage, message: message.into() }
    }

    pub(crate) fn failed(message: impl Into<String>) -> Self {
        Self { exit: Exit::Failed, message: message.into() }
    }

    /// A library error, with `context` in front and, for a configuration
    /// problem, what to change: invalid input and configuration problems
    /// are 2, an unreachable or slow service is 3, anything else a failure
    /// (1).
    pub(crate) fn from_core(context: &str, err: &selfrag_core::Error) -> Self {
        Self { exit: exit_of(err), message: format!("{context}: {}", explain(err)) }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

/// The exit code a library error maps to: configuration problems (invalid
/// input, rejected credentials, missing `pg_dump`/`pg_restore`) are 2, an
/// unreachable or slow service 3, anything else 1.
pub(crate) fn exit_of(err: &selfrag_core::Error) -> Exit {
    if is_auth_failure(err) || is_missing_tool(err) || config_problem(err).is_some() {
        return Exit::Usage;
    }
    match err.kind() {
        ErrorKind::InvalidInput => Exit::Usage,
        ErrorKind::Unavailable | ErrorKind::Timeout => Exit::Unreachable,
        _ => Exit::Failed,
    }
}

/// Whether `err` (or one of its sources) says the service rejected our
/// credentials: a configuration error, which retrying cannot fix. Postgres
/// errors are recognised by their SQLSTATE class 28 (invalid authorization:
/// a wrong password, an unknown role, no `pg_hba.conf` entry); Redis, Qdrant
/// and the messages of `pg_dump`/`pg_restore` (which only reach us as text)
/// by their wording.
pub(crate) fn is_auth_failure(err: &(dyn std::error::Error + 'static)) -> bool {
    const PHRASES: [&str; 9] = [
        "password authentication failed",
        "no password supplied",
        "authentication failed",
        "no pg_hba.conf entry",
        "wrongpass",
        "noauth",
        "called without any password configured",
        "unauthenticated",
        "invalid api key",
    ];
    let mut current: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = current {
        if let Some(pg) = e.downcast_ref::<selfrag_postgres::tokio_postgres::Error>() {
            if pg.code().is_some_and(|c| c.code().starts_with("28")) {
                return true;
            }
        }
        let text = e.to_string().to_lowercase();
        if PHRASES.iter().any(|p| text.contains(p)) || (text.contains("role \"") && text.contains("does not exist")) {
            return true;
        }
        current = e.source();
    }
    false
}

/// What the user must change, when `err` (or one of its sources) says the
/// configuration names something that cannot work, a configuration error
/// (2) that retrying cannot fix:
/// - a Postgres database that does not exist (SQLSTATE `3D000`, or the
///   same words from `pg_dump`, which only reach us as text);
/// - a TLS handshake the settings make fail: a server certificate the
///   client refuses (unknown CA, wrong host name, expired), a client
///   certificate the server refuses, or no TLS on a server the settings
///   require it of (rustls' and the driver's words; the libraries say
///   what to change in their message, see [`explain`]).
///
/// `None` for anything else (an outage, a failed check).
pub(crate) fn config_problem(err: &(dyn std::error::Error + 'static)) -> Option<&'static str> {
    const NO_DATABASE: &str = "the database named in DATABASE_URL / --database-url does not exist on that \
         server: create it (`CREATE DATABASE ...`, `createdb`) or correct the name in the URL";
    const TLS_MISMATCH: &str = "the TLS settings do not fit the server: the CA that signed its certificate \
         (Postgres: sslrootcert in DATABASE_URL; Redis: SELFRAG_REDIS_TLS_CA), a client certificate it accepts \
         (sslcert / sslkey; SELFRAG_REDIS_TLS_CERT / _KEY), and a host name in the URL that the certificate holds";
    let mut current: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = current {
        if let Some(pg) = e.downcast_ref::<selfrag_postgres::tokio_postgres::Error>() {
            if pg.code() == Some(&selfrag_postgres::tokio_postgres::error::SqlState::INVALID_CATALOG_NAME) {
                return Some(NO_DATABASE);
            }
        }
        let text = e.to_string();
        if names_missing_database(&text) {
            return Some(NO_DATABASE);
        }
        if ["invalid peer certificate", "received fatal alert", "server does not support TLS"]
            .iter()
            .any(|p| text.contains(p))
        {
            return Some(TLS_MISMATCH);
        }
        current = e.source();
    }
    None
}

/// Whether `text` holds the server's `database "<name>" does not exist`
/// (pg_dump's "FATAL:  database "x" does not exist"). A library error's
/// "database `x` does not exist" is a missing restore target, which the
/// restore command explains itself.
fn names_missing_database(text: &str) -> bool {
    text.match_indices("database \"").any(|(at, open)| {
        let name_and_rest = &text[at + open.len()..];
        name_and_rest.split_once('"').is_some_and(|(_, rest)| rest.starts_with(" does not exist"))
    })
}

/// [`chain`], followed by what to change for a configuration problem
/// ([`config_problem`]).
pub(crate) fn explain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = chain(err);
    // The Postgres and Redis stores already say what to change for a TLS
    // failure ("... the server's certificate is not signed by a trusted
    // root: set sslrootcert ..." / "... set tls_ca_file ..."): no second
    // advice then.
    let advised =
        ["sslmode", "sslrootcert", "sslcert", "tls_ca_file", "tls_client_cert_file"].iter().any(|w| text.contains(w));
    match config_problem(err) {
        Some(fix) if !(advised && fix.contains("sslrootcert")) => {
            text.push_str(". Fix: ");
            text.push_str(fix);
        }
        _ => {}
    }
    text
}

/// Whether `err` is `selfrag-backup`'s "`pg_dump`/`pg_restore` not found":
/// the installation is incomplete, a configuration error (2), not an outage.
fn is_missing_tool(err: &selfrag_core::Error) -> bool {
    let text = err.to_string();
    (text.contains("pg_dump not found") || text.contains("pg_restore not found"))
        && matches!(err.kind(), ErrorKind::Unavailable | ErrorKind::Backend | ErrorKind::Incompatible)
}

/// An error with its sources, `a: b: c`, skipping sources whose text the
/// outer message already contains.
pub(crate) fn chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        let part = s.to_string();
        if !part.is_empty() && !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        source = s.source();
    }
    text
}

/// Prints results in the mode the user chose. Every line goes through
/// [`scrub`]: no configured password or key is ever printed.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Out {
    pub(crate) json: bool,
    pub(crate) quiet: bool,
}

impl Out {
    /// A progress line on stderr (never in JSON mode's stdout).
    pub(crate) fn progress(&self, line: impl fmt::Display) {
        if !self.quiet {
            eprintln!("... {}", scrub(&line.to_string()));
        }
    }

    /// The command's result: `human` on stdout, or `{"ok": .., "exit_code": .., ...document}`
    /// in JSON mode.
    pub(crate) fn finish(&self, exit: Exit, human: &str, document: Value) -> Exit {
        if self.json {
            let mut doc = json!({ "ok": exit == Exit::Ok, "exit_code": exit.code(), "outcome": exit.name() });
            if let (Some(map), Value::Object(extra)) = (doc.as_object_mut(), document) {
                map.extend(extra);
            }
            println!("{}", scrub(&format!("{doc:#}")));
        } else if !human.is_empty() {
            print!("{}", scrub(human));
            if !human.ends_with('\n') {
                println!();
            }
        }
        exit
    }

    /// Reports a [`Failure`]: on stderr for people, as a JSON document on
    /// stdout in JSON mode.
    pub(crate) fn fail(&self, failure: &Failure) -> Exit {
        if self.json {
            let doc = json!({
                "ok": false,
                "exit_code": failure.exit.code(),
                "outcome": failure.exit.name(),
                "error": failure.message,
            });
            println!("{}", scrub(&format!("{doc:#}")));
        } else {
            eprintln!("error: {}", scrub(&failure.message));
        }
        failure.exit
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn severity_order() {
        assert_eq!(Exit::Ok.worst(Exit::Unreachable), Exit::Unreachable);
        assert_eq!(Exit::Unreachable.worst(Exit::Failed), Exit::Failed);
        assert_eq!(Exit::Failed.worst(Exit::Usage), Exit::Usage);
        assert_eq!(Exit::Failed.worst(Exit::Ok), Exit::Failed);
    }

    #[test]
    fn core_errors_map_to_codes() {
        assert_eq!(exit_of(&selfrag_core::Error::invalid("url", "bad")), Exit::Usage);
        assert_eq!(
            exit_of(&selfrag_core::Error::unavailable("redis", "down", std::io::Error::other("x"))),
            Exit::Unreachable
        );
        let auth = std::io::Error::other("WRONGPASS invalid username-password pair");
        assert_eq!(exit_of(&selfrag_core::Error::unavailable("redis", "connect", auth)), Exit::Usage);
        let tool = selfrag_core::Error::Unavailable {
            backend: "postgres",
            message: "pg_dump not found: it is not on PATH".into(),
            maybe_applied: false,
            source: None,
        };
        assert_eq!(exit_of(&tool), Exit::Usage);
    }

    #[test]
    fn missing_databases_in_text_are_configuration_problems() {
        assert!(names_missing_database(
            "pg_dump: error: connection to server at \"127.0.0.1\", port 5432 failed: FATAL:  database \"nodb\" does not exist"
        ));
        assert!(!names_missing_database("relation \"users\" does not exist"));
        assert!(!names_missing_database("database `nodb` does not exist"));
        assert!(!names_missing_database("database \"app\": schema \"x\" does not exist"));
        let err = selfrag_core::Error::Backend {
            backend: "postgres",
            message: "pg_dump failed: FATAL:  database \"nodb\" does not exist".into(),
            retryable: false,
            source: None,
        };
        assert_eq!(exit_of(&err), Exit::Usage);
        assert!(explain(&err).contains("Fix: the database named in DATABASE_URL"), "{}", explain(&err));
    }

    /// TLS handshakes the settings make fail are configuration errors; the
    /// stores' own advice is not repeated.
    #[test]
    fn tls_refusals_are_configuration_problems() {
        let backend = |message: &str| selfrag_core::Error::Backend {
            backend: "redis",
            message: message.into(),
            retryable: false,
            source: None,
        };
        for text in [
            "cannot connect to rediss://h:6380: invalid peer certificate: UnknownIssuer",
            "TLS: received fatal alert: CertificateRequired",
            "cannot connect: error performing TLS handshake: server does not support TLS",
        ] {
            let err = backend(text);
            assert_eq!(exit_of(&err), Exit::Usage, "{text}");
            assert!(explain(&err).contains("Fix: the TLS settings do not fit"), "{}", explain(&err));
        }
        let advised = backend("invalid peer certificate: UnknownIssuer; set tls_ca_file (SELFRAG_REDIS_TLS_CA)");
        assert_eq!(exit_of(&advised), Exit::Usage);
        assert!(!explain(&advised).contains("Fix:"), "{}", explain(&advised));
    }
}
