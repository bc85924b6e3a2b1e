//! The floor under the data plane: a reverse proxy with nothing but hyper (server and
//! `client::conn::http1` with a LIFO pool), tokio and jemalloc, as the gateway uses them, and
//! none of the gateway's work (no routing, policies, headers, logs or metrics). Benchmark-only:
//! `bench/cpu-per-request.sh` measures its CPU per request beside nginx and the gateway, to
//! tell how much of the gap to nginx is the gateway's own and how much is the HTTP stack's.
//!
//! Usage: `bare_hyper_proxy LISTEN UPSTREAM` (both `host:port`). Not a product: no timeouts,
//! no header hygiene, GET and small bodies only.

use http_body_util::BodyExt;
use hyper::{body::Incoming, client::conn::http1::SendRequest, Request, Response};
use hyper_util::rt::TokioIo;
use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
};
use tokio::net::{TcpListener, TcpStream};

#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

type Body = http_body_util::combinators::BoxBody<bytes::Bytes, hyper::Error>;

struct Pool {
    upstream: SocketAddr,
    host: http::HeaderValue,
    idle: Mutex<Vec<SendRequest<Body>>>,
}

impl Pool {
    async fn checkout(&self) -> anyhow::Result<SendRequest<Body>> {
        loop {
            let found = self
                .idle
                .lock()
                .map_err(|_| anyhow::anyhow!("poisoned"))?
                .pop();
            match found {
                Some(mut s) => {
                    // A connection still sending the previous response is waited for.
                    if s.ready().await.is_ok() {
                        return Ok(s);
                    }
                }
                None => break,
            }
        }
        let io = TokioIo::new(TcpStream::connect(self.upstream).await?);
        let (send, conn) = hyper::client::conn::http1::handshake(io).await?;
        tokio::spawn(conn);
        Ok(send)
    }

    fn give_back(&self, s: SendRequest<Body>) {
        if let Ok(mut idle) = self.idle.lock() {
            idle.push(s);
        }
    }
}

async fn forward(pool: Arc<Pool>, req: Request<Incoming>) -> anyhow::Result<Response<Body>> {
    let mut send = pool.checkout().await?;
    let (mut parts, body) = req.into_parts();
    parts.headers.insert(http::header::HOST, pool.host.clone());
    let res = send
        .send_request(Request::from_parts(parts, body.boxed()))
        .await?;
    pool.give_back(send);
    Ok(res.map(BodyExt::boxed))
}

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let (Some(listen), Some(upstream)) = (args.next(), args.next()) else {
        anyhow::bail!("usage: bare_hyper_proxy LISTEN UPSTREAM");
    };
    let upstream: SocketAddr = upstream.parse()?;
    let pool = Arc::new(Pool {
        upstream,
        host: http::HeaderValue::from_str(&upstream.to_string())?,
        idle: Mutex::new(Vec::new()),
    });
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(async move {
            let listener = TcpListener::bind(&listen).await?;
            loop {
                let (tcp, _) = listener.accept().await?;
                let _ = tcp.set_nodelay(true);
                let pool = pool.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| forward(pool.clone(), req));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tcp), svc)
                        .await;
                });
            }
        })
}
