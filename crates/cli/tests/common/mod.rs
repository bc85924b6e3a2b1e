//! Test harness: runs the real `portcullis` binary against real HTTP(S) servers on loopback
//! ports, and captures its log output for assertions.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

pub mod postgres;
pub mod redis;
pub mod upstream;

use std::{
    io::{BufRead, BufReader},
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    sync::{Arc, Condvar, Mutex},
    time::{Duration, Instant},
};

pub const BIN: &str = env!("CARGO_BIN_EXE_portcullis");

/// Captured output lines of a child process, with a way to wait for one.
#[derive(Clone, Default)]
pub struct Lines(Arc<(Mutex<Vec<String>>, Condvar)>);

impl Lines {
    fn push(&self, line: String) {
        let (m, c) = &*self.0;
        m.lock().unwrap().push(line);
        c.notify_all();
    }

    /// Waits up to `limit` for a line containing every needle; returns it.
    pub fn wait_for(&self, needles: &[&str], limit: Duration) -> Option<String> {
        let deadline = Instant::now() + limit;
        let (m, c) = &*self.0;
        let mut g = m.lock().unwrap();
        loop {
            if let Some(l) = g.iter().find(|l| needles.iter().all(|n| l.contains(n))) {
                return Some(l.clone());
            }
            let now = Instant::now();
            if now >= deadline {
                return None;
            }
            g = c.wait_timeout(g, deadline - now).unwrap().0;
        }
    }

    pub fn all(&self) -> String {
        self.0 .0.lock().unwrap().join("\n")
    }
}

pub fn capture(stream: impl std::io::Read + Send + 'static, lines: Lines) {
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines() {
            match line {
                Ok(l) => lines.push(l),
                Err(_) => break,
            }
        }
    });
}

/// A running gateway process with its own temporary directory.
pub struct Gw {
    pub child: Child,
    pub data: SocketAddr,
    pub admin: SocketAddr,
    pub stdout: Lines,
    pub stderr: Lines,
    pub dir: tempfile::TempDir,
}

/// The `[server]` section every test config starts with: ephemeral loopback ports and state
/// in the test's own directory.
pub fn server_section(extra: &str) -> String {
    format!("[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\ndata_dir = \"state\"\nshutdown_grace = \"10s\"\n{extra}\n")
}

impl Gw {
    /// Writes `config` to a fresh directory and starts `portcullis serve` on it.
    pub fn start(config: &str) -> Gw {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("portcullis.toml"), config).unwrap();
        Self::start_in(dir)
    }

    pub fn start_in(dir: tempfile::TempDir) -> Gw {
        Self::start_in_with_env(dir, &[])
    }

    /// [`Gw::start_in`] with environment variables set for the gateway.
    pub fn start_in_with_env(dir: tempfile::TempDir, env: &[(&str, &str)]) -> Gw {
        let mut child = Command::new(BIN)
            .args(["serve", "--config"])
            .arg(dir.path().join("portcullis.toml"))
            .env_remove("PORTCULLIS_LOG")
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = Lines::default();
        let stderr = Lines::default();
        capture(child.stdout.take().unwrap(), stdout.clone());
        capture(child.stderr.take().unwrap(), stderr.clone());
        let Some(line) = stdout.wait_for(&["portcullis started"], Duration::from_secs(20)) else {
            let _ = child.kill();
            panic!(
                "gateway did not start\nstdout:\n{}\nstderr:\n{}",
                stdout.all(),
                stderr.all()
            );
        };
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        let data = v["listen"].as_str().unwrap().parse().unwrap();
        let admin = v["admin"].as_str().unwrap().parse().unwrap();
        Gw {
            child,
            data,
            admin,
            stdout,
            stderr,
            dir,
        }
    }

    /// Stops the process gracefully and starts a new one on the same directory (state and
    /// config kept; new ports).
    pub fn restart(mut self) -> Gw {
        self.signal("TERM");
        self.wait_exit(Duration::from_secs(20));
        let dir = std::mem::replace(&mut self.dir, tempfile::tempdir().unwrap());
        drop(self);
        Gw::start_in(dir)
    }

    /// Kills the process with SIGKILL (no shutdown at all) and starts a new one on the same
    /// directory.
    pub fn crash_and_restart(mut self) -> Gw {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let dir = std::mem::replace(&mut self.dir, tempfile::tempdir().unwrap());
        drop(self);
        Gw::start_in(dir)
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.data)
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.admin)
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("portcullis.toml")
    }

    /// Runs `portcullis ARGS --config <this gateway's config>`, asserts it succeeded and
    /// returns its standard output.
    pub fn cli(&self, args: &[&str]) -> String {
        let out = Command::new(BIN)
            .args(args)
            .arg("--config")
            .arg(self.config_path())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Replaces the configuration file the gateway watches (atomically, as editors do).
    pub fn rewrite_config(&self, config: &str) {
        let tmp = self.dir.path().join("portcullis.toml.tmp");
        std::fs::write(&tmp, config).unwrap();
        std::fs::rename(&tmp, self.config_path()).unwrap();
    }

    /// The admin API token the gateway created in its data directory.
    pub fn admin_token(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("state/admin.token"))
            .unwrap()
            .trim()
            .to_string()
    }

    /// Issues an API key for `client_id` through the admin API (known to the gateway at once).
    pub async fn issue_key(&self, client_id: &str) -> String {
        let res = client()
            .post(self.admin_url(&format!("/admin/clients/{client_id}/keys")))
            .bearer_auth(self.admin_token())
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 201);
        let v: serde_json::Value = res.json().await.unwrap();
        v["key_once"].as_str().unwrap().to_string()
    }

    /// GET `path` with `key` as a bearer token.
    pub async fn get_with_key(&self, path: &str, key: &str) -> reqwest::Response {
        client()
            .get(self.url(path))
            .bearer_auth(key)
            .send()
            .await
            .unwrap()
    }

    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.child.id().to_string())
            .status()
            .unwrap();
        assert!(ok.success());
    }

    /// Waits for the process to exit, up to `limit`.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Some(s) = self.child.try_wait().unwrap() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }
}

impl Drop for Gw {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A plain HTTP client that never follows redirects and talks to loopback only.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap()
}

/// Runs the CLI with `args` and returns (exit code, stdout, stderr).
pub fn run_cli(args: &[&str], cwd: &Path) -> (i32, String, String) {
    let out = Command::new(BIN)
        .args(args)
        .current_dir(cwd)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A route table entry for tests.
pub fn route(id: &str, methods: &str, path: &str, upstream: &str, extra: &str) -> String {
    format!("[[routes]]\nid = \"{id}\"\nmethods = {methods}\npath = \"{path}\"\nupstream = \"{upstream}\"\n{extra}\n")
}

/// Sends `req` and reads the response body as JSON (the echo upstream's view of a request).
pub async fn json_of(req: reqwest::RequestBuilder) -> serde_json::Value {
    req.send().await.unwrap().json().await.unwrap()
}

/// Asserts an RFC 9457 problem response and returns its JSON.
pub async fn assert_problem(res: reqwest::Response, status: u16, slug: &str) -> serde_json::Value {
    assert_eq!(res.status().as_u16(), status, "status");
    let ct = res
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_string());
    assert_eq!(ct.as_deref(), Some("application/problem+json"));
    let rid = res
        .headers()
        .get("x-request-id")
        .map(|v| v.to_str().unwrap().to_string());
    let v: serde_json::Value = res.json().await.unwrap();
    assert_eq!(v["type"], format!("urn:portcullis:problem:{slug}"), "{v}");
    assert_eq!(v["status"], status);
    assert!(v["title"].is_string());
    assert_eq!(v["request_id"].as_str(), rid.as_deref());
    v
}

/// A one-off HTTP/1.1 server on a loopback port (a token endpoint, a redirecting or
/// recording third party): every request's head and whole body go to `handler`, whose
/// response is sent back. Returns the address.
pub async fn serve_fn<F>(handler: F) -> SocketAddr
where
    F: Fn(http::request::Parts, bytes::Bytes) -> http::Response<String> + Send + Sync + 'static,
{
    let handler = Arc::new(handler);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let handler = handler.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(
                    move |req: hyper::Request<hyper::body::Incoming>| {
                        let handler = handler.clone();
                        async move {
                            let (parts, body) = req.into_parts();
                            let body = http_body_util::BodyExt::collect(body)
                                .await
                                .map(|c| c.to_bytes())
                                .unwrap_or_default();
                            let res = handler(parts, body)
                                .map(|s| http_body_util::Full::new(bytes::Bytes::from(s)));
                            Ok::<_, std::convert::Infallible>(res)
                        }
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    addr
}

/// A response with `status`, a JSON content type and `body`.
pub fn json_response(status: u16, body: impl Into<String>) -> http::Response<String> {
    let mut res = http::Response::new(body.into());
    *res.status_mut() = http::StatusCode::from_u16(status).unwrap();
    res.headers_mut().insert(
        "content-type",
        http::HeaderValue::from_static("application/json"),
    );
    res
}

/// A gateway on `config` with `secrets` (name, consumer, value) put into its vault first.
pub fn start_with_secrets(config: &str, secrets: &[(&str, &str, &str)]) -> Gw {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("portcullis.toml");
    std::fs::write(&path, config).unwrap();
    for (name, consumer, value) in secrets {
        put_secret(&path, name, consumer, value);
    }
    Gw::start_in(dir)
}

/// Stores `value` as secret `name` bound to `consumer`, through `portcullis secret put`.
pub fn put_secret(cfg: &Path, name: &str, consumer: &str, value: &str) {
    use std::io::Write;
    let mut child = Command::new(BIN)
        .args(["secret", "put", name, "--consumer", consumer, "--config"])
        .arg(cfg)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(value.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Gw {
    /// The Prometheus text of the admin listener's /metrics.
    pub async fn metrics(&self) -> String {
        client()
            .get(self.admin_url("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }
}

/// A local OAuth 2.0 token endpoint for the client-credentials grant: checks the client's
/// credentials (HTTP Basic, as the `oauth2` crate sends them), answers after `delay` (so
/// that concurrent callers overlap with a fetch), counts the tokens it issues, and issues
/// `tok-<n>-<suffix>` valid for an hour. Returns the token URL and the count.
pub async fn token_server(
    client_id: &str,
    client_secret: &str,
    suffix: &str,
    delay: Duration,
) -> (String, Arc<std::sync::atomic::AtomicUsize>) {
    use base64::Engine;
    use std::sync::atomic::{AtomicUsize, Ordering};
    let count = Arc::new(AtomicUsize::new(0));
    let counter = count.clone();
    let expected = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{client_id}:{client_secret}"))
    );
    let suffix = suffix.to_string();
    let addr = serve_fn(move |head, body| {
        // A blocking sleep in the handler: one-off test server, a few requests at a time.
        std::thread::sleep(delay);
        let auth = head
            .headers
            .get("authorization")
            .and_then(|v| v.to_str().ok());
        let body = String::from_utf8_lossy(&body).to_string();
        if auth == Some(expected.as_str()) && body.contains("grant_type=client_credentials") {
            let n = counter.fetch_add(1, Ordering::SeqCst) + 1;
            json_response(200, format!("{{\"access_token\":\"tok-{n}-{suffix}\",\"token_type\":\"bearer\",\"expires_in\":3600}}"))
        } else {
            json_response(401, "{\"error\":\"invalid_client\"}")
        }
    })
    .await;
    (format!("http://{addr}/oauth/token"), count)
}
