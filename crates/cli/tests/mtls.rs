//! mTLS client authentication: client certificates verified by the TLS listener against a
//! configured CA and bound to clients by SAN or fingerprint.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{route, server_section, upstream, Gw};

fn tls_client(pki: &upstream::TestPki, identity: Option<&str>) -> reqwest::Client {
    let mut b = reqwest::Client::builder()
        .use_rustls_tls()
        .add_root_certificate(reqwest::Certificate::from_pem(pki.ca_pem.as_bytes()).unwrap())
        .no_proxy();
    if let Some(pem) = identity {
        b = b.identity(reqwest::Identity::from_pem(pem.as_bytes()).unwrap());
    }
    b.build().unwrap()
}

#[tokio::test]
async fn client_certificates_authenticate_bound_clients() {
    let pki = upstream::TestPki::new();
    let other_ca = upstream::TestPki::new();
    let up = upstream::start(None).await;
    let (by_san, _) = pki.client_identity("billing.clients.test");
    let (by_fp, fp) = pki.client_identity("anything.clients.test");
    let (unbound, _) = pki.client_identity("stranger.clients.test");
    let (foreign, _) = other_ca.client_identity("billing.clients.test");
    let dir = tempfile::tempdir().unwrap();
    pki.write_server_files(dir.path());
    std::fs::write(dir.path().join("clients-ca.pem"), &pki.ca_pem).unwrap();
    let fp_colons: Vec<String> = fp
        .as_bytes()
        .chunks(2)
        .map(|c| String::from_utf8_lossy(c).to_uppercase())
        .collect();
    let cfg = format!(
        "{}[[clients]]\nid = \"billing\"\nscopes = [\"orders:read\"]\ncert_sans = [\"billing.clients.test\"]\n\n[[clients]]\nid = \"pinned\"\ncert_fingerprints = [\"{}\"]\n\n{}{}",
        server_section("tls = { cert = \"gw.pem\", key = \"gw.key\" }\nclient_ca = \"clients-ca.pem\""),
        fp_colons.join(":"),
        route("orders", "[\"GET\"]", "/orders", &up.url(), "auth = [\"mtls\"]"),
        route("public", "[\"GET\"]", "/public", &up.url(), ""),
    );
    std::fs::write(dir.path().join("portcullis.toml"), cfg).unwrap();
    let gw = Gw::start_in(dir);
    let url = |p: &str| format!("https://localhost:{}{p}", gw.data.port());

    let res = tls_client(&pki, Some(&by_san))
        .get(url("/orders"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let v: serde_json::Value = res.json().await.unwrap();
    assert_eq!(v["headers"]["x-portcullis-client"], "billing");

    let res = tls_client(&pki, Some(&by_fp))
        .get(url("/orders"))
        .send()
        .await
        .unwrap();
    let v: serde_json::Value = res.json().await.unwrap();
    assert_eq!(v["headers"]["x-portcullis-client"], "pinned");

    // A valid certificate bound to no client, and no certificate at all: 401.
    assert_eq!(
        tls_client(&pki, Some(&unbound))
            .get(url("/orders"))
            .send()
            .await
            .unwrap()
            .status(),
        401
    );
    assert_eq!(
        tls_client(&pki, None)
            .get(url("/orders"))
            .send()
            .await
            .unwrap()
            .status(),
        401
    );
    // Certificates are optional at the handshake: routes without mtls still work without one.
    assert_eq!(
        tls_client(&pki, None)
            .get(url("/public"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    // A certificate from another CA fails the handshake itself.
    assert!(tls_client(&pki, Some(&foreign))
        .get(url("/orders"))
        .send()
        .await
        .is_err());
}
