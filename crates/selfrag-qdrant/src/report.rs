//! What [`QdrantIndex::ensure`](crate::QdrantIndex::ensure) found and did:
//! the collection's status, size and payload schema, as data.

use std::collections::BTreeMap;
use std::fmt;

use qdrant_client::qdrant::{
    self, payload_index_params::IndexParams, vectors_config, CollectionInfo, PayloadSchemaInfo, PayloadSchemaType,
};
use selfrag_core::vector::keys;
use selfrag_core::{Error, IndexSpec, Result};

use crate::convert::{distance_from_qdrant, BACKEND};

/// A collection's status as Qdrant reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum CollectionStatus {
    /// All segments are ready.
    Green,
    /// Optimization (indexing) is running; searches work but may be slower.
    Yellow,
    /// An operation failed; see the server log.
    Red,
    /// Optimization is pending (e.g. after a restart) until the next update.
    Grey,
    /// A status this client does not know.
    Unknown,
}

impl CollectionStatus {
    /// The status for Qdrant's status code.
    pub fn from_code(code: i32) -> Self {
        match qdrant::CollectionStatus::try_from(code) {
            Ok(qdrant::CollectionStatus::Green) => Self::Green,
            Ok(qdrant::CollectionStatus::Yellow) => Self::Yellow,
            Ok(qdrant::CollectionStatus::Red) => Self::Red,
            Ok(qdrant::CollectionStatus::Grey) => Self::Grey,
            _ => Self::Unknown,
        }
    }
}

impl fmt::Display for CollectionStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Green => "green",
            Self::Yellow => "yellow",
            Self::Red => "red",
            Self::Grey => "grey",
            Self::Unknown => "unknown",
        })
    }
}

/// The kind of a payload index.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum PayloadIndex {
    /// A keyword index; `is_tenant` when Qdrant co-locates points by its
    /// value (used for the `tenant` field).
    Keyword {
        /// Whether the index is marked `is_tenant`.
        is_tenant: bool,
    },
    /// An integer index.
    Integer {
        /// Whether it serves exact matches.
        lookup: bool,
        /// Whether it serves ranges (and `order_by`).
        range: bool,
    },
    /// Another index type, by Qdrant's name (e.g. `Text`).
    Other(String),
}

impl PayloadIndex {
    /// The index kind of one entry of Qdrant's payload schema. Absent
    /// parameters take Qdrant's defaults (`is_tenant` false, integer `lookup`
    /// and `range` true).
    pub fn from_schema(info: &PayloadSchemaInfo) -> Self {
        let params = info.params.as_ref().and_then(|p| p.index_params.as_ref());
        match PayloadSchemaType::try_from(info.data_type) {
            Ok(PayloadSchemaType::Keyword) => {
                let is_tenant = match params {
                    Some(IndexParams::KeywordIndexParams(k)) => k.is_tenant.unwrap_or(false),
                    _ => false,
                };
                Self::Keyword { is_tenant }
            }
            Ok(PayloadSchemaType::Integer) => {
                let (lookup, range) = match params {
                    Some(IndexParams::IntegerIndexParams(i)) => (i.lookup.unwrap_or(true), i.range.unwrap_or(true)),
                    _ => (true, true),
                };
                Self::Integer { lookup, range }
            }
            Ok(other) => Self::Other(other.as_str_name().to_owned()),
            Err(_) => Self::Other(format!("type {}", info.data_type)),
        }
    }

    /// Whether an existing index of kind `self` serves what `required` is
    /// needed for.
    pub fn satisfies(&self, required: &PayloadIndex) -> bool {
        match (required, self) {
            (PayloadIndex::Keyword { is_tenant: true }, PayloadIndex::Keyword { is_tenant }) => *is_tenant,
            (PayloadIndex::Keyword { is_tenant: false }, PayloadIndex::Keyword { .. }) => true,
            (PayloadIndex::Integer { lookup: l, range: r }, PayloadIndex::Integer { lookup, range }) => {
                (*lookup || !*l) && (*range || !*r)
            }
            _ => false,
        }
    }
}

impl fmt::Display for PayloadIndex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PayloadIndex::Keyword { is_tenant: true } => f.write_str("keyword (is_tenant)"),
            PayloadIndex::Keyword { is_tenant: false } => f.write_str("keyword"),
            PayloadIndex::Integer { lookup, range } => write!(f, "integer (lookup: {lookup}, range: {range})"),
            PayloadIndex::Other(name) => write!(f, "{name}"),
        }
    }
}

/// The payload indexes this backend needs, by field: `tenant` (keyword,
/// `is_tenant`), `document_type`, `tags`, `source`, `document_id` (keyword)
/// and `chunk_index` (integer with lookup for matches and range for ranges
/// and ordering).
pub fn required_indexes() -> [(&'static str, PayloadIndex); 6] {
    let keyword = PayloadIndex::Keyword { is_tenant: false };
    [
        (keys::TENANT, PayloadIndex::Keyword { is_tenant: true }),
        (keys::DOCUMENT_TYPE, keyword.clone()),
        (keys::TAGS, keyword.clone()),
        (keys::SOURCE, keyword.clone()),
        (keys::DOCUMENT_ID, keyword),
        (keys::CHUNK_INDEX, PayloadIndex::Integer { lookup: true, range: true }),
    ]
}

/// The required indexes absent from a collection (present ones of the wrong
/// kind are not listed: they are reported, not replaced).
pub fn missing_indexes(info: &CollectionInfo) -> Vec<(&'static str, PayloadIndex)> {
    required_indexes().into_iter().filter(|(field, _)| !info.payload_schema.contains_key(*field)).collect()
}

/// Checks that an existing collection stores one unnamed dense vector of
/// `spec`'s dimension and distance.
///
/// # Errors
/// [`Error::Incompatible`] naming what differs.
pub fn check_vectors(collection: &str, spec: &IndexSpec, info: &CollectionInfo) -> Result<()> {
    let incompatible = |message: String| Error::Incompatible { backend: BACKEND, message };
    let config = info
        .config
        .as_ref()
        .and_then(|c| c.params.as_ref())
        .and_then(|p| p.vectors_config.as_ref())
        .and_then(|v| v.config.as_ref());
    let params = match config {
        Some(vectors_config::Config::Params(p)) => p,
        Some(vectors_config::Config::ParamsMap(m)) => {
            let mut names: Vec<_> = m.map.keys().cloned().collect();
            names.sort();
            return Err(incompatible(format!(
                "collection `{collection}` has named vectors {names:?}; this backend needs one unnamed vector"
            )));
        }
        None => return Err(incompatible(format!("collection `{collection}` reports no vector configuration"))),
    };
    if params.multivector_config.is_some() {
        return Err(incompatible(format!(
            "collection `{collection}` stores multivectors; this backend needs one dense vector per point"
        )));
    }
    let dimension = usize::try_from(params.size).unwrap_or(usize::MAX);
    if dimension != spec.dimension() {
        return Err(incompatible(format!(
            "collection `{collection}` has dimension {}, the index spec has {}",
            params.size,
            spec.dimension()
        )));
    }
    match distance_from_qdrant(params.distance) {
        Some(d) if d == spec.distance() => Ok(()),
        found => Err(incompatible(format!(
            "collection `{collection}` uses distance {}, the index spec has {}",
            found.map_or_else(|| format!("code {}", params.distance), |d| d.to_string()),
            spec.distance()
        ))),
    }
}

/// What [`QdrantIndex::ensure`](crate::QdrantIndex::ensure) and
/// [`QdrantIndex::report`](crate::QdrantIndex::report) found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnsureReport {
    /// The collection's name.
    pub collection: String,
    /// Whether this call created the collection.
    pub created_collection: bool,
    /// The payload indexes this call created.
    pub created_indexes: Vec<String>,
    /// The collection's status.
    pub status: CollectionStatus,
    /// Points stored (all tenants; Qdrant's approximate count).
    pub points: u64,
    /// Vectors already in an HNSW index (small segments are searched by
    /// scan and not counted).
    pub indexed_vectors: u64,
    /// Segments.
    pub segments: u64,
    /// The payload schema: indexed field to index kind.
    pub payload_schema: BTreeMap<String, PayloadIndex>,
    /// Warnings the server attached to the collection.
    pub warnings: Vec<String>,
}

impl EnsureReport {
    /// The report of a collection's info (nothing created).
    pub fn from_info(collection: &str, info: &CollectionInfo) -> Self {
        Self {
            collection: collection.to_owned(),
            created_collection: false,
            created_indexes: Vec::new(),
            status: CollectionStatus::from_code(info.status),
            points: info.points_count.unwrap_or(0),
            indexed_vectors: info.indexed_vectors_count.unwrap_or(0),
            segments: info.segments_count,
            payload_schema: info
                .payload_schema
                .iter()
                .map(|(k, v)| (k.clone(), PayloadIndex::from_schema(v)))
                .collect(),
            warnings: info.warnings.iter().map(|w| w.message.clone()).collect(),
        }
    }

    /// The required payload indexes that are missing or of the wrong kind, as
    /// sentences (empty when the schema is right).
    pub fn schema_problems(&self) -> Vec<String> {
        required_indexes()
            .into_iter()
            .filter_map(|(field, required)| match self.payload_schema.get(field) {
                None => Some(format!("payload index `{field}` ({required}) is missing")),
                Some(found) if !found.satisfies(&required) => {
                    Some(format!("payload index `{field}` is {found}, needs {required}"))
                }
                Some(_) => None,
            })
            .collect()
    }

    /// Whether the collection is green and all six payload indexes exist with
    /// the right kinds. A yellow or grey collection still serves every call,
    /// only not yet at full speed.
    pub fn is_ready(&self) -> bool {
        self.status == CollectionStatus::Green && self.schema_problems().is_empty()
    }
}

impl fmt::Display for EnsureReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "collection `{}`: {}, {} points, {} segments",
            self.collection, self.status, self.points, self.segments
        )?;
        if self.created_collection {
            f.write_str(", created")?;
        }
        if !self.created_indexes.is_empty() {
            write!(f, ", indexes created: {}", self.created_indexes.join(", "))?;
        }
        let problems = self.schema_problems();
        if problems.is_empty() {
            f.write_str(", payload schema confirmed")
        } else {
            write!(f, ", {}", problems.join("; "))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use qdrant_client::qdrant::{
        CollectionConfig, CollectionParams, IntegerIndexParams, KeywordIndexParams, PayloadIndexParams, VectorParams,
        VectorParamsMap, VectorsConfig,
    };
    use selfrag_core::{Distance, ErrorKind};

    fn info(size: u64, distance: qdrant::Distance) -> CollectionInfo {
        CollectionInfo {
            status: qdrant::CollectionStatus::Green as i32,
            points_count: Some(12),
            segments_count: 2,
            config: Some(CollectionConfig {
                params: Some(CollectionParams {
                    vectors_config: Some(VectorsConfig {
                        config: Some(vectors_config::Config::Params(VectorParams {
                            size,
                            distance: distance as i32,
                            ..Default::default()
                        })),
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn keyword(is_tenant: Option<bool>) -> PayloadSchemaInfo {
        PayloadSchemaInfo {
            data_type: PayloadSchemaType::Keyword as i32,
            params: Some(PayloadIndexParams {
                index_params: Some(IndexParams::KeywordIndexParams(KeywordIndexParams {
                    is_tenant,
                    ..Default::default()
                })),
            }),
            points: None,
        }
    }

    fn integer(lookup: Option<bool>, range: Option<bool>) -> PayloadSchemaInfo {
        PayloadSchemaInfo {
            data_type: PayloadSchemaType::Integer as i32,
            params: Some(PayloadIndexParams {
                index_params: Some(IndexParams::IntegerIndexParams(IntegerIndexParams {
                    lookup,
                    range,
                    ..Default::default()
                })),
            }),
            points: None,
        }
    }

    fn full_schema() -> CollectionInfo {
        let mut i = info(4, qdrant::Distance::Cosine);
        i.payload_schema.insert("tenant".into(), keyword(Some(true)));
        for k in ["document_type", "tags", "source", "document_id"] {
            i.payload_schema.insert(k.into(), keyword(None));
        }
        i.payload_schema.insert("chunk_index".into(), integer(Some(true), Some(true)));
        i
    }

    #[test]
    fn vector_config_must_match_the_spec() {
        let spec = IndexSpec::new(4, Distance::Cosine).unwrap();
        assert!(check_vectors("c", &spec, &info(4, qdrant::Distance::Cosine)).is_ok());
        let e = check_vectors("c", &spec, &info(8, qdrant::Distance::Cosine)).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Incompatible);
        assert!(e.to_string().contains("dimension 8"), "{e}");
        let e = check_vectors("c", &spec, &info(4, qdrant::Distance::Euclid)).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Incompatible);
        assert!(e.to_string().contains("distance euclid"), "{e}");
        let mut named = info(4, qdrant::Distance::Cosine);
        named.config.as_mut().unwrap().params.as_mut().unwrap().vectors_config = Some(VectorsConfig {
            config: Some(vectors_config::Config::ParamsMap(VectorParamsMap {
                map: [("dense".to_owned(), VectorParams { size: 4, distance: 1, ..Default::default() })].into(),
            })),
        });
        let e = check_vectors("c", &spec, &named).unwrap_err();
        assert!(e.to_string().contains("named vectors"), "{e}");
        let e = check_vectors("c", &spec, &CollectionInfo::default()).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Incompatible);
    }

    #[test]
    fn a_full_green_schema_is_ready() {
        let i = full_schema();
        assert!(missing_indexes(&i).is_empty());
        let r = EnsureReport::from_info("c", &i);
        assert_eq!(r.status, CollectionStatus::Green);
        assert_eq!(r.points, 12);
        assert_eq!(r.payload_schema["tenant"], PayloadIndex::Keyword { is_tenant: true });
        assert_eq!(r.payload_schema["chunk_index"], PayloadIndex::Integer { lookup: true, range: true });
        assert!(r.schema_problems().is_empty());
        assert!(r.is_ready());
        assert!(r.to_string().contains("payload schema confirmed"), "{r}");

        let mut yellow = r.clone();
        yellow.status = CollectionStatus::Yellow;
        assert!(!yellow.is_ready());
    }

    #[test]
    fn missing_and_wrong_indexes_are_reported() {
        let mut i = full_schema();
        i.payload_schema.remove("tags");
        i.payload_schema.insert("tenant".into(), keyword(Some(false)));
        i.payload_schema.insert("chunk_index".into(), integer(Some(true), Some(false)));
        i.payload_schema.insert(
            "source".into(),
            PayloadSchemaInfo { data_type: PayloadSchemaType::Text as i32, params: None, points: None },
        );
        let missing: Vec<_> = missing_indexes(&i).into_iter().map(|(f, _)| f).collect();
        assert_eq!(missing, vec!["tags"]);
        let r = EnsureReport::from_info("c", &i);
        let problems = r.schema_problems();
        assert_eq!(problems.len(), 4, "{problems:?}");
        assert!(problems.iter().any(|p| p.contains("`tags`") && p.contains("missing")));
        assert!(problems.iter().any(|p| p.contains("`tenant`") && p.contains("is_tenant")));
        assert!(problems.iter().any(|p| p.contains("`chunk_index`") && p.contains("range: false")));
        assert!(problems.iter().any(|p| p.contains("`source` is Text")));
        assert!(!r.is_ready());
    }

    #[test]
    fn index_kinds_default_like_qdrant() {
        let bare = |t: PayloadSchemaType| PayloadSchemaInfo { data_type: t as i32, params: None, points: None };
        assert_eq!(
            PayloadIndex::from_schema(&bare(PayloadSchemaType::Keyword)),
            PayloadIndex::Keyword { is_tenant: false }
        );
        assert_eq!(
            PayloadIndex::from_schema(&bare(PayloadSchemaType::Integer)),
            PayloadIndex::Integer { lookup: true, range: true }
        );
        assert_eq!(
            PayloadIndex::from_schema(&integer(None, None)),
            PayloadIndex::Integer { lookup: true, range: true }
        );
        let tenant = PayloadIndex::Keyword { is_tenant: true };
        assert!(tenant.satisfies(&PayloadIndex::Keyword { is_tenant: false }));
        assert!(!PayloadIndex::Keyword { is_tenant: false }.satisfies(&tenant));
        assert!(!PayloadIndex::Integer { lookup: true, range: true }.satisfies(&tenant));
    }

    #[test]
    fn statuses_map() {
        assert_eq!(CollectionStatus::from_code(1), CollectionStatus::Green);
        assert_eq!(CollectionStatus::from_code(2), CollectionStatus::Yellow);
        assert_eq!(CollectionStatus::from_code(3), CollectionStatus::Red);
        assert_eq!(CollectionStatus::from_code(4), CollectionStatus::Grey);
        assert_eq!(CollectionStatus::from_code(0), CollectionStatus::Unknown);
        assert_eq!(CollectionStatus::from_code(42), CollectionStatus::Unknown);
    }
}
