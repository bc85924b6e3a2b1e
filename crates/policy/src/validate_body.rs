//! Request validation: bodies must be JSON (415 otherwise) and satisfy the route's JSON Schema
//! (2020-12), compiled once when the configuration is built. Failures are 422 problem+json
//! listing each failing JSON pointer and rule, never the offending values.
//!
//! When the schema keeps to the subset [`StreamSchema`] checks on the token stream, a body
//! that passes is accepted without building a tree; any other body takes the full path
//! (tree and jsonschema), whose verdict and error pointers stand.

use crate::{
    body_limit::read_limited,
    json_limits::{parse_json_unique, parse_json_within, JsonFault, ParsedJson},
    Flow, JsonSchema, Policy, Step,
};
use http::{header, Request};
use portcullis_config::JsonLimits;
use portcullis_core::{full, Body, GatewayError};

/// The schema policy for one route.
pub struct ValidateBody {
    schema: JsonSchema,
    limits: Option<JsonLimits>,
    max_body: u64,
}

impl ValidateBody {
    /// Compiles `schema`; an invalid schema is a configuration error.
    pub fn new(schema: &serde_json::Value, max_body: u64) -> Result<Self, String> {
        let schema =
            JsonSchema::compile(schema).map_err(|e| format!("invalid JSON Schema: {e}"))?;
        Ok(ValidateBody {
            schema,
            limits: None,
            max_body,
        })
    }

    /// True when the schema has the streaming fast path, so no earlier step needs to build
    /// the tree for it.
    pub fn streams(&self) -> bool {
        self.schema.streams()
    }

    /// Makes this step also the route's JSON-limits check (in place of a separate
    /// [`JsonLimitCheck`](crate::JsonLimitCheck) before it), so the fast path checks limits
    /// and schema in one pass. Refusals are the ones the separate check gives.
    pub fn checking_limits(mut self, limits: JsonLimits) -> Self {
        self.limits = Some(limits);
        self
    }
}

/// What a request's `Content-Type` says of its body, for the checks that read it as JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum JsonLabel {
    /// Not a JSON media type (or none).
    Other,
    /// `application/json` or `application/*+json`, UTF-8 (the only charset JSON has, RFC
    /// 8259 §8.1; `charset=utf-8` or none).
    Utf8,
    /// A JSON media type with another charset: the checks read the bytes as UTF-8, while an
    /// upstream that honours `charset=utf-7` decodes `+AHI-ole` to `role`. Refused (415).
    OtherCharset,
}

/// Reads `ct` as [`JsonLabel`].
pub(crate) fn json_label(ct: Option<&http::HeaderValue>) -> JsonLabel {
    let Some(v) = ct.filter(|_| is_json_type(ct)) else {
        return JsonLabel::Other;
    };
    let bytes = v.as_bytes();
    // Most bodies carry no parameter at all: nothing more to read.
    if memchr::memchr(b';', bytes).is_none() {
        return JsonLabel::Utf8;
    }
    for param in bytes.split(|&b| b == b';').skip(1) {
        let param = param.trim_ascii();
        let Some(eq) = memchr::memchr(b'=', param) else {
            continue;
        };
        if !param[..eq].trim_ascii().eq_ignore_ascii_case(b"charset") {
            continue;
        }
        let value = param[eq + 1..].trim_ascii();
        let value = value
            .strip_prefix(b"\"")
            .and_then(|v| v.strip_suffix(b"\""))
            .unwrap_or(value);
        if !(value.eq_ignore_ascii_case(b"utf-8") || value.eq_ignore_ascii_case(b"utf8")) {
            return JsonLabel::OtherCharset;
        }
    }
    JsonLabel::Utf8
}

/// True for `application/json` and `application/*+json` content types in UTF-8.
pub(crate) fn is_json(ct: Option<&http::HeaderValue>) -> bool {
    json_label(ct) == JsonLabel::Utf8
}

/// True for `application/json` and `application/*+json` media types, whatever the charset.
fn is_json_type(ct: Option<&http::HeaderValue>) -> bool {
    // Compared in place, in any ASCII case: no lowercased copy per request.
    const TYPE: &[u8] = b"application/";
    const SUFFIX: &[u8] = b"+json";
    let Some(v) = ct.and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let essence = v
        .as_bytes()
        .split(|&b| b == b';')
        .next()
        .unwrap_or_default();
    let m = essence.trim_ascii();
    if m.len() < TYPE.len() || !m[..TYPE.len()].eq_ignore_ascii_case(TYPE) {
        return false;
    }
    let subtype = &m[TYPE.len()..];
    subtype.eq_ignore_ascii_case(b"json")
        // `>=`: a bare `application/+json` counts, as it always did, so the JSON limits
        // check (which skips non-JSON bodies) never lets it past unchecked.
        || (subtype.len() >= SUFFIX.len()
            && subtype[subtype.len() - SUFFIX.len()..].eq_ignore_ascii_case(SUFFIX))
}

impl Policy for ValidateBody {
    fn name(&self) -> &'static str {
        "validate_body"
    }

    fn has_response_phase(&self) -> bool {
        false
    }

    fn on_request(&self, req: Request<Body>) -> Step<'_, Flow> {
        Step::later(self.request_phase(req))
    }
}

/// The request phase itself: it reads the body, so it is an async method whose future
/// `Step::later` boxes.
impl ValidateBody {
    async fn request_phase(&self, req: Request<Body>) -> Result<Flow, GatewayError> {
        if !is_json(req.headers().get(header::CONTENT_TYPE)) {
            return Err(GatewayError::UnsupportedMediaType);
        }
        let (parts, body) = req.into_parts();
        let bytes = read_limited(body, self.max_body).await?;
        // An earlier step (the object rules' limits check) may have parsed these very bytes.
        let parsed;
        let value = match parts
            .extensions
            .get::<ParsedJson>()
            .and_then(|p| p.for_bytes(&bytes))
        {
            Some(v) => v,
            None => {
                if self.schema.accepts_bytes(&bytes, self.limits.as_ref()) {
                    return Ok(Flow::Continue(Request::from_parts(parts, full(bytes))));
                }
                parsed = match &self.limits {
                    Some(l) => parse_json_within(&bytes, l).map_err(JsonFault::into_error)?,
                    None => parse_json_unique(&bytes)?,
                };
                &parsed
            }
        };
        // The common case first: `is_valid` stops at the first failure and builds no error
        // values; the full error walk runs only for bodies that fail.
        if self.schema.is_valid(value) {
            return Ok(Flow::Continue(Request::from_parts(parts, full(bytes))));
        }
        // jsonschema's two entry points should agree; if `is_valid` refused and the error walk
        // found nothing, the body is still refused (fail closed), at the root.
        let mut errors = self.schema.errors(value);
        if errors.is_empty() {
            errors.push(("/".to_string(), "schema".to_string()));
        }
        Err(GatewayError::Invalid { errors })
    }
}

#[cfg(test)]
mod content_type_tests {
    use super::is_json;
    use http::HeaderValue;

    #[test]
    fn json_and_json_suffixed_types_in_any_case_with_parameters() {
        let ct = |s: &'static str| is_json(Some(&HeaderValue::from_static(s)));
        for yes in [
            "application/json",
            "Application/JSON",
            "application/json; charset=utf-8",
            " application/json ;charset=utf-8",
            "application/problem+json",
            "APPLICATION/VND.API+JSON",
            "application/merge-patch+json; x=1",
            "application/+json",
        ] {
            assert!(ct(yes), "{yes}");
        }
        for no in [
            "",
            "application/",
            "application/jsonx",
            "application/xml",
            "text/json",
            "text/plain+json",
            "json",
            "application/json-seq",
            "applicationjson",
        ] {
            assert!(!ct(no), "{no}");
        }
        assert!(!is_json(None));
        // Not text: refused, as before.
        let bytes =
            HeaderValue::from_bytes(b"application/x\xff+json").expect("obs-text is a valid value");
        assert!(!is_json(Some(&bytes)));
    }

    #[test]
    fn json_in_another_charset_is_told_apart() {
        use super::{json_label, JsonLabel};
        let label = |s: &'static str| json_label(Some(&HeaderValue::from_static(s)));
        for utf8 in [
            "application/json; charset=UTF-8",
            "application/json; charset=\"utf-8\"",
            "application/json;charset=utf8; x=1",
        ] {
            assert_eq!(label(utf8), JsonLabel::Utf8, "{utf8}");
        }
        for other in [
            "application/json; charset=utf-7",
            "application/json; x=1; Charset=UTF-16",
            "application/vnd.x+json; charset=\"iso-8859-1\"",
            "application/json; charset=",
        ] {
            assert_eq!(label(other), JsonLabel::OtherCharset, "{other}");
            assert!(!is_json(Some(&HeaderValue::from_static(other))), "{other}");
        }
        assert_eq!(label("text/plain; charset=utf-7"), JsonLabel::Other);
    }
}
