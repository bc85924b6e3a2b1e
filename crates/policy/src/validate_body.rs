//! Request validation: bodies must be JSON (415 otherwise) and satisfy the route's JSON Schema
//! (2020-12), compiled once when the configuration is built. Failures are 422 problem+json
//! listing each failing JSON pointer and rule, never the offending values.

use crate::{body_limit::read_limited, json_limits::ParsedJson, Flow, Policy};
use async_trait::async_trait;
use http::{header, Request};
use portcullis_core::{full, Body, GatewayError, MalformedKind};

/// Most errors reported for one request.
const MAX_REPORTED: usize = 20;

/// The schema policy for one route.
pub struct ValidateBody {
    schema: jsonschema::Validator,
    max_body: u64,
}

impl ValidateBody {
    /// Compiles `schema`; an invalid schema is a configuration error.
    pub fn new(schema: &serde_json::Value, max_body: u64) -> Result<Self, String> {
        let schema = jsonschema::draft202012::new(schema)
            .map_err(|e| format!("invalid JSON Schema: {e}"))?;
        Ok(ValidateBody { schema, max_body })
    }
}

/// True for `application/json` and `application/*+json` content types.
pub(crate) fn is_json(ct: Option<&http::HeaderValue>) -> bool {
    ct.and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|m| {
            let m = m.trim().to_ascii_lowercase();
            m == "application/json" || (m.starts_with("application/") && m.ends_with("+json"))
        })
}

#[async_trait]
impl Policy for ValidateBody {
    fn name(&self) -> &'static str {
        "validate_body"
    }

    async fn on_request(&self, req: Request<Body>) -> Result<Flow, GatewayError> {
        if !is_json(req.headers().get(header::CONTENT_TYPE)) {
            return Err(GatewayError::UnsupportedMediaType);
        }
        let (parts, body) = req.into_parts();
        let bytes = read_limited(body, self.max_body).await?;
        // The JSON-limits step before this one usually parsed these very bytes already.
        let parsed;
        let value = match parts
            .extensions
            .get::<ParsedJson>()
            .and_then(|p| p.for_bytes(&bytes))
        {
            Some(v) => v,
            None => {
                parsed = serde_json::from_slice::<serde_json::Value>(&bytes)
                    .map_err(|_| GatewayError::Malformed(MalformedKind::InvalidBody))?;
                &parsed
            }
        };
        // The common case first: `is_valid` stops at the first failure and builds no error
        // values; the full error walk runs only for bodies that fail.
        if self.schema.is_valid(value) {
            return Ok(Flow::Continue(Request::from_parts(parts, full(bytes))));
        }
        let errors = schema_errors(&self.schema, value);
        if !errors.is_empty() {
            return Err(GatewayError::Invalid { errors });
        }
        Ok(Flow::Continue(Request::from_parts(parts, full(bytes))))
    }
}

/// The (JSON pointer, failed keyword) pairs of a document that fails `schema`, at most 20;
/// never the offending values. The root is written `/`.
pub fn schema_errors(
    schema: &jsonschema::Validator,
    value: &serde_json::Value,
) -> Vec<(String, String)> {
    schema
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
