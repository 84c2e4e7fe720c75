//! JSON Patch (RFC 6902) between two documents, for modify records.

use serde_json::{json, Value};

/// A JSON Patch (RFC 6902) turning `from` into `to`: objects are compared
/// key by key, anything else that differs is replaced whole.
pub fn json_patch(from: &Value, to: &Value) -> Value {
    let mut ops = Vec::new();
    diff("", from, to, &mut ops);
    Value::Array(ops)
}

fn pointer_escape(key: &str) -> String {
    key.replace('~', "~0").replace('/', "~1")
}

fn diff(path: &str, from: &Value, to: &Value, ops: &mut Vec<Value>) {
    match (from, to) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, va) in a {
                let p = format!("{path}/{}", pointer_escape(k));
                match b.get(k) {
                    None => ops.push(json!({"op": "remove", "path": p})),
                    Some(vb) => diff(&p, va, vb, ops),
                }
            }
            for (k, vb) in b {
                if !a.contains_key(k) {
                    let p = format!("{path}/{}", pointer_escape(k));
                    ops.push(json!({"op": "add", "path": p, "value": vb}));
                }
            }
        }
        (a, b) if a == b => {}
        (_, b) => ops.push(json!({"op": "replace", "path": path, "value": b})),
    }
}
