//! Translation of the core [`Filter`] into the engine's filter.
//!
//! Pure functions, no I/O: every operator is unit-tested below against the
//! engine types, and the conformance suite checks the semantics end to end.

use qdrant_edge::external::ordered_float::OrderedFloat;
use qdrant_edge::{Condition, FieldCondition, Filter as EngineFilter, JsonPath, Match, Range};
use selfrag_core::vector::{keys, AnyOfValues};
use selfrag_core::{Error, Field, Filter, MatchValue, Result, Tenant};

/// The engine filter for "chunks of `tenant` that pass `filter`": the tenant
/// condition is always the first `must` clause, so no read or write built from
/// it can reach another tenant's points.
///
/// # Errors
/// [`Error::InvalidInput`] (`filter`) when `filter` fails
/// [`Filter::validate`].
pub fn tenant_filter(tenant: &Tenant, filter: Option<&Filter>) -> Result<EngineFilter> {
    let mut must = vec![tenant_condition(tenant)?];
    if let Some(f) = filter {
        f.validate()?;
        must.push(condition(f)?);
    }
    Ok(EngineFilter { must: Some(must), ..EngineFilter::default() })
}

/// `tenant == <tenant>` on the `tenant` keyword field.
fn tenant_condition(tenant: &Tenant) -> Result<Condition> {
    Ok(Condition::Field(FieldCondition::new_match(
        field_path_str(keys::TENANT)?,
        Match::from(tenant.as_str().to_owned()),
    )))
}

/// The engine condition equivalent to `filter` (which must be valid).
///
/// # Errors
/// [`Error::InvalidInput`] (`filter.field`) for a field path the engine
/// cannot parse (not reachable for filters that pass validation).
pub fn condition(filter: &Filter) -> Result<Condition> {
    Ok(match filter {
        // An empty `must` list would be read as "all of nothing" = true by the
        // engine too, but an empty filter says it without relying on that.
        Filter::All(fs) if fs.is_empty() => Condition::Filter(EngineFilter::default()),
        Filter::All(fs) => Condition::Filter(EngineFilter {
            must: Some(fs.iter().map(condition).collect::<Result<_>>()?),
            ..EngineFilter::default()
        }),
        Filter::Any(fs) => Condition::Filter(EngineFilter {
            should: Some(fs.iter().map(condition).collect::<Result<_>>()?),
            ..EngineFilter::default()
        }),
        Filter::Not(f) => {
            Condition::Filter(EngineFilter { must_not: Some(vec![condition(f)?]), ..EngineFilter::default() })
        }
        Filter::Eq { field, value } => {
            Condition::Field(FieldCondition::new_match(field_path(field)?, match_value(value)))
        }
        Filter::AnyOf { field, values } => any_of(field, values)?,
        Filter::Range { field, gte, gt, lte, lt } => {
            // The engine compares numbers as f64; chunk indexes and realistic
            // extra integers are far below 2^53, where the conversion is exact.
            #[allow(clippy::cast_precision_loss)]
            let f = |b: &Option<i64>| b.map(|v| OrderedFloat(v as f64));
            Condition::Field(FieldCondition::new_range(
                field_path(field)?,
                Range { gte: f(gte), gt: f(gt), lte: f(lte), lt: f(lt) },
            ))
        }
    })
}

/// `field` equals any of `values`: a single `match any` when the values share
/// a type the engine's `any` supports (keywords or integers), otherwise (bools,
/// or mixed types on an extra key) a `should` of single matches.
fn any_of(field: &Field, values: &[MatchValue]) -> Result<Condition> {
    let key = field_path(field)?;
    match AnyOfValues::of(values) {
        AnyOfValues::Keywords(k) => return Ok(Condition::Field(FieldCondition::new_match(key, Match::from(k)))),
        AnyOfValues::Integers(i) => return Ok(Condition::Field(FieldCondition::new_match(key, Match::from(i)))),
        AnyOfValues::Mixed(_) => {}
    }
    Ok(Condition::Filter(EngineFilter {
        should: Some(
            values.iter().map(|v| Condition::Field(FieldCondition::new_match(key.clone(), match_value(v)))).collect(),
        ),
        ..EngineFilter::default()
    }))
}

fn match_value(v: &MatchValue) -> Match {
    match v {
        MatchValue::Keyword(s) => Match::from(s.clone()),
        MatchValue::Integer(i) => Match::from(*i),
        MatchValue::Bool(b) => Match::from(*b),
    }
}

/// The payload path of a field: `tags`, or `extra.<key>` for extra keys.
pub(crate) fn field_path(field: &Field) -> Result<JsonPath> {
    field_path_str(&field.path())
}

pub(crate) fn field_path_str(p: &str) -> Result<JsonPath> {
    p.parse().map_err(|()| Error::invalid("filter.field", format!("`{p}` is not a valid payload path")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use qdrant_edge::{RangeInterface, ValueVariants};

    fn leaf(c: &Condition) -> &FieldCondition {
        match c {
            Condition::Field(f) => f,
            other => panic!("expected a field condition, got {other:?}"),
        }
    }

    fn nested(c: &Condition) -> &EngineFilter {
        match c {
            Condition::Filter(f) => f,
            other => panic!("expected a nested filter, got {other:?}"),
        }
    }

    fn value(c: &Condition) -> (String, ValueVariants) {
        let f = leaf(c);
        match &f.r#match {
            Some(Match::Value(v)) => (f.key.to_string(), v.value.clone()),
            other => panic!("expected match value, got {other:?}"),
        }
    }

    fn t() -> Tenant {
        Tenant::new("acme").unwrap()
    }

    #[test]
    fn tenant_is_always_the_first_must_clause() {
        let f = tenant_filter(&t(), None).unwrap();
        let must = f.must.as_ref().unwrap();
        assert_eq!(must.len(), 1);
        assert_eq!(value(&must[0]), ("tenant".into(), ValueVariants::String("acme".into())));
        assert!(f.should.is_none() && f.must_not.is_none());

        let f = tenant_filter(&t(), Some(&Filter::eq(Field::Source, "web"))).unwrap();
        let must = f.must.as_ref().unwrap();
        assert_eq!(must.len(), 2);
        assert_eq!(value(&must[0]).0, "tenant");
        assert_eq!(value(&must[1]), ("source".into(), ValueVariants::String("web".into())));
    }

    #[test]
    fn invalid_filters_are_rejected_before_translation() {
        let err = tenant_filter(&t(), Some(&Filter::any([]))).unwrap_err();
        assert_eq!(err.field(), Some("filter"));
        let err = tenant_filter(&t(), Some(&Filter::eq(Field::Extra("a.b".into()), "x"))).unwrap_err();
        assert_eq!(err.field(), Some("filter.field"));
    }

    #[test]
    fn eq_keyword_integer_bool() {
        let c = condition(&Filter::eq(Field::DocumentType, "pdf")).unwrap();
        assert_eq!(value(&c), ("document_type".into(), ValueVariants::String("pdf".into())));
        let c = condition(&Filter::eq(Field::Tags, "a")).unwrap();
        assert_eq!(value(&c), ("tags".into(), ValueVariants::String("a".into())));
        let c = condition(&Filter::eq(Field::ChunkIndex, 3u32)).unwrap();
        assert_eq!(value(&c), ("chunk_index".into(), ValueVariants::Integer(3)));
        let c = condition(&Filter::eq(Field::Extra("draft".into()), false)).unwrap();
        assert_eq!(value(&c), ("extra.draft".into(), ValueVariants::Bool(false)));
        let c = condition(&Filter::eq(Field::Extra("year".into()), 2024i64)).unwrap();
        assert_eq!(value(&c), ("extra.year".into(), ValueVariants::Integer(2024)));
    }

    #[test]
    fn any_of_keywords_and_integers_use_match_any() {
        let c = condition(&Filter::any_of(Field::Tags, ["a", "b"])).unwrap();
        let f = leaf(&c);
        assert_eq!(f.key.to_string(), "tags");
        assert_eq!(f.r#match, Some(Match::from(vec!["a".to_string(), "b".to_string()])));

        let c = condition(&Filter::any_of(Field::ChunkIndex, [1i64, 5])).unwrap();
        assert_eq!(leaf(&c).r#match, Some(Match::from(vec![1i64, 5])));
    }

    #[test]
    fn any_of_bools_or_mixed_types_become_should() {
        let c = condition(&Filter::AnyOf {
            field: Field::Extra("x".into()),
            values: vec![MatchValue::Bool(true), MatchValue::Keyword("y".into())],
        })
        .unwrap();
        let f = nested(&c);
        let should = f.should.as_ref().unwrap();
        assert_eq!(should.len(), 2);
        assert_eq!(value(&should[0]), ("extra.x".into(), ValueVariants::Bool(true)));
        assert_eq!(value(&should[1]), ("extra.x".into(), ValueVariants::String("y".into())));
        assert!(f.must.is_none() && f.must_not.is_none());
    }

    #[test]
    fn range_has_f64_bounds() {
        let c = condition(&Filter::Range { field: Field::ChunkIndex, gte: Some(2), gt: None, lte: None, lt: Some(5) })
            .unwrap();
        let f = leaf(&c);
        assert_eq!(f.key.to_string(), "chunk_index");
        match &f.range {
            Some(RangeInterface::Float(r)) => {
                assert_eq!((r.gte, r.gt, r.lte, r.lt), (Some(OrderedFloat(2.0)), None, None, Some(OrderedFloat(5.0))));
            }
            other => panic!("expected a float range, got {other:?}"),
        }
        let c = condition(&Filter::Range {
            field: Field::Extra("year".into()),
            gte: None,
            gt: Some(-1),
            lte: Some(7),
            lt: None,
        })
        .unwrap();
        match &leaf(&c).range {
            Some(RangeInterface::Float(r)) => {
                assert_eq!((r.gte, r.gt, r.lte, r.lt), (None, Some(OrderedFloat(-1.0)), Some(OrderedFloat(7.0)), None));
            }
            other => panic!("expected a float range, got {other:?}"),
        }
    }

    #[test]
    fn all_any_not() {
        let c = condition(&Filter::all([Filter::eq(Field::Source, "a"), Filter::eq(Field::Tags, "b")])).unwrap();
        let f = nested(&c);
        let must = f.must.as_ref().unwrap();
        assert_eq!(must.len(), 2);
        assert_eq!(value(&must[1]), ("tags".into(), ValueVariants::String("b".into())));
        assert!(f.should.is_none() && f.must_not.is_none());

        let c = condition(&Filter::any([Filter::eq(Field::Source, "a"), Filter::eq(Field::Tags, "b")])).unwrap();
        let f = nested(&c);
        assert_eq!(f.should.as_ref().unwrap().len(), 2);
        assert!(f.must.is_none() && f.must_not.is_none() && f.min_should.is_none());

        let c = condition(&Filter::not(Filter::eq(Field::DocumentId, "d"))).unwrap();
        let f = nested(&c);
        let not = f.must_not.as_ref().unwrap();
        assert_eq!(value(&not[0]), ("document_id".into(), ValueVariants::String("d".into())));
        assert!(f.must.is_none() && f.should.is_none());
    }

    #[test]
    fn empty_all_matches_everything() {
        let c = condition(&Filter::all([])).unwrap();
        assert_eq!(nested(&c), &EngineFilter::default());
    }
}
