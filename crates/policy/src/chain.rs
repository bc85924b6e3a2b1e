//! The phase contract every policy follows, and the chain that runs them.

use async_trait::async_trait;
use bytes::Bytes;
use http::{Request, Response};
use http_body::{Frame, SizeHint};
use http_body_util::BodyExt;
use portcullis_core::{
    problem_response, Body, BoxError, ErrorInfo, GatewayError, Identity, RequestContext,
};
use std::{
    any::Any,
    future::{Future, IntoFuture},
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

/// What a policy decided about a request.
pub enum Flow {
    /// Pass the (possibly modified) request to the next step.
    Continue(Request<Body>),
    /// Answer now; later steps and the upstream never see the request.
    Respond(Response<Body>),
}

/// What a phase gives back: its outcome at once, or a future of it.
///
/// Most policies decide on the head alone (an API key, an IP rule, an in-memory rate limit),
/// and a phase that has decided returns [`Step::Ready`]: no future is allocated for it. Only
/// a phase that must wait (a request body, a token issuer, Redis) returns [`Step::later`],
/// which boxes its future. Measured: with async-trait, each phase boxed and moved its whole
/// future on every request, six times on the guarded benchmark route, seven with the
/// terminal (bench/RESULTS.md, issue 5). A `Step` can also be awaited directly.
pub enum Step<'a, T> {
    /// Decided.
    Ready(Result<T, GatewayError>),
    /// Still to be decided, by this future.
    Later(Pin<Box<dyn Future<Output = Result<T, GatewayError>> + Send + 'a>>),
}

impl<'a, T> Step<'a, T> {
    /// A phase that has to wait for something: `fut` decides it.
    pub fn later(fut: impl Future<Output = Result<T, GatewayError>> + Send + 'a) -> Self {
        Step::Later(Box::pin(fut))
    }
}

impl<T> From<Result<T, GatewayError>> for Step<'_, T> {
    fn from(r: Result<T, GatewayError>) -> Self {
        Step::Ready(r)
    }
}

impl<'a, T: Unpin> IntoFuture for Step<'a, T> {
    type Output = Result<T, GatewayError>;
    type IntoFuture = StepFuture<'a, T>;

    fn into_future(self) -> StepFuture<'a, T> {
        match self {
            Step::Ready(r) => StepFuture::Ready(Some(r)),
            Step::Later(f) => StepFuture::Later(f),
        }
    }
}

/// The future of an awaited [`Step`].
pub enum StepFuture<'a, T> {
    #[doc(hidden)]
    Ready(Option<Result<T, GatewayError>>),
    #[doc(hidden)]
    Later(Pin<Box<dyn Future<Output = Result<T, GatewayError>> + Send + 'a>>),
}

impl<T: Unpin> Future for StepFuture<'_, T> {
    type Output = Result<T, GatewayError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match &mut *self {
            // Polled again after it finished is a caller's bug; it fails closed.
            StepFuture::Ready(r) => Poll::Ready(r.take().unwrap_or_else(|| {
                Err(GatewayError::Internal(
                    "policy step polled after it finished".into(),
                ))
            })),
            StepFuture::Later(f) => f.as_mut().poll(cx),
        }
    }
}

/// One step of a route's chain.
///
/// Both phases have pass-through defaults, so a policy implements only what it needs. A
/// policy must not log secrets it handles and must fail closed: when it cannot decide, it
/// returns an error, never `Continue`. A phase that decides without waiting answers
/// [`Step::Ready`] (`Ok(..).into()`); one that waits answers [`Step::later`].
pub trait Policy: Send + Sync + 'static {
    /// Name used in logs and metrics.
    fn name(&self) -> &'static str;

    /// Whether this policy has anything to do for `req`: a cheap, synchronous look at the
    /// head. When it answers `false` neither phase runs for this request. The default is
    /// `true`; answer `false` only where passing the request on untouched is exactly what
    /// `on_request` would do, so skipping can never let through what the policy would
    /// refuse.
    fn applies(&self, _req: &Request<Body>) -> bool {
        true
    }

    /// Runs before the upstream is called, in chain order. An `Err` becomes a problem+json
    /// response, which still travels back through the earlier policies' `on_response`.
    fn on_request(&self, req: Request<Body>) -> Step<'_, Flow> {
        Step::Ready(Ok(Flow::Continue(req)))
    }

    /// Runs on every response coming back through this policy, in reverse chain order. Only
    /// policies whose `on_request` passed the request on see the response. A policy that
    /// implements this must leave [`Policy::has_response_phase`] at its default.
    fn on_response<'a>(
        &'a self,
        res: Response<Body>,
        _ctx: &'a RequestContext,
    ) -> Step<'a, Response<Body>> {
        Step::Ready(Ok(res))
    }

    /// Whether this policy has a response phase. Answer `false` only from a policy that keeps
    /// the pass-through default of [`Policy::on_response`]: the chain then skips that phase
    /// for it. The default is `true`, so a policy that forgets this costs a call, never a
    /// skipped check.
    fn has_response_phase(&self) -> bool {
        true
    }

    /// Whether this policy reads the route's captured path parameters
    /// ([`RouteMatch`](portcullis_core::RouteMatch) in the request's extensions). The
    /// gateway captures them only for chains where some step says so, so a policy that
    /// reads them must answer `true`.
    fn reads_route_match(&self) -> bool {
        false
    }
}

/// The last step of a chain: the thing that produces a response (the upstream forwarder).
#[async_trait]
pub trait Terminal: Send + Sync + 'static {
    /// Produces the response for a request that passed every policy. `ctx` is the
    /// request's context, with the identity the policies established.
    async fn call(
        &self,
        req: Request<Body>,
        ctx: &RequestContext,
    ) -> Result<Response<Body>, GatewayError>;

    /// As [`Policy::reads_route_match`]: whether the terminal reads the captured path
    /// parameters (a rewrite that uses them, say).
    fn reads_route_match(&self) -> bool {
        false
    }
}

/// Headers a policy wants on the eventual response (rate-limit allowance, say). Insert it
/// into the request's extensions in `on_request`; the chain moves it to the response,
/// whatever produces the response, after every response phase has run.
#[derive(Debug, Clone, Default)]
pub struct ResponseHeaders(pub http::HeaderMap);

/// Adds `value` to `h`. The `RateLimit` and `RateLimit-Policy` lists (rate limits and quotas
/// each add items) stay on one field line: a split list means the same in HTTP, but a client
/// that reads one line saw only half of it.
pub(crate) fn add_list_item(
    h: &mut http::HeaderMap,
    name: &http::HeaderName,
    value: &http::HeaderValue,
) {
    let list =
        *name == crate::rate_limit::RATELIMIT || *name == crate::rate_limit::RATELIMIT_POLICY;
    if let Some(old) = list.then(|| h.get(name)).flatten() {
        let mut joined = Vec::with_capacity(old.len() + 2 + value.len());
        joined.extend_from_slice(old.as_bytes());
        joined.extend_from_slice(b", ");
        joined.extend_from_slice(value.as_bytes());
        if let Ok(v) = http::HeaderValue::from_bytes(&joined) {
            h.insert(name.clone(), v);
            return;
        }
    }
    h.append(name.clone(), value.clone());
}

/// Something a policy needs kept alive until the response body has been sent or dropped (a
/// concurrency permit, say). Insert it into the request's extensions in `on_request`; the
/// chain ties it to the response body. A response the gateway made from an error carries no
/// upstream body, so its holds end at once.
#[derive(Clone)]
pub struct HoldUntilSent(pub Arc<dyn Any + Send + Sync>);

/// A route's policies in front of its terminal. Cheap to clone; immutable once built, so a
/// request keeps the chain it started with across a hot reload.
#[derive(Clone)]
pub struct Chain {
    policies: Arc<[Arc<dyn Policy>]>,
    terminal: Arc<dyn Terminal>,
    reads_route_match: bool,
}

impl Chain {
    /// A chain of `policies` (outermost first) in front of `terminal`.
    pub fn new(policies: Vec<Arc<dyn Policy>>, terminal: Arc<dyn Terminal>) -> Self {
        let reads_route_match =
            terminal.reads_route_match() || policies.iter().any(|p| p.reads_route_match());
        Chain {
            policies: policies.into(),
            terminal,
            reads_route_match,
        }
    }

    /// Whether any step reads the route's captured path parameters
    /// ([`RouteMatch`](portcullis_core::RouteMatch)); the gateway captures them only then.
    pub fn reads_route_match(&self) -> bool {
        self.reads_route_match
    }

    /// The names of the policies, in order; shown by the inventory.
    pub fn policy_names(&self) -> Vec<&'static str> {
        self.policies.iter().map(|p| p.name()).collect()
    }

    /// Runs the request through the chain. Always produces a response: errors become
    /// problem+json here, at the step that failed, so earlier policies see them too.
    ///
    /// Policies find the context in the request's extensions; the chain puts it there
    /// (only when some policy applies: the terminal is handed it directly).
    pub async fn run(&self, req: Request<Body>, ctx: &RequestContext) -> Response<Body> {
        // No policy to run for this request (a route without policies, or a GET on a route
        // whose only policy is the body limit): nothing to collect or replay around the
        // terminal, so none of the bookkeeping below (a context clone, the loop's state, the
        // extensions map the context would need). `applies` is a cheap look at the head,
        // asked again by the loop below when some policy does apply.
        // (Within the first 64, as the loop below: past them every policy runs.)
        if self.policies.len() <= 64 && self.policies.iter().all(|p| !p.applies(&req)) {
            return match self.terminal.call(req, ctx).await {
                Ok(r) => r,
                Err(e) => error_response(&e, ctx),
            };
        }
        // The response phase sees the identity that authentication established.
        let mut ctx = ctx.clone();
        // Put in the extensions before the first policy that applies, and only then: a
        // request no policy acts on (a GET past a body limit) needs no extensions map.
        let mut ctx_inserted = false;
        let mut extra = http::HeaderMap::new();
        let mut holds: Vec<HoldUntilSent> = Vec::new();
        let mut req = req;
        let mut passed = 0;
        // Policies (among the first 64) that did not apply to this request: their response
        // phase is skipped too. Past 64, every policy runs both phases.
        let mut skipped: u64 = 0;
        // The request is moved straight from step to step (not through an `Option`), and
        // the loop's normal end is the only way to the terminal: each move of a request is
        // a copy of ~240 bytes.
        let mut res = 'chain: {
            for (i, policy) in self.policies.iter().enumerate() {
                if i < 64 && !policy.applies(&req) {
                    skipped |= 1 << i;
                    passed += 1;
                    continue;
                }
                if !ctx_inserted {
                    req.extensions_mut().insert(ctx.clone());
                    ctx_inserted = true;
                }
                // Matched here rather than awaited as a `Step`: a decided phase's result is
                // then not moved through a future's state (measured: ~250 instructions per
                // request).
                let decided = match policy.on_request(req) {
                    Step::Ready(r) => r,
                    Step::Later(f) => f.await,
                };
                req = match decided {
                    Ok(Flow::Continue(next)) => next,
                    Ok(Flow::Respond(r)) => break 'chain r,
                    Err(e) => break 'chain error_response(&e, &ctx),
                };
                if let Some(h) = req.extensions_mut().remove::<ResponseHeaders>() {
                    // Appended, not replaced: rate limits and quotas each add an item to the
                    // same `RateLimit` list header. The first set is taken whole.
                    if extra.is_empty() {
                        extra = h.0;
                    } else {
                        for (name, value) in h.0.iter() {
                            add_list_item(&mut extra, name, value);
                        }
                    }
                }
                if let Some(h) = req.extensions_mut().remove::<HoldUntilSent>() {
                    holds.push(h);
                }
                if ctx.identity.is_none() {
                    ctx.identity = req.extensions().get::<Identity>().cloned();
                }
                passed += 1;
            }
            match self.terminal.call(req, &ctx).await {
                Ok(r) => r,
                Err(e) => error_response(&e, &ctx),
            }
        };
        for (i, policy) in self.policies[..passed].iter().enumerate().rev() {
            if i < 64 && skipped & (1 << i) != 0 || !policy.has_response_phase() {
                continue;
            }
            let decided = match policy.on_response(res, &ctx) {
                Step::Ready(r) => r,
                Step::Later(f) => f.await,
            };
            res = match decided {
                Ok(r) => r,
                Err(e) => error_response(&e, &ctx),
            };
        }
        // After the response phases: a phase may clear what the upstream said in the
        // gateway's place (CORS removes the upstream's `Access-Control-*`), never what the
        // gateway adds.
        for (name, value) in extra.iter() {
            add_list_item(res.headers_mut(), name, value);
        }
        if !holds.is_empty() && res.extensions().get::<ErrorInfo>().is_none() {
            res = res.map(|inner| {
                Held {
                    inner,
                    holds: Some(holds),
                }
                .boxed_unsync()
            });
        }
        res
    }
}

fn error_response(err: &GatewayError, ctx: &RequestContext) -> Response<Body> {
    problem_response(err, &ctx.request_id)
}

/// A response body that keeps the request's holds until it ends, fails or is dropped.
struct Held {
    inner: Body,
    holds: Option<Vec<HoldUntilSent>>,
}

impl http_body::Body for Held {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if matches!(polled, Poll::Ready(None | Some(Err(_)))) {
            self.holds = None;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use http_body::Body as _;
    use portcullis_core::RequestId;
    use std::sync::Mutex;

    /// Records which phases ran, tagging requests and responses with its name as they pass.
    struct Recorder {
        name: &'static str,
        applies_to_bodies_only: bool,
        /// What it answers to `has_response_phase` (its `on_response` records either way).
        responds: bool,
        log: Arc<Mutex<Vec<String>>>,
    }

    /// Its request phase decides at once and its response phase waits (it yields once), so
    /// every chain test runs both kinds of [`Step`].
    impl Policy for Recorder {
        fn name(&self) -> &'static str {
            self.name
        }
        fn applies(&self, req: &Request<Body>) -> bool {
            !self.applies_to_bodies_only || !req.body().is_end_stream()
        }
        fn has_response_phase(&self) -> bool {
            self.responds
        }
        fn on_request(&self, req: Request<Body>) -> Step<'_, Flow> {
            self.note("request");
            Ok(Flow::Continue(req)).into()
        }
        fn on_response<'a>(
            &'a self,
            res: Response<Body>,
            _ctx: &'a RequestContext,
        ) -> Step<'a, Response<Body>> {
            Step::later(async move {
                tokio::task::yield_now().await;
                self.note("response");
                Ok(res)
            })
        }
    }

    impl Recorder {
        fn step(
            name: &'static str,
            applies_to_bodies_only: bool,
            responds: bool,
            log: &Arc<Mutex<Vec<String>>>,
        ) -> Arc<dyn Policy> {
            Arc::new(Recorder {
                name,
                applies_to_bodies_only,
                responds,
                log: log.clone(),
            })
        }

        fn note(&self, phase: &str) {
            let entry = format!("{} {phase}", self.name);
            self.log.lock().expect("log").push(entry);
        }
    }

    struct Ok200;

    #[async_trait]
    impl Terminal for Ok200 {
        async fn call(
            &self,
            _req: Request<Body>,
            _ctx: &RequestContext,
        ) -> Result<Response<Body>, GatewayError> {
            Ok(Response::new(portcullis_core::empty()))
        }
    }

    /// A request's context as the gateway would build it, for the policy crate's tests.
    pub(crate) fn ctx() -> RequestContext {
        RequestContext {
            request_id: RequestId::generate(),
            client_ip: [127, 0, 0, 1].into(),
            received_at: std::time::Instant::now(),
            identity: None,
            connection: Arc::new(portcullis_core::Connection::new(
                ([127, 0, 0, 1], 1).into(),
                false,
                None,
            )),
        }
    }

    /// Answers with the request id it finds: in the extensions (a policy) or as given (the
    /// terminal), so the test can see each got the request's own context.
    struct SeesContext;

    impl Policy for SeesContext {
        fn name(&self) -> &'static str {
            "sees_context"
        }
        fn applies(&self, req: &Request<Body>) -> bool {
            req.headers().contains_key("x-apply")
        }
        fn on_request(&self, req: Request<Body>) -> Step<'_, Flow> {
            let id = req
                .extensions()
                .get::<RequestContext>()
                .map(|c| c.request_id.header_value());
            let mut res = Response::new(portcullis_core::empty());
            let Some(id) = id else {
                return Err(GatewayError::Forbidden).into();
            };
            res.headers_mut().insert("x-seen", id);
            Ok(Flow::Respond(res)).into()
        }
        fn reads_route_match(&self) -> bool {
            true
        }
    }

    struct EchoContext;

    #[async_trait]
    impl Terminal for EchoContext {
        async fn call(
            &self,
            req: Request<Body>,
            ctx: &RequestContext,
        ) -> Result<Response<Body>, GatewayError> {
            // A request no policy acted on carries no context in its extensions.
            assert!(req.extensions().get::<RequestContext>().is_none());
            let mut res = Response::new(portcullis_core::empty());
            res.headers_mut()
                .insert("x-seen", ctx.request_id.header_value());
            Ok(res)
        }
    }

    #[tokio::test]
    async fn the_context_reaches_the_policies_that_apply_and_the_terminal() {
        let chain = Chain::new(vec![Arc::new(SeesContext)], Arc::new(EchoContext));
        assert!(chain.reads_route_match());
        assert!(!Chain::new(vec![], Arc::new(EchoContext)).reads_route_match());
        for apply in [true, false] {
            let c = ctx();
            let mut req = Request::new(portcullis_core::empty());
            if apply {
                req.headers_mut()
                    .insert("x-apply", http::HeaderValue::from_static("1"));
            }
            let res = chain.run(req, &c).await;
            assert_eq!(
                res.headers().get("x-seen"),
                Some(&c.request_id.header_value()),
                "{apply}"
            );
        }
    }

    /// Runs one request (with a body or without) through `chain`: its status, and the phases
    /// the recorders logged, taken from `log`.
    async fn phases(
        chain: &Chain,
        with_body: bool,
        log: &Mutex<Vec<String>>,
    ) -> (http::StatusCode, Vec<String>) {
        let body = if with_body {
            portcullis_core::full("x")
        } else {
            portcullis_core::empty()
        };
        let res = chain.run(Request::new(body), &ctx()).await;
        (res.status(), std::mem::take(&mut *log.lock().expect("log")))
    }

    #[tokio::test]
    async fn a_policy_without_a_response_phase_is_skipped_on_the_way_back_only() {
        let log = Arc::new(Mutex::new(Vec::new()));
        let step = |name, responds| Recorder::step(name, false, responds, &log);
        let chain = Chain::new(
            vec![step("a", true), step("b", false), step("c", true)],
            Arc::new(Ok200),
        );
        let (status, seen) = phases(&chain, false, &log).await;
        assert_eq!(status, 200);
        assert_eq!(
            seen,
            [
                "a request",
                "b request",
                "c request",
                "c response",
                "a response"
            ]
        );
    }

    #[tokio::test]
    async fn when_no_policy_applies_only_the_terminal_runs() {
        let log = Arc::new(Mutex::new(Vec::new()));
        let bodies_only = |name| Recorder::step(name, true, true, &log);
        let chain = Chain::new(vec![bodies_only("a"), bodies_only("b")], Arc::new(Ok200));
        let (status, seen) = phases(&chain, false, &log).await;
        assert_eq!(status, 200);
        assert!(seen.is_empty());
        // With a body both apply, and both phases run.
        let (_, seen) = phases(&chain, true, &log).await;
        assert_eq!(seen, ["a request", "b request", "b response", "a response"]);
    }

    #[tokio::test]
    async fn a_policy_that_does_not_apply_runs_neither_phase_and_the_others_still_do() {
        let log = Arc::new(Mutex::new(Vec::new()));
        let step = |name, bodies_only| Recorder::step(name, bodies_only, true, &log);
        let chain = Chain::new(
            vec![step("a", false), step("b", true), step("c", false)],
            Arc::new(Ok200),
        );

        let (_, seen) = phases(&chain, false, &log).await;
        assert_eq!(seen, ["a request", "c request", "c response", "a response"]);

        let (_, seen) = phases(&chain, true, &log).await;
        assert_eq!(
            seen,
            [
                "a request",
                "b request",
                "c request",
                "c response",
                "b response",
                "a response"
            ]
        );
    }
}
