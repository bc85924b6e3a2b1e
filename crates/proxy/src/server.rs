//! The data-plane listener: accepts TCP connections, terminates TLS when configured, serves
//! HTTP/1.1 and HTTP/2 (ALPN or prior knowledge), and drains connections on shutdown.
//!
//! Open connections are capped by `server.max_connections` (read at every accept, so a reload
//! changes it for new connections). Over the cap, a plaintext connection is still accepted and
//! its first HTTP/1 request answered 503 problem+json with `Retry-After` and `Connection:
//! close`, in a task of its own with a short deadline, so the client learns why. An HTTP/2
//! (prior knowledge) client over the cap gets its connection closed by the HTTP/1 parser, and
//! a TLS connection over the cap is closed at once: answering it would first cost a handshake,
//! the very work shedding is meant to save.
//!
//! Every connection must get going within `server.header_read_timeout`, whatever it speaks.
//! A plaintext connection's first bytes are peeked at ([`sniff`]) to tell HTTP/2's preface
//! from an HTTP/1 request, under that deadline; over TLS, ALPN says (`h2`, or HTTP/1.1 for
//! `http/1.1` or none: RFC 9113 §3.3 has HTTP/2 over TLS negotiated by ALPN). Then hyper's
//! HTTP/1 connection times each request head, and an HTTP/2 connection on which no request
//! starts for a whole `header_read_timeout` is closed gracefully ([`Idle`]). hyper-util's
//! protocol detection, used before, read the first bytes with no deadline at all: a socket
//! that sent nothing (plain, or after its TLS handshake) or half a preface held its slot for
//! ever. Serving each protocol with its own hyper builder also spares every request the
//! detection's rewind layer.

use crate::{
    drain::{Drain, Idle, StreamGuard, Streams},
    head_timer::HeadTimer,
    send_deadline::SendDeadline,
    Gateway,
};
use bytes::Bytes;
use http::{header, HeaderValue};
use http_body_util::BodyExt;
use hyper::body::Frame;
use hyper::{server::conn, service::service_fn};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use portcullis_config::ServerConfig;
use portcullis_core::Body;
use portcullis_core::{problem_response, Connection, GatewayError, RequestId};
use std::{
    convert::Infallible,
    sync::{
        atomic::{AtomicU64, AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};
use tokio::{
    net::{TcpListener, TcpStream},
    sync::{watch, Semaphore},
};

/// How long an over-cap connection gets to send the request that is answered with 503.
const REFUSAL_DEADLINE: Duration = Duration::from_secs(2);
/// Most over-cap connections being answered at once; beyond it they are closed at once, so a
/// connection flood cannot turn the refusals themselves into the overload.
const MAX_REFUSALS: usize = 256;
/// What an over-cap client is told to wait before retrying.
const RETRY_AFTER: Duration = Duration::from_secs(1);

/// One open data-plane connection counted against `server.max_connections`. Its connection
/// task owns it, so every way the task ends (done, error, timeout, drain, cancelled at
/// shutdown) gives the slot back.
struct ConnectionSlot(Arc<AtomicUsize>);

impl ConnectionSlot {
    fn take(open: &Arc<AtomicUsize>, max: usize) -> Option<Self> {
        // Only the accept loop takes slots, so the check and the increment cannot interleave
        // with another taker; releases only make room.
        if open.fetch_add(1, Ordering::AcqRel) >= max {
            open.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        metrics::gauge!("portcullis_open_connections").increment(1.0);
        Some(ConnectionSlot(open.clone()))
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
        metrics::gauge!("portcullis_open_connections").decrement(1.0);
    }
}

/// Answers the first HTTP/1 request of an over-cap connection with 503 and closes it.
async fn refuse(stream: TcpStream) {
    let service = service_fn(|_req| async {
        let mut res = problem_response(
            &GatewayError::Overloaded {
                retry_after: RETRY_AFTER,
            },
            &RequestId::generate(),
        );
        res.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
        Ok::<_, Infallible>(res)
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(REFUSAL_DEADLINE)
        .keep_alive(false)
        .serve_connection(TokioIo::new(stream), service);
    let _ = tokio::time::timeout(REFUSAL_DEADLINE, conn).await;
}

/// Flips to `true` when the process should stop accepting and drain.
pub type ShutdownSignal = watch::Receiver<bool>;

/// The two protocols' connection builders, configured once per listener.
struct Builders {
    h1: conn::http1::Builder,
    h2: conn::http2::Builder<TokioExecutor>,
}

fn http_builders(s: &ServerConfig) -> Builders {
    // hyper's own limits are a backstop set above ours: requests within them reach the
    // gateway, which answers over-limit heads with problem+json (431/414). Only requests far
    // beyond them get hyper's bare error.
    let backstop_bytes = usize::try_from((s.max_header_bytes + s.max_url_bytes) * 2)
        .unwrap_or(usize::MAX)
        .max(16 * 1024);
    // The HTTP/1 timer is set per connection (`HeadTimer`, in `serve`).
    let mut h1 = conn::http1::Builder::new();
    h1.header_read_timeout(s.header_read_timeout)
        .max_buf_size(backstop_bytes.max(8192));
    if let Some(n) = header_count_backstop(s.max_header_count) {
        h1.max_headers(n);
    }
    let mut h2 = conn::http2::Builder::new(TokioExecutor::new());
    h2.timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(backstop_bytes).unwrap_or(u32::MAX))
        .keep_alive_interval(Some(Duration::from_secs(30)));
    Builders { h1, h2 }
}

/// The most response bytes an HTTP/2 stream hands out per draw of its body. hyper draws a
/// body again only once the last piece has gone out under the client's flow-control window,
/// so with pieces this small a stream not drawn for `send_timeout` is one whose client took
/// less than this in that time (0.5 KiB/s at the default 30 s): the stall watch can then
/// judge each stream by itself.
const H2_PIECE: usize = 16 * 1024;

pin_project_lite::pin_project! {
    /// An HTTP/2 response body that keeps its request counted as running (see [`Idle`]) until
    /// it is done or dropped, and hands its data out in pieces of at most [`H2_PIECE`].
    struct Guarded {
        #[pin]
        inner: Body,
        rest: Bytes,
        running: StreamGuard,
    }
}

impl Guarded {
    fn new(inner: Body, running: StreamGuard) -> Self {
        Guarded {
            inner,
            rest: Bytes::new(),
            running,
        }
    }
}

impl hyper::body::Body for Guarded {
    type Data = Bytes;
    type Error = portcullis_core::BoxError;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        use std::task::Poll;
        let this = self.project();
        this.running.polled();
        let mut data = if this.rest.is_empty() {
            match this.inner.poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) => data,
                    Err(trailers) => return Poll::Ready(Some(Ok(trailers))),
                },
                other => return other,
            }
        } else {
            std::mem::take(this.rest)
        };
        if data.len() > H2_PIECE {
            *this.rest = data.split_off(H2_PIECE);
        }
        this.running.handed();
        Poll::Ready(Some(Ok(Frame::data(data))))
    }

    fn is_end_stream(&self) -> bool {
        self.rest.is_empty() && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        let inner = self.inner.size_hint();
        let rest = self.rest.len() as u64;
        // Upper first: a lower bound above the upper one panics.
        let mut hint = hyper::body::SizeHint::new();
        if let Some(upper) = inner.upper() {
            hint.set_upper(upper + rest);
        }
        hint.set_lower(inner.lower() + rest);
        hint
    }
}

/// The protocol a connection speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Protocol {
    Http1,
    Http2,
}

/// HTTP/2's client connection preface (RFC 9113 §3.4).
const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// How much of HTTP/2's preface decides: no HTTP/1 method is `PRI`, and h2 checks the rest
/// of the preface itself (a connection that stalls in it is closed by the HTTP/2 idle watch).
const PREFACE_DECIDES: usize = 3;

/// Tells from a plaintext connection's first bytes, read without consuming them, whether it
/// speaks HTTP/2 (`PRI`, the preface's start) or HTTP/1 (anything else); `None` when the
/// client closes or has not said enough by `deadline`.
async fn sniff(stream: &TcpStream, deadline: Duration) -> Option<Protocol> {
    let decide = async {
        let mut buf = [0u8; PREFACE_DECIDES];
        let mut pause = Duration::from_millis(5);
        loop {
            let n = stream.peek(&mut buf).await.ok()?;
            if n == 0 {
                return None;
            }
            if buf[..n] != H2_PREFACE[..n] {
                return Some(Protocol::Http1);
            }
            if n == PREFACE_DECIDES {
                return Some(Protocol::Http2);
            }
            // One or two bytes of `PRI`: the bytes already there keep the socket readable, so
            // wait before looking again rather than spin on them, longer each time (a client
            // that sends one byte and stops costs a few peeks, not one every 5 ms).
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(200));
        }
    };
    tokio::time::timeout(deadline, decide).await.ok().flatten()
}

/// Most headers hyper parses into slots on the stack: with no `max_headers` set, its limit.
const HYPER_INLINE_HEADERS: usize = 100;

/// hyper's own header-count limit, a backstop above `server.max_header_count` so that heads
/// over ours but within it get the gateway's 431 problem+json; only heads beyond it get
/// hyper's bare 431. `None` keeps hyper's default of [`HYPER_INLINE_HEADERS`], which is at
/// least 32 above ours for limits up to 68 (the default is 64): a `max_headers` above 100
/// makes hyper allocate its header slots on the heap, two arrays for every request (the old
/// backstop of 232 for the old default of 100 cost ~580 instructions per request,
/// bench/RESULTS.md). Larger limits get twice theirs plus 32. Fixed when the listener starts.
pub(crate) fn header_count_backstop(max_header_count: usize) -> Option<usize> {
    if max_header_count.saturating_add(32) <= HYPER_INLINE_HEADERS {
        None
    } else {
        Some(max_header_count.saturating_mul(2).saturating_add(32))
    }
}

/// Serves the data plane on `listener` until `shutdown` flips, then stops accepting, lets
/// in-flight requests finish for up to `server.shutdown_grace`, and returns.
pub async fn serve(listener: TcpListener, gateway: Arc<Gateway>, mut shutdown: ShutdownSignal) {
    let server_cfg = gateway.config().server.clone();
    let builders = Arc::new(http_builders(&server_cfg));
    let drain = Drain::default();
    let tls = server_cfg.tls.is_some();
    let open = Arc::new(AtomicUsize::new(0));
    let refusals = Arc::new(Semaphore::new(MAX_REFUSALS));
    metrics::gauge!("portcullis_open_connections").set(0.0);
    loop {
        tokio::select! {
            biased;
            _ = shutdown.changed() => break,
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // Out of file descriptors and the like: back off instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let Some(slot) = ConnectionSlot::take(&open, gateway.config().server.max_connections) else {
                    metrics::counter!("portcullis_shed_total", "reason" => "connections").increment(1);
                    tracing::debug!(%peer, "connection cap reached; refusing");
                    if let (false, Ok(permit)) = (tls, refusals.clone().try_acquire_owned()) {
                        tokio::spawn(async move {
                            refuse(stream).await;
                            drop(permit);
                        });
                    }
                    continue;
                };
                let _ = stream.set_nodelay(true);
                let registration = drain.register();
                let gateway = gateway.clone();
                let builders = builders.clone();
                // Read per connection, so a reload changes them for new connections.
                let (head_timeout, send_timeout) = {
                    let server = &gateway.config().server;
                    (server.header_read_timeout, server.send_timeout)
                };
                tokio::spawn(async move {
                    let _slot = slot;
                    let service = |cert: Option<Arc<portcullis_core::ClientCert>>, streams: Option<Arc<Streams>>| {
                        // What a request clones is this connection's own reference count,
                        // not the process-wide `Arc<Gateway>`'s that every request shares.
                        let serving = Arc::new((gateway.clone(), Arc::new(Connection::new(peer, tls, cert))));
                        service_fn(move |req| {
                            // HTTP/2: the request counts as running until its response body
                            // is done or dropped.
                            let running = streams.as_ref().map(Streams::enter);
                            let serving = serving.clone();
                            async move {
                                let res = serving.0.handle(req, &serving.1).await;
                                Ok::<_, Infallible>(match running {
                                    Some(guard) => res.map(|b| Guarded::new(b, guard).boxed_unsync()),
                                    None => res,
                                })
                            }
                        })
                    };
                    // HTTP/1 with the connection's own header-read timer: one tokio sleep moved
                    // from request to request (head_timer.rs), not one registered per request.
                    // HTTP/2 closed once idle for a whole header_read_timeout.
                    macro_rules! serve_as {
                        ($protocol:expr, $io:expr, $cert:expr, $written:expr) => {
                            match $protocol {
                                Protocol::Http1 => {
                                    let mut h1 = builders.h1.clone();
                                    h1.timer(HeadTimer::default()).header_read_timeout(head_timeout);
                                    registration.watch(h1.serve_connection($io, service($cert, None))).await
                                }
                                Protocol::Http2 => {
                                    let idle = Idle::new(head_timeout, send_timeout, $written);
                                    let streams = Some(idle.streams());
                                    registration.watch_idle(builders.h2.serve_connection($io, service($cert, streams)), idle).await
                                }
                            }
                        };
                    }
                    let result = if tls {
                        let Some(config) = gateway.tls_config() else { return };
                        let acceptor = tokio_rustls::TlsAcceptor::from(config);
                        // The protocol is known only after the handshake: count the bytes
                        // written until then, and from then on for HTTP/2 only.
                        let written = Arc::new(AtomicU64::new(0));
                        let stream = SendDeadline::counting(stream, send_timeout, written.clone());
                        let mut stream = match tokio::time::timeout(head_timeout, acceptor.accept(stream)).await {
                            Ok(Ok(s)) => s,
                            Ok(Err(e)) => {
                                tracing::debug!(%peer, error = %e, "TLS handshake failed");
                                return;
                            }
                            Err(_) => {
                                tracing::debug!(%peer, "TLS handshake timed out");
                                return;
                            }
                        };
                        let protocol = match stream.get_ref().1.alpn_protocol() {
                            Some(b"h2") => Protocol::Http2,
                            _ => Protocol::Http1,
                        };
                        if protocol == Protocol::Http1 {
                            stream.get_mut().0.stop_counting();
                        }
                        let cert = crate::tls::client_cert(stream.get_ref().1);
                        serve_as!(protocol, TokioIo::new(stream), cert, written)
                    } else {
                        let Some(protocol) = sniff(&stream, head_timeout).await else {
                            tracing::debug!(%peer, "no request within header_read_timeout; closing");
                            return;
                        };
                        let written = Arc::new(AtomicU64::new(0));
                        let stream = match protocol {
                            Protocol::Http1 => SendDeadline::new(stream, send_timeout),
                            Protocol::Http2 => SendDeadline::counting(stream, send_timeout, written.clone()),
                        };
                        serve_as!(protocol, TokioIo::new(stream), None, written)
                    };
                    if let Err(e) = result {
                        tracing::debug!(%peer, error = %e, "connection ended with an error");
                    }
                });
            }
        }
    }
    drop(listener);
    gateway.set_draining();
    let open = drain.count();
    // The running configuration's grace, reloads included.
    let grace = gateway.config().server.shutdown_grace;
    tracing::info!(open_connections = open, grace = ?grace, "draining");
    match tokio::time::timeout(grace, drain.shutdown()).await {
        Ok(()) => tracing::info!("all connections drained"),
        Err(_) => {
            tracing::warn!("shutdown grace period elapsed; closing the remaining connections")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_header_count_backstop_stays_on_the_stack_while_it_leaves_room_above_ours() {
        // Up to 68, hyper's inline 100 is at least 32 above the gateway's limit.
        assert_eq!(header_count_backstop(64), None);
        assert_eq!(header_count_backstop(68), None);
        assert_eq!(header_count_backstop(1), None);
        // Above it, hyper is told a limit of its own, twice ours plus 32.
        assert_eq!(header_count_backstop(69), Some(170));
        assert_eq!(header_count_backstop(100), Some(232));
        assert_eq!(header_count_backstop(10_000), Some(20_032));
    }
}
