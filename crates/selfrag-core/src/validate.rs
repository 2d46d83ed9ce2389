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
    json_object_sized(field, value).map(|(map, _)| map)
}

/// [`json_object`], also returning the object's size as compact JSON.
pub(crate) fn json_object_sized(field: &'static str, value: Value) -> Result<(Map<String, Value>, usize)> {
    match value {
        Value::Object(map) => {
            let size = json_map(field, &map)?;
            Ok((map, size))
        }
        other => Err(Error::invalid(field, format!("must be a JSON object, got {}", json_type(&other)))),
    }
}

/// The checks of [`json_object`] on a map the caller already has; returns
/// the map's size as compact JSON.
pub(crate) fn json_map(field: &'static str, map: &Map<String, Value>) -> Result<usize> {
    walk(field, map, 1)?;
    let size = json_size(map);
    if size > MAX_JSON_BYTES {
        return Err(Error::invalid(field, format!("is {size} bytes as JSON, the limit is {MAX_JSON_BYTES}")));
    }
    Ok(size)
}

/// The checks of [`json_map`] on any JSON value, with a limit of `max`
/// bytes as compact JSON.
pub(crate) fn json_value(field: &'static str, v: &Value, max: usize) -> Result<()> {
    value(field, v, 1)?;
    let size = serde_json::to_vec(v).map_or(usize::MAX, |b| b.len());
    if size > max {
        return Err(Error::invalid(field, format!("is {size} bytes as JSON, the limit is {max}")));
    }
    Ok(())
}

/// The size of `map` as compact JSON, counted without building the text.
pub(crate) fn json_size(map: &Map<String, Value>) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    // Serializing a `Map` of `Value`s cannot fail (string keys, finite
    // numbers) and the writer never does.
    match serde_json::to_writer(&mut count, map) {
        Ok(()) => count.0,
        Err(_) => usize::MAX,
    }
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

    #[test]
    fn json_size_is_the_compact_text_length() {
        for v in [
            json!({}),
            json!({"a": 1}),
            json!({"quote\"": "line\nbreak \u{e9} \u{1F600}", "n": [1.5, -2, null, true], "o": {"p": {}}}),
            json!({"big": "x".repeat(10_000)}),
        ] {
            let map = v.as_object().unwrap();
            assert_eq!(json_size(map), serde_json::to_vec(map).unwrap().len(), "{v}");
            let (_, sized) = json_object_sized("metadata", v.clone()).unwrap();
            assert_eq!(sized, json_size(map));
        }
        // The just-too-large object is measured without building its text.
        let too_big = json!({"a": "x".repeat(MAX_JSON_BYTES)});
        let err = json_object_sized("metadata", too_big).unwrap_err();
        assert!(err.to_string().contains(&format!("{} bytes", MAX_JSON_BYTES + 8)), "{err}");
    }
}
