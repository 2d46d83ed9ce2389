//! No password or API key ever reaches the `selfrag` binary's output: its
//! stdout and stderr, human and `--json`, are searched for a known secret
//! given in every form the tool accepts one (URLs and `key=value` strings in
//! `DATABASE_URL` / `REDIS_URL` / `QDRANT_URL`, the flags, `QDRANT_API_KEY`),
//! against closed ports (port 1 refuses at once), malformed URLs and bad
//! command lines. No server is needed; each run takes milliseconds.

use std::process::{Command, Output};

use serde_json::Value;

mod common;
use common::TOOL_VARS;

/// The secret. Long and distinctive, so that any occurrence is a leak.
const PW: &str = "Sekr1tPassw0rd";

struct Run {
    what: String,
    code: i32,
    stdout: String,
    stderr: String,
}

impl Run {
    /// Fails when the secret (or its JSON-escaped or percent-encoded form)
    /// appears anywhere in the output.
    fn assert_clean(&self) -> &Self {
        for form in [PW.to_owned(), PW.replace('0', "%30")] {
            assert!(
                !self.stdout.contains(&form) && !self.stderr.contains(&form),
                "{} printed the secret:\n--- stdout\n{}--- stderr\n{}",
                self.what,
                self.stdout,
                self.stderr
            );
        }
        self
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("{}: stdout is not JSON ({e}):\n{}\n{}", self.what, self.stdout, self.stderr))
    }

    fn text(&self) -> String {
        format!("{}{}", self.stdout, self.stderr)
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
        what: format!("selfrag {args:?} with {env:?}"),
        code: status.code().expect("exited normally"),
        stdout: String::from_utf8(stdout).expect("utf-8 stdout"),
        stderr: String::from_utf8(stderr).expect("utf-8 stderr"),
    }
}

/// `args` in human mode and with `--json`; both must be clean, and the
/// JSON run must print one JSON document.
fn both_modes(args: &[&str], env: &[(&str, &str)]) -> (Run, Run) {
    let human = selfrag(args, env);
    human.assert_clean();
    let mut json_args = vec!["--json"];
    json_args.extend_from_slice(args);
    let json = selfrag(&json_args, env);
    json.assert_clean();
    json.json();
    (human, json)
}

/// Postgres connection strings holding the secret in every form libpq
/// accepts, and some it does not (they must be refused without an echo).
fn postgres_urls(port: &str) -> Vec<String> {
    vec![
        format!("postgres://u:{PW}@127.0.0.1:{port}/d"),
        format!("postgresql://u:{PW}@127.0.0.1:{port}/d?sslmode=disable"),
        format!("postgres://u@127.0.0.1:{port}/d?password={PW}"),
        format!("postgres://127.0.0.1:{port}/d?user=u&password={PW}"),
        format!("postgres://u:p@{PW}@127.0.0.1:{port}/d"),
        format!("postgres://u:{PW}/x@127.0.0.1:{port}/d"),
        format!("postgres://u:{PW}@127.0.0.1:notaport/d"),
        format!("host=127.0.0.1 port={port} user=u password={PW}"),
        format!("host=127.0.0.1 port={port} user=u password = {PW}"),
        format!("host=127.0.0.1 port={port} user=u password='{PW} has spaces'"),
        format!(r"host=127.0.0.1 port={port} user=u password = 'a\\b\' {PW}'"),
        format!("host=127.0.0.1 port={port} password={PW} {PW}=x"),
        format!("host=127.0.0.1 port={port} password={PW} unquoted rest"),
        format!("host=127.0.0.1 port={port} sslpassword={PW}"),
    ]
}

fn redis_urls(port: &str) -> Vec<String> {
    vec![
        format!("redis://:{PW}@127.0.0.1:{port}"),
        format!("redis://default:{PW}@127.0.0.1:{port}/0"),
        format!("rediss://:{PW}@127.0.0.1:{port}"),
        format!("redis://u:p@{PW}@127.0.0.1:{port}"),
        format!("redis://{PW}@127.0.0.1:{port}"),
        format!("redis://:{PW}@127.0.0.1:{port}/notadb"),
        format!("redis://u:{PW}/x@127.0.0.1:{port}"),
        format!("redis+unix:///nonexistent/redis.sock?pass={PW}"),
        format!("unix:///nonexistent/redis.sock?password={PW}"),
    ]
}

fn qdrant_urls(port: &str) -> Vec<String> {
    vec![
        format!("http://u:{PW}@127.0.0.1:{port}"),
        format!("https://{PW}@127.0.0.1:{port}"),
        format!("http://127.0.0.1:{port}/?api-key={PW}"),
        format!("http://u:p@{PW}@127.0.0.1:{port}"),
        format!("127.0.0.1:{port}?api_key={PW}"),
    ]
}

#[test]
fn doctor_against_closed_ports_prints_no_secret() {
    let env = [
        ("DATABASE_URL", format!("postgres://u:{PW}@127.0.0.1:1/d")),
        ("REDIS_URL", format!("redis://:{PW}@127.0.0.1:1")),
        ("QDRANT_URL", "http://127.0.0.1:1".to_owned()),
        ("QDRANT_API_KEY", PW.to_owned()),
    ];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let (human, json) = both_modes(&["doctor"], &env);
    assert_eq!(human.code, 3, "every service is down: {}", human.text());
    let doc = json.json();
    let down: Vec<&str> = doc["checks"]
        .as_array()
        .expect("checks")
        .iter()
        .filter(|c| c["state"] == "unreachable")
        .filter_map(|c| c["service"].as_str())
        .collect();
    assert_eq!(down, ["postgres", "redis", "qdrant"], "{}", json.stdout);
}

#[test]
fn every_postgres_form_is_kept_out_of_the_output() {
    for url in postgres_urls("1") {
        let env = [("DATABASE_URL", url.as_str())];
        let (human, _) = both_modes(&["doctor"], &env);
        assert!(matches!(human.code, 2 | 3), "refused or unreachable: {}", human.text());
        both_modes(&["migrate", "status"], &env);
        // The same URL as a flag instead of the variable.
        both_modes(&["--database-url", url.as_str(), "migrate", "up"], &[]);
    }
}

/// Redis Cluster seeds in `REDIS_URL`, each with its password, and the
/// switch for one seed: nothing of them is printed.
#[test]
fn redis_cluster_seeds_are_kept_out_of_the_output() {
    let seeds = [
        format!("redis://:{PW}@127.0.0.1:1,redis://:{PW}@127.0.0.1:2"),
        format!("rediss://u:{PW}@127.0.0.1:1, rediss://u:{PW}@127.0.0.1:2"),
        format!("redis://:{PW}@127.0.0.1:1,redis://:other{PW}@127.0.0.1:2"),
    ];
    for url in &seeds {
        let (human, _) = both_modes(&["doctor"], &[("REDIS_URL", url.as_str())]);
        assert!(matches!(human.code, 2 | 3), "refused or unreachable: {}", human.text());
    }
    let one = format!("redis://:{PW}@127.0.0.1:1");
    let (human, _) = both_modes(&["doctor", "--redis-cluster", "1"], &[("REDIS_URL", one.as_str())]);
    assert_eq!(human.code, 3, "{}", human.text());
}

#[test]
fn every_redis_form_is_kept_out_of_the_output() {
    for url in redis_urls("1") {
        let (human, _) = both_modes(&["doctor"], &[("REDIS_URL", url.as_str())]);
        assert!(matches!(human.code, 2 | 3), "refused or unreachable: {}", human.text());
        both_modes(&[&format!("--redis-url={url}"), "doctor"], &[]);
    }
}

#[test]
fn every_qdrant_form_is_kept_out_of_the_output() {
    for url in qdrant_urls("1") {
        let env = [("QDRANT_URL", url.as_str()), ("QDRANT_API_KEY", PW)];
        let (human, _) = both_modes(&["doctor"], &env);
        assert_eq!(human.code, 2, "a URL with a secret in it is refused: {}", human.text());
        assert!(human.text().contains("invalid Qdrant configuration"), "{}", human.text());
    }
    // A clean URL and the key, as a flag.
    both_modes(&["--qdrant-url", "http://127.0.0.1:1", "--qdrant-api-key", PW, "doctor"], &[]);
}

/// `backup` and `restore` hand the password to `pg_dump` / `pg_restore`
/// through their environment and print the target through the redacted
/// URL; the Qdrant key is never shown.
#[test]
fn backup_and_restore_print_no_secret() {
    let dir = tempfile::tempdir().expect("temp dir");
    let backup_dir = dir.path().to_str().expect("utf-8 path");
    // pg_dump where Debian puts it, when it is not on PATH.
    let bin = ["/usr/lib/postgresql/15/bin", "/usr/lib/postgresql/16/bin", "/usr/lib/postgresql/17/bin"]
        .into_iter()
        .find(|d| std::path::Path::new(d).join("pg_dump").exists());
    for url in postgres_urls("1") {
        let mut env = vec![("DATABASE_URL", url.as_str()), ("SELFRAG_BACKUP_DIR", backup_dir)];
        if let Some(bin) = bin {
            env.push(("SELFRAG_PG_BIN_DIR", bin));
        }
        both_modes(&["backup", "postgres"], &env);
        both_modes(&["restore", "postgres"], &env);
    }
    let env = [
        ("QDRANT_URL", "http://127.0.0.1:1"),
        ("QDRANT_REST_URL", "http://127.0.0.1:2"),
        ("QDRANT_API_KEY", PW),
        ("SELFRAG_BACKUP_DIR", backup_dir),
    ];
    let (human, _) = both_modes(&["backup", "qdrant"], &env);
    assert_eq!(human.code, 3, "{}", human.text());
    both_modes(&["prune", "--dry-run"], &env);
}

/// clap quotes a misplaced argument whole; help shows environment values
/// unless told not to.
#[test]
fn usage_errors_and_help_print_no_secret() {
    let url = format!("postgres://u:{PW}@h/d");
    let (human, _) = both_modes(&["doctor", &url], &[]);
    assert_eq!(human.code, 2);
    assert!(human.text().contains("unexpected argument"), "{}", human.text());
    both_modes(&["doctor", &format!("password={PW}")], &[]);
    both_modes(&["doctor", &format!("--databse-url={url}")], &[]);
    both_modes(&["doctor", "--qdrant-api-key"], &[("QDRANT_API_KEY", PW)]);
    let (redis, qdrant, rest) =
        (format!("redis://:{PW}@h"), format!("http://u:{PW}@h:6334"), format!("http://u:{PW}@h:6333"));
    let env = [
        ("DATABASE_URL", url.as_str()),
        ("REDIS_URL", redis.as_str()),
        ("QDRANT_URL", qdrant.as_str()),
        ("QDRANT_REST_URL", rest.as_str()),
        ("QDRANT_API_KEY", PW),
    ];
    for args in [&["--help"][..], &["doctor", "--help"], &["backup", "-h"]] {
        let run = selfrag(args, &env);
        run.assert_clean();
        assert_eq!(run.code, 0, "{}", run.text());
        assert!(run.stdout.contains("DATABASE_URL"), "{}", run.stdout);
    }
}

/// A loopback listener that keeps the first bytes of each connection (up
/// to `n` connections) and closes it: what the tool sends before any
/// answer. Returns its port.
fn first_bytes_listener(n: usize) -> (u16, std::thread::JoinHandle<Vec<Vec<u8>>>) {
    use std::io::Read;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let handle = std::thread::spawn(move || {
        let mut seen = Vec::new();
        for stream in listener.incoming().take(n) {
            let Ok(mut stream) = stream else { break };
            stream.set_read_timeout(Some(std::time::Duration::from_secs(5))).ok();
            let mut buf = vec![0u8; 4096];
            let read = stream.read(&mut buf).unwrap_or(0);
            buf.truncate(read);
            seen.push(buf);
        }
        seen
    });
    (port, handle)
}

/// Qdrant Cloud settings (`https://` URLs for gRPC and REST, an API key):
/// what reaches the wire is a TLS handshake, never the key in clear, and
/// neither `doctor` nor `backup qdrant` prints the key whatever fails.
#[test]
fn https_qdrant_with_a_key_encrypts_and_prints_no_key() {
    let dir = tempfile::tempdir().expect("temp dir");
    let backup_dir = dir.path().to_str().expect("utf-8 path");
    for args in [&["doctor"][..], &["backup", "qdrant"]] {
        let (port, seen) = first_bytes_listener(1);
        let url = format!("https://127.0.0.1:{port}");
        let env = [
            ("QDRANT_URL", url.as_str()),
            ("QDRANT_REST_URL", url.as_str()),
            ("QDRANT_API_KEY", PW),
            ("SELFRAG_BACKUP_DIR", backup_dir),
        ];
        let run = selfrag(args, &env);
        run.assert_clean();
        assert!(matches!(run.code, 2 | 3), "{}: {}", run.what, run.text());
        let seen = seen.join().expect("listener");
        let first = seen.first().expect("the tool connected");
        assert_eq!(first.first(), Some(&0x16), "a TLS handshake first, got {:?}", String::from_utf8_lossy(first));
        assert!(!String::from_utf8_lossy(first).contains(PW), "the key crossed in clear");
    }
}
