//! Load shedding and slow-client protection through the real gateway: the per-route
//! concurrency limit, the connection cap and the minimum request-body rate.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use bytes::Bytes;
use common::{assert_problem, client, route, server_section, upstream, Gw};
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use std::time::{Duration, Instant};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
    task::JoinHandle,
};

async fn metrics(gw: &Gw) -> String {
    gw.metrics().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_route_sheds_at_once_and_admits_again_when_requests_finish() {
    let up = upstream::start(None).await;
    let cfg = format!(
        "{}{}{}",
        server_section(""),
        route(
            "held",
            "[\"GET\"]",
            "/hold/{*rest}",
            &up.url(),
            "max_concurrent = 2"
        ),
        route("other", "[\"GET\"]", "/other", &up.url(), ""),
    );
    let gw = Gw::start(&cfg);
    let c = client();

    // Two requests in flight, held by the upstream until the test lets them go.
    let first_two: Vec<_> = (0..2)
        .map(|i| {
            let (c, url) = (c.clone(), gw.url(&format!("/hold/{i}")));
            tokio::spawn(async move {
                let res = c.get(url).send().await.unwrap();
                (res.status().as_u16(), res.text().await.unwrap())
            })
        })
        .collect();
    up.wait_arrivals(2).await;

    // The third is refused at once, without waiting for a slot.
    let res = c.get(gw.url("/hold/2")).send().await.unwrap();
    assert_eq!(res.headers()["retry-after"], "1");
    assert_problem(res, 503, "overloaded").await;
    // Other routes are not affected.
    assert_eq!(c.get(gw.url("/other")).send().await.unwrap().status(), 200);

    up.release(2);
    for t in first_two {
        let (status, body) = t.await.unwrap();
        assert_eq!(status, 200, "{body}");
    }

    // Both finished: the route admits again.
    up.release(1);
    let res = c.get(gw.url("/hold/3")).send().await.unwrap();
    assert_eq!(res.status(), 200);

    let m = metrics(&gw).await;
    assert!(
        m.lines().any(|l| l.starts_with("portcullis_shed_total{")
            && l.contains("reason=\"route_concurrency\"")
            && l.contains("route=\"held\"")),
        "{m}"
    );
}

/// An HTTP/1.1 keep-alive connection to the gateway.
async fn connect(gw: &Gw) -> (SendRequest<Empty<Bytes>>, JoinHandle<()>) {
    let stream = TcpStream::connect(gw.data).await.unwrap();
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    let task = tokio::spawn(async move {
        let _ = conn.await;
    });
    (sender, task)
}

async fn get(
    sender: &mut SendRequest<Empty<Bytes>>,
    path: &str,
) -> (http::StatusCode, http::HeaderMap, Bytes) {
    sender.ready().await.unwrap();
    let req = http::Request::get(path)
        .header("host", "gateway.test")
        .body(Empty::new())
        .unwrap();
    let res = tokio::time::timeout(Duration::from_secs(20), sender.send_request(req))
        .await
        .expect("no answer")
        .unwrap();
    let (parts, body) = res.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    (parts.status, parts.headers, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_the_cap_get_one_503_and_are_closed() {
    let up = upstream::start(None).await;
    let cfg = format!(
        "{}{}",
        server_section("max_connections = 2"),
        route("ok", "[\"GET\"]", "/ok", &up.url(), ""),
    );
    let gw = Gw::start(&cfg);

    let (mut a, a_task) = connect(&gw).await;
    assert_eq!(get(&mut a, "/ok").await.0, 200);
    let (mut b, _b_task) = connect(&gw).await;
    assert_eq!(get(&mut b, "/ok").await.0, 200);

    // The third connection is accepted, told why, and closed.
    let (mut c, c_task) = connect(&gw).await;
    let (status, headers, body) = get(&mut c, "/ok").await;
    assert_eq!(status, 503);
    assert_eq!(headers["connection"], "close");
    assert_eq!(headers["retry-after"], "1");
    assert_eq!(headers["content-type"], "application/problem+json");
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["type"], "urn:portcullis:problem:overloaded");
    tokio::time::timeout(Duration::from_secs(20), c_task)
        .await
        .expect("the over-cap connection was not closed")
        .unwrap();

    // Connections already open keep working.
    assert_eq!(get(&mut a, "/ok").await.0, 200);
    assert_eq!(get(&mut b, "/ok").await.0, 200);

    // Closing one makes room. The gateway notices the close on its own schedule, so retry
    // (bounded) until the new connection is admitted.
    drop(a);
    a_task.await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (mut d, _d_task) = connect(&gw).await;
        let (status, _, _) = get(&mut d, "/ok").await;
        if status == 200 {
            break;
        }
        assert_eq!(status, 503);
        assert!(
            Instant::now() < deadline,
            "no room after a connection closed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let m = metrics(&gw).await;
    assert!(
        m.lines().any(
            |l| l.starts_with("portcullis_shed_total{") && l.contains("reason=\"connections\"")
        ),
        "{m}"
    );
    assert!(
        m.lines()
            .any(|l| l.starts_with("portcullis_open_connections ")),
        "{m}"
    );
}

/// Sends a request head declaring `Content-Length: 10000`, then only `partial`, and returns
/// what the gateway answers (bounded by a generous timeout so a regression fails, not hangs).
async fn trickle(gw: &Gw, path: &str, partial: &[u8]) -> String {
    let mut s = TcpStream::connect(gw.data).await.unwrap();
    let head = format!(
        "POST {path} HTTP/1.1\r\nhost: gateway.test\r\ncontent-type: application/json\r\ncontent-length: 10000\r\n\r\n"
    );
    s.write_all(head.as_bytes()).await.unwrap();
    s.write_all(partial).await.unwrap();
    until_closed(&mut s).await.0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_below_the_minimum_rate_gets_408_and_normal_uploads_pass() {
    let up = upstream::start(None).await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("any.json"),
        r#"{"$schema":"https://json-schema.org/draft/2020-12/schema","type":"object"}"#,
    )
    .unwrap();
    let cfg = format!(
        "{}{}{}",
        server_section("min_body_rate = \"1MiB\"\nbody_rate_grace = \"2s\""),
        // Streamed to the upstream.
        route("upload", "[\"POST\"]", "/upload", &up.url(), ""),
        // Read whole by a policy first (schema validation).
        route(
            "orders",
            "[\"POST\"]",
            "/orders",
            &up.url(),
            "request_schema = \"any.json\""
        ),
    );
    std::fs::write(dir.path().join("portcullis.toml"), cfg).unwrap();
    let gw = Gw::start_in(dir);

    for path in ["/upload", "/orders"] {
        let answer = trickle(&gw, path, b"{\"a\":").await;
        assert!(answer.starts_with("HTTP/1.1 408"), "{path}: {answer}");
        let lower = answer.to_ascii_lowercase();
        assert!(lower.contains("connection: close"), "{path}: {answer}");
        assert!(
            answer.contains("urn:portcullis:problem:request-timeout"),
            "{path}: {answer}"
        );
    }

    // Ordinary clients are not affected.
    let c = client();
    let res = c
        .post(gw.url("/upload"))
        .body(vec![b'x'; 200_000])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let v: serde_json::Value = res.json().await.unwrap();
    assert_eq!(v["body_len"], 200_000);
    let res = c
        .post(gw.url("/orders"))
        .header("content-type", "application/json")
        .body(r#"{"sku":"a1"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(
        c.get(gw.url("/missing")).send().await.unwrap().status(),
        404
    );
}

/// Reads until the gateway closes the connection (or 30 s pass, so a regression fails
/// instead of hanging) and returns what it sent and how long that took.
async fn until_closed(s: &mut TcpStream) -> (String, Duration) {
    let started = Instant::now();
    let mut got = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(30), async {
        let mut buf = [0u8; 4096];
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    assert!(
        read.is_ok(),
        "the gateway kept waiting for the rest of the request"
    );
    (
        String::from_utf8_lossy(&got).into_owned(),
        started.elapsed(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_head_not_finished_in_time_ends_the_connection_and_busy_keep_alive_is_not_cut() {
    let up = upstream::start(None).await;
    let cfg = format!(
        "{}{}",
        server_section("header_read_timeout = \"1s\""),
        route("items", "[\"GET\"]", "/items/{id}", &up.url(), ""),
    );
    let gw = Gw::start(&cfg);

    // Slowloris: half a head, then silence. The gateway hangs up once the timeout passes.
    let mut s = TcpStream::connect(gw.data).await.unwrap();
    s.write_all(b"GET /items/1 HTTP/1.1\r\nhost: gateway.test\r\nx-slow: ")
        .await
        .unwrap();
    let (answer, waited) = until_closed(&mut s).await;
    assert!(!answer.contains("200 OK"), "{answer}");
    assert!(
        waited >= Duration::from_millis(900),
        "closed after {waited:?}"
    );

    // The same after a first request on the connection: the timer restarts per head, and a
    // head that stalls later is cut too.
    let mut s = TcpStream::connect(gw.data).await.unwrap();
    s.write_all(b"GET /items/1 HTTP/1.1\r\nhost: gateway.test\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 4096];
    let n = s.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    s.write_all(b"GET /items/2 HTTP/1.1\r\n").await.unwrap();
    let (answer, _) = until_closed(&mut s).await;
    assert!(!answer.contains("200 OK"), "{answer}");

    // One keep-alive connection kept busy for more than twice the timeout (25 requests, 100
    // ms apart) is served throughout: each head has its own deadline.
    let (mut send, conn) = connect(&gw).await;
    for i in 0..25 {
        let (status, _, _) = get(&mut send, "/items/7").await;
        assert_eq!(status, 200, "request {i}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(!conn.is_finished(), "the busy connection was closed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_that_never_start_a_request_are_closed_and_free_their_slots() {
    let up = upstream::start(None).await;
    let cfg = format!(
        "{}{}",
        server_section("header_read_timeout = \"1s\"\nmax_connections = 3"),
        route("items", "[\"GET\"]", "/items/{id}", &up.url(), ""),
    );
    let gw = Gw::start(&cfg);

    // Three sockets fill the cap without a byte of HTTP: one silent, one with half of
    // HTTP/2's preface, one with the whole preface and SETTINGS but never a stream. Each
    // used to hold its slot for ever (hyper-util's protocol detection had no deadline, and
    // HTTP/2 has no idle timeout of its own), so the cap shut every other client out.
    let mut silent = TcpStream::connect(gw.data).await.unwrap();
    let mut half = TcpStream::connect(gw.data).await.unwrap();
    half.write_all(b"PRI * HTTP/2.0\r\n").await.unwrap();
    let mut idle_h2 = TcpStream::connect(gw.data).await.unwrap();
    idle_h2
        .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .await
        .unwrap();
    let (said, _) = until_closed(&mut silent).await;
    assert!(said.is_empty(), "{said}");
    until_closed(&mut half).await;
    // The idle HTTP/2 connection is told to go away (a GOAWAY frame, type 7), then closed.
    let mut raw = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(30), idle_h2.read_to_end(&mut raw)).await;
    assert!(read.is_ok(), "the idle HTTP/2 connection stayed open");
    let mut frame_types = Vec::new();
    let mut at = 0;
    while at + 9 <= raw.len() {
        let len =
            usize::from(raw[at]) << 16 | usize::from(raw[at + 1]) << 8 | usize::from(raw[at + 2]);
        frame_types.push(raw[at + 3]);
        at += 9 + len;
    }
    assert!(frame_types.contains(&0x07), "frames {frame_types:?}");

    // The slots are free again: a real client is served.
    let res = client().get(gw.url("/items/1")).send().await.unwrap();
    assert_eq!(res.status(), 200);

    // HTTP/2 connections that do make requests stay open between them within the timeout.
    let h2 = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    for _ in 0..3 {
        let res = h2.get(gw.url("/items/2")).send().await.unwrap();
        assert_eq!(res.version(), reqwest::Version::HTTP_2);
        assert_eq!(res.status(), 200);
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// Whether a request to the `max_concurrent = 1` route `/big/{n}` is served within 20 s,
/// once what held its slot has been let go.
async fn slot_freed(gw: &Gw) -> bool {
    let c = client();
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(20) {
        if c.get(gw.url("/big/10")).send().await.unwrap().status() == 200 {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    false
}

/// A GET over a fresh HTTP/2 connection whose client grants `window` bytes of flow control
/// (per stream and for the connection), opened again only as the body is read.
async fn h2_get(
    gw: &Gw,
    path: &str,
    window: u32,
) -> (http::Response<hyper::body::Incoming>, JoinHandle<()>) {
    let stream = TcpStream::connect(gw.data).await.unwrap();
    let mut builder =
        hyper::client::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new());
    builder.initial_stream_window_size(window);
    if window > 0 {
        builder.initial_connection_window_size(window);
    }
    let (mut sender, conn) = builder
        .handshake::<_, Empty<Bytes>>(TokioIo::new(stream))
        .await
        .unwrap();
    let conn = tokio::spawn(async move {
        let _ = conn.await;
    });
    let req = http::Request::get(format!("http://{}{path}", gw.data))
        .body(Empty::new())
        .unwrap();
    (sender.send_request(req).await.unwrap(), conn)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_loses_its_connection_and_slot_after_send_timeout() {
    let up = upstream::start(None).await;
    let cfg = format!(
        "{}{}",
        server_section("send_timeout = \"1s\""),
        route(
            "big",
            "[\"GET\"]",
            "/big/{n}",
            &up.url(),
            "max_concurrent = 1\ntimeout = \"60s\""
        ),
    );
    let gw = Gw::start(&cfg);
    // 20 MB asked for and never read: the socket buffers fill, the gateway's write waits,
    // and the response body (with the route's one slot) used to be held for as long as the
    // client kept the socket open.
    let mut stalled = TcpStream::connect(gw.data).await.unwrap();
    stalled
        .write_all(b"GET /big/20000000 HTTP/1.1\r\nhost: gateway.test\r\n\r\n")
        .await
        .unwrap();
    let arrived =
        tokio::time::timeout(Duration::from_secs(10), up.arrivals.lock().await.recv()).await;
    assert_eq!(arrived.unwrap().as_deref(), Some("/big/20000000"));
    assert!(
        slot_freed(&gw).await,
        "the stalled download still holds the route's only slot"
    );
    let m = metrics(&gw).await;
    assert!(m.contains("portcullis_shed_total"), "{m}");
    drop(stalled);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_client_that_never_opens_its_window_loses_the_connection_after_send_timeout() {
    let up = upstream::start(None).await;
    let cfg = format!(
        "{}{}",
        server_section("send_timeout = \"1s\"\nheader_read_timeout = \"1s\""),
        route(
            "big",
            "[\"GET\"]",
            "/big/{n}",
            &up.url(),
            "max_concurrent = 1\ntimeout = \"60s\""
        ),
    );
    let gw = Gw::start(&cfg);
    // An HTTP/2 client that grants no flow-control window: the gateway can send the head but
    // not a byte of the body, its socket stays writable, and the stream (with the route's one
    // slot) used to wait for as long as the connection lived.
    let (res, conn) = h2_get(&gw, "/big/100000", 0).await;
    assert_eq!(res.status(), 200);
    // The body is kept and never read.
    let _held = res.into_body();
    assert!(
        slot_freed(&gw).await,
        "the zero-window stream still holds the route's only slot"
    );
    conn.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_download_read_slowly_but_steadily_is_not_cut() {
    let up = upstream::start(None).await;
    let cfg = format!(
        "{}{}",
        server_section("send_timeout = \"2s\"\nheader_read_timeout = \"1s\""),
        route(
            "big",
            "[\"GET\"]",
            "/big/{n}",
            &up.url(),
            "timeout = \"60s\""
        ),
    );
    let gw = Gw::start(&cfg);
    // 16 KiB of window, opened again only as the client takes each frame, one every 300 ms:
    // the 256 KiB body takes several seconds, at over 8 KiB/s, the least a stream must take
    // (one 16 KiB piece per send_timeout). hyper draws a response body one buffered chunk at a
    // time (the whole 256 KiB here), so a watch that judged by the upstream's chunks cut such
    // readers.
    let (res, conn) = h2_get(&gw, "/big/262144", 16 * 1024).await;
    assert_eq!(res.status(), 200);
    let mut body = res.into_body();
    let mut got = 0usize;
    while let Some(frame) = body.frame().await {
        let frame = frame.expect("the download was cut");
        if let Some(data) = frame.data_ref() {
            got += data.len();
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert_eq!(got, 262_144);
    conn.abort();
}
