//! CORS for browsers calling a route: allowed origins get `Access-Control-Allow-*` headers on
//! every response (errors included); preflight requests are answered by [`preflight`] before
//! routing by method. Other origins get no CORS headers, so browsers refuse the response.
//!
//! The route's list is the only word on CORS: the upstream's own `Access-Control-*` headers
//! are removed from its responses. Otherwise an upstream that answers
//! `Access-Control-Allow-Origin: *` would open the route to every origin the list refuses
//! (and an allowed origin would see two values, which browsers reject). Every response of a
//! CORS route says `Vary: Origin`, refused origins' too, so a shared cache never hands one
//! origin's answer to another.

use crate::{chain::ResponseHeaders, Flow, Policy, Step};
use http::{header, HeaderMap, HeaderName, HeaderValue, Request, Response, StatusCode};
use portcullis_config::CorsConfig;
use portcullis_core::{empty, Body, GatewayError, RequestContext};

/// The response headers of the CORS protocol, which only the route's CORS list may set.
const CORS_RESPONSE_HEADERS: [HeaderName; 6] = [
    header::ACCESS_CONTROL_ALLOW_ORIGIN,
    header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
    header::ACCESS_CONTROL_ALLOW_METHODS,
    header::ACCESS_CONTROL_ALLOW_HEADERS,
    header::ACCESS_CONTROL_EXPOSE_HEADERS,
    header::ACCESS_CONTROL_MAX_AGE,
];

fn allowed_origin<'a>(
    cfg: &CorsConfig,
    origin: Option<&'a HeaderValue>,
) -> Option<&'a HeaderValue> {
    let origin = origin?;
    let o = origin.to_str().ok()?;
    cfg.origins
        .iter()
        .any(|a| a == "*" || a.eq_ignore_ascii_case(o))
        .then_some(origin)
}

fn common_headers(cfg: &CorsConfig, origin: &HeaderValue, h: &mut HeaderMap) {
    // Echo the origin (never `*`), so credentials and caches behave.
    h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
    h.append(header::VARY, HeaderValue::from_static("Origin"));
    if cfg.credentials {
        h.insert(
            header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
            HeaderValue::from_static("true"),
        );
    }
}

/// The answer to a refused preflight (`err`: the route's network rules, or its CORS lists):
/// problem+json that varies by `Origin` like an accepted preflight, so no cache hands one
/// origin's refusal to another.
pub fn refused_preflight(err: &GatewayError, id: &portcullis_core::RequestId) -> Response<Body> {
    let mut res = portcullis_core::problem_response(err, id);
    res.headers_mut()
        .append(header::VARY, HeaderValue::from_static("Origin"));
    res
}

/// The answer to a preflight request for a route with `cfg`, or an error when the origin,
/// method or headers are not allowed.
pub fn preflight(
    cfg: &CorsConfig,
    req_headers: &HeaderMap,
) -> Result<Response<Body>, GatewayError> {
    let origin =
        allowed_origin(cfg, req_headers.get(header::ORIGIN)).ok_or(GatewayError::Forbidden)?;
    let method = req_headers
        .get(header::ACCESS_CONTROL_REQUEST_METHOD)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !cfg.methods.iter().any(|m| m.eq_ignore_ascii_case(method)) {
        return Err(GatewayError::Forbidden);
    }
    let requested: Vec<String> = req_headers
        .get(header::ACCESS_CONTROL_REQUEST_HEADERS)
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            v.split(',')
                .map(|h| h.trim().to_ascii_lowercase())
                .filter(|h| !h.is_empty())
                .collect()
        })
        .unwrap_or_default();
    if !requested.iter().all(|h| cfg.headers.contains(h)) {
        return Err(GatewayError::Forbidden);
    }
    let mut res = Response::new(empty());
    *res.status_mut() = StatusCode::NO_CONTENT;
    let h = res.headers_mut();
    common_headers(cfg, origin, h);
    if let Ok(v) = HeaderValue::from_str(&cfg.methods.join(", ")) {
        h.insert(header::ACCESS_CONTROL_ALLOW_METHODS, v);
    }
    if !cfg.headers.is_empty() {
        if let Ok(v) = HeaderValue::from_str(&cfg.headers.join(", ")) {
            h.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, v);
        }
    }
    h.insert(
        header::ACCESS_CONTROL_MAX_AGE,
        HeaderValue::from(cfg.max_age.as_secs()),
    );
    Ok(res)
}

/// The CORS headers for the answer to an actual (non-preflight) request on a route with
/// `cfg`: the route's own answers, and the gateway's 405 for a method the path's routes do
/// not take, which a browser would otherwise hide from the page as a CORS failure.
pub fn actual_headers(cfg: &CorsConfig, req_headers: &HeaderMap) -> HeaderMap {
    let mut h = HeaderMap::new();
    match allowed_origin(cfg, req_headers.get(header::ORIGIN)) {
        Some(origin) => {
            common_headers(cfg, origin, &mut h);
            if !cfg.expose_headers.is_empty() {
                if let Ok(v) = HeaderValue::from_str(&cfg.expose_headers.join(", ")) {
                    h.insert(header::ACCESS_CONTROL_EXPOSE_HEADERS, v);
                }
            }
        }
        // The answer still depends on the origin: caches must key on it.
        None => {
            h.append(header::VARY, HeaderValue::from_static("Origin"));
        }
    }
    h
}

/// The CORS policy for actual (non-preflight) requests on one route.
pub struct Cors {
    cfg: CorsConfig,
}

impl Cors {
    /// CORS with `cfg`.
    pub fn new(cfg: CorsConfig) -> Self {
        Cors { cfg }
    }
}

impl Policy for Cors {
    fn name(&self) -> &'static str {
        "cors"
    }

    fn on_request(&self, mut req: Request<Body>) -> Step<'_, Flow> {
        let h = actual_headers(&self.cfg, req.headers());
        req.extensions_mut().insert(ResponseHeaders(h));
        Ok(Flow::Continue(req)).into()
    }

    /// Removes the upstream's CORS headers; the chain adds this route's after this phase.
    fn on_response<'a>(
        &'a self,
        mut res: Response<Body>,
        _ctx: &'a RequestContext,
    ) -> Step<'a, Response<Body>> {
        let h = res.headers_mut();
        for name in &CORS_RESPONSE_HEADERS {
            h.remove(name);
        }
        Ok(res).into()
    }
}
