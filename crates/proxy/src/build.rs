//! Assembly of a route's policy chain: the one place that decides which policies a route runs
//! and in what order. Read top to bottom; that is the order a request meets them.

use crate::{forward::Forwarder, Services};
use http::Request;
use portcullis_config::{AuthMethod, RouteConfig};
use portcullis_core::{Body, GatewayError};
use portcullis_policy::{
    Authenticate, Authorize, BodyLimit, Chain, Clients, Concurrency, Cors, Deprecation, Flow,
    IpFilter, JsonLimitCheck, ObjectRules, Params, Policy, Quota, RateLimit, ResponseFields, Step,
    ValidateBody,
};
use std::sync::Arc;

/// Builds the chain for `route` in front of its upstream forwarder.
pub(crate) fn route_chain(
    route: &RouteConfig,
    upstream: Forwarder,
    services: &Services,
    clients: &Clients,
) -> Result<Chain, String> {
    let mut steps: Vec<Arc<dyn Policy>> = Vec::new();
    // Steps whose place depends on the route; each is taken once, where it fits below.
    let mut params = route.params.clone().map(Params::new);
    let mut validate = route
        .request_schema
        .as_ref()
        .map(|s| ValidateBody::new(s, route.max_body))
        .transpose()?;
    // When the schema will parse the body into a tree, the limits check builds it; a schema
    // with the streaming fast path checks the limits itself (step 7).
    let streams = validate.as_ref().is_some_and(ValidateBody::streams);
    let mut json_limits =
        (route.json_limits.explicit || route.request_schema.is_some()).then(|| {
            let check = JsonLimitCheck::new(route.json_limits, route.max_body, false);
            if route.request_schema.is_some() && !streams {
                check.keeping_tree()
            } else {
                check
            }
        });

    // Browsers: CORS headers for allowed origins on every response, errors included (first,
    // so every later refusal carries them). Preflights are answered before routing.
    if let Some(cors) = &route.cors {
        steps.push(Arc::new(Cors::new(cors.clone())));
    }

    // 0. Where the caller is: route allow/deny lists of client networks (403).
    if !route.ip_rules.is_empty() {
        steps.push(Arc::new(IpFilter::new(route.ip_rules.clone())));
    }

    // 1. Retired or retiring: 410 Gone from the sunset on; Deprecation, Sunset and Link
    //    headers on every response before it.
    if let Some(d) = &route.deprecation {
        steps.push(Arc::new(Deprecation::new(d)));
    }

    // Load shedding: at most `max_concurrent` requests in flight, 503 + Retry-After beyond,
    //    never queued. Before authentication, so an overloaded route spends no hashing,
    //    signature checks or JWKS fetches on requests it will refuse anyway; after the three
    //    steps above, which refuse in memory without holding a slot, so denied or retired
    //    traffic cannot take slots from admitted callers. Counters live in this chain: a
    //    reload starts fresh ones (see `portcullis_policy::Concurrency`).
    if let Some(limit) = route.max_concurrent {
        steps.push(Arc::new(Concurrency::new(&route.id, limit)));
    }

    // 2. Who is calling: an API key (verified from memory), a JWT from a trusted issuer, or a
    //    client certificate bound to a client; 401 otherwise, 429 for a source
    //    locked out after repeated failures. Without the key service (never in `serve`), the
    //    route refuses everyone rather than letting anyone through.
    if !route.auth.is_empty() {
        let keys = route
            .auth
            .contains(&AuthMethod::ApiKey)
            .then(|| services.api_keys.clone())
            .flatten();
        let jwt = route
            .auth
            .contains(&AuthMethod::Jwt)
            .then(|| services.jwt.clone())
            .flatten();
        let oauth = route
            .auth
            .contains(&AuthMethod::OAuth2)
            .then(|| services.oauth.clone())
            .flatten();
        let mtls = route.auth.contains(&AuthMethod::Mtls);
        if keys.is_none() && jwt.is_none() && oauth.is_none() && !mtls {
            steps.push(Arc::new(Refuse));
        } else {
            steps.push(Arc::new(Authenticate::new(
                keys,
                jwt,
                oauth,
                mtls,
                clients.clone(),
                services.brute_force.clone(),
                &route.id,
            )));
        }
        // 3. What the caller may do here: required scopes and roles (403).
        if !route.scopes.is_empty() || !route.roles.is_empty() {
            steps.push(Arc::new(Authorize::new(
                route.scopes.clone(),
                route.roles.clone(),
            )));
        }
        // Rate limits that count callers: after authentication, so a client is known; only
        // admitted requests count.
        if !route.rate_limits.is_empty() {
            steps.push(Arc::new(RateLimit::new(
                &route.id,
                route.rate_limits.clone(),
                services.limits.clone(),
                route.shared_state_failure,
            )));
        }
        // Quotas: after the rate limits, so floods are shed before they reach the database,
        // and after authentication, since quotas count clients.
        if route.quota.is_some() || clients.values().any(|c| c.quota.is_some()) {
            steps.push(Arc::new(Quota::new(
                &route.id,
                route.quota,
                clients.clone(),
                services.store.clone(),
            )));
        }
        // Typed path and query parameters (400). After authentication, authorization and the
        // rate limits: an anonymous caller learns nothing about the parameters a route takes
        // (it gets 401 first), and malformed requests still count against the limits. Before
        // anything uses the values (object rules) or reads the body. No I/O, so cheap.
        if let Some(p) = params.take() {
            steps.push(Arc::new(p));
        }
        // 4. Which objects and fields: the named object must belong to the caller, and the
        //    body may not set denied fields (reads the body, within max_body). It parses any
        //    body as JSON, so the JSON structure limits go right before it, for every body.
        if !route.object_rules.is_empty() || !route.request_deny_fields.is_empty() {
            let rules = ObjectRules::new(
                route.object_rules.clone(),
                route.request_deny_fields.clone(),
                route.max_body,
            );
            if rules.needs_body() {
                json_limits = None;
                steps.push(Arc::new(
                    JsonLimitCheck::new(route.json_limits, route.max_body, true).keeping_tree(),
                ));
            }
            steps.push(Arc::new(rules));
        }
    }

    // Rate limits on public routes (per IP, per route, per header).
    if route.auth.is_empty() && !route.rate_limits.is_empty() {
        steps.push(Arc::new(RateLimit::new(
            &route.id,
            route.rate_limits.clone(),
            services.limits.clone(),
            route.shared_state_failure,
        )));
    }

    // Typed parameters on public routes: after their rate limits, as above.
    if let Some(p) = params.take() {
        steps.push(Arc::new(p));
    }

    // 5. What the caller may see: response fields filtered by role (on the way back).
    if !route.response_fields.is_empty() {
        steps.push(Arc::new(ResponseFields::new(route.response_fields.clone())));
    }

    // 6. Request size: a declared Content-Length over the limit is refused before reading; a
    //    streamed body is cut off the moment it passes the limit.
    steps.push(Arc::new(BodyLimit::new(route.max_body)));
    // JSON structure limits (400): depth, string, array and object sizes, checked on the
    // buffered bytes in one pass that also builds the tree the schema validator reads; on
    // routes that declare `json_limits`, every JSON body. Once per request: when the object
    // rules above parse the body, the check already ran before them. A streaming schema
    // takes the check over, in the same pass as its own (step 7); its content-type rule
    // (415 for anything but JSON) covers every body the separate check would see.
    if let Some(j) = json_limits.take() {
        if streams {
            validate = validate.map(|v| v.checking_limits(route.json_limits));
        } else {
            steps.push(Arc::new(j));
        }
    }

    // 7. What the body says: JSON Schema validation (reads the body, within max_body).
    if let Some(v) = validate.take() {
        steps.push(Arc::new(v));
    }

    Ok(Chain::new(steps, Arc::new(upstream)))
}

/// Stands in for authentication when the gateway has no key service: refuses everything.
struct Refuse;

impl Policy for Refuse {
    fn name(&self) -> &'static str {
        "authenticate"
    }

    fn on_request(&self, _req: Request<Body>) -> Step<'_, Flow> {
        Err(GatewayError::Unauthorized { presented: false }).into()
    }
}

/// The chain of an egress integration: the workflow authenticates with any method the
/// gateway has (API key, JWT, Portcullis-issued token), then the egress terminal decides the
/// rest. Without any identity service the chain refuses everyone.
pub(crate) fn egress_chain(
    id: &str,
    terminal: Arc<crate::egress::EgressTerminal>,
    services: &Services,
    clients: &Clients,
) -> Chain {
    let mut steps: Vec<Arc<dyn Policy>> = Vec::new();
    if services.api_keys.is_none() && services.jwt.is_none() && services.oauth.is_none() {
        steps.push(Arc::new(Refuse));
    } else {
        steps.push(Arc::new(Authenticate::new(
            services.api_keys.clone(),
            services.jwt.clone(),
            services.oauth.clone(),
            false,
            clients.clone(),
            services.brute_force.clone(),
            &format!("egress:{id}"),
        )));
    }
    Chain::new(steps, terminal)
}
