//! The phase contract every policy follows, and the chain that runs them.

use async_trait::async_trait;
use http::{Request, Response};
use portcullis_core::{problem_response, Body, GatewayError, Identity, RequestContext};
use std::sync::Arc;

/// What a policy decided about a request.
pub enum Flow {
    /// Pass the (possibly modified) request to the next step.
    Continue(Request<Body>),
    /// Answer now; later steps and the upstream never see the request.
    Respond(Response<Body>),
}

/// One step of a route's chain.
///
/// Both phases have pass-through defaults, so a policy implements only what it needs. A
/// policy must not log secrets it handles and must fail closed: when it cannot decide, it
/// returns an error, never `Continue`.
#[async_trait]
pub trait Policy: Send + Sync + 'static {
    /// Name used in logs and metrics.
    fn name(&self) -> &'static str;

    /// Runs before the upstream is called, in chain order. An `Err` becomes a problem+json
    /// response, which still travels back through the earlier policies' `on_response`.
    async fn on_request(&self, req: Request<Body>) -> Result<Flow, GatewayError> {
        Ok(Flow::Continue(req))
    }

    /// Runs on every response coming back through this policy, in reverse chain order. Only
    /// policies whose `on_request` passed the request on see the response.
    async fn on_response(
        &self,
        res: Response<Body>,
        _ctx: &RequestContext,
    ) -> Result<Response<Body>, GatewayError> {
        Ok(res)
    }
}

/// The last step of a chain: the thing that produces a response (the upstream forwarder).
#[async_trait]
pub trait Terminal: Send + Sync + 'static {
    /// Produces the response for a request that passed every policy.
    async fn call(&self, req: Request<Body>) -> Result<Response<Body>, GatewayError>;
}

/// Headers a policy wants on the eventual response (rate-limit allowance, say). Insert it
/// into the request's extensions in `on_request`; the chain moves it to the response,
/// whatever produces the response.
#[derive(Debug, Clone, Default)]
pub struct ResponseHeaders(pub http::HeaderMap);

/// A route's policies in front of its terminal. Cheap to clone; immutable once built, so a
/// request keeps the chain it started with across a hot reload.
#[derive(Clone)]
pub struct Chain {
    policies: Arc<[Arc<dyn Policy>]>,
    terminal: Arc<dyn Terminal>,
}

impl Chain {
    /// A chain of `policies` (outermost first) in front of `terminal`.
    pub fn new(policies: Vec<Arc<dyn Policy>>, terminal: Arc<dyn Terminal>) -> Self {
        Chain {
            policies: policies.into(),
            terminal,
        }
    }

    /// The names of the policies, in order; shown by the inventory.
    pub fn policy_names(&self) -> Vec<&'static str> {
        self.policies.iter().map(|p| p.name()).collect()
    }

    /// Runs the request through the chain. Always produces a response: errors become
    /// problem+json here, at the step that failed, so earlier policies see them too.
    pub async fn run(&self, req: Request<Body>, ctx: &RequestContext) -> Response<Body> {
        // The response phase sees the identity that authentication established.
        let mut ctx = ctx.clone();
        let mut extra = http::HeaderMap::new();
        let mut pending = Some(req);
        let mut passed = 0;
        let mut early = None;
        for policy in self.policies.iter() {
            let Some(req) = pending.take() else { break };
            match policy.on_request(req).await {
                Ok(Flow::Continue(mut next)) => {
                    if let Some(h) = next.extensions_mut().remove::<ResponseHeaders>() {
                        // Appended, not replaced: rate limits and quotas each add an item to
                        // the same `RateLimit` list header.
                        for (name, value) in h.0.iter() {
                            extra.append(name.clone(), value.clone());
                        }
                    }
                    if ctx.identity.is_none() {
                        ctx.identity = next.extensions().get::<Identity>().cloned();
                    }
                    pending = Some(next);
                    passed += 1;
                }
                Ok(Flow::Respond(r)) => early = Some(r),
                Err(e) => early = Some(error_response(&e, &ctx)),
            }
        }
        let mut res = match (early, pending) {
            (Some(r), _) => r,
            (None, Some(req)) => match self.terminal.call(req).await {
                Ok(r) => r,
                Err(e) => error_response(&e, &ctx),
            },
            (None, None) => error_response(
                &GatewayError::Internal("policy chain lost the request".into()),
                &ctx,
            ),
        };
        for (name, value) in extra.iter() {
            res.headers_mut().append(name.clone(), value.clone());
        }
        for policy in self.policies[..passed].iter().rev() {
            res = match policy.on_response(res, &ctx).await {
                Ok(r) => r,
                Err(e) => error_response(&e, &ctx),
            };
        }
        res
    }
}

fn error_response(err: &GatewayError, ctx: &RequestContext) -> Response<Body> {
    problem_response(err, &ctx.request_id)
}
