//! `selfrag` against a private Postgres of this test binary's own that
//! takes TCP only over TLS (`hostssl`), with certificates the test
//! generates (`selfrag_testkit::certs`): the doctor reports the connection
//! encrypted and verified under `verify-full`, and TLS settings that do not
//! fit the server are configuration errors (exit 2) saying what to change.

use std::process::{Command, Output};

use selfrag_testkit::certs::TestCerts;
use selfrag_testkit::servers::{PgOptions, PrivatePostgres};
use serde_json::Value;

mod common;
use common::TOOL_VARS;

/// TLS only over TCP; no password (the test is about the channel).
const HBA: &str = "\
local all all trust
hostssl all all 127.0.0.1/32 trust
hostssl all all ::1/128 trust
";

#[derive(Debug)]
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Run {
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {self:?}"))
    }
}

fn selfrag(args: &[&str], env: &[(&str, &str)]) -> Run {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_selfrag"));
    for var in TOOL_VARS {
        cmd.env_remove(var);
    }
    cmd.args(args).envs(env.iter().copied());
    let Output { status, stdout, stderr } = cmd.output().expect("run the selfrag binary");
    Run {
        code: status.code().expect("exited normally"),
        stdout: String::from_utf8(stdout).expect("utf-8 stdout"),
        stderr: String::from_utf8(stderr).expect("utf-8 stderr"),
    }
}

fn check<'a>(doc: &'a Value, service: &str, name: &str) -> &'a Value {
    doc["checks"]
        .as_array()
        .expect("checks array")
        .iter()
        .find(|c| c["service"] == service && c["check"] == name)
        .unwrap_or_else(|| panic!("no check {service}/{name} in {doc:#}"))
}

/// Issue 13, item 5, and issue 18, item 3, over a real TLS server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doctor_reports_verified_tls_and_mismatched_tls_is_a_configuration_error() {
    let certs = TestCerts::generate("cli_user").expect("certificates");
    let opts = PgOptions { hba: Some(HBA.into()), ..certs.postgres_options(false) };
    let Some(pg) = PrivatePostgres::start_or_skip(opts).await else { return };
    let url = |mode: &str, ca: &std::path::Path| {
        format!("postgres://postgres@localhost:{}/test?sslmode={mode}&sslrootcert={}", pg.port(), ca.display())
    };
    let full = url("verify-full", &certs.ca_path());
    let env = [("DATABASE_URL", full.as_str())];

    let up = selfrag(&["migrate", "up", "-q"], &env);
    assert_eq!(up.code, 0, "{up:?}");
    let doctor = selfrag(&["doctor", "--json"], &env);
    assert_eq!(doctor.code, 0, "{doctor:?}");
    let doc = doctor.json();
    let tls = check(&doc, "postgres", "tls");
    assert_eq!(tls["state"], "ok", "{doc:#}");
    assert_eq!(tls["tls"]["encrypted"], true, "{doc:#}");
    assert_eq!(tls["tls"]["verified"], true, "{doc:#}");
    assert_eq!(tls["tls"]["host_verified"], true, "{doc:#}");
    assert!(tls["tls"]["version"].as_str().unwrap().starts_with("TLS"), "the server's pg_stat_ssl row: {doc:#}");
    assert!(tls["tls"]["mode"].as_str().unwrap().starts_with("sslmode=verify-full"), "{doc:#}");
    assert!(tls["detail"].as_str().unwrap().contains("server certificate verified"), "{doc:#}");

    // `require`: encrypted, not verified (loopback: ok, and said).
    let require = format!("postgres://postgres@localhost:{}/test?sslmode=require", pg.port());
    let doc = selfrag(&["doctor", "--json"], &[("DATABASE_URL", require.as_str())]).json();
    let tls = check(&doc, "postgres", "tls");
    assert_eq!(
        (tls["tls"]["encrypted"].clone(), tls["tls"]["verified"].clone()),
        (Value::Bool(true), Value::Bool(false))
    );
    assert!(tls["detail"].as_str().unwrap().contains("NOT verified"), "{doc:#}");

    // A CA that did not sign the server's certificate: exit 2, the cause
    // and what to change, for the doctor and for the other commands.
    let wrong_ca = url("verify-full", &certs.other_ca_path());
    let env = [("DATABASE_URL", wrong_ca.as_str())];
    let doctor = selfrag(&["doctor", "--json"], &env);
    assert_eq!(doctor.code, 2, "{doctor:?}");
    let doc = doctor.json();
    let conn = check(&doc, "postgres", "connection");
    assert_eq!(conn["state"], "config", "{doc:#}");
    let detail = conn["detail"].as_str().unwrap();
    assert!(detail.contains(&format!("localhost:{}", pg.port())), "names the server: {detail}");
    assert!(detail.contains("certificate") && detail.contains("sslrootcert"), "cause and fix: {detail}");
    assert!(!detail.contains("Error occurred while creating a new object"), "{detail}");
    let status = selfrag(&["migrate", "status"], &env);
    assert_eq!(status.code, 2, "{status:?}");
    assert!(status.stderr.contains("sslrootcert"), "{status:?}");

    // No TLS where the server takes only TLS: refused by pg_hba, exit 2.
    let plain = format!("postgres://postgres@localhost:{}/test?sslmode=disable", pg.port());
    let doctor = selfrag(&["doctor", "--json"], &[("DATABASE_URL", plain.as_str())]);
    assert_eq!(doctor.code, 2, "{doctor:?}");
    let doc = doctor.json();
    assert!(check(&doc, "postgres", "connection")["detail"].as_str().unwrap().contains("sslmode"), "{doc:#}");

    // Backups take the same TLS settings (pg_dump gets them through its
    // environment).
    let backups = tempfile::tempdir().unwrap();
    let backup = selfrag(
        &["backup", "postgres", "--json"],
        &[("DATABASE_URL", full.as_str()), ("SELFRAG_BACKUP_DIR", backups.path().to_str().unwrap())],
    );
    assert_eq!(backup.code, 0, "{backup:?}");
}

/// Issue 13, item 5, for Redis: a TLS-only `redis-server` of the test's
/// own. `rediss://` with the test CA is encrypted and verified; `#insecure`
/// is encrypted, not verified; a CA that did not sign the server's
/// certificate is a configuration error (exit 2) that says what to change.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doctor_reports_redis_tls() {
    use selfrag_testkit::servers::{free_port, PrivateRedis, RedisOptions};
    let certs = TestCerts::generate("cli_user").expect("certificates");
    let port = free_port().expect("a free port");
    let opts = RedisOptions { args: certs.redis_args(port, false), ..RedisOptions::default() };
    let Some(_redis) = PrivateRedis::start_or_skip(opts).await else { return };
    let url = format!("rediss://localhost:{port}");
    let ca = certs.ca_path().display().to_string();
    // A TLS connect is slow in a debug build on busy cores.
    let timeout = ("SELFRAG_REDIS_CONNECT_TIMEOUT_MS", "10000");

    let run =
        selfrag(&["doctor", "--json"], &[("REDIS_URL", url.as_str()), ("SELFRAG_REDIS_TLS_CA", ca.as_str()), timeout]);
    assert_eq!(run.code, 0, "{run:?}");
    let doc = run.json();
    let tls = check(&doc, "redis", "tls");
    assert_eq!(tls["state"], "ok", "{doc:#}");
    assert_eq!(
        (tls["tls"]["encrypted"].clone(), tls["tls"]["verified"].clone()),
        (Value::Bool(true), Value::Bool(true))
    );
    assert!(tls["tls"]["mode"].as_str().unwrap().contains(&format!("roots from {ca}")), "{doc:#}");

    let insecure = format!("{url}/#insecure");
    let doc = selfrag(&["doctor", "--json"], &[("REDIS_URL", insecure.as_str()), timeout]).json();
    let tls = check(&doc, "redis", "tls");
    assert_eq!(
        (tls["tls"]["encrypted"].clone(), tls["tls"]["verified"].clone()),
        (Value::Bool(true), Value::Bool(false))
    );

    let other = certs.other_ca_path().display().to_string();
    let run = selfrag(
        &["doctor", "--json"],
        &[("REDIS_URL", url.as_str()), ("SELFRAG_REDIS_TLS_CA", other.as_str()), timeout],
    );
    assert_eq!(run.code, 2, "{run:?}");
    let doc = run.json();
    let conn = check(&doc, "redis", "connection");
    assert_eq!(conn["state"], "config", "{doc:#}");
    let detail = conn["detail"].as_str().unwrap();
    assert!(detail.contains(&format!("localhost:{port}")), "names the server: {detail}");
    assert!(detail.contains("certificate") && detail.contains("SELFRAG_REDIS_TLS_CA"), "cause and fix: {detail}");
}
