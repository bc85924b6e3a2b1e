//! TLS through the checking resolver: the connection goes to the address the resolver
//! checked, and the certificate is still verified against the URL's host name.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use portcullis_egress::{ClientOptions, EgressError, GuardedClient, Policy, TestResolver};
use rustls_pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// A test CA and a server certificate for `upstream.test` only (no IP address SAN).
fn pki() -> (String, Arc<rustls::ServerConfig>) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "Egress Test CA");
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let leaf_key = rcgen::KeyPair::generate().unwrap();
    let leaf_params = rcgen::CertificateParams::new(vec!["upstream.test".to_string()]).unwrap();
    let leaf = leaf_params.signed_by(&leaf_key, &ca, &ca_key).unwrap();
    let certs = vec![CertificateDer::from_pem_slice(leaf.pem().as_bytes()).unwrap()];
    let key = PrivateKeyDer::from_pem_slice(leaf_key.serialize_pem().as_bytes()).unwrap();
    let mut cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .unwrap();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    (ca.pem(), Arc::new(cfg))
}

#[tokio::test]
async fn tls_verified_against_the_host_name() {
    let (ca_pem, server_cfg) = pki();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(server_cfg);
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let mut buf = Vec::new();
                let mut chunk = [0u8; 1024];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    match tls.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                let _ = tls
                    .write_all(
                        b"HTTP/1.1 200 OK\r\ncontent-length: 6\r\nconnection: close\r\n\r\nsecure",
                    )
                    .await;
                let _ = tls.shutdown().await;
            });
        }
    });

    let table = TestResolver::new()
        .with("upstream.test", [addr.ip()])
        .with("wrong.test", [addr.ip()]);
    let options = ClientOptions {
        extra_roots: vec![reqwest::Certificate::from_pem(ca_pem.as_bytes()).unwrap()],
        no_builtin_roots: true,
        ..ClientOptions::default()
    };
    let policy = Policy {
        allow_cidrs: vec!["127.0.0.1/32".parse().unwrap()],
        ..Policy::default()
    };
    let c = GuardedClient::new(Arc::new(policy), Arc::new(table), &options).unwrap();
    let get = |url: String| {
        let c = c.clone();
        async move { c.execute(c.inner().get(url).build().unwrap()).await }
    };

    let res = get(format!("https://upstream.test:{}/", addr.port()))
        .await
        .unwrap();
    assert_eq!(res.text().await.unwrap(), "secure");

    // Same address, other name: the certificate does not match, the handshake fails. It is a
    // TLS failure, not a refusal.
    for url in [
        format!("https://wrong.test:{}/", addr.port()),
        format!("https://127.0.0.1:{}/", addr.port()),
    ] {
        match get(url.clone()).await {
            Err(EgressError::Http(e)) => assert!(e.is_connect(), "{url}: {e:?}"),
            other => panic!("{url}: {other:?}"),
        }
    }

    // Without the test CA (built-in roots only), nothing verifies.
    let plain = GuardedClient::new(
        Arc::new(Policy {
            allow_cidrs: vec!["127.0.0.1/32".parse().unwrap()],
            ..Policy::default()
        }),
        Arc::new(TestResolver::new().with("upstream.test", [addr.ip()])),
        &ClientOptions::default(),
    )
    .unwrap();
    let req = plain
        .inner()
        .get(format!("https://upstream.test:{}/", addr.port()))
        .build()
        .unwrap();
    assert!(matches!(
        plain.execute(req).await,
        Err(EgressError::Http(_))
    ));
}
