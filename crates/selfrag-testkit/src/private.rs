//! Private Postgres and Redis servers started from the machine's binaries.
//!
//! Re-exported from [`crate::servers`], where the module docs describe the
//! API; this file holds the process plumbing.
//!
//! # Layout and clean-up
//! Every server lives in its own directory `<tmp>/selfrag-testkit/<kind>-<pid>-<n>`
//! (`<tmp>` is [`std::env::temp_dir`]), which holds its data, its log, the
//! Unix socket (Postgres), a file `owner` naming the test process (pid and
//! start time) and a file `server` naming the running server (pid, the
//! signal that stops it, its working directory).
//!
//! Three layers make sure servers do not outlive their tests:
//! 1. `Drop` stops the server and removes the directory.
//! 2. A watchdog (`sh`) started with each server reads a pipe whose write
//!    end only the test process holds. When the test process ends, however
//!    it ends (even `SIGKILL`, or a static that is never dropped, such as the
//!    process-shared server of [`crate::servers::postgres`]), the kernel
//!    closes the pipe; the watchdog then stops the server named in `server`
//!    (only if that pid's working directory is still the server's, so a
//!    reused pid is never signalled) and removes the directory.
//! 3. The first server a process starts reaps directories whose owner is
//!    gone (a watchdog that was itself killed), with the same script.
//!
//! # Why `setpriv` and not `pg_ctl`
//! `initdb` and `postgres` refuse to run as root. `pg_ctl` would daemonize
//! the postmaster, leaving it a child of PID 1 — which, in the containers and
//! micro-VMs tests run in, often does not reap zombies, and a zombie
//! postmaster's pid makes the next start refuse ("lock file already
//! exists"). `setpriv --reuid postgres ... postgres -D DIR` execs in place, so
//! the postmaster is the test process's own child: it can be killed, reaped
//! and restarted on the same data directory.

use std::fmt;
use std::fs;
use std::io::{Read, Seek, SeekFrom, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

/// Why a private server could not be had.
#[derive(Debug, Clone)]
pub(crate) enum StartError {
    /// The machine cannot run it (no binary, no `postgres` user): a test
    /// should skip.
    Unavailable(String),
    /// It should have started and did not: a test should fail.
    Failed(String),
}

impl StartError {
    pub(crate) fn message(&self) -> &str {
        match self {
            StartError::Unavailable(m) | StartError::Failed(m) => m,
        }
    }
}

impl fmt::Display for StartError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.message())
    }
}

fn failed(msg: impl Into<String>) -> StartError {
    StartError::Failed(msg.into())
}

/// A free TCP port on 127.0.0.1, found by binding port 0.
///
/// The port is free when this returns; another process may take it before
/// the caller binds it (servers started with port 0 retry on that).
///
/// # Errors
/// When no loopback socket can be bound.
pub fn free_port() -> Result<u16, String> {
    let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| format!("bind 127.0.0.1:0: {e}"))?;
    listener.local_addr().map(|a| a.port()).map_err(|e| e.to_string())
}

// --- Options -----------------------------------------------------------------

/// How [`PrivatePostgres::start`] sets up its cluster.
///
/// Build it with struct update syntax:
/// `PgOptions { conf: vec!["ssl = on".into()], ..PgOptions::default() }`.
#[derive(Clone)]
pub struct PgOptions {
    /// The port; `0` (the default) picks a free one (and retries another
    /// if it is taken before the server binds it).
    pub port: u16,
    /// Lines appended to `postgresql.conf`, after the testkit's own
    /// (`fsync = off`, `max_connections`); a later line wins. The listen
    /// address (127.0.0.1), port and socket directory are given on the
    /// command line and cannot be changed here.
    pub conf: Vec<String>,
    /// When set, replaces `pg_hba.conf` entirely.
    pub hba: Option<String>,
    /// `initdb --auth-host`: the method for TCP connections (default
    /// `trust`; e.g. `scram-sha-256` with [`PgOptions::password`]).
    /// Connections over the private Unix socket are always `trust` unless
    /// [`PgOptions::hba`] says otherwise.
    pub auth_method: String,
    /// The password of the superuser `postgres` (`initdb --pwfile`); it is
    /// part of [`PrivatePostgres::url`].
    pub password: Option<String>,
    /// A database created before the first start, which
    /// [`PrivatePostgres::url`] names (default `test`); `None`: the URL
    /// names `postgres`.
    pub database: Option<String>,
    /// Files written into the data directory before the first start, owned
    /// by the server's user with mode 0600 (e.g. `server.key`, `server.crt`,
    /// `root.crt` for TLS; `conf` can then name them relative to the data
    /// directory). Names must be plain file names.
    pub files: Vec<(String, Vec<u8>)>,
    /// How long a start or restart may take to accept connections (default
    /// 30 s; crash recovery is part of a restart).
    pub ready_timeout: Duration,
}

impl Default for PgOptions {
    fn default() -> Self {
        Self {
            port: 0,
            conf: Vec::new(),
            hba: None,
            auth_method: "trust".into(),
            password: None,
            database: Some("test".into()),
            files: Vec::new(),
            ready_timeout: Duration::from_secs(30),
        }
    }
}

impl fmt::Debug for PgOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgOptions")
            .field("port", &self.port)
            .field("conf", &self.conf)
            .field("hba", &self.hba)
            .field("auth_method", &self.auth_method)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("database", &self.database)
            .field("files", &self.files.iter().map(|(n, _)| n).collect::<Vec<_>>())
            .field("ready_timeout", &self.ready_timeout)
            .finish()
    }
}

/// How [`PrivateRedis::start`] runs `redis-server`.
///
/// Build it with struct update syntax:
/// `RedisOptions { args: vec!["--appendonly".into(), "yes".into()], ..RedisOptions::default() }`.
#[derive(Clone)]
pub struct RedisOptions {
    /// The port given as `--port`; `0` (the default) picks a free one (and
    /// retries another if it is taken before the server binds it).
    pub port: u16,
    /// Arguments after the testkit's own (`--bind 127.0.0.1 --port P --dir
    /// DIR --logfile redis.log --save "" --appendonly no`), so they win: e.g.
    /// `--appendonly yes`, `--port 0 --tls-port P --tls-cert-file ...`,
    /// `--cluster-enabled yes --cluster-config-file nodes.conf`. Do not
    /// override `--logfile`, `--dir` or `--daemonize` (readiness is read
    /// from the log). Relative paths are relative to [`PrivateRedis::dir`].
    pub args: Vec<String>,
    /// `--requirepass`; part of [`PrivateRedis::url`].
    pub password: Option<String>,
    /// How long a start or restart may take to be ready (default 20 s).
    pub ready_timeout: Duration,
}

impl Default for RedisOptions {
    fn default() -> Self {
        Self { port: 0, args: Vec::new(), password: None, ready_timeout: Duration::from_secs(20) }
    }
}

impl fmt::Debug for RedisOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisOptions")
            .field("port", &self.port)
            .field("args", &self.args)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("ready_timeout", &self.ready_timeout)
            .finish()
    }
}

// --- Finding binaries and users ------------------------------------------------

/// The environment variable naming the Postgres bin directory.
pub(crate) const PG_BIN_VAR: &str = "SELFRAG_TEST_PG_BIN_DIR";
/// The environment variable naming the `redis-server` binary.
pub(crate) const REDIS_BIN_VAR: &str = "SELFRAG_TEST_REDIS_SERVER";

fn find_on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|dir| dir.join(name)).find(|p| p.is_file())
}

/// `SELFRAG_TEST_PG_BIN_DIR`, else the newest `/usr/lib/postgresql/*/bin`
/// (Debian, Ubuntu), else the directory of `initdb` on `PATH`.
fn pg_bin_dir() -> Result<PathBuf, StartError> {
    if let Some(dir) = std::env::var_os(PG_BIN_VAR).filter(|v| !v.is_empty()) {
        let dir = PathBuf::from(dir);
        return if dir.join("initdb").is_file() && dir.join("postgres").is_file() {
            Ok(dir)
        } else {
            Err(failed(format!("{PG_BIN_VAR}={} holds no initdb and postgres", dir.display())))
        };
    }
    let mut versions: Vec<(u32, PathBuf)> = fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let version = e.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            (bin.join("initdb").is_file() && bin.join("postgres").is_file()).then_some((version, bin))
        })
        .collect();
    versions.sort();
    if let Some((_, bin)) = versions.pop() {
        return Ok(bin);
    }
    match find_on_path("initdb").and_then(|p| p.parent().map(Path::to_path_buf)) {
        Some(dir) if dir.join("postgres").is_file() => Ok(dir),
        _ => Err(StartError::Unavailable(format!(
            "no Postgres binaries (no /usr/lib/postgresql/*/bin, no initdb on PATH, {PG_BIN_VAR} unset)"
        ))),
    }
}

/// `SELFRAG_TEST_REDIS_SERVER`, else `redis-server` on `PATH`.
fn redis_server_bin() -> Result<PathBuf, StartError> {
    if let Some(bin) = std::env::var_os(REDIS_BIN_VAR).filter(|v| !v.is_empty()) {
        let bin = PathBuf::from(bin);
        return if bin.is_file() {
            Ok(bin)
        } else {
            Err(failed(format!("{REDIS_BIN_VAR}={} is not a file", bin.display())))
        };
    }
    find_on_path("redis-server")
        .or_else(|| Some(PathBuf::from("/usr/bin/redis-server")).filter(|p| p.is_file()))
        .ok_or_else(|| StartError::Unavailable(format!("no redis-server on PATH ({REDIS_BIN_VAR} unset)")))
}

fn id_of(args: &[&str]) -> Option<u32> {
    let out = Command::new("id").args(args).stderr(Stdio::null()).output().ok()?;
    if !out.status.success() {
        return None;
    }
    String::from_utf8_lossy(&out.stdout).trim().parse().ok()
}

/// Who the Postgres processes run as: `None` = as this process (not root);
/// `Some(uid, gid)` = as the `postgres` user, through `setpriv`.
#[derive(Debug, Clone, Copy)]
struct RunAs(Option<(u32, u32)>);

fn pg_run_as() -> Result<RunAs, StartError> {
    let euid = id_of(&["-u"]).ok_or_else(|| failed("`id -u` failed"))?;
    if euid != 0 {
        return Ok(RunAs(None));
    }
    let (Some(uid), Some(gid)) = (id_of(&["-u", "postgres"]), id_of(&["-g", "postgres"])) else {
        return Err(StartError::Unavailable(
            "running as root, and there is no `postgres` user to run initdb/postgres as (they refuse root)".into(),
        ));
    };
    if find_on_path("setpriv").is_none() {
        return Err(StartError::Unavailable("running as root, and there is no `setpriv` (util-linux)".into()));
    }
    Ok(RunAs(Some((uid, gid))))
}

impl RunAs {
    fn command(self, program: &Path) -> Command {
        match self.0 {
            None => Command::new(program),
            Some((uid, gid)) => {
                let mut c = Command::new("setpriv");
                c.arg(format!("--reuid={uid}"))
                    .arg(format!("--regid={gid}"))
                    .arg("--init-groups")
                    .arg("--")
                    .arg(program);
                c
            }
        }
    }

    fn chown(self, path: &Path) -> Result<(), StartError> {
        if let Some((uid, gid)) = self.0 {
            std::os::unix::fs::chown(path, Some(uid), Some(gid))
                .map_err(|e| failed(format!("chown {}: {e}", path.display())))?;
        }
        Ok(())
    }
}

// --- Server directories, the watchdog, reaping -------------------------------

/// The script the watchdog runs: wait for EOF on stdin, then stop the server
/// named in `$1/server` and remove `$1`. Also used to reap (stdin at EOF).
const WATCHDOG: &str = r#"
trap '' INT HUP TERM QUIT PIPE
cat >/dev/null 2>&1
root=$1
alive() { [ -r "/proc/$1/stat" ] && [ "$(sed 's/.*) //' "/proc/$1/stat" | cut -c1)" != Z ]; }
if [ -r "$root/server" ] && read -r pid sig cwd < "$root/server" && [ -n "$pid" ]; then
  if [ "$(readlink "/proc/$pid/cwd" 2>/dev/null)" = "$cwd" ]; then
    kids=$(ps -o pid= --ppid "$pid" 2>/dev/null)
    kill -s "$sig" "$pid" 2>/dev/null
    i=0
    while alive "$pid" && [ $i -lt 50 ]; do sleep 0.1; i=$((i+1)); done
    alive "$pid" && kill -s KILL "$pid" $kids 2>/dev/null
  fi
fi
rm -rf "$root"
"#;

fn base_dir() -> PathBuf {
    std::env::temp_dir().join("selfrag-testkit")
}

/// This process's start time (clock ticks since boot, field 22 of
/// `/proc/PID/stat`): with the pid, it names a process uniquely.
fn start_time(pid: u32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    // After the command: state is field 3, so start time is the 20th.
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// The state letter and parent pid of `pid`, from `/proc/PID/stat`.
fn proc_state(pid: u32) -> Option<(char, u32)> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let mut rest = stat[stat.rfind(')')? + 2..].split_whitespace();
    let state = rest.next()?.chars().next()?;
    let ppid = rest.next()?.parse().ok()?;
    Some((state, ppid))
}

/// Whether `pid` exists and is not a zombie.
fn alive(pid: u32) -> bool {
    matches!(proc_state(pid), Some((s, _)) if s != 'Z' && s != 'X')
}

/// The live children of `pid`.
fn children_of(pid: u32) -> Vec<u32> {
    fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&p| matches!(proc_state(p), Some((s, parent)) if parent == pid && s != 'Z' && s != 'X'))
        .collect()
}

/// Sends `signal` (a name such as `KILL`) to `pids`, through `kill(1)`
/// (the crate forbids the `unsafe` a direct `kill(2)` would need).
fn signal(signal: &str, pids: &[u32]) -> Result<(), String> {
    if pids.is_empty() {
        return Ok(());
    }
    let list: Vec<String> = pids.iter().map(u32::to_string).collect();
    let script = format!("kill -s {signal} {}", list.join(" "));
    let out = Command::new("sh").arg("-c").arg(&script).stdin(Stdio::null()).output().map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("`{script}`: {}", String::from_utf8_lossy(&out.stderr).trim()))
    }
}

/// Removes server directories whose test process is gone, once per process.
fn reap_stale() {
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| {
        let Ok(entries) = fs::read_dir(base_dir()) else { return };
        for entry in entries.flatten() {
            let path = entry.path();
            let owner = fs::read_to_string(path.join("owner")).ok();
            let gone = match owner.as_deref().map(str::split_whitespace).map(|mut w| (w.next(), w.next())) {
                Some((Some(pid), Some(start))) => match (pid.parse::<u32>(), start.parse::<u64>()) {
                    (Ok(pid), Ok(start)) => start_time(pid) != Some(start),
                    _ => true,
                },
                // No owner file: a start that died between mkdir and
                // writing it; old enough to be no one's.
                _ => entry
                    .metadata()
                    .and_then(|m| m.modified())
                    .ok()
                    .and_then(|t| t.elapsed().ok())
                    .is_some_and(|age| age > Duration::from_secs(600)),
            };
            if gone {
                let _ = Command::new("sh")
                    .arg("-c")
                    .arg(WATCHDOG)
                    .arg("selfrag-reaper")
                    .arg(&path)
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status();
            }
        }
    });
}

/// A server's private directory, with its watchdog.
struct ServerDir {
    path: PathBuf,
    watchdog: Option<(Child, ChildStdin)>,
}

impl ServerDir {
    fn create(kind: &str, run_as: RunAs) -> Result<Self, StartError> {
        static SEQ: AtomicU64 = AtomicU64::new(0);
        reap_stale();
        let base = base_dir();
        fs::create_dir_all(&base).map_err(|e| failed(format!("create {}: {e}", base.display())))?;
        let pid = std::process::id();
        let n = SEQ.fetch_add(1, Ordering::Relaxed);
        let path = base.join(format!("{kind}-{pid}-{n}"));
        // A leftover of an earlier process with the same pid is stale.
        let _ = fs::remove_dir_all(&path);
        fs::create_dir(&path).map_err(|e| failed(format!("create {}: {e}", path.display())))?;
        let path = path.canonicalize().map_err(|e| failed(format!("{}: {e}", path.display())))?;
        let mut dir = Self { path, watchdog: None };
        let start = start_time(pid).unwrap_or(0);
        fs::write(dir.path.join("owner"), format!("{pid} {start}\n")).map_err(|e| failed(e.to_string()))?;
        run_as.chown(&dir.path)?;
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(WATCHDOG)
            .arg("selfrag-watchdog")
            .arg(&dir.path)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            // Its own process group: a Ctrl-C at the terminal must not
            // kill the watchdog before it has cleaned up.
            .process_group(0)
            .spawn()
            .map_err(|e| failed(format!("start the watchdog: {e}")))?;
        let stdin = child.stdin.take().expect("piped stdin");
        dir.watchdog = Some((child, stdin));
        Ok(dir)
    }

    fn join(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    /// Records the running server for the watchdog (atomically: the
    /// watchdog may read it at any time).
    fn record_server(&self, pid: u32, stop_signal: &str, cwd: &Path) -> Result<(), StartError> {
        let tmp = self.join("server.tmp");
        fs::write(&tmp, format!("{pid} {stop_signal} {}\n", cwd.display())).map_err(|e| failed(e.to_string()))?;
        fs::rename(&tmp, self.join("server")).map_err(|e| failed(e.to_string()))
    }
}

impl Drop for ServerDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.path);
        if let Some((mut child, stdin)) = self.watchdog.take() {
            // EOF: the watchdog finds nothing left to do and exits; wait for
            // it so it does not linger as a zombie.
            drop(stdin);
            let _ = child.wait();
        }
    }
}

fn open_log(path: &Path) -> Result<fs::File, StartError> {
    fs::OpenOptions::new().create(true).append(true).open(path).map_err(|e| failed(format!("{}: {e}", path.display())))
}

/// The last `lines` lines of a log file, from byte `from` on.
fn tail(path: &Path, from: u64, lines: usize) -> String {
    let mut text = String::new();
    if let Ok(mut f) = fs::File::open(path) {
        let _ = f.seek(SeekFrom::Start(from));
        let mut bytes = Vec::new();
        let _ = f.read_to_end(&mut bytes);
        text = String::from_utf8_lossy(&bytes).into_owned();
    }
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

fn file_len(path: &Path) -> u64 {
    fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

/// Waits for `child` to exit within `within`; `None` if it is still running.
fn wait_exit(child: &mut Child, within: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + within;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            _ => return None,
        }
    }
}

/// Waits until none of `pids` is alive (bounded).
fn wait_gone(pids: &[u32], within: Duration) -> bool {
    let deadline = Instant::now() + within;
    while pids.iter().any(|&p| alive(p)) {
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    true
}

/// SIGKILLs `child` and all its children at once: the parent is stopped
/// first so that it cannot fork while its children are listed.
fn kill_tree(child: &mut Child) -> Result<(), String> {
    let pid = child.id();
    if child.try_wait().map_err(|e| e.to_string())?.is_some() {
        return Ok(());
    }
    let _ = signal("STOP", &[pid]);
    let deadline = Instant::now() + Duration::from_secs(2);
    while !matches!(proc_state(pid), Some(('T' | 't' | 'Z' | 'X', _)) | None) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(1));
    }
    let kids = children_of(pid);
    let mut all = kids.clone();
    all.push(pid);
    // Ignore "no such process": a child may have exited meanwhile.
    let _ = signal("KILL", &all);
    child.wait().map_err(|e| e.to_string())?;
    if !wait_gone(&kids, Duration::from_secs(5)) {
        return Err(format!("children of {pid} still alive after SIGKILL: {kids:?}"));
    }
    Ok(())
}

fn percent_encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock leaves the state consistent enough
    // (a child handle), so poisoning is not propagated.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    match tokio::task::spawn_blocking(f).await {
        Ok(v) => v,
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    }
}

// --- Postgres --------------------------------------------------------------------

/// A Postgres cluster of the test's own, from `initdb` into a temporary
/// directory: it may be killed, stopped and restarted (see [`crate::servers`]).
///
/// Dropping it stops the server (immediate shutdown) and removes its
/// directory.
#[derive(Debug, Clone)]
pub struct PrivatePostgres {
    inner: Arc<PgInner>,
}

struct PgInner {
    dir: ServerDir,
    data: PathBuf,
    log: PathBuf,
    bin: PathBuf,
    run_as: RunAs,
    port: u16,
    opts: PgOptions,
    child: Mutex<Option<Child>>,
}

impl fmt::Debug for PgInner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PrivatePostgres")
            .field("dir", &self.dir.path)
            .field("port", &self.port)
            .field("pid", &lock(&self.child).as_ref().map(Child::id))
            .finish_non_exhaustive()
    }
}

impl PrivatePostgres {
    /// Creates a cluster (`initdb`), creates [`PgOptions::database`] and
    /// starts the server, returning once it accepts connections.
    ///
    /// # Errors
    /// When the machine has no Postgres binaries, or runs as root without a
    /// `postgres` user (see [`PrivatePostgres::start_or_skip`] to skip
    /// then), or when initdb or the start fails (the message holds the
    /// log's tail).
    pub async fn start(opts: PgOptions) -> Result<Self, String> {
        blocking(move || PgInner::start(opts))
            .await
            .map(|inner| Self { inner: Arc::new(inner) })
            .map_err(|e| e.to_string())
    }

    /// [`PrivatePostgres::start`], but a machine that cannot run Postgres
    /// gives the loud skip of [`crate::servers::skip`] and `None`.
    ///
    /// # Panics
    /// When the start fails on a machine that has the binaries, or when it
    /// cannot run them and `SELFRAG_TEST_REQUIRE` lists `postgres`.
    pub async fn start_or_skip(opts: PgOptions) -> Option<Self> {
        match blocking(move || PgInner::start(opts)).await {
            Ok(inner) => Some(Self { inner: Arc::new(inner) }),
            Err(StartError::Unavailable(why)) => crate::servers::skip("postgres", &format!("no private server: {why}")),
            Err(StartError::Failed(why)) => panic!("private Postgres failed to start: {why}"),
        }
    }

    pub(crate) fn start_blocking(opts: PgOptions) -> Result<Self, StartError> {
        PgInner::start(opts).map(|inner| Self { inner: Arc::new(inner) })
    }

    /// `postgres://postgres[:password]@127.0.0.1:PORT/DATABASE` (the
    /// database of [`PgOptions::database`], else `postgres`).
    pub fn url(&self) -> String {
        self.url_for(self.inner.opts.database.as_deref().unwrap_or("postgres"))
    }

    /// [`PrivatePostgres::url`] naming another database.
    pub fn url_for(&self, database: &str) -> String {
        let auth = match &self.inner.opts.password {
            Some(p) => format!("postgres:{}", percent_encode(p)),
            None => "postgres".into(),
        };
        format!("postgres://{auth}@127.0.0.1:{}/{}", self.inner.port, percent_encode(database))
    }

    /// The TCP port (on 127.0.0.1); the same across restarts.
    pub fn port(&self) -> u16 {
        self.inner.port
    }

    /// The server's address.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.inner.port))
    }

    /// The private directory (holds `data/`, the log and the Unix socket,
    /// which is also the socket directory: `host=<dir>` in libpq terms).
    pub fn dir(&self) -> &Path {
        &self.inner.dir.path
    }

    /// The data directory.
    pub fn data_dir(&self) -> &Path {
        &self.inner.data
    }

    /// The server log (all starts append to it).
    pub fn log_path(&self) -> &Path {
        &self.inner.log
    }

    /// The last `lines` lines of the server log.
    pub fn log_tail(&self, lines: usize) -> String {
        tail(&self.inner.log, 0, lines)
    }

    /// The postmaster's pid while it runs.
    pub fn pid(&self) -> Option<u32> {
        let mut child = lock(&self.inner.child);
        match child.as_mut().map(Child::try_wait) {
            Some(Ok(None)) => child.as_ref().map(Child::id),
            _ => None,
        }
    }

    /// Whether the postmaster is running (it may not accept connections yet).
    pub fn is_running(&self) -> bool {
        self.pid().is_some()
    }

    /// Crashes the server: SIGKILL to the postmaster and all its children at
    /// once (no shutdown checkpoint, shared memory abandoned), returning when
    /// they are gone. Committed data survives (the WAL reached the OS); the
    /// next [`PrivatePostgres::restart`] runs crash recovery. A no-op when
    /// the server is not running.
    ///
    /// # Errors
    /// When the processes cannot be signalled or do not die.
    pub async fn kill(&self) -> Result<(), String> {
        let inner = self.inner.clone();
        blocking(move || inner.kill()).await
    }

    /// Stops the server cleanly (fast shutdown: sessions are ended, a
    /// checkpoint is written), waiting up to 30 s. A no-op when it is not
    /// running.
    ///
    /// # Errors
    /// When it does not stop in time (it is then killed).
    pub async fn stop(&self) -> Result<(), String> {
        let inner = self.inner.clone();
        blocking(move || inner.stop("INT", Duration::from_secs(30))).await
    }

    /// Starts the server again on the same port and data directory — after
    /// [`PrivatePostgres::kill`] or [`PrivatePostgres::stop`]; stops it
    /// cleanly first if it runs — and returns once it accepts connections
    /// (after crash recovery).
    ///
    /// # Errors
    /// When it does not start within [`PgOptions::ready_timeout`] (the
    /// message holds the log's tail).
    pub async fn restart(&self) -> Result<(), String> {
        let inner = self.inner.clone();
        blocking(move || {
            inner.stop("INT", Duration::from_secs(30))?;
            inner.launch().map_err(|e| e.to_string())
        })
        .await
    }
}

impl PgInner {
    fn start(opts: PgOptions) -> Result<Self, StartError> {
        let bin = pg_bin_dir()?;
        let run_as = pg_run_as()?;
        for (name, _) in &opts.files {
            if name.is_empty() || name.contains('/') || name == "." || name == ".." {
                return Err(failed(format!("PgOptions::files: `{name}` is not a plain file name")));
            }
        }
        let dir = ServerDir::create("pg", run_as)?;
        let data = dir.join("data");
        let log = dir.join("postgres.log");
        let port = if opts.port == 0 { free_port().map_err(failed)? } else { opts.port };
        let inner = Self { data, log, bin, run_as, port, dir, opts, child: Mutex::new(None) };
        inner.init()?;
        let mut inner = inner;
        // A port picked free may be taken by another process before the
        // server binds it: pick another (a given port is never changed).
        let mut attempts = 0;
        loop {
            match inner.launch() {
                Ok(()) => return Ok(inner),
                Err(e) if inner.opts.port == 0 && attempts < 3 && e.message().contains("could not bind") => {
                    attempts += 1;
                    inner.port = free_port().map_err(failed)?;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// initdb, configuration, the database.
    fn init(&self) -> Result<(), StartError> {
        let mut initdb = self.run_as.command(&self.bin.join("initdb"));
        initdb
            .arg("-D")
            .arg(&self.data)
            .args(["-U", "postgres", "-E", "UTF8", "--no-locale", "--no-sync", "--auth-local=trust"])
            .arg(format!("--auth-host={}", self.opts.auth_method));
        let pwfile = self.dir.join("pwfile");
        if let Some(pw) = &self.opts.password {
            fs::write(&pwfile, format!("{pw}\n")).map_err(|e| failed(e.to_string()))?;
            self.run_as.chown(&pwfile)?;
            initdb.arg(format!("--pwfile={}", pwfile.display()));
        }
        let out = initdb.stdin(Stdio::null()).output().map_err(|e| failed(format!("run initdb: {e}")))?;
        let _ = fs::remove_file(&pwfile);
        if !out.status.success() {
            return Err(failed(format!(
                "initdb failed ({}): {}{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )));
        }
        // Appending and rewriting keep the files' owner (the server user).
        let mut conf = fs::OpenOptions::new()
            .append(true)
            .open(self.data.join("postgresql.conf"))
            .map_err(|e| failed(e.to_string()))?;
        // fsync = off: a process crash loses nothing that reached the OS
        // (only a machine crash would), and tests run much faster.
        let mut text = String::from("\n# selfrag-testkit\nfsync = off\nmax_connections = 300\n");
        for line in &self.opts.conf {
            text.push_str(line);
            text.push('\n');
        }
        conf.write_all(text.as_bytes()).map_err(|e| failed(e.to_string()))?;
        if let Some(hba) = &self.opts.hba {
            fs::write(self.data.join("pg_hba.conf"), hba).map_err(|e| failed(e.to_string()))?;
        }
        for (name, bytes) in &self.opts.files {
            let path = self.data.join(name);
            fs::write(&path, bytes).map_err(|e| failed(format!("{}: {e}", path.display())))?;
            use std::os::unix::fs::PermissionsExt as _;
            fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).map_err(|e| failed(e.to_string()))?;
            self.run_as.chown(&path)?;
        }
        if let Some(db) = &self.opts.database {
            if db != "postgres" {
                // Single-user mode needs no connection, so it works whatever
                // pg_hba.conf and the auth method say.
                let mut single = self.run_as.command(&self.bin.join("postgres"));
                let mut child = single
                    .args(["--single", "-F", "-D"])
                    .arg(&self.data)
                    .arg("postgres")
                    .stdin(Stdio::piped())
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped())
                    .spawn()
                    .map_err(|e| failed(format!("run postgres --single: {e}")))?;
                let ident = db.replace('"', "\"\"");
                let mut stdin = child.stdin.take().expect("piped stdin");
                let _ = stdin.write_all(format!("CREATE DATABASE \"{ident}\"\n").as_bytes());
                drop(stdin);
                let out = child.wait_with_output().map_err(|e| failed(e.to_string()))?;
                let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
                if !out.status.success() || text.contains("ERROR") {
                    return Err(failed(format!("CREATE DATABASE {db} failed: {text}")));
                }
            }
        }
        Ok(())
    }

    /// Starts the postmaster and waits until it accepts connections.
    fn launch(&self) -> Result<(), StartError> {
        let mut slot = lock(&self.child);
        if let Some(child) = slot.as_mut() {
            if matches!(child.try_wait(), Ok(None)) {
                return Ok(());
            }
        }
        let from = file_len(&self.log);
        let log = open_log(&self.log)?;
        let log2 = log.try_clone().map_err(|e| failed(e.to_string()))?;
        let mut cmd = self.run_as.command(&self.bin.join("postgres"));
        cmd.arg("-D")
            .arg(&self.data)
            .arg("-p")
            .arg(self.port.to_string())
            .arg("-k")
            .arg(&self.dir.path)
            .args(["-c", "listen_addresses=127.0.0.1"])
            .current_dir(&self.data)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2);
        let child = cmd.spawn().map_err(|e| failed(format!("start postgres: {e}")))?;
        // The postmaster chdirs into its data directory: the watchdog checks
        // that before signalling a pid.
        let cwd = self.data.canonicalize().unwrap_or_else(|_| self.data.clone());
        self.dir.record_server(child.id(), "QUIT", &cwd)?;
        *slot = Some(child);
        let child = slot.as_mut().expect("just set");
        let deadline = Instant::now() + self.opts.ready_timeout;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Err(failed(format!(
                    "postgres exited ({status}) before accepting connections on port {}; log:\n{}",
                    self.port,
                    tail(&self.log, from, 30)
                )));
            }
            // pg_isready: 0 = accepting, 1 = rejecting (starting up or in
            // recovery), 2 = no answer.
            let out = Command::new(self.bin.join("pg_isready"))
                .args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "-U", "postgres", "-d", "postgres", "-t", "2"])
                .stdin(Stdio::null())
                .output();
            let last = match out {
                Ok(o) if o.status.success() => return Ok(()),
                Ok(o) => String::from_utf8_lossy(&o.stdout).trim().to_owned(),
                Err(e) => format!("pg_isready: {e}"),
            };
            if Instant::now() > deadline {
                let _ = kill_tree(child);
                return Err(failed(format!(
                    "postgres on port {} not ready within {:?} ({last}); log:\n{}",
                    self.port,
                    self.opts.ready_timeout,
                    tail(&self.log, from, 30)
                )));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn kill(&self) -> Result<(), String> {
        let mut slot = lock(&self.child);
        match slot.as_mut() {
            Some(child) => kill_tree(child),
            None => Ok(()),
        }
    }

    /// Sends `sig` (INT = fast, QUIT = immediate shutdown) and waits; kills
    /// on timeout.
    fn stop(&self, sig: &str, within: Duration) -> Result<(), String> {
        let mut slot = lock(&self.child);
        let Some(child) = slot.as_mut() else { return Ok(()) };
        if matches!(child.try_wait(), Ok(Some(_))) {
            return Ok(());
        }
        let kids = children_of(child.id());
        signal(sig, &[child.id()])?;
        if wait_exit(child, within).is_none() {
            let _ = kill_tree(child);
            return Err(format!("postgres did not stop within {within:?} after SIG{sig}: killed it"));
        }
        // The postmaster waits for its children before exiting; make sure
        // before a restart reuses the data directory.
        wait_gone(&kids, Duration::from_secs(5));
        Ok(())
    }
}

impl Drop for PgInner {
    fn drop(&mut self) {
        // Immediate shutdown: the data is thrown away, no checkpoint needed.
        let _ = self.stop("QUIT", Duration::from_secs(10));
        self.release_crashed_shmem();
    }
}

impl PgInner {
    /// After a crash that no restart followed, the System V segment the
    /// postmaster made outlives it (a restart would have reclaimed it), and
    /// such segments would pile up over runs. `postmaster.pid` is removed
    /// by every orderly exit, so if it is still there, the shmid on its
    /// seventh line ("key shmid") is ours to remove.
    fn release_crashed_shmem(&self) {
        let Ok(lock_file) = fs::read_to_string(self.data.join("postmaster.pid")) else { return };
        let Some(shmid) = lock_file.lines().nth(6).and_then(|l| l.split_whitespace().nth(1)) else { return };
        if shmid.parse::<u64>().is_ok() {
            let _ = Command::new("ipcrm")
                .args(["-m", shmid])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}

// --- Redis -------------------------------------------------------------------------

/// A `redis-server` of the test's own, in a temporary directory: it may be
/// killed, stopped and restarted (see [`crate::servers`]).
///
/// Dropping it kills the server and removes its directory.
#[derive(Debug, Clone)]
pub struct PrivateRedis {
    inner: Arc<RedisInner>,
}

struct RedisInner {
    dir: ServerDir,
    log: PathBuf,
    bin: PathBuf,
    port: u16,
    opts: RedisOptions,
    child: Mutex<Option<Child>>,
}

impl fmt::Debug for RedisInner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PrivateRedis")
            .field("dir", &self.dir.path)
            .field("port", &self.port)
            .field("pid", &lock(&self.child).as_ref().map(Child::id))
            .finish_non_exhaustive()
    }
}

impl PrivateRedis {
    /// Starts `redis-server` and returns once it is ready (its log says
    /// "Ready to accept connections" and, unless the arguments moved it,
    /// the port accepts TCP connections).
    ///
    /// # Errors
    /// When there is no `redis-server` (see [`PrivateRedis::start_or_skip`]
    /// to skip then), or when it does not start (the message holds the
    /// log's tail).
    pub async fn start(opts: RedisOptions) -> Result<Self, String> {
        blocking(move || RedisInner::start(opts))
            .await
            .map(|inner| Self { inner: Arc::new(inner) })
            .map_err(|e| e.to_string())
    }

    /// [`PrivateRedis::start`], but a machine without `redis-server` gives
    /// the loud skip of [`crate::servers::skip`] and `None`.
    ///
    /// # Panics
    /// When the start fails on a machine that has the binary, or when there
    /// is none and `SELFRAG_TEST_REQUIRE` lists `redis`.
    pub async fn start_or_skip(opts: RedisOptions) -> Option<Self> {
        match blocking(move || RedisInner::start(opts)).await {
            Ok(inner) => Some(Self { inner: Arc::new(inner) }),
            Err(StartError::Unavailable(why)) => crate::servers::skip("redis", &format!("no private server: {why}")),
            Err(StartError::Failed(why)) => panic!("private Redis failed to start: {why}"),
        }
    }

    pub(crate) fn start_blocking(opts: RedisOptions) -> Result<Self, StartError> {
        RedisInner::start(opts).map(|inner| Self { inner: Arc::new(inner) })
    }

    /// `redis://[:password@]127.0.0.1:PORT` (PORT = [`PrivateRedis::port`];
    /// when [`RedisOptions::args`] move the port, e.g. TLS only, build the
    /// URL from your own port).
    pub fn url(&self) -> String {
        match &self.inner.opts.password {
            Some(p) => format!("redis://:{}@127.0.0.1:{}", percent_encode(p), self.inner.port),
            None => format!("redis://127.0.0.1:{}", self.inner.port),
        }
    }

    /// The `--port` the testkit passed (on 127.0.0.1), the same across
    /// restarts. [`RedisOptions::args`] may override it (`--port 0`).
    pub fn port(&self) -> u16 {
        self.inner.port
    }

    /// The server's address.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.inner.port))
    }

    /// The private directory: the server's working directory and `--dir`
    /// (dump, AOF, `nodes.conf`).
    pub fn dir(&self) -> &Path {
        &self.inner.dir.path
    }

    /// The server log (all starts append to it).
    pub fn log_path(&self) -> &Path {
        &self.inner.log
    }

    /// The last `lines` lines of the server log.
    pub fn log_tail(&self, lines: usize) -> String {
        tail(&self.inner.log, 0, lines)
    }

    /// The server's pid while it runs.
    pub fn pid(&self) -> Option<u32> {
        let mut child = lock(&self.inner.child);
        match child.as_mut().map(Child::try_wait) {
            Some(Ok(None)) => child.as_ref().map(Child::id),
            _ => None,
        }
    }

    /// Whether the server is running.
    pub fn is_running(&self) -> bool {
        self.pid().is_some()
    }

    /// Crashes the server (SIGKILL), returning when it is gone. What was not
    /// persisted (by default nothing is: no RDB, no AOF) is lost. A no-op
    /// when it is not running.
    ///
    /// # Errors
    /// When the process cannot be killed.
    pub async fn kill(&self) -> Result<(), String> {
        let inner = self.inner.clone();
        blocking(move || inner.kill()).await
    }

    /// Stops the server cleanly (SIGTERM: it saves if configured to),
    /// waiting up to 10 s. A no-op when it is not running.
    ///
    /// # Errors
    /// When it does not stop in time (it is then killed).
    pub async fn stop(&self) -> Result<(), String> {
        let inner = self.inner.clone();
        blocking(move || inner.stop()).await
    }

    /// Starts the server again on the same port and directory (after
    /// [`PrivateRedis::kill`] or [`PrivateRedis::stop`]; stops it cleanly
    /// first if it runs), returning once it is ready.
    ///
    /// # Errors
    /// When it is not ready within [`RedisOptions::ready_timeout`].
    pub async fn restart(&self) -> Result<(), String> {
        let inner = self.inner.clone();
        blocking(move || {
            inner.stop()?;
            inner.launch().map_err(|e| e.to_string())
        })
        .await
    }
}

impl RedisInner {
    fn start(opts: RedisOptions) -> Result<Self, StartError> {
        let bin = redis_server_bin()?;
        let dir = ServerDir::create("redis", RunAs(None))?;
        let log = dir.join("redis.log");
        let port = if opts.port == 0 { free_port().map_err(failed)? } else { opts.port };
        let mut inner = Self { dir, log, bin, port, opts, child: Mutex::new(None) };
        let mut attempts = 0;
        loop {
            match inner.launch() {
                Ok(()) => return Ok(inner),
                Err(e) if inner.opts.port == 0 && attempts < 3 && e.message().contains("Address already in use") => {
                    attempts += 1;
                    inner.port = free_port().map_err(failed)?;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Whether the caller's arguments move the plain TCP port (e.g. `--port
    /// 0` for TLS only): then readiness is the log line alone.
    fn port_overridden(&self) -> bool {
        self.opts.args.iter().any(|a| a == "--port")
    }

    fn launch(&self) -> Result<(), StartError> {
        let mut slot = lock(&self.child);
        if let Some(child) = slot.as_mut() {
            if matches!(child.try_wait(), Ok(None)) {
                return Ok(());
            }
        }
        let from = file_len(&self.log);
        let mut cmd = Command::new(&self.bin);
        cmd.args(["--bind", "127.0.0.1", "--port", &self.port.to_string(), "--dir"])
            .arg(&self.dir.path)
            .arg("--logfile")
            .arg(&self.log)
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"]);
        if let Some(p) = &self.opts.password {
            cmd.arg("--requirepass").arg(p);
        }
        cmd.args(&self.opts.args).current_dir(&self.dir.path).stdin(Stdio::null()).stdout(Stdio::null()).stderr(
            // Argument errors are printed before the log file is opened.
            open_log(&self.log)?,
        );
        let child = cmd.spawn().map_err(|e| failed(format!("start redis-server: {e}")))?;
        self.dir.record_server(child.id(), "KILL", &self.dir.path)?;
        *slot = Some(child);
        let child = slot.as_mut().expect("just set");
        let deadline = Instant::now() + self.opts.ready_timeout;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Err(failed(format!(
                    "redis-server exited ({status}) before it was ready on port {}; log:\n{}",
                    self.port,
                    tail(&self.log, from, 30)
                )));
            }
            let ready = tail(&self.log, from, usize::MAX).contains("Ready to accept connections")
                && (self.port_overridden()
                    || TcpStream::connect_timeout(
                        &SocketAddr::from(([127, 0, 0, 1], self.port)),
                        Duration::from_secs(1),
                    )
                    .is_ok());
            if ready {
                return Ok(());
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(failed(format!(
                    "redis-server on port {} not ready within {:?}; log:\n{}",
                    self.port,
                    self.opts.ready_timeout,
                    tail(&self.log, from, 30)
                )));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn kill(&self) -> Result<(), String> {
        let mut slot = lock(&self.child);
        let Some(child) = slot.as_mut() else { return Ok(()) };
        if matches!(child.try_wait(), Ok(Some(_))) {
            return Ok(());
        }
        child.kill().map_err(|e| format!("kill redis-server: {e}"))?;
        child.wait().map_err(|e| e.to_string())?;
        Ok(())
    }

    fn stop(&self) -> Result<(), String> {
        let mut slot = lock(&self.child);
        let Some(child) = slot.as_mut() else { return Ok(()) };
        if matches!(child.try_wait(), Ok(Some(_))) {
            return Ok(());
        }
        signal("TERM", &[child.id()])?;
        if wait_exit(child, Duration::from_secs(10)).is_none() {
            let _ = child.kill();
            let _ = child.wait();
            return Err("redis-server did not stop within 10 s after SIGTERM: killed it".into());
        }
        Ok(())
    }
}

impl Drop for RedisInner {
    fn drop(&mut self) {
        let _ = self.kill();
    }
}

#[cfg(test)]
pub(crate) mod tests_support {
    /// Whether a `redis-server` can be found.
    pub(crate) fn redis_available() -> bool {
        super::redis_server_bin().is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_and_names_are_percent_encoded() {
        assert_eq!(percent_encode("abc-._~XYZ09"), "abc-._~XYZ09");
        assert_eq!(percent_encode("s3cret/:@ x"), "s3cret%2F%3A%40%20x");
        assert_eq!(percent_encode("é"), "%C3%A9");
    }

    #[test]
    fn free_ports_are_bindable() {
        let port = free_port().unwrap();
        assert_ne!(port, 0);
        TcpListener::bind(("127.0.0.1", port)).expect("the port is free");
    }

    #[test]
    fn proc_stat_parsing_reads_this_process() {
        let me = std::process::id();
        let (state, ppid) = proc_state(me).expect("own stat");
        assert!(matches!(state, 'R' | 'S'), "{state}");
        assert_ne!(ppid, 0);
        assert!(alive(me));
        assert!(start_time(me).is_some_and(|t| t > 0));
        assert!(!alive(u32::MAX - 1), "a pid that cannot exist");
    }

    #[test]
    fn kill_tree_kills_a_process_and_its_children() {
        // sh with two sleeping children, like a postmaster with backends.
        let mut parent =
            Command::new("sh").arg("-c").arg("sleep 60 & sleep 60 & wait").stdin(Stdio::null()).spawn().unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        let kids = loop {
            let kids = children_of(parent.id());
            if kids.len() == 2 || Instant::now() > deadline {
                break kids;
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        assert_eq!(kids.len(), 2, "{kids:?}");
        kill_tree(&mut parent).unwrap();
        assert!(!alive(parent.id()));
        assert!(kids.iter().all(|&k| !alive(k)), "children survived: {kids:?}");
    }

    #[test]
    fn log_tail_reads_from_an_offset() {
        let dir = std::env::temp_dir().join(format!("selfrag-testkit-tail-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let log = dir.join("log");
        fs::write(&log, "old 1\nold 2\n").unwrap();
        let from = file_len(&log);
        fs::OpenOptions::new().append(true).open(&log).unwrap().write_all(b"new 1\nnew 2\nnew 3\n").unwrap();
        assert_eq!(tail(&log, from, 2), "new 2\nnew 3");
        assert_eq!(tail(&log, from, 10), "new 1\nnew 2\nnew 3");
        assert_eq!(tail(&log, 0, 1), "new 3");
        assert_eq!(tail(&dir.join("missing"), 0, 5), "");
        fs::remove_dir_all(&dir).unwrap();
    }
}
