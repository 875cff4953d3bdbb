//! Tool schemas every client accepts: `"type": ["string", "null"]` (what
//! schemars writes for `Option<T>`) becomes `anyOf` of single types, as MCP
//! Inspector's `--strict` check and some model providers require.
//! Type-specific keywords (`format`, `minimum`, ...) stay beside the `anyOf`:
//! JSON Schema applies them only to instances of their type, so the meaning
//! is unchanged.

use serde_json::{json, Map, Value};

/// `schema` with every `type` array rewritten as `anyOf`.
pub fn portable(schema: &Map<String, Value>) -> Map<String, Value> {
    let mut value = Value::Object(schema.clone());
    rewrite(&mut value);
    match value {
        Value::Object(map) => map,
        _ => Map::new(),
    }
}

fn rewrite(value: &mut Value) {
    match value {
        Value::Object(map) => {
            map.values_mut().for_each(rewrite);
            if !matches!(map.get("type"), Some(Value::Array(_))) {
                return;
            }
            let Some(Value::Array(types)) = map.remove("type") else {
                return;
            };
            let branches: Vec<Value> = types.into_iter().map(|t| json!({ "type": t })).collect();
            let one_of_types = Value::Array(branches);
            match map.remove("anyOf") {
                // Both constraints must hold: keep each as its own `anyOf`.
                Some(existing) => {
                    map.insert(
                        "allOf".into(),
                        json!([{ "anyOf": existing }, { "anyOf": one_of_types }]),
                    );
                }
                None => {
                    map.insert("anyOf".into(), one_of_types);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(rewrite),
        _ => {}
    }
}

/// Whether any `type` in `value` is an array (what strict clients refuse).
pub fn has_type_arrays(value: &Value) -> bool {
    match value {
        Value::Object(map) => matches!(map.get("type"), Some(Value::Array(_))) || map.values().any(has_type_arrays),
        Value::Array(items) => items.iter().any(has_type_arrays),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nullable_fields_become_any_of() {
        let schema = json!({
            "type": "object",
            "properties": {
                "note": {"type": ["string", "null"], "description": "d", "maxLength": 3},
                "list": {"type": "array", "items": {"type": ["integer", "null"], "minimum": 0}},
                "both": {"type": ["object", "null"], "anyOf": [{"required": ["a"]}, {"required": ["b"]}]}
            }
        });
        let out = Value::Object(portable(schema.as_object().unwrap()));
        assert!(!has_type_arrays(&out), "{out}");
        assert!(has_type_arrays(&schema));
        assert_eq!(
            out["properties"]["note"],
            json!({"anyOf": [{"type": "string"}, {"type": "null"}], "description": "d", "maxLength": 3})
        );
        assert_eq!(
            out["properties"]["list"]["items"]["anyOf"],
            json!([{"type": "integer"}, {"type": "null"}])
        );
        assert_eq!(
            out["properties"]["both"]["allOf"][1]["anyOf"][1],
            json!({"type": "null"})
        );
        assert_eq!(out["type"], "object", "single types are kept");
    }
}
