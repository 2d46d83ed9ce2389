//! Pure translations between the core types and qdrant-client's gRPC types.
//!
//! Nothing here talks to a server, so every rule is unit-tested on its own:
//! filters operator by operator, the tenant scope, scores and thresholds per
//! distance, payload values, and the points an upsert sends.

use std::collections::HashMap;

use qdrant_client::qdrant::{
    self, condition::ConditionOneOf, r#match::MatchValue as QMatch, value::Kind, Condition, FieldCondition, ListValue,
    PointStruct, RepeatedIntegers, RepeatedStrings, Struct,
};
use selfrag_core::vector::{keys, point_id, AnyOfValues};
use selfrag_core::{Chunk, ChunkId, ChunkPayload, ChunkRecord, Distance, Error, Filter, MatchValue, Result, Tenant};
use serde_json::{Map, Number, Value};

/// The backend name used in errors.
pub const BACKEND: &str = "qdrant";

/// The Qdrant distance for a core [`Distance`].
pub fn distance_to_qdrant(distance: Distance) -> qdrant::Distance {
    match distance {
        Distance::Cosine => qdrant::Distance::Cosine,
        Distance::Dot => qdrant::Distance::Dot,
        Distance::Euclid => qdrant::Distance::Euclid,
        Distance::Manhattan => qdrant::Distance::Manhattan,
        // `Distance` is non-exhaustive; a new variant must be mapped here
        // before this backend can serve it, and `check_vectors` refuses it.
        #[allow(unreachable_patterns)]
        _ => qdrant::Distance::UnknownDistance,
    }
}

/// The core [`Distance`] for a Qdrant distance code (`None` for one the
/// core does not know).
pub fn distance_from_qdrant(code: i32) -> Option<Distance> {
    match qdrant::Distance::try_from(code).ok()? {
        qdrant::Distance::Cosine => Some(Distance::Cosine),
        qdrant::Distance::Dot => Some(Distance::Dot),
        qdrant::Distance::Euclid => Some(Distance::Euclid),
        qdrant::Distance::Manhattan => Some(Distance::Manhattan),
        qdrant::Distance::UnknownDistance => None,
    }
}

/// Whether Qdrant reports this distance as a distance (lower is better)
/// rather than a similarity.
fn is_distance_scored(distance: Distance) -> bool {
    matches!(distance, Distance::Euclid | Distance::Manhattan)
}

/// The core score (higher is better) of a score Qdrant returned.
///
/// Qdrant returns cosine similarity and dot product as they are, but the
/// Euclidean and Manhattan *distances* (lower is better): those are negated.
pub fn to_core_score(distance: Distance, server_score: f32) -> f32 {
    if is_distance_scored(distance) {
        -server_score
    } else {
        server_score
    }
}

/// The `score_threshold` to send to Qdrant for a core threshold `t` (the
/// contract keeps hits with core score `>= t`).
///
/// Qdrant's threshold is exclusive: it keeps `score > t` for cosine and dot
/// and `distance < d` for Euclid and Manhattan, so a hit exactly at the
/// boundary (e.g. an exact match under a Euclid threshold of `0.0`) would be
/// lost. The value sent is therefore a little looser than `t`, by
/// `max(|t|, 1) * 1e-6` (well above f32 rounding at any magnitude), and
/// [`QdrantIndex::search`](crate::QdrantIndex) filters the hits again with
/// the exact `score >= t`.
///
/// For cosine and dot the threshold is a minimum similarity: `t - slack` is
/// sent. For Euclid and Manhattan Qdrant reads it as a *maximum distance*:
/// `-d >= t` is `d <= -t`, so `-t + slack` is sent (`0.0` becomes a tiny
/// positive distance). `None` means no hit can pass (a positive threshold on
/// a distance, which is never negative): the caller answers with no hits
/// without asking the server.
pub fn server_score_threshold(distance: Distance, threshold: f32) -> Option<f32> {
    let slack = threshold.abs().max(1.0) * THRESHOLD_SLACK;
    if is_distance_scored(distance) {
        if threshold > 0.0 {
            None
        } else {
            Some(-threshold + slack)
        }
    } else {
        Some(threshold - slack)
    }
}

/// Relative loosening of a threshold sent to Qdrant; see
/// [`server_score_threshold`].
const THRESHOLD_SLACK: f32 = 1e-6;

/// Upper bound on the encoded points of one upsert request. Qdrant refuses
/// gRPC messages over 32 MiB by default; half of that leaves room for the
/// request's other fields and for servers with a lower limit.
pub const MAX_UPSERT_BYTES: usize = 16 * 1024 * 1024;

/// The bytes `point` adds to an upsert request: its encoded length plus the
/// field tag and length prefix of the repeated `points` field.
pub fn point_request_len(point: &PointStruct) -> usize {
    let len = prost::Message::encoded_len(point);
    1 + prost::length_delimiter_len(len) + len
}

/// Splits the points of an upsert into requests of at most `max_points`
/// points and `max_bytes` encoded bytes each, keeping their order. A point
/// that alone exceeds `max_bytes` goes in a request of its own (the server
/// decides whether it fits its limit). `max_points` of 0 counts as 1.
pub fn upsert_batches(points: Vec<PointStruct>, max_points: usize, max_bytes: usize) -> Vec<Vec<PointStruct>> {
    let max_points = max_points.max(1);
    let mut batches = Vec::new();
    let mut batch: Vec<PointStruct> = Vec::new();
    let mut bytes = 0usize;
    for point in points {
        let len = point_request_len(&point);
        if !batch.is_empty() && (batch.len() >= max_points || bytes.saturating_add(len) > max_bytes) {
            batches.push(std::mem::take(&mut batch));
            bytes = 0;
        }
        bytes = bytes.saturating_add(len);
        batch.push(point);
    }
    if !batch.is_empty() {
        batches.push(batch);
    }
    batches
}

fn field_condition(key: String, r#match: Option<QMatch>, range: Option<qdrant::Range>) -> Condition {
    Condition {
        condition_one_of: Some(ConditionOneOf::Field(FieldCondition {
            key,
            r#match: r#match.map(|m| qdrant::Match { match_value: Some(m) }),
            range,
            ..Default::default()
        })),
    }
}

/// An exact keyword condition. Built by hand: qdrant-client's
/// `From<String> for MatchValue` turns a string with whitespace into a
/// full-text match, which is not equality.
pub fn keyword_condition(key: &str, value: &str) -> Condition {
    field_condition(key.to_owned(), Some(QMatch::Keyword(value.to_owned())), None)
}

/// The condition every request carries: `tenant == <tenant>`.
pub fn tenant_condition(tenant: &Tenant) -> Condition {
    keyword_condition(keys::TENANT, tenant.as_str())
}

fn match_of(value: &MatchValue) -> QMatch {
    match value {
        MatchValue::Keyword(s) => QMatch::Keyword(s.clone()),
        MatchValue::Integer(i) => QMatch::Integer(*i),
        MatchValue::Bool(b) => QMatch::Boolean(*b),
    }
}

/// The Qdrant condition for a core [`Filter`] (which the caller has
/// validated).
///
/// | core | Qdrant |
/// | --- | --- |
/// | `Eq` | field condition with a `keyword` / `integer` / `boolean` match |
/// | `AnyOf` all keywords / all integers | `keywords` / `integers` (match any) |
/// | `AnyOf` mixed or booleans | `should` of one match per value |
/// | `Range` | `range` with the same bounds (as `f64`) |
/// | `All` | nested filter with `must` |
/// | `Any` | nested filter with `should` |
/// | `Not` | nested filter with `must_not` |
///
/// Array fields (`tags`) match when any element does, and a missing field
/// never matches, so `Not(Eq)` keeps chunks without the field: the core
/// semantics are Qdrant's.
pub fn filter_condition(filter: &Filter) -> Condition {
    match filter {
        Filter::All(fs) => qdrant::Filter::must(fs.iter().map(filter_condition)).into(),
        Filter::Any(fs) => qdrant::Filter::should(fs.iter().map(filter_condition)).into(),
        Filter::Not(f) => qdrant::Filter::must_not([filter_condition(f)]).into(),
        Filter::Eq { field, value } => field_condition(field.path(), Some(match_of(value)), None),
        Filter::AnyOf { field, values } => {
            match AnyOfValues::of(values) {
                AnyOfValues::Keywords(strings) => {
                    field_condition(field.path(), Some(QMatch::Keywords(RepeatedStrings { strings })), None)
                }
                AnyOfValues::Integers(integers) => {
                    field_condition(field.path(), Some(QMatch::Integers(RepeatedIntegers { integers })), None)
                }
                // Booleans (and mixed lists on `extra` keys) have no
                // match-any form: one condition per value, any of them.
                AnyOfValues::Mixed(_) => qdrant::Filter::should(
                    values.iter().map(|v| field_condition(field.path(), Some(match_of(v)), None)),
                )
                .into(),
            }
        }
        Filter::Range { field, gte, gt, lte, lt } => {
            // Qdrant ranges are f64: integer bounds beyond ±2^53 round.
            let f = |b: &Option<i64>| b.map(|v| v as f64);
            let range = qdrant::Range { gte: f(gte), gt: f(gt), lte: f(lte), lt: f(lt) };
            field_condition(field.path(), None, Some(range))
        }
    }
}

/// The filter of a request: the tenant condition ANDed with the translated
/// `filter`. A top-level `All` is flattened into the same `must` list.
pub fn scoped_filter(tenant: &Tenant, filter: Option<&Filter>) -> qdrant::Filter {
    let mut must = vec![tenant_condition(tenant)];
    match filter {
        None => {}
        Some(Filter::All(fs)) => must.extend(fs.iter().map(filter_condition)),
        Some(f) => must.push(filter_condition(f)),
    }
    qdrant::Filter::must(must)
}

/// A JSON value as a Qdrant payload value.
///
/// Integers that fit `i64` stay integers, other numbers become doubles.
///
/// # Errors
/// [`Error::InvalidInput`] naming `field` for an integer above `i64::MAX`,
/// which Qdrant cannot store as an integer (it would come back as a float).
pub fn json_to_value(field: &str, value: &Value) -> Result<qdrant::Value> {
    let kind = match value {
        Value::Null => Kind::NullValue(0),
        Value::Bool(b) => Kind::BoolValue(*b),
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                Kind::IntegerValue(i)
            } else if n.is_u64() {
                return Err(Error::invalid(
                    field.to_owned(),
                    format!("integer {n} is above i64::MAX, which Qdrant cannot store"),
                ));
            } else {
                Kind::DoubleValue(n.as_f64().unwrap_or(f64::NAN))
            }
        }
        Value::String(s) => Kind::StringValue(s.clone()),
        Value::Array(items) => {
            Kind::ListValue(ListValue { values: items.iter().map(|i| json_to_value(field, i)).collect::<Result<_>>()? })
        }
        Value::Object(m) => Kind::StructValue(Struct { fields: map_to_payload(field, m)? }),
    };
    Ok(qdrant::Value { kind: Some(kind) })
}

/// A Qdrant payload value as JSON (the inverse of [`json_to_value`]; a
/// non-finite double, which JSON cannot hold, becomes `null`).
pub fn value_to_json(value: qdrant::Value) -> Value {
    match value.kind {
        None | Some(Kind::NullValue(_)) => Value::Null,
        Some(Kind::BoolValue(b)) => Value::Bool(b),
        Some(Kind::IntegerValue(i)) => Value::Number(i.into()),
        Some(Kind::DoubleValue(d)) => Number::from_f64(d).map_or(Value::Null, Value::Number),
        Some(Kind::StringValue(s)) => Value::String(s),
        Some(Kind::ListValue(l)) => Value::Array(l.values.into_iter().map(value_to_json).collect()),
        Some(Kind::StructValue(s)) => Value::Object(payload_to_map(s.fields)),
    }
}

/// A JSON object as a Qdrant payload.
///
/// # Errors
/// As [`json_to_value`].
pub fn map_to_payload(field: &str, map: &Map<String, Value>) -> Result<HashMap<String, qdrant::Value>> {
    map.iter().map(|(k, v)| Ok((k.clone(), json_to_value(field, v)?))).collect()
}

/// A Qdrant payload as a JSON object.
pub fn payload_to_map(payload: HashMap<String, qdrant::Value>) -> Map<String, Value> {
    payload.into_iter().map(|(k, v)| (k, value_to_json(v))).collect()
}

/// The Qdrant point id of a chunk of `tenant`: the UUID of
/// [`selfrag_core::vector::point_id`], as a string.
pub fn chunk_point_id(tenant: &Tenant, id: ChunkId) -> qdrant::PointId {
    qdrant::PointId::from(point_id(tenant, id).to_string())
}

/// The points of an upsert, in order (the caller has validated the chunks).
///
/// # Errors
/// [`Error::InvalidInput`] (`chunks[i].extra`) for a payload value Qdrant
/// cannot store; see [`json_to_value`].
pub fn chunk_points(tenant: &Tenant, chunks: Vec<Chunk>) -> Result<Vec<PointStruct>> {
    chunks
        .into_iter()
        .enumerate()
        .map(|(i, c)| {
            let payload = map_to_payload(&format!("chunks[{i}].{}", keys::EXTRA), &c.payload.to_json(tenant, c.id))?;
            Ok(PointStruct { id: Some(chunk_point_id(tenant, c.id)), payload, vectors: Some(c.vector.into()) })
        })
        .collect()
}

/// A stored point's payload as a record, if it belongs to `tenant`.
///
/// # Errors
/// [`Error::Incompatible`] when the payload does not have this library's
/// layout.
pub fn decode_record(tenant: &Tenant, payload: HashMap<String, qdrant::Value>) -> Result<Option<ChunkRecord>> {
    let map = payload_to_map(payload);
    // The tenant is part of the point id and of every filter; checking it
    // again here keeps a foreign point out even if a caller wrote one by hand.
    if map.get(keys::TENANT).and_then(Value::as_str) != Some(tenant.as_str()) {
        return Ok(None);
    }
    let (id, payload) = ChunkPayload::from_json(BACKEND, &map)?;
    Ok(Some(ChunkRecord { id, payload }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use selfrag_core::Field;
    use serde_json::json;

    fn tenant() -> Tenant {
        Tenant::new("acme").unwrap()
    }

    /// The single field condition inside `c`.
    fn field(c: &Condition) -> &FieldCondition {
        match &c.condition_one_of {
            Some(ConditionOneOf::Field(f)) => f,
            other => panic!("not a field condition: {other:?}"),
        }
    }

    fn nested(c: &Condition) -> &qdrant::Filter {
        match &c.condition_one_of {
            Some(ConditionOneOf::Filter(f)) => f,
            other => panic!("not a nested filter: {other:?}"),
        }
    }

    fn matched(c: &Condition) -> (&str, &QMatch) {
        let f = field(c);
        assert!(f.range.is_none());
        (&f.key, f.r#match.as_ref().and_then(|m| m.match_value.as_ref()).expect("a match"))
    }

    #[test]
    fn eq_on_keyword_fields_is_an_exact_keyword_match() {
        for (f, key) in [
            (Field::DocumentType, "document_type"),
            (Field::Source, "source"),
            (Field::DocumentId, "document_id"),
            (Field::Tags, "tags"),
        ] {
            let c = filter_condition(&Filter::eq(f, "pdf"));
            assert_eq!(matched(&c), (key, &QMatch::Keyword("pdf".into())));
        }
        // Whitespace must not turn equality into a full-text match.
        let c = filter_condition(&Filter::eq(Field::Source, "my docs/a b"));
        assert_eq!(matched(&c).1, &QMatch::Keyword("my docs/a b".into()));
    }

    #[test]
    fn eq_on_integers_and_bools() {
        let c = filter_condition(&Filter::eq(Field::ChunkIndex, 4u32));
        assert_eq!(matched(&c), ("chunk_index", &QMatch::Integer(4)));
        let c = filter_condition(&Filter::eq(Field::Extra("draft".into()), false));
        assert_eq!(matched(&c), ("extra.draft", &QMatch::Boolean(false)));
        let c = filter_condition(&Filter::eq(Field::Extra("year".into()), -7i64));
        assert_eq!(matched(&c), ("extra.year", &QMatch::Integer(-7)));
    }

    #[test]
    fn extra_keys_use_the_nested_path() {
        let c = filter_condition(&Filter::eq(Field::Extra("lang".into()), "en"));
        assert_eq!(matched(&c), ("extra.lang", &QMatch::Keyword("en".into())));
    }

    #[test]
    fn any_of_keywords_integers_and_mixed() {
        let c = filter_condition(&Filter::any_of(Field::Tags, ["a", "b c"]));
        assert_eq!(
            matched(&c),
            ("tags", &QMatch::Keywords(RepeatedStrings { strings: vec!["a".into(), "b c".into()] }))
        );
        let c = filter_condition(&Filter::any_of(Field::ChunkIndex, [1i64, 3]));
        assert_eq!(matched(&c), ("chunk_index", &QMatch::Integers(RepeatedIntegers { integers: vec![1, 3] })));
        let c = filter_condition(&Filter::any_of(
            Field::Extra("v".into()),
            [MatchValue::Bool(true), MatchValue::Keyword("x".into()), MatchValue::Integer(2)],
        ));
        let f = nested(&c);
        assert!(f.must.is_empty() && f.must_not.is_empty());
        let got: Vec<_> = f.should.iter().map(matched).collect();
        assert_eq!(
            got,
            vec![
                ("extra.v", &QMatch::Boolean(true)),
                ("extra.v", &QMatch::Keyword("x".into())),
                ("extra.v", &QMatch::Integer(2))
            ]
        );
    }

    #[test]
    fn range_bounds_each_translate() {
        let r = |f: Filter| field(&filter_condition(&f)).range.expect("a range");
        let none = qdrant::Range::default();
        let ci = Field::ChunkIndex;
        let b = |gte, gt, lte, lt| Filter::Range { field: Field::ChunkIndex, gte, gt, lte, lt };
        assert_eq!(r(b(Some(2), None, None, None)), qdrant::Range { gte: Some(2.0), ..none });
        assert_eq!(r(b(None, Some(2), None, None)), qdrant::Range { gt: Some(2.0), ..none });
        assert_eq!(r(b(None, None, Some(9), None)), qdrant::Range { lte: Some(9.0), ..none });
        assert_eq!(r(b(None, None, None, Some(9))), qdrant::Range { lt: Some(9.0), ..none });
        assert_eq!(r(Filter::range(ci, Some(1), Some(5))), qdrant::Range { gte: Some(1.0), lt: Some(5.0), ..none });
        let c = filter_condition(&Filter::range(Field::Extra("year".into()), Some(2020), None));
        assert_eq!(field(&c).key, "extra.year");
        assert!(field(&c).r#match.is_none());
    }

    #[test]
    fn not_all_any_nest() {
        let a = Filter::eq(Field::Source, "web");
        let b = Filter::eq(Field::Tags, "x");
        let c = filter_condition(&Filter::not(a.clone()));
        let f = nested(&c);
        assert!(f.must.is_empty() && f.should.is_empty());
        assert_eq!(f.must_not, vec![filter_condition(&a)]);

        let c = filter_condition(&Filter::all([a.clone(), b.clone()]));
        assert_eq!(nested(&c).must, vec![filter_condition(&a), filter_condition(&b)]);

        let c = filter_condition(&Filter::any([a.clone(), Filter::not(b.clone())]));
        let f = nested(&c);
        assert!(f.must.is_empty() && f.must_not.is_empty());
        assert_eq!(f.should[0], filter_condition(&a));
        assert_eq!(nested(&f.should[1]).must_not, vec![filter_condition(&b)]);

        // An empty `All` is an empty nested filter, which Qdrant matches
        // everywhere, like the core.
        let c = filter_condition(&Filter::all([]));
        assert_eq!(nested(&c), &qdrant::Filter::default());
    }

    #[test]
    fn tenant_condition_is_always_first_and_must() {
        let t = tenant();
        let tc = keyword_condition("tenant", "acme");
        assert_eq!(tenant_condition(&t), tc);
        assert_eq!(matched(&tc), ("tenant", &QMatch::Keyword("acme".into())));

        let f = scoped_filter(&t, None);
        assert_eq!(f.must, vec![tc.clone()]);
        assert!(f.should.is_empty() && f.must_not.is_empty() && f.min_should.is_none());

        // A top-level `Any`/`Not` stays nested under the tenant `must`: the
        // tenant can never become optional.
        let any = Filter::any([Filter::eq(Field::Source, "a"), Filter::eq(Field::Source, "b")]);
        let f = scoped_filter(&t, Some(&any));
        assert_eq!(f.must, vec![tc.clone(), filter_condition(&any)]);
        assert!(f.should.is_empty());
        let not = Filter::not(Filter::eq(Field::Source, "a"));
        let f = scoped_filter(&t, Some(&not));
        assert_eq!(f.must, vec![tc.clone(), filter_condition(&not)]);
        assert!(f.must_not.is_empty());

        // A top-level `All` is flattened next to the tenant.
        let all = Filter::all([Filter::eq(Field::Source, "a"), Filter::eq(Field::Tags, "b")]);
        let f = scoped_filter(&t, Some(&all));
        assert_eq!(
            f.must,
            vec![
                tc.clone(),
                filter_condition(&Filter::eq(Field::Source, "a")),
                filter_condition(&Filter::eq(Field::Tags, "b"))
            ]
        );
        let f = scoped_filter(&t, Some(&Filter::all([])));
        assert_eq!(f.must, vec![tc]);
    }

    #[test]
    fn scores_follow_the_core_convention() {
        assert_eq!(to_core_score(Distance::Cosine, 0.8), 0.8);
        assert_eq!(to_core_score(Distance::Dot, -3.0), -3.0);
        assert_eq!(to_core_score(Distance::Euclid, 5.0), -5.0);
        assert_eq!(to_core_score(Distance::Manhattan, 7.0), -7.0);
        // Closer points (smaller distance) score higher after negation.
        assert!(to_core_score(Distance::Euclid, 1.0) > to_core_score(Distance::Euclid, 2.0));
    }

    #[test]
    fn thresholds_translate_per_distance() {
        // Qdrant keeps `score > sent` (similarities) or `distance < sent`
        // (distances): what the server keeps for a hit with core score `s`.
        let server_keeps = |d: Distance, sent: f32, s: f32| if is_distance_scored(d) { -s < sent } else { s > sent };
        for d in [Distance::Cosine, Distance::Dot, Distance::Euclid, Distance::Manhattan] {
            for t in [0.0f32, -0.0, -0.5, 0.5, -1.0, 1.0, -2.0, 12.0, -7.5, 1e6, -1e6, 3e30, -3e30] {
                let Some(sent) = server_score_threshold(d, t) else {
                    assert!(is_distance_scored(d) && t > 0.0, "{d:?} {t}");
                    continue;
                };
                // A hit exactly at the threshold reaches the client...
                assert!(server_keeps(d, sent, t), "{d:?} t={t} sent={sent}");
                // ...and the loosening stays tiny: a hit clearly below the
                // threshold is still cut by the server.
                let below = t - t.abs().max(1.0) * 1e-4;
                assert!(!server_keeps(d, sent, below), "{d:?} t={t} sent={sent}");
            }
        }
        // score >= -2 <=> distance <= 2: a bit more than 2 is sent.
        let sent = server_score_threshold(Distance::Euclid, -2.0).unwrap();
        assert!(sent > 2.0 && sent < 2.0001, "{sent}");
        // An exact match (distance 0) passes a threshold of 0.0.
        let sent = server_score_threshold(Distance::Euclid, 0.0).unwrap();
        assert!(sent > 0.0 && sent <= 1e-6, "{sent}");
        let sent = server_score_threshold(Distance::Dot, 12.0).unwrap();
        assert!(sent < 12.0 && sent > 11.9999, "{sent}");
        // A positive threshold on a distance can never pass.
        assert_eq!(server_score_threshold(Distance::Euclid, 0.1), None);
        assert_eq!(server_score_threshold(Distance::Manhattan, 3.0), None);
    }

    #[test]
    fn upserts_split_by_count_and_by_encoded_size() {
        let t = tenant();
        let point = |i: u32, text_len: usize| {
            let c = Chunk::new("doc", i, "x".repeat(text_len), vec![0.5, 0.25]);
            chunk_points(&t, vec![c]).unwrap().remove(0)
        };
        let ids = |batches: &[Vec<PointStruct>]| -> Vec<Vec<Option<qdrant::PointId>>> {
            batches.iter().map(|b| b.iter().map(|p| p.id.clone()).collect()).collect()
        };
        // By count only: 5 small points, 2 per request, order kept.
        let small: Vec<_> = (0..5).map(|i| point(i, 10)).collect();
        let batches = upsert_batches(small.clone(), 2, MAX_UPSERT_BYTES);
        assert_eq!(batches.iter().map(Vec::len).collect::<Vec<_>>(), vec![2, 2, 1]);
        assert_eq!(ids(&batches).concat(), small.iter().map(|p| p.id.clone()).collect::<Vec<_>>());
        assert_eq!(upsert_batches(small.clone(), 0, MAX_UPSERT_BYTES).len(), 5);
        assert!(upsert_batches(Vec::new(), 2, MAX_UPSERT_BYTES).is_empty());
        // By size: each big point takes a bit over 1000 bytes; a 2500-byte
        // cap fits two of them, whatever the count limit.
        let big: Vec<_> = (0..5).map(|i| point(i, 1000)).collect();
        let len = point_request_len(&big[0]);
        assert!((1000..1400).contains(&len), "{len}");
        let batches = upsert_batches(big.clone(), 256, 2500);
        assert_eq!(batches.iter().map(Vec::len).collect::<Vec<_>>(), vec![2, 2, 1]);
        for b in &batches {
            // The request's points field is exactly the sum measured.
            let request = qdrant::UpsertPoints { points: b.clone(), ..Default::default() };
            assert!(prost::Message::encoded_len(&request) <= 2500 + 64);
            assert_eq!(b.iter().map(point_request_len).sum::<usize>(), prost::Message::encoded_len(&request));
        }
        // A point larger than the cap goes alone, never dropped.
        let batches = upsert_batches(vec![small[0].clone(), big[0].clone(), small[1].clone()], 256, 100);
        assert_eq!(batches.iter().map(Vec::len).collect::<Vec<_>>(), vec![1, 1, 1]);
        // The real cap: 256 points with max-size vectors (65,536 f32 = 256 KiB
        // each, 64 MiB in all) must not go in one request.
        let huge: Vec<_> = (0..256u32)
            .map(|i| {
                let c = Chunk::new("doc", i, "t", vec![0.5; 65_536]);
                chunk_points(&t, vec![c]).unwrap().remove(0)
            })
            .collect();
        let batches = upsert_batches(huge, 256, MAX_UPSERT_BYTES);
        assert_eq!(batches.iter().map(Vec::len).sum::<usize>(), 256);
        assert!(batches.len() >= 4, "{}", batches.len());
        for b in &batches {
            assert!(b.iter().map(point_request_len).sum::<usize>() <= MAX_UPSERT_BYTES);
        }
    }

    #[test]
    fn distances_map_both_ways() {
        for d in [Distance::Cosine, Distance::Dot, Distance::Euclid, Distance::Manhattan] {
            assert_eq!(distance_from_qdrant(distance_to_qdrant(d) as i32), Some(d));
        }
        assert_eq!(distance_to_qdrant(Distance::Euclid), qdrant::Distance::Euclid);
        assert_eq!(distance_from_qdrant(0), None);
        assert_eq!(distance_from_qdrant(99), None);
    }

    #[test]
    fn json_values_translate_by_kind() {
        let k = |v: Value| json_to_value("f", &v).unwrap().kind.unwrap();
        assert_eq!(k(json!(null)), Kind::NullValue(0));
        assert_eq!(k(json!(true)), Kind::BoolValue(true));
        assert_eq!(k(json!(42)), Kind::IntegerValue(42));
        assert_eq!(k(json!(-42)), Kind::IntegerValue(-42));
        assert_eq!(k(json!(i64::MAX)), Kind::IntegerValue(i64::MAX));
        assert_eq!(k(json!(2.5)), Kind::DoubleValue(2.5));
        // A float with no fraction stays a float.
        assert_eq!(k(json!(2.0)), Kind::DoubleValue(2.0));
        assert_eq!(k(json!("s p")), Kind::StringValue("s p".into()));
        assert_eq!(
            k(json!([1, "a"])),
            Kind::ListValue(ListValue {
                values: vec![
                    qdrant::Value { kind: Some(Kind::IntegerValue(1)) },
                    qdrant::Value { kind: Some(Kind::StringValue("a".into())) }
                ]
            })
        );
        match k(json!({"a": {"b": 1}})) {
            Kind::StructValue(s) => match &s.fields["a"].kind {
                Some(Kind::StructValue(inner)) => assert_eq!(inner.fields["b"].kind, Some(Kind::IntegerValue(1))),
                other => panic!("{other:?}"),
            },
            other => panic!("{other:?}"),
        }
        let err = json_to_value("chunks[2].extra", &json!(u64::MAX)).unwrap_err();
        assert_eq!(err.field(), Some("chunks[2].extra"));
    }

    #[test]
    fn payload_json_round_trips() {
        let original = json!({
            "s": "text", "i": 7, "neg": -3, "f": 1.25, "whole_float": 3.0, "t": true, "n": null,
            "arr": [1, 2.5, "x", [true], {"k": "v"}], "obj": {"deep": {"deeper": [null]}}, "empty": {}, "none": []
        });
        let map = original.as_object().unwrap();
        let back = payload_to_map(map_to_payload("p", map).unwrap());
        assert_eq!(&back, map);
        assert!(back["i"].is_i64());
        assert!(back["whole_float"].is_f64());
        // A value with no kind and a non-finite double read as null.
        assert_eq!(value_to_json(qdrant::Value { kind: None }), Value::Null);
        assert_eq!(value_to_json(qdrant::Value { kind: Some(Kind::DoubleValue(f64::NAN)) }), Value::Null);
    }

    #[test]
    fn chunk_points_carry_id_vector_and_full_payload() {
        let t = tenant();
        let c = Chunk::new("doc", 3, "hello world", vec![0.5, 0.25])
            .document_type("pdf")
            .source("s3://b/k")
            .tags(["a", "b"])
            .extra("lang", "en")
            .extra("year", 2024);
        let points = chunk_points(&t, vec![c.clone()]).unwrap();
        let p = &points[0];
        let expected_id = point_id(&t, c.id).to_string();
        assert_eq!(p.id, Some(qdrant::PointId::from(expected_id)));
        assert_eq!(p.vectors, Some(vec![0.5f32, 0.25].into()));
        let json = payload_to_map(p.payload.clone());
        assert_eq!(json, c.payload.to_json(&t, c.id));
        // And it decodes back to the same record for its tenant only.
        let rec = decode_record(&t, p.payload.clone()).unwrap().unwrap();
        assert_eq!(rec, ChunkRecord { id: c.id, payload: c.payload.clone() });
        assert_eq!(decode_record(&Tenant::new("other").unwrap(), p.payload.clone()).unwrap(), None);

        let big = Chunk::new("doc", 1, "t", vec![1.0, 0.0]).extra("n", u64::MAX);
        let err = chunk_points(&t, vec![c, big]).unwrap_err();
        assert_eq!(err.field(), Some("chunks[1].extra"));
    }

    #[test]
    fn foreign_payloads_are_incompatible() {
        let mut p = HashMap::new();
        p.insert("tenant".to_owned(), json_to_value("p", &json!("acme")).unwrap());
        p.insert("text".to_owned(), json_to_value("p", &json!("no chunk id")).unwrap());
        let err = decode_record(&tenant(), p).unwrap_err();
        assert_eq!(err.kind(), selfrag_core::ErrorKind::Incompatible);
    }
}
