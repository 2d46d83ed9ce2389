//! Configuration of a [`QdrantIndex`].

use std::fmt;
use std::time::Duration;

use qdrant_client::qdrant::{read_consistency, ReadConsistencyType, WriteOrdering, WriteOrderingType};
use qdrant_client::Qdrant;
use selfrag_core::{Error, IndexSpec, Result};

use crate::index::QdrantIndex;

/// Environment variable with the server's gRPC URL, e.g.
/// `http://localhost:6334`.
pub const ENV_URL: &str = "QDRANT_URL";
/// Environment variable with the API key (optional).
pub const ENV_API_KEY: &str = "QDRANT_API_KEY";

/// How Qdrant orders a write across the replicas of a shard (the request's
/// `ordering`). Only matters with `replication_factor > 1`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum WriteOrder {
    /// Writes may be reordered between replicas; fastest (Qdrant's default).
    #[default]
    Weak,
    /// Writes go through a dynamically elected leader; may be inconsistent
    /// briefly when the leader changes.
    Medium,
    /// Writes go through the permanent leader: consistent, but unavailable
    /// while that leader is down.
    Strong,
}

impl From<WriteOrder> for WriteOrdering {
    fn from(o: WriteOrder) -> Self {
        let t = match o {
            WriteOrder::Weak => WriteOrderingType::Weak,
            WriteOrder::Medium => WriteOrderingType::Medium,
            WriteOrder::Strong => WriteOrderingType::Strong,
        };
        WriteOrdering { r#type: t as i32 }
    }
}

/// How many replicas of a shard a read (search, get, scroll, count) asks, and
/// which points it returns (the request's `read_consistency`). Only matters
/// with `replication_factor > 1`.
///
/// Stronger settings make the replicas *agree* (a point missing from a
/// queried replica is left out), they do not make a read see a write that a
/// replica has not applied yet; see the crate docs, "Guarantees", for what
/// makes a write visible to every read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum ReadConsistency {
    /// Nothing is sent: the server's default, which reads one replica per
    /// shard (fastest).
    #[default]
    ServerDefault,
    /// Asks this many replicas and returns the points present on all of
    /// them.
    Factor(u64),
    /// Qdrant's `Majority`.
    Majority,
    /// Qdrant's `Quorum`.
    Quorum,
    /// Asks every replica and returns the points present on all of them.
    All,
}

impl ReadConsistency {
    /// The request field, `None` for [`ReadConsistency::ServerDefault`].
    pub fn to_qdrant(self) -> Option<read_consistency::Value> {
        let t = |t: ReadConsistencyType| Some(read_consistency::Value::Type(t as i32));
        match self {
            ReadConsistency::ServerDefault => None,
            ReadConsistency::Factor(n) => Some(read_consistency::Value::Factor(n)),
            ReadConsistency::Majority => t(ReadConsistencyType::Majority),
            ReadConsistency::Quorum => t(ReadConsistencyType::Quorum),
            ReadConsistency::All => t(ReadConsistencyType::All),
        }
    }
}

/// Configuration and builder of a [`QdrantIndex`]: where the server is, which
/// collection, its vectors, and how it is created and written.
///
/// `Debug` never shows the API key (only whether there is one) and shows the
/// URL through [`redact_url`].
///
/// ```no_run
/// # async fn run() -> selfrag_core::Result<()> {
/// use selfrag_core::{Distance, IndexSpec};
/// use selfrag_qdrant::QdrantIndexConfig;
///
/// let spec = IndexSpec::new(384, Distance::Cosine)?;
/// let index = QdrantIndexConfig::from_env("chunks", spec)? // QDRANT_URL, QDRANT_API_KEY
///     .replication_factor(2)
///     .build()?;
/// let report = index.ensure().await?;
/// assert!(report.schema_problems().is_empty(), "{report}");
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct QdrantIndexConfig {
    /// gRPC URL of the server (port 6334 by default), `http://` or
    /// `https://`, with no user, password, query or fragment (the client
    /// ignores them, and would quote them in its errors): the key goes in
    /// `api_key`. `https://` (Qdrant Cloud) connects over TLS and verifies
    /// the server's certificate against the system's root certificates;
    /// `http://` sends everything, the key included, in clear text.
    pub url: String,
    /// API key sent with every request (the `api-key` header), if the
    /// server requires one. Printable ASCII without spaces
    /// ([`validate_api_key`]); never shown by `Debug` or any error.
    pub api_key: Option<String>,
    /// The collection this index is bound to.
    pub collection: String,
    /// Dimension and distance of the collection's vectors.
    pub spec: IndexSpec,
    /// Deadline of each request (default 30 s).
    pub timeout: Duration,
    /// Deadline for opening a connection (default 5 s).
    pub connect_timeout: Duration,
    /// Shards of the collection when `ensure` creates it (server default 1
    /// per node when `None`).
    pub shard_number: Option<u32>,
    /// Copies of each shard when `ensure` creates the collection (server
    /// default 1 when `None`).
    pub replication_factor: Option<u32>,
    /// Replicas that must acknowledge a write when `ensure` creates the
    /// collection (server default 1 when `None`).
    pub write_consistency_factor: Option<u32>,
    /// Ordering of writes across replicas.
    pub write_order: WriteOrder,
    /// Replicas asked by every read (search, get, scroll, count); the
    /// server's default (one replica) unless set.
    pub read_consistency: ReadConsistency,
    /// Most points per upsert request (default 256). A request is also cut
    /// at [`MAX_UPSERT_BYTES`](crate::convert::MAX_UPSERT_BYTES) of encoded
    /// points, under Qdrant's 32 MiB gRPC limit. Each request is acknowledged
    /// (`wait=true`) before the next is sent.
    pub upsert_batch_size: usize,
    /// Points per scroll page when reading a document (default 256).
    pub page_size: usize,
}

impl fmt::Debug for QdrantIndexConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The API key is a secret: show only whether there is one.
        f.debug_struct("QdrantIndexConfig")
            .field("url", &redact_url(&self.url))
            .field("api_key", &self.api_key.as_ref().map(|_| "<redacted>"))
            .field("collection", &self.collection)
            .field("spec", &self.spec)
            .field("timeout", &self.timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("shard_number", &self.shard_number)
            .field("replication_factor", &self.replication_factor)
            .field("write_consistency_factor", &self.write_consistency_factor)
            .field("write_order", &self.write_order)
            .field("read_consistency", &self.read_consistency)
            .field("upsert_batch_size", &self.upsert_batch_size)
            .field("page_size", &self.page_size)
            .finish()
    }
}

impl QdrantIndexConfig {
    /// Largest `upsert_batch_size` and `page_size`.
    pub const MAX_BATCH: usize = 10_000;

    /// A configuration for `collection` of `spec` on the server at `url`,
    /// with the defaults above.
    pub fn new(url: impl Into<String>, collection: impl Into<String>, spec: IndexSpec) -> Self {
        Self {
            url: url.into(),
            api_key: None,
            collection: collection.into(),
            spec,
            timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(5),
            shard_number: None,
            replication_factor: None,
            write_consistency_factor: None,
            write_order: WriteOrder::default(),
            read_consistency: ReadConsistency::default(),
            upsert_batch_size: 256,
            page_size: 256,
        }
    }

    /// A configuration reading the URL from `QDRANT_URL` and the API key
    /// from `QDRANT_API_KEY` (optional; an empty value counts as unset).
    ///
    /// # Errors
    /// [`Error::InvalidInput`] (`QDRANT_URL`) when it is not set.
    pub fn from_env(collection: impl Into<String>, spec: IndexSpec) -> Result<Self> {
        Self::from_vars(collection, spec, |name| std::env::var(name).ok())
    }

    /// [`QdrantIndexConfig::from_env`] with the variables read through `var`
    /// (for tests and for configuration sources other than the process
    /// environment).
    ///
    /// # Errors
    /// [`Error::InvalidInput`] (`QDRANT_URL`) when it is not set.
    pub fn from_vars(
        collection: impl Into<String>,
        spec: IndexSpec,
        var: impl Fn(&str) -> Option<String>,
    ) -> Result<Self> {
        let url = var(ENV_URL)
            .filter(|u| !u.is_empty())
            .ok_or_else(|| Error::invalid(ENV_URL, "is not set (the gRPC URL, e.g. http://localhost:6334)"))?;
        let api_key = var(ENV_API_KEY).filter(|k| !k.is_empty());
        Ok(Self { api_key, ..Self::new(url, collection, spec) })
    }

    /// Sets the API key.
    pub fn api_key(mut self, key: impl Into<String>) -> Self {
        self.api_key = Some(key.into());
        self
    }

    /// Sets the request deadline.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Sets the connect deadline.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Sets the shard count used when the collection is created.
    pub fn shard_number(mut self, n: u32) -> Self {
        self.shard_number = Some(n);
        self
    }

    /// Sets the replication factor used when the collection is created.
    pub fn replication_factor(mut self, n: u32) -> Self {
        self.replication_factor = Some(n);
        self
    }

    /// Sets the write consistency factor used when the collection is
    /// created.
    pub fn write_consistency_factor(mut self, n: u32) -> Self {
        self.write_consistency_factor = Some(n);
        self
    }

    /// Sets the write ordering.
    pub fn write_order(mut self, order: WriteOrder) -> Self {
        self.write_order = order;
        self
    }

    /// Sets the read consistency of every read.
    pub fn read_consistency(mut self, consistency: ReadConsistency) -> Self {
        self.read_consistency = consistency;
        self
    }

    /// Sets the points per upsert request.
    pub fn upsert_batch_size(mut self, n: usize) -> Self {
        self.upsert_batch_size = n;
        self
    }

    /// Sets the points per scroll page.
    pub fn page_size(mut self, n: usize) -> Self {
        self.page_size = n;
        self
    }

    /// Checks the configuration.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] naming the field: a URL [`validate_url`]
    /// refuses, a key [`validate_api_key`] refuses, a collection name
    /// Qdrant would refuse (empty, over 255 bytes, or with one of
    /// `/ \ : * ? " < > |`, a control character), zero timeouts, zero
    /// factors, or batch sizes outside `1..=MAX_BATCH`.
    pub fn validate(&self) -> Result<()> {
        validate_url("url", &self.url)?;
        if let Some(key) = &self.api_key {
            validate_api_key(key)?;
        }
        validate_collection_name(&self.collection)?;
        if self.timeout.is_zero() {
            return Err(Error::invalid("timeout", "must be positive"));
        }
        if self.connect_timeout.is_zero() {
            return Err(Error::invalid("connect_timeout", "must be positive"));
        }
        for (field, v) in [
            ("shard_number", self.shard_number),
            ("replication_factor", self.replication_factor),
            ("write_consistency_factor", self.write_consistency_factor),
        ] {
            if v == Some(0) {
                return Err(Error::invalid(field, "must be at least 1"));
            }
        }
        if self.read_consistency == ReadConsistency::Factor(0) {
            return Err(Error::invalid("read_consistency", "a factor must be at least 1"));
        }
        for (field, v) in [("upsert_batch_size", self.upsert_batch_size), ("page_size", self.page_size)] {
            if v == 0 || v > Self::MAX_BATCH {
                return Err(Error::invalid(field, format!("must be between 1 and {}, got {v}", Self::MAX_BATCH)));
            }
        }
        Ok(())
    }

    /// Builds the client and the index. Connecting is lazy: nothing is sent
    /// until the first call (call [`QdrantIndex::ensure`] first).
    ///
    /// The client's version check is turned off: it blocks in `build`, and
    /// only prints a warning when a server's minor version differs by more
    /// than one (qdrant-client 1.20 works with Qdrant 1.18 servers).
    ///
    /// # Errors
    /// [`Error::InvalidInput`] from [`QdrantIndexConfig::validate`], or
    /// (`url`) for a URL the client cannot parse.
    pub fn build(self) -> Result<QdrantIndex> {
        self.validate()?;
        let client = Qdrant::from_url(&self.url)
            .api_key(self.api_key.clone())
            .timeout(self.timeout)
            .connect_timeout(self.connect_timeout)
            .skip_compatibility_check()
            .build()
            .map_err(|e| Error::invalid("url", format!("{} is not a valid URL: {e}", redact_url(&self.url))))?;
        Ok(QdrantIndex::from_parts(client, self))
    }

    /// Builds the index on a client the caller already holds (its URL, key
    /// and timeouts are used; those of this configuration are ignored).
    ///
    /// # Errors
    /// [`Error::InvalidInput`] from [`QdrantIndexConfig::validate`].
    pub fn build_with_client(mut self, client: Qdrant) -> Result<QdrantIndex> {
        self.url.clone_from(&client.config.uri);
        self.validate()?;
        Ok(QdrantIndex::from_parts(client, self))
    }
}

/// What [`redact_url`] prints for a string that is not a URL with a host.
const UNPARSEABLE: &str = "<redacted: not a valid URL with a host>";
/// What [`redact_url`] prints for a URL with an `@` after its host.
const AMBIGUOUS: &str = "<redacted: URL with an `@` after the host (percent-encode it as %40)>";

/// A URL as it may be printed: never a password or key.
///
/// The URL is parsed (WHATWG rules: the userinfo ends at the *last* `@`
/// before the host, so a password holding an unencoded `@` is hidden whole)
/// and printed again from its parts, with `***` for the userinfo (user and
/// password: Qdrant uses neither, so a user name here is most likely a key)
/// and for the value of every query parameter whose name holds `key`, `token`,
/// `pass`, `secret`, `auth` or `cred` (`?api-key=...`); the fragment is left
/// out. A string that does not parse as a URL with a host, or holds an `@`
/// after the host (where
/// a password with an unencoded `/` or `?` spills, leaving the split
/// unclear), gives a fixed placeholder, never any of the string.
pub fn redact_url(url: &str) -> String {
    // Without a host (`user:password`, `localhost:6334`) the parser reads
    // a scheme and a path, which may be anything: print none of it.
    let Some(parsed) = url::Url::parse(url.trim()).ok().filter(|u| u.host_str().is_some_and(|h| !h.is_empty())) else {
        return UNPARSEABLE.to_owned();
    };
    if [Some(parsed.path()), parsed.query(), parsed.fragment()].into_iter().flatten().any(|p| p.contains('@')) {
        return AMBIGUOUS.to_owned();
    }
    let mut out = format!("{}://", parsed.scheme());
    // Qdrant uses no user names, so one here is most likely a key
    // (`https://<token>@host`): all of the userinfo is hidden.
    if !parsed.username().is_empty() || parsed.password().is_some() {
        out.push_str("***@");
    }
    out.push_str(parsed.host_str().unwrap_or_default());
    if let Some(port) = parsed.port() {
        out.push_str(&format!(":{port}"));
    }
    // `http://h:6334` parses with the path `/`: print it only when given.
    let after_scheme = url.trim().split_once("://").map_or("", |(_, rest)| rest);
    let path_given =
        after_scheme.find(['/', '?', '#', '\\']).is_some_and(|i| after_scheme[i..].starts_with(['/', '\\']));
    if parsed.path() != "/" || path_given {
        out.push_str(parsed.path());
    }
    if parsed.query().is_some() {
        let pairs: Vec<String> = parsed
            .query_pairs()
            .map(|(k, v)| if is_secret_key(&k) { format!("{k}=***") } else { format!("{k}={v}") })
            .collect();
        out.push('?');
        out.push_str(&pairs.join("&"));
    }
    out
}

/// Whether a query parameter's name says its value is a secret.
fn is_secret_key(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    ["key", "token", "pass", "secret", "auth", "cred"].iter().any(|s| key.contains(s))
}

/// Checks a Qdrant URL: `http://` or `https://` with a host, and no user,
/// password, query or fragment. The client sends none of those (the API key
/// goes in its own setting) but quotes the URL in its connection errors, so
/// a credential there would be ignored and then printed.
///
/// # Errors
/// [`Error::InvalidInput`] naming `field`. The message never quotes the
/// URL.
pub fn validate_url(field: &'static str, url: &str) -> Result<()> {
    let parsed = match url::Url::parse(url) {
        Ok(parsed) if matches!(parsed.scheme(), "http" | "https") => parsed,
        // The scheme is not quoted either: with the `://` missing, what
        // parses as one may be a user name or more.
        Ok(_) => return Err(Error::invalid(field, "must start with http:// or https://")),
        Err(e) => {
            return Err(Error::invalid(
                field,
                format!("must be an http:// or https:// URL with a host ({e}; the URL is not shown)"),
            ))
        }
    };
    if !url.starts_with("http://") && !url.starts_with("https://") {
        // The parser accepts `HTTP://`, ` http://` and `http:/h`; the client
        // does not.
        return Err(Error::invalid(field, "must start with http:// or https://"));
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(Error::invalid(
            field,
            "must not hold a user or password (the client ignores them; set the API key instead)",
        ));
    }
    if parsed.query().is_some() || parsed.fragment().is_some() {
        return Err(Error::invalid(
            field,
            "must not hold a query or fragment (the client ignores them; set the API key in its own setting)",
        ));
    }
    Ok(())
}

/// Checks an API key: not empty, printable ASCII with no space (what an
/// HTTP header carries unchanged). qdrant-client would otherwise fail each
/// call with an error that quotes the key.
///
/// # Errors
/// [`Error::InvalidInput`] (`api_key`); the message never quotes the key.
pub fn validate_api_key(key: &str) -> Result<()> {
    if key.is_empty() {
        return Err(Error::invalid("api_key", "is empty (leave it unset when the server needs none)"));
    }
    if !key.chars().all(|c| c.is_ascii_graphic()) {
        return Err(Error::invalid(
            "api_key",
            "must be printable ASCII without spaces (it is sent as an HTTP header; the key is not shown)",
        ));
    }
    Ok(())
}

/// Checks a collection name against Qdrant's rules.
///
/// # Errors
/// [`Error::InvalidInput`] (`collection`).
pub fn validate_collection_name(name: &str) -> Result<()> {
    if name.is_empty() || name.len() > 255 {
        return Err(Error::invalid("collection", format!("must be 1 to 255 bytes, got {}", name.len())));
    }
    if let Some(c) = name.chars().find(|c| c.is_control() || r#"/\:*?"<>|"#.contains(*c)) {
        return Err(Error::invalid("collection", format!("must not contain {c:?}")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use selfrag_core::Distance;

    fn spec() -> IndexSpec {
        IndexSpec::new(4, Distance::Cosine).unwrap()
    }

    #[test]
    fn defaults_and_setters() {
        let c = QdrantIndexConfig::new("http://localhost:6334", "chunks", spec())
            .api_key("k")
            .timeout(Duration::from_secs(3))
            .shard_number(2)
            .replication_factor(3)
            .write_consistency_factor(2)
            .write_order(WriteOrder::Strong)
            .read_consistency(ReadConsistency::Majority)
            .upsert_batch_size(64)
            .page_size(100);
        assert!(c.validate().is_ok());
        assert_eq!(c.shard_number, Some(2));
        assert_eq!(c.upsert_batch_size, 64);
        assert_eq!(WriteOrdering::from(c.write_order).r#type, WriteOrderingType::Strong as i32);
        let debug = format!("{c:?}");
        assert!(debug.contains("<redacted>") && !debug.contains("\"k\""), "{debug}");
        let d = QdrantIndexConfig::new("http://h:6334", "c", spec());
        assert_eq!((d.upsert_batch_size, d.page_size, d.write_order), (256, 256, WriteOrder::Weak));
        assert_eq!(d.read_consistency, ReadConsistency::ServerDefault);
        assert_eq!(d.read_consistency.to_qdrant(), None);
        assert_eq!(
            c.read_consistency.to_qdrant(),
            Some(read_consistency::Value::Type(ReadConsistencyType::Majority as i32))
        );
        assert_eq!(
            ReadConsistency::All.to_qdrant(),
            Some(read_consistency::Value::Type(ReadConsistencyType::All as i32))
        );
        assert_eq!(
            ReadConsistency::Quorum.to_qdrant(),
            Some(read_consistency::Value::Type(ReadConsistencyType::Quorum as i32))
        );
        assert_eq!(ReadConsistency::Factor(2).to_qdrant(), Some(read_consistency::Value::Factor(2)));
    }

    #[test]
    fn env_vars_give_url_and_optional_key() {
        let vars = |pairs: &'static [(&'static str, &'static str)]| {
            move |name: &str| pairs.iter().find(|(k, _)| *k == name).map(|(_, v)| (*v).to_owned())
        };
        let c = QdrantIndexConfig::from_vars("c", spec(), vars(&[("QDRANT_URL", "http://q:6334")])).unwrap();
        assert_eq!((c.url.as_str(), c.api_key.as_deref()), ("http://q:6334", None));
        let c = QdrantIndexConfig::from_vars(
            "c",
            spec(),
            vars(&[("QDRANT_URL", "https://q:6334"), ("QDRANT_API_KEY", "secret")]),
        )
        .unwrap();
        assert_eq!(c.api_key.as_deref(), Some("secret"));
        let c = QdrantIndexConfig::from_vars("c", spec(), vars(&[("QDRANT_URL", "http://q"), ("QDRANT_API_KEY", "")]));
        assert_eq!(c.unwrap().api_key, None);
        let e = QdrantIndexConfig::from_vars("c", spec(), vars(&[])).unwrap_err();
        assert_eq!(e.field(), Some("QDRANT_URL"));
        let e = QdrantIndexConfig::from_vars("c", spec(), vars(&[("QDRANT_URL", "")])).unwrap_err();
        assert_eq!(e.field(), Some("QDRANT_URL"));
    }

    #[test]
    fn bad_settings_name_their_field() {
        let base = || QdrantIndexConfig::new("http://localhost:6334", "chunks", spec());
        let field = |c: QdrantIndexConfig| c.validate().unwrap_err().field().map(str::to_owned);
        assert_eq!(field(QdrantIndexConfig { url: "localhost:6334".into(), ..base() }).as_deref(), Some("url"));
        assert_eq!(field(QdrantIndexConfig { collection: String::new(), ..base() }).as_deref(), Some("collection"));
        assert_eq!(field(QdrantIndexConfig { collection: "a/b".into(), ..base() }).as_deref(), Some("collection"));
        assert_eq!(field(QdrantIndexConfig { collection: "x".repeat(256), ..base() }).as_deref(), Some("collection"));
        assert_eq!(field(base().timeout(Duration::ZERO)).as_deref(), Some("timeout"));
        assert_eq!(field(base().connect_timeout(Duration::ZERO)).as_deref(), Some("connect_timeout"));
        assert_eq!(field(base().replication_factor(0)).as_deref(), Some("replication_factor"));
        assert_eq!(field(base().upsert_batch_size(0)).as_deref(), Some("upsert_batch_size"));
        assert_eq!(field(base().read_consistency(ReadConsistency::Factor(0))).as_deref(), Some("read_consistency"));
        assert_eq!(field(base().page_size(10_001)).as_deref(), Some("page_size"));
        assert!(base().build().is_ok(), "building is lazy and needs no server");
        assert_eq!(QdrantIndexConfig { url: "ftp://x".into(), ..base() }.build().unwrap_err().field(), Some("url"));
        assert!(validate_collection_name("selfrag-chunks_v2.1").is_ok());
    }

    #[test]
    fn urls_are_printed_without_secrets() {
        assert_eq!(redact_url("http://localhost:6334"), "http://localhost:6334");
        assert_eq!(redact_url("https://q.example/"), "https://q.example/");
        assert_eq!(redact_url("https://u:pw@q.example:6334/"), "https://***@q.example:6334/");
        assert_eq!(redact_url("https://token@q.example"), "https://***@q.example");
        assert_eq!(redact_url("http://h:6334/?api-key=k&x=1"), "http://h:6334/?api-key=***&x=1");
        assert_eq!(redact_url("http://[::1]:6334/base?TOKEN=k#frag"), "http://[::1]:6334/base?TOKEN=***");
        assert_eq!(redact_url("http://:p@ss@h"), "http://***@h", "userinfo ends at the last @");
        assert_eq!(redact_url("http://u:12/34@h"), AMBIGUOUS);
        assert_eq!(redact_url("http://u:12?34@h"), AMBIGUOUS);
        assert_eq!(redact_url("user:password"), UNPARSEABLE);
        assert_eq!(redact_url("http://u:pa ss@h"), "http://***@h");
        assert_eq!(redact_url("http://h:port"), UNPARSEABLE);
    }

    /// A key or a password in every place a URL can hold one: `Debug`,
    /// `validate` and `build` never show it, and the URL is refused.
    #[test]
    fn credentials_in_the_url_are_refused_without_being_quoted() {
        const PW: &str = "QdrantS3cret";
        for url in [
            format!("http://u:{PW}@h:6334"),
            format!("https://:{PW}@h"),
            format!("http://u:p@{PW}@h:6334"),
            format!("http://{PW}@h:6334"),
            format!("http://h:6334/?api-key={PW}"),
            format!("http://h:6334/#{PW}"),
            format!("http://u:{PW}/x@h:6334"),
            format!("u:{PW}@h:6334"),
            format!("{PW}:x"),
        ] {
            let config = QdrantIndexConfig::new(url.as_str(), "c", spec()).api_key(PW);
            let debug = format!("{config:?}");
            assert!(!debug.contains(PW), "{debug}");
            let err = config.validate().unwrap_err();
            assert_eq!(err.field(), Some("url"), "{url}");
            assert!(!format!("{err} {err:?}").contains(PW), "{url}: {err}");
            let err = config.build().unwrap_err();
            assert!(!format!("{err} {err:?}").contains(PW), "{url}: {err}");
        }
        let ok = QdrantIndexConfig::new("https://q.example:6334", "c", spec()).api_key(PW);
        assert!(ok.validate().is_ok());
        assert!(!format!("{:?}", ok.build().unwrap()).contains(PW));
    }

    /// An HTTP/2 listener on a free loopback port recording each request's
    /// path and `api-key` header, and answering every one at once with gRPC
    /// status 14 (unavailable). It tests what our client sends, not
    /// Qdrant's behaviour.
    async fn grpc_recorder() -> (String, tokio::sync::mpsc::UnboundedReceiver<(String, Option<String>)>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                let tx = tx.clone();
                tokio::spawn(async move {
                    let Ok(mut conn) = h2::server::handshake(socket).await else { return };
                    while let Some(Ok((request, mut respond))) = conn.accept().await {
                        let key = request.headers().get("api-key").map(|v| v.to_str().unwrap().to_owned());
                        let _ = tx.send((request.uri().path().to_owned(), key));
                        let answer = http::Response::builder()
                            .status(200)
                            .header("content-type", "application/grpc")
                            .header("grpc-status", "14")
                            .header("grpc-message", "recorder")
                            .body(())
                            .unwrap();
                        let _ = respond.send_response(answer, true);
                    }
                });
            }
        });
        (url, rx)
    }

    /// Issue 13: the key goes in the `api-key` header of every gRPC request
    /// (collection checks, writes, reads, counts), and no request carries
    /// one when there is no key.
    #[tokio::test]
    async fn every_grpc_request_carries_the_api_key() {
        use selfrag_core::{Chunk, SearchRequest, Tenant, VectorIndex};
        const KEY: &str = "grpc-key-0123456789";
        for key in [Some(KEY), None] {
            let (url, mut rx) = grpc_recorder().await;
            let mut config = QdrantIndexConfig::new(url, "chunks", spec()).timeout(Duration::from_secs(5));
            if let Some(key) = key {
                config = config.api_key(key);
            }
            let index = config.build().unwrap();
            let tenant = Tenant::new("t").unwrap();
            assert!(index.ensure().await.is_err());
            assert!(index.count(&tenant, None).await.is_err());
            assert!(index.upsert(&tenant, vec![Chunk::new("d", 0, "x", vec![0.5; 4])]).await.is_err());
            assert!(index.search(&tenant, &SearchRequest::new(vec![0.5; 4], 3)).await.is_err());
            assert!(index.document_chunks(&tenant, "d").await.is_err());
            drop(index);
            let mut paths = Vec::new();
            while let Ok(Some((path, sent))) = tokio::time::timeout(Duration::from_millis(500), rx.recv()).await {
                assert_eq!(sent.as_deref(), key, "{path}");
                paths.push(path);
            }
            for method in ["/qdrant.Points/Count", "/qdrant.Points/Upsert", "/qdrant.Points/Scroll"] {
                assert!(paths.iter().any(|p| p == method), "{method} not in {paths:?}");
            }
            assert!(paths.iter().any(|p| p.starts_with("/qdrant.Collections/")), "{paths:?}");
            assert!(paths.iter().any(|p| p.starts_with("/qdrant.Points/Query") || p.ends_with("/Search")), "{paths:?}");
        }
    }

    /// The first bytes a client sends to a listener that answers nothing.
    async fn first_bytes(scheme: &str) -> Vec<u8> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("{scheme}://127.0.0.1:{}", listener.local_addr().unwrap().port());
        let read = tokio::spawn(async move {
            use tokio::io::AsyncReadExt;
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut buf = vec![0u8; 4096];
            let n = socket.read(&mut buf).await.unwrap();
            buf.truncate(n);
            buf
        });
        let index = QdrantIndexConfig::new(url, "chunks", spec())
            .api_key("first-bytes-key-0123456789")
            .timeout(Duration::from_secs(2))
            .connect_timeout(Duration::from_secs(2))
            .build()
            .unwrap();
        let err = index.report().await.unwrap_err();
        assert!(!format!("{err} {err:?}").contains("first-bytes-key"), "{err}");
        read.await.unwrap()
    }

    /// `https://` makes qdrant-client speak TLS (a handshake record comes
    /// first, nothing readable); `http://` speaks HTTP/2 in clear text.
    #[tokio::test]
    async fn https_urls_use_tls() {
        let tls = first_bytes("https").await;
        assert_eq!(tls.first(), Some(&0x16), "a TLS handshake record, got {:?}", String::from_utf8_lossy(&tls));
        assert!(!String::from_utf8_lossy(&tls).contains("first-bytes-key"));
        let plain = first_bytes("http").await;
        assert!(plain.starts_with(b"PRI * HTTP/2.0"), "{:?}", String::from_utf8_lossy(&plain));
    }

    /// A key no header can carry is refused by `validate` and `build`
    /// (qdrant-client would quote it in every call's error).
    #[test]
    fn unusable_api_keys_are_refused_without_an_echo() {
        for key in ["", "with space-0123456789", "new\nline-0123456789", "tab\t-0123456789", "ünïcode-0123456789"] {
            let config = QdrantIndexConfig::new("https://q.example:6334", "c", spec()).api_key(key);
            let err = config.validate().unwrap_err();
            assert_eq!(err.field(), Some("api_key"), "{key:?}");
            assert!(!format!("{err} {err:?}").contains("0123456789"), "{err}");
            assert_eq!(config.build().unwrap_err().field(), Some("api_key"));
        }
        assert!(validate_api_key("abc.DEF_123-|~").is_ok());
    }
}
