//! Checks shared by the input types. Every check names the field it rejects.

use std::borrow::Cow;

use serde_json::{Map, Value};

use crate::error::{Error, Result};

/// Largest JSON object accepted as metadata or session data, serialized.
pub const MAX_JSON_BYTES: usize = 64 * 1024;
/// Deepest nesting accepted in a JSON object.
pub const MAX_JSON_DEPTH: usize = 32;

/// Rejects text with NUL bytes (Postgres `text` and `jsonb` cannot hold them)
/// or longer than `max` bytes.
pub(crate) fn text(field: impl Into<Cow<'static, str>>, value: &str, max: usize) -> Result<()> {
    if value.len() > max {
        return Err(Error::invalid(field, format!("is {} bytes, the limit is {max}", value.len())));
    }
    if value.contains('\0') {
        return Err(Error::invalid(field, "must not contain NUL bytes"));
    }
    Ok(())
}

/// Checks that `value` is a JSON object within the size and depth limits,
/// with no NUL byte in any key or string, and returns the object.
pub(crate) fn json_object(field: &'static str, value: Value) -> Result<Map<String, Value>> {
    match value {
        Value::Object(map) => {
            json_map(field, &map)?;
            Ok(map)
        }
        other => Err(Error::invalid(field, format!("must be a JSON object, got {}", json_type(&other)))),
    }
}

/// The checks of [`json_object`] on a map the caller already has.
pub(crate) fn json_map(field: &'static str, map: &Map<String, Value>) -> Result<()> {
    walk(field, map, 1)?;
    let size = serde_json::to_vec(map).map(|v| v.len()).unwrap_or(usize::MAX);
    if size > MAX_JSON_BYTES {
        return Err(Error::invalid(field, format!("is {size} bytes as JSON, the limit is {MAX_JSON_BYTES}")));
    }
    Ok(())
}

fn walk(field: &'static str, map: &Map<String, Value>, depth: usize) -> Result<()> {
    if depth > MAX_JSON_DEPTH {
        return Err(Error::invalid(field, format!("nests deeper than {MAX_JSON_DEPTH} levels")));
    }
    for (k, v) in map {
        if k.contains('\0') {
            return Err(Error::invalid(field, "keys must not contain NUL bytes"));
        }
        value(field, v, depth)?;
    }
    Ok(())
}

fn value(field: &'static str, v: &Value, depth: usize) -> Result<()> {
    match v {
        Value::String(s) if s.contains('\0') => Err(Error::invalid(field, "strings must not contain NUL bytes")),
        Value::Object(m) => walk(field, m, depth + 1),
        Value::Array(items) => {
            if depth + 1 > MAX_JSON_DEPTH {
                return Err(Error::invalid(field, format!("nests deeper than {MAX_JSON_DEPTH} levels")));
            }
            items.iter().try_for_each(|i| value(field, i, depth + 1))
        }
        _ => Ok(()),
    }
}

pub(crate) fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn text_rules() {
        assert!(text("content", "fine", 10).is_ok());
        assert_eq!(text("content", "a\0b", 10).unwrap_err().field(), Some("content"));
        assert!(text("content", "toolongtext", 10).is_err());
    }

    #[test]
    fn json_rules() {
        assert!(json_object("metadata", json!({"a": [1, {"b": "c"}]})).is_ok());
        assert!(json_object("metadata", json!([1])).is_err());
        assert!(json_object("metadata", json!("x")).is_err());
        assert!(json_object("metadata", json!({"a": "x\u{0}"})).is_err());
        assert!(json_object("metadata", json!({"a\u{0}": 1})).is_err());
        assert!(json_object("metadata", json!({"a": "x".repeat(MAX_JSON_BYTES)})).is_err());
        let mut deep = json!(1);
        for _ in 0..40 {
            deep = json!({ "d": deep });
        }
        assert!(json_object("metadata", deep).is_err());
    }
}
