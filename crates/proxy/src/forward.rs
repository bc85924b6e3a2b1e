//! The terminal step of every route: send the request upstream and stream the answer back,
//! within the route's connect, read and total deadlines.

use crate::{
    client::{SendFailure, Transport},
    headers::{set_forwarding, strip_hop_by_hop},
    template::{compile_template, Part},
};
use async_trait::async_trait;
use bytes::Bytes;
use http::{header, uri::PathAndQuery, HeaderValue, Request, Response, Uri, Version};
use http_body::{Body as HttpBody, Frame, SizeHint};
use http_body_util::BodyExt;
use ipnet::IpNet;
use portcullis_config::{RouteConfig, Timeouts, Upstream, UpstreamHeader};
use portcullis_core::{
    find_cause, Body, BodyTooSlow, BoxError, ClientBodyError, Connection, GatewayError, Identity,
    MalformedKind, RequestContext, RequestId, RouteMatch, REQUEST_ID_HEADER,
};
use portcullis_identity::TokenIssuer;
use portcullis_policy::{BodyTooLarge, Terminal};
use portcullis_vault::{Vault, VaultError};
use std::future::Future;
use std::{
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};
use tokio::time::{Instant, Sleep};

/// Forwards a route's requests to its upstream.
pub(crate) struct Forwarder {
    route_id: Arc<str>,
    /// The same id, interned: a body's failure note names it without touching a reference
    /// count that every response of the route would share across cores.
    route_name: &'static str,
    upstream: Upstream,
    rewrite: Option<Vec<Part>>,
    preserve_host: bool,
    timeouts: Timeouts,
    transport: Transport,
    trusted_proxies: Arc<[IpNet]>,
    headers: Vec<UpstreamHeader>,
    consumer: String,
    vault: Option<Arc<Vault>>,
    assertions: Option<Arc<TokenIssuer>>,
}

impl Forwarder {
    pub(crate) fn new(
        route: &RouteConfig,
        transport: Transport,
        trusted_proxies: Arc<[IpNet]>,
        vault: Option<Arc<Vault>>,
        assertions: Option<Arc<TokenIssuer>>,
    ) -> Self {
        Forwarder {
            route_id: Arc::from(route.id.as_str()),
            route_name: intern(&route.id),
            upstream: route.upstream.clone(),
            rewrite: route.rewrite.as_deref().map(compile_template),
            preserve_host: route.preserve_host,
            timeouts: route.timeouts,
            transport,
            trusted_proxies,
            headers: route.upstream_headers.clone(),
            consumer: route.consumer(),
            vault,
            assertions: if route.identity_assertion {
                assertions
            } else {
                None
            },
        }
    }

    /// Adds the configured upstream headers, resolving credentials from the vault. Any
    /// failure fails the request closed: it never goes out without its credential.
    async fn inject_headers(&self, headers: &mut http::HeaderMap) -> Result<(), GatewayError> {
        for h in &self.headers {
            let Some(secret) = &h.value.secret else {
                if let Ok(v) = HeaderValue::from_str(&h.value.prefix) {
                    headers.insert(h.name.clone(), v);
                }
                continue;
            };
            let unavailable = |e: VaultError| GatewayError::CredentialUnavailable(Box::new(e));
            let vault = self
                .vault
                .as_ref()
                .ok_or_else(|| unavailable(VaultError::NotFound(secret.name.clone())))?;
            let value = vault
                .resolve(&secret.name, &self.consumer)
                .await
                .map_err(unavailable)?;
            let value = match &secret.field {
                Some(f) => Arc::new(value.field(f).map_err(unavailable)?),
                None => value,
            };
            let mut bytes = zeroize::Zeroizing::new(Vec::with_capacity(
                h.value.prefix.len() + value.expose().len() + h.value.suffix.len(),
            ));
            bytes.extend_from_slice(h.value.prefix.as_bytes());
            bytes.extend_from_slice(value.expose());
            bytes.extend_from_slice(h.value.suffix.as_bytes());
            let mut v = HeaderValue::from_bytes(&bytes).map_err(|_| {
                unavailable(VaultError::InvalidValue(format!(
                    "secret {:?} is not a valid header value",
                    secret.name
                )))
            })?;
            // Never indexed by HPACK, never shown by Debug.
            v.set_sensitive(true);
            headers.insert(h.name.clone(), v);
        }
        Ok(())
    }

    /// The upstream's path and query for this request: base path, then the rewritten or
    /// original path, then the query as the client sent it.
    fn upstream_path(
        &self,
        uri: &Uri,
        matched: Option<&RouteMatch>,
    ) -> Result<PathAndQuery, GatewayError> {
        // No rewrite and no base path: the client's path and query as they are (a reference
        // to the same bytes, already validated by the HTTP parser).
        if self.rewrite.is_none() && self.upstream.base_path.is_empty() {
            return Ok(uri
                .path_and_query()
                .cloned()
                .unwrap_or_else(|| PathAndQuery::from_static("/")));
        }
        let mut pq = String::with_capacity(self.upstream.base_path.len() + uri.path().len() + 32);
        pq.push_str(&self.upstream.base_path);
        match &self.rewrite {
            Some(parts) => {
                for p in parts {
                    match p {
                        Part::Literal(s) => pq.push_str(s),
                        // Captured for this route: `reads_route_match` says so.
                        Part::Param(name) => {
                            pq.push_str(matched.and_then(|m| m.param(name)).unwrap_or_default())
                        }
                    }
                }
            }
            None => pq.push_str(uri.path()),
        }
        if let Some(q) = uri.query() {
            pq.push('?');
            pq.push_str(q);
        }
        PathAndQuery::try_from(pq).map_err(|_| GatewayError::Malformed(MalformedKind::InvalidPath))
    }

    /// Sends the prepared request and waits for the answer's head, until `until` at most.
    async fn exchange(
        &self,
        req: Request<Body>,
        path: PathAndQuery,
        until: Instant,
        connection: &Connection,
    ) -> Result<Response<Body>, GatewayError> {
        // On the connection's kept timer (portcullis_core::sleep_slot): a new tokio timer
        // per request is a registration and a removal under the timer wheel's lock.
        let sent = connection
            .exchange_timer
            .timeout(
                until,
                self.transport
                    .send(req, &self.upstream.scheme, &self.upstream.authority, path),
            )
            .await;
        match sent {
            Err(_) => Err(upstream_failure(
                &self.route_id,
                "timeout",
                GatewayError::UpstreamTimeout,
            )),
            Ok(Ok(res)) => Ok(res),
            Ok(Err(SendFailure { connect, error: e })) => {
                if let Some(b) = find_cause::<BodyTooLarge>(&*e) {
                    return Err(GatewayError::PayloadTooLarge { limit: b.limit });
                }
                if find_cause::<BodyTooSlow>(&*e).is_some() {
                    return Err(GatewayError::RequestTimeout);
                }
                if find_cause::<ClientBodyError>(&*e).is_some() {
                    return Err(GatewayError::Malformed(MalformedKind::InvalidBody));
                }
                let kind = if connect { "connect" } else { "protocol" };
                // The route's connect_timeout passing is a timeout like the others (504);
                // a refused or unreachable upstream is a bad gateway (502).
                let timed_out = find_cause::<std::io::Error>(&*e)
                    .is_some_and(|io| io.kind() == std::io::ErrorKind::TimedOut);
                if connect && timed_out {
                    return Err(upstream_failure(
                        &self.route_id,
                        kind,
                        GatewayError::UpstreamTimeout,
                    ));
                }
                Err(upstream_failure(
                    &self.route_id,
                    kind,
                    GatewayError::BadGateway(e),
                ))
            }
        }
    }
}

#[async_trait]
impl Terminal for Forwarder {
    fn reads_route_match(&self) -> bool {
        self.rewrite
            .iter()
            .flatten()
            .any(|p| matches!(p, Part::Param(_)))
    }

    async fn call(
        &self,
        mut req: Request<Body>,
        ctx: &RequestContext,
    ) -> Result<Response<Body>, GatewayError> {
        let path = self.upstream_path(req.uri(), req.extensions().get::<RouteMatch>())?;
        // Taken, not cloned: nothing reads the request's extensions after this.
        let req_identity = req.extensions_mut().remove::<Identity>();
        let client_host = req.headers().get(header::HOST).cloned().or_else(|| {
            req.uri()
                .authority()
                .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
        });

        // HTTP/2 may split `Cookie` into crumbs; HTTP/1.1 has one line (RFC 9113 §8.2.3).
        let h2 = req.version() == Version::HTTP_2;
        let headers = req.headers_mut();
        strip_hop_by_hop(headers);
        if h2 {
            join_cookie_crumbs(headers);
        }
        set_forwarding(
            headers,
            &ctx.connection,
            client_host.as_ref(),
            &self.trusted_proxies,
        );
        headers.insert(REQUEST_ID_HEADER, ctx.request_id.header_value());
        set_identity(headers, req_identity.as_ref());
        if let (Some(signer), Some(id)) = (&self.assertions, &req_identity) {
            // Boxed, as the vault lookup below: held inline, these futures (over 1 KB each)
            // made every forwarded request's future larger, and it is moved on every request.
            let assertion = Box::pin(signer.assert_identity(
                &id.client_id,
                &id.scopes,
                &self.route_id,
                ctx.request_id.as_str(),
            ))
            .await
            .ok_or_else(|| {
                GatewayError::CredentialUnavailable("identity assertion key unavailable".into())
            })?;
            let mut v = HeaderValue::from_str(&assertion)
                .map_err(|e| GatewayError::Internal(Box::new(e)))?;
            v.set_sensitive(true);
            headers.insert("x-portcullis-assertion", v);
        }
        if !self.headers.is_empty() {
            Box::pin(self.inject_headers(headers)).await?;
        }
        // The client's `Host` with preserve_host; otherwise the upstream's own: the plain-HTTP
        // pool's, built once, written over the client's in one step; for HTTPS none, so
        // hyper-util's client (or `:authority` on HTTP/2) takes it from the URI.
        match (self.preserve_host, client_host, self.transport.own_host()) {
            (true, Some(h), _) => {
                headers.insert(header::HOST, h);
            }
            (false, _, Some(own)) => {
                headers.insert(header::HOST, own.clone());
            }
            _ => {
                headers.remove(header::HOST);
            }
        }
        *req.version_mut() = Version::HTTP_11;

        // One clock read for both deadlines.
        let now = Instant::now();
        let deadline = now + self.timeouts.total;
        let head_until = now + self.timeouts.read.min(self.timeouts.total);
        let res = self
            .exchange(req, path, head_until, &ctx.connection)
            .await?;

        let (mut parts, body) = res.into_parts();
        // The gateway asked for no upgrade (it strips `Upgrade`) and tunnels none: a 101
        // would leave an HTTP/1 client on a dead connection, and HTTP/2 has no 101 at all.
        if parts.status == http::StatusCode::SWITCHING_PROTOCOLS {
            return Err(upstream_failure(
                &self.route_id,
                "protocol",
                GatewayError::BadGateway("upstream switched protocols unasked".into()),
            ));
        }
        // The client's connection keeps its own protocol: an HTTP/1.0 upstream's version on
        // the response made the server answer 1.0 and close a keep-alive client.
        parts.version = Version::HTTP_11;
        strip_hop_by_hop(&mut parts.headers);
        let body = if body.is_end_stream() {
            body
        } else {
            let who = Who {
                route: self.route_name,
                request_id: ctx.request_id.clone(),
            };
            Deadline::new(body, deadline, self.timeouts.read, who).boxed_unsync()
        };
        Ok(Response::from_parts(parts, body))
    }
}

/// Joins several `Cookie` fields into one, `; `-separated, as RFC 9113 §8.2.3 asks before a
/// request goes on over HTTP/1.1: an upstream reading one line would lose the others.
fn join_cookie_crumbs(h: &mut http::HeaderMap) {
    let mut all = h.get_all(header::COOKIE).iter();
    let (Some(first), Some(_)) = (all.next(), all.next()) else {
        return;
    };
    let mut joined = first.as_bytes().to_vec();
    for v in h.get_all(header::COOKIE).iter().skip(1) {
        joined.extend_from_slice(b"; ");
        joined.extend_from_slice(v.as_bytes());
    }
    if let Ok(mut v) = HeaderValue::from_bytes(&joined) {
        v.set_sensitive(true);
        h.insert(header::COOKIE, v);
    }
}

// Parsed once: a `&str` name is parsed again on every insert.
const X_PORTCULLIS_CLIENT: http::HeaderName = http::HeaderName::from_static("x-portcullis-client");
const X_PORTCULLIS_SCOPES: http::HeaderName = http::HeaderName::from_static("x-portcullis-scopes");

/// Identity headers: whatever `X-Portcullis-*` a client sent is dropped, and the verified
/// identity (when the route authenticated the caller) is set, so the upstream can trust them.
fn set_identity(h: &mut http::HeaderMap, id: Option<&Identity>) {
    let spoofed: Vec<http::HeaderName> = h
        .keys()
        .filter(|n| n.as_str().starts_with("x-portcullis-"))
        .cloned()
        .collect();
    for n in spoofed {
        h.remove(n);
    }
    let Some(id) = id else { return };
    if let Ok(v) = HeaderValue::from_str(&id.client_id) {
        h.insert(X_PORTCULLIS_CLIENT, v);
    }
    if let Ok(v) = HeaderValue::from_str(&id.scopes.join(" ")) {
        h.insert(X_PORTCULLIS_SCOPES, v);
    }
}

fn upstream_failure(route: &str, kind: &'static str, err: GatewayError) -> GatewayError {
    count_upstream_error(route, kind);
    err
}

/// One upstream failure of `kind` on `route`, in `portcullis_upstream_errors_total`.
fn count_upstream_error(route: &str, kind: &'static str) {
    metrics::counter!("portcullis_upstream_errors_total", "route" => route.to_string(), "kind" => kind).increment(1);
}

/// The upstream took longer than the route allows while streaming its body.
#[derive(Debug, thiserror::Error)]
#[error("upstream response body timed out")]
struct BodyTimeout;

pin_project_lite::pin_project! {
    /// A response body that fails once the route's total deadline passes or the upstream goes
    /// quiet for longer than the read timeout. The timer and the clock are touched only when
    /// the body has to wait: most small bodies arrive whole with the head and never do, and
    /// making a tokio `Sleep` (the runtime's handle) and reading the clock were two of the
    /// few costs every proxied response paid. Once made, the one timer is moved, not
    /// replaced: resetting registers it in the timer wheel under a lock. The upstream's
    /// silence counts from the first wait after its latest frame, that is from when the
    /// gateway was ready for more: time spent waiting on a slow client is not the upstream's.
    struct Deadline {
        #[pin]
        inner: Body,
        #[pin]
        timer: Option<Sleep>,
        deadline: Instant,
        idle: Duration,
        // A frame arrived (or none has been waited for yet) since the timer was last set.
        fresh: bool,
        who: Who,
    }
}

/// Whose response a body is: the access line is written when the head comes back, so a body
/// that fails after it says so in a line of its own, with the request id to match them.
/// (A policy that buffers the body, `response_fields`, turns such a failure into a 502; the
/// line is written then too.)
struct Who {
    route: &'static str,
    request_id: RequestId,
}

/// `id` as text that lives as long as the process, one copy per distinct id ever configured
/// (route ids are few, and a reload keeps most of them): built when a route is, never per
/// request.
fn intern(id: &str) -> &'static str {
    static IDS: std::sync::Mutex<Vec<&'static str>> = std::sync::Mutex::new(Vec::new());
    let mut ids = IDS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some(known) = ids.iter().find(|k| **k == id) {
        return known;
    }
    let leaked: &'static str = Box::leak(id.to_owned().into_boxed_str());
    ids.push(leaked);
    leaked
}

impl Who {
    /// The body was cut after the client got a status: counted with the other upstream
    /// failures (kind `body_timeout` or `body`) and logged, so the access line's status is not
    /// the only record of the request. The cause names the failure's kind only: an upstream's
    /// error text can carry what it should not (addresses, its own messages).
    fn body_failed(&self, kind: &'static str) {
        count_upstream_error(self.route, kind);
        tracing::warn!(
            target: "portcullis::upstream",
            request_id = %self.request_id,
            route = %self.route,
            kind,
            "upstream response body failed while streaming"
        );
    }
}

impl Deadline {
    fn new(inner: Body, deadline: Instant, idle: Duration, who: Who) -> Self {
        Deadline {
            inner,
            timer: None,
            deadline,
            idle,
            fresh: true,
            who,
        }
    }
}

impl HttpBody for Deadline {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let mut this = self.project();
        match this.inner.poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                *this.fresh = true;
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                this.who.body_failed("body");
                Poll::Ready(Some(Err(e)))
            }
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => {
                if std::mem::take(this.fresh) || this.timer.is_none() {
                    let at = (*this.deadline).min(Instant::now() + *this.idle);
                    match this.timer.as_mut().as_pin_mut() {
                        Some(timer) => timer.reset(at),
                        None => this.timer.set(Some(tokio::time::sleep_until(at))),
                    }
                }
                match this.timer.as_pin_mut().map(|t| t.poll(cx)) {
                    Some(Poll::Pending) => Poll::Pending,
                    // `None` cannot happen (set just above); were it to, the body fails
                    // rather than wait with no timer to wake it.
                    Some(Poll::Ready(())) | None => {
                        this.who.body_failed("body_timeout");
                        Poll::Ready(Some(Err(Box::new(BodyTimeout))))
                    }
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::stream;
    use http_body_util::StreamBody;
    use tokio::sync::mpsc;

    /// A body fed frame by frame through a channel; silent while the sender is held.
    fn channel_body() -> (mpsc::UnboundedSender<Bytes>, Body) {
        let (tx, rx) = mpsc::unbounded_channel::<Bytes>();
        let frames = stream::unfold(rx, |mut rx| async move {
            let b = rx.recv().await?;
            Some((Ok::<_, BoxError>(Frame::data(b)), rx))
        });
        (tx, StreamBody::new(frames).boxed_unsync())
    }

    /// A `Deadline` over a channel-fed body, with the total deadline `total` from now: the
    /// start instant, the feeding end and the body.
    fn deadline_body(
        total: Duration,
        idle: Duration,
    ) -> (Instant, mpsc::UnboundedSender<Bytes>, Deadline) {
        let start = Instant::now();
        let (tx, inner) = channel_body();
        let who = Who {
            route: "r",
            request_id: RequestId::generate(),
        };
        (start, tx, Deadline::new(inner, start + total, idle, who))
    }

    /// Reads `body` to its end or first error: the data frames and, if any, when it failed.
    async fn drain(body: Deadline) -> (Vec<Bytes>, Option<Instant>) {
        let mut body = Box::pin(body);
        let mut got = Vec::new();
        while let Some(frame) = body.frame().await {
            match frame {
                Ok(f) => got.extend(f.into_data().ok()),
                Err(e) => {
                    assert!(e.is::<BodyTimeout>(), "{e}");
                    return (got, Some(Instant::now()));
                }
            }
        }
        (got, None)
    }

    // Paused tokio time: the runtime jumps to the next timer when every task waits, so these
    // run instantly and the instants they compare are virtual, exact and repeatable.
    #[tokio::test(start_paused = true)]
    async fn the_read_timeout_counts_from_the_first_wait_after_the_latest_frame() {
        let (start, tx, body) = deadline_body(Duration::from_secs(3600), Duration::from_secs(10));
        let feeder = tokio::spawn(async move {
            for i in 0..3u8 {
                tx.send(Bytes::from(vec![i])).expect("the body is open");
                tokio::time::sleep(Duration::from_secs(6)).await;
            }
            // Stay silent with the body still open.
            tokio::time::sleep(Duration::from_secs(3600)).await;
            drop(tx);
        });
        let (got, failed) = drain(body).await;
        feeder.abort();
        // Every frame came 6 s after the one before (inside the 10 s idle limit), so none is
        // lost; the body fails 10 s after the last one, at 12 s + 10 s.
        assert_eq!(
            got,
            vec![
                Bytes::from_static(&[0]),
                Bytes::from_static(&[1]),
                Bytes::from_static(&[2])
            ]
        );
        let failed = failed.expect("a silent body must time out");
        assert_eq!(failed - start, Duration::from_secs(22));
    }

    #[tokio::test(start_paused = true)]
    async fn the_total_deadline_cuts_a_body_that_keeps_trickling() {
        let (start, tx, body) = deadline_body(Duration::from_secs(25), Duration::from_secs(10));
        let feeder = tokio::spawn(async move {
            loop {
                if tx.send(Bytes::from_static(b"x")).is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_secs(4)).await;
            }
        });
        let (got, failed) = drain(body).await;
        feeder.abort();
        // Frames at 0, 4, ..., 24 s: seven, then the route's total deadline at 25 s.
        assert_eq!(got.len(), 7);
        assert_eq!(
            failed.expect("the total deadline must end it") - start,
            Duration::from_secs(25)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_that_ends_in_time_is_passed_on_whole() {
        let (_, tx, body) = deadline_body(Duration::from_secs(30), Duration::from_secs(10));
        let feeder = tokio::spawn(async move {
            tx.send(Bytes::from_static(b"a")).expect("the body is open");
            tokio::time::sleep(Duration::from_secs(9)).await;
            tx.send(Bytes::from_static(b"b")).expect("the body is open");
        });
        let (got, failed) = drain(body).await;
        feeder.await.expect("the feeder ends");
        assert_eq!(
            got,
            vec![Bytes::from_static(b"a"), Bytes::from_static(b"b")]
        );
        assert_eq!(failed, None);
    }
}
