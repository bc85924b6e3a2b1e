//! Real connections to local servers on loopback: refused by default, reachable through the
//! dangerous exception, and redirects re-checked hop by hop. Nothing leaves the machine.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use portcullis_egress::{
    client, find_refusal, ClientOptions, EgressError, GuardedClient, Policy, Reason, Redirects,
    Refusal, TestResolver,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

type Handler = Arc<dyn Fn(&str) -> String + Send + Sync>;

struct Server {
    addr: SocketAddr,
    hits: Arc<AtomicUsize>,
}

/// A minimal HTTP/1.1 server: one request per connection, the handler maps the path to a
/// whole response.
async fn serve(bind: &str, handler: Handler) -> Server {
    let listener = TcpListener::bind(bind).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = hits.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            counter.fetch_add(1, Ordering::SeqCst);
            let handler = handler.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 1024];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                let head = String::from_utf8_lossy(&buf);
                let path = head.split(' ').nth(1).unwrap_or("/").to_string();
                let response = handler(&path);
                let _ = stream.write_all(response.as_bytes()).await;
                let _ = stream.shutdown().await;
            });
        }
    });
    Server { addr, hits }
}

fn ok(body: &str) -> String {
    format!(
        "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
}

fn redirect(location: &str) -> String {
    format!("HTTP/1.1 302 Found\r\nlocation: {location}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
}

fn loopback_allowed() -> Policy {
    Policy {
        allow_cidrs: vec!["127.0.0.1/32".parse().unwrap()],
        ..Policy::default()
    }
}

fn lookup(table: TestResolver) -> Arc<TestResolver> {
    Arc::new(table)
}

async fn get(c: &GuardedClient, url: &str) -> Result<reqwest::Response, EgressError> {
    let req = c.inner().get(url).build().unwrap();
    c.execute(req).await
}

fn refusal(r: Result<reqwest::Response, EgressError>) -> Refusal {
    match r {
        Err(EgressError::Refused(r)) => r,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[tokio::test]
async fn loopback_refused_by_default_and_reachable_by_exception() {
    let server = serve("127.0.0.1:0", Arc::new(|_| ok("hello"))).await;
    let port = server.addr.port();
    let table = TestResolver::new().with("upstream.test", [server.addr.ip()]);

    // Default policy: the literal is refused before sending, the name by the resolver.
    let guarded = GuardedClient::new(
        Arc::new(Policy::default()),
        lookup(table.clone()),
        &ClientOptions::default(),
    )
    .unwrap();
    let r = refusal(get(&guarded, &format!("http://127.0.0.1:{port}/")).await);
    assert!(
        matches!(
            r,
            Refusal::Address {
                reason: Reason::Loopback,
                ..
            }
        ),
        "{r:?}"
    );
    let r = refusal(get(&guarded, &format!("http://upstream.test:{port}/")).await);
    assert!(
        matches!(
            r,
            Refusal::ResolvedAddress {
                reason: Reason::Loopback,
                ..
            }
        ),
        "{r:?}"
    );

    // The bare reqwest client (no pre-flight check) is refused by its resolver alone, and the
    // refusal can be found in reqwest's error chain.
    let bare = client(
        Arc::new(Policy::default()),
        lookup(table.clone()),
        &ClientOptions::default(),
    )
    .unwrap();
    let err = bare
        .get(format!("http://upstream.test:{port}/"))
        .send()
        .await
        .unwrap_err();
    assert!(matches!(
        find_refusal(&err),
        Some(Refusal::ResolvedAddress { .. })
    ));
    assert_eq!(
        server.hits.load(Ordering::SeqCst),
        0,
        "no connection was made"
    );

    // The dangerous exception makes both reachable.
    let allowed = GuardedClient::new(
        Arc::new(loopback_allowed()),
        lookup(table),
        &ClientOptions::default(),
    )
    .unwrap();
    for url in [
        format!("http://127.0.0.1:{port}/"),
        format!("http://upstream.test:{port}/"),
    ] {
        let res = get(&allowed, &url).await.unwrap();
        assert_eq!(res.status(), 200);
        assert_eq!(res.text().await.unwrap(), "hello");
    }
    assert_eq!(server.hits.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn redirects_not_followed_by_default() {
    let server = serve(
        "127.0.0.1:0",
        Arc::new(|_| redirect("http://169.254.169.254/")),
    )
    .await;
    let c = GuardedClient::new(
        Arc::new(loopback_allowed()),
        lookup(TestResolver::new()),
        &ClientOptions::default(),
    )
    .unwrap();
    let res = get(&c, &format!("http://{}/", server.addr)).await.unwrap();
    assert_eq!(res.status(), 302);
}

#[tokio::test]
async fn redirect_hops_are_rechecked() {
    // The forbidden target: a real server on another loopback address, which the policy does
    // not allow (only 127.0.0.1/32 is). If a hop reached it, its hit counter would show it.
    let forbidden = serve("127.0.0.2:0", Arc::new(|_| ok("internal"))).await;
    let f = forbidden.addr;
    let other = serve("127.0.0.1:0", Arc::new(|_| ok("other origin"))).await;
    let o = other.addr;
    let handler: Handler = Arc::new(move |path: &str| match path {
        "/to-metadata" => redirect("http://169.254.169.254/latest/meta-data/"),
        "/to-forbidden-literal" => redirect(&format!("http://{f}/")),
        "/to-forbidden-name" => redirect(&format!("http://forbidden.test:{}/", f.port())),
        "/to-mapped" => redirect(&format!("http://[::ffff:127.0.0.2]:{}/", f.port())),
        "/to-userinfo" => redirect(&format!("http://user:pw@{o}/")),
        "/to-file" => redirect("file:///etc/passwd"),
        "/to-other-origin" => redirect(&format!("http://{o}/")),
        "/to-self" => redirect("/final"),
        "/loop" => redirect("/loop"),
        "/final" => ok("final"),
        _ => ok("?"),
    });
    let origin = serve("127.0.0.1:0", handler).await;
    let base = format!("http://{}", origin.addr);
    let table = TestResolver::new().with("forbidden.test", [f.ip()]);
    let follow = |same_origin_only| ClientOptions {
        redirects: Redirects::Follow {
            max_hops: 3,
            same_origin_only,
        },
        ..ClientOptions::default()
    };
    let c = GuardedClient::new(
        Arc::new(loopback_allowed()),
        lookup(table.clone()),
        &follow(false),
    )
    .unwrap();

    let r = refusal(get(&c, &format!("{base}/to-metadata")).await);
    assert!(
        matches!(
            r,
            Refusal::Address {
                reason: Reason::LinkLocal,
                ..
            }
        ),
        "{r:?}"
    );
    let r = refusal(get(&c, &format!("{base}/to-forbidden-literal")).await);
    assert!(
        matches!(
            r,
            Refusal::Address {
                reason: Reason::Loopback,
                ..
            }
        ),
        "{r:?}"
    );
    let r = refusal(get(&c, &format!("{base}/to-forbidden-name")).await);
    assert!(
        matches!(
            r,
            Refusal::ResolvedAddress {
                reason: Reason::Loopback,
                ..
            }
        ),
        "{r:?}"
    );
    let r = refusal(get(&c, &format!("{base}/to-mapped")).await);
    assert!(
        matches!(
            r,
            Refusal::Address {
                reason: Reason::Loopback,
                ..
            }
        ),
        "{r:?}"
    );
    assert_eq!(
        refusal(get(&c, &format!("{base}/to-userinfo")).await),
        Refusal::Userinfo
    );
    // reqwest never follows a non-HTTP location: the 3xx comes back as it is.
    let res = get(&c, &format!("{base}/to-file")).await.unwrap();
    assert_eq!(res.status(), 302);
    assert_eq!(
        refusal(get(&c, &format!("{base}/loop")).await),
        Refusal::TooManyRedirects(3)
    );
    assert_eq!(
        forbidden.hits.load(Ordering::SeqCst),
        0,
        "no hop reached it"
    );

    // Allowed hops are followed.
    let res = get(&c, &format!("{base}/to-self")).await.unwrap();
    assert_eq!(res.text().await.unwrap(), "final");
    let res = get(&c, &format!("{base}/to-other-origin")).await.unwrap();
    assert_eq!(res.text().await.unwrap(), "other origin");
    assert_eq!(other.hits.load(Ordering::SeqCst), 1);

    // Same origin only: leaving the origin is an error, staying is fine.
    let strict =
        GuardedClient::new(Arc::new(loopback_allowed()), lookup(table), &follow(true)).unwrap();
    assert_eq!(
        refusal(get(&strict, &format!("{base}/to-other-origin")).await),
        Refusal::CrossOrigin
    );
    assert_eq!(other.hits.load(Ordering::SeqCst), 1);
    let res = get(&strict, &format!("{base}/to-self")).await.unwrap();
    assert_eq!(res.text().await.unwrap(), "final");
}
