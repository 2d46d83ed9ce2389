//! Vector indexes of document chunks, scoped by tenant, with filtered
//! similarity search.
//!
//! # Payload schema
//! Every backend stores a chunk's payload under these keys (the Qdrant
//! backends index the first six):
//!
//! | key | type | index |
//! | --- | --- | --- |
//! | `tenant` | keyword | keyword, `is_tenant` |
//! | `document_type` | keyword | keyword |
//! | `tags` | keyword array | keyword |
//! | `source` | keyword | keyword |
//! | `document_id` | keyword | keyword |
//! | `chunk_index` | integer | integer (lookup + range, for ordering) |
//! | `chunk_id` | keyword (UUID) | none |
//! | `text` | string | none |
//! | `extra` | object | none: free-form keys, filterable as [`Field::Extra`] |
//!
//! # Scores
//! Higher is always better, on every backend:
//!
//! | distance | score |
//! | --- | --- |
//! | [`Distance::Cosine`] | cosine similarity, in `[-1, 1]` |
//! | [`Distance::Dot`] | dot product |
//! | [`Distance::Euclid`] | **negated** Euclidean distance, `≤ 0` |
//! | [`Distance::Manhattan`] | **negated** Manhattan distance, `≤ 0` |
//!
//! A `score_threshold` keeps hits with `score ≥ threshold` in these terms.
//!
//! ## Precision and thresholds
//! Each backend computes scores with its own f32 arithmetic (an engine
//! normalises cosine vectors on write and sums in f32, often with SIMD);
//! [`Distance::score`], the reference, accumulates in f64. So scores agree
//! with the reference up to rounding, not to the last bit (the conformance
//! suite allows `1e-3` for vectors with components in `[-1, 1]`), and two
//! backends may order near-ties differently. The threshold rule is therefore
//! stated on the score the backend returns:
//!
//! - A search with `score_threshold` `t` keeps exactly the hits whose
//!   returned `score`, as that backend computes it, is `>= t`: a hit whose
//!   score equals `t` is always kept, one a single ulp below never. It
//!   returns what the same search without a threshold returns, cut before
//!   the first score below `t` (and at `limit`).
//! - Consequently, measured against the reference (or another backend), a
//!   chunk whose reference score is at least `t + tolerance` is kept, one
//!   below `t - tolerance` is not, and one within the tolerance of `t` may
//!   go either way: its fate is decided by the backend's own rounding. Two
//!   chunks tying on one backend may not tie on another.
//!
//! Choose thresholds with this in mind: a threshold equal to a score the
//! reference computed is not guaranteed to include that chunk on every
//! backend; a threshold equal to a score a backend returned includes it on
//! that backend.

use std::fmt;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use uuid::Uuid;

use crate::error::{Error, Result};
use crate::ids::{ChunkId, Tenant, POINT_NAMESPACE};
use crate::validate;

/// How vectors are compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Distance {
    /// Cosine similarity (vectors are normalised on write).
    Cosine,
    /// Dot product.
    Dot,
    /// Euclidean (L2) distance.
    Euclid,
    /// Manhattan (L1) distance.
    Manhattan,
}

impl Distance {
    /// The score of `a` against `b` under the convention of this module
    /// (higher is better), accumulated in f64 and rounded once to f32. The
    /// reference for every backend, which agree with it up to rounding (see
    /// the module docs, "Precision and thresholds").
    // Accumulated in f64 so the reference is more exact than any backend;
    // narrowing the result back to the f32 of the API is intended.
    #[allow(clippy::cast_possible_truncation)]
    pub fn score(self, a: &[f32], b: &[f32]) -> f32 {
        match self {
            Distance::Cosine => {
                let (mut dot, mut na, mut nb) = (0f64, 0f64, 0f64);
                for (x, y) in a.iter().zip(b) {
                    let (x, y) = (f64::from(*x), f64::from(*y));
                    dot += x * y;
                    na += x * x;
                    nb += y * y;
                }
                (dot / (na.sqrt() * nb.sqrt())) as f32
            }
            Distance::Dot => a.iter().zip(b).map(|(x, y)| f64::from(*x) * f64::from(*y)).sum::<f64>() as f32,
            Distance::Euclid => {
                -(a.iter().zip(b).map(|(x, y)| (f64::from(*x) - f64::from(*y)).powi(2)).sum::<f64>().sqrt() as f32)
            }
            Distance::Manhattan => {
                -(a.iter().zip(b).map(|(x, y)| (f64::from(*x) - f64::from(*y)).abs()).sum::<f64>() as f32)
            }
        }
    }
}

impl fmt::Display for Distance {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Distance::Cosine => "cosine",
            Distance::Dot => "dot",
            Distance::Euclid => "euclid",
            Distance::Manhattan => "manhattan",
        })
    }
}

/// The shape of an index's vectors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "RawIndexSpec")]
pub struct IndexSpec {
    dimension: usize,
    distance: Distance,
}

#[derive(Deserialize)]
struct RawIndexSpec {
    dimension: usize,
    distance: Distance,
}

impl TryFrom<RawIndexSpec> for IndexSpec {
    type Error = Error;
    fn try_from(raw: RawIndexSpec) -> Result<Self> {
        IndexSpec::new(raw.dimension, raw.distance)
    }
}

impl IndexSpec {
    /// Largest dimension accepted.
    pub const MAX_DIMENSION: usize = 65_536;

    /// Vectors of `dimension` compared by `distance`.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] (`dimension`) for 0 or above
    /// [`IndexSpec::MAX_DIMENSION`].
    pub fn new(dimension: usize, distance: Distance) -> Result<Self> {
        if dimension == 0 || dimension > Self::MAX_DIMENSION {
            return Err(Error::invalid(
                "dimension",
                format!("must be between 1 and {}, got {dimension}", Self::MAX_DIMENSION),
            ));
        }
        Ok(Self { dimension, distance })
    }

    /// The dimension.
    pub fn dimension(&self) -> usize {
        self.dimension
    }

    /// The distance.
    pub fn distance(&self) -> Distance {
        self.distance
    }

    /// Checks a vector against this spec: its length, that every component is
    /// finite, and (for cosine) that it is not all zeros.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] naming `field` or `field[i]`.
    pub fn check_vector(&self, field: &'static str, v: &[f32]) -> Result<()> {
        if v.len() != self.dimension {
            return Err(Error::invalid(field, format!("has dimension {}, the index has {}", v.len(), self.dimension)));
        }
        if let Some(i) = v.iter().position(|x| !x.is_finite()) {
            return Err(Error::invalid(format!("{field}[{i}]"), format!("is {}, not a finite number", v[i])));
        }
        // Engines compute norms in f32: a norm that overflows breaks every
        // distance, and Qdrant leaves a cosine vector whose squared norm is
        // below f32::EPSILON unnormalised, so it would score wrongly.
        let squared_norm: f32 = v.iter().map(|x| x * x).sum();
        if !squared_norm.is_finite() {
            return Err(Error::invalid(field, "is too large: its squared norm overflows f32"));
        }
        if self.distance == Distance::Cosine && squared_norm < f32::EPSILON {
            return Err(Error::invalid(
                field,
                "has (almost) zero length, which has no direction for cosine: its squared norm must be at least f32::EPSILON",
            ));
        }
        Ok(())
    }
}

/// The payload of a chunk: what it is and where it came from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChunkPayload {
    /// The document the chunk belongs to.
    pub document_id: String,
    /// The chunk's position in its document, from 0.
    pub chunk_index: u32,
    /// The document's type, e.g. `pdf`, `markdown`.
    pub document_type: String,
    /// Where the document came from, e.g. a URL or a path.
    pub source: String,
    /// Tags for filtering.
    pub tags: Vec<String>,
    /// The chunk's text.
    pub text: String,
    /// Free-form extra fields, filterable as [`Field::Extra`].
    pub extra: Map<String, Value>,
}

/// Largest `text` of a chunk, in bytes.
pub const MAX_TEXT_BYTES: usize = 256 * 1024;
/// Largest keyword (`document_id`, `document_type`, `source`, a tag), in bytes.
pub const MAX_KEYWORD_BYTES: usize = 1024;
/// Most tags on one chunk.
pub const MAX_TAGS: usize = 64;
/// Most chunks in one upsert.
pub const MAX_UPSERT: usize = 10_000;

impl ChunkPayload {
    /// A payload for chunk `chunk_index` of `document_id` with `text`; other
    /// fields empty.
    pub fn new(document_id: impl Into<String>, chunk_index: u32, text: impl Into<String>) -> Self {
        Self {
            document_id: document_id.into(),
            chunk_index,
            document_type: String::new(),
            source: String::new(),
            tags: Vec::new(),
            text: text.into(),
            extra: Map::new(),
        }
    }

    /// Checks the payload's fields.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] naming the field: an empty `document_id`, NUL
    /// bytes or oversized strings, too many tags, or a non-conforming `extra`.
    pub fn validate(&self) -> Result<()> {
        validate_document_id(&self.document_id)?;
        validate::text("document_type", &self.document_type, MAX_KEYWORD_BYTES)?;
        validate::text("source", &self.source, MAX_KEYWORD_BYTES)?;
        validate::text("text", &self.text, MAX_TEXT_BYTES)?;
        if self.tags.len() > MAX_TAGS {
            return Err(Error::invalid("tags", format!("at most {MAX_TAGS} tags, got {}", self.tags.len())));
        }
        for (i, tag) in self.tags.iter().enumerate() {
            if tag.is_empty() {
                return Err(Error::invalid(format!("tags[{i}]"), "must not be empty"));
            }
            validate::text(format!("tags[{i}]"), tag, MAX_KEYWORD_BYTES)?;
        }
        validate::json_map("extra", &self.extra)?;
        if has_unsigned_beyond_i64(&Value::Object(self.extra.clone())) {
            return Err(Error::invalid("extra", "integers above i64::MAX cannot be stored exactly"));
        }
        Ok(())
    }

    /// The stored payload as JSON, with `tenant` and `chunk_id`: the layout
    /// in the module docs.
    pub fn to_json(&self, tenant: &Tenant, id: ChunkId) -> Map<String, Value> {
        let mut m = Map::new();
        m.insert(keys::TENANT.into(), Value::String(tenant.as_str().to_owned()));
        m.insert(keys::CHUNK_ID.into(), Value::String(id.to_string()));
        m.insert(keys::DOCUMENT_ID.into(), Value::String(self.document_id.clone()));
        m.insert(keys::CHUNK_INDEX.into(), Value::from(self.chunk_index));
        m.insert(keys::DOCUMENT_TYPE.into(), Value::String(self.document_type.clone()));
        m.insert(keys::SOURCE.into(), Value::String(self.source.clone()));
        m.insert(keys::TAGS.into(), Value::Array(self.tags.iter().cloned().map(Value::String).collect()));
        m.insert(keys::TEXT.into(), Value::String(self.text.clone()));
        m.insert(keys::EXTRA.into(), Value::Object(self.extra.clone()));
        m
    }

    /// Reads a stored payload back (the inverse of [`ChunkPayload::to_json`]).
    ///
    /// # Errors
    /// [`Error::Incompatible`] when a key is missing or of the wrong type:
    /// the point was not written by this library.
    pub fn from_json(backend: &'static str, m: &Map<String, Value>) -> Result<(ChunkId, Self)> {
        let bad = |key: &str| Error::Incompatible {
            backend,
            message: format!("stored point has no valid `{key}` payload field"),
        };
        let s = |key: &'static str| m.get(key).and_then(Value::as_str).map(str::to_owned).ok_or_else(|| bad(key));
        let id = ChunkId::parse(&s(keys::CHUNK_ID)?).map_err(|_| bad(keys::CHUNK_ID))?;
        let chunk_index = m
            .get(keys::CHUNK_INDEX)
            .and_then(Value::as_u64)
            .and_then(|v| u32::try_from(v).ok())
            .ok_or_else(|| bad(keys::CHUNK_INDEX))?;
        let tags = m
            .get(keys::TAGS)
            .and_then(Value::as_array)
            .ok_or_else(|| bad(keys::TAGS))?
            .iter()
            .map(|t| t.as_str().map(str::to_owned).ok_or_else(|| bad(keys::TAGS)))
            .collect::<Result<_>>()?;
        let extra = match m.get(keys::EXTRA) {
            Some(Value::Object(e)) => e.clone(),
            None => Map::new(),
            Some(_) => return Err(bad(keys::EXTRA)),
        };
        Ok((
            id,
            ChunkPayload {
                document_id: s(keys::DOCUMENT_ID)?,
                chunk_index,
                document_type: s(keys::DOCUMENT_TYPE)?,
                source: s(keys::SOURCE)?,
                tags,
                text: s(keys::TEXT)?,
                extra,
            },
        ))
    }
}

fn has_unsigned_beyond_i64(v: &Value) -> bool {
    match v {
        Value::Number(n) => n.is_u64() && n.as_i64().is_none(),
        Value::Array(items) => items.iter().any(has_unsigned_beyond_i64),
        Value::Object(m) => m.values().any(has_unsigned_beyond_i64),
        _ => false,
    }
}

/// Checks a document id given to [`VectorIndex::document_chunks`] or
/// [`VectorIndex::delete_document`]: the rules of [`ChunkPayload::document_id`].
///
/// # Errors
/// [`Error::InvalidInput`] (`document_id`).
pub fn validate_document_id(document_id: &str) -> Result<()> {
    if document_id.is_empty() {
        return Err(Error::invalid("document_id", "must not be empty"));
    }
    validate::text("document_id", document_id, MAX_KEYWORD_BYTES)
}

/// Payload key names (see the module docs).
pub mod keys {
    /// `tenant`.
    pub const TENANT: &str = "tenant";
    /// `chunk_id`.
    pub const CHUNK_ID: &str = "chunk_id";
    /// `document_id`.
    pub const DOCUMENT_ID: &str = "document_id";
    /// `chunk_index`.
    pub const CHUNK_INDEX: &str = "chunk_index";
    /// `document_type`.
    pub const DOCUMENT_TYPE: &str = "document_type";
    /// `source`.
    pub const SOURCE: &str = "source";
    /// `tags`.
    pub const TAGS: &str = "tags";
    /// `text`.
    pub const TEXT: &str = "text";
    /// `extra`.
    pub const EXTRA: &str = "extra";
}

/// A chunk to write: id, payload and vector.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Chunk {
    /// Its id (idempotency key).
    pub id: ChunkId,
    /// Its payload.
    pub payload: ChunkPayload,
    /// Its embedding.
    pub vector: Vec<f32>,
}

impl Chunk {
    /// Chunk `chunk_index` of `document_id`, with the deterministic id
    /// [`ChunkId::for_chunk`].
    pub fn new(document_id: impl Into<String>, chunk_index: u32, text: impl Into<String>, vector: Vec<f32>) -> Self {
        let payload = ChunkPayload::new(document_id, chunk_index, text);
        Self { id: ChunkId::for_chunk(&payload.document_id, chunk_index), payload, vector }
    }

    /// Sets `document_type`.
    pub fn document_type(mut self, t: impl Into<String>) -> Self {
        self.payload.document_type = t.into();
        self
    }

    /// Sets `source`.
    pub fn source(mut self, s: impl Into<String>) -> Self {
        self.payload.source = s.into();
        self
    }

    /// Sets `tags`.
    pub fn tags<I, S>(mut self, tags: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.payload.tags = tags.into_iter().map(Into::into).collect();
        self
    }

    /// Sets one extra payload field.
    pub fn extra(mut self, key: impl Into<String>, value: impl Into<Value>) -> Self {
        self.payload.extra.insert(key.into(), value.into());
        self
    }
}

/// Checks a whole upsert against `spec` before anything is sent: count,
/// duplicate ids, each payload and each vector. Field names carry the chunk's
/// position, e.g. `chunks[3].vector[7]`.
///
/// # Errors
/// [`Error::InvalidInput`].
pub fn validate_chunks(spec: &IndexSpec, chunks: &[Chunk]) -> Result<()> {
    if chunks.len() > MAX_UPSERT {
        return Err(Error::invalid(
            "chunks",
            format!("{} chunks in one upsert, the limit is {MAX_UPSERT}", chunks.len()),
        ));
    }
    let mut ids: Vec<_> = chunks.iter().map(|c| c.id).collect();
    ids.sort_unstable();
    if let Some(w) = ids.windows(2).find(|w| w[0] == w[1]) {
        return Err(Error::invalid("chunks", format!("chunk id {} appears twice", w[0])));
    }
    for (i, c) in chunks.iter().enumerate() {
        let prefix = |e: Error| match e {
            Error::InvalidInput { field, reason } => Error::invalid(format!("chunks[{i}].{field}"), reason),
            other => other,
        };
        c.payload.validate().map_err(prefix)?;
        spec.check_vector("vector", &c.vector).map_err(prefix)?;
    }
    Ok(())
}

/// The point id a chunk is stored under for a tenant: a UUIDv5 of the tenant
/// and the chunk id, so that two tenants' chunks with the same id never
/// overwrite each other.
pub fn point_id(tenant: &Tenant, id: ChunkId) -> Uuid {
    let mut name = Vec::with_capacity(tenant.as_str().len() + 17);
    name.extend_from_slice(tenant.as_str().as_bytes());
    name.push(0x1f);
    name.extend_from_slice(id.as_uuid().as_bytes());
    Uuid::new_v5(&POINT_NAMESPACE, &name)
}

/// A stored chunk, without its vector.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChunkRecord {
    /// Its id.
    pub id: ChunkId,
    /// Its payload.
    pub payload: ChunkPayload,
}

/// A search hit.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScoredChunk {
    /// The chunk's id.
    pub id: ChunkId,
    /// Its score (higher is better; see the module docs).
    pub score: f32,
    /// Its payload.
    pub payload: ChunkPayload,
}

/// A payload field a [`Filter`] can test.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Field {
    /// `document_type` (keyword).
    DocumentType,
    /// `tags` (keyword array: a condition holds when any tag satisfies it).
    Tags,
    /// `source` (keyword).
    Source,
    /// `document_id` (keyword).
    DocumentId,
    /// `chunk_index` (integer).
    ChunkIndex,
    /// A key of the free-form `extra` object, stored at `extra.<key>`.
    /// The key is 1 to 64 ASCII letters, digits or `_`.
    Extra(String),
}

impl Field {
    /// The payload path of the field, e.g. `tags` or `extra.lang`.
    pub fn path(&self) -> String {
        match self {
            Field::DocumentType => keys::DOCUMENT_TYPE.into(),
            Field::Tags => keys::TAGS.into(),
            Field::Source => keys::SOURCE.into(),
            Field::DocumentId => keys::DOCUMENT_ID.into(),
            Field::ChunkIndex => keys::CHUNK_INDEX.into(),
            Field::Extra(k) => format!("{}.{k}", keys::EXTRA),
        }
    }

    fn validate(&self) -> Result<()> {
        if let Field::Extra(k) = self {
            if k.is_empty() || k.len() > 64 || !k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(Error::invalid(
                    "filter.field",
                    format!("extra key {k:?} must be 1 to 64 ASCII letters, digits or `_`"),
                ));
            }
        }
        Ok(())
    }

    fn get<'a>(&self, payload: &'a Map<String, Value>) -> Option<&'a Value> {
        match self {
            Field::Extra(k) => payload.get(keys::EXTRA)?.as_object()?.get(k),
            other => payload.get(other.path().as_str()),
        }
    }

    fn is_keyword(&self) -> bool {
        matches!(self, Field::DocumentType | Field::Tags | Field::Source | Field::DocumentId)
    }
}

/// A value a [`Filter`] compares with.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(untagged)]
pub enum MatchValue {
    /// A keyword.
    Keyword(String),
    /// An integer.
    Integer(i64),
    /// A boolean.
    Bool(bool),
}

impl From<&str> for MatchValue {
    fn from(s: &str) -> Self {
        MatchValue::Keyword(s.to_owned())
    }
}
impl From<String> for MatchValue {
    fn from(s: String) -> Self {
        MatchValue::Keyword(s)
    }
}
impl From<i64> for MatchValue {
    fn from(i: i64) -> Self {
        MatchValue::Integer(i)
    }
}
impl From<u32> for MatchValue {
    fn from(i: u32) -> Self {
        MatchValue::Integer(i64::from(i))
    }
}
impl From<bool> for MatchValue {
    fn from(b: bool) -> Self {
        MatchValue::Bool(b)
    }
}

/// The values of an `AnyOf`, sorted by kind: the shapes a match-any
/// condition of Qdrant can take.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AnyOfValues<'a> {
    /// All keywords.
    Keywords(Vec<String>),
    /// All integers.
    Integers(Vec<i64>),
    /// Booleans, or a mix of kinds: no single match-any form.
    Mixed(&'a [MatchValue]),
}

impl<'a> AnyOfValues<'a> {
    /// Sorts `values` by kind.
    pub fn of(values: &'a [MatchValue]) -> Self {
        let keywords: Option<Vec<String>> = values
            .iter()
            .map(|v| match v {
                MatchValue::Keyword(s) => Some(s.clone()),
                _ => None,
            })
            .collect();
        if let Some(k) = keywords {
            return AnyOfValues::Keywords(k);
        }
        let integers: Option<Vec<i64>> = values
            .iter()
            .map(|v| match v {
                MatchValue::Integer(i) => Some(*i),
                _ => None,
            })
            .collect();
        match integers {
            Some(i) => AnyOfValues::Integers(i),
            None => AnyOfValues::Mixed(values),
        }
    }
}

impl MatchValue {
    fn matches(&self, v: &Value) -> bool {
        match (self, v) {
            (MatchValue::Keyword(k), Value::String(s)) => k == s,
            (MatchValue::Integer(i), Value::Number(n)) => n.as_i64() == Some(*i),
            (MatchValue::Bool(b), Value::Bool(x)) => b == x,
            // Arrays match when any element does (Qdrant semantics).
            (m, Value::Array(items)) => items.iter().any(|i| !i.is_array() && m.matches(i)),
            _ => false,
        }
    }
}

/// A filter over chunk payloads.
///
/// Semantics (those of Qdrant, which every backend follows):
/// - `Eq` holds when the field equals the value; on an array field (`tags`)
///   when any element does. A missing field never matches.
/// - `AnyOf` holds when the field (or any element) equals any of the values.
/// - `Range` holds when the field is an integer within the bounds (all given
///   bounds must hold).
/// - `All` holds when every sub-filter holds (an empty `All` matches
///   everything); `Any` when at least one does (it must not be empty);
///   `Not` when its sub-filter does not hold (so `Not(Eq)` matches chunks
///   where the field is missing).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Filter {
    /// Every sub-filter holds.
    All(Vec<Filter>),
    /// At least one sub-filter holds.
    Any(Vec<Filter>),
    /// The sub-filter does not hold.
    Not(Box<Filter>),
    /// The field equals the value.
    Eq {
        /// The field.
        field: Field,
        /// The value.
        value: MatchValue,
    },
    /// The field equals one of the values.
    AnyOf {
        /// The field.
        field: Field,
        /// The values (at least one).
        values: Vec<MatchValue>,
    },
    /// The field is an integer within the bounds.
    Range {
        /// The field (`chunk_index` or an extra key).
        field: Field,
        /// Lower bound, inclusive.
        gte: Option<i64>,
        /// Lower bound, exclusive.
        gt: Option<i64>,
        /// Upper bound, inclusive.
        lte: Option<i64>,
        /// Upper bound, exclusive.
        lt: Option<i64>,
    },
}

impl Filter {
    /// Most conditions (leaves) in one filter.
    pub const MAX_CONDITIONS: usize = 256;
    /// Deepest nesting of `All`/`Any`/`Not`.
    pub const MAX_DEPTH: usize = 16;
    /// Most values in one `AnyOf`.
    pub const MAX_ANY_OF: usize = 1024;

    /// `field == value`.
    pub fn eq(field: Field, value: impl Into<MatchValue>) -> Self {
        Filter::Eq { field, value: value.into() }
    }

    /// `field` is one of `values`.
    pub fn any_of<I, V>(field: Field, values: I) -> Self
    where
        I: IntoIterator<Item = V>,
        V: Into<MatchValue>,
    {
        Filter::AnyOf { field, values: values.into_iter().map(Into::into).collect() }
    }

    /// `gte <= field < lt` (either bound optional).
    pub fn range(field: Field, gte: Option<i64>, lt: Option<i64>) -> Self {
        Filter::Range { field, gte, gt: None, lte: None, lt }
    }

    /// All of `filters`.
    pub fn all(filters: impl IntoIterator<Item = Filter>) -> Self {
        Filter::All(filters.into_iter().collect())
    }

    /// Any of `filters`.
    pub fn any(filters: impl IntoIterator<Item = Filter>) -> Self {
        Filter::Any(filters.into_iter().collect())
    }

    /// The negation of `filter`.
    #[allow(clippy::should_implement_trait)]
    pub fn not(filter: Filter) -> Self {
        Filter::Not(Box::new(filter))
    }

    /// Checks the filter's shape: non-empty `Any` and `AnyOf`, ranges with at
    /// least one bound on integer-capable fields, keyword values on keyword
    /// fields, integer values on `chunk_index`, valid extra keys, and the
    /// size limits.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] naming `filter` or `filter.field`.
    pub fn validate(&self) -> Result<()> {
        let mut leaves = 0;
        self.validate_inner(1, &mut leaves)
    }

    fn validate_inner(&self, depth: usize, leaves: &mut usize) -> Result<()> {
        if depth > Self::MAX_DEPTH {
            return Err(Error::invalid("filter", format!("nests deeper than {}", Self::MAX_DEPTH)));
        }
        let check_value = |field: &Field, v: &MatchValue| -> Result<()> {
            let keyword_ok = |s: &str| !s.contains('\0') && s.len() <= MAX_KEYWORD_BYTES;
            let ok = match (field, v) {
                (f, MatchValue::Keyword(s)) if f.is_keyword() => keyword_ok(s),
                (Field::ChunkIndex, MatchValue::Integer(_)) => true,
                (Field::Extra(_), MatchValue::Keyword(s)) => keyword_ok(s),
                (Field::Extra(_), _) => true,
                _ => false,
            };
            if ok {
                Ok(())
            } else {
                Err(Error::invalid(
                    "filter",
                    format!(
                        "value {v:?} does not fit field `{}` (keywords: at most {MAX_KEYWORD_BYTES} bytes, no NUL; \
                         chunk_index: integers)",
                        field.path()
                    ),
                ))
            }
        };
        let mut leaf = || {
            *leaves += 1;
            if *leaves > Self::MAX_CONDITIONS {
                Err(Error::invalid("filter", format!("more than {} conditions", Self::MAX_CONDITIONS)))
            } else {
                Ok(())
            }
        };
        match self {
            Filter::All(fs) => fs.iter().try_for_each(|f| f.validate_inner(depth + 1, leaves)),
            Filter::Any(fs) => {
                if fs.is_empty() {
                    return Err(Error::invalid("filter", "`any` needs at least one sub-filter"));
                }
                fs.iter().try_for_each(|f| f.validate_inner(depth + 1, leaves))
            }
            Filter::Not(f) => f.validate_inner(depth + 1, leaves),
            Filter::Eq { field, value } => {
                leaf()?;
                field.validate()?;
                check_value(field, value)
            }
            Filter::AnyOf { field, values } => {
                leaf()?;
                field.validate()?;
                if values.is_empty() {
                    return Err(Error::invalid("filter", "`any_of` needs at least one value"));
                }
                if values.len() > Self::MAX_ANY_OF {
                    return Err(Error::invalid(
                        "filter",
                        format!("`any_of` has {} values, the limit is {}", values.len(), Self::MAX_ANY_OF),
                    ));
                }
                values.iter().try_for_each(|v| check_value(field, v))
            }
            Filter::Range { field, gte, gt, lte, lt } => {
                leaf()?;
                field.validate()?;
                if field.is_keyword() {
                    return Err(Error::invalid("filter", format!("range on keyword field `{}`", field.path())));
                }
                if gte.is_none() && gt.is_none() && lte.is_none() && lt.is_none() {
                    return Err(Error::invalid("filter", "range needs at least one bound"));
                }
                Ok(())
            }
        }
    }

    /// Whether a stored payload (the JSON layout of the module docs) passes
    /// the filter: the reference semantics.
    pub fn matches(&self, payload: &Map<String, Value>) -> bool {
        match self {
            Filter::All(fs) => fs.iter().all(|f| f.matches(payload)),
            Filter::Any(fs) => fs.iter().any(|f| f.matches(payload)),
            Filter::Not(f) => !f.matches(payload),
            Filter::Eq { field, value } => field.get(payload).is_some_and(|v| value.matches(v)),
            Filter::AnyOf { field, values } => field.get(payload).is_some_and(|v| values.iter().any(|m| m.matches(v))),
            Filter::Range { field, gte, gt, lte, lt } => {
                let in_range = |n: i64| {
                    gte.is_none_or(|b| n >= b)
                        && gt.is_none_or(|b| n > b)
                        && lte.is_none_or(|b| n <= b)
                        && lt.is_none_or(|b| n < b)
                };
                match field.get(payload) {
                    Some(Value::Number(n)) => n.as_i64().is_some_and(in_range),
                    Some(Value::Array(items)) => items.iter().any(|i| i.as_i64().is_some_and(in_range)),
                    _ => false,
                }
            }
        }
    }
}

/// A similarity search.
#[derive(Debug, Clone, PartialEq)]
pub struct SearchRequest {
    /// The query vector.
    pub vector: Vec<f32>,
    /// How many hits at most (1 to [`SearchRequest::MAX_LIMIT`]).
    pub limit: usize,
    /// Only chunks passing this filter.
    pub filter: Option<Filter>,
    /// Only hits whose returned `score` is `>= score_threshold`: compared
    /// with the score as the backend computes it (the one the hit carries),
    /// so a hit scoring exactly the threshold is kept. Against the reference
    /// [`Distance::score`], chunks within rounding of the threshold may go
    /// either way (see the module docs, "Precision and thresholds").
    pub score_threshold: Option<f32>,
}

impl SearchRequest {
    /// Largest `limit`.
    pub const MAX_LIMIT: usize = 1000;

    /// The `limit` nearest chunks to `vector`.
    pub fn new(vector: Vec<f32>, limit: usize) -> Self {
        Self { vector, limit, filter: None, score_threshold: None }
    }

    /// Only chunks passing `filter`.
    pub fn filter(mut self, filter: Filter) -> Self {
        self.filter = Some(filter);
        self
    }

    /// Only hits scoring at least `threshold`, as the backend computes the
    /// score (see the `score_threshold` field).
    pub fn score_threshold(mut self, threshold: f32) -> Self {
        self.score_threshold = Some(threshold);
        self
    }

    /// Checks the request against `spec`.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] naming `vector`, `limit`, `score_threshold` or
    /// `filter`.
    pub fn validate(&self, spec: &IndexSpec) -> Result<()> {
        spec.check_vector("vector", &self.vector)?;
        if self.limit == 0 || self.limit > Self::MAX_LIMIT {
            return Err(Error::invalid(
                "limit",
                format!("must be between 1 and {}, got {}", Self::MAX_LIMIT, self.limit),
            ));
        }
        if self.score_threshold.is_some_and(|t| !t.is_finite()) {
            return Err(Error::invalid("score_threshold", "must be a finite number"));
        }
        if let Some(f) = &self.filter {
            f.validate()?;
        }
        Ok(())
    }
}

/// Checks ids given to get or delete.
///
/// # Errors
/// [`Error::InvalidInput`] (`ids`) for more than [`MAX_UPSERT`] ids.
pub fn validate_ids(ids: &[ChunkId]) -> Result<()> {
    if ids.len() > MAX_UPSERT {
        return Err(Error::invalid("ids", format!("at most {MAX_UPSERT} ids, got {}", ids.len())));
    }
    Ok(())
}

/// A vector index of document chunks.
///
/// # Contract
/// - Every method is scoped to `tenant`: no call returns, counts, changes or
///   deletes another tenant's chunks, even with their ids.
/// - Writes are idempotent by chunk id: an upsert replaces the chunk with the
///   same id. An upsert is checked whole before anything is written
///   (dimension, finite components, payload rules; see [`validate_chunks`]):
///   one bad chunk rejects the batch with [`Error::InvalidInput`].
/// - Search returns at most `limit` hits, best first, scored as in the
///   module docs; absent chunks are left out of `get`, not errors.
/// - Writes are visible to reads when the call returns.
#[async_trait]
pub trait VectorIndex: fmt::Debug + Send + Sync + 'static {
    /// The dimension and distance of this index.
    fn spec(&self) -> &IndexSpec;

    /// Inserts or replaces `chunks` for `tenant`.
    async fn upsert(&self, tenant: &Tenant, chunks: Vec<Chunk>) -> Result<()>;

    /// The best chunks of `tenant` for `request`, best first.
    async fn search(&self, tenant: &Tenant, request: &SearchRequest) -> Result<Vec<ScoredChunk>>;

    /// The chunks of `tenant` with these ids, in the order of `ids`; absent
    /// ones are left out.
    async fn get(&self, tenant: &Tenant, ids: &[ChunkId]) -> Result<Vec<ChunkRecord>>;

    /// Every chunk of one document of `tenant`, in `chunk_index` order.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] (`document_id`) as for [`validate_document_id`].
    async fn document_chunks(&self, tenant: &Tenant, document_id: &str) -> Result<Vec<ChunkRecord>>;

    /// Deletes the chunks of `tenant` with these ids (absent ones are
    /// ignored).
    async fn delete(&self, tenant: &Tenant, ids: &[ChunkId]) -> Result<()>;

    /// Deletes every chunk of one document of `tenant`.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] (`document_id`) as for [`validate_document_id`].
    async fn delete_document(&self, tenant: &Tenant, document_id: &str) -> Result<()>;

    /// Deletes every chunk of `tenant` that passes `filter`.
    async fn delete_by_filter(&self, tenant: &Tenant, filter: &Filter) -> Result<()>;

    /// How many chunks of `tenant` pass `filter` (all of them when `None`).
    async fn count(&self, tenant: &Tenant, filter: Option<&Filter>) -> Result<u64>;

    /// One page of the chunks of `tenant` that pass `filter` (all of them
    /// when `None`), starting at `from` (the first page when `None`): for
    /// exports, which must read a tenant whole without loading it at once.
    ///
    /// # Contract
    /// - Pages follow the backend's point order (by point id on every
    ///   backend), which is stable: following [`ChunkPage::next`] from the
    ///   first page until it is `None` returns every chunk that exists
    ///   throughout, exactly once. Chunks written or deleted meanwhile may
    ///   or may not appear.
    /// - A page holds at most `limit` chunks; `next` is `None` on the last
    ///   page. A page may be short (even empty) with a `next`, though no
    ///   backend here returns one.
    /// - Vectors are not returned (see [`ChunkRecord`]).
    ///
    /// # Errors
    /// [`Error::InvalidInput`] (`limit`) for 0 or above [`MAX_SCROLL`];
    /// (`filter...`) as for [`Filter::validate`].
    async fn scroll(
        &self,
        tenant: &Tenant,
        filter: Option<&Filter>,
        from: Option<ScrollCursor>,
        limit: usize,
    ) -> Result<ChunkPage>;
}

/// Most chunks in one [`VectorIndex::scroll`] page.
pub const MAX_SCROLL: usize = 1_000;

/// Checks the `limit` and `filter` of [`VectorIndex::scroll`].
///
/// # Errors
/// [`Error::InvalidInput`] (`limit`, or the filter's field).
pub fn validate_scroll(filter: Option<&Filter>, limit: usize) -> Result<()> {
    if limit == 0 || limit > MAX_SCROLL {
        return Err(Error::invalid("limit", format!("must be between 1 and {MAX_SCROLL}, got {limit}")));
    }
    if let Some(f) = filter {
        f.validate()?;
    }
    Ok(())
}

/// Where a [`VectorIndex::scroll`] page starts: the point id of its first
/// chunk (see [`point_id`]). Opaque to callers; it prints and parses as the
/// UUID, so it can be kept in a file and resumed.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ScrollCursor(Uuid);

impl ScrollCursor {
    /// The cursor of the point `point`.
    pub fn from_point(point: Uuid) -> Self {
        Self(point)
    }

    /// The point id it starts at.
    pub fn point(&self) -> Uuid {
        self.0
    }
}

impl fmt::Display for ScrollCursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl fmt::Debug for ScrollCursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ScrollCursor({})", self.0)
    }
}

impl std::str::FromStr for ScrollCursor {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Uuid::parse_str(s).map(Self).map_err(|e| Error::invalid("cursor", format!("is not a scroll cursor: {e}")))
    }
}

/// One page of [`VectorIndex::scroll`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChunkPage {
    /// The chunks, in the backend's point order.
    pub chunks: Vec<ChunkRecord>,
    /// Where the next page starts; `None` on the last page.
    pub next: Option<ScrollCursor>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn payload(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn scores_are_higher_is_better() {
        let a = [1.0, 0.0];
        let near = [0.9, 0.1];
        let far = [-1.0, 0.0];
        for d in [Distance::Cosine, Distance::Dot, Distance::Euclid, Distance::Manhattan] {
            assert!(d.score(&a, &near) > d.score(&a, &far), "{d}");
        }
        assert!((Distance::Euclid.score(&[0.0, 0.0], &[3.0, 4.0]) + 5.0).abs() < 1e-6);
        assert!((Distance::Manhattan.score(&[0.0, 0.0], &[3.0, 4.0]) + 7.0).abs() < 1e-6);
    }

    #[test]
    fn vector_checks_name_the_component() {
        let spec = IndexSpec::new(3, Distance::Cosine).unwrap();
        assert_eq!(spec.check_vector("vector", &[1.0, 2.0]).unwrap_err().field(), Some("vector"));
        assert_eq!(spec.check_vector("vector", &[1.0, f32::NAN, 0.0]).unwrap_err().field(), Some("vector[1]"));
        assert_eq!(spec.check_vector("vector", &[1.0, 0.0, f32::INFINITY]).unwrap_err().field(), Some("vector[2]"));
        assert_eq!(spec.check_vector("vector", &[0.0; 3]).unwrap_err().field(), Some("vector"));
        let dot = IndexSpec::new(3, Distance::Dot).unwrap();
        assert!(dot.check_vector("vector", &[0.0; 3]).is_ok());
        assert_eq!(IndexSpec::new(0, Distance::Dot).unwrap_err().field(), Some("dimension"));
    }

    #[test]
    fn chunk_batch_checks_are_positioned() {
        let spec = IndexSpec::new(2, Distance::Cosine).unwrap();
        let ok = Chunk::new("d", 0, "t", vec![1.0, 0.0]);
        let bad = Chunk::new("d", 1, "t", vec![1.0, f32::NAN]);
        let err = validate_chunks(&spec, &[ok.clone(), bad]).unwrap_err();
        assert_eq!(err.field(), Some("chunks[1].vector[1]"));
        let err = validate_chunks(&spec, &[ok.clone(), ok.clone()]).unwrap_err();
        assert_eq!(err.field(), Some("chunks"));
        let empty_doc = Chunk::new("", 0, "t", vec![1.0, 0.0]);
        assert_eq!(validate_chunks(&spec, &[empty_doc]).unwrap_err().field(), Some("chunks[0].document_id"));
        let nul = ok.clone().tags(["a\0"]);
        assert_eq!(validate_chunks(&spec, &[nul]).unwrap_err().field(), Some("chunks[0].tags[0]"));
    }

    #[test]
    fn tiny_or_huge_vectors_are_refused() {
        let cos = IndexSpec::new(3, Distance::Cosine).unwrap();
        assert_eq!(cos.check_vector("vector", &[1e-4, 0.0, 0.0]).unwrap_err().field(), Some("vector"));
        assert!(cos.check_vector("vector", &[1e-3, 0.0, 0.0]).is_ok());
        let dot = IndexSpec::new(2, Distance::Dot).unwrap();
        assert_eq!(dot.check_vector("vector", &[3e19, 3e19]).unwrap_err().field(), Some("vector"));
        assert!(serde_json::from_str::<IndexSpec>(r#"{"dimension":0,"distance":"Dot"}"#).is_err());
        assert!(serde_json::from_str::<IndexSpec>(r#"{"dimension":4,"distance":"Dot"}"#).is_ok());
    }

    #[test]
    fn document_ids_and_extra_integers_are_checked() {
        assert_eq!(validate_document_id("").unwrap_err().field(), Some("document_id"));
        assert_eq!(validate_document_id("a\0").unwrap_err().field(), Some("document_id"));
        assert!(validate_document_id("doc").is_ok());
        let spec = IndexSpec::new(1, Distance::Dot).unwrap();
        let big = Chunk::new("d", 0, "t", vec![1.0]).extra("n", json!({"deep": [u64::MAX]}));
        assert_eq!(validate_chunks(&spec, &[big]).unwrap_err().field(), Some("chunks[0].extra"));
        let ok = Chunk::new("d", 0, "t", vec![1.0]).extra("n", i64::MAX);
        assert!(validate_chunks(&spec, &[ok]).is_ok());
    }

    #[test]
    fn payload_round_trips() {
        let c = Chunk::new("doc", 3, "hello", vec![1.0])
            .document_type("pdf")
            .source("s3://x")
            .tags(["a", "b"])
            .extra("lang", "en");
        let t = Tenant::new("t").unwrap();
        let json = c.payload.to_json(&t, c.id);
        assert_eq!(json["tenant"], "t");
        let (id, back) = ChunkPayload::from_json("test", &json).unwrap();
        assert_eq!(id, c.id);
        assert_eq!(back, c.payload);
    }

    #[test]
    fn point_ids_differ_per_tenant() {
        let id = ChunkId::for_chunk("doc", 0);
        let a = Tenant::new("a").unwrap();
        let b = Tenant::new("b").unwrap();
        assert_ne!(point_id(&a, id), point_id(&b, id));
        assert_eq!(point_id(&a, id), point_id(&a, id));
    }

    #[test]
    fn filter_semantics() {
        let p = payload(json!({
            "document_type": "pdf", "tags": ["a", "b"], "source": "web",
            "document_id": "d1", "chunk_index": 4, "extra": {"lang": "en", "year": 2024, "draft": false}
        }));
        let t = |f: Filter| f.matches(&p);
        assert!(t(Filter::eq(Field::DocumentType, "pdf")));
        assert!(!t(Filter::eq(Field::DocumentType, "md")));
        assert!(t(Filter::eq(Field::Tags, "b")));
        assert!(!t(Filter::eq(Field::Tags, "c")));
        assert!(t(Filter::any_of(Field::Tags, ["c", "a"])));
        assert!(!t(Filter::any_of(Field::Source, ["x", "y"])));
        assert!(t(Filter::range(Field::ChunkIndex, Some(4), Some(5))));
        assert!(!t(Filter::range(Field::ChunkIndex, Some(5), None)));
        assert!(!t(Filter::range(Field::ChunkIndex, None, Some(4))));
        assert!(t(Filter::Range { field: Field::ChunkIndex, gte: None, gt: Some(3), lte: Some(4), lt: None }));
        assert!(t(Filter::eq(Field::Extra("lang".into()), "en")));
        assert!(t(Filter::eq(Field::Extra("draft".into()), false)));
        assert!(t(Filter::range(Field::Extra("year".into()), Some(2020), None)));
        assert!(!t(Filter::eq(Field::Extra("missing".into()), "x")));
        assert!(t(Filter::not(Filter::eq(Field::Extra("missing".into()), "x"))));
        assert!(t(Filter::all([])));
        assert!(t(Filter::all([Filter::eq(Field::Source, "web"), Filter::eq(Field::Tags, "a")])));
        assert!(!t(Filter::all([Filter::eq(Field::Source, "web"), Filter::eq(Field::Tags, "z")])));
        assert!(t(Filter::any([Filter::eq(Field::Source, "x"), Filter::eq(Field::Tags, "a")])));
        assert!(!t(Filter::not(Filter::eq(Field::Source, "web"))));
    }

    #[test]
    fn filter_validation() {
        assert!(Filter::any([]).validate().is_err());
        assert!(Filter::any_of(Field::Tags, Vec::<String>::new()).validate().is_err());
        assert!(Filter::range(Field::Source, Some(1), None).validate().is_err());
        assert!(Filter::range(Field::ChunkIndex, None, None).validate().is_err());
        assert!(Filter::eq(Field::ChunkIndex, "x").validate().is_err());
        assert!(Filter::eq(Field::Tags, 3i64).validate().is_err());
        assert!(Filter::eq(Field::Extra("a.b".into()), "x").validate().is_err());
        assert!(Filter::eq(Field::Extra("ok_1".into()), 1i64).validate().is_ok());
        assert!(Filter::eq(Field::Source, "x".repeat(MAX_KEYWORD_BYTES + 1)).validate().is_err());
        assert!(Filter::any_of(Field::Tags, (0..=Filter::MAX_ANY_OF).map(|i| i.to_string())).validate().is_err());
        let mut deep = Filter::eq(Field::Tags, "a");
        for _ in 0..20 {
            deep = Filter::not(deep);
        }
        assert!(deep.validate().is_err());
    }

    #[test]
    fn search_request_validation() {
        let spec = IndexSpec::new(2, Distance::Cosine).unwrap();
        assert!(SearchRequest::new(vec![1.0, 0.0], 10).validate(&spec).is_ok());
        assert_eq!(SearchRequest::new(vec![1.0, 0.0], 0).validate(&spec).unwrap_err().field(), Some("limit"));
        assert_eq!(SearchRequest::new(vec![1.0], 1).validate(&spec).unwrap_err().field(), Some("vector"));
        assert_eq!(
            SearchRequest::new(vec![1.0, 0.0], 1).score_threshold(f32::NAN).validate(&spec).unwrap_err().field(),
            Some("score_threshold")
        );
    }
}
