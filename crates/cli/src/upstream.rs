//! The example upstream: a tiny "orders" service for `portcullis demo` and the benchmarks.
//! Plain hyper, so that in a benchmark it is never the bottleneck.

use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::{body::Incoming, service::service_fn};
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
};
use std::{convert::Infallible, net::SocketAddr, process::ExitCode, time::Duration};
use tokio::net::TcpListener;

pub(crate) async fn run(listen: SocketAddr) -> anyhow::Result<ExitCode> {
    let listener = TcpListener::bind(listen).await?;
    println!(
        "example upstream listening on http://{}",
        listener.local_addr()?
    );
    serve(listener).await;
    Ok(ExitCode::SUCCESS)
}

/// Serves the example upstream on `listener` until the task is dropped.
pub(crate) async fn serve(listener: TcpListener) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        };
        let _ = stream.set_nodelay(true);
        tokio::spawn(async move {
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service_fn(handle))
                .await;
        });
    }
}

fn reply(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<Full<Bytes>> {
    let mut res = Response::new(Full::new(body.into()));
    *res.status_mut() = status;
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static(content_type),
    );
    res
}

async fn handle(req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let path = req.uri().path().to_string();
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let res = match (req.method(), segments.as_slice()) {
        (&Method::GET, ["orders", id]) => {
            let id: String = id
                .chars()
                .filter(|c| c.is_ascii_alphanumeric())
                .take(32)
                .collect();
            reply(
                StatusCode::OK,
                "application/json",
                format!("{{\"id\":\"{id}\",\"status\":\"shipped\",\"total_cents\":4200,\"internal_notes\":\"VIP customer\"}}\n"),
            )
        }
        (&Method::POST, ["orders"]) => match Limited::new(req.into_body(), 1 << 20).collect().await
        {
            Ok(body) => reply(
                StatusCode::CREATED,
                "application/json",
                format!(
                    "{{\"created\":true,\"received_bytes\":{}}}\n",
                    body.to_bytes().len()
                ),
            ),
            Err(_) => reply(StatusCode::BAD_REQUEST, "text/plain", "bad body\n"),
        },
        (&Method::GET, ["export"]) => reply(StatusCode::OK, "text/csv", "id,status\n42,shipped\n"),
        (&Method::GET, ["slow"]) => {
            tokio::time::sleep(Duration::from_secs(3)).await;
            reply(StatusCode::OK, "text/plain", "finally\n")
        }
        _ => reply(StatusCode::OK, "text/plain", "ok\n"),
    };
    Ok(res)
}
