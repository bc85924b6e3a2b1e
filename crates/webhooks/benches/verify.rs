//! Verification throughput: one 1 KiB JSON delivery per scheme, one secret, valid signature.
//! Target: at least 300k verifications/s per core for the HMAC schemes.
#![allow(clippy::unwrap_used, missing_docs)]

use std::hint::black_box;
use std::time::Duration;

use base64::Engine;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use ed25519_dalek::{Signer, SigningKey};
use hmac::{Hmac, Mac};
use http::{HeaderMap, HeaderName, HeaderValue};
use portcullis_webhooks::{
    HmacAlgorithm, HmacScheme, Scheme, SigEncoding, StandardSigner, Verifier,
};
use sha2::{Sha256, Sha512};
use zeroize::Zeroizing;

const NOW: i64 = 1_700_000_000;
const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

fn body() -> Vec<u8> {
    let mut s = String::from(r#"{"type":"invoice.paid","data":{"items":["#);
    while s.len() < 1000 {
        s.push_str(r#"{"sku":"A-1","qty":1},"#);
    }
    s.push_str(r#"{"sku":"Z"}]}}"#);
    let mut b = s.into_bytes();
    b.resize(1024, b' ');
    b
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn mac256(key: &[u8], msg: &[u8]) -> Vec<u8> {
    let mut m = <Hmac<Sha256> as Mac>::new_from_slice(key).unwrap();
    m.update(msg);
    m.finalize().into_bytes().to_vec()
}

fn headers(pairs: &[(&str, String)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (name, value) in pairs {
        h.insert(
            HeaderName::from_bytes(name.as_bytes()).unwrap(),
            HeaderValue::from_str(value).unwrap(),
        );
    }
    h
}

fn verifier(scheme: Scheme, secret: &str) -> Verifier {
    Verifier::new(
        scheme,
        vec![Zeroizing::new(secret.as_bytes().to_vec())],
        Duration::from_secs(300),
    )
    .unwrap()
}

fn cases(body: &[u8]) -> Vec<(&'static str, Verifier, HeaderMap)> {
    let ts = NOW.to_string();
    let whsec = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    let std_sig = StandardSigner::new(whsec.as_bytes())
        .unwrap()
        .sign("msg_bench", NOW, body);
    let signing = SigningKey::from_bytes(&[42; 32]);
    let whpk = format!("whpk_{}", B64.encode(signing.verifying_key().as_bytes()));
    let msg = [b"msg_bench.".as_slice(), ts.as_bytes(), b".", body].concat();
    let v1a = format!("v1a,{}", B64.encode(signing.sign(&msg).to_bytes()));
    let secret = "bench-secret-0123456789abcdef";
    let stripe = mac256(secret.as_bytes(), &[ts.as_bytes(), b".", body].concat());
    let slack = mac256(
        secret.as_bytes(),
        &[b"v0:", ts.as_bytes(), b":", body].concat(),
    );
    let plain = mac256(secret.as_bytes(), body);
    let mut m = <Hmac<Sha512> as Mac>::new_from_slice(secret.as_bytes()).unwrap();
    m.update(ts.as_bytes());
    m.update(b".");
    m.update(body);
    let generic = hex(&m.finalize().into_bytes());
    let std_headers = |sig: String| {
        headers(&[
            ("webhook-id", "msg_bench".into()),
            ("webhook-timestamp", ts.clone()),
            ("webhook-signature", sig),
        ])
    };
    vec![
        (
            "standard_v1",
            verifier(Scheme::Standard, whsec),
            std_headers(std_sig),
        ),
        (
            "standard_v1a",
            verifier(Scheme::Standard, &whpk),
            std_headers(v1a),
        ),
        (
            "stripe",
            verifier(Scheme::Stripe, secret),
            headers(&[("stripe-signature", format!("t={ts},v1={}", hex(&stripe)))]),
        ),
        (
            "github",
            verifier(Scheme::Github, secret),
            headers(&[("x-hub-signature-256", format!("sha256={}", hex(&plain)))]),
        ),
        (
            "slack",
            verifier(Scheme::Slack, secret),
            headers(&[
                ("x-slack-signature", format!("v0={}", hex(&slack))),
                ("x-slack-request-timestamp", ts.clone()),
            ]),
        ),
        (
            "shopify",
            verifier(Scheme::Shopify, secret),
            headers(&[("x-shopify-hmac-sha256", B64.encode(&plain))]),
        ),
        (
            "generic_sha512",
            verifier(
                Scheme::Hmac(HmacScheme {
                    signature_header: HeaderName::from_static("x-signature"),
                    algorithm: HmacAlgorithm::Sha512,
                    encoding: SigEncoding::Hex,
                    prefix: Some("sha512=".into()),
                    timestamp_header: Some(HeaderName::from_static("x-timestamp")),
                    template: "{timestamp}.{body}".into(),
                }),
                secret,
            ),
            headers(&[
                ("x-signature", format!("sha512={generic}")),
                ("x-timestamp", ts.clone()),
            ]),
        ),
    ]
}

fn bench(c: &mut Criterion) {
    let body = body();
    let mut group = c.benchmark_group("webhook_verify_1KiB");
    group.throughput(Throughput::Elements(1));
    for (name, verifier, headers) in cases(&body) {
        verifier.verify(&headers, &body, NOW).unwrap();
        group.bench_function(name, |b| {
            b.iter(|| black_box(verifier.verify(black_box(&headers), black_box(&body), NOW)))
        });
    }
    // Baselines: the bare primitives over the same body, to separate the scheme's overhead
    // (header parsing, replay-key hash) from the MAC itself.
    let key = b"bench-secret-0123456789abcdef";
    group.bench_function("baseline_hmac_sha256", |b| {
        b.iter(|| {
            let mut m = <Hmac<Sha256> as Mac>::new_from_slice(key).unwrap();
            m.update(black_box(&body));
            black_box(m.finalize().into_bytes())
        })
    });
    group.bench_function("baseline_hmac_sha512", |b| {
        b.iter(|| {
            let mut m = <Hmac<Sha512> as Mac>::new_from_slice(key).unwrap();
            m.update(black_box(&body));
            black_box(m.finalize().into_bytes())
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
