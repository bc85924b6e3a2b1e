//! Real upstream servers for tests: an echo service (plain HTTP or TLS with a test CA) whose
//! responses describe what it received.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::{body::Incoming, service::service_fn};
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
};
use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};
use tokio::{net::TcpListener, sync::mpsc};

/// A running upstream. `arrivals` receives the path of every request as it arrives (before
/// any deliberate delay), so a test can act while a request is in flight. Requests to paths
/// under `/hold` wait until the test lets them go with [`Upstream::release`].
pub struct Upstream {
    pub addr: SocketAddr,
    /// TCP connections accepted so far.
    pub connections: Arc<AtomicUsize>,
    pub arrivals: tokio::sync::Mutex<mpsc::UnboundedReceiver<String>>,
    held: Arc<tokio::sync::Semaphore>,
}

impl Upstream {
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Lets `n` requests waiting under `/hold` (now or later) answer.
    pub fn release(&self, n: usize) {
        self.held.add_permits(n);
    }

    /// Waits (up to 20 s) until `n` more requests have arrived; panics otherwise.
    pub async fn wait_arrivals(&self, n: usize) {
        let mut rx = self.arrivals.lock().await;
        for _ in 0..n {
            tokio::time::timeout(Duration::from_secs(20), rx.recv())
                .await
                .expect("request did not reach the upstream")
                .unwrap();
        }
    }
}

async fn handle(
    req: Request<Incoming>,
    tx: mpsc::UnboundedSender<String>,
    held: Arc<tokio::sync::Semaphore>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let path = req.uri().path().to_string();
    let _ = tx.send(path.clone());
    if path.starts_with("/hold") {
        if let Ok(p) = held.acquire().await {
            p.forget();
        }
    }
    if let Some(ms) = path
        .strip_prefix("/sleep/")
        .and_then(|s| s.parse::<u64>().ok())
    {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    let method = req.method().to_string();
    let query = req.uri().query().map(str::to_string);
    let headers: serde_json::Map<String, serde_json::Value> = req
        .headers()
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_string(),
                serde_json::Value::String(String::from_utf8_lossy(v.as_bytes()).into()),
            )
        })
        .collect();
    let body = req
        .into_body()
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    let echo = serde_json::json!({
        "method": method,
        "path": path,
        "query": query,
        "headers": headers,
        "body_len": body.len(),
    });
    // `/big/<bytes>` answers with that many bytes (a download a client may not read).
    let big = path
        .strip_prefix("/big/")
        .and_then(|s| s.parse::<usize>().ok());
    let payload = match big {
        Some(n) => Bytes::from(vec![b'x'; n]),
        None => Bytes::from(echo.to_string()),
    };
    let mut res = Response::new(Full::new(payload));
    // `/status/<code>...` answers with that status (a failing third party, say).
    *res.status_mut() = path
        .strip_prefix("/status/")
        .and_then(|s| s.split('/').next())
        .and_then(|s| s.parse::<u16>().ok())
        .and_then(|c| StatusCode::from_u16(c).ok())
        .unwrap_or(StatusCode::OK);
    let h = res.headers_mut();
    h.insert(
        "content-type",
        http::HeaderValue::from_static("application/json"),
    );
    // Hop-by-hop headers the gateway must not pass back.
    h.insert(
        "connection",
        http::HeaderValue::from_static("x-upstream-hop"),
    );
    h.insert("x-upstream-hop", http::HeaderValue::from_static("1"));
    h.insert("keep-alive", http::HeaderValue::from_static("timeout=5"));
    h.insert("x-upstream-kept", http::HeaderValue::from_static("1"));
    // `/cors-open...`: an upstream with CORS opinions of its own, wider than any route's.
    if path.starts_with("/cors-open") {
        for (name, value) in [
            ("access-control-allow-origin", "*"),
            ("access-control-allow-credentials", "true"),
            ("access-control-expose-headers", "x-upstream-kept"),
        ] {
            h.insert(name, http::HeaderValue::from_static(value));
        }
    }
    Ok(res)
}

/// Starts the echo upstream on a loopback port; with `tls`, serves HTTPS with that config.
pub async fn start(tls: Option<Arc<rustls::ServerConfig>>) -> Upstream {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    let held = Arc::new(tokio::sync::Semaphore::new(0));
    let held_srv = held.clone();
    let connections = Arc::new(AtomicUsize::new(0));
    let accepted = connections.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            accepted.fetch_add(1, Ordering::SeqCst);
            let tx = tx.clone();
            let tls = tls.clone();
            let held = held_srv.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req| handle(req, tx.clone(), held.clone()));
                let builder = auto::Builder::new(TokioExecutor::new());
                match tls {
                    Some(cfg) => {
                        if let Ok(s) = tokio_rustls::TlsAcceptor::from(cfg).accept(stream).await {
                            let _ = builder.serve_connection(TokioIo::new(s), svc).await;
                        }
                    }
                    None => {
                        let _ = builder.serve_connection(TokioIo::new(stream), svc).await;
                    }
                }
            });
        }
    });
    Upstream {
        addr,
        connections,
        arrivals: tokio::sync::Mutex::new(rx),
        held,
    }
}

/// A test certificate authority and a leaf for `localhost` / 127.0.0.1 signed by it.
pub struct TestPki {
    pub ca_pem: String,
    pub leaf_pem: String,
    pub key_pem: String,
    ca: rcgen::Certificate,
    ca_key: rcgen::KeyPair,
}

impl TestPki {
    pub fn new() -> TestPki {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "Portcullis Test CA");
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let leaf_key = rcgen::KeyPair::generate().unwrap();
        let mut leaf_params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
        leaf_params
            .subject_alt_names
            .push(rcgen::SanType::IpAddress("127.0.0.1".parse().unwrap()));
        let leaf = leaf_params.signed_by(&leaf_key, &ca, &ca_key).unwrap();
        TestPki {
            ca_pem: ca.pem(),
            leaf_pem: leaf.pem(),
            key_pem: leaf_key.serialize_pem(),
            ca,
            ca_key,
        }
    }

    /// Writes the server certificate and key as `gw.pem` and `gw.key` in `dir`, the files
    /// `tls = { cert = "gw.pem", key = "gw.key" }` names (a renewal writes over them).
    pub fn write_server_files(&self, dir: &std::path::Path) {
        std::fs::write(dir.join("gw.pem"), &self.leaf_pem).unwrap();
        std::fs::write(dir.join("gw.key"), &self.key_pem).unwrap();
    }

    /// A client certificate for `dns_name`, signed by this CA: (PEM of cert and key, SHA-256
    /// fingerprint in hex).
    pub fn client_identity(&self, dns_name: &str) -> (String, String) {
        use sha2::Digest;
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec![dns_name.to_string()]).unwrap();
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        let cert = params.signed_by(&key, &self.ca, &self.ca_key).unwrap();
        let fp = sha2::Sha256::digest(cert.der().as_ref())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        (format!("{}{}", cert.pem(), key.serialize_pem()), fp)
    }

    pub fn server_config(&self) -> Arc<rustls::ServerConfig> {
        use rustls_pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer};
        let certs = vec![CertificateDer::from_pem_slice(self.leaf_pem.as_bytes()).unwrap()];
        let key = PrivateKeyDer::from_pem_slice(self.key_pem.as_bytes()).unwrap();
        let mut cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
        cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
        Arc::new(cfg)
    }
}
