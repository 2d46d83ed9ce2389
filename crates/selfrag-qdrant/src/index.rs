//! [`QdrantIndex`]: the [`VectorIndex`] on a Qdrant collection.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use qdrant_client::qdrant::{
    self, payload_index_params::IndexParams, Condition, CountPointsBuilder, CreateCollectionBuilder,
    CreateFieldIndexCollectionBuilder, DeleteCollectionBuilder, DeletePointsBuilder, FieldType, GetPointsBuilder,
    IntegerIndexParamsBuilder, KeywordIndexParamsBuilder, Query, QueryPointsBuilder, ScrollPointsBuilder,
    UpsertPointsBuilder, VectorParamsBuilder, WriteOrdering,
};
use qdrant_client::Qdrant;
use selfrag_core::observe::{system, OpMeta};
use selfrag_core::vector::{keys, validate_chunks, validate_document_id, validate_ids, validate_scroll};
use selfrag_core::{
    Chunk, ChunkId, ChunkPage, ChunkRecord, Error, Filter, IndexSpec, Result, ScoredChunk, ScrollCursor, SearchRequest,
    Tenant, VectorIndex,
};

use crate::config::QdrantIndexConfig;
use crate::convert::{
    chunk_point_id, chunk_points, decode_record, distance_to_qdrant, keyword_condition, scoped_filter,
    server_score_threshold, tenant_condition, to_core_score, upsert_batches, MAX_UPSERT_BYTES,
};
use crate::error::map_error;
use crate::report::{check_vectors, missing_indexes, EnsureReport, PayloadIndex};

/// A [`VectorIndex`] on one collection of a Qdrant server or cluster, over
/// gRPC. Clones share the client and its connections.
///
/// Call [`QdrantIndex::ensure`] once at startup: it creates the collection
/// and its payload indexes when missing and refuses a collection of another
/// shape. See the crate docs for the layout and guarantees.
#[derive(Clone)]
pub struct QdrantIndex {
    client: Qdrant,
    config: Arc<QdrantIndexConfig>,
    /// The span attributes of every call.
    obs: OpMeta,
    /// `db.collection.name`, shared by every call's span and metrics.
    collection: Arc<str>,
}

impl fmt::Debug for QdrantIndex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // `Qdrant` has no `Debug`; the config (with the key redacted) says
        // everything useful.
        f.debug_struct("QdrantIndex").field("config", &self.config).finish_non_exhaustive()
    }
}

/// The span attributes of calls to the server at `url`: its host and port
/// (the gRPC default 6334 when the URL names none). Never the API key, which
/// is not in the URL.
pub(crate) fn op_meta(url: &str) -> OpMeta {
    let meta = OpMeta::new(system::QDRANT);
    match url::Url::parse(url) {
        Ok(u) => match u.host_str() {
            Some(host) => {
                meta.with_server(host.trim_start_matches('[').trim_end_matches(']'), Some(u.port().unwrap_or(6334)))
            }
            None => meta,
        },
        Err(_) => meta,
    }
}

/// The create-index request parts of a required payload index: its field
/// type and parameters.
pub(crate) fn index_request(kind: &PayloadIndex) -> Option<(FieldType, IndexParams)> {
    match kind {
        PayloadIndex::Keyword { is_tenant } => {
            Some((FieldType::Keyword, KeywordIndexParamsBuilder::default().is_tenant(*is_tenant).into()))
        }
        PayloadIndex::Integer { lookup, range } => {
            Some((FieldType::Integer, IntegerIndexParamsBuilder::new(*lookup, *range).into()))
        }
        PayloadIndex::Other(_) => None,
    }
}

impl QdrantIndex {
    /// An index on `collection` of `spec` through a client the caller holds,
    /// with the default options of [`QdrantIndexConfig`]. Use
    /// [`QdrantIndexConfig::build_with_client`] to set options.
    ///
    /// # Errors
    /// [`selfrag_core::Error::InvalidInput`] (`collection`) for a name Qdrant
    /// would refuse.
    pub fn new(client: Qdrant, collection: impl Into<String>, spec: IndexSpec) -> Result<Self> {
        QdrantIndexConfig::new(client.config.uri.clone(), collection, spec).build_with_client(client)
    }

    pub(crate) fn from_parts(client: Qdrant, config: QdrantIndexConfig) -> Self {
        let obs = op_meta(&config.url);
        let collection = config.collection.as_str().into();
        Self { client, config: Arc::new(config), obs, collection }
    }

    /// The client (e.g. for operations this crate does not wrap).
    pub fn client(&self) -> &Qdrant {
        &self.client
    }

    /// The collection's name.
    pub fn collection(&self) -> &str {
        &self.config.collection
    }

    /// The configuration.
    pub fn config(&self) -> &QdrantIndexConfig {
        &self.config
    }

    fn action(&self, op: &str) -> String {
        format!("{op} in collection `{}`", self.config.collection)
    }

    fn ordering(&self) -> WriteOrdering {
        self.config.write_order.into()
    }

    /// The `read_consistency` of every read request (`None`: the server's
    /// default).
    fn read_consistency(&self) -> Option<qdrant::read_consistency::Value> {
        self.config.read_consistency.to_qdrant()
    }

    async fn info(&self) -> Result<qdrant::CollectionInfo> {
        let resp = self
            .client
            .collection_info(self.collection())
            .await
            .map_err(|e| map_error(&self.action("collection info"), e))?;
        resp.result.ok_or_else(|| selfrag_core::Error::Backend {
            backend: crate::convert::BACKEND,
            message: self.action("collection info: empty response"),
            retryable: true,
            source: None,
        })
    }

    /// Makes the collection ready, idempotently: creates it when missing
    /// (one unnamed dense vector of the spec, with the configured shards,
    /// replication and write consistency), checks an existing one's vectors,
    /// and creates any missing payload index (`tenant` keyword `is_tenant`;
    /// `document_type`, `tags`, `source`, `document_id` keyword;
    /// `chunk_index` integer with lookup and range). Each index request waits
    /// until the index is built. Safe to run from several processes at once.
    ///
    /// An index that exists with another kind is not replaced (that would
    /// drop and rebuild it under live traffic): it shows in
    /// [`EnsureReport::schema_problems`] and makes
    /// [`EnsureReport::is_ready`] false.
    ///
    /// # Errors
    /// [`selfrag_core::Error::Incompatible`] when the collection has another
    /// dimension or distance, named vectors or multivectors; the
    /// [mapped](crate::map_error) client error otherwise.
    pub async fn ensure(&self) -> Result<EnsureReport> {
        let name = self.collection();
        let exists =
            self.client.collection_exists(name).await.map_err(|e| map_error(&self.action("check existence"), e))?;
        let mut created_collection = false;
        if !exists {
            let spec = &self.config.spec;
            let dimension = u64::try_from(spec.dimension()).unwrap_or(u64::MAX);
            let mut create = CreateCollectionBuilder::new(name)
                .vectors_config(VectorParamsBuilder::new(dimension, distance_to_qdrant(spec.distance())));
            if let Some(n) = self.config.shard_number {
                create = create.shard_number(n);
            }
            if let Some(n) = self.config.replication_factor {
                create = create.replication_factor(n);
            }
            if let Some(n) = self.config.write_consistency_factor {
                create = create.write_consistency_factor(n);
            }
            match self.client.create_collection(create).await {
                Ok(_) => {
                    created_collection = true;
                    tracing::info!(collection = name, distance = %spec.distance(), dimension, "created Qdrant collection");
                }
                Err(e) => {
                    // Another process may have created it in between: then
                    // go on and check what it created.
                    let now = self.client.collection_exists(name).await.unwrap_or(false);
                    if !now {
                        return Err(map_error(&self.action("create collection"), e));
                    }
                }
            }
        }
        let info = self.info().await?;
        check_vectors(name, &self.config.spec, &info)?;
        let mut created_indexes = Vec::new();
        for (field, kind) in missing_indexes(&info) {
            let Some((field_type, params)) = index_request(&kind) else { continue };
            let request = CreateFieldIndexCollectionBuilder::new(name, field, field_type)
                .field_index_params(params)
                .wait(true)
                .ordering(self.ordering());
            self.client
                .create_field_index(request)
                .await
                .map_err(|e| map_error(&self.action(&format!("create payload index `{field}`")), e))?;
            tracing::info!(collection = name, field, %kind, "created Qdrant payload index");
            created_indexes.push(field.to_owned());
        }
        let info = if created_indexes.is_empty() { info } else { self.info().await? };
        let mut report = EnsureReport::from_info(name, &info);
        report.created_collection = created_collection;
        report.created_indexes = created_indexes;
        Ok(report)
    }

    /// The collection's current status, size and payload schema, changing
    /// nothing (e.g. to wait for green after a bulk load).
    ///
    /// # Errors
    /// [`selfrag_core::Error::Incompatible`] when the collection does not
    /// exist; the mapped client error otherwise.
    pub async fn report(&self) -> Result<EnsureReport> {
        Ok(EnsureReport::from_info(self.collection(), &self.info().await?))
    }

    /// Deletes the whole collection, with every tenant's points. Returns
    /// whether it existed.
    ///
    /// # Errors
    /// The mapped client error.
    pub async fn delete_collection(&self) -> Result<bool> {
        let resp = self
            .client
            .delete_collection(DeleteCollectionBuilder::new(self.collection()))
            .await
            .map_err(|e| map_error(&self.action("delete collection"), e))?;
        Ok(resp.result)
    }

    fn page_limit(&self) -> u32 {
        u32::try_from(self.config.page_size).unwrap_or(u32::MAX)
    }

    /// Every point of `tenant` passing `must`, paged by point id.
    async fn scroll_all(&self, tenant: &Tenant, must: Vec<Condition>) -> Result<Vec<ChunkRecord>> {
        let mut out = Vec::new();
        let mut offset: Option<qdrant::PointId> = None;
        loop {
            let mut request = ScrollPointsBuilder::new(self.collection())
                .filter(qdrant::Filter::must(must.clone()))
                .limit(self.page_limit())
                .with_payload(true)
                .with_vectors(false);
            if let Some(o) = offset.take() {
                request = request.offset(o);
            }
            if let Some(rc) = self.read_consistency() {
                request = request.read_consistency(rc);
            }
            let resp = self.client.scroll(request).await.map_err(|e| map_error(&self.action("scroll"), e))?;
            for p in resp.result {
                out.extend(decode_record(tenant, p.payload)?);
            }
            match resp.next_page_offset {
                Some(next) => offset = Some(next),
                None => return Ok(out),
            }
        }
    }

    async fn delete_where(&self, op: &str, filter: qdrant::Filter) -> Result<()> {
        let request = DeletePointsBuilder::new(self.collection()).points(filter).wait(true).ordering(self.ordering());
        self.client.delete_points(request).await.map_err(|e| map_error(&self.action(op), e))?;
        Ok(())
    }
}

#[async_trait]
impl VectorIndex for QdrantIndex {
    fn spec(&self) -> &IndexSpec {
        &self.config.spec
    }

    async fn upsert(&self, tenant: &Tenant, chunks: Vec<Chunk>) -> Result<()> {
        self.obs
            .run(self.collection.clone(), "upsert", async move {
                validate_chunks(&self.config.spec, &chunks)?;
                // Every point is built before the first request, so a value Qdrant
                // cannot store rejects the whole upsert with nothing written.
                let points = chunk_points(tenant, chunks)?;
                // Cut by count and by encoded size: a few hundred large vectors can
                // exceed Qdrant's 32 MiB gRPC message limit.
                for batch in upsert_batches(points, self.config.upsert_batch_size, MAX_UPSERT_BYTES) {
                    let request =
                        UpsertPointsBuilder::new(self.collection(), batch).wait(true).ordering(self.ordering());
                    self.client.upsert_points(request).await.map_err(|e| map_error(&self.action("upsert"), e))?;
                }
                Ok(())
            })
            .await
    }

    async fn search(&self, tenant: &Tenant, request: &SearchRequest) -> Result<Vec<ScoredChunk>> {
        self.obs
            .run(self.collection.clone(), "search", async move {
                request.validate(&self.config.spec)?;
                let distance = self.config.spec.distance();
                let threshold = match request.score_threshold {
                    None => None,
                    Some(t) => match server_score_threshold(distance, t) {
                        Some(server) => Some(server),
                        // A positive threshold on a distance: nothing can pass.
                        None => return Ok(Vec::new()),
                    },
                };
                let mut query = QueryPointsBuilder::new(self.collection())
                    .query(Query::new_nearest(request.vector.clone()))
                    .filter(scoped_filter(tenant, request.filter.as_ref()))
                    .limit(u64::try_from(request.limit).unwrap_or(u64::MAX))
                    .with_payload(true)
                    .with_vectors(false);
                if let Some(t) = threshold {
                    query = query.score_threshold(t);
                }
                if let Some(rc) = self.read_consistency() {
                    query = query.read_consistency(rc);
                }
                let resp = self.client.query(query).await.map_err(|e| map_error(&self.action("search"), e))?;
                let mut hits = Vec::with_capacity(resp.result.len());
                for p in resp.result {
                    let score = to_core_score(distance, p.score);
                    // The server applied a slightly looser, exclusive threshold (see
                    // `server_score_threshold`); this makes the boundary exactly the
                    // contract's inclusive `score >= threshold`.
                    if request.score_threshold.is_some_and(|t| score < t) {
                        continue;
                    }
                    if let Some(rec) = decode_record(tenant, p.payload)? {
                        hits.push(ScoredChunk { id: rec.id, score, payload: rec.payload });
                    }
                }
                // Best first, ties by id: deterministic like the reference backend.
                hits.sort_by(|a, b| b.score.total_cmp(&a.score).then_with(|| a.id.cmp(&b.id)));
                Ok(hits)
            })
            .await
    }

    async fn get(&self, tenant: &Tenant, ids: &[ChunkId]) -> Result<Vec<ChunkRecord>> {
        self.obs
            .run(self.collection.clone(), "get", async move {
                validate_ids(ids)?;
                if ids.is_empty() {
                    return Ok(Vec::new());
                }
                // Each point once, however often the caller repeats an id; the
                // answer still follows `ids`, repeats included.
                let mut seen = HashSet::with_capacity(ids.len());
                let point_ids: Vec<qdrant::PointId> =
                    ids.iter().filter(|id| seen.insert(**id)).map(|id| chunk_point_id(tenant, *id)).collect();
                let mut request =
                    GetPointsBuilder::new(self.collection(), point_ids).with_payload(true).with_vectors(false);
                if let Some(rc) = self.read_consistency() {
                    request = request.read_consistency(rc);
                }
                let resp = self.client.get_points(request).await.map_err(|e| map_error(&self.action("get"), e))?;
                let mut found: HashMap<ChunkId, ChunkRecord> = HashMap::with_capacity(resp.result.len());
                for p in resp.result {
                    if let Some(rec) = decode_record(tenant, p.payload)? {
                        found.insert(rec.id, rec);
                    }
                }
                Ok(ids.iter().filter_map(|id| found.get(id).cloned()).collect())
            })
            .await
    }

    async fn document_chunks(&self, tenant: &Tenant, document_id: &str) -> Result<Vec<ChunkRecord>> {
        self.obs
            .run(self.collection.clone(), "document_chunks", async move {
                validate_document_id(document_id)?;
                // A document is small next to a page budget: read all its points
                // (paged by point id) and order them here, by `chunk_index` then id.
                let must = vec![tenant_condition(tenant), keyword_condition(keys::DOCUMENT_ID, document_id)];
                let mut out = self.scroll_all(tenant, must).await?;
                out.sort_by(|a, b| a.payload.chunk_index.cmp(&b.payload.chunk_index).then(a.id.cmp(&b.id)));
                Ok(out)
            })
            .await
    }

    async fn delete(&self, tenant: &Tenant, ids: &[ChunkId]) -> Result<()> {
        self.obs
            .run(self.collection.clone(), "delete", async move {
                validate_ids(ids)?;
                if ids.is_empty() {
                    return Ok(());
                }
                let has_id = Condition::has_id(ids.iter().map(|id| chunk_point_id(tenant, *id)));
                self.delete_where("delete", qdrant::Filter::must([tenant_condition(tenant), has_id])).await
            })
            .await
    }

    async fn delete_document(&self, tenant: &Tenant, document_id: &str) -> Result<()> {
        self.obs
            .run(self.collection.clone(), "delete_document", async move {
                validate_document_id(document_id)?;
                let filter =
                    qdrant::Filter::must([tenant_condition(tenant), keyword_condition(keys::DOCUMENT_ID, document_id)]);
                self.delete_where("delete document", filter).await
            })
            .await
    }

    async fn delete_by_filter(&self, tenant: &Tenant, filter: &Filter) -> Result<()> {
        self.obs
            .run(self.collection.clone(), "delete_by_filter", async move {
                filter.validate()?;
                self.delete_where("delete by filter", scoped_filter(tenant, Some(filter))).await
            })
            .await
    }

    async fn count(&self, tenant: &Tenant, filter: Option<&Filter>) -> Result<u64> {
        self.obs
            .run(self.collection.clone(), "count", async move {
                if let Some(f) = filter {
                    f.validate()?;
                }
                let mut request =
                    CountPointsBuilder::new(self.collection()).filter(scoped_filter(tenant, filter)).exact(true);
                if let Some(rc) = self.read_consistency() {
                    request = request.read_consistency(rc);
                }
                let resp = self.client.count(request).await.map_err(|e| map_error(&self.action("count"), e))?;
                Ok(resp.result.map_or(0, |r| r.count))
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
        self.obs
            .run(self.collection.clone(), "scroll", async move {
                validate_scroll(filter, limit)?;
                let request = scroll_request(self.collection(), tenant, filter, from, limit, self.read_consistency());
                let resp = self.client.scroll(request).await.map_err(|e| map_error(&self.action("scroll"), e))?;
                let mut chunks = Vec::with_capacity(resp.result.len());
                for p in resp.result {
                    chunks.extend(decode_record(tenant, p.payload)?);
                }
                let next = resp.next_page_offset.map(scroll_cursor).transpose()?;
                Ok(ChunkPage { chunks, next })
            })
            .await
    }
}

/// The request of one [`VectorIndex::scroll`] page: the tenant's points
/// passing `filter`, from the point `from`, payloads without vectors.
pub(crate) fn scroll_request(
    collection: &str,
    tenant: &Tenant,
    filter: Option<&Filter>,
    from: Option<ScrollCursor>,
    limit: usize,
    read_consistency: Option<qdrant::read_consistency::Value>,
) -> qdrant::ScrollPoints {
    let mut request = ScrollPointsBuilder::new(collection)
        .filter(scoped_filter(tenant, filter))
        .limit(u32::try_from(limit).unwrap_or(u32::MAX))
        .with_payload(true)
        .with_vectors(false);
    if let Some(c) = from {
        request = request.offset(qdrant::PointId::from(c.point().to_string()));
    }
    if let Some(rc) = read_consistency {
        request = request.read_consistency(rc);
    }
    request.build()
}

/// The cursor of a page's `next_page_offset`.
///
/// # Errors
/// [`Error::Incompatible`] for a numeric or malformed point id: this
/// library writes UUIDs only.
pub(crate) fn scroll_cursor(point: qdrant::PointId) -> Result<ScrollCursor> {
    let bad = |what: String| Error::Incompatible {
        backend: crate::convert::BACKEND,
        message: format!("scroll offset {what} is not a UUID point id: not written by this library"),
    };
    match point.point_id_options {
        Some(qdrant::point_id::PointIdOptions::Uuid(s)) => s.parse::<ScrollCursor>().map_err(|_| bad(s)),
        other => Err(bad(format!("{other:?}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use qdrant_client::qdrant::{IntegerIndexParams, KeywordIndexParams};
    use selfrag_core::Distance;

    #[test]
    fn scroll_requests_are_scoped_paged_and_without_vectors() {
        use qdrant_client::qdrant::{point_id::PointIdOptions, with_payload_selector, with_vectors_selector};
        let tenant = Tenant::new("t1").unwrap();
        let user = selfrag_core::UserId::new();
        let filter = Filter::eq(selfrag_core::Field::Extra("user_id".into()), user.to_string());
        let point = uuid::Uuid::new_v4();
        let r = scroll_request("c", &tenant, Some(&filter), Some(ScrollCursor::from_point(point)), 250, None);
        assert_eq!(r.collection_name, "c");
        assert_eq!(r.limit, Some(250));
        assert_eq!(r.filter, Some(scoped_filter(&tenant, Some(&filter))));
        let offset = r.offset.and_then(|o| o.point_id_options);
        assert_eq!(offset, Some(PointIdOptions::Uuid(point.to_string())));
        let with_payload = r.with_payload.and_then(|w| w.selector_options);
        assert_eq!(with_payload, Some(with_payload_selector::SelectorOptions::Enable(true)));
        let with_vectors = r.with_vectors.and_then(|w| w.selector_options);
        assert_eq!(with_vectors, Some(with_vectors_selector::SelectorOptions::Enable(false)));
        assert!(r.read_consistency.is_none());
        // The first page has no offset; the tenant scopes it even without a filter.
        let first = scroll_request("c", &tenant, None, None, 1, None);
        assert!(first.offset.is_none());
        assert_eq!(first.filter, Some(scoped_filter(&tenant, None)));
    }

    #[test]
    fn scroll_cursors_come_from_uuid_point_ids_only() {
        let point = uuid::Uuid::new_v4();
        let c = scroll_cursor(qdrant::PointId::from(point.to_string())).unwrap();
        assert_eq!(c.point(), point);
        let err = scroll_cursor(qdrant::PointId::from(7u64)).unwrap_err();
        assert_eq!(err.kind(), selfrag_core::ErrorKind::Incompatible, "{err}");
        let err = scroll_cursor(qdrant::PointId::from("not-a-uuid".to_owned())).unwrap_err();
        assert_eq!(err.kind(), selfrag_core::ErrorKind::Incompatible, "{err}");
    }

    #[tokio::test]
    async fn scroll_checks_its_input_before_sending() {
        // No server at this address: a request sent would fail as unavailable.
        let index = QdrantIndex::new(
            Qdrant::from_url("http://127.0.0.1:1").skip_compatibility_check().build().unwrap(),
            "c",
            IndexSpec::new(4, Distance::Cosine).unwrap(),
        )
        .unwrap();
        let t = Tenant::new("t").unwrap();
        for limit in [0, selfrag_core::vector::MAX_SCROLL + 1] {
            let err = index.scroll(&t, None, None, limit).await.unwrap_err();
            assert_eq!(err.field(), Some("limit"), "{err}");
        }
        let bad = Filter::eq(selfrag_core::Field::Extra("no spaces".into()), "x");
        let err = index.scroll(&t, Some(&bad), None, 10).await.unwrap_err();
        assert_eq!(err.field(), Some("filter.field"), "{err}");
    }

    #[test]
    fn index_requests_carry_tenant_and_range_flags() {
        let (t, p) = index_request(&PayloadIndex::Keyword { is_tenant: true }).unwrap();
        assert_eq!(t, FieldType::Keyword);
        assert_eq!(
            p,
            IndexParams::KeywordIndexParams(KeywordIndexParams { is_tenant: Some(true), ..Default::default() })
        );
        let (t, p) = index_request(&PayloadIndex::Integer { lookup: true, range: true }).unwrap();
        assert_eq!(t, FieldType::Integer);
        assert_eq!(
            p,
            IndexParams::IntegerIndexParams(IntegerIndexParams {
                lookup: Some(true),
                range: Some(true),
                ..Default::default()
            })
        );
        assert!(index_request(&PayloadIndex::Other("Text".into())).is_none());
    }

    #[test]
    fn new_keeps_the_clients_url_and_checks_the_name() {
        let client = Qdrant::from_url("http://127.0.0.1:1").skip_compatibility_check().build().unwrap();
        let spec = IndexSpec::new(3, Distance::Dot).unwrap();
        let index = QdrantIndex::new(client.clone(), "c1", spec).unwrap();
        assert_eq!(index.collection(), "c1");
        assert_eq!(index.config().url, "http://127.0.0.1:1");
        assert_eq!(index.spec(), &spec);
        assert!(format!("{index:?}").contains("c1"));
        assert_eq!(QdrantIndex::new(client, "a/b", spec).unwrap_err().field(), Some("collection"));
    }

    /// A server that accepts connections and never answers (a hung server,
    /// or one behind a partition that drops packets): every call ends at
    /// the request timeout with a retryable, ambiguous `Timeout`, not later.
    #[tokio::test]
    async fn a_silent_server_times_out_at_the_deadline() {
        let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = silent.local_addr().unwrap().port();
        // Accept and hold every connection without reading or answering.
        let held = tokio::spawn(async move {
            let mut conns = Vec::new();
            while let Ok((c, _)) = silent.accept().await {
                conns.push(c);
            }
        });
        let timeout = std::time::Duration::from_millis(600);
        let index = QdrantIndexConfig::new(
            format!("http://127.0.0.1:{port}"),
            "c",
            IndexSpec::new(2, Distance::Cosine).unwrap(),
        )
        .timeout(timeout)
        .connect_timeout(timeout)
        .build()
        .unwrap();
        let t = Tenant::new("t").unwrap();
        for _ in 0..2 {
            let started = std::time::Instant::now();
            let err = index.count(&t, None).await.unwrap_err();
            let took = started.elapsed();
            assert!(
                matches!(err.kind(), selfrag_core::ErrorKind::Timeout | selfrag_core::ErrorKind::Unavailable),
                "{err:?}"
            );
            assert!(err.is_retryable(), "{err:?}");
            assert!(took < timeout * 2 + std::time::Duration::from_millis(500), "the call took {took:?}");
        }
        held.abort();
    }

    /// Span attributes name the server's host and port (the gRPC default
    /// when the URL has none) and never the API key.
    #[test]
    fn span_attributes_come_from_the_url() {
        let meta = op_meta("https://qdrant.example.com");
        assert_eq!(meta.system(), "qdrant");
        assert_eq!(meta.server_address(), Some("qdrant.example.com"));
        assert_eq!(meta.server_port(), Some(6334));
        let meta = op_meta("http://[::1]:7000");
        assert_eq!((meta.server_address(), meta.server_port()), (Some("::1"), Some(7000)));
        assert_eq!(op_meta("not a url").server_address(), None);
    }

    /// A failed call's span and metrics: `qdrant`, the collection, the
    /// server, `error.type` = `unavailable`; a refused input is
    /// `invalid_input`. The API key and the tenant show nowhere.
    #[tokio::test]
    async fn failures_are_observed_without_the_api_key() {
        use selfrag_core::observe::names;
        use selfrag_testkit::observe::{Capture, Metrics};
        let key = "key-observe-qdrant-0c4d";
        let index = QdrantIndexConfig::new("http://127.0.0.1:1", "obs", IndexSpec::new(2, Distance::Cosine).unwrap())
            .api_key(key)
            .connect_timeout(std::time::Duration::from_secs(2))
            .build()
            .unwrap();
        let t = Tenant::new("tenant-observe-77").unwrap();
        let (capture, metrics) = (Capture::new(), Metrics::new());
        {
            let _s = capture.set_default();
            let _m = metrics.set_default();
            index.count(&t, None).await.unwrap_err();
            index.search(&t, &SearchRequest::new(vec![1.0; 3], 1)).await.unwrap_err();
        }
        let count = capture.op("count");
        assert_eq!(count.field("db.system.name"), Some("qdrant"));
        assert_eq!(count.field("db.collection.name"), Some("obs"));
        assert_eq!(count.field("server.address"), Some("127.0.0.1"));
        assert_eq!(count.field("server.port"), Some("1"));
        assert_eq!(count.field("error.type"), Some("unavailable"));
        assert_eq!(capture.op("search").field("error.type"), Some("invalid_input"));
        let labels = [("db.system.name", "qdrant"), ("db.operation.name", "count"), ("error.type", "unavailable")];
        assert_eq!(metrics.counter(names::OPERATION_ERRORS, &labels), 1);
        capture.assert_absent(&[key, "tenant-observe-77"]);
        metrics.assert_absent(&[key, "tenant-observe-77"]);
    }

    /// With no server, calls fail as retryable `Unavailable` errors, and bad
    /// input is refused before any connection is tried.
    #[tokio::test]
    async fn unreachable_server_is_unavailable_and_input_is_checked_first() {
        // Port 1 on localhost refuses connections.
        let index = QdrantIndexConfig::new("http://127.0.0.1:1", "c", IndexSpec::new(2, Distance::Cosine).unwrap())
            .connect_timeout(std::time::Duration::from_secs(2))
            .build()
            .unwrap();
        let t = Tenant::new("t").unwrap();
        let err = index.count(&t, None).await.unwrap_err();
        assert!(err.is_retryable(), "{err:?}");
        assert_eq!(err.kind(), selfrag_core::ErrorKind::Unavailable, "{err}");
        let err = index.ensure().await.unwrap_err();
        assert_eq!(err.kind(), selfrag_core::ErrorKind::Unavailable, "{err}");
        // Every request is built (the client's builders panic on a missing
        // required field) and its failure mapped, on every path.
        let good = Chunk::new("d", 0, "x", vec![1.0, 0.0]).tags(["a"]);
        let filter = Filter::all([Filter::eq(selfrag_core::Field::Tags, "a"), Filter::not(Filter::any([]))]);
        let valid = Filter::any([Filter::eq(selfrag_core::Field::Tags, "a")]);
        let search = SearchRequest::new(vec![1.0, 0.0], 3).filter(valid.clone()).score_threshold(0.2);
        let results = [
            index.upsert(&t, vec![good.clone()]).await.err(),
            index.search(&t, &search).await.err(),
            index.get(&t, &[good.id]).await.err(),
            index.document_chunks(&t, "d").await.err(),
            index.delete(&t, &[good.id]).await.err(),
            index.delete_document(&t, "d").await.err(),
            index.delete_by_filter(&t, &valid).await.err(),
            index.report().await.err(),
            index.delete_collection().await.err(),
        ];
        for (i, r) in results.into_iter().enumerate() {
            let err = r.unwrap_or_else(|| panic!("call {i} succeeded without a server"));
            assert!(err.is_retryable(), "call {i}: {err}");
        }
        assert_eq!(index.count(&t, Some(&filter)).await.unwrap_err().field(), Some("filter"));

        let bad = Chunk::new("d", 0, "x", vec![1.0, f32::NAN]);
        let err = index.upsert(&t, vec![bad]).await.unwrap_err();
        assert_eq!(err.field(), Some("chunks[0].vector[1]"));
        let err = index.search(&t, &SearchRequest::new(vec![1.0, 0.0], 0)).await.unwrap_err();
        assert_eq!(err.field(), Some("limit"));
        let err = index.count(&t, Some(&Filter::any([]))).await.unwrap_err();
        assert_eq!(err.field(), Some("filter"));
        let err = index.delete_by_filter(&t, &Filter::any([])).await.unwrap_err();
        assert_eq!(err.field(), Some("filter"));
        for err in [index.document_chunks(&t, "").await.unwrap_err(), index.delete_document(&t, "").await.unwrap_err()]
        {
            assert_eq!(err.field(), Some("document_id"), "{err}");
        }
        // Nothing to send: no request, no error.
        index.upsert(&t, Vec::new()).await.unwrap();
        assert!(index.get(&t, &[]).await.unwrap().is_empty());
        index.delete(&t, &[]).await.unwrap();
        // A positive threshold on a distance index answers without the server.
        let euclid = QdrantIndexConfig::new("http://127.0.0.1:1", "c", IndexSpec::new(2, Distance::Euclid).unwrap())
            .build()
            .unwrap();
        let req = SearchRequest::new(vec![1.0, 0.0], 3).score_threshold(0.5);
        assert!(euclid.search(&t, &req).await.unwrap().is_empty());
    }
}
