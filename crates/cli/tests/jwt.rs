//! JWT bearer tokens end to end: a JWKS served over HTTPS with a test CA, real signed tokens,
//! and the attack corpus (alg none, algorithm confusion, expired, not yet valid, wrong issuer,
//! wrong audience, tampered payload, unknown kid, kid path traversal, jku pointing elsewhere,
//! missing exp).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine};
use bytes::Bytes;
use common::{assert_problem, client, route, server_section, upstream, Gw};
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
};
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use std::sync::{
    atomic::{AtomicUsize, Ordering},
    Arc,
};

const ISS: &str = "https://login.test/";
const AUD: &str = "portcullis";

struct Signer {
    kid: String,
    alg: Algorithm,
    key: EncodingKey,
    jwk: serde_json::Value,
    public_pem: String,
}

fn es256(kid: &str) -> Signer {
    let kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let raw = kp.public_key_raw();
    let (x, y) = raw[1..].split_at(32);
    Signer {
        kid: kid.into(),
        alg: Algorithm::ES256,
        key: EncodingKey::from_ec_pem(kp.serialize_pem().as_bytes()).unwrap(),
        jwk: serde_json::json!({ "kty": "EC", "crv": "P-256", "kid": kid, "alg": "ES256", "use": "sig", "x": URL_SAFE_NO_PAD.encode(x), "y": URL_SAFE_NO_PAD.encode(y) }),
        public_pem: kp.public_key_pem(),
    }
}

fn eddsa(kid: &str) -> Signer {
    let kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
    Signer {
        kid: kid.into(),
        alg: Algorithm::EdDSA,
        key: EncodingKey::from_ed_pem(kp.serialize_pem().as_bytes()).unwrap(),
        jwk: serde_json::json!({ "kty": "OKP", "crv": "Ed25519", "kid": kid, "alg": "EdDSA", "use": "sig", "x": URL_SAFE_NO_PAD.encode(kp.public_key_raw()) }),
        public_pem: kp.public_key_pem(),
    }
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn claims() -> serde_json::Value {
    serde_json::json!({ "iss": ISS, "aud": AUD, "azp": "billing", "scope": "orders:read other", "exp": now() + 300, "iat": now() })
}

fn sign(s: &Signer, claims: &serde_json::Value) -> String {
    let mut h = Header::new(s.alg);
    h.kid = Some(s.kid.clone());
    encode(&h, claims, &s.key).unwrap()
}

/// Serves `keys` as a JWKS over HTTPS; counts fetches.
async fn jwks_server(
    pki: &upstream::TestPki,
    keys: Arc<std::sync::Mutex<serde_json::Value>>,
    fetches: Arc<AtomicUsize>,
) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let tls = pki.server_config();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let (keys, fetches, tls) = (keys.clone(), fetches.clone(), tls.clone());
            tokio::spawn(async move {
                let Ok(s) = tokio_rustls::TlsAcceptor::from(tls).accept(stream).await else {
                    return;
                };
                let svc = service_fn(move |_req| {
                    fetches.fetch_add(1, Ordering::SeqCst);
                    let body = keys.lock().unwrap().to_string();
                    async move {
                        Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(
                            Bytes::from(body),
                        )))
                    }
                });
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    addr
}

// Multi-threaded: the JWKS server must answer while the test thread waits for start-up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwts_are_verified_strictly() {
    let pki = upstream::TestPki::new();
    let (a, ed, later) = (es256("key-a"), eddsa("key-ed"), es256("key-later"));
    let keys = Arc::new(std::sync::Mutex::new(
        serde_json::json!({ "keys": [a.jwk, ed.jwk] }),
    ));
    let fetches = Arc::new(AtomicUsize::new(0));
    let jwks = jwks_server(&pki, keys.clone(), fetches.clone()).await;
    let up = upstream::start(None).await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("ca.pem"), &pki.ca_pem).unwrap();
    let cfg = format!(
        "{}[[clients]]\nid = \"billing\"\nscopes = [\"orders:read\"]\n\n[[auth.jwt]]\nissuer = \"{ISS}\"\naudiences = [\"{AUD}\"]\njwks_url = \"https://127.0.0.1:{}/jwks.json\"\njwks_ca = \"ca.pem\"\nalgorithms = [\"ES256\", \"EdDSA\"]\njwks_refresh = \"1h\"\njwks_refetch_after = \"1s\"\n\n[auth]\nbrute_force = {{ max_failures = 1000 }}\n\n{}",
        server_section(""),
        jwks.port(),
        route("orders", "[\"GET\"]", "/orders", &up.url(), "auth = [\"jwt\"]\nscopes = [\"orders:read\"]"),
    );
    std::fs::write(dir.path().join("portcullis.toml"), cfg).unwrap();
    let gw = Gw::start_in(dir);
    let c = client();
    let call = |token: String| {
        let c = c.clone();
        let url = gw.url("/orders");
        async move { c.get(url).bearer_auth(token).send().await.unwrap() }
    };

    // Valid tokens, both algorithms: the upstream sees the client and the narrowed scopes.
    for s in [&a, &ed] {
        let res = call(sign(s, &claims())).await;
        assert_eq!(res.status(), 200);
        let v: serde_json::Value = res.json().await.unwrap();
        assert_eq!(v["headers"]["x-portcullis-client"], "billing");
        assert_eq!(v["headers"]["x-portcullis-scopes"], "orders:read");
        assert!(v["headers"].get("authorization").is_none());
    }

    let b64 = |v: &serde_json::Value| URL_SAFE_NO_PAD.encode(v.to_string());
    let good = sign(&a, &claims());
    let parts: Vec<&str> = good.split('.').collect();
    let mut attacks: Vec<(&str, String)> = Vec::new();
    attacks.push((
        "alg none",
        format!(
            "{}.{}.",
            b64(&serde_json::json!({"alg": "none", "typ": "JWT", "kid": "key-a"})),
            parts[1]
        ),
    ));
    // Algorithm confusion: HS256 signed with the issuer's public key as the HMAC secret.
    let confusion = {
        let mut h = Header::new(Algorithm::HS256);
        h.kid = Some("key-a".into());
        encode(
            &h,
            &claims(),
            &EncodingKey::from_secret(a.public_pem.as_bytes()),
        )
        .unwrap()
    };
    attacks.push(("RS/ES public key as HMAC secret", confusion));
    let mut expired = claims();
    expired["exp"] = serde_json::json!(now() - 3600);
    attacks.push(("expired", sign(&a, &expired)));
    let mut early = claims();
    early["nbf"] = serde_json::json!(now() + 3600);
    attacks.push(("not yet valid", sign(&a, &early)));
    let mut wrong_iss = claims();
    wrong_iss["iss"] = serde_json::json!("https://evil.test/");
    attacks.push(("wrong issuer", sign(&a, &wrong_iss)));
    let mut wrong_aud = claims();
    wrong_aud["aud"] = serde_json::json!("someone-else");
    attacks.push(("wrong audience", sign(&a, &wrong_aud)));
    let mut tampered_claims = claims();
    tampered_claims["azp"] = serde_json::json!("admin");
    attacks.push((
        "tampered payload",
        format!("{}.{}.{}", parts[0], b64(&tampered_claims), parts[2]),
    ));
    let mut unknown_kid = Header::new(Algorithm::ES256);
    unknown_kid.kid = Some("nope".into());
    attacks.push((
        "unknown kid",
        encode(&unknown_kid, &claims(), &a.key).unwrap(),
    ));
    let mut traversal = Header::new(Algorithm::ES256);
    traversal.kid = Some("../../../../etc/passwd".into());
    attacks.push((
        "kid path traversal",
        encode(&traversal, &claims(), &a.key).unwrap(),
    ));
    // jku pointing at the attacker's keys: never followed; signed by a key the issuer never published.
    let attacker = es256("attacker");
    let mut jku = Header::new(Algorithm::ES256);
    jku.kid = Some("attacker".into());
    jku.jku = Some("https://evil.test/jwks.json".into());
    attacks.push((
        "jku elsewhere",
        encode(&jku, &claims(), &attacker.key).unwrap(),
    ));
    let mut no_exp = claims();
    no_exp.as_object_mut().unwrap().remove("exp");
    attacks.push(("missing exp", sign(&a, &no_exp)));
    let mut unknown_client = claims();
    unknown_client["azp"] = serde_json::json!("not-declared");
    attacks.push(("undeclared client", sign(&a, &unknown_client)));

    for (name, token) in attacks {
        let res = call(token).await;
        assert_eq!(res.status(), 401, "{name} was not refused");
        assert_problem(res, 401, "unauthenticated").await;
    }
    // Unknown kids refetch the JWKS at most once per `jwks_refetch_after`: the attack corpus
    // above (several unknown kids, all within a second of start-up) caused no refetch.
    assert_eq!(fetches.load(Ordering::SeqCst), 1);

    // A key the issuer publishes later is found by a refetch on its unknown kid, once the
    // refetch interval has passed; a burst of unknown kids right after costs no more fetches.
    keys.lock().unwrap()["keys"]
        .as_array_mut()
        .unwrap()
        .push(later.jwk.clone());
    tokio::time::sleep(std::time::Duration::from_millis(1200)).await;
    assert_eq!(call(sign(&later, &claims())).await.status(), 200);
    assert_eq!(fetches.load(Ordering::SeqCst), 2);
    let stranger = es256("stranger");
    for _ in 0..5 {
        assert_eq!(call(sign(&stranger, &claims())).await.status(), 401);
    }
    assert_eq!(fetches.load(Ordering::SeqCst), 2);
    // Valid tokens still work.
    assert_eq!(call(sign(&a, &claims())).await.status(), 200);
}

#[tokio::test]
async fn a_claim_keyed_limit_counts_each_claim_value_apart() {
    let up = upstream::start(None).await;
    let signer = eddsa("k1");
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("k1.pem"), &signer.public_pem).unwrap();
    let cfg = format!(
        "{}[[clients]]\nid = \"billing\"\n\n[[auth.jwt]]\nissuer = \"{ISS}\"\naudiences = [\"{AUD}\"]\npublic_keys = [{{ kid = \"k1\", pem = \"k1.pem\" }}]\nalgorithms = [\"EdDSA\"]\n\n{}",
        server_section(""),
        route(
            "tenant-limited",
            "[\"GET\"]",
            "/t",
            &up.url(),
            "auth = [\"jwt\"]\nrate_limits = [{ per = \"claim:tenant\", limit = 2, period = \"1h\" }]"
        ),
    );
    std::fs::write(dir.path().join("portcullis.toml"), cfg).unwrap();
    let gw = Gw::start_in(dir);
    // One client, two tenants in its tokens: each tenant has its own two requests.
    let token = |tenant: &str| {
        let mut c = claims();
        c["tenant"] = serde_json::json!(tenant);
        sign(&signer, &c)
    };
    let (acme, globex) = (token("acme"), token("globex"));
    let mut statuses = Vec::new();
    for t in [&acme, &acme, &acme, &globex, &globex, &globex] {
        let res = client()
            .get(gw.url("/t"))
            .bearer_auth(t)
            .send()
            .await
            .unwrap();
        statuses.push(res.status().as_u16());
    }
    assert_eq!(statuses, [200, 200, 429, 200, 200, 429]);
    // The claim's value is counted by its digest: it never reaches the log.
    let logs = format!("{}\n{}", gw.stdout.all(), gw.stderr.all());
    assert!(!logs.contains("globex"), "{logs}");
}
