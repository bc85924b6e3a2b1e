//! A compiled JSON Schema (2020-12): jsonschema's validator, plus the streaming fast path
//! ([`StreamSchema`]) when the schema keeps to its subset. Everything that checks JSON against
//! a schema (request bodies, webhook payloads, egress responses) goes through this type, so
//! each gets the fast path and the same error report.

use crate::schema_stream::StreamSchema;
use portcullis_config::JsonLimits;
use serde_json::Value;

/// Most errors reported for one document.
const MAX_REPORTED: usize = 20;

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
    pub fn errors(&self, value: &Value) -> Vec<(String, String)> {
        self.full
            .iter_errors(value)
            .take(MAX_REPORTED)
            .map(|e| {
                let pointer = e.instance_path.to_string();
                let schema_path = e.schema_path.to_string();
                let rule = schema_path
                    .rsplit('/')
                    .next()
                    .unwrap_or("schema")
                    .to_string();
                let pointer = if pointer.is_empty() {
                    "/".to_string()
                } else {
                    pointer
                };
                (pointer, rule)
            })
            .collect()
    }
}
