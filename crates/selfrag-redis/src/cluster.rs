//! Redis Cluster: the seed URLs in [`RedisConfig`], the client the stores
//! connect through ([`RedisClusterClient`], one of the two kinds of
//! [`RedisConnector`]), and the health report of [`cluster_health`].

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use deadpool_redis::redis::cluster::{ClusterClient, ClusterClientBuilder};
use deadpool_redis::redis::cluster_async::ClusterConnection;
use deadpool_redis::redis::{
    self, aio::MultiplexedConnection, AsyncConnectionConfig, ConnectionAddr, ConnectionInfo, IntoConnectionInfo,
};
use selfrag_core::{Error, Result};

use crate::client::connect_error;
use crate::config::{redact_url, RedisConfig, RedisPool};
use crate::BACKEND;

/// The hash slots of a Redis Cluster.
pub const CLUSTER_SLOTS: u32 = 16384;

/// What a store connects through: one server's pool or a cluster's client.
///
/// [`RedisConfig::connector`] builds the right one from a configuration; the
/// stores' constructors take anything that converts into it (a
/// [`RedisPool`], a `deadpool_redis::Pool`, a [`RedisClusterClient`]).
/// Cloning is cheap, and clones share the pool or client.
#[derive(Clone, Debug)]
pub enum RedisConnector {
    /// One server (or one address in front of several, such as a
    /// Sentinel-managed or cloud primary), through a connection pool.
    Pool(RedisPool),
    /// A Redis Cluster, through its seed nodes.
    Cluster(RedisClusterClient),
}

impl RedisConnector {
    /// The pool, when this is one server's.
    pub fn pool(&self) -> Option<&RedisPool> {
        match self {
            Self::Pool(pool) => Some(pool),
            Self::Cluster(_) => None,
        }
    }

    /// The cluster client, when this is a cluster's.
    pub fn cluster(&self) -> Option<&RedisClusterClient> {
        match self {
            Self::Pool(_) => None,
            Self::Cluster(client) => Some(client),
        }
    }

    /// Whether this reaches a Redis Cluster.
    pub fn is_cluster(&self) -> bool {
        matches!(self, Self::Cluster(_))
    }
}

impl From<RedisPool> for RedisConnector {
    fn from(pool: RedisPool) -> Self {
        Self::Pool(pool)
    }
}

impl From<deadpool_redis::Pool> for RedisConnector {
    fn from(pool: deadpool_redis::Pool) -> Self {
        Self::Pool(pool.into())
    }
}

impl From<RedisClusterClient> for RedisConnector {
    fn from(client: RedisClusterClient) -> Self {
        Self::Cluster(client)
    }
}

impl RedisConfig {
    /// Whether this configuration names a Redis Cluster
    /// ([`RedisConfig::cluster_nodes`] is not empty).
    pub fn is_cluster(&self) -> bool {
        !self.cluster_nodes.is_empty()
    }

    /// What the stores connect through: a [`RedisClusterClient`] when
    /// [`cluster_nodes`](RedisConfig::cluster_nodes) is set, else the pool of
    /// [`RedisConfig::create_pool`]. Connects lazily either way, so this
    /// succeeds while Redis is down.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] as [`RedisConfig::validate`] and
    /// [`RedisConfig::create_pool`].
    pub fn connector(&self) -> Result<RedisConnector> {
        if self.is_cluster() {
            RedisClusterClient::new(self).map(RedisConnector::Cluster)
        } else {
            self.create_pool().map(RedisConnector::Pool)
        }
    }
}

/// The client of a Redis Cluster: the seed nodes and the settings every
/// connection to the cluster gets.
///
/// A store opens one [`ClusterConnection`] through it on first use and keeps
/// it: the driver's cluster connection holds one multiplexed connection per
/// node, routes each command to the master of its key's slot, reconnects to
/// nodes and re-reads the slot map (`CLUSTER SLOTS`) when the cluster
/// changes. Cloning is cheap (one `Arc`).
///
/// The driver is built with **no retries of its own**: it would re-send a
/// command after a connection broke with the command in flight, which may run
/// a rate-limit check or a session create twice. The stores retry only what
/// certainly did not run (`MOVED`, `ASK`, `TRYAGAIN`, no connection to the
/// slot's node yet), within their response timeout; see "Redis Cluster" in
/// the crate docs.
///
/// `Debug` shows the seeds without passwords.
#[derive(Clone)]
pub struct RedisClusterClient {
    inner: Arc<ClientInner>,
}

struct ClientInner {
    client: ClusterClient,
    /// The seeds through [`redact_url`], for `Debug`.
    seeds: Vec<String>,
    connect_timeout: Duration,
    /// Bounds how many cluster connections are being opened at once (each
    /// opens a socket per node), like the pool size does for one server.
    opening: tokio::sync::Semaphore,
}

impl RedisClusterClient {
    /// A client for the cluster of `config` (its
    /// [`cluster_nodes`](RedisConfig::cluster_nodes), timeouts and pool
    /// size). Connects lazily.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] as [`RedisConfig::validate`], or field
    /// `cluster_nodes` when it is empty.
    pub fn new(config: &RedisConfig) -> Result<Self> {
        config.validate()?;
        if config.cluster_nodes.is_empty() {
            return Err(Error::invalid("cluster_nodes", "is empty: not a cluster configuration"));
        }
        let mut tls = builder(config);
        if config.cluster_nodes.iter().any(|u| u.trim().starts_with("rediss://")) {
            // TLS settings: see `crate::tls`.
            crate::tls::install_default_provider();
            if let Some(certs) = crate::tls::certificates(config)? {
                tls = tls.certs(certs);
            }
            if config.tls_insecure {
                tls = tls.tls(redis::TlsMode::Insecure);
            }
        }
        let client = tls.build().map_err(|e| Error::invalid("cluster_nodes", e.to_string()))?;
        Ok(Self {
            inner: Arc::new(ClientInner {
                client,
                seeds: config.cluster_nodes.iter().map(|s| redact_url(s)).collect(),
                connect_timeout: config.connect_timeout,
                opening: tokio::sync::Semaphore::new(config.pool_size),
            }),
        })
    }

    /// The seed URLs, without passwords.
    pub fn seeds(&self) -> &[String] {
        &self.inner.seeds
    }

    /// The driver's client (for commands of your own: its connections
    /// retry as the driver's defaults say, not as the stores do).
    pub fn client(&self) -> &ClusterClient {
        &self.inner.client
    }

    /// A new connection to the cluster: to the seeds, then to every node of
    /// the slot map one of them returns. The whole of it is bounded by the
    /// connect timeout.
    ///
    /// # Errors
    /// [`Error::Unavailable`] (never applied: nothing was sent) when no seed
    /// answers or the cluster does not answer `CLUSTER SLOTS` in time;
    /// [`Error::Backend`] when a node refuses the credentials.
    pub async fn get_connection(&self) -> Result<ClusterConnection> {
        let limit = self.inner.connect_timeout;
        let open = async {
            // Never closed, so acquiring only waits.
            let _permit = self.inner.opening.acquire().await;
            self.inner.client.get_async_connection().await
        };
        match tokio::time::timeout(limit, open).await {
            Ok(conn) => conn.map_err(connect_error),
            Err(_) => Err(Error::Unavailable {
                backend: BACKEND,
                message: format!("connect: no cluster connection within the connect timeout ({limit:?})"),
                maybe_applied: false,
                source: None,
            }),
        }
    }
}

impl fmt::Debug for RedisClusterClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisClusterClient")
            .field("seeds", &self.inner.seeds)
            .field("connect_timeout", &self.inner.connect_timeout)
            .finish_non_exhaustive()
    }
}

/// The driver's cluster client for `config`: no retries (see
/// [`RedisClusterClient`]), the config's timeouts for every node connection.
fn builder(config: &RedisConfig) -> ClusterClientBuilder {
    ClusterClientBuilder::new(config.cluster_nodes.iter().map(|s| s.trim()))
        .retries(0)
        .connection_timeout(config.connect_timeout)
        .response_timeout(config.response_timeout)
}

// --- Configuration from the environment -----------------------------------------

/// `REDIS_URL` and `SELFRAG_REDIS_CLUSTER` as ([`RedisConfig::url`],
/// [`RedisConfig::cluster_nodes`]).
///
/// The rule: `REDIS_URL` holding several URLs separated by commas (each
/// starting with `redis://` or `rediss://`) names cluster seeds;
/// `SELFRAG_REDIS_CLUSTER=1` makes even one URL a seed, `=0` refuses several.
/// In cluster mode the URL is the first seed (for display; the stores use
/// the seeds).
pub(crate) fn urls_from_env(url: Option<String>, switch: Option<String>) -> Result<(Option<String>, Vec<String>)> {
    const VAR: &str = "SELFRAG_REDIS_CLUSTER";
    let switch = match switch.as_deref().map(|s| s.trim().to_ascii_lowercase()) {
        None => None,
        Some(s) if s.is_empty() => None,
        Some(s) if ["1", "true", "yes", "on"].contains(&s.as_str()) => Some(true),
        Some(s) if ["0", "false", "no", "off"].contains(&s.as_str()) => Some(false),
        Some(_) => return Err(Error::invalid(VAR, "must be 1, true, yes, on, 0, false, no or off")),
    };
    let seeds = url.as_deref().map(split_seeds).unwrap_or_default();
    let cluster = switch.unwrap_or(seeds.len() > 1);
    if !cluster {
        if seeds.len() > 1 {
            return Err(Error::invalid(
                "REDIS_URL",
                format!("holds {} comma-separated URLs (cluster seeds), but {VAR} is off", seeds.len()),
            ));
        }
        return Ok((url, Vec::new()));
    }
    let seeds = if seeds.is_empty() { vec![RedisConfig::DEFAULT_URL.to_owned()] } else { seeds };
    Ok((seeds.first().cloned(), seeds))
}

/// Splits `text` at each comma followed (after blanks) by `redis://` or
/// `rediss://`, so a comma inside a password never splits a URL.
fn split_seeds(text: &str) -> Vec<String> {
    let mut seeds = Vec::new();
    let mut start = 0;
    for (at, _) in text.match_indices(',') {
        let rest = text[at + 1..].trim_start();
        if rest.starts_with("redis://") || rest.starts_with("rediss://") {
            seeds.push(text[start..at].trim().to_owned());
            start = at + 1;
        }
    }
    seeds.push(text[start..].trim().to_owned());
    seeds
}

/// Checks [`RedisConfig::cluster_nodes`]. Messages name seeds by position,
/// never quoting a URL (it may hold a password).
pub(crate) fn validate_nodes(nodes: &[String]) -> Result<()> {
    const FIELD: &str = "cluster_nodes";
    if nodes.is_empty() {
        return Ok(());
    }
    for (i, seed) in nodes.iter().enumerate() {
        let n = i + 1;
        let seed = seed.trim();
        if !(seed.starts_with("redis://") || seed.starts_with("rediss://")) {
            return Err(Error::invalid(
                FIELD,
                format!("seed {n} must start with redis:// or rediss:// (a cluster is not reached over a Unix socket)"),
            ));
        }
        let info = seed.into_connection_info().map_err(|e| Error::invalid(FIELD, format!("seed {n}: {e}")))?;
        if info.redis.db != 0 {
            return Err(Error::invalid(
                FIELD,
                format!("seed {n} names database {}: a cluster has only 0", info.redis.db),
            ));
        }
    }
    // The driver checks that the seeds agree on credentials, protocol and
    // TLS mode (its messages quote no URL).
    ClusterClientBuilder::new(nodes.iter().map(|s| s.trim()))
        .build()
        .map(drop)
        .map_err(|e| Error::invalid(FIELD, e.to_string()))
}

// --- Health ------------------------------------------------------------------------

/// The state of a Redis Cluster as one of its nodes sees it
/// (`CLUSTER INFO`, `CLUSTER NODES`), with a `PING` of every master.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ClusterHealth {
    /// `cluster_state`: `ok`, or `fail` when some slot is not served.
    pub state: String,
    /// Slots assigned to a node (`cluster_slots_assigned`; 16384 when all are).
    pub slots_assigned: u32,
    /// Slots whose master is not flagged failing (`cluster_slots_ok`).
    pub slots_ok: u32,
    /// Slots whose master some node cannot reach (`cluster_slots_pfail`).
    pub slots_pfail: u32,
    /// Slots whose master the cluster agrees is down (`cluster_slots_fail`).
    pub slots_fail: u32,
    /// Nodes the reporting node knows, replicas included.
    pub known_nodes: u32,
    /// `host:port` of the seed that answered.
    pub reported_by: String,
    /// Every master, by address.
    pub masters: Vec<MasterHealth>,
}

/// One master of a [`ClusterHealth`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct MasterHealth {
    /// The node id.
    pub id: String,
    /// `host:port` as the cluster announces it.
    pub addr: String,
    /// How many slots it serves (0 for a failed master whose replica took
    /// over).
    pub slots: u32,
    /// `fail` or `fail?` when the reporting node flags it so.
    pub flagged: Option<String>,
    /// Whether it answered `PING` (within the connect and response timeouts).
    pub reachable: bool,
    /// How long the `PING` took, connecting included, when it answered.
    pub latency: Option<Duration>,
    /// Why it did not answer (the driver's message; never a password).
    pub error: Option<String>,
}

impl ClusterHealth {
    /// Whether the cluster serves every slot and every master serving slots
    /// answered.
    pub fn is_healthy(&self) -> bool {
        self.problems().is_empty()
    }

    /// What is wrong, one sentence each (empty when healthy).
    pub fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.state != "ok" {
            out.push(format!("cluster_state is {}", self.state));
        }
        if self.slots_ok != CLUSTER_SLOTS {
            out.push(format!(
                "{} of {CLUSTER_SLOTS} slots ok ({} assigned, {} pfail, {} fail)",
                self.slots_ok, self.slots_assigned, self.slots_pfail, self.slots_fail
            ));
        }
        for m in self.masters.iter().filter(|m| m.slots > 0) {
            if !m.reachable {
                out.push(format!(
                    "master {} ({} slots) did not answer PING: {}",
                    m.addr,
                    m.slots,
                    m.error.as_deref().unwrap_or("no reply")
                ));
            } else if let Some(flag) = &m.flagged {
                out.push(format!("master {} answers but is flagged {flag}", m.addr));
            }
        }
        out
    }
}

/// The health of the cluster of `config`: `CLUSTER INFO` and `CLUSTER NODES`
/// from the first seed that answers, then a `PING` to every master (at once,
/// each on a new connection with the seed's credentials and TLS mode, within
/// the connect and response timeouts).
///
/// # Errors
/// [`Error::InvalidInput`] as [`RedisConfig::validate`], or field
/// `cluster_nodes` when the configuration is not a cluster's;
/// [`Error::Unavailable`] / [`Error::Timeout`] when no seed answers;
/// [`Error::Backend`] when a seed refuses the commands (not a cluster node,
/// or an ACL user without `cluster` rights) or answers something else.
pub async fn cluster_health(config: &RedisConfig) -> Result<ClusterHealth> {
    config.validate()?;
    if config.cluster_nodes.is_empty() {
        return Err(Error::invalid("cluster_nodes", "is empty: not a cluster configuration"));
    }
    let mut last = None;
    for seed in &config.cluster_nodes {
        let info = seed.trim().into_connection_info().map_err(|e| Error::invalid("cluster_nodes", e.to_string()))?;
        let info = config.with_tls(info)?;
        let reported_by = addr_of(&info);
        let mut conn = match node_connection(info.clone(), config).await {
            Ok(conn) => conn,
            Err(e) => {
                last = Some(e);
                continue;
            }
        };
        let text: redis::RedisResult<(String, String)> =
            redis::pipe().cmd("CLUSTER").arg("INFO").cmd("CLUSTER").arg("NODES").query_async(&mut conn).await;
        let (info_text, nodes_text) = match text {
            Ok(text) => text,
            Err(e) if e.is_io_error() => {
                last = Some(crate::client::redis_error(e, "cluster health"));
                continue;
            }
            Err(e) => return Err(crate::client::redis_error(e, "cluster health")),
        };
        let mut health = parse_info(&info_text, reported_by)?;
        let nodes = parse_nodes(&nodes_text)?;
        let mut pings = tokio::task::JoinSet::new();
        for (i, node) in nodes.iter().enumerate() {
            let target = with_addr(&info, &node.host, node.port);
            let config = config.clone();
            pings.spawn(async move {
                let started = Instant::now();
                let reply = match node_connection(target, &config).await {
                    Ok(mut conn) => {
                        redis::cmd("PING").query_async::<String>(&mut conn).await.map_err(|e| e.to_string())
                    }
                    Err(e) => Err(e.to_string()),
                };
                (i, reply.map(|_| started.elapsed()))
            });
        }
        let mut answers = vec![None; nodes.len()];
        while let Some(joined) = pings.join_next().await {
            if let Ok((i, answer)) = joined {
                answers[i] = Some(answer);
            }
        }
        health.masters = nodes
            .into_iter()
            .zip(answers)
            .map(|(node, answer)| {
                let answer = answer.unwrap_or_else(|| Err("the PING task failed".to_owned()));
                MasterHealth {
                    id: node.id,
                    addr: format!("{}:{}", node.host, node.port),
                    slots: node.slots,
                    flagged: node.flagged,
                    reachable: answer.is_ok(),
                    latency: answer.as_ref().ok().copied(),
                    error: answer.err(),
                }
            })
            .collect();
        health.masters.sort_by(|a, b| a.addr.cmp(&b.addr));
        return Ok(health);
    }
    Err(last.unwrap_or_else(|| Error::unavailable(BACKEND, "cluster health: no seed answered", NoSeed)))
}

#[derive(Debug)]
struct NoSeed;

impl fmt::Display for NoSeed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("no seed answered")
    }
}

impl std::error::Error for NoSeed {}

/// A plain connection to one node, bounded by the config's timeouts.
async fn node_connection(info: ConnectionInfo, config: &RedisConfig) -> Result<MultiplexedConnection> {
    let client = redis::Client::open(info).map_err(|e| Error::invalid("cluster_nodes", e.to_string()))?;
    let settings = AsyncConnectionConfig::new()
        .set_connection_timeout(config.connect_timeout)
        .set_response_timeout(config.response_timeout);
    client.get_multiplexed_async_connection_with_config(&settings).await.map_err(connect_error)
}

/// `info` with another host and port, keeping credentials and TLS settings.
fn with_addr(info: &ConnectionInfo, host: &str, port: u16) -> ConnectionInfo {
    let mut info = info.clone();
    match &mut info.addr {
        ConnectionAddr::Tcp(h, p) | ConnectionAddr::TcpTls { host: h, port: p, .. } => {
            host.clone_into(h);
            *p = port;
        }
        // Seeds are checked to be TCP URLs.
        ConnectionAddr::Unix(_) => {}
    }
    info
}

fn addr_of(info: &ConnectionInfo) -> String {
    match &info.addr {
        ConnectionAddr::Tcp(h, p) | ConnectionAddr::TcpTls { host: h, port: p, .. } => format!("{h}:{p}"),
        ConnectionAddr::Unix(path) => path.display().to_string(),
    }
}

fn unexpected(what: &str, detail: impl fmt::Display) -> Error {
    Error::Backend {
        backend: BACKEND,
        message: format!("cluster health: unexpected {what}: {detail}"),
        retryable: false,
        source: None,
    }
}

/// `CLUSTER INFO` (`field:value` lines).
fn parse_info(text: &str, reported_by: String) -> Result<ClusterHealth> {
    let field =
        |name: &str| text.lines().find_map(|line| line.trim().strip_prefix(name)?.strip_prefix(':').map(str::to_owned));
    let number = |name: &str| -> Result<u32> {
        field(name)
            .ok_or_else(|| unexpected("CLUSTER INFO", format!("no {name}")))?
            .parse()
            .map_err(|e| unexpected("CLUSTER INFO", format!("{name}: {e}")))
    };
    Ok(ClusterHealth {
        state: field("cluster_state").ok_or_else(|| unexpected("CLUSTER INFO", "no cluster_state"))?,
        slots_assigned: number("cluster_slots_assigned")?,
        slots_ok: number("cluster_slots_ok")?,
        slots_pfail: number("cluster_slots_pfail")?,
        slots_fail: number("cluster_slots_fail")?,
        known_nodes: number("cluster_known_nodes")?,
        reported_by,
        masters: Vec::new(),
    })
}

/// A master line of `CLUSTER NODES`.
#[derive(Debug, PartialEq, Eq)]
struct NodeLine {
    id: String,
    host: String,
    port: u16,
    slots: u32,
    flagged: Option<String>,
}

/// The masters of `CLUSTER NODES`: `<id> <ip:port@cport[,hostname]> <flags>
/// <master> <ping-sent> <pong-recv> <epoch> <link-state> <slot>...`, a slot
/// being `N`, `A-B`, or a bracketed migration note (not counted).
fn parse_nodes(text: &str) -> Result<Vec<NodeLine>> {
    let mut out = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let parts: Vec<&str> = line.split_whitespace().collect();
        let [id, addr, flags, _master, _ping, _pong, _epoch, _link, slots @ ..] = parts.as_slice() else {
            return Err(unexpected("CLUSTER NODES line", format!("{} fields", parts.len())));
        };
        let flags: Vec<&str> = flags.split(',').collect();
        if !flags.contains(&"master") {
            continue;
        }
        let hostport = addr.split(['@', ',']).next().unwrap_or_default();
        let (host, port) =
            hostport.rsplit_once(':').ok_or_else(|| unexpected("CLUSTER NODES address", hostport.to_owned()))?;
        let port = port.parse().map_err(|e| unexpected("CLUSTER NODES port", e))?;
        let mut count = 0;
        for slot in slots.iter().filter(|s| !s.starts_with('[')) {
            count += match slot.split_once('-') {
                Some((a, b)) => {
                    let (a, b): (u32, u32) = (
                        a.parse().map_err(|e| unexpected("CLUSTER NODES slot", e))?,
                        b.parse().map_err(|e| unexpected("CLUSTER NODES slot", e))?,
                    );
                    b.saturating_sub(a) + 1
                }
                None => {
                    slot.parse::<u32>().map_err(|e| unexpected("CLUSTER NODES slot", e))?;
                    1
                }
            };
        }
        let flagged = flags.iter().find(|f| **f == "fail" || **f == "fail?").map(|f| (*f).to_owned());
        out.push(NodeLine { id: (*id).to_owned(), host: host.to_owned(), port, slots: count, flagged });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(url: Option<&str>, switch: Option<&str>) -> Result<(Option<String>, Vec<String>)> {
        urls_from_env(url.map(str::to_owned), switch.map(str::to_owned))
    }

    #[test]
    fn one_url_is_one_server_and_several_are_seeds() {
        assert_eq!(env(None, None).unwrap(), (None, vec![]));
        assert_eq!(env(Some("redis://a:1"), None).unwrap(), (Some("redis://a:1".into()), vec![]));
        // A comma in a password does not split the URL.
        assert_eq!(env(Some("redis://:p,w@a:1"), None).unwrap(), (Some("redis://:p,w@a:1".into()), vec![]));
        let (url, seeds) = env(Some("redis://a:1, redis://b:2,rediss://c:3"), None).unwrap();
        assert_eq!(seeds, ["redis://a:1", "redis://b:2", "rediss://c:3"]);
        assert_eq!(url.as_deref(), Some("redis://a:1"));
        let (_, seeds) = env(Some("redis://:p,w@a:1,redis://:p,w@b:2"), None).unwrap();
        assert_eq!(seeds, ["redis://:p,w@a:1", "redis://:p,w@b:2"]);
    }

    #[test]
    fn the_switch_forces_either_way() {
        assert_eq!(env(Some("redis://a:1"), Some("1")).unwrap().1, ["redis://a:1"]);
        assert_eq!(env(Some("redis://a:1"), Some(" TRUE ")).unwrap().1, ["redis://a:1"]);
        assert_eq!(env(None, Some("yes")).unwrap().1, [RedisConfig::DEFAULT_URL]);
        assert_eq!(env(Some("redis://a:1"), Some("0")).unwrap().1, Vec::<String>::new());
        assert_eq!(env(Some("redis://a:1"), Some("")).unwrap().1, Vec::<String>::new());
        let err = env(Some("redis://a:1,redis://b:2"), Some("off")).unwrap_err();
        assert_eq!(err.field(), Some("REDIS_URL"));
        assert_eq!(env(Some("redis://a:1"), Some("maybe")).unwrap_err().field(), Some("SELFRAG_REDIS_CLUSTER"));
    }

    #[test]
    fn from_lookup_reads_cluster_seeds() {
        let vars = [("REDIS_URL", "redis://127.0.0.1:7000,redis://127.0.0.1:7001")];
        let config =
            RedisConfig::from_lookup(|k| vars.iter().find(|(n, _)| *n == k).map(|(_, v)| (*v).to_owned())).unwrap();
        assert!(config.is_cluster());
        assert_eq!(config.cluster_nodes, ["redis://127.0.0.1:7000", "redis://127.0.0.1:7001"]);
        assert_eq!(config.url, "redis://127.0.0.1:7000");
        assert!(config.connector().unwrap().is_cluster());
        assert_eq!(config.create_pool().unwrap_err().field(), Some("cluster_nodes"));
        let single = RedisConfig::default();
        assert!(!single.is_cluster());
        assert!(single.connector().unwrap().pool().is_some());
    }

    #[test]
    fn bad_seeds_name_the_field_and_hide_passwords() {
        let bad = |seeds: &[&str]| RedisConfig::builder().cluster_nodes(seeds.iter().copied()).build().unwrap_err();
        for seeds in [
            &["unix:///tmp/r.sock"][..],
            &["redis+unix:///tmp/r.sock"],
            &["http://a:1"],
            &["redis://:S3cret@a:1/2"],
            &["redis://:S3cret@a:1", "redis://:other@b:2"],
            &["redis://:S3cret@a:notaport"],
        ] {
            let err = bad(seeds);
            assert_eq!(err.field(), Some("cluster_nodes"), "{seeds:?}: {err}");
            assert!(!format!("{err} {err:?}").contains("S3cret"), "{err:?}");
        }
        let config = RedisConfig::builder().cluster_nodes(["redis://:S3cret@a:1"]).build().unwrap();
        let client = RedisClusterClient::new(&config).unwrap();
        for text in [format!("{config:?}"), format!("{client:?}"), format!("{:?}", config.connector().unwrap())] {
            assert!(!text.contains("S3cret"), "{text}");
            assert!(text.contains("redis://:***@a:1"), "{text}");
        }
        let single = RedisConfig::default();
        assert_eq!(RedisClusterClient::new(&single).unwrap_err().field(), Some("cluster_nodes"));
    }

    #[test]
    fn cluster_info_and_nodes_parse() {
        let info = "cluster_state:ok\r\ncluster_slots_assigned:16384\r\ncluster_slots_ok:16000\r\n\
                    cluster_slots_pfail:384\r\ncluster_slots_fail:0\r\ncluster_known_nodes:6\r\ncluster_size:3\r\n";
        let health = parse_info(info, "127.0.0.1:7000".into()).unwrap();
        assert_eq!((health.state.as_str(), health.slots_assigned, health.slots_ok), ("ok", 16384, 16000));
        assert_eq!((health.slots_pfail, health.slots_fail, health.known_nodes), (384, 0, 6));
        assert!(parse_info("cluster_state:ok\n", String::new()).is_err());

        let nodes = "\
a1 127.0.0.1:7000@17000 myself,master - 0 0 1 connected 0-5460
b2 127.0.0.1:7001@17001,host-b master,fail - 0 0 2 disconnected
c3 127.0.0.1:7002@17002 master - 0 0 3 connected 5461-10922 10923 10924-16383 [10923->-a1]
d4 127.0.0.1:7003@17003 slave,fail? c3 0 0 3 connected
";
        let masters = parse_nodes(nodes).unwrap();
        assert_eq!(
            masters,
            vec![
                NodeLine { id: "a1".into(), host: "127.0.0.1".into(), port: 7000, slots: 5461, flagged: None },
                NodeLine {
                    id: "b2".into(),
                    host: "127.0.0.1".into(),
                    port: 7001,
                    slots: 0,
                    flagged: Some("fail".into())
                },
                NodeLine { id: "c3".into(), host: "127.0.0.1".into(), port: 7002, slots: 10923, flagged: None },
            ]
        );
        assert!(parse_nodes("x y\n").is_err());
    }

    #[test]
    fn health_names_its_problems() {
        let master = |addr: &str, slots, reachable| MasterHealth {
            id: "id".into(),
            addr: addr.into(),
            slots,
            flagged: None,
            reachable,
            latency: None,
            error: (!reachable).then(|| "refused".into()),
        };
        let mut health = ClusterHealth {
            state: "ok".into(),
            slots_assigned: CLUSTER_SLOTS,
            slots_ok: CLUSTER_SLOTS,
            slots_pfail: 0,
            slots_fail: 0,
            known_nodes: 6,
            reported_by: "h:1".into(),
            masters: vec![master("h:1", 8192, true), master("h:2", 8192, true), master("h:3", 0, false)],
        };
        assert!(health.is_healthy(), "a failed master without slots is history: {:?}", health.problems());
        health.masters[1].reachable = false;
        health.state = "fail".into();
        health.slots_ok = 8192;
        let problems = health.problems();
        assert_eq!(problems.len(), 3, "{problems:?}");
        assert!(problems[2].contains("h:2"), "{problems:?}");
    }
}
