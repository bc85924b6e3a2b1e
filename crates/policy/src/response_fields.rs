//! Property-level authorization for responses (OWASP API3): JSON fields a caller's role may
//! not see are removed before the response leaves the gateway. A response that cannot be
//! filtered (not JSON, compressed, too large) is not passed on: 502.

use crate::{body_limit::read_limited, json_path, Flow, Policy, Step};
use http::{header, HeaderValue, Request, Response};
use portcullis_config::FieldFilter;
use portcullis_core::{full, Body, ErrorInfo, GatewayError, RequestContext};

/// Largest upstream response body the filter will buffer.
const MAX_FILTERED_BODY: u64 = 8 * 1024 * 1024;

/// The response-field policy for one route.
pub struct ResponseFields {
    by_role: Vec<(String, FieldFilter)>,
}

impl ResponseFields {
    /// Filters by role; the `default` entry applies to callers without a listed role.
    pub fn new(by_role: Vec<(String, FieldFilter)>) -> Self {
        ResponseFields { by_role }
    }

    fn filter_for(&self, roles: &[String]) -> Option<&FieldFilter> {
        self.by_role
            .iter()
            .find(|(role, _)| role != "default" && roles.iter().any(|r| r == role))
            .or_else(|| self.by_role.iter().find(|(role, _)| role == "default"))
            .map(|(_, f)| f)
    }
}

impl Policy for ResponseFields {
    fn name(&self) -> &'static str {
        "response_fields"
    }

    fn on_request(&self, mut req: Request<Body>) -> Step<'_, Flow> {
        let h = req.headers_mut();
        // Compressed bodies cannot be filtered; ask the upstream for plain ones.
        h.insert(
            header::ACCEPT_ENCODING,
            HeaderValue::from_static("identity"),
        );
        // Nor can a part of a document: `Range: bytes=47-78` cut a denied field's value out
        // of it, and the fragment (a bare string) passed the filter whole.
        h.remove(header::RANGE);
        h.remove(header::IF_RANGE);
        Ok(Flow::Continue(req)).into()
    }

    fn on_response<'a>(
        &'a self,
        res: Response<Body>,
        ctx: &'a RequestContext,
    ) -> Step<'a, Response<Body>> {
        Step::later(self.response_phase(res, ctx))
    }
}

/// The response phase itself: it reads the body, so it is an async method whose future
/// `Step::later` boxes.
impl ResponseFields {
    async fn response_phase(
        &self,
        res: Response<Body>,
        ctx: &RequestContext,
    ) -> Result<Response<Body>, GatewayError> {
        if res.extensions().get::<ErrorInfo>().is_some() {
            return Ok(res);
        }
        let roles: &[String] = ctx.identity.as_ref().map_or(&[], |i| &i.roles);
        let Some(filter) = self.filter_for(roles) else {
            return Ok(res);
        };
        let (mut parts, body) = res.into_parts();
        let json_type = parts
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|ct| {
                ct.split(';')
                    .next()
                    .is_some_and(|m| m.trim().eq_ignore_ascii_case("application/json"))
            });
        let encoded = parts
            .headers
            .get(header::CONTENT_ENCODING)
            .is_some_and(|v| v != "identity");
        // An upstream that sends a part anyway (it was not asked for one) is refused too.
        if parts.status == http::StatusCode::PARTIAL_CONTENT
            || parts.headers.contains_key(header::CONTENT_RANGE)
        {
            return Err(bad_gateway("a partial response cannot be filtered"));
        }
        let bytes = read_limited(body, MAX_FILTERED_BODY)
            .await
            .map_err(|_| bad_gateway("response body too large or broken for field filtering"))?;
        if bytes.is_empty() {
            return Ok(Response::from_parts(parts, full(bytes)));
        }
        if !json_type || encoded {
            return Err(bad_gateway(
                "response is not plain JSON; it cannot be filtered",
            ));
        }
        let mut v: serde_json::Value = serde_json::from_slice(&bytes)
            .map_err(|_| bad_gateway("response is not valid JSON"))?;
        if let Some(allow) = &filter.allow {
            json_path::keep_only(&mut v, allow);
        }
        for path in &filter.deny {
            json_path::remove(&mut v, path);
        }
        let out = serde_json::to_vec(&v).map_err(|e| GatewayError::Internal(Box::new(e)))?;
        parts
            .headers
            .insert(header::CONTENT_LENGTH, HeaderValue::from(out.len()));
        Ok(Response::from_parts(parts, full(out)))
    }
}

fn bad_gateway(why: &'static str) -> GatewayError {
    GatewayError::BadGateway(Box::new(Unfilterable(why)))
}

/// Why an upstream response could not be filtered (for the log line).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Unfilterable(&'static str);
