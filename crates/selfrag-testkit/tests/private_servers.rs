//! The private servers: start, connect, crash, restart, clean-up.
//!
//! They run wherever the binaries are (initdb/postgres, redis-server) and
//! skip loudly elsewhere (a failure under `SELFRAG_TEST_REQUIRE`).

#![cfg(unix)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use selfrag_testkit::servers::{PgOptions, PrivatePostgres, PrivateRedis, RedisOptions};

async fn connect(url: &str) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
    tokio::spawn(connection);
    Ok(client)
}

/// Sends one RESP command over a fresh connection and returns the reply's
/// first line.
fn redis_cmd(port: u16, args: &[&str]) -> std::io::Result<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut req = format!("*{}\r\n", args.len());
    for a in args {
        req.push_str(&format!("${}\r\n{a}\r\n", a.len()));
    }
    s.write_all(req.as_bytes())?;
    let mut buf = [0u8; 512];
    let n = s.read(&mut buf)?;
    let reply = String::from_utf8_lossy(&buf[..n]).into_owned();
    // Bulk strings: "$3\r\nbar\r\n" -> "bar".
    let mut lines = reply.split("\r\n");
    let first = lines.next().unwrap_or_default().to_owned();
    Ok(if first.starts_with('$') && first != "$-1" { lines.next().unwrap_or_default().to_owned() } else { first })
}

#[tokio::test]
async fn private_postgres_survives_a_crash_with_its_committed_data() {
    let started = Instant::now();
    let Some(pg) = PrivatePostgres::start_or_skip(PgOptions::default()).await else { return };
    eprintln!("start (initdb, CREATE DATABASE, ready): {:?}", started.elapsed());
    assert!(pg.url().ends_with(&format!("@127.0.0.1:{}/test", pg.port())), "{}", pg.url());
    let client = connect(&pg.url()).await.expect("connect to the private server");
    client.batch_execute("CREATE TABLE t (v int); INSERT INTO t VALUES (42)").await.unwrap();
    let pid = pg.pid().expect("running");
    let backends: i64 = client
        .query_one("SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend'", &[])
        .await
        .unwrap()
        .get(0);
    assert!(backends >= 1);

    let started = Instant::now();
    pg.kill().await.expect("kill");
    eprintln!("kill: {:?}", started.elapsed());
    assert!(!pg.is_running());
    assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists() || !proc_alive(pid), "postmaster {pid} survived");
    // The open connection is dead: a crash, not a clean shutdown that waits.
    assert!(client.simple_query("SELECT 1").await.is_err(), "a query on a killed server succeeded");
    assert!(connect(&pg.url()).await.is_err(), "a killed server accepted a connection");
    // A crash leaves no shutdown record: the log says so on restart.
    let started = Instant::now();
    pg.restart().await.expect("restart after the crash");
    eprintln!("restart (crash recovery): {:?}", started.elapsed());
    assert!(
        pg.log_tail(40).contains("not properly shut down") || pg.log_tail(40).contains("automatic recovery"),
        "no crash recovery in the log:\n{}",
        pg.log_tail(40)
    );

    let client = connect(&pg.url()).await.expect("connect after the restart");
    let v: i32 = client.query_one("SELECT v FROM t", &[]).await.unwrap().get(0);
    assert_eq!(v, 42, "committed row lost in the crash");

    // A clean stop, then a restart on the same port.
    pg.stop().await.expect("stop");
    assert!(!pg.is_running());
    assert!(connect(&pg.url()).await.is_err());
    pg.restart().await.expect("restart after a clean stop");
    let client = connect(&pg.url()).await.unwrap();
    let v: i32 = client.query_one("SELECT v FROM t", &[]).await.unwrap().get(0);
    assert_eq!(v, 42);

    let dir = pg.dir().to_path_buf();
    let pid = pg.pid().unwrap();
    drop(client);
    drop(pg);
    assert!(!dir.exists(), "{} left behind", dir.display());
    assert!(!proc_alive(pid), "postmaster {pid} left running after drop");
}

fn proc_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            let state = stat.rsplit(')').next().unwrap_or("").trim_start().chars().next();
            !matches!(state, Some('Z' | 'X'))
        }
        Err(_) => false,
    }
}

/// A crash that no restart follows leaves the postmaster's System V
/// segment behind; dropping the server removes it.
#[tokio::test]
async fn dropping_a_crashed_postgres_frees_its_shared_memory() {
    let Some(pg) = PrivatePostgres::start_or_skip(PgOptions { database: None, ..PgOptions::default() }).await else {
        return;
    };
    let lock_file = std::fs::read_to_string(pg.data_dir().join("postmaster.pid")).unwrap();
    let shmid = lock_file.lines().nth(6).and_then(|l| l.split_whitespace().nth(1)).unwrap().to_owned();
    let listed = || {
        std::fs::read_to_string("/proc/sysvipc/shm")
            .unwrap_or_default()
            .lines()
            .any(|l| l.split_whitespace().nth(1) == Some(shmid.as_str()))
    };
    assert!(listed(), "shmid {shmid} not in /proc/sysvipc/shm");
    pg.kill().await.unwrap();
    assert!(listed(), "the crash removed the segment (then this test proves nothing)");
    drop(pg);
    assert!(!listed(), "shared memory segment {shmid} left behind");
}

#[tokio::test]
async fn private_postgres_takes_auth_and_configuration() {
    let opts = PgOptions {
        auth_method: "scram-sha-256".into(),
        password: Some("s3cret/:@".into()),
        conf: vec!["application_name = 'from_conf'".into(), "work_mem = '7MB'".into()],
        database: Some("other db".into()),
        files: vec![("hello.txt".into(), b"hi".to_vec())],
        ..PgOptions::default()
    };
    let Some(pg) = PrivatePostgres::start_or_skip(opts).await else { return };
    // The URL carries the (encoded) password and the database.
    let client = connect(&pg.url()).await.expect("connect with the password");
    let db: String = client.query_one("SELECT current_database()", &[]).await.unwrap().get(0);
    assert_eq!(db, "other db");
    let work_mem: String = client.query_one("SHOW work_mem", &[]).await.unwrap().get(0);
    assert_eq!(work_mem, "7MB");
    // Without the password, TCP connections are refused by scram.
    let wrong = pg.url_for("postgres").replace("s3cret%2F%3A%40", "wrong");
    let err = connect(&wrong).await.expect_err("a wrong password was accepted");
    assert!(format!("{err:?}").contains("password"), "{err:?}");
    assert_eq!(std::fs::read(pg.data_dir().join("hello.txt")).unwrap(), b"hi");

    // A replacement pg_hba.conf that rejects every TCP connection.
    let opts = PgOptions {
        hba: Some("local all all trust\nhost all all 127.0.0.1/32 reject\n".into()),
        ..PgOptions::default()
    };
    let pg = PrivatePostgres::start(opts).await.expect("start with a replaced pg_hba.conf");
    let err = connect(&pg.url()).await.expect_err("pg_hba.conf was not replaced");
    assert!(format!("{err:?}").contains("pg_hba.conf"), "{err:?}");
}

#[tokio::test]
async fn private_postgres_reports_a_bad_configuration_with_the_log() {
    if PrivatePostgres::start_or_skip(PgOptions { conf: vec![], ..PgOptions::default() }).await.is_none() {
        return;
    }
    let err = PrivatePostgres::start(PgOptions {
        conf: vec!["no_such_setting_xyz = 1".into()],
        ready_timeout: Duration::from_secs(10),
        ..PgOptions::default()
    })
    .await
    .expect_err("a bad setting started");
    assert!(err.contains("no_such_setting_xyz"), "the error lacks the log: {err}");
}

#[tokio::test]
async fn private_redis_can_be_killed_and_restarted() {
    let Some(redis) = PrivateRedis::start_or_skip(RedisOptions::default()).await else { return };
    let port = redis.port();
    assert_eq!(redis.url(), format!("redis://127.0.0.1:{port}"));
    assert_eq!(redis_cmd(port, &["SET", "k", "v"]).unwrap(), "+OK");
    assert_eq!(redis_cmd(port, &["GET", "k"]).unwrap(), "v");

    let pid = redis.pid().unwrap();
    redis.kill().await.unwrap();
    assert!(!redis.is_running() && !proc_alive(pid));
    assert!(TcpStream::connect(("127.0.0.1", port)).is_err(), "a killed redis accepted a connection");

    let started = Instant::now();
    redis.restart().await.unwrap();
    eprintln!("redis restart: {:?}", started.elapsed());
    assert_eq!(redis.port(), port);
    // Nothing was persisted (no RDB, no AOF by default).
    assert_eq!(redis_cmd(port, &["GET", "k"]).unwrap(), "$-1");

    let dir = redis.dir().to_path_buf();
    let pid = redis.pid().unwrap();
    drop(redis);
    assert!(!dir.exists());
    assert!(!proc_alive(pid));
}

#[tokio::test]
async fn private_redis_takes_arguments_and_a_password() {
    let opts = RedisOptions {
        password: Some("pw".into()),
        args: vec!["--appendonly".into(), "yes".into(), "--appendfsync".into(), "always".into()],
        ..RedisOptions::default()
    };
    let Some(redis) = PrivateRedis::start_or_skip(opts).await else { return };
    let port = redis.port();
    assert_eq!(redis.url(), format!("redis://:pw@127.0.0.1:{port}"));
    assert!(redis_cmd(port, &["GET", "k"]).unwrap().starts_with("-NOAUTH"));
    // One connection: AUTH then SET, pipelined.
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.write_all(b"*2\r\n$4\r\nAUTH\r\n$2\r\npw\r\n*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$1\r\nv\r\n").unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 64];
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    while got.len() < 10 {
        let n = s.read(&mut buf).unwrap();
        assert!(n > 0);
        got.extend_from_slice(&buf[..n]);
    }
    assert_eq!(got, b"+OK\r\n+OK\r\n");
    // With the append-only file, a write survives kill -9.
    redis.kill().await.unwrap();
    redis.restart().await.unwrap();
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.write_all(b"*2\r\n$4\r\nAUTH\r\n$2\r\npw\r\n*2\r\n$3\r\nGET\r\n$1\r\nk\r\n").unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut got = Vec::new();
    while !got.ends_with(b"v\r\n") && got.len() < 64 {
        let n = s.read(&mut buf).unwrap();
        assert!(n > 0, "closed early: {:?}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
    assert_eq!(got, b"+OK\r\n$1\r\nv\r\n");
}

#[tokio::test]
async fn private_redis_reports_bad_arguments_with_the_log() {
    if PrivateRedis::start_or_skip(RedisOptions::default()).await.is_none() {
        return;
    }
    let err = PrivateRedis::start(RedisOptions {
        args: vec!["--no-such-option-xyz".into(), "1".into()],
        ..RedisOptions::default()
    })
    .await
    .expect_err("a bad argument started");
    assert!(err.contains("no-such-option-xyz"), "the error lacks the log: {err}");
}

/// The shared server of `servers::postgres()` (no URL in the environment,
/// no Docker here) is one per process and answers.
#[tokio::test]
async fn shared_servers_from_local_binaries() {
    if std::env::var_os("SELFRAG_TEST_POSTGRES_URL").is_some() || std::env::var_os("SELFRAG_TEST_REDIS_URL").is_some() {
        eprintln!("shared_servers_from_local_binaries: an env URL is set; the local step is not reached");
        return;
    }
    let Some(a) = selfrag_testkit::servers::postgres().await else { return };
    let b = selfrag_testkit::servers::postgres().await.unwrap();
    assert_eq!(a.url, b.url, "one shared server per process");
    let client = connect(&a.url).await.expect("connect to the shared server");
    let db: String = client.query_one("SELECT current_database()", &[]).await.unwrap().get(0);
    assert_eq!(db, "test");
    let Some(r) = selfrag_testkit::servers::redis().await else { return };
    let port: u16 = r.url.rsplit(':').next().unwrap().parse().unwrap();
    assert_eq!(redis_cmd(port, &["PING"]).unwrap(), "+PONG");
}

/// Set in the environment of the helper process of
/// `servers_die_with_a_killed_test_process`.
const HELPER_VAR: &str = "SELFRAG_TESTKIT_WATCHDOG_HELPER";

/// Not a test: the process `servers_die_with_a_killed_test_process` starts
/// (this same binary) and kills. It starts a private Postgres and Redis,
/// prints where they are, and waits to be killed.
#[tokio::test]
#[ignore = "helper process of servers_die_with_a_killed_test_process"]
async fn watchdog_helper_process() {
    if std::env::var_os(HELPER_VAR).is_none() {
        return;
    }
    let pg = PrivatePostgres::start(PgOptions::default()).await.expect("helper: start postgres");
    let redis = PrivateRedis::start(RedisOptions::default()).await.expect("helper: start redis");
    println!("READY {} {} {} {}", pg.pid().unwrap(), pg.dir().display(), redis.pid().unwrap(), redis.dir().display());
    std::io::stdout().flush().unwrap();
    tokio::time::sleep(Duration::from_secs(120)).await;
}

/// A test process killed with SIGKILL runs no destructor: its servers'
/// watchdogs must stop them and remove their directories. And the next
/// process that starts a server reaps a directory whose owner and watchdog
/// are both gone.
#[tokio::test]
async fn servers_die_with_a_killed_test_process() {
    use std::io::BufRead;
    use std::process::{Command, Stdio};
    // Only where both binaries are (the helper would fail otherwise).
    if PrivateRedis::start_or_skip(RedisOptions::default()).await.is_none()
        || PrivatePostgres::start_or_skip(PgOptions { database: None, ..PgOptions::default() }).await.is_none()
    {
        return;
    }

    // A stale directory: its owner (pid 0 never names a test process) is
    // gone, and a process still runs in it, as a server would.
    let base = std::env::temp_dir().join("selfrag-testkit");
    let stale = base.join(format!("stale-{}", std::process::id()));
    std::fs::create_dir_all(&stale).unwrap();
    let stale = stale.canonicalize().unwrap();
    std::fs::write(stale.join("owner"), "0 0\n").unwrap();
    let mut squatter = Command::new("sleep").arg("120").current_dir(&stale).spawn().unwrap();
    std::fs::write(stale.join("server"), format!("{} KILL {}\n", squatter.id(), stale.display())).unwrap();

    let mut helper = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "watchdog_helper_process", "--ignored", "--nocapture", "--test-threads=1"])
        .env(HELPER_VAR, "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(helper.stdout.take().unwrap()).lines();
    let ready = loop {
        let line = lines.next().expect("the helper ended before READY").unwrap();
        // The harness prints the test's name first, on the same line.
        if let Some(at) = line.find("READY ") {
            break line[at + 6..].to_owned();
        }
    };
    let parts: Vec<&str> = ready.split(' ').collect();
    let (pg_pid, pg_dir, redis_pid, redis_dir): (u32, _, u32, _) = (
        parts[0].parse().unwrap(),
        std::path::PathBuf::from(parts[1]),
        parts[2].parse().unwrap(),
        std::path::PathBuf::from(parts[3]),
    );
    assert!(proc_alive(pg_pid) && proc_alive(redis_pid) && pg_dir.exists());

    // The helper reaped the stale directory before its first server.
    assert!(squatter.wait().unwrap().code().is_none(), "the squatter was not killed");
    assert!(!stale.exists(), "stale directory {} not reaped", stale.display());

    helper.kill().unwrap();
    helper.wait().unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    while (proc_alive(pg_pid) || proc_alive(redis_pid) || pg_dir.exists() || redis_dir.exists())
        && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(!proc_alive(pg_pid), "postgres {pg_pid} outlived its killed test process");
    assert!(!proc_alive(redis_pid), "redis {redis_pid} outlived its killed test process");
    assert!(!pg_dir.exists() && !redis_dir.exists(), "server directories left behind");
}
