//! Qdrant rows: upsert (batches of 256, dim 384) and filtered top-10 search,
//! against qdrant-client calls on the same client, collection and payload
//! layout (each side under its own tenant).

use std::sync::Arc;

use qdrant_client::qdrant::{Condition, Filter as QFilter, PointStruct, QueryPointsBuilder, UpsertPointsBuilder};
use qdrant_client::Payload;
use selfrag_core::vector::point_id;
use selfrag_core::{Chunk, Distance, IndexSpec, SearchRequest, Tenant, VectorIndex};
use selfrag_qdrant::QdrantIndexConfig;
use serde_json::Value;

use crate::measure::{compare, op, Res, Row};
use crate::Plan;
use selfrag_testkit::data::{filter, Clustered};

const DIM: usize = 384;
const BATCH: usize = 256;
const COLLECTION: &str = "selfrag_bench";

pub(crate) async fn run(url: &str, plan: &Plan, rows: &mut Vec<Row>) -> Res<()> {
    let spec = IndexSpec::new(DIM, Distance::Cosine)?;
    let index = Arc::new(QdrantIndexConfig::new(url, COLLECTION, spec).build()?);
    index.delete_collection().await?;
    index.ensure().await?;
    let client = index.client().clone();
    let (ours_t, raw_t) = (Tenant::new("bench-ours")?, Tenant::new("bench-raw")?);

    // A pool of vectors reused by every batch (generation is not measured);
    // chunk ids come from the op number, so every upsert writes new points.
    let mut gen = Clustered::new(DIM, 0x5E1F_BE9C_0000_0002);
    let pool: Arc<Vec<(Chunk, bool)>> = Arc::new((0..4096).map(|i| gen.chunk(i)).collect());
    let chunks = |pool: &[(Chunk, bool)], i: u64| -> Vec<Chunk> {
        (0..BATCH)
            .map(|k| {
                let n = usize::try_from(i).unwrap_or(0) * BATCH + k;
                let (c, _) = &pool[n % pool.len()];
                let mut chunk =
                    Chunk::new(format!("doc-{i}"), u32::try_from(k).unwrap_or(0), "bench chunk", c.vector.clone());
                chunk.payload.document_type.clone_from(&c.payload.document_type);
                chunk.payload.tags.clone_from(&c.payload.tags);
                chunk
            })
            .collect()
    };

    for &c in &plan.concurrency {
        let ops = plan.ops(c, 100).max(c as u64);
        let (ix, p, t) = (index.clone(), pool.clone(), ours_t.clone());
        let ours = op(move |i| {
            let (ix, p, t) = (ix.clone(), p.clone(), t.clone());
            async move { Ok(ix.upsert(&t, chunks(&p, i)).await?) }
        });
        let (cl, p, t) = (client.clone(), pool.clone(), raw_t.clone());
        let raw = op(move |i| {
            let (cl, p, t) = (cl.clone(), p.clone(), t.clone());
            async move {
                let points = chunks(&p, i)
                    .into_iter()
                    .map(|c| {
                        let payload = Payload::try_from(Value::Object(c.payload.to_json(&t, c.id)))?;
                        Ok(PointStruct::new(point_id(&t, c.id).to_string(), c.vector, payload))
                    })
                    .collect::<Res<Vec<_>>>()?;
                cl.upsert_points(UpsertPointsBuilder::new(COLLECTION, points).wait(true)).await?;
                Ok(())
            }
        });
        let cmp = compare(&ours, &raw, c, ops, plan.rounds, plan.target).await?;
        rows.push(crate::row("vector upsert (256 x 384) vs upsert_points", c, cmp));
        crate::print_last(rows);
    }

    let queries: Arc<Vec<Vec<f32>>> = Arc::new((0..256).map(|_| gen.vector()).collect());
    for &c in &plan.concurrency {
        let ops = plan.ops(c, 2_000);
        let (ix, q, t) = (index.clone(), queries.clone(), ours_t.clone());
        let ours = op(move |i| {
            let (ix, q, t) = (ix.clone(), q.clone(), t.clone());
            async move {
                let v = q[usize::try_from(i).unwrap_or(0) % q.len()].clone();
                ix.search(&t, &SearchRequest::new(v, 10).filter(filter())).await?;
                Ok(())
            }
        });
        let (cl, q, t) = (client.clone(), queries.clone(), raw_t.clone());
        let raw = op(move |i| {
            let (cl, q, t) = (cl.clone(), q.clone(), t.clone());
            async move {
                let v = q[usize::try_from(i).unwrap_or(0) % q.len()].clone();
                let f = QFilter::must([
                    Condition::matches("tenant", t.as_str().to_owned()),
                    Condition::matches("document_type", "pdf".to_owned()),
                    Condition::matches("tags", vec!["a".to_owned(), "b".to_owned()]),
                ]);
                let q = QueryPointsBuilder::new(COLLECTION).query(v).filter(f).limit(10).with_payload(true);
                cl.query(q).await?;
                Ok(())
            }
        });
        let cmp = compare(&ours, &raw, c, ops, plan.rounds, plan.target).await?;
        rows.push(crate::row("vector filtered search (top 10) vs query", c, cmp));
        crate::print_last(rows);
    }
    index.delete_collection().await?;
    Ok(())
}
