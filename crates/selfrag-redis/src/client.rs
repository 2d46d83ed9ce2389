//! The connection handle both stores share: what they connect through (a
//! pool or a cluster client), the one connection they multiplex their calls
//! over, the key prefix, the scripts, and the mapping of driver errors.

use std::fmt;
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use deadpool_redis::redis::aio::{ConnectionLike, MultiplexedConnection};
use deadpool_redis::redis::cluster_async::ClusterConnection;
use deadpool_redis::redis::cluster_routing::SingleNodeRoutingInfo;
use deadpool_redis::redis::{
    self, Arg, Cmd, ErrorKind as RedisKind, FromRedisValue, RedisError, RedisResult, ToRedisArgs, Value,
};
use deadpool_redis::{Connection, PoolError};
use selfrag_core::observe::{record_pool, system, OpMeta, PoolStatus};
use selfrag_core::{Error, Result, UserId};

use crate::cluster::RedisConnector;
use crate::config::{validate_prefix, RedisConfig};
use crate::BACKEND;

/// What a store connects through, plus the connection it multiplexes its
/// calls over.
///
/// Why not `pool.get()` per call: deadpool-redis checks a reused connection
/// with a `PING` before handing it out, which would make every operation two
/// round trips. A [`MultiplexedConnection`] already pipelines concurrent
/// requests over one socket, so the handle takes one connection out of the
/// pool for good ([`Connection::take`]: the pool forgets it and frees its
/// slot, so stores sharing a pool never starve it, and no other pool user can
/// run `MULTI`/`WATCH` on our socket), and clones it per call. The pool is
/// thus only a connection factory with a concurrency bound and a connect
/// timeout: a store holds one connection whatever the pool size. When a call
/// fails in a way that may have broken the connection or shows it reaches the
/// wrong server ([`Handle::forget`]), the handle drops it and the next call
/// takes a new one, under the pool's connect timeout. Calls racing to
/// reconnect may each open one; the first stored wins and the others are
/// closed.
///
/// On a Redis Cluster the one connection is the driver's
/// [`ClusterConnection`] (itself a connection per node, shared the same way),
/// and each call goes through [`Handle::cluster_call`], which follows
/// redirections.
///
/// Everything sits behind one [`Arc`], so cloning the handle (once per
/// task, typically, with its store) costs one atomic increment. Handles
/// derived with another prefix or timeout share the connection slot too.
#[derive(Clone)]
pub(crate) struct Handle {
    inner: Arc<Inner>,
}

struct Inner {
    /// Its `Debug` shows the URLs without passwords.
    source: RedisConnector,
    /// Shared with the handles [`Handle::rebuilt`] derives.
    conn: Arc<Mutex<Option<Conn>>>,
    prefix: Box<str>,
    response_timeout: Duration,
    /// The span attributes of every call.
    obs: OpMeta,
}

/// The connection a handle multiplexes its calls over.
#[derive(Clone)]
enum Conn {
    Single(MultiplexedConnection),
    Cluster(ClusterConnection),
}

impl fmt::Debug for Handle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Handle")
            .field("source", &self.inner.source)
            .field("connected", &self.lock().is_some())
            .field("prefix", &self.inner.prefix)
            .field("response_timeout", &self.inner.response_timeout)
            .finish()
    }
}

/// The span attributes of calls through `source`: for one server, its host,
/// port and database number, read from the redacted URL (no password); for
/// a cluster, none beyond `db.system.name` (calls go to many nodes).
fn op_meta(source: &RedisConnector) -> OpMeta {
    let meta = OpMeta::new(system::REDIS);
    let Some(url) = source.pool().and_then(|p| p.redacted_url()) else { return meta };
    match redis::IntoConnectionInfo::into_connection_info(url) {
        Ok(info) => {
            let meta = meta.with_namespace(info.redis.db.to_string());
            match info.addr {
                redis::ConnectionAddr::Tcp(host, port) | redis::ConnectionAddr::TcpTls { host, port, .. } => {
                    meta.with_server(host, Some(port))
                }
                _ => meta,
            }
        }
        Err(_) => meta,
    }
}

/// `db.client.connection.pool.name` of a pool: `host:port/db`.
fn pool_name(obs: &OpMeta) -> String {
    match obs.server_address() {
        Some(host) => format!("{host}:{}/{}", obs.server_port().unwrap_or(6379), obs.namespace().unwrap_or("0")),
        None => "redis".to_owned(),
    }
}

/// How many times one cluster call is sent again after an answer that says
/// it did not run (`MOVED`, `ASK`, `TRYAGAIN`, no connection to the slot's
/// node): enough for a redirection during a slot migration plus a slot map
/// refresh, few enough that a call to a master that is down (whose slot the
/// other nodes still redirect to it) fails fast instead of spinning until
/// its deadline.
const CLUSTER_ATTEMPTS: u32 = 5;
/// The first pause before sending again after `TRYAGAIN` (a multi-key call
/// meeting a slot half migrated) or a missing node connection; doubled each
/// time.
const CLUSTER_BACKOFF: Duration = Duration::from_millis(10);

impl Handle {
    pub(crate) fn new(source: RedisConnector) -> Self {
        Self {
            inner: Arc::new(Inner {
                conn: Arc::default(),
                prefix: RedisConfig::DEFAULT_KEY_PREFIX.into(),
                response_timeout: RedisConfig::DEFAULT_TIMEOUT,
                obs: op_meta(&source),
                source,
            }),
        }
    }

    /// A handle with another prefix or timeout on the same connection
    /// slot: one socket for all, and a reconnect by one serves all.
    fn rebuilt(&self, prefix: Box<str>, response_timeout: Duration) -> Self {
        Self {
            inner: Arc::new(Inner {
                source: self.inner.source.clone(),
                conn: self.inner.conn.clone(),
                prefix,
                response_timeout,
                obs: self.inner.obs.clone(),
            }),
        }
    }

    pub(crate) fn with_config(source: RedisConnector, config: &RedisConfig) -> Result<Self> {
        config.validate()?;
        Ok(Self::new(source).with_prefix(&config.key_prefix)?.with_response_timeout(config.response_timeout))
    }

    pub(crate) fn with_prefix(self, prefix: &str) -> Result<Self> {
        validate_prefix(prefix)?;
        Ok(self.rebuilt(prefix.into(), self.inner.response_timeout))
    }

    pub(crate) fn with_response_timeout(self, timeout: Duration) -> Self {
        self.rebuilt(self.inner.prefix.clone(), timeout)
    }

    pub(crate) fn prefix(&self) -> &str {
        &self.inner.prefix
    }

    pub(crate) fn connector(&self) -> &RedisConnector {
        &self.inner.source
    }

    /// The span attributes of this handle's calls.
    pub(crate) fn obs(&self) -> &OpMeta {
        &self.inner.obs
    }

    /// A key of `user`'s: the stem of everything `user` owns,
    /// `<prefix>{u:<uuid>}`, followed by `suffix`. The braces make
    /// `u:<uuid>` the Redis Cluster hash tag, so all of a user's keys share
    /// one slot and a script may touch several of them. Built in one
    /// allocation of the exact size (keys are built on every call).
    pub(crate) fn user_key(&self, user: UserId, suffix: &[&str]) -> String {
        let mut uuid = uuid::Uuid::encode_buffer();
        let uuid = user.as_uuid().hyphenated().encode_lower(&mut uuid);
        let prefix = &*self.inner.prefix;
        let len = prefix.len() + "{u:".len() + uuid.len() + "}".len() + suffix.iter().map(|s| s.len()).sum::<usize>();
        let mut key = String::with_capacity(len);
        for part in [prefix, "{u:", uuid, "}"].into_iter().chain(suffix.iter().copied()) {
            key.push_str(part);
        }
        key
    }

    /// A clone of the store's connection, opening one first if there is
    /// none.
    async fn connection(&self) -> Result<Conn> {
        if let Some(conn) = self.lock().as_ref() {
            return Ok(self.configured(conn));
        }
        // Boxed, so this rare path stays out of every call's future: the
        // pool's connect future is several kilobytes, and each call's future
        // is boxed (`async_trait`), so unboxed it would make every call
        // allocate and copy about 7 KB instead of about 300 bytes. That cost
        // session reads a tenth of their throughput at concurrency 64
        // (`selfrag-bench`: 0.77-0.85 of a raw HMGET before, 0.88-0.93 after).
        let fresh = Box::pin(self.connect()).await?;
        // Another task may have stored one meanwhile: keep that one (ours is
        // closed when dropped) so all calls share a socket.
        let mut slot = self.lock();
        let conn = slot.get_or_insert(fresh);
        Ok(self.configured(conn))
    }

    /// A new connection: from the pool, which forgets it, or to the
    /// cluster.
    ///
    /// The whole wait (a free slot, then connecting) is bounded by the
    /// connect timeout: deadpool bounds each step on its own, which could
    /// add up to twice that.
    async fn connect(&self) -> Result<Conn> {
        let pool = match &self.inner.source {
            RedisConnector::Pool(pool) => pool,
            RedisConnector::Cluster(client) => return client.get_connection().await.map(Conn::Cluster),
        };
        let limit = pool.timeouts().wait.unwrap_or(RedisConfig::DEFAULT_TIMEOUT);
        let got = tokio::time::timeout(limit, pool.get()).await;
        let status = pool.status();
        let status = PoolStatus {
            max_size: status.max_size,
            size: status.size,
            available: status.available,
            waiting: status.waiting,
        };
        record_pool(system::REDIS, pool_name(&self.inner.obs), status);
        match got {
            Ok(conn) => Ok(Conn::Single(Connection::take(conn.map_err(pool_error)?))),
            Err(_) => Err(Error::Unavailable {
                backend: BACKEND,
                message: format!("connect: no connection within the connect timeout ({limit:?})"),
                maybe_applied: false,
                source: None,
            }),
        }
    }

    fn configured(&self, conn: &Conn) -> Conn {
        match conn {
            Conn::Single(conn) => {
                let mut conn = conn.clone();
                conn.set_response_timeout(self.inner.response_timeout);
                Conn::Single(conn)
            }
            // The deadline is applied per call (`cluster_call`).
            Conn::Cluster(conn) => Conn::Cluster(conn.clone()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Conn>> {
        // Held only to clone or swap the connection, never across an await.
        self.inner.conn.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Drops the connection after an error that may have broken it or that
    /// says the server behind it no longer serves us, so the next call takes
    /// a new one: I/O errors, timeouts, protocol errors, and every error
    /// mapped to [`Error::Unavailable`] except `OOM` (see [`unavailable`]).
    /// A failover that keeps the address (a Sentinel or cloud failover behind
    /// a DNS name or VIP) leaves the old socket on the demoted primary, which
    /// answers `READONLY` forever; only a new connection reaches the new one.
    /// A healthy connection dropped by mistake costs one reconnect.
    ///
    /// A cluster connection is dropped after an I/O error, a timeout or a
    /// protocol error, not after the cluster's refusals (`CLUSTERDOWN`,
    /// `MOVED`, ...), which would make every call during a failover open
    /// connections to every node while the driver already re-reads the
    /// slot map. A node that stopped answering (a partition that drops
    /// packets) keeps a socket the driver never gives up, and a connection
    /// whose background task is gone (its runtime shut down) fails every
    /// call with a broken pipe: only a new connection helps. I/O errors are
    /// rare even in a failover (the calls in flight when a node dies; later
    /// calls are routed elsewhere), so the reconnects they cost are few.
    fn forget(&self, err: &RedisError, cluster: bool) {
        let broken = if cluster {
            err.is_io_error() || err.is_timeout() || err.is_unrecoverable_error()
        } else {
            breaks_connection(err)
        };
        if broken {
            *self.lock() = None;
        }
    }

    /// Runs `invocation`: `EVALSHA`, one round trip once the server has the
    /// script. A server without it (`NOSCRIPT`: restarted, flushed, or a
    /// replica promoted by a failover, since the script cache is not
    /// replicated) gets `EVAL` with the source, which runs it and caches it
    /// on that server: two round trips, once per script and server. `EVAL`
    /// goes where `EVALSHA` went (the master of the keys' slot), so on a
    /// cluster each node loads the scripts it is asked to run.
    pub(crate) async fn invoke<T: FromRedisValue>(&self, invocation: &Invocation, what: &str) -> Result<T> {
        invocation.check(what)?;
        match self.connection().await? {
            Conn::Single(mut conn) => {
                let reply = match invocation.cmd.query_async(&mut conn).await {
                    // Boxed: rare, and kept out of every call's future.
                    Err(e) if e.kind() == RedisKind::NoScriptError => {
                        Box::pin(invocation.eval_cmd().query_async(&mut conn)).await
                    }
                    reply => reply,
                };
                reply.map_err(|e| self.failed(e, what, false))
            }
            Conn::Cluster(conn) => Box::pin(self.cluster_invoke(conn, invocation, what)).await,
        }
    }

    /// Runs one command: one round trip.
    pub(crate) async fn query<T: FromRedisValue>(&self, cmd: &Cmd, what: &str) -> Result<T> {
        match self.connection().await? {
            Conn::Single(mut conn) => cmd.query_async(&mut conn).await.map_err(|e| self.failed(e, what, false)),
            Conn::Cluster(mut conn) => {
                Box::pin(async move {
                    let value =
                        self.cluster_call(&mut conn, cmd, true).await.map_err(|e| self.failed(e, what, true))?;
                    T::from_owned_redis_value(value).map_err(|e| redis_error(e, what))
                })
                .await
            }
        }
    }

    async fn cluster_invoke<T: FromRedisValue>(
        &self,
        mut conn: ClusterConnection,
        invocation: &Invocation,
        what: &str,
    ) -> Result<T> {
        let follow_ask = !invocation.script.undeclared;
        let value = match self.cluster_call(&mut conn, &invocation.cmd, follow_ask).await {
            Err(e) if e.kind() == RedisKind::NoScriptError => {
                self.cluster_call(&mut conn, &invocation.eval_cmd(), follow_ask).await
            }
            reply => reply,
        };
        let value = value.map_err(|e| self.failed(e, what, true))?;
        T::from_owned_redis_value(value).map_err(|e| redis_error(e, what))
    }

    /// Sends `cmd` to the master of its key's slot, within the response
    /// timeout, sending it again only when the answer says it did not run:
    /// `MOVED` (the driver re-reads the slot map before it sends anything
    /// else, so the next attempt goes to the new owner), `ASK` when
    /// `follow_ask` (sent to the importing node after `ASKING`, in one
    /// pipeline so no other call's command slips between them on the shared
    /// socket; otherwise the `ASK` is returned), `TRYAGAIN` and a
    /// missing node connection (after a short pause, doubled each time; a
    /// second `MOVED` too). At most
    /// [`CLUSTER_ATTEMPTS`] sends. Anything else, a broken connection above
    /// all, is returned as it is: the command may have run, so only the
    /// caller may decide to send it again.
    async fn cluster_call(&self, conn: &mut ClusterConnection, cmd: &Cmd, follow_ask: bool) -> RedisResult<Value> {
        let deadline = tokio::time::Instant::now() + self.inner.response_timeout;
        let mut ask: Option<(String, u16)> = None;
        let mut pause = CLUSTER_BACKOFF;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let sent = async {
                match ask.take() {
                    None => conn.req_packed_command(cmd).await,
                    Some((host, port)) => {
                        let mut pipe = redis::pipe();
                        pipe.cmd("ASKING").add_command(cmd.clone());
                        let route = SingleNodeRoutingInfo::ByAddress { host, port };
                        let mut replies = conn.route_pipeline(&pipe, 1, 1, route).await?;
                        replies
                            .pop()
                            .ok_or_else(|| RedisError::from((RedisKind::ResponseError, "empty reply to ASKING")))
                    }
                }
            };
            let err = match tokio::time::timeout_at(deadline, sent).await {
                Ok(Ok(value)) => return Ok(value),
                Ok(Err(err)) => err,
                Err(_) => return Err(RedisError::from(std::io::Error::from(std::io::ErrorKind::TimedOut))),
            };
            if attempt >= CLUSTER_ATTEMPTS {
                return Err(err);
            }
            match err.kind() {
                // The first `MOVED` goes straight to the new owner; another
                // means the nodes disagree for a moment (a slot's new owner
                // being announced node by node), so wait a little.
                RedisKind::Moved if attempt == 1 => {}
                RedisKind::Ask if !follow_ask => return Err(err),
                RedisKind::Ask => {
                    ask = err.redirect_node().and_then(|(node, _slot)| {
                        let (host, port) = node.rsplit_once(':')?;
                        Some((host.to_owned(), port.parse().ok()?))
                    });
                }
                // `ClientError`: the `ASK` target has no connection yet
                // (the driver only routes by address to nodes it knows).
                RedisKind::Moved
                | RedisKind::TryAgain
                | RedisKind::ClusterConnectionNotFound
                | RedisKind::ClientError => {
                    let until = (tokio::time::Instant::now() + pause).min(deadline);
                    tokio::time::sleep_until(until).await;
                    pause *= 2;
                }
                _ => return Err(err),
            }
        }
    }

    /// Maps `err`, dropping the connection first when it calls for it.
    fn failed(&self, err: RedisError, what: &str, cluster: bool) -> Error {
        self.forget(&err, cluster);
        match err.kind() {
            // Still redirected after `CLUSTER_ATTEMPTS` sends, or an `ASK`
            // not followed: the slot is moving, or its master is down and
            // the cluster has not failed it over yet (the other nodes still
            // point at it). Nothing ran. (To a single-server store, a
            // redirection means it was pointed at a cluster node: a
            // configuration error, left to `redis_error`.)
            RedisKind::Moved | RedisKind::Ask if cluster => {
                Error::unavailable(BACKEND, format!("{what}: redirected (slot migrating or failing over)"), err)
            }
            _ => redis_error(err, what),
        }
    }
}

/// A connect error: nothing of the caller's was sent, so an unavailable
/// server is never "maybe applied".
pub(crate) fn connect_error(err: RedisError) -> Error {
    // Refused credentials or TLS handshake: configuration, no retry fixes it.
    if let Some(why) = crate::tls::refusal(&err) {
        return Error::backend(BACKEND, format!("connect: {why}"), false, err);
    }
    match redis_error(err, "connect") {
        Error::Unavailable { backend, message, source, .. } => {
            Error::Unavailable { backend, message, maybe_applied: false, source }
        }
        other => other,
    }
}

/// Maps a pool error: every failure to get a connection means Redis is not
/// reachable now (refused, unreachable, pool exhausted), which a retry later
/// can fix.
pub(crate) fn pool_error(err: PoolError) -> Error {
    match err {
        // Nothing of the caller's was sent on a connection that failed to
        // open.
        PoolError::Backend(e) => connect_error(e),
        PoolError::Timeout(t) => Error::unavailable(BACKEND, format!("no connection within the timeout ({t:?})"), err),
        PoolError::Closed => Error::unavailable(BACKEND, "the connection pool is closed", err),
        PoolError::NoRuntimeSpecified | PoolError::PostCreateHook(_) => {
            Error::backend(BACKEND, "connection pool misconfigured", false, err)
        }
    }
}

/// Whether the handle should drop its connection after `err` (see
/// [`Handle::forget`]).
fn breaks_connection(err: &RedisError) -> bool {
    err.is_io_error()
        || err.is_timeout()
        || err.is_unrecoverable_error()
        // `OOM` is about the server's memory, not about which server the
        // socket reaches: a new connection would meet the same full server,
        // at the cost of a connect per call while memory stays full.
        || unavailable(err).is_some_and(|why| why != OOM)
}

const OOM: &str = "out of memory";
const MIGRATING: &str = "its slot is migrating";

fn is_migrating_script(err: &RedisError) -> bool {
    err.kind() == RedisKind::ResponseError
        && err.detail().is_some_and(|d| d.contains("Script attempted to access a non local key"))
}

/// Why `err` means Redis cannot serve us now, if it does: a retry later (on a
/// new connection) can succeed.
fn unavailable(err: &RedisError) -> Option<&'static str> {
    match err.kind() {
        RedisKind::IoError => Some("I/O error"),
        // Loading a dump after a restart.
        RedisKind::BusyLoadingError => Some("loading the dataset"),
        // Cluster resharding or failover in progress.
        RedisKind::TryAgain => Some("try again"),
        RedisKind::ClusterDown => Some("cluster down"),
        // The cluster connection has no node to send to (all unreachable).
        RedisKind::ClusterConnectionNotFound => Some("no cluster node reachable"),
        // A script on the node its slot is migrating from touched a key
        // already moved (Redis stops it there). Its writes before that
        // stay, so it may have applied in part (see `redis_error`).
        _ if is_migrating_script(err) => Some(MIGRATING),
        // A replica whose link to its primary is down.
        RedisKind::MasterDown => Some("primary down"),
        // The socket reaches a replica: a primary demoted by a failover.
        RedisKind::ReadOnly => Some("read-only replica (failover?)"),
        // A script or function running past `busy-reply-threshold`.
        _ if err.code() == Some("BUSY") => Some("server busy"),
        // Writes refused under `maxmemory` with `noeviction` (the policy the
        // crate docs recommend), so a full Redis is the expected way for it
        // to fail: treated like a server that cannot serve writes now, which
        // lets the rate limiter's failure policy apply.
        _ if err.code() == Some("OOM") => Some(OOM),
        _ => None,
    }
}

/// Maps a driver error by what a caller can do about it.
pub(crate) fn redis_error(err: RedisError, what: &str) -> Error {
    if err.is_timeout() {
        return Error::Timeout {
            backend: BACKEND,
            message: format!("{what}: no reply in time"),
            source: Some(err.into()),
        };
    }
    match unavailable(&err) {
        // A connection that broke with the command in flight: it may have
        // run. A refused connection and the other conditions are the server
        // refusing the command.
        Some(why) if (err.is_io_error() && !err.is_connection_refusal()) || why == MIGRATING => {
            Error::connection_lost(BACKEND, format!("{what}: {why}"), err)
        }
        Some(why) => Error::unavailable(BACKEND, format!("{what}: {why}"), err),
        None => Error::backend(BACKEND, format!("{what}: {}", err.category()), false, err),
    }
}

/// A Lua script: the shared helpers followed by its body, with the number
/// of keys every call declares and whether it touches keys it does not
/// declare.
pub(crate) struct LuaScript {
    hash: String,
    source: String,
    keys: usize,
    /// The script derives keys it does not declare in `KEYS` (session
    /// hashes read from an index, rate-limit buckets named from the server
    /// clock). Redis Cluster decides where a script runs during a slot
    /// migration by the declared keys alone; on the importing node (after
    /// `ASK`) an undeclared key not migrated yet just looks absent, so such
    /// a script would count from zero or drop live sessions from an index.
    /// It is therefore never sent after `ASK`: it fails as unavailable until
    /// the migration of its slot ends. (On the migrating node Redis itself
    /// stops a script that touches a key already moved: "non local key".)
    undeclared: bool,
}

/// Whether a script touches keys it does not declare (see
/// [`LuaScript::undeclared`]).
#[derive(Clone, Copy)]
enum Keys {
    Declared,
    Derived,
}

impl LuaScript {
    fn new(body: &str, keys: usize, touches: Keys) -> Self {
        let source = format!("{}\n{}", include_str!("lua/common.lua"), body);
        let hash = redis::Script::new(&source).get_hash().to_owned();
        Self { hash, source, keys, undeclared: matches!(touches, Keys::Derived) }
    }

    /// A call of this script: add its keys, then its arguments.
    pub(crate) fn prepare_invoke(&'static self) -> Invocation {
        // EVALSHA, the hash, the key count, then keys and arguments (a
        // guess at their number and size, to avoid regrowing).
        let mut cmd = Cmd::with_capacity(3 + self.keys + 8, 64 + 96 * (self.keys + 1));
        cmd.arg("EVALSHA").arg(&self.hash).arg(self.keys);
        Invocation { script: self, cmd, keys: 0, args: 0, misordered: false }
    }
}

/// One call of a [`LuaScript`], built straight into its `EVALSHA` command:
/// one buffer, where the driver's `ScriptInvocation` keeps a vector per key
/// and argument and copies them into a command at each call.
pub(crate) struct Invocation {
    script: &'static LuaScript,
    cmd: Cmd,
    keys: usize,
    args: usize,
    /// A key added after an argument: the command would be wrong.
    misordered: bool,
}

impl Invocation {
    /// Adds a key (`KEYS[i]`); all keys come before the arguments.
    pub(crate) fn key<T: ToRedisArgs>(&mut self, key: T) -> &mut Self {
        self.misordered |= self.args > 0;
        self.keys += 1;
        self.cmd.arg(key);
        self
    }

    /// Adds an argument (`ARGV[i]`).
    pub(crate) fn arg<T: ToRedisArgs>(&mut self, arg: T) -> &mut Self {
        self.args += 1;
        self.cmd.arg(arg);
        self
    }

    /// A call built with the wrong number of keys, or a key after an
    /// argument, is a bug: refused before anything is sent.
    fn check(&self, what: &str) -> Result<()> {
        if self.misordered || self.keys != self.script.keys {
            return Err(Error::Backend {
                backend: BACKEND,
                message: format!(
                    "{what}: bug: the script takes {} keys, the call gave {}{}",
                    self.script.keys,
                    self.keys,
                    if self.misordered { " (some after arguments)" } else { "" }
                ),
                retryable: false,
                source: None,
            });
        }
        Ok(())
    }

    /// The same call as `EVAL` with the source (for a server without the
    /// script).
    fn eval_cmd(&self) -> Cmd {
        let mut cmd = redis::cmd("EVAL");
        cmd.arg(&self.script.source);
        for arg in self.cmd.args_iter().skip(2) {
            if let Arg::Simple(bytes) = arg {
                cmd.arg(bytes);
            }
        }
        cmd
    }
}

// Create derives keys when it evicts at the cap; list and revoke-all read
// session hashes from the index; the rate-limit scripts name their buckets
// from the server clock.
pub(crate) static SESSION_CREATE: LazyLock<LuaScript> =
    LazyLock::new(|| LuaScript::new(include_str!("lua/session_create.lua"), 3, Keys::Derived));
pub(crate) static SESSION_TOUCH: LazyLock<LuaScript> =
    LazyLock::new(|| LuaScript::new(include_str!("lua/session_touch.lua"), 3, Keys::Declared));
pub(crate) static SESSION_SET_DATA: LazyLock<LuaScript> =
    LazyLock::new(|| LuaScript::new(include_str!("lua/session_set_data.lua"), 1, Keys::Declared));
pub(crate) static SESSION_REVOKE: LazyLock<LuaScript> =
    LazyLock::new(|| LuaScript::new(include_str!("lua/session_revoke.lua"), 3, Keys::Declared));
pub(crate) static SESSION_LIST: LazyLock<LuaScript> =
    LazyLock::new(|| LuaScript::new(include_str!("lua/session_list.lua"), 2, Keys::Derived));
pub(crate) static SESSION_REVOKE_ALL: LazyLock<LuaScript> =
    LazyLock::new(|| LuaScript::new(include_str!("lua/session_revoke_all.lua"), 2, Keys::Derived));
pub(crate) static RATELIMIT_CHECK: LazyLock<LuaScript> =
    LazyLock::new(|| LuaScript::new(include_str!("lua/ratelimit_check.lua"), 1, Keys::Derived));
pub(crate) static RATELIMIT_RESET: LazyLock<LuaScript> =
    LazyLock::new(|| LuaScript::new(include_str!("lua/ratelimit_reset.lua"), 1, Keys::Derived));
pub(crate) static RATELIMIT_RESET_USER: LazyLock<LuaScript> =
    LazyLock::new(|| LuaScript::new(include_str!("lua/ratelimit_reset_user.lua"), 1, Keys::Derived));

/// `text` as a Redis glob pattern matching exactly itself: `*`, `?`, `[`,
/// `]` and `\` escaped with a backslash.
pub(crate) fn glob_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 4);
    for c in text.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// A reply that does not have the shape the script returns: a bug or a key
/// written by someone else.
pub(crate) fn bad_reply(what: &str, detail: impl fmt::Display) -> Error {
    Error::Backend {
        backend: BACKEND,
        message: format!("{what}: unexpected reply: {detail}"),
        retryable: false,
        source: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glob_escape_matches_only_itself() {
        assert_eq!(glob_escape("selfrag:{u:1}:rl:"), "selfrag:{u:1}:rl:");
        assert_eq!(glob_escape(r"a*b?c[d]e\f"), r"a\*b\?c\[d\]e\\f");
    }

    #[test]
    fn user_keys_are_built_exactly() {
        let user = UserId::new();
        for prefix in ["", "selfrag:", "tenant-7/"] {
            let pool = RedisConfig::builder().url("redis://127.0.0.1:1").build().unwrap().create_pool().unwrap();
            let handle = Handle::new(pool.into()).with_prefix(prefix).unwrap();
            for suffix in [&[][..], &[":sessions"][..], &[":s:", "abc"][..], &[":rl:", "chat"][..]] {
                let key = handle.user_key(user, suffix);
                assert_eq!(key, format!("{prefix}{{u:{user}}}{}", suffix.concat()));
                assert_eq!(key.capacity(), key.len(), "one allocation of the exact size");
            }
        }
    }
}
