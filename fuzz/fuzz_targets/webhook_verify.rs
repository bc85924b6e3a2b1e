//! Webhook headers and bodies are attacker-controlled: verification and event-type extraction
//! must never panic, whatever the scheme, and forged input never verifies.
//!
//! Input: one selector byte, then newline-separated header values (in the scheme's header
//! order), the remainder being the body.
#![no_main]
use std::sync::OnceLock;
use std::time::Duration;

use http::{HeaderMap, HeaderName, HeaderValue};
use libfuzzer_sys::fuzz_target;
use portcullis_webhooks::{event_type, HmacAlgorithm, HmacScheme, Scheme, SigEncoding, Verifier};
use zeroize::Zeroizing;

const NAMES: [&str; 10] = [
    "webhook-id",
    "webhook-timestamp",
    "webhook-signature",
    "stripe-signature",
    "x-hub-signature-256",
    "x-slack-signature",
    "x-slack-request-timestamp",
    "x-shopify-hmac-sha256",
    "x-signature",
    "x-timestamp",
];

fn verifiers() -> &'static [Verifier] {
    static ALL: OnceLock<Vec<Verifier>> = OnceLock::new();
    ALL.get_or_init(|| {
        let secret = |s: &str| vec![Zeroizing::new(s.as_bytes().to_vec())];
        let generic = Scheme::Hmac(HmacScheme {
            signature_header: HeaderName::from_static("x-signature"),
            algorithm: HmacAlgorithm::Sha512,
            encoding: SigEncoding::Hex,
            prefix: Some("sha512=".into()),
            timestamp_header: Some(HeaderName::from_static("x-timestamp")),
            template: "{timestamp}.{body}".into(),
        });
        let tol = Duration::from_secs(300);
        vec![
            Verifier::new(
                Scheme::Standard,
                vec![
                    Zeroizing::new(b"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".to_vec()),
                    // Public key of the reference libraries' test seed.
                    Zeroizing::new(b"whpk_ZlN4eg7dSSqi0moX9hQUk3orrOouK3QVQSlJa248c/g=".to_vec()),
                ],
                tol,
            ),
            Verifier::new(Scheme::Stripe, secret("whsec_fuzz"), tol),
            Verifier::new(Scheme::Github, secret("fuzz"), tol),
            Verifier::new(Scheme::Slack, secret("fuzz"), tol),
            Verifier::new(Scheme::Shopify, secret("fuzz"), tol),
            Verifier::new(generic, secret("fuzz"), tol),
        ]
        .into_iter()
        .filter_map(Result::ok)
        .collect()
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let mut chunks = rest.splitn(NAMES.len() + 1, |&b| b == b'\n');
    let mut headers = HeaderMap::new();
    for (i, name) in NAMES.iter().enumerate() {
        let Some(chunk) = chunks.next() else { break };
        // Low bits of the selector leave some headers out, high bits duplicate some.
        if selector & (1 << (i % 8)) != 0 {
            continue;
        }
        if let Ok(value) = HeaderValue::from_bytes(chunk) {
            headers.append(*name, value.clone());
            if i % 3 == usize::from(selector >> 6) {
                headers.append(*name, value);
            }
        }
    }
    let body = chunks.next().unwrap_or_default();
    let now = 1_700_000_000 + i64::from(selector);
    for verifier in verifiers() {
        // Nothing here was signed with these secrets (forgery would need a MAC collision).
        if let Ok(ok) = verifier.verify(&headers, body, now) {
            panic!("forged delivery verified: {ok:?}");
        }
        let _ = event_type(verifier.scheme(), &headers, body);
    }
});
