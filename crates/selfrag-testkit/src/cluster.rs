//! A private Redis Cluster: `masters × (1 + replicas)` [`PrivateRedis`]
//! nodes started with `--cluster-enabled yes` on free ports and joined with
//! `redis-cli --cluster create`, which a test may crash node by node.
//!
//! ```no_run
//! # async fn demo() -> Result<(), String> {
//! use selfrag_testkit::cluster::PrivateRedisCluster;
//! let Some(cluster) = PrivateRedisCluster::start_or_skip(3, 1).await else { return Ok(()) };
//! let seeds = cluster.seed_list(); // "redis://127.0.0.1:P1,redis://127.0.0.1:P2,..."
//! let victim = cluster.master_of("selfrag:{u:42}:sessions").await?;
//! cluster.kill(victim).await?; // its replica takes over after the node timeout
//! cluster.wait_ok(std::time::Duration::from_secs(10)).await?;
//! cluster.restart(victim).await?; // rejoins as a replica
//! # Ok(()) }
//! ```
//!
//! [`PrivateRedisCluster::shared`] is one 3-master cluster per test process
//! for tests that do not crash nodes (conformance suites with fresh key
//! prefixes). Nodes are [`PrivateRedis`] servers, so the watchdog removes
//! them when the test process ends, however it ends.
//!
//! Each node gets `--cluster-port` (its bus port, otherwise `port + 10000`,
//! which may be taken or above 65535) from [`free_port`], and
//! `--cluster-replica-validity-factor 0`, so a replica always takes over a
//! failed master, however long ago it last heard from it, and
//! `--repl-diskless-sync-delay 0`, so a restarted node syncs from its new
//! master at once. `redis-cli` is
//! `SELFRAG_TEST_REDIS_CLI`, else the one next to `SELFRAG_TEST_REDIS_SERVER`,
//! else on `PATH`.

use std::fmt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::private::{free_port, PrivateRedis, RedisOptions, StartError, REDIS_BIN_VAR};

/// The hash slots of a Redis Cluster.
pub const SLOTS: u16 = 16384;

/// The environment variable naming the `redis-cli` binary.
pub const REDIS_CLI_VAR: &str = "SELFRAG_TEST_REDIS_CLI";

/// How [`PrivateRedisCluster::start_with`] builds its cluster.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    /// Masters (at least 3, as `redis-cli --cluster create` demands).
    pub masters: usize,
    /// Replicas of each master.
    pub replicas_per_master: usize,
    /// `--cluster-node-timeout`: how long a master may be unreachable
    /// before the others fail it over (default 1 s).
    pub node_timeout: Duration,
    /// More `redis-server` arguments for every node.
    pub args: Vec<String>,
    /// How long creating the cluster may take until every node reports it
    /// ok (default 30 s).
    pub ready_timeout: Duration,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        Self {
            masters: 3,
            replicas_per_master: 1,
            node_timeout: Duration::from_millis(1000),
            args: Vec::new(),
            ready_timeout: Duration::from_secs(30),
        }
    }
}

/// A Redis Cluster of the test's own (see the module docs).
pub struct PrivateRedisCluster {
    nodes: Vec<PrivateRedis>,
    cli: PathBuf,
    opts: ClusterOptions,
}

impl fmt::Debug for PrivateRedisCluster {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PrivateRedisCluster")
            .field("ports", &self.nodes.iter().map(PrivateRedis::port).collect::<Vec<_>>())
            .field("opts", &self.opts)
            .finish()
    }
}

/// A node of the cluster as `CLUSTER NODES` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeView {
    /// The node id.
    pub id: String,
    /// Its client port.
    pub port: u16,
    /// Whether it is a master.
    pub master: bool,
    /// Whether the reporting node flags it failing (`fail` or `fail?`).
    pub failing: bool,
    /// The master's id, for a replica.
    pub master_id: Option<String>,
    /// The slot ranges it serves (inclusive).
    pub slots: Vec<(u16, u16)>,
}

impl PrivateRedisCluster {
    /// Starts `masters × (1 + replicas_per_master)` nodes and creates the
    /// cluster (other options at their defaults), returning once every node
    /// reports `cluster_state:ok` with all 16384 slots, every replica's
    /// link to its master is up and every node's view agrees on who is a
    /// master (see [`PrivateRedisCluster::wait_ok`]; about 3 s).
    ///
    /// # Errors
    /// When there is no `redis-server` or `redis-cli` (see
    /// [`PrivateRedisCluster::start_or_skip`] to skip then), or when the
    /// cluster does not form (the message holds the tool's output).
    pub async fn start(masters: usize, replicas_per_master: usize) -> Result<Self, String> {
        Self::start_with(ClusterOptions { masters, replicas_per_master, ..ClusterOptions::default() }).await
    }

    /// [`PrivateRedisCluster::start`] with all options.
    ///
    /// # Errors
    /// As [`PrivateRedisCluster::start`].
    pub async fn start_with(opts: ClusterOptions) -> Result<Self, String> {
        blocking(move || Self::start_blocking(opts)).await.map_err(|e| e.to_string())
    }

    /// [`PrivateRedisCluster::start`], but a machine without `redis-server`
    /// or `redis-cli` gives the loud skip of [`crate::servers::skip`] and
    /// `None`.
    ///
    /// # Panics
    /// When the start fails on a machine that has the binaries, or when
    /// there are none and `SELFRAG_TEST_REQUIRE` lists `redis`.
    pub async fn start_or_skip(masters: usize, replicas_per_master: usize) -> Option<Self> {
        let opts = ClusterOptions { masters, replicas_per_master, ..ClusterOptions::default() };
        match blocking(move || Self::start_blocking(opts)).await {
            Ok(cluster) => Some(cluster),
            Err(StartError::Unavailable(why)) => crate::servers::skip("redis", &format!("no private cluster: {why}")),
            Err(StartError::Failed(why)) => panic!("private Redis Cluster failed to start: {why}"),
        }
    }

    /// One cluster (3 masters, 1 replica each) per test process, started by
    /// the first caller and shared by all: for tests that isolate
    /// themselves with fresh key prefixes and never crash a node. `None`
    /// (after the loud skip) on a machine without the binaries.
    ///
    /// # Panics
    /// As [`PrivateRedisCluster::start_or_skip`].
    pub async fn shared() -> Option<&'static Self> {
        static SHARED: OnceLock<Result<PrivateRedisCluster, StartError>> = OnceLock::new();
        let shared = blocking(|| SHARED.get_or_init(|| Self::start_blocking(ClusterOptions::default()))).await;
        match shared {
            Ok(cluster) => Some(cluster),
            Err(StartError::Unavailable(why)) => crate::servers::skip("redis", &format!("no private cluster: {why}")),
            Err(StartError::Failed(why)) => panic!("private Redis Cluster failed to start: {why}"),
        }
    }

    fn start_blocking(opts: ClusterOptions) -> Result<Self, StartError> {
        if opts.masters < 3 {
            return Err(StartError::Failed("redis-cli --cluster create needs at least 3 masters".into()));
        }
        let cli = redis_cli_bin()?;
        let count = opts.masters * (1 + opts.replicas_per_master);
        let mut nodes = Vec::with_capacity(count);
        for _ in 0..count {
            nodes.push(start_node(&opts)?);
        }
        let mut create = Command::new(&cli);
        create.arg("--cluster").arg("create");
        for node in &nodes {
            create.arg(format!("127.0.0.1:{}", node.port()));
        }
        create.arg("--cluster-replicas").arg(opts.replicas_per_master.to_string()).arg("--cluster-yes");
        let out = create.stdin(Stdio::null()).output().map_err(|e| failed(format!("run redis-cli: {e}")))?;
        if !out.status.success() {
            return Err(failed(format!(
                "redis-cli --cluster create failed ({}):\n{}{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )));
        }
        let cluster = Self { nodes, cli, opts };
        cluster.wait_ok_blocking(cluster.opts.ready_timeout).map_err(failed)?;
        Ok(cluster)
    }

    /// The nodes, in start order (indexes for [`PrivateRedisCluster::kill`]
    /// and friends). Which are masters changes with failovers: ask
    /// [`PrivateRedisCluster::view`].
    pub fn nodes(&self) -> &[PrivateRedis] {
        &self.nodes
    }

    /// Every node's URL, `redis://127.0.0.1:PORT`.
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(PrivateRedis::url).collect()
    }

    /// [`PrivateRedisCluster::urls`] joined by commas: the `REDIS_URL` of a
    /// cluster configuration.
    pub fn seed_list(&self) -> String {
        self.urls().join(",")
    }

    /// The options it was started with.
    pub fn options(&self) -> &ClusterOptions {
        &self.opts
    }

    /// Crashes node `node` (SIGKILL), returning when it is gone.
    ///
    /// # Errors
    /// When the process cannot be killed, or there is no such node.
    pub async fn kill(&self, node: usize) -> Result<(), String> {
        self.node(node)?.kill().await
    }

    /// Starts node `node` again on its port and directory (its `nodes.conf`
    /// brings it back into the cluster; a master that was failed over
    /// rejoins as a replica of the node that took over, with empty data).
    ///
    /// # Errors
    /// When it does not start, or there is no such node.
    pub async fn restart(&self, node: usize) -> Result<(), String> {
        self.node(node)?.restart().await
    }

    fn node(&self, node: usize) -> Result<&PrivateRedis, String> {
        self.nodes.get(node).ok_or_else(|| format!("no node {node} (the cluster has {})", self.nodes.len()))
    }

    /// Runs `redis-cli -p PORT ARGS...` against node `node`, returning its
    /// output (raw: no quoting, since stdout is not a terminal).
    ///
    /// # Errors
    /// When `redis-cli` fails or prints an error reply.
    pub async fn cli(&self, node: usize, args: &[&str]) -> Result<String, String> {
        let port = self.node(node)?.port();
        let cli = self.cli.clone();
        let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
        blocking(move || run_cli(&cli, port, &args)).await
    }

    /// The cluster as the first running node sees it (`CLUSTER NODES`).
    ///
    /// # Errors
    /// When no node runs or answers.
    pub async fn view(&self) -> Result<Vec<NodeView>, String> {
        let ports: Vec<u16> = self.nodes.iter().filter(|n| n.is_running()).map(PrivateRedis::port).collect();
        let cli = self.cli.clone();
        blocking(move || {
            let mut last = "no node is running".to_owned();
            for port in ports {
                match run_cli(&cli, port, &["CLUSTER".into(), "NODES".into()]) {
                    Ok(text) => return parse_nodes(&text),
                    Err(e) => last = e,
                }
            }
            Err(last)
        })
        .await
    }

    /// The index of the node that is the (not failing) master of `key`'s
    /// slot, as the first running node sees it.
    ///
    /// # Errors
    /// When no node answers, or none is master of the slot.
    pub async fn master_of(&self, key: &str) -> Result<usize, String> {
        let slot = key_slot(key.as_bytes());
        let view = self.view().await?;
        let port = view
            .iter()
            .find(|n| n.master && !n.failing && n.slots.iter().any(|(a, b)| (*a..=*b).contains(&slot)))
            .map(|n| n.port)
            .ok_or_else(|| format!("no live master serves slot {slot}"))?;
        self.index_of_port(port)
    }

    /// The indexes of the replicas of node `master` (by the first running
    /// node's view).
    ///
    /// # Errors
    /// When no node answers.
    pub async fn replicas_of(&self, master: usize) -> Result<Vec<usize>, String> {
        let port = self.node(master)?.port();
        let view = self.view().await?;
        let Some(id) = view.iter().find(|n| n.port == port).map(|n| n.id.clone()) else {
            return Err(format!("node {master} is not in the cluster view"));
        };
        view.iter().filter(|n| n.master_id.as_deref() == Some(&id)).map(|n| self.index_of_port(n.port)).collect()
    }

    fn index_of_port(&self, port: u16) -> Result<usize, String> {
        self.nodes.iter().position(|n| n.port() == port).ok_or_else(|| format!("port {port} is not one of ours"))
    }

    /// Waits until every running node reports `cluster_state:ok` with all
    /// 16384 slots ok, every running replica's link to its master is up,
    /// and every running node sees every other running one, none of them
    /// failing and none a master without slots.
    ///
    /// # Errors
    /// When that does not happen within `within` (the message says what
    /// the last check saw).
    pub async fn wait_ok(&self, within: Duration) -> Result<(), String> {
        let ports: Vec<u16> = self.nodes.iter().filter(|n| n.is_running()).map(PrivateRedis::port).collect();
        let cli = self.cli.clone();
        blocking(move || wait_ok(&cli, &ports, within)).await
    }

    fn wait_ok_blocking(&self, within: Duration) -> Result<(), String> {
        let ports: Vec<u16> = self.nodes.iter().filter(|n| n.is_running()).map(PrivateRedis::port).collect();
        wait_ok(&self.cli, &ports, within)
    }
}

fn failed(msg: impl Into<String>) -> StartError {
    StartError::Failed(msg.into())
}

/// One node: a [`PrivateRedis`] on a free port, its bus on another. Two
/// free ports may be taken by someone else before the server binds them:
/// a few attempts with new ports.
fn start_node(opts: &ClusterOptions) -> Result<PrivateRedis, StartError> {
    let mut last = None;
    for _ in 0..3 {
        let port = free_port().map_err(failed)?;
        let bus = free_port().map_err(failed)?;
        if bus == port {
            continue;
        }
        let mut args: Vec<String> = [
            "--cluster-enabled",
            "yes",
            "--cluster-config-file",
            "nodes.conf",
            "--cluster-replica-validity-factor",
            "0",
            // A replica (re)joining syncs at once, not after the default
            // 5 s wait for more replicas to share the transfer.
            "--repl-diskless-sync-delay",
            "0",
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
        args.extend([
            "--cluster-node-timeout".to_owned(),
            opts.node_timeout.as_millis().to_string(),
            "--cluster-port".to_owned(),
            bus.to_string(),
        ]);
        args.extend(opts.args.iter().cloned());
        match PrivateRedis::start_blocking(RedisOptions { port, args, ..RedisOptions::default() }) {
            Ok(node) => return Ok(node),
            Err(e) if e.message().contains("Address already in use") => last = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(last.unwrap_or_else(|| failed("no free ports")))
}

/// `SELFRAG_TEST_REDIS_CLI`, else `redis-cli` beside
/// `SELFRAG_TEST_REDIS_SERVER`, else on `PATH`, else `/usr/bin/redis-cli`.
fn redis_cli_bin() -> Result<PathBuf, StartError> {
    if let Some(bin) = std::env::var_os(REDIS_CLI_VAR).filter(|v| !v.is_empty()) {
        let bin = PathBuf::from(bin);
        return if bin.is_file() {
            Ok(bin)
        } else {
            Err(failed(format!("{REDIS_CLI_VAR}={} is not a file", bin.display())))
        };
    }
    let beside = std::env::var_os(REDIS_BIN_VAR)
        .filter(|v| !v.is_empty())
        .and_then(|server| PathBuf::from(server).parent().map(|dir| dir.join("redis-cli")));
    let on_path = || {
        let path = std::env::var_os("PATH")?;
        std::env::split_paths(&path).map(|dir| dir.join("redis-cli")).find(|p| p.is_file())
    };
    beside
        .filter(|p| p.is_file())
        .or_else(on_path)
        .or_else(|| Some(PathBuf::from("/usr/bin/redis-cli")).filter(|p| p.is_file()))
        .ok_or_else(|| StartError::Unavailable(format!("no redis-cli on PATH ({REDIS_CLI_VAR} unset)")))
}

fn run_cli(cli: &PathBuf, port: u16, args: &[String]) -> Result<String, String> {
    let out = Command::new(cli)
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("run redis-cli: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let first = text.lines().next().unwrap_or_default();
    // redis-cli exits 0 on an error reply, which it prints as `ERR ...` (or
    // `(error) ...` on a terminal); it exits 1 when it cannot connect. An
    // empty array prints nothing.
    let error_reply = ["ERR", "(error)", "MOVED", "ASK", "CLUSTERDOWN", "TRYAGAIN", "NOAUTH", "WRONGPASS"]
        .iter()
        .any(|p| first.starts_with(p));
    if !out.status.success() || error_reply {
        return Err(format!(
            "redis-cli -p {port} {}: {} {}",
            args.join(" "),
            text.trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(text)
}

fn wait_ok(cli: &PathBuf, ports: &[u16], within: Duration) -> Result<(), String> {
    let deadline = Instant::now() + within;
    loop {
        let Some(problem) = ports.iter().find_map(|&port| node_problem(cli, port, ports)) else { return Ok(()) };
        if Instant::now() > deadline {
            return Err(format!("the cluster is not ok within {within:?}: {problem}"));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// What keeps the node on `port` from being settled (see
/// [`PrivateRedisCluster::wait_ok`]), if anything; `ports` are the running
/// nodes.
fn node_problem(cli: &PathBuf, port: u16, ports: &[u16]) -> Option<String> {
    let info = run_cli(cli, port, &["CLUSTER".into(), "INFO".into()]);
    let ok = info
        .as_ref()
        .is_ok_and(|t| field(t, "cluster_state") == Some("ok") && field(t, "cluster_slots_ok") == Some("16384"));
    if !ok {
        return Some(format!("node on port {port}: {}", info.unwrap_or_else(|e| e).replace("\r\n", " ")));
    }
    let replication = match run_cli(cli, port, &["INFO".into(), "replication".into()]) {
        Ok(t) => t,
        Err(e) => return Some(e),
    };
    if field(&replication, "role") == Some("slave") && field(&replication, "master_link_status") != Some("up") {
        return Some(format!("replica on port {port}: link to its master is not up"));
    }
    // `cluster_state:ok` comes before gossip has told every node which of
    // the others became replicas: until it has, a node's view lists a
    // replica as a master without slots (what a test reading that view
    // would then treat as a master).
    let view = match run_cli(cli, port, &["CLUSTER".into(), "NODES".into()]).and_then(|t| parse_nodes(&t)) {
        Ok(view) => view,
        Err(e) => return Some(e),
    };
    if let Some(n) = view.iter().find(|n| ports.contains(&n.port) && (n.failing || (n.master && n.slots.is_empty()))) {
        let seen = if n.failing { "failing" } else { "a master without slots" };
        return Some(format!("node on port {port} still sees the node on port {} as {seen}", n.port));
    }
    let missing = ports.iter().find(|p| !view.iter().any(|n| n.port == **p))?;
    Some(format!("node on port {port} does not know the node on port {missing} yet"))
}

fn field<'a>(text: &'a str, name: &str) -> Option<&'a str> {
    text.lines().find_map(|l| l.trim().strip_prefix(name)?.strip_prefix(':'))
}

/// `CLUSTER NODES`: `<id> <ip:port@cport> <flags> <master> <ping> <pong>
/// <epoch> <link> <slot>...`.
fn parse_nodes(text: &str) -> Result<Vec<NodeView>, String> {
    let mut out = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let parts: Vec<&str> = line.split_whitespace().collect();
        let [id, addr, flags, master, _, _, _, _, slots @ ..] = parts.as_slice() else {
            return Err(format!("CLUSTER NODES line {line:?}"));
        };
        let port = addr
            .split(['@', ','])
            .next()
            .and_then(|hp| hp.rsplit_once(':'))
            .and_then(|(_, p)| p.parse().ok())
            .ok_or_else(|| format!("CLUSTER NODES address {addr:?}"))?;
        let flags: Vec<&str> = flags.split(',').collect();
        let mut ranges = Vec::new();
        for s in slots.iter().filter(|s| !s.starts_with('[')) {
            let (a, b) = s.split_once('-').unwrap_or((s, s));
            let (a, b) =
                (a.parse().map_err(|e| format!("slot {s}: {e}"))?, b.parse().map_err(|e| format!("slot {s}: {e}"))?);
            ranges.push((a, b));
        }
        out.push(NodeView {
            id: (*id).to_owned(),
            port,
            master: flags.contains(&"master"),
            failing: flags.iter().any(|f| *f == "fail" || *f == "fail?"),
            master_id: (*master != "-").then(|| (*master).to_owned()),
            slots: ranges,
        });
    }
    Ok(out)
}

/// The cluster slot of `key`: CRC16 (XMODEM) of its hash tag (the text
/// between the first `{` and the next `}`, when not empty) or of the whole
/// key, modulo 16384.
pub fn key_slot(key: &[u8]) -> u16 {
    let hashed = key
        .iter()
        .position(|&b| b == b'{')
        .and_then(|open| {
            let rest = &key[open + 1..];
            rest.iter().position(|&b| b == b'}').filter(|&close| close > 0).map(|close| &rest[..close])
        })
        .unwrap_or(key);
    crc16(hashed) % SLOTS
}

fn crc16(data: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &byte in data {
        crc ^= u16::from(byte) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 == 0 { crc << 1 } else { (crc << 1) ^ 0x1021 };
        }
    }
    crc
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    match tokio::task::spawn_blocking(f).await {
        Ok(v) => v,
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_slots_follow_the_hash_tag_rule() {
        // Values from the Redis Cluster specification and `CLUSTER KEYSLOT`.
        assert_eq!(crc16(b"123456789"), 0x31C3);
        assert_eq!(key_slot(b"foo"), 12182);
        assert_eq!(key_slot(b"{user1000}.following"), key_slot(b"user1000"));
        assert_eq!(key_slot(b"foo{}{bar}"), key_slot(b"foo{}{bar}"), "an empty tag hashes the whole key");
        assert_ne!(key_slot(b"foo{}{bar}"), key_slot(b"bar"));
        assert_eq!(key_slot(b"foo{{bar}}zap"), key_slot(b"{bar"));
        assert_eq!(key_slot(b"p:{u:1}:a"), key_slot(b"q:{u:1}:b"));
    }

    #[test]
    fn cluster_nodes_parse() {
        let text = "\
a 127.0.0.1:7000@17000 myself,master - 0 0 1 connected 0-5460
b 127.0.0.1:7001@17001 slave a 0 0 1 connected
c 127.0.0.1:7002@17002 master,fail - 0 0 2 disconnected 5461 5462-16383 [5461->-a]
";
        let view = parse_nodes(text).unwrap();
        assert_eq!(view.len(), 3);
        assert_eq!((view[0].port, view[0].master, view[0].failing), (7000, true, false));
        assert_eq!(view[0].slots, [(0, 5460)]);
        assert_eq!(view[1].master_id.as_deref(), Some("a"));
        assert!(view[2].failing);
        assert_eq!(view[2].slots, [(5461, 5461), (5462, 16383)]);
    }
}
