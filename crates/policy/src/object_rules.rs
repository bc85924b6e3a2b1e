//! Object-level authorization (OWASP API1) and mass-assignment protection (API3, requests):
//! a path, query or JSON body value must equal an attribute of the caller (`{tenant}` must be
//! the caller's tenant), and a caller may not set the body fields the route denies. Checked
//! before the upstream is called; anything missing fails closed (403).

use crate::{body_limit::read_limited, json_path, Flow, Policy, Step};
use http::Request;
use portcullis_config::{ObjectRule, ObjectSource};
use portcullis_core::{full, Body, GatewayError, Identity, RouteMatch};

/// The object-rule policy for one route.
pub struct ObjectRules {
    rules: Vec<ObjectRule>,
    deny_fields: Vec<String>,
    max_body: u64,
}

impl ObjectRules {
    /// Rules and denied request fields; bodies are read up to `max_body`.
    pub fn new(rules: Vec<ObjectRule>, deny_fields: Vec<String>, max_body: u64) -> Self {
        ObjectRules {
            rules,
            deny_fields,
            max_body,
        }
    }

    /// True when the rules read the JSON body (body sources or denied fields), whatever its
    /// content type.
    pub fn needs_body(&self) -> bool {
        !self.deny_fields.is_empty()
            || self
                .rules
                .iter()
                .any(|r| matches!(r.source, ObjectSource::Body(_)))
    }
}

fn scalar(v: &serde_json::Value) -> Option<String> {
    match v {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

impl Policy for ObjectRules {
    fn name(&self) -> &'static str {
        "object_rules"
    }

    fn has_response_phase(&self) -> bool {
        false
    }

    fn reads_route_match(&self) -> bool {
        self.rules
            .iter()
            .any(|r| matches!(r.source, ObjectSource::Path(_)))
    }

    fn on_request(&self, req: Request<Body>) -> Step<'_, Flow> {
        Step::later(self.request_phase(req))
    }
}

/// The request phase itself: it reads the body, so it is an async method whose future
/// `Step::later` boxes.
impl ObjectRules {
    async fn request_phase(&self, req: Request<Body>) -> Result<Flow, GatewayError> {
        let id = req
            .extensions()
            .get::<Identity>()
            .cloned()
            .ok_or(GatewayError::Unauthorized { presented: false })?;
        let (parts, body) = req.into_parts();
        let (body, json) = if self.needs_body() {
            let bytes = read_limited(body, self.max_body).await?;
            let json = if bytes.is_empty() {
                serde_json::Value::Null
            } else if !crate::validate_body::is_json(parts.headers.get(http::header::CONTENT_TYPE))
            {
                // Read as JSON here, a body labelled otherwise is read as something else by
                // the upstream (a form with `&role=admin` inside a JSON string).
                return Err(GatewayError::UnsupportedMediaType);
            } else if let Some(v) = parts
                .extensions
                .get::<crate::json_limits::ParsedJson>()
                .and_then(|p| p.for_bytes(&bytes))
            {
                // Parsed by the JSON-limits step just before; not parsed again.
                v.clone()
            } else {
                // serde_json stops at 128 levels of nesting, so a deep document is an error, not
                // a stack overflow; a repeated name is refused, so the rules and the upstream
                // read the same value.
                crate::json_limits::parse_json_unique(&bytes)?
            };
            (full(bytes), Some(json))
        } else {
            (body, None)
        };

        for field in &self.deny_fields {
            if json.as_ref().is_some_and(|j| json_path::sets(j, field)) {
                tracing::info!(target: "portcullis::security", event = "mass_assignment", client = %id.client_id, field = %field, "request sets a field the caller may not set");
                return Err(GatewayError::Forbidden);
            }
        }
        for rule in &self.rules {
            let expected = if rule.attribute == "id" {
                Some(id.client_id.to_string())
            } else {
                id.attributes.get(&rule.attribute).cloned()
            };
            let actual = match &rule.source {
                ObjectSource::Path(p) => parts
                    .extensions
                    .get::<RouteMatch>()
                    .and_then(|m| m.param(p))
                    .map(str::to_string),
                // Exactly one value: with `tenant=acme&tenant=evil` the rule would judge the
                // first while an upstream that reads the last serves another tenant's data.
                // `tenant[]=` and `tenant[x]=` count as copies too: qs-style parsers read
                // them as `tenant`.
                ObjectSource::Query(q) => parts.uri.query().and_then(|qs| {
                    let mut named = url::form_urlencoded::parse(qs.as_bytes())
                        .filter(|(k, _)| {
                            k.eq_ignore_ascii_case(q) || crate::params::is_structured_form(k, q)
                        })
                        .map(|(k, v)| k.eq_ignore_ascii_case(q).then_some(v));
                    match (named.next(), named.next()) {
                        (Some(Some(v)), None) => Some(v.into_owned()),
                        _ => None,
                    }
                }),
                ObjectSource::Body(b) => json
                    .as_ref()
                    .and_then(|j| json_path::only_value(j, b))
                    .and_then(scalar),
            };
            match (expected, actual) {
                (Some(e), Some(a)) if e == a => {}
                _ => {
                    tracing::info!(target: "portcullis::security", event = "object_denied", client = %id.client_id, attribute = %rule.attribute, "request names an object the caller does not own");
                    return Err(GatewayError::Forbidden);
                }
            }
        }
        Ok(Flow::Continue(Request::from_parts(parts, body)))
    }
}
