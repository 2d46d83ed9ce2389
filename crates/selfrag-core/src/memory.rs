//! Memory logs: per-user, append-only records, queried by user and time range.

use std::fmt;
use std::str::FromStr;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Number, Value};
use time::OffsetDateTime;

use crate::clock::{check_timestamp, to_micros};
use crate::error::{Error, Result};
use crate::ids::{MemoryLogId, UserId};
use crate::validate;

/// The kind of a memory log (`type` column), e.g. `chat.user`, `fact`,
/// `summary`.
///
/// 1 to 64 ASCII characters: letters, digits, `_`, `-`, `.` and `:`,
/// starting with a letter.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct MemoryType(String);

impl MemoryType {
    /// The longest type, in bytes.
    pub const MAX_LEN: usize = 64;

    /// Checks and wraps a type name.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] (`type`) when the rules above are broken.
    pub fn new(name: impl Into<String>) -> Result<Self> {
        let name = name.into();
        if name.is_empty() {
            return Err(Error::invalid("type", "must not be empty"));
        }
        if name.len() > Self::MAX_LEN {
            return Err(Error::invalid("type", format!("is {} bytes, the limit is {}", name.len(), Self::MAX_LEN)));
        }
        if !name.starts_with(|c: char| c.is_ascii_alphabetic()) {
            return Err(Error::invalid("type", "must start with an ASCII letter"));
        }
        if let Some(bad) = name.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | ':'))) {
            return Err(Error::invalid(
                "type",
                format!("may hold only ASCII letters, digits, `_`, `-`, `.` and `:`, found {bad:?}"),
            ));
        }
        Ok(Self(name))
    }

    /// The type as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for MemoryType {
    type Error = Error;
    fn try_from(s: String) -> Result<Self> {
        Self::new(s)
    }
}

impl TryFrom<&str> for MemoryType {
    type Error = Error;
    fn try_from(s: &str) -> Result<Self> {
        Self::new(s)
    }
}

/// Things that can become a [`MemoryType`]: the type itself, or a string that
/// is checked.
pub trait IntoMemoryType {
    /// Converts, checking strings.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] (`type`) for a string that breaks the rules.
    fn into_memory_type(self) -> Result<MemoryType>;
}

impl IntoMemoryType for MemoryType {
    fn into_memory_type(self) -> Result<MemoryType> {
        Ok(self)
    }
}

impl IntoMemoryType for &MemoryType {
    fn into_memory_type(self) -> Result<MemoryType> {
        Ok(self.clone())
    }
}

impl IntoMemoryType for &str {
    fn into_memory_type(self) -> Result<MemoryType> {
        MemoryType::new(self)
    }
}

impl IntoMemoryType for String {
    fn into_memory_type(self) -> Result<MemoryType> {
        MemoryType::new(self)
    }
}

impl From<MemoryType> for String {
    fn from(t: MemoryType) -> String {
        t.0
    }
}

impl FromStr for MemoryType {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Self::new(s)
    }
}

impl fmt::Display for MemoryType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for MemoryType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MemoryType({:?})", self.0)
    }
}

/// A memory log to append: checked when built, so a store only ever receives
/// valid input.
///
/// Rules: `content` is 1 byte to [`NewMemoryLog::MAX_CONTENT_BYTES`] with no
/// NUL byte; `metadata` is a JSON object of at most 64 KiB with no NUL byte
/// in any key or string; the timestamp (default: now) is truncated to the
/// microsecond, the precision of Postgres (see [`NewMemoryLog::at`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "RawNewMemoryLog")]
pub struct NewMemoryLog {
    id: MemoryLogId,
    #[serde(rename = "type")]
    kind: MemoryType,
    content: String,
    metadata: Map<String, Value>,
    /// The metadata's size as compact JSON, measured when it was checked
    /// (batches are size-checked without serializing every log again).
    #[serde(skip)]
    metadata_bytes: usize,
    // RFC 3339, as `RawNewMemoryLog` reads it back (and as `MemoryLog` writes
    // it).
    #[serde(with = "time::serde::rfc3339")]
    timestamp: OffsetDateTime,
}

#[derive(Deserialize)]
struct RawNewMemoryLog {
    id: Option<MemoryLogId>,
    #[serde(rename = "type")]
    kind: String,
    content: String,
    #[serde(default)]
    metadata: Option<Value>,
    #[serde(default, with = "time::serde::rfc3339::option")]
    timestamp: Option<OffsetDateTime>,
}

impl TryFrom<RawNewMemoryLog> for NewMemoryLog {
    type Error = Error;
    fn try_from(raw: RawNewMemoryLog) -> Result<Self> {
        let mut log = NewMemoryLog::new(MemoryType::new(raw.kind)?, raw.content)?;
        if let Some(id) = raw.id {
            log = log.with_id(id);
        }
        if let Some(meta) = raw.metadata {
            log = log.with_metadata(meta)?;
        }
        if let Some(ts) = raw.timestamp {
            log = log.at(ts);
        }
        Ok(log)
    }
}

impl NewMemoryLog {
    /// The largest `content`, in bytes (1 MiB).
    pub const MAX_CONTENT_BYTES: usize = 1024 * 1024;

    /// A log of type `kind` with `content`, no metadata, stamped now.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] naming `type` or `content`.
    pub fn new(kind: impl IntoMemoryType, content: impl Into<String>) -> Result<Self> {
        let kind = kind.into_memory_type()?;
        let content = content.into();
        if content.is_empty() {
            return Err(Error::invalid("content", "must not be empty"));
        }
        validate::text("content", &content, Self::MAX_CONTENT_BYTES)?;
        Ok(Self {
            id: MemoryLogId::new(),
            kind,
            content,
            metadata: Map::new(),
            metadata_bytes: 2,
            timestamp: to_micros(OffsetDateTime::now_utc()),
        })
    }

    /// Sets the metadata, which must be a JSON object: a [`Value`] (e.g.
    /// `json!({...})`) or a `serde_json::Map`, the type
    /// [`MemoryQuery::metadata_contains`] takes.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] (`metadata`) for a non-object, NUL bytes, more
    /// than 64 KiB or more than 32 levels of nesting.
    pub fn with_metadata(mut self, metadata: impl Into<Value>) -> Result<Self> {
        (self.metadata, self.metadata_bytes) = validate::json_object_sized("metadata", metadata.into())?;
        Ok(self)
    }

    /// Sets the timestamp. Use it to import history; by default a log is
    /// stamped when it is built. Stores refuse timestamps outside the years
    /// 1..=9999 (see [`validate_batch`]).
    ///
    /// The timestamp is truncated to whole microseconds (towards the past,
    /// [`to_micros`]), the same rule every store
    /// applies to [`MemoryQuery::since`], [`MemoryQuery::until`] and cursors:
    /// so a log appended `.at(t)` is always found by `.since(t)` and always
    /// left out by `.until(t)`, whatever nanoseconds `t` carries.
    pub fn at(mut self, timestamp: OffsetDateTime) -> Self {
        self.timestamp = to_micros(timestamp.to_offset(time::UtcOffset::UTC));
        self
    }

    /// Sets the id, for imports that must keep ids. A store refuses an id
    /// that is already taken with [`Error::Conflict`].
    pub fn with_id(mut self, id: MemoryLogId) -> Self {
        self.id = id;
        self
    }

    /// The id the log will have.
    pub fn id(&self) -> MemoryLogId {
        self.id
    }
    /// The log's type.
    pub fn kind(&self) -> &MemoryType {
        &self.kind
    }
    /// The log's content.
    pub fn content(&self) -> &str {
        &self.content
    }
    /// The log's metadata.
    pub fn metadata(&self) -> &Map<String, Value> {
        &self.metadata
    }
    /// The log's timestamp.
    pub fn timestamp(&self) -> OffsetDateTime {
        self.timestamp
    }

    /// The stored record this log becomes for `user`.
    pub fn into_log(self, user_id: UserId) -> MemoryLog {
        MemoryLog {
            id: self.id,
            user_id,
            kind: self.kind,
            content: self.content,
            metadata: self.metadata,
            timestamp: self.timestamp,
        }
    }
}

/// A stored memory log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MemoryLog {
    /// The record's id.
    pub id: MemoryLogId,
    /// The user who owns it.
    pub user_id: UserId,
    /// Its type.
    #[serde(rename = "type")]
    pub kind: MemoryType,
    /// Its content.
    pub content: String,
    /// Its metadata (a JSON object, `{}` when none was given).
    pub metadata: Map<String, Value>,
    /// When it happened (UTC, microsecond precision).
    #[serde(with = "time::serde::rfc3339")]
    pub timestamp: OffsetDateTime,
}

impl MemoryLog {
    /// The position of this log in "newest first" order, for a
    /// [`MemoryQuery::after`] cursor.
    pub fn cursor(&self) -> Cursor {
        Cursor { timestamp: self.timestamp, id: self.id }
    }
}

/// A keyset-pagination position: the `(timestamp, id)` of the last record of
/// a page. The next page holds records strictly older in that order, so
/// records appended meanwhile never shift pages (no duplicates, no gaps).
///
/// Its string form (`Display` / `FromStr`) is opaque and URL-safe, for handing
/// to API clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Cursor {
    /// Timestamp of the last record seen.
    pub timestamp: OffsetDateTime,
    /// Id of the last record seen.
    pub id: MemoryLogId,
}

impl fmt::Display for Cursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let nanos = self.timestamp.unix_timestamp_nanos();
        write!(f, "{nanos}_{}", self.id.as_uuid().simple())
    }
}

impl FromStr for Cursor {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        let bad = || Error::invalid("cursor", "not a cursor produced by this library");
        let (nanos, id) = s.split_once('_').ok_or_else(bad)?;
        let nanos: i128 = nanos.parse().map_err(|_| bad())?;
        let timestamp = OffsetDateTime::from_unix_timestamp_nanos(nanos).map_err(|_| bad())?;
        let id = MemoryLogId::parse(id).map_err(|_| bad())?;
        Ok(Cursor { timestamp, id })
    }
}

/// A query over one user's memory logs, newest first.
///
/// Build it with the methods below; a store checks it with
/// [`MemoryQuery::validate`] before running it.
///
/// Timestamps: every store truncates `since`, `until` and the cursor's
/// timestamp to whole microseconds ([`to_micros`]),
/// exactly as [`NewMemoryLog::at`] truncates a log's timestamp, and compares
/// after that. The builder methods truncate at once; values set on the
/// fields directly are truncated when the query runs.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct MemoryQuery {
    /// Only logs at or after this time (truncated to the microsecond).
    pub since: Option<OffsetDateTime>,
    /// Only logs strictly before this time (truncated to the microsecond).
    pub until: Option<OffsetDateTime>,
    /// Only logs of one of these types (empty: any type).
    pub types: Vec<MemoryType>,
    /// Only logs whose metadata contains this JSON object (Postgres `@>`
    /// semantics: every key of the filter is present with a containing value;
    /// numbers are equal when their decimal values are, see [`json_contains`]).
    pub metadata_contains: Option<Map<String, Value>>,
    /// Continue after this cursor (from [`MemoryPage::next`]).
    pub after: Option<Cursor>,
    /// Page size, 1 to [`MemoryQuery::MAX_LIMIT`]; `None` means
    /// [`MemoryQuery::DEFAULT_LIMIT`].
    pub limit: Option<u32>,
}

impl MemoryQuery {
    /// Page size when none is set.
    pub const DEFAULT_LIMIT: u32 = 50;
    /// Largest page size.
    pub const MAX_LIMIT: u32 = 1000;

    /// A query for the newest logs of any type.
    pub fn new() -> Self {
        Self::default()
    }

    /// Only logs at or after `t`, truncated to whole microseconds as
    /// [`NewMemoryLog::at`] truncates: a log appended `.at(t)` is always
    /// found by `.since(t)`.
    pub fn since(mut self, t: OffsetDateTime) -> Self {
        self.since = Some(to_micros(t));
        self
    }

    /// Only logs strictly before `t`, truncated to whole microseconds as
    /// [`NewMemoryLog::at`] truncates: a log appended `.at(t)` is always left
    /// out by `.until(t)` (and found by `.until(t + 1µs)`).
    pub fn until(mut self, t: OffsetDateTime) -> Self {
        self.until = Some(to_micros(t));
        self
    }

    /// Only logs of type `kind` (call again to allow several types).
    pub fn of_type(mut self, kind: MemoryType) -> Self {
        self.types.push(kind);
        self
    }

    /// Only logs whose metadata contains `filter` (a JSON object).
    pub fn metadata_contains(mut self, filter: Map<String, Value>) -> Self {
        self.metadata_contains = Some(filter);
        self
    }

    /// Continue after `cursor` (its timestamp truncated to whole
    /// microseconds; a cursor from [`MemoryPage::next`] already is).
    pub fn after(mut self, cursor: Cursor) -> Self {
        self.after = Some(Cursor { timestamp: to_micros(cursor.timestamp), ..cursor });
        self
    }

    /// Page size.
    pub fn limit(mut self, limit: u32) -> Self {
        self.limit = Some(limit);
        self
    }

    /// The page size in effect.
    pub fn effective_limit(&self) -> u32 {
        self.limit.unwrap_or(Self::DEFAULT_LIMIT)
    }

    /// Checks the query.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] naming `limit` (0 or above the maximum),
    /// `since`, `until` or `cursor` (outside the years 1..=9999), `until`
    /// (not after `since` once both are truncated to the microsecond),
    /// `types` (more than 64), or `metadata_contains` (NUL bytes, too large).
    pub fn validate(&self) -> Result<()> {
        let limit = self.effective_limit();
        if limit == 0 || limit > Self::MAX_LIMIT {
            return Err(Error::invalid("limit", format!("must be between 1 and {}, got {limit}", Self::MAX_LIMIT)));
        }
        if let Some(since) = self.since {
            check_timestamp("since", since)?;
        }
        if let Some(until) = self.until {
            check_timestamp("until", until)?;
        }
        if let Some(after) = &self.after {
            check_timestamp("cursor", after.timestamp)?;
        }
        if let (Some(since), Some(until)) = (self.since, self.until) {
            // Compared as the stores compare them: a range that truncation
            // leaves empty is refused like any other empty range.
            if to_micros(until) <= to_micros(since) {
                return Err(Error::invalid("until", "must be after `since` (at microsecond precision)"));
            }
        }
        if self.types.len() > 64 {
            return Err(Error::invalid("types", "at most 64 types per query"));
        }
        if let Some(filter) = &self.metadata_contains {
            validate::json_map("metadata_contains", filter)?;
        }
        Ok(())
    }

    /// Whether `log` passes the query's filters (time range, types, metadata,
    /// cursor). The reference semantics every backend implements.
    pub fn matches(&self, log: &MemoryLog) -> bool {
        // One rule for every timestamp: stored ones were truncated to whole
        // microseconds by `NewMemoryLog::at`, and bounds are truncated the
        // same way, so `at(t)` is inside `since(t)` and outside `until(t)`.
        if self.since.is_some_and(|s| log.timestamp < to_micros(s)) {
            return false;
        }
        if self.until.is_some_and(|u| log.timestamp >= to_micros(u)) {
            return false;
        }
        if !self.types.is_empty() && !self.types.contains(&log.kind) {
            return false;
        }
        if let Some(filter) = &self.metadata_contains {
            if !json_contains_map(&log.metadata, filter) {
                return false;
            }
        }
        if let Some(after) = &self.after {
            // Newest first: the next page holds strictly older positions.
            if (log.timestamp, log.id) >= (to_micros(after.timestamp), after.id) {
                return false;
            }
        }
        true
    }
}

/// Postgres `jsonb @>` semantics on values.
///
/// Numbers compare as Postgres compares them: stores send metadata as
/// serde_json's text, which Postgres reads as exact `numeric` values, and
/// `numeric` equality ignores scale. So two numbers match when the decimal
/// values of their serde_json texts are equal: `1` matches `1.0` and `-0.0`
/// matches `0`, but `u64::MAX` does not match `u64::MAX - 1`, nor
/// `u64::MAX as f64` (written `1.8446744073709552e+19`), and `2^53 + 1` does
/// not match `2^53` as a float, although each pair is one `f64`.
pub fn json_contains(haystack: &Value, needle: &Value) -> bool {
    match (haystack, needle) {
        (Value::Object(h), Value::Object(n)) => json_contains_map(h, n),
        (Value::Array(h), Value::Array(n)) => n.iter().all(|nv| h.iter().any(|hv| json_contains(hv, nv))),
        // Postgres lets a top-level array contain a bare primitive; here the
        // top level is always an object, so nested values must match in kind.
        (Value::Number(h), Value::Number(n)) => numbers_equal(h, n),
        (h, n) => h == n,
    }
}

/// Whether two JSON numbers have the same decimal value, as Postgres
/// `numeric` equality decides for the text serde_json writes for them.
fn numbers_equal(a: &Number, b: &Number) -> bool {
    // Integers are exact in both representations: no text needed.
    let int = |n: &Number| n.as_i64().map(i128::from).or_else(|| n.as_u64().map(i128::from));
    if let (Some(x), Some(y)) = (int(a), int(b)) {
        return x == y;
    }
    // Otherwise compare the texts Postgres would receive. Comparing as `f64`
    // is not the same: distinct integers above 2^53 (and an integer and a
    // float that merely round to the same `f64`) would match. The text is
    // also right when serde_json's `arbitrary_precision` feature keeps the
    // number's original digits.
    let (ta, tb) = (a.to_string(), b.to_string());
    match (Decimal::parse(&ta), Decimal::parse(&tb)) {
        (Some(x), Some(y)) => x == y,
        // Not JSON number syntax: serde_json never writes that; compare the
        // texts rather than guess.
        _ => ta == tb,
    }
}

/// A decimal number in canonical form: `(-1)^negative × 0.digits × 10^exponent`
/// with no leading or trailing zero in `digits`. Zero is `(false, "", 0)`, so
/// `-0.0`, `0` and `0e5` are one value, as in Postgres `numeric`.
#[derive(Debug, PartialEq, Eq)]
struct Decimal<'a> {
    negative: bool,
    digits: DigitRun<'a>,
    exponent: i64,
}

/// The significant digits of a decimal, which may straddle its decimal point:
/// the digits of `int` then those of `frac`, as written.
#[derive(Debug, Clone, Copy)]
struct DigitRun<'a> {
    int: &'a str,
    frac: &'a str,
}

impl DigitRun<'_> {
    fn bytes(&self) -> impl Iterator<Item = u8> + '_ {
        self.int.bytes().chain(self.frac.bytes())
    }
}

impl PartialEq for DigitRun<'_> {
    fn eq(&self, other: &Self) -> bool {
        self.bytes().eq(other.bytes())
    }
}

impl Eq for DigitRun<'_> {}

impl<'a> Decimal<'a> {
    /// Parses JSON number syntax (`-?digits(.digits)?([eE][+-]?digits)?`);
    /// `None` for anything else, or an exponent beyond `i64`.
    fn parse(text: &'a str) -> Option<Self> {
        let (negative, rest) = match text.strip_prefix('-') {
            Some(rest) => (true, rest),
            None => (false, text),
        };
        let (mantissa, exp) = match rest.find(['e', 'E']) {
            Some(at) => (&rest[..at], Some(&rest[at + 1..])),
            None => (rest, None),
        };
        let exp: i64 = match exp {
            Some(e) => {
                let digits = e.strip_prefix(['+', '-']).unwrap_or(e);
                if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                    return None;
                }
                e.strip_prefix('+').unwrap_or(e).parse().ok()?
            }
            None => 0,
        };
        let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
        let all_digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
        if int.is_empty() || !all_digits(int) || !all_digits(frac) || (mantissa.contains('.') && frac.is_empty()) {
            return None;
        }
        // 0.d1d2... × 10^point is the value of `int.frac`; every leading
        // zero dropped moves the point one place left.
        let mut point = i64::try_from(int.len()).ok()?;
        let int_sig = int.trim_start_matches('0');
        point -= i64::try_from(int.len() - int_sig.len()).ok()?;
        let frac_sig = if int_sig.is_empty() {
            let trimmed = frac.trim_start_matches('0');
            point -= i64::try_from(frac.len() - trimmed.len()).ok()?;
            trimmed
        } else {
            frac
        };
        let (int_sig, frac_sig) = if frac_sig.trim_end_matches('0').is_empty() {
            (int_sig.trim_end_matches('0'), "")
        } else {
            (int_sig, frac_sig.trim_end_matches('0'))
        };
        if int_sig.is_empty() && frac_sig.is_empty() {
            return Some(Decimal { negative: false, digits: DigitRun { int: "", frac: "" }, exponent: 0 });
        }
        Some(Decimal { negative, digits: DigitRun { int: int_sig, frac: frac_sig }, exponent: point.checked_add(exp)? })
    }
}

fn json_contains_map(haystack: &Map<String, Value>, needle: &Map<String, Value>) -> bool {
    needle.iter().all(|(k, nv)| haystack.get(k).is_some_and(|hv| json_contains(hv, nv)))
}

/// One page of a [`MemoryQuery`].
#[derive(Debug, Clone, PartialEq)]
pub struct MemoryPage {
    /// The logs, newest first (by `timestamp`, then `id`, both descending).
    pub logs: Vec<MemoryLog>,
    /// Where the next page starts, or `None` when this page is the last.
    pub next: Option<Cursor>,
}

impl MemoryPage {
    /// The page made from up to `limit + 1` logs fetched in order: stores
    /// fetch one log more than the page size to learn whether another page
    /// follows, without counting.
    pub fn from_overfetch(mut logs: Vec<MemoryLog>, limit: u32) -> Self {
        let limit = limit as usize;
        let next = if logs.len() > limit {
            logs.truncate(limit);
            logs.last().map(MemoryLog::cursor)
        } else {
            None
        };
        MemoryPage { logs, next }
    }
}

/// Most logs in one [`MemoryStore::append_batch`].
pub const MAX_BATCH: usize = 10_000;
/// Most bytes of content and metadata in one [`MemoryStore::append_batch`]
/// (64 MiB): one batch is one statement, and it must stay far below what a
/// server accepts in one message.
pub const MAX_BATCH_BYTES: usize = 64 * 1024 * 1024;

/// Per-user, append-only memory logs.
///
/// # Contract
/// - Every method is scoped to `user`: a record of another user is invisible
///   (reads return `None` or leave it out, deletes do nothing), even when its
///   id is given.
/// - Writes for a user that does not exist fail with [`Error::NotFound`]
///   (`what = "user"`); reads for such a user return nothing.
/// - Query results are ordered newest first by `(timestamp, id)` descending,
///   and pages are keyset-paginated on that pair.
#[async_trait]
pub trait MemoryStore: fmt::Debug + Send + Sync + 'static {
    /// Appends one log for `user` and returns the stored record.
    ///
    /// # Errors
    /// [`Error::NotFound`] for an unknown user, [`Error::Conflict`] when the
    /// log's id is taken; backend errors otherwise.
    async fn append(&self, user: UserId, log: NewMemoryLog) -> Result<MemoryLog>;

    /// Appends `logs` for `user` atomically: either all are stored or none.
    /// An empty batch is a no-op.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] (`logs`) for more than [`MAX_BATCH`] logs,
    /// more than [`MAX_BATCH_BYTES`], or the same id twice; (`logs[i].timestamp`)
    /// for a timestamp outside the years 1..=9999; [`Error::Conflict`] when an id is taken;
    /// [`Error::NotFound`] for an unknown user. Nothing is written on error.
    async fn append_batch(&self, user: UserId, logs: Vec<NewMemoryLog>) -> Result<Vec<MemoryLog>>;

    /// The log `id` of `user`, or `None` when absent or owned by another user.
    async fn get(&self, user: UserId, id: MemoryLogId) -> Result<Option<MemoryLog>>;

    /// One page of `user`'s logs matching `query`, newest first.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] when [`MemoryQuery::validate`] fails.
    async fn query(&self, user: UserId, query: &MemoryQuery) -> Result<MemoryPage>;

    /// Deletes the log `id` of `user`; returns whether it existed. Another
    /// user's log is never deleted.
    async fn delete(&self, user: UserId, id: MemoryLogId) -> Result<bool>;

    /// Deletes up to `max_rows` of `user`'s memory logs and returns how many
    /// it deleted: one bounded step of erasing a user's logs (see
    /// `Storage::erase_user` in the `selfrag` facade).
    ///
    /// # Contract
    /// - Only `user`'s logs are deleted; the user itself stays (delete it
    ///   with [`UserStore::delete_user`]).
    /// - One call is one bounded unit of work (one statement on Postgres,
    ///   one lock in process), so erasing a user with many logs never holds
    ///   one large transaction: call it until it returns `0`. Logs appended
    ///   meanwhile may or may not be deleted by the calls already running.
    /// - A call that fails deleted nothing or one whole batch; calling again
    ///   is always safe. An unknown user, or a user with no log, returns `0`.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] (`max_rows`) for 0 or above
    /// [`MAX_PURGE_BATCH`]; backend errors otherwise.
    async fn purge_user_logs(&self, user: UserId, max_rows: u32) -> Result<u64>;
}

/// Most logs one [`MemoryStore::purge_user_logs`] call deletes.
pub const MAX_PURGE_BATCH: u32 = 10_000;

/// Checks the `max_rows` of [`MemoryStore::purge_user_logs`].
///
/// # Errors
/// [`Error::InvalidInput`] (`max_rows`) for 0 or above [`MAX_PURGE_BATCH`].
pub fn validate_purge_batch(max_rows: u32) -> Result<()> {
    if max_rows == 0 || max_rows > MAX_PURGE_BATCH {
        return Err(Error::invalid("max_rows", format!("must be between 1 and {MAX_PURGE_BATCH}, got {max_rows}")));
    }
    Ok(())
}

/// The users that own memory logs and sessions.
///
/// # Contract
/// Deleting a user deletes everything the user owns in the same store
/// (memory logs, sessions): in Postgres by `ON DELETE CASCADE`.
#[async_trait]
pub trait UserStore: fmt::Debug + Send + Sync + 'static {
    /// Creates a user with a new id.
    async fn create_user(&self) -> Result<UserId>;

    /// Creates the user `id` if it does not exist; returns whether it was
    /// created. For ids that come from an existing identity system.
    async fn ensure_user(&self, id: UserId) -> Result<bool>;

    /// Whether the user exists.
    async fn user_exists(&self, id: UserId) -> Result<bool>;

    /// Deletes the user and everything it owns; returns whether it existed.
    async fn delete_user(&self, id: UserId) -> Result<bool>;
}

/// Checks the batch rules of [`MemoryStore::append_batch`] that do not need
/// the store: size and duplicate ids.
///
/// # Errors
/// [`Error::InvalidInput`] (`logs`).
pub fn validate_batch(logs: &[NewMemoryLog]) -> Result<()> {
    if logs.len() > MAX_BATCH {
        return Err(Error::invalid("logs", format!("{} logs in one batch, the limit is {MAX_BATCH}", logs.len())));
    }
    let mut bytes = 0usize;
    for (i, log) in logs.iter().enumerate() {
        check_timestamp("timestamp", log.timestamp)
            .map_err(|e| Error::invalid(format!("logs[{i}].timestamp"), e.to_string()))?;
        bytes += log.content.len() + log.metadata_bytes;
    }
    if bytes > MAX_BATCH_BYTES {
        return Err(Error::invalid(
            "logs",
            format!("the batch holds {bytes} bytes of content and metadata, the limit is {MAX_BATCH_BYTES}"),
        ));
    }
    let mut ids: Vec<_> = logs.iter().map(|l| l.id).collect();
    ids.sort_unstable();
    if let Some(w) = ids.windows(2).find(|w| w[0] == w[1]) {
        return Err(Error::invalid("logs", format!("memory log id {} appears twice in the batch", w[0])));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn type_rules() {
        assert!(MemoryType::new("chat.user").is_ok());
        assert!(MemoryType::new("a:b-c_d.e1").is_ok());
        for bad in ["", "1abc", "with space", "é", &"x".repeat(65)] {
            assert_eq!(MemoryType::new(bad).unwrap_err().field(), Some("type"), "{bad:?}");
        }
    }

    #[test]
    fn content_and_metadata_rules() {
        assert_eq!(NewMemoryLog::new("fact", "").unwrap_err().field(), Some("content"));
        assert_eq!(NewMemoryLog::new("fact", "a\0").unwrap_err().field(), Some("content"));
        let big = "x".repeat(NewMemoryLog::MAX_CONTENT_BYTES + 1);
        assert_eq!(NewMemoryLog::new("fact", big).unwrap_err().field(), Some("content"));
        let log = NewMemoryLog::new("fact", "ok").unwrap();
        assert_eq!(log.clone().with_metadata(json!([1])).unwrap_err().field(), Some("metadata"));
        // A Map works as well as a Value: the type metadata filters take.
        let Value::Object(map) = json!({"k": 1}) else { unreachable!() };
        let from_map = log.clone().with_metadata(map.clone()).unwrap();
        assert_eq!(from_map.metadata(), &map);
        assert!(MemoryQuery::new().metadata_contains(map).matches(&from_map.into_log(UserId::new())));
        assert!(log.with_metadata(json!({"k": 1})).is_ok());
    }

    #[test]
    fn deserialize_validates() {
        let ok: NewMemoryLog =
            serde_json::from_value(json!({"type": "fact", "content": "x", "metadata": {"a": 1}})).unwrap();
        assert_eq!(ok.metadata()["a"], 1);
        assert!(serde_json::from_value::<NewMemoryLog>(json!({"type": "fact", "content": ""})).is_err());
        assert!(serde_json::from_value::<NewMemoryLog>(json!({"type": "fact", "content": "x", "metadata": 3})).is_err());
    }

    #[test]
    fn query_validation() {
        assert!(MemoryQuery::new().validate().is_ok());
        assert_eq!(MemoryQuery::new().limit(0).validate().unwrap_err().field(), Some("limit"));
        assert_eq!(MemoryQuery::new().limit(1001).validate().unwrap_err().field(), Some("limit"));
        let t = OffsetDateTime::now_utc();
        assert_eq!(MemoryQuery::new().since(t).until(t).validate().unwrap_err().field(), Some("until"));
    }

    #[test]
    fn cursor_round_trips() {
        let log = NewMemoryLog::new("fact", "x").unwrap().into_log(UserId::new());
        let c = log.cursor();
        assert_eq!(c.to_string().parse::<Cursor>().unwrap(), c);
        assert_eq!("garbage".parse::<Cursor>().unwrap_err().field(), Some("cursor"));
    }

    #[test]
    fn containment_follows_postgres() {
        let doc = json!({"a": 1, "tags": ["x", "y"], "n": {"b": true, "c": 2}});
        assert!(json_contains(&doc, &json!({})));
        assert!(json_contains(&doc, &json!({"a": 1})));
        assert!(json_contains(&doc, &json!({"tags": ["y"]})));
        assert!(json_contains(&doc, &json!({"n": {"b": true}})));
        assert!(!json_contains(&doc, &json!({"a": 2})));
        assert!(!json_contains(&doc, &json!({"tags": ["z"]})));
        assert!(!json_contains(&doc, &json!({"missing": null})));
        assert!(!json_contains(&doc, &json!({"tags": "x"})));
    }

    #[test]
    fn containment_compares_numbers_by_exact_decimal_value() {
        // Each row was checked against Postgres 15:
        // `select '{"n": <stored>}'::jsonb @> '{"n": <filter>}'`, with the
        // text serde_json writes for each value.
        let two53 = 1u64 << 53;
        let cases: Vec<(Value, Value, bool)> = vec![
            (json!(u64::MAX), json!(u64::MAX), true),
            (json!(u64::MAX), json!(u64::MAX - 1), false),
            (json!(u64::MAX), json!(u64::MAX as f64), false),
            (json!(i64::MIN), json!(i64::MIN), true),
            (json!(i64::MIN), json!(i64::MIN + 1), false),
            (json!(i64::MIN), json!(i64::MIN as f64), false),
            (json!(1), json!(1.0), true),
            (json!(1.0), json!(1), true),
            (json!(0), json!(-0.0), true),
            (json!(two53), json!(two53 as f64), true),
            (json!(two53 + 1), json!(two53 as f64), false),
            (json!(two53 + 1), json!(two53), false),
            (json!(1e30), json!(1e30), true),
            (json!(0.1), json!(0.1), true),
            (json!(0.1), json!(0.10000000000000002), false),
            (json!(1e-7), json!(1e-7), true),
            (json!(10_000_000_000_000_000_000u64), json!(1e19), true),
            (json!(100), json!(1e2), true),
            (json!([1, 2.5]), json!([1.0]), true),
            (json!([u64::MAX]), json!([u64::MAX - 1]), false),
        ];
        for (stored, filter, want) in cases {
            let (doc, needle) = (json!({ "n": stored }), json!({ "n": filter }));
            assert_eq!(json_contains(&doc, &needle), want, "{doc} @> {needle}");
        }
    }

    #[test]
    fn decimal_canonical_form() {
        let canon = |s: &str| {
            let d = Decimal::parse(s).unwrap_or_else(|| panic!("{s} does not parse"));
            (d.negative, d.digits.bytes().map(char::from).collect::<String>(), d.exponent)
        };
        for zero in ["0", "-0", "0.0", "-0.0", "0e5", "0.000E-3", "000"] {
            assert_eq!(canon(zero), (false, String::new(), 0), "{zero}");
        }
        assert_eq!(canon("1"), (false, "1".into(), 1));
        assert_eq!(canon("100.000"), (false, "1".into(), 3));
        assert_eq!(canon("1e+30"), canon("1000000000000000000000000000000"));
        assert_eq!(canon("-0.00120"), (true, "12".into(), -2));
        assert_eq!(canon("1.2e-2"), canon("0.012"));
        assert_eq!(canon("12.5E1"), canon("125"));
        assert_eq!(canon("1.8446744073709552e+19"), canon("18446744073709552000"));
        assert_ne!(canon("1.8446744073709552e+19"), canon("18446744073709551615"));
        assert_ne!(canon("12"), canon("1.2"));
        assert_ne!(canon("-1"), canon("1"));
        for bad in ["", "-", "1.", ".5", "1e", "1e+", "e5", "1x", "1.2.3", "1e5.5", "NaN", "1e99999999999999999999"] {
            assert!(Decimal::parse(bad).is_none(), "{bad} parsed");
        }
    }

    #[test]
    fn at_then_since_and_until_agree_whatever_the_nanoseconds() {
        use time::macros::datetime;
        let user = UserId::new();
        for t in [
            datetime!(2026-03-01 12:00:00.000000999 UTC),
            datetime!(2026-03-01 12:00:00.000000001 UTC),
            datetime!(2026-03-01 12:00:00.123456789 UTC),
            datetime!(1999-12-31 23:59:59.999999999 UTC),
            datetime!(1969-12-31 23:59:59.999999999 UTC),
            datetime!(1950-06-15 08:30:00.000000500 +02:00),
        ] {
            let log = NewMemoryLog::new("fact", "x").unwrap().at(t).into_log(user);
            assert!(MemoryQuery::new().since(t).matches(&log), "since({t}) misses at({t})");
            assert!(!MemoryQuery::new().until(t).matches(&log), "until({t}) holds at({t})");
            // The same through fields set directly, without the builders.
            let direct = MemoryQuery { since: Some(t), ..MemoryQuery::new() };
            assert!(direct.matches(&log), "a direct since({t}) misses at({t})");
            let direct = MemoryQuery { until: Some(t), ..MemoryQuery::new() };
            assert!(!direct.matches(&log), "a direct until({t}) holds at({t})");
            let next = t + time::Duration::MICROSECOND;
            assert!(MemoryQuery::new().since(t).until(next).matches(&log));
            assert!(!MemoryQuery::new().since(next).matches(&log));
            // A cursor at the log's own position excludes it, finer
            // nanoseconds or not.
            let cursor = Cursor { timestamp: t, id: log.id };
            assert!(!MemoryQuery::new().after(cursor).matches(&log));
            assert!(!MemoryQuery { after: Some(cursor), ..MemoryQuery::new() }.matches(&log));
        }
        // Bounds that truncate to one microsecond leave no range.
        let t = datetime!(2026-03-01 12:00:00.000000001 UTC);
        let q = MemoryQuery { since: Some(t), until: Some(t + time::Duration::nanoseconds(998)), ..MemoryQuery::new() };
        assert_eq!(q.validate().unwrap_err().field(), Some("until"));
    }

    #[test]
    fn batch_limits_bytes_and_timestamps() {
        let big = "x".repeat(NewMemoryLog::MAX_CONTENT_BYTES);
        let logs: Vec<_> = (0..65).map(|_| NewMemoryLog::new("fact", big.clone()).unwrap()).collect();
        assert_eq!(validate_batch(&logs).unwrap_err().field(), Some("logs"));
        let old = NewMemoryLog::new("fact", "x").unwrap().at(time::macros::datetime!(-100-01-01 00:00 UTC));
        assert_eq!(validate_batch(&[old]).unwrap_err().field(), Some("logs[0].timestamp"));
        let ancient = time::macros::datetime!(-5000-01-01 00:00 UTC);
        assert_eq!(MemoryQuery::new().since(ancient).validate().unwrap_err().field(), Some("since"));
    }

    #[test]
    fn batch_byte_limit_counts_metadata() {
        // 63 logs of 1 MiB of content leave 1 MiB under the cap; metadata of
        // 60 KiB each (3.7 MiB together) pushes the batch over it.
        let big = "x".repeat(NewMemoryLog::MAX_CONTENT_BYTES);
        let meta = json!({"pad": "m".repeat(60 * 1024)});
        let plain: Vec<_> = (0..63).map(|_| NewMemoryLog::new("fact", big.clone()).unwrap()).collect();
        assert!(validate_batch(&plain).is_ok());
        let with_meta: Vec<_> = plain.iter().cloned().map(|l| l.with_metadata(meta.clone()).unwrap()).collect();
        let err = validate_batch(&with_meta).unwrap_err();
        assert_eq!(err.field(), Some("logs"), "{err}");
        let want = 63 * (NewMemoryLog::MAX_CONTENT_BYTES + serde_json::to_vec(&meta).unwrap().len());
        assert!(err.to_string().contains(&format!("holds {want} bytes")), "{err}");
        // Logs read back from JSON carry the same measured size (PartialEq
        // compares it).
        let small: Vec<_> = (0..3)
            .map(|i| NewMemoryLog::new("fact", format!("log {i}")).unwrap().with_metadata(json!({"i": i})).unwrap())
            .collect();
        let parsed: Vec<NewMemoryLog> = serde_json::from_str(&serde_json::to_string(&small).unwrap()).unwrap();
        assert_eq!(parsed, small);
        assert_eq!(parsed[1].metadata_bytes, serde_json::to_vec(&json!({"i": 1})).unwrap().len());
    }

    #[test]
    fn batch_rules() {
        let a = NewMemoryLog::new("fact", "a").unwrap();
        assert!(validate_batch(std::slice::from_ref(&a)).is_ok());
        assert_eq!(validate_batch(&[a.clone(), a]).unwrap_err().field(), Some("logs"));
    }
}
