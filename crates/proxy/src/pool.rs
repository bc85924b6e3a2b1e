//! Pooled HTTP/1.1 connections to one plain-HTTP upstream.
//!
//! Plain-HTTP upstreams (the usual case for services next to the gateway) go through this
//! pool instead of hyper-util's legacy client; HTTPS upstreams, which may negotiate HTTP/2,
//! stay on that client. The reason is measured (ARCHITECTURE.md, Decisions, "Plain-HTTP
//! upstreams have their own small HTTP/1.1 pool"; bench/RESULTS.md, "Fifth run"):
//! the legacy client hashes its pool key with SipHash twice per request, moves a large
//! future around, and spawns a task per request to watch the connection become idle again.
//! Here the route holds its pool directly, a connection goes back to the pool when the
//! response body ends, and a task is spawned only in the rare case that the connection is
//! not yet ready for another request at that moment.
//!
//! What it keeps from the legacy client: hyper-util's `HttpConnector` (DNS, connect timeout,
//! `TCP_NODELAY`, keep-alive), at most `max_idle` idle connections per upstream, idle ones
//! closed after `idle_timeout`, and a request that was never written on a reused connection
//! (the upstream closed it while it was idle) sent again on the next idle connection or a new
//! one; never a request that may have been written.

use http::{HeaderValue, Request, Response, Uri};
use http_body::{Body as HttpBody, Frame, SizeHint};
use hyper::{body::Incoming, client::conn::http1};
use hyper_util::client::legacy::connect::HttpConnector;
use portcullis_core::{Body, BoxError};
use std::{
    collections::VecDeque,
    pin::Pin,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex, Weak,
    },
    task::{Context, Poll},
    time::Duration,
};
use tokio::time::Instant;
use tower::Service;

/// Why a request could not be sent.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SendError {
    /// No connection could be opened (refused, unreachable, timed out, DNS).
    #[error("connecting to the upstream failed")]
    Connect(#[source] BoxError),
    /// The exchange itself failed: the request body, the connection, the response head.
    #[error("upstream exchange failed")]
    Http(#[source] hyper::Error),
}

struct Idle {
    conn: http1::SendRequest<Body>,
    since: Instant,
}

/// Idle HTTP/1.1 connections to one upstream `host:port`, most recently used last.
pub(crate) struct Http1Pool {
    /// `http://host:port/`: what the connector is asked to connect to.
    target: Uri,
    /// The `Host` a request without one gets: the host, and the port unless it is 80.
    host: HeaderValue,
    /// `host:port`, the `upstream` label of the pool's metrics.
    label: metrics::SharedString,
    connector: HttpConnector,
    idle: Mutex<VecDeque<Idle>>,
    max_idle: usize,
    idle_timeout: Duration,
    sweeping: AtomicBool,
}

impl Http1Pool {
    /// A pool for `authority`. `connector` carries the connect settings.
    pub(crate) fn new(
        authority: &http::uri::Authority,
        connector: HttpConnector,
        max_idle: usize,
        idle_timeout: Duration,
    ) -> Result<Arc<Self>, http::Error> {
        let target = Uri::builder()
            .scheme(http::uri::Scheme::HTTP)
            .authority(authority.clone())
            .path_and_query("/")
            .build()?;
        // What hyper-util puts in `Host`: the port only when it is not the default.
        let host = match authority.port_u16() {
            Some(port) if port != 80 => {
                HeaderValue::try_from(format!("{}:{port}", authority.host()))?
            }
            _ => HeaderValue::try_from(authority.host())?,
        };
        Ok(Arc::new(Http1Pool {
            target,
            host,
            label: metrics::SharedString::from(authority.to_string()),
            connector,
            idle: Mutex::new(VecDeque::new()),
            max_idle,
            idle_timeout,
            sweeping: AtomicBool::new(false),
        }))
    }

    /// The `Host` a request without one gets.
    pub(crate) fn host(&self) -> &HeaderValue {
        &self.host
    }

    /// Sends `req` (origin-form URI) on an idle connection or a new one; without a `Host`
    /// header it gets the upstream's. The response body hands the connection back when it
    /// ends.
    pub(crate) async fn send(
        self: &Arc<Self>,
        mut req: Request<Body>,
    ) -> Result<Response<Body>, SendError> {
        if !req.headers().contains_key(http::header::HOST) {
            req.headers_mut()
                .insert(http::header::HOST, self.host.clone());
        }
        loop {
            let (mut conn, reused) = match self.take() {
                Some(conn) => (conn, true),
                None => (self.connect().await?, false),
            };
            match conn.try_send_request(req).await {
                Ok(res) => return Ok(self.attach(res, conn)),
                Err(mut e) => match e.take_message() {
                    // Never written: the connection closed while idle. Safe to send again,
                    // whatever the method, and only on reused connections, so this ends.
                    Some(unsent) if reused => req = unsent,
                    _ => return Err(SendError::Http(e.into_error())),
                },
            }
        }
    }

    fn take(&self) -> Option<http1::SendRequest<Body>> {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        while let Some(entry) = idle.pop_back() {
            if !entry.conn.is_closed() {
                return Some(entry.conn);
            }
        }
        None
    }

    async fn connect(self: &Arc<Self>) -> Result<http1::SendRequest<Body>, SendError> {
        let io = self
            .connector
            .clone()
            .call(self.target.clone())
            .await
            .map_err(|e| SendError::Connect(Box::new(e)))?;
        let (conn, driver) = http1::Builder::new()
            .handshake(io)
            .await
            .map_err(SendError::Http)?;
        // Connections opened, per upstream: under steady load this stays flat; a climbing
        // count means connections are not being reused (an upstream closing them, say).
        metrics::counter!("portcullis_upstream_connections_opened_total", "upstream" => self.label.clone())
            .increment(1);
        tokio::spawn(async move {
            if let Err(e) = driver.await {
                tracing::debug!(error = %e, "upstream connection ended with an error");
            }
        });
        self.start_sweeper();
        Ok(conn)
    }

    /// Wraps the response body so that its end returns `conn` to the pool. A body that is
    /// already complete returns it at once.
    fn attach(
        self: &Arc<Self>,
        res: Response<Incoming>,
        conn: http1::SendRequest<Body>,
    ) -> Response<Body> {
        use http_body_util::BodyExt;
        let (parts, body) = res.into_parts();
        if body.is_end_stream() {
            self.put(conn);
            return Response::from_parts(parts, body.map_err(BoxError::from).boxed_unsync());
        }
        let body = Returning {
            inner: body,
            conn: Some(conn),
            pool: Arc::downgrade(self),
        };
        Response::from_parts(parts, body.boxed_unsync())
    }

    /// Keeps `conn` for the next request, once it is ready for one.
    fn put(self: &Arc<Self>, conn: http1::SendRequest<Body>) {
        if conn.is_ready() {
            self.store(conn);
        } else if !conn.is_closed() {
            // Still finishing this exchange (the request body is still being written, or the
            // connection task has not yet seen the end of the response): wait for it off the
            // request path. A connection that closes instead is dropped.
            let pool = Arc::downgrade(self);
            let mut conn = conn;
            tokio::spawn(async move {
                if conn.ready().await.is_ok() {
                    if let Some(pool) = pool.upgrade() {
                        pool.store(conn);
                    }
                }
            });
        }
    }

    fn store(&self, conn: http1::SendRequest<Body>) {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        if idle.len() >= self.max_idle {
            // Dropping the handle closes the oldest idle connection.
            idle.pop_front();
        }
        idle.push_back(Idle {
            conn,
            since: Instant::now(),
        });
    }

    /// Closes idle connections older than `idle_timeout` (and forgets closed ones), every
    /// quarter of it, for as long as the pool exists.
    fn start_sweeper(self: &Arc<Self>) {
        if self.sweeping.swap(true, Ordering::Relaxed) {
            return;
        }
        let pool: Weak<Self> = Arc::downgrade(self);
        let every = (self.idle_timeout / 4).max(Duration::from_millis(10));
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let Some(pool) = pool.upgrade() else { return };
                pool.sweep();
            }
        });
    }

    fn sweep(&self) {
        let cutoff = self.idle_timeout;
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        idle.retain(|e| !e.conn.is_closed() && e.since.elapsed() < cutoff);
    }

    /// Idle connections held now (for tests).
    #[cfg(test)]
    pub(crate) fn idle_count(&self) -> usize {
        self.idle.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

pin_project_lite::pin_project! {
    /// A response body that returns its connection to the pool when it ends. Dropped before
    /// the end, it drops the connection instead: hyper then closes it, since the rest of the
    /// response would still be on the wire.
    struct Returning {
        #[pin]
        inner: Incoming,
        conn: Option<http1::SendRequest<Body>>,
        pool: Weak<Http1Pool>,
    }
}

impl HttpBody for Returning {
    type Data = bytes::Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<bytes::Bytes>, BoxError>>> {
        let mut this = self.project();
        match this.inner.as_mut().poll_frame(cx) {
            Poll::Ready(None) => {
                if let (Some(conn), Some(pool)) = (this.conn.take(), this.pool.upgrade()) {
                    pool.put(conn);
                }
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(e))) => {
                this.conn.take();
                Poll::Ready(Some(Err(Box::new(e))))
            }
            Poll::Ready(Some(Ok(frame))) => {
                // hyper's server stops polling a body that says it has ended, and after a
                // trailers frame (always the last one in HTTP/1), so the last frame may be
                // the last call: give the connection back here too.
                if frame.is_trailers() || this.inner.is_end_stream() {
                    if let (Some(conn), Some(pool)) = (this.conn.take(), this.pool.upgrade()) {
                        pool.put(conn);
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Pending => Poll::Pending,
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
    use bytes::Bytes;
    use http_body_util::{BodyExt, Empty, Full, StreamBody};
    use hyper::service::service_fn;
    use hyper_util::rt::TokioIo;
    use std::{
        convert::Infallible,
        net::SocketAddr,
        sync::atomic::{AtomicUsize, Ordering::SeqCst},
    };
    use tokio::{
        io::{AsyncReadExt, AsyncWriteExt},
        net::TcpListener,
    };

    /// Connections an upstream accepted and saw end.
    #[derive(Default)]
    struct Seen {
        accepted: AtomicUsize,
        ended: AtomicUsize,
    }

    /// A hyper upstream answering "ok"; with `close`, every answer says `Connection: close`.
    async fn upstream(close: bool) -> (SocketAddr, Arc<Seen>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let seen = Arc::new(Seen::default());
        let counts = seen.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                counts.accepted.fetch_add(1, SeqCst);
                let counts = counts.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |_req| async move {
                        let mut res = Response::new(Full::new(Bytes::from_static(b"ok")));
                        if close {
                            res.headers_mut()
                                .insert(http::header::CONNECTION, "close".parse().expect("v"));
                        }
                        Ok::<_, Infallible>(res)
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                    counts.ended.fetch_add(1, SeqCst);
                });
            }
        });
        (addr, seen)
    }

    /// A raw HTTP/1.1 upstream that answers every request head with `answer`; with `close`,
    /// it closes the connection after one answer without saying so. Counts connections.
    async fn raw_upstream(answer: &'static [u8], close: bool) -> (SocketAddr, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                count.fetch_add(1, SeqCst);
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 4096];
                    loop {
                        let mut got = Vec::new();
                        while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                            match s.read(&mut buf).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => got.extend_from_slice(&buf[..n]),
                            }
                        }
                        if s.write_all(answer).await.is_err() || close {
                            // Dropping the socket closes it.
                            return;
                        }
                    }
                });
            }
        });
        (addr, accepted)
    }

    fn pool_for(addr: SocketAddr, max_idle: usize, idle_timeout: Duration) -> Arc<Http1Pool> {
        let authority: http::uri::Authority = addr.to_string().parse().expect("authority");
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(Duration::from_secs(2)));
        Http1Pool::new(&authority, connector, max_idle, idle_timeout).expect("pool")
    }

    fn get(addr: SocketAddr) -> Request<Body> {
        Request::builder()
            .uri("/x")
            .header(http::header::HOST, addr.to_string())
            .body(Empty::new().map_err(BoxError::from).boxed_unsync())
            .expect("request")
    }

    async fn body_text(res: Response<Body>) -> String {
        let bytes = res.into_body().collect().await.expect("body").to_bytes();
        String::from_utf8(bytes.to_vec()).expect("utf8")
    }

    /// Waits (at most 5 s, a hang guard, not a timing claim) until `cond` holds.
    async fn eventually(mut cond: impl FnMut() -> bool) -> bool {
        for _ in 0..500 {
            if cond() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        cond()
    }

    #[tokio::test]
    async fn sequential_requests_share_one_connection() {
        let (addr, seen) = upstream(false).await;
        let pool = pool_for(addr, 8, Duration::from_secs(60));
        for _ in 0..5 {
            let res = pool.send(get(addr)).await.expect("send");
            assert_eq!(body_text(res).await, "ok");
            // The connection is back once its exchange has settled.
            assert!(eventually(|| pool.idle_count() == 1).await);
        }
        assert_eq!(seen.accepted.load(SeqCst), 1);
    }

    #[tokio::test]
    async fn a_connection_the_upstream_closes_is_not_reused() {
        let (addr, seen) = upstream(true).await;
        let pool = pool_for(addr, 8, Duration::from_secs(60));
        for _ in 0..3 {
            let res = pool.send(get(addr)).await.expect("send");
            assert_eq!(body_text(res).await, "ok");
        }
        assert_eq!(seen.accepted.load(SeqCst), 3);
        assert!(eventually(|| pool.idle_count() == 0).await);
    }

    #[tokio::test]
    async fn a_connection_closed_while_idle_is_replaced_and_the_request_still_goes_out() {
        // An upstream that answers one request per connection and then closes it without
        // saying so: the pool keeps the connection, which is dead by the next request.
        let (addr, accepted) =
            raw_upstream(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok", true).await;
        let pool = pool_for(addr, 8, Duration::from_secs(60));
        for _ in 0..4 {
            let res = pool.send(get(addr)).await.expect("send");
            assert_eq!(body_text(res).await, "ok");
        }
        assert_eq!(accepted.load(SeqCst), 4);
    }

    #[tokio::test]
    async fn idle_connections_are_closed_after_the_idle_timeout() {
        let (addr, seen) = upstream(false).await;
        let pool = pool_for(addr, 8, Duration::from_millis(100));
        let res = pool.send(get(addr)).await.expect("send");
        assert_eq!(body_text(res).await, "ok");
        assert!(eventually(|| pool.idle_count() == 1).await);
        // The sweeper drops the idle handle and hyper closes the connection.
        assert!(eventually(|| seen.ended.load(SeqCst) == 1).await);
        assert_eq!(pool.idle_count(), 0);
    }

    #[tokio::test]
    async fn no_more_than_max_idle_connections_are_kept() {
        let (addr, seen) = upstream(false).await;
        let pool = pool_for(addr, 2, Duration::from_secs(60));
        // Four exchanges in flight at once need four connections.
        let mut held = Vec::new();
        for _ in 0..4 {
            held.push(pool.send(get(addr)).await.expect("send"));
        }
        assert_eq!(seen.accepted.load(SeqCst), 4);
        for res in held {
            assert_eq!(body_text(res).await, "ok");
        }
        assert!(eventually(|| seen.ended.load(SeqCst) == 2).await);
        assert_eq!(pool.idle_count(), 2);
    }

    #[tokio::test]
    async fn a_response_dropped_before_its_end_takes_its_connection_with_it() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                count.fetch_add(1, SeqCst);
                tokio::spawn(async move {
                    // A body that sends one chunk and then never ends.
                    let svc = service_fn(|_req| async {
                        let (tx, rx) =
                            tokio::sync::mpsc::channel::<Result<Frame<Bytes>, Infallible>>(1);
                        tokio::spawn(async move {
                            let _ = tx.send(Ok(Frame::data(Bytes::from_static(b"part")))).await;
                            tx.closed().await;
                        });
                        let body = StreamBody::new(tokio_stream_from(rx));
                        Ok::<_, Infallible>(Response::new(body))
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        let pool = pool_for(addr, 8, Duration::from_secs(60));
        let mut res = pool.send(get(addr)).await.expect("send");
        let first = res.body_mut().frame().await.expect("frame").expect("ok");
        assert_eq!(
            first.into_data().expect("data"),
            Bytes::from_static(b"part")
        );
        drop(res);
        assert_eq!(pool.idle_count(), 0);
        let _second = pool.send(get(addr)).await.expect("send");
        assert_eq!(accepted.load(SeqCst), 2);
    }

    #[tokio::test]
    async fn a_response_that_ends_with_trailers_returns_its_connection() {
        // An upstream answering with a chunked body and a trailer field.
        let (addr, accepted) = raw_upstream(
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ntrailer: x-t\r\n\r\n2\r\nok\r\n0\r\nx-t: 1\r\n\r\n",
            false,
        )
        .await;
        let pool = pool_for(addr, 8, Duration::from_secs(60));
        for _ in 0..3 {
            let mut body = pool.send(get(addr)).await.expect("send").into_body();
            // Read it as hyper's server does: it stops after the trailers frame.
            loop {
                let frame = body.frame().await.expect("a frame").expect("ok");
                if frame.is_trailers() {
                    break;
                }
            }
            drop(body);
            assert!(eventually(|| pool.idle_count() == 1).await);
        }
        assert_eq!(accepted.load(SeqCst), 1);
    }

    /// An mpsc receiver as a stream, without pulling in tokio-stream.
    fn tokio_stream_from<T: Send + 'static>(
        mut rx: tokio::sync::mpsc::Receiver<T>,
    ) -> impl futures_util::Stream<Item = T> {
        futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
    }

    #[tokio::test]
    async fn a_connection_still_sending_its_request_body_is_not_handed_out() {
        // The upstream answers at once, before the request body has ended.
        let (addr, seen) = upstream(false).await;
        let pool = pool_for(addr, 8, Duration::from_secs(60));
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, BoxError>>(1);
        let slow = Request::builder()
            .method(http::Method::POST)
            .uri("/upload")
            .header(http::header::HOST, addr.to_string())
            .body(StreamBody::new(tokio_stream_from(rx)).boxed_unsync())
            .expect("request");
        tx.send(Ok(Frame::data(Bytes::from_static(b"first part"))))
            .await
            .expect("send part");
        let res = pool.send(slow).await.expect("send");
        assert_eq!(body_text(res).await, "ok");
        // The first connection is still busy with the request body: another request must
        // get a connection of its own instead of waiting behind it.
        let res = tokio::time::timeout(Duration::from_secs(5), pool.send(get(addr)))
            .await
            .expect("the second request waited for the first connection")
            .expect("send");
        assert_eq!(body_text(res).await, "ok");
        assert_eq!(seen.accepted.load(SeqCst), 2);
        // Once the first body ends, that exchange settles (the upstream may keep or close
        // the connection it answered early) and the pool keeps serving.
        drop(tx);
        assert!(eventually(|| pool.idle_count() >= 1).await);
        let res = pool.send(get(addr)).await.expect("send");
        assert_eq!(body_text(res).await, "ok");
    }

    #[test]
    fn the_host_header_names_the_port_only_when_it_is_not_the_default() {
        let host = |authority: &str| {
            let authority: http::uri::Authority = authority.parse().expect("authority");
            Http1Pool::new(&authority, HttpConnector::new(), 1, Duration::from_secs(1))
                .expect("pool")
                .host
                .clone()
        };
        assert_eq!(host("10.0.0.1:8080"), "10.0.0.1:8080");
        assert_eq!(host("svc.internal"), "svc.internal");
        assert_eq!(host("svc.internal:80"), "svc.internal");
        assert_eq!(host("[::1]:81"), "[::1]:81");
    }

    #[tokio::test]
    async fn a_refused_connection_is_a_connect_error() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        drop(listener);
        let pool = pool_for(addr, 8, Duration::from_secs(60));
        let err = pool.send(get(addr)).await.expect_err("nothing listens");
        assert!(matches!(err, SendError::Connect(_)), "{err:?}");
    }
}
