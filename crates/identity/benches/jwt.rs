//! JWT verification of a token already seen (the verified-token cache): the per-request cost
//! of `auth = ["jwt"]` when a workflow reuses its token. The first verification of a token
//! costs the signature check (measured before the cache existed; see bench/RESULTS.md).
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use portcullis_config::JwtIssuerConfig;
use portcullis_identity::JwtVerifier;
use std::time::Duration;

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut g = c.benchmark_group("jwt");
    g.throughput(Throughput::Elements(1));
    for (name, alg, algo) in [
        ("es256", &rcgen::PKCS_ECDSA_P256_SHA256, Algorithm::ES256),
        ("eddsa", &rcgen::PKCS_ED25519, Algorithm::EdDSA),
    ] {
        let kp = rcgen::KeyPair::generate_for(alg).unwrap();
        let pem = dir.path().join(format!("{name}.pem"));
        std::fs::write(&pem, kp.public_key_pem()).unwrap();
        let cfg = JwtIssuerConfig {
            issuer: "https://login.test/".into(),
            audiences: vec!["portcullis".into()],
            jwks_url: None,
            jwks_ca: None,
            public_keys: vec![(Some("k".into()), pem)],
            algorithms: vec![format!("{algo:?}")],
            client_claim: "azp".into(),
            leeway: Duration::from_secs(30),
            jwks_refresh: Duration::from_secs(300),
            jwks_refetch_after: Duration::from_secs(30),
        };
        let verifier = rt.block_on(JwtVerifier::new(&[cfg])).unwrap();
        let key = if algo == Algorithm::ES256 {
            EncodingKey::from_ec_pem(kp.serialize_pem().as_bytes())
        } else {
            EncodingKey::from_ed_pem(kp.serialize_pem().as_bytes())
        }
        .unwrap();
        let mut h = Header::new(algo);
        h.kid = Some("k".into());
        let exp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
            + 3600;
        let token = encode(&h, &serde_json::json!({ "iss": "https://login.test/", "aud": "portcullis", "azp": "c", "scope": "a b", "exp": exp }), &key).unwrap();
        g.bench_function(format!("verify_{name}_cached_token"), |b| {
            b.iter(|| rt.block_on(verifier.verify(&token)).unwrap())
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
