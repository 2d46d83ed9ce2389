use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use async_trait::async_trait;
use serde_json::{Map, Value};
use uuid::Uuid;

use crate::error::Result;
use crate::ids::{ChunkId, Tenant};
use crate::observe::{system, OpMeta};
use crate::vector::{
    point_id, validate_chunks, validate_document_id, validate_ids, validate_scroll, Chunk, ChunkPage, ChunkPayload,
    ChunkRecord, Filter, IndexSpec, ScoredChunk, ScrollCursor, SearchRequest, VectorIndex,
};

/// The span attributes of every call.
const OBS: OpMeta = OpMeta::new(system::LOCAL);

/// A [`VectorIndex`] in process memory with exact (brute-force) search and
/// the full [`Filter`] semantics: the reference the other backends are held
/// to, and a sound choice for small corpora. Clones share the same data.
#[derive(Debug, Clone)]
pub struct LocalVectorIndex {
    spec: IndexSpec,
    points: Arc<RwLock<HashMap<Uuid, Point>>>,
}

#[derive(Debug, Clone)]
struct Point {
    id: ChunkId,
    /// The stored payload JSON (with `tenant`), which filters read.
    json: Map<String, Value>,
    payload: ChunkPayload,
    vector: Vec<f32>,
}

impl LocalVectorIndex {
    /// An empty index of `spec`.
    pub fn new(spec: IndexSpec) -> Self {
        Self { spec, points: Arc::default() }
    }

    fn tenant_points<'a>(
        points: &'a HashMap<Uuid, Point>,
        tenant: &'a Tenant,
        filter: Option<&'a Filter>,
    ) -> impl Iterator<Item = (&'a Uuid, &'a Point)> + 'a {
        points.iter().filter(move |(_, p)| {
            p.json.get(crate::vector::keys::TENANT).and_then(Value::as_str) == Some(tenant.as_str())
                && filter.is_none_or(|f| f.matches(&p.json))
        })
    }
}

#[async_trait]
impl VectorIndex for LocalVectorIndex {
    fn spec(&self) -> &IndexSpec {
        &self.spec
    }

    async fn upsert(&self, tenant: &Tenant, chunks: Vec<Chunk>) -> Result<()> {
        OBS.run("chunks", "upsert", async move {
            validate_chunks(&self.spec, &chunks)?;
            let mut points = self.points.write().unwrap_or_else(|e| e.into_inner());
            for c in chunks {
                let json = c.payload.to_json(tenant, c.id);
                points.insert(point_id(tenant, c.id), Point { id: c.id, json, payload: c.payload, vector: c.vector });
            }
            Ok(())
        })
        .await
    }

    async fn search(&self, tenant: &Tenant, request: &SearchRequest) -> Result<Vec<ScoredChunk>> {
        OBS.run("chunks", "search", async move {
            request.validate(&self.spec)?;
            let points = self.points.read().unwrap_or_else(|e| e.into_inner());
            let distance = self.spec.distance();
            let mut hits: Vec<ScoredChunk> = Self::tenant_points(&points, tenant, request.filter.as_ref())
                .map(|(_, p)| ScoredChunk {
                    id: p.id,
                    score: distance.score(&request.vector, &p.vector),
                    payload: p.payload.clone(),
                })
                .filter(|h| request.score_threshold.is_none_or(|t| h.score >= t))
                .collect();
            // Best first; ties by id so results are deterministic.
            hits.sort_by(|a, b| b.score.total_cmp(&a.score).then_with(|| a.id.cmp(&b.id)));
            hits.truncate(request.limit);
            Ok(hits)
        })
        .await
    }

    async fn get(&self, tenant: &Tenant, ids: &[ChunkId]) -> Result<Vec<ChunkRecord>> {
        OBS.run("chunks", "get", async move {
            validate_ids(ids)?;
            let points = self.points.read().unwrap_or_else(|e| e.into_inner());
            Ok(ids
                .iter()
                .filter_map(|id| points.get(&point_id(tenant, *id)))
                .map(|p| ChunkRecord { id: p.id, payload: p.payload.clone() })
                .collect())
        })
        .await
    }

    async fn document_chunks(&self, tenant: &Tenant, document_id: &str) -> Result<Vec<ChunkRecord>> {
        OBS.run("chunks", "document_chunks", async move {
            validate_document_id(document_id)?;
            let filter = Filter::eq(crate::Field::DocumentId, document_id);
            let points = self.points.read().unwrap_or_else(|e| e.into_inner());
            let mut out: Vec<ChunkRecord> = Self::tenant_points(&points, tenant, Some(&filter))
                .map(|(_, p)| ChunkRecord { id: p.id, payload: p.payload.clone() })
                .collect();
            out.sort_by(|a, b| a.payload.chunk_index.cmp(&b.payload.chunk_index).then(a.id.cmp(&b.id)));
            Ok(out)
        })
        .await
    }

    async fn delete(&self, tenant: &Tenant, ids: &[ChunkId]) -> Result<()> {
        OBS.run("chunks", "delete", async move {
            validate_ids(ids)?;
            let mut points = self.points.write().unwrap_or_else(|e| e.into_inner());
            for id in ids {
                points.remove(&point_id(tenant, *id));
            }
            Ok(())
        })
        .await
    }

    async fn delete_document(&self, tenant: &Tenant, document_id: &str) -> Result<()> {
        OBS.run("chunks", "delete_document", async move {
            validate_document_id(document_id)?;
            self.delete_by_filter(tenant, &Filter::eq(crate::Field::DocumentId, document_id)).await
        })
        .await
    }

    async fn delete_by_filter(&self, tenant: &Tenant, filter: &Filter) -> Result<()> {
        OBS.run("chunks", "delete_by_filter", async move {
            filter.validate()?;
            let mut points = self.points.write().unwrap_or_else(|e| e.into_inner());
            let doomed: Vec<Uuid> = Self::tenant_points(&points, tenant, Some(filter)).map(|(k, _)| *k).collect();
            for k in doomed {
                points.remove(&k);
            }
            Ok(())
        })
        .await
    }

    async fn count(&self, tenant: &Tenant, filter: Option<&Filter>) -> Result<u64> {
        OBS.run("chunks", "count", async move {
            if let Some(f) = filter {
                f.validate()?;
            }
            let points = self.points.read().unwrap_or_else(|e| e.into_inner());
            Ok(Self::tenant_points(&points, tenant, filter).count() as u64)
        })
        .await
    }

    async fn scroll(
        &self,
        tenant: &Tenant,
        filter: Option<&Filter>,
        from: Option<ScrollCursor>,
        limit: usize,
    ) -> Result<ChunkPage> {
        OBS.run("chunks", "scroll", async move {
            validate_scroll(filter, limit)?;
            let points = self.points.read().unwrap_or_else(|e| e.into_inner());
            // By point id, like the Qdrant backends; the map is unordered, so
            // each page sorts the tenant's ids (an in-process index is small).
            let start = from.map(|c| c.point());
            let mut page: Vec<(&Uuid, &Point)> =
                Self::tenant_points(&points, tenant, filter).filter(|(k, _)| start.is_none_or(|s| **k >= s)).collect();
            page.sort_unstable_by_key(|(k, _)| **k);
            let next = page.get(limit).map(|(k, _)| ScrollCursor::from_point(**k));
            page.truncate(limit);
            let chunks = page.into_iter().map(|(_, p)| ChunkRecord { id: p.id, payload: p.payload.clone() }).collect();
            Ok(ChunkPage { chunks, next })
        })
        .await
    }
}
