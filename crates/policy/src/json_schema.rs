//! A compiled JSON Schema (2020-12): jsonschema's validator, plus the streaming fast path
//! ([`StreamSchema`]) when the schema keeps to its subset. Everything that checks JSON against
//! a schema (request bodies, webhook payloads, egress responses) goes through this type, so
//! each gets the fast path and the same error report.

use crate::schema_stream::StreamSchema;
use jsonschema::error::ValidationErrorKind;
use portcullis_config::JsonLimits;
use serde_json::Value;

/// Most errors reported for one document.
const MAX_REPORTED: usize = 20;
/// Longest unexpected member name repeated back in an error pointer.
const MAX_NAMED: usize = 64;

/// A schema compiled once, at configuration load.
pub struct JsonSchema {
    full: jsonschema::Validator,
    stream: Option<StreamSchema>,
}

impl JsonSchema {
    /// Compiles `schema` as draft 2020-12; the error is jsonschema's description of what is
    /// wrong with the schema (configuration text, never request data).
    pub fn compile(schema: &Value) -> Result<Self, String> {
        let full = jsonschema::draft202012::new(schema).map_err(|e| e.to_string())?;
        Ok(JsonSchema {
            full,
            stream: StreamSchema::compile(schema),
        })
    }

    /// True when the streaming fast path applies to this schema.
    pub fn streams(&self) -> bool {
        self.stream.is_some()
    }

    /// True when `bytes` is a JSON document within `limits` that the fast path proves valid,
    /// without parsing it into a tree. False means "not known": parse it and call
    /// [`JsonSchema::is_valid`], whose verdict stands.
    pub fn accepts_bytes(&self, bytes: &[u8], limits: Option<&JsonLimits>) -> bool {
        self.stream
            .as_ref()
            .is_some_and(|s| s.accepts(bytes, limits))
    }

    /// jsonschema's verdict on a parsed document.
    pub fn is_valid(&self, value: &Value) -> bool {
        self.full.is_valid(value)
    }

    /// The (JSON pointer, failed keyword) pairs of a document that fails, at most 20; never
    /// the offending values. The root is written `/`.
    ///
    /// A missing required member and an unexpected one are pointed at by name (`/qty`), not
    /// at the object that lacks or has them: `/` twice for two missing members told the
    /// caller nothing. An unexpected name is the caller's own text, so one longer than
    /// [`MAX_NAMED`] is not repeated back; the object's pointer stands for it.
    pub fn errors(&self, value: &Value) -> Vec<(String, String)> {
        let mut out = Vec::new();
        for e in self.full.iter_errors(value) {
            let at = e.instance_path.to_string();
            let schema_path = e.schema_path.to_string();
            let rule = schema_path.rsplit('/').next().unwrap_or("schema");
            let (members, unnamed): (Vec<&str>, bool) = match &e.kind {
                ValidationErrorKind::Required { property } => match property.as_str() {
                    Some(p) => (vec![p], false),
                    None => (Vec::new(), true),
                },
                ValidationErrorKind::AdditionalProperties { unexpected } => {
                    let named: Vec<&str> = unexpected
                        .iter()
                        .map(|n| n.as_str())
                        .filter(|n| n.len() <= MAX_NAMED)
                        .collect();
                    let unnamed = named.len() < unexpected.len();
                    (named, unnamed)
                }
                // `additionalProperties: false` with no `properties` beside it: jsonschema
                // reports the object, so every member it has is the unexpected one.
                ValidationErrorKind::FalseSchema if rule == "additionalProperties" => {
                    match value.pointer(&at).and_then(Value::as_object) {
                        Some(o) => {
                            let named: Vec<&str> = o
                                .keys()
                                .map(String::as_str)
                                .filter(|n| n.len() <= MAX_NAMED)
                                .collect();
                            let unnamed = named.len() < o.len() || named.is_empty();
                            (named, unnamed)
                        }
                        None => (Vec::new(), true),
                    }
                }
                _ => (Vec::new(), true),
            };
            if unnamed {
                let at = if at.is_empty() {
                    "/".into()
                } else {
                    at.clone()
                };
                out.push((at, rule.to_string()));
            }
            for m in members {
                let m = m.replace('~', "~0").replace('/', "~1");
                out.push((format!("{at}/{m}"), rule.to_string()));
            }
            if out.len() >= MAX_REPORTED {
                out.truncate(MAX_REPORTED);
                break;
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn missing_and_unexpected_members_are_pointed_at_by_name() {
        let schema = JsonSchema::compile(&json!({
            "type": "object",
            "required": ["sku", "qty"],
            "properties": { "sku": {}, "qty": {}, "line": { "type": "object", "additionalProperties": false } },
            "additionalProperties": false
        }))
        .expect("schema");
        let long = "k".repeat(MAX_NAMED + 1);
        let mut doc = json!({ "x/y": 1, "line": { "a~b": 1 } });
        doc[&long] = json!(1);
        let mut errors = schema.errors(&doc);
        errors.sort();
        let want: Vec<(String, String)> = [
            // The over-long name is not repeated back: the object stands for it.
            ("/", "additionalProperties"),
            ("/line/a~0b", "additionalProperties"),
            ("/qty", "required"),
            ("/sku", "required"),
            ("/x~1y", "additionalProperties"),
        ]
        .iter()
        .map(|(p, r)| (p.to_string(), r.to_string()))
        .collect();
        assert_eq!(errors, want);
    }
}
