//! Unit tests: published vectors, SDK-generated vectors, every failure mode per scheme, replay
//! keys, event types, and proptests that no input panics.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use base64::Engine;
use ed25519_dalek::{Signer, SigningKey};
use http::{HeaderMap, HeaderName, HeaderValue};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::encoding::{encode_hex, hmac_sha256, hmac_sha512};
use crate::*;

const TOL: Duration = Duration::from_secs(300);
const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

fn secrets(list: &[&str]) -> Vec<Zeroizing<Vec<u8>>> {
    list.iter()
        .map(|s| Zeroizing::new(s.as_bytes().to_vec()))
        .collect()
}

fn verifier(scheme: Scheme, list: &[&str]) -> Verifier {
    Verifier::new(scheme, secrets(list), TOL).unwrap()
}

/// Headers from pairs; repeated names are appended (kept as duplicates).
fn hdrs(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (name, value) in pairs {
        map.append(
            HeaderName::from_bytes(name.as_bytes()).unwrap(),
            HeaderValue::from_str(value).unwrap(),
        );
    }
    map
}

fn sha256_hex(parts: &[&[u8]]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p);
    }
    encode_hex(&h.finalize())
}

fn hex256(key: &str, parts: &[&[u8]]) -> String {
    encode_hex(&hmac_sha256(key.as_bytes(), parts))
}

fn err(v: &Verifier, headers: &HeaderMap, body: &[u8], now: i64) -> VerifyError {
    v.verify(headers, body, now).unwrap_err()
}

// ---------------------------------------------------------------------------------------------
// Standard Webhooks
// ---------------------------------------------------------------------------------------------

/// From the standard-webhooks repository (libraries/go/webhook_test.go, TestWebhookSign; the
/// same vector is in the other reference libraries' tests).
const STD_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const STD_ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
const STD_TS: i64 = 1614265330;
const STD_BODY: &[u8] = br#"{"test": 2432232314}"#;
const STD_SIG: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";
/// libraries/go/webhook_asymmetric_test.go, TestAsymmetricWebhookSign: the Ed25519 seed
/// (`whsk_` without prefix) and the expected `v1a` signature of the same message.
const STD_ED_SEED: &str = "VEVTVFNJR05JTkdLRVlET05PVFVTRVRISVNGT1JBTlk=";
const STD_ED_SIG: &str =
    "v1a,tQ9V2XOqn7jL/DQenEFpqIugdBVtiMmER5mhSkXBNwM0mkATuDe6KYYUuxqtaiHeYGb7KaaBRdM5WqyeFiL8Ag==";
/// A decoy taken from the reference tests ("invalid signature is invalid").
const STD_DECOY: &str = "Ceo5qEr07ixe2NLpvHk3FH9bwy/WavXrAFQ/9tdO6mc=";

fn std_headers(id: &str, ts: &str, sig: &str) -> HeaderMap {
    hdrs(&[
        ("webhook-id", id),
        ("webhook-timestamp", ts),
        ("webhook-signature", sig),
    ])
}

fn std_ed_keys() -> (SigningKey, String) {
    let seed: [u8; 32] = B64.decode(STD_ED_SEED).unwrap().try_into().unwrap();
    let signing = SigningKey::from_bytes(&seed);
    let public = format!("whpk_{}", B64.encode(signing.verifying_key().as_bytes()));
    (signing, public)
}

fn std_v1a(signing: &SigningKey, id: &str, ts: i64, body: &[u8]) -> String {
    let msg = [id.as_bytes(), b".", ts.to_string().as_bytes(), b".", body].concat();
    format!("v1a,{}", B64.encode(signing.sign(&msg).to_bytes()))
}

#[test]
fn standard_published_vector_verifies() {
    let v = verifier(Scheme::Standard, &[STD_SECRET]);
    let h = std_headers(STD_ID, &STD_TS.to_string(), STD_SIG);
    let ok = v.verify(&h, STD_BODY, STD_TS).unwrap();
    assert_eq!(ok.signed_id.as_deref(), Some(STD_ID));
    assert_eq!(ok.timestamp, Some(STD_TS));
    assert_eq!(ok.replay_key, format!("id:{STD_ID}"));
    assert_eq!(v.provider(), "standard");
}

#[test]
fn standard_signer_reproduces_published_vector() {
    let s = StandardSigner::new(STD_SECRET.as_bytes()).unwrap();
    assert_eq!(s.sign(STD_ID, STD_TS, STD_BODY), STD_SIG);
    assert!(!format!("{s:?}").contains("MfKQ"));
}

#[test]
fn standard_signer_config_errors() {
    assert!(StandardSigner::new(b"MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").is_err());
    assert!(StandardSigner::new(b"whsec_c2hvcnQ=").is_err()); // "short"
    assert!(StandardSigner::new(b"whsec_***").is_err());
    let (_, public) = std_ed_keys();
    assert!(StandardSigner::new(public.as_bytes()).is_err());
}

#[test]
fn standard_v1a_published_vector_verifies() {
    let (signing, public) = std_ed_keys();
    // Ed25519 is deterministic: dalek reproduces the reference library's signature.
    assert_eq!(std_v1a(&signing, STD_ID, STD_TS, STD_BODY), STD_ED_SIG);
    let v = verifier(Scheme::Standard, &[&public]);
    let h = std_headers(STD_ID, &STD_TS.to_string(), STD_ED_SIG);
    let ok = v.verify(&h, STD_BODY, STD_TS).unwrap();
    assert_eq!(ok.replay_key, format!("id:{STD_ID}"));
    // Tampered body, wrong key.
    assert_eq!(
        err(&v, &h, br#"{"test": 2432232315}"#, STD_TS),
        VerifyError::NoValidSignature
    );
    let other = SigningKey::from_bytes(&[7; 32]);
    let other_pk = format!("whpk_{}", B64.encode(other.verifying_key().as_bytes()));
    let v2 = verifier(Scheme::Standard, &[&other_pk]);
    assert_eq!(
        err(&v2, &h, STD_BODY, STD_TS),
        VerifyError::NoValidSignature
    );
    // The HMAC secret does not verify a v1a signature.
    let v3 = verifier(Scheme::Standard, &[STD_SECRET]);
    assert_eq!(
        err(&v3, &h, STD_BODY, STD_TS),
        VerifyError::NoValidSignature
    );
}

#[test]
fn standard_mixed_hmac_and_ed25519_secrets() {
    let (signing, public) = std_ed_keys();
    let v = verifier(Scheme::Standard, &[STD_SECRET, &public]);
    let ts = STD_TS.to_string();
    // v1 alone, v1a alone, and the spec's "both in one header" form.
    let v1a = std_v1a(&signing, STD_ID, STD_TS, STD_BODY);
    for sig in [STD_SIG.to_string(), v1a.clone(), format!("{STD_SIG} {v1a}")] {
        v.verify(&std_headers(STD_ID, &ts, &sig), STD_BODY, STD_TS)
            .unwrap();
    }
}

/// Generated with the official Python SDK (standardwebhooks 1.1.0), see
/// `standard_sdk_vectors_verify` for the command.
const SDK_STD_SECRET: &str = "whsec_AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
const SDK_COMPACT: &str = r#"{"type":"contact.created","timestamp":"2022-11-03T20:26:10.344522Z","data":{"id":"1f81eb52-5198-4599-803e-771906343485"}}"#;
const SDK_PRETTY: &str = "{\n  \"type\" : \"invoice.paid\",\n\t\"data\": {\"amount\": 1000, \"note\": \"caf\u{e9} \u{2603}\"}\n}\n";

/// Vectors from the providers' own SDKs, generated once and fixed here:
///
/// ```text
/// python3 -m venv /tmp/whvenv && /tmp/whvenv/bin/pip install standardwebhooks==1.1.0 stripe==16.1.0
/// # standardwebhooks.Webhook(SDK_STD_SECRET).sign("msg_2KWPBgLlAfxdpx2AI54pPJ85f4W",
/// #     datetime.fromtimestamp(1674087231, tz=timezone.utc), body)
/// # stripe._webhook.WebhookSignature.generate_signature_header(body,
/// #     "whsec_test_portcullis_0123456789", 1700000000)
/// ```
/// with `body` each of `SDK_COMPACT` and `SDK_PRETTY` (Stripe: the compact one with
/// `payment_intent.succeeded` as its type).
#[test]
fn standard_sdk_vectors_verify() {
    let v = verifier(Scheme::Standard, &[SDK_STD_SECRET]);
    let id = "msg_2KWPBgLlAfxdpx2AI54pPJ85f4W";
    for (body, sig) in [
        (
            SDK_COMPACT,
            "v1,4PMU5Dl90B4kgwxDpwuMZ/cnZ5ztf+Y+kviYQD66rJg=",
        ),
        (
            SDK_PRETTY,
            "v1,VpdS4pm3zPg+t+HZzmmuHl+X/kwaL5U8ed1nULD1yN0=",
        ),
    ] {
        let h = std_headers(id, "1674087231", sig);
        v.verify(&h, body.as_bytes(), 1674087231).unwrap();
        // The same JSON re-serialized (whitespace removed) no longer verifies.
        let reserialized =
            serde_json::to_vec(&serde_json::from_str::<serde_json::Value>(body).unwrap()).unwrap();
        if reserialized != body.as_bytes() {
            assert_eq!(
                err(&v, &h, &reserialized, 1674087231),
                VerifyError::NoValidSignature
            );
        }
        // And our signer agrees with the SDK.
        let signer = StandardSigner::new(SDK_STD_SECRET.as_bytes()).unwrap();
        assert_eq!(signer.sign(id, 1674087231, body.as_bytes()), sig);
    }
}

#[test]
fn standard_tampering_fails() {
    let v = verifier(Scheme::Standard, &[STD_SECRET]);
    let ts = STD_TS.to_string();
    let h = std_headers(STD_ID, &ts, STD_SIG);
    assert_eq!(
        err(&v, &h, br#"{"test": 2432232315}"#, STD_TS),
        VerifyError::NoValidSignature
    );
    assert_eq!(
        err(&v, &h, br#"{"test": 2432232314} "#, STD_TS),
        VerifyError::NoValidSignature
    );
    let h = std_headers(STD_ID, &(STD_TS + 1).to_string(), STD_SIG);
    assert_eq!(err(&v, &h, STD_BODY, STD_TS), VerifyError::NoValidSignature);
    let h = std_headers("msg_p5jXN8AQM9LWM0D4loKWxJeK", &ts, STD_SIG);
    assert_eq!(err(&v, &h, STD_BODY, STD_TS), VerifyError::NoValidSignature);
    let v = verifier(
        Scheme::Standard,
        &["whsec_AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="],
    );
    let h = std_headers(STD_ID, &ts, STD_SIG);
    assert_eq!(err(&v, &h, STD_BODY, STD_TS), VerifyError::NoValidSignature);
}

#[test]
fn standard_timestamp_window_both_directions() {
    let v = verifier(Scheme::Standard, &[STD_SECRET]);
    let h = std_headers(STD_ID, &STD_TS.to_string(), STD_SIG);
    v.verify(&h, STD_BODY, STD_TS + 300).unwrap();
    v.verify(&h, STD_BODY, STD_TS - 300).unwrap();
    assert_eq!(
        err(&v, &h, STD_BODY, STD_TS + 301),
        VerifyError::TimestampTooOld
    );
    assert_eq!(
        err(&v, &h, STD_BODY, STD_TS - 301),
        VerifyError::TimestampInFuture
    );
    // Extreme clocks do not overflow.
    assert_eq!(
        err(&v, &h, STD_BODY, i64::MAX),
        VerifyError::TimestampTooOld
    );
    assert_eq!(
        err(&v, &h, STD_BODY, i64::MIN),
        VerifyError::TimestampInFuture
    );
    let huge = Verifier::new(Scheme::Standard, secrets(&[STD_SECRET]), Duration::MAX).unwrap();
    huge.verify(&h, STD_BODY, i64::MAX).unwrap();
}

#[test]
fn standard_missing_headers() {
    let v = verifier(Scheme::Standard, &[STD_SECRET]);
    let ts = STD_TS.to_string();
    let all = [
        ("webhook-id", STD_ID),
        ("webhook-timestamp", ts.as_str()),
        ("webhook-signature", STD_SIG),
    ];
    for skip in 0..3 {
        let pairs: Vec<_> = all
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != skip)
            .map(|(_, p)| *p)
            .collect();
        assert_eq!(
            err(&v, &hdrs(&pairs), STD_BODY, STD_TS),
            VerifyError::MissingHeader(all[skip].0)
        );
    }
}

#[test]
fn standard_malformed_headers() {
    let v = verifier(Scheme::Standard, &[STD_SECRET]);
    let ts = STD_TS.to_string();
    let sig_malformed = VerifyError::MalformedHeader("webhook-signature");
    for sig in [
        "garbage",
        "v1,",
        "v1,!!!!",
        ",abc",
        "v1a,",
        "v1,Ceo5qEr07ixe2NLpvHk3FH9bwy/WavXrAFQ/9tdO6mc", // unpadded
        "v1,Ceo5qEr07ixe2NLpvHk3FH9bwy/WavXrAFQ/9tdO6mc==", // 33+ bytes / bad padding
    ] {
        assert_eq!(
            err(&v, &std_headers(STD_ID, &ts, sig), STD_BODY, STD_TS),
            sig_malformed,
            "{sig}"
        );
    }
    // Unknown versions only: well formed, but nothing for us.
    assert_eq!(
        err(
            &v,
            &std_headers(STD_ID, &ts, &format!("v2,{STD_DECOY}")),
            STD_BODY,
            STD_TS
        ),
        VerifyError::NoValidSignature
    );
    // Timestamps must be canonical integers.
    for bad in [
        "1614265330.0",
        "+1614265330",
        "-1614265330",
        "01614265330",
        "1e9",
        " 1614265330x",
        "99999999999999999999",
    ] {
        let mut h = std_headers(STD_ID, "1", STD_SIG);
        h.insert("webhook-timestamp", HeaderValue::from_str(bad).unwrap());
        assert_eq!(
            err(&v, &h, STD_BODY, STD_TS),
            VerifyError::MalformedHeader("webhook-timestamp"),
            "{bad}"
        );
    }
    // Ids with a dot (could shift the signed boundaries) or overlong.
    for id in ["msg.1", &"a".repeat(MAX_ID_LEN + 1)] {
        assert_eq!(
            err(&v, &std_headers(id, &ts, STD_SIG), STD_BODY, STD_TS),
            VerifyError::MalformedHeader("webhook-id")
        );
    }
    // Too many signatures.
    let many = vec![format!("v1,{STD_DECOY}"); MAX_SIGNATURES + 1].join(" ");
    assert_eq!(
        err(&v, &std_headers(STD_ID, &ts, &many), STD_BODY, STD_TS),
        sig_malformed
    );
    // Too many Ed25519 signatures.
    let ed_decoy = STD_ED_SIG.to_string();
    let many = vec![ed_decoy; MAX_ED25519_SIGNATURES + 1].join(" ");
    assert_eq!(
        err(&v, &std_headers(STD_ID, &ts, &many), STD_BODY, STD_TS),
        sig_malformed
    );
    // Over-long header.
    let long = format!("{STD_SIG}{}", " ".repeat(MAX_SIGNATURE_HEADER));
    assert_eq!(
        err(&v, &std_headers(STD_ID, &ts, &long), STD_BODY, STD_TS),
        sig_malformed
    );
}

#[test]
fn standard_duplicate_and_non_ascii_headers() {
    let v = verifier(Scheme::Standard, &[STD_SECRET]);
    let ts = STD_TS.to_string();
    // Identical duplicates are harmless.
    let mut h = std_headers(STD_ID, &ts, STD_SIG);
    h.append("webhook-signature", HeaderValue::from_static(STD_SIG));
    v.verify(&h, STD_BODY, STD_TS).unwrap();
    // Different duplicates fail closed, whichever one is valid.
    for (name, other) in [
        (
            "webhook-signature",
            "v1,Ceo5qEr07ixe2NLpvHk3FH9bwy/WavXrAFQ/9tdO6mc=",
        ),
        ("webhook-id", "msg_other"),
        ("webhook-timestamp", "1614265331"),
    ] {
        let mut h = std_headers(STD_ID, &ts, STD_SIG);
        h.append(name, HeaderValue::from_static(other));
        assert_eq!(
            err(&v, &h, STD_BODY, STD_TS),
            VerifyError::MalformedHeader(match name {
                "webhook-signature" => "webhook-signature",
                "webhook-id" => "webhook-id",
                _ => "webhook-timestamp",
            })
        );
    }
    // Non-ASCII header bytes.
    let mut h = std_headers(STD_ID, &ts, STD_SIG);
    h.insert("webhook-id", HeaderValue::from_bytes(b"msg_\xe9").unwrap());
    assert_eq!(
        err(&v, &h, STD_BODY, STD_TS),
        VerifyError::MalformedHeader("webhook-id")
    );
}

#[test]
fn standard_decoys_and_rotation() {
    let new = "whsec_AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
    let v = verifier(Scheme::Standard, &[STD_SECRET, new]);
    let ts = STD_TS.to_string();
    // The reference libraries' multi-signature case: decoys around the valid one.
    let list = format!("v1,{STD_DECOY} v2,{STD_DECOY} {STD_SIG} v1,{STD_DECOY}");
    v.verify(&std_headers(STD_ID, &ts, &list), STD_BODY, STD_TS)
        .unwrap();
    // Signed with the new secret only, and with the old only: both accepted.
    let with_new = StandardSigner::new(new.as_bytes())
        .unwrap()
        .sign(STD_ID, STD_TS, STD_BODY);
    v.verify(&std_headers(STD_ID, &ts, &with_new), STD_BODY, STD_TS)
        .unwrap();
    v.verify(&std_headers(STD_ID, &ts, STD_SIG), STD_BODY, STD_TS)
        .unwrap();
    // Decoys only.
    let list = format!("v1,{STD_DECOY} v1,{STD_DECOY}");
    assert_eq!(
        err(&v, &std_headers(STD_ID, &ts, &list), STD_BODY, STD_TS),
        VerifyError::NoValidSignature
    );
}

#[test]
fn standard_non_utf8_body() {
    let signer = StandardSigner::new(SDK_STD_SECRET.as_bytes()).unwrap();
    let body = b"\xff\xfe\x00binary\x80";
    let sig = signer.sign("msg_bin", 1700000000, body);
    let v = verifier(Scheme::Standard, &[SDK_STD_SECRET]);
    let h = std_headers("msg_bin", "1700000000", &sig);
    v.verify(&h, body, 1700000000).unwrap();
    assert_eq!(
        err(&v, &h, b"\xff\xfe\x00binary\x81", 1700000000),
        VerifyError::NoValidSignature
    );
}

#[test]
fn standard_config_errors() {
    let cases: [(&[&str], ConfigError); 8] = [
        (&[], ConfigError::NoSecrets),
        (
            &["MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"],
            ConfigError::BadSecret {
                index: 0,
                reason: "expected a whsec_ or whpk_ prefix",
            },
        ),
        (
            &[STD_SECRET, "whsec_!!notbase64"],
            ConfigError::BadSecret {
                index: 1,
                reason: "invalid base64 after whsec_",
            },
        ),
        (
            &["whsec_"],
            ConfigError::BadSecret {
                index: 0,
                reason: "empty key after whsec_",
            },
        ),
        (
            &["whpk_AAAA"],
            ConfigError::BadSecret {
                index: 0,
                reason: "a whpk_ public key must be 32 bytes",
            },
        ),
        (
            &["whsk_VEVTVFNJR05JTkdLRVlET05PVFVTRVRISVNGT1JBTlk="],
            ConfigError::BadSecret {
                index: 0,
                reason: "a whsk_ private key: configure the matching whpk_ public key instead",
            },
        ),
        (
            &["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\n"],
            ConfigError::BadSecret {
                index: 0,
                reason: "leading or trailing whitespace",
            },
        ),
        (
            // The identity point: a small-order key any signature could be forged for.
            &["whpk_AQAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="],
            ConfigError::BadSecret {
                index: 0,
                reason: "weak (small-order) Ed25519 public key",
            },
        ),
    ];
    for (list, expected) in cases {
        assert_eq!(
            Verifier::new(Scheme::Standard, secrets(list), TOL).unwrap_err(),
            expected
        );
    }
    let nine = vec![STD_SECRET; MAX_SECRETS + 1];
    assert_eq!(
        Verifier::new(Scheme::Standard, secrets(&nine), TOL).unwrap_err(),
        ConfigError::TooManySecrets(MAX_SECRETS + 1)
    );
    // Unpadded base64 is accepted for secrets, as the reference libraries do.
    Verifier::new(
        Scheme::Standard,
        secrets(&["whsec_AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8"]),
        TOL,
    )
    .unwrap();
    // Errors and Debug never show the secret.
    let e = Verifier::new(Scheme::Standard, secrets(&["whsec_!!topsecret"]), TOL).unwrap_err();
    assert!(!e.to_string().contains("topsecret"));
    let v = verifier(Scheme::Stripe, &["whsec_topsecret"]);
    assert!(!format!("{v:?}").contains("topsecret"));
}

// ---------------------------------------------------------------------------------------------
// Stripe
// ---------------------------------------------------------------------------------------------

const STRIPE_SECRET: &str = "whsec_test_portcullis_0123456789";
const STRIPE_TS: i64 = 1700000000;

fn stripe_sig(secret: &str, ts: i64, body: &[u8]) -> String {
    hex256(secret, &[ts.to_string().as_bytes(), b".", body])
}

fn stripe_headers(value: &str) -> HeaderMap {
    hdrs(&[("stripe-signature", value)])
}

#[test]
fn stripe_sdk_vectors_verify() {
    // stripe-python 16.1.0 `WebhookSignature.generate_signature_header`; see
    // `standard_sdk_vectors_verify` for the command.
    let v = verifier(Scheme::Stripe, &[STRIPE_SECRET]);
    let compact = SDK_COMPACT.replace("contact.created", "payment_intent.succeeded");
    for (body, header) in [
        (
            compact.as_str(),
            "t=1700000000,v1=02154f7b9ba5bc724d88f51da4a54d56d6827e9e4589d2041f7ec6c07b6f3fc3",
        ),
        (
            SDK_PRETTY,
            "t=1700000000,v1=a39eeb84c71c0f0895fab05f47306bb826582f788bf84d2f89bc4d35a43137e7",
        ),
    ] {
        let ok = v
            .verify(&stripe_headers(header), body.as_bytes(), STRIPE_TS)
            .unwrap();
        assert_eq!(ok.timestamp, Some(STRIPE_TS));
        assert_eq!(ok.signed_id, None);
        assert_eq!(
            ok.replay_key,
            format!("h:{}", sha256_hex(&[b"1700000000.", body.as_bytes()]))
        );
    }
    assert_eq!(v.provider(), "stripe");
}

#[test]
fn stripe_failures() {
    let v = verifier(Scheme::Stripe, &[STRIPE_SECRET]);
    let body = br#"{"type":"charge.succeeded"}"#;
    let sig = stripe_sig(STRIPE_SECRET, STRIPE_TS, body);
    let good = format!("t={STRIPE_TS},v1={sig}");
    v.verify(&stripe_headers(&good), body, STRIPE_TS).unwrap();
    // Uppercase hex is the same signature.
    let upper = format!("t={STRIPE_TS},v1={}", sig.to_uppercase());
    v.verify(&stripe_headers(&upper), body, STRIPE_TS).unwrap();
    // Tampered body and timestamp, wrong secret.
    assert_eq!(
        err(
            &v,
            &stripe_headers(&good),
            br#"{"type":"charge.succeedeD"}"#,
            STRIPE_TS
        ),
        VerifyError::NoValidSignature
    );
    let moved = format!("t={},v1={sig}", STRIPE_TS + 1);
    assert_eq!(
        err(&v, &stripe_headers(&moved), body, STRIPE_TS),
        VerifyError::NoValidSignature
    );
    let wrong = verifier(Scheme::Stripe, &["whsec_other"]);
    assert_eq!(
        err(&wrong, &stripe_headers(&good), body, STRIPE_TS),
        VerifyError::NoValidSignature
    );
    // Window.
    assert_eq!(
        err(&v, &stripe_headers(&good), body, STRIPE_TS + 301),
        VerifyError::TimestampTooOld
    );
    assert_eq!(
        err(&v, &stripe_headers(&good), body, STRIPE_TS - 301),
        VerifyError::TimestampInFuture
    );
    // Missing.
    assert_eq!(
        err(&v, &HeaderMap::new(), body, STRIPE_TS),
        VerifyError::MissingHeader("stripe-signature")
    );
    // Malformed.
    let m = VerifyError::MalformedHeader("stripe-signature");
    for bad in [
        format!("v1={sig}"),
        format!("t={STRIPE_TS}"),
        format!("t={STRIPE_TS},v0={sig}"),
        format!("t=abc,v1={sig}"),
        format!("t=1.5,v1={sig}"),
        format!("t={STRIPE_TS},t={STRIPE_TS},v1={sig}"),
        format!("t={STRIPE_TS},v1={sig},"),
        format!("t={STRIPE_TS}, v1={sig}"),
        format!("t={STRIPE_TS},v1=zz{}", &sig[2..]),
        format!("t={STRIPE_TS},v1={}", &sig[1..]),
        format!("t={STRIPE_TS},garbage,v1={sig}"),
        format!("t={STRIPE_TS}{}", ",v1=00".repeat(40)),
    ] {
        assert_eq!(err(&v, &stripe_headers(&bad), body, STRIPE_TS), m, "{bad}");
    }
}

#[test]
fn stripe_decoys_and_rotation() {
    let old = "whsec_old_secret";
    let v = verifier(Scheme::Stripe, &[old, STRIPE_SECRET]);
    let body = b"{}";
    let decoy = "5257a869e7ecebeda32affa62cdca3fa51cad7e77a0e56ff536d0ce8e108d8bd";
    let valid = stripe_sig(STRIPE_SECRET, STRIPE_TS, body);
    let list = format!("t={STRIPE_TS},v1={decoy},v1={valid},v0={decoy}");
    v.verify(&stripe_headers(&list), body, STRIPE_TS).unwrap();
    let with_old = format!("t={STRIPE_TS},v1={}", stripe_sig(old, STRIPE_TS, body));
    v.verify(&stripe_headers(&with_old), body, STRIPE_TS)
        .unwrap();
    let decoys_only = format!("t={STRIPE_TS},v1={decoy},v1={decoy}");
    assert_eq!(
        err(&v, &stripe_headers(&decoys_only), body, STRIPE_TS),
        VerifyError::NoValidSignature
    );
    // Non-UTF-8 body.
    let bin = b"\x00\xff{ }";
    let h = format!("t={STRIPE_TS},v1={}", stripe_sig(old, STRIPE_TS, bin));
    v.verify(&stripe_headers(&h), bin, STRIPE_TS).unwrap();
}

// ---------------------------------------------------------------------------------------------
// GitHub
// ---------------------------------------------------------------------------------------------

/// GitHub's documentation ("Validating webhook deliveries", testing section).
const GH_SECRET: &str = "It's a Secret to Everybody";
const GH_BODY: &[u8] = b"Hello, World!";
const GH_SIG: &str = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";

fn gh_headers(sig: &str) -> HeaderMap {
    hdrs(&[("x-hub-signature-256", sig), ("x-github-event", "push")])
}

#[test]
fn github_published_vector_and_failures() {
    let v = verifier(Scheme::Github, &[GH_SECRET]);
    let ok = v.verify(&gh_headers(GH_SIG), GH_BODY, 0).unwrap();
    assert_eq!(ok.timestamp, None);
    assert_eq!(ok.signed_id, None);
    assert_eq!(ok.replay_key, format!("h:{}", sha256_hex(&[GH_BODY])));
    assert_eq!(v.provider(), "github");
    // Time plays no part.
    v.verify(&gh_headers(GH_SIG), GH_BODY, i64::MAX).unwrap();
    assert_eq!(
        err(&v, &gh_headers(GH_SIG), b"Hello, World?", 0),
        VerifyError::NoValidSignature
    );
    let wrong = verifier(Scheme::Github, &["It's a Secret to Everybody!"]);
    assert_eq!(
        err(&wrong, &gh_headers(GH_SIG), GH_BODY, 0),
        VerifyError::NoValidSignature
    );
    assert_eq!(
        err(&v, &hdrs(&[("x-hub-signature", "sha1=00")]), GH_BODY, 0),
        VerifyError::MissingHeader("x-hub-signature-256")
    );
    for bad in [
        "757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17",
        "sha1=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17",
        "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e1",
        "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17 ",
        "SHA256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17",
    ] {
        assert_eq!(
            err(&v, &gh_headers(bad), GH_BODY, 0),
            VerifyError::MalformedHeader("x-hub-signature-256"),
            "{bad}"
        );
    }
}

#[test]
fn github_rotation_and_exact_bytes() {
    let v = verifier(Scheme::Github, &["new-secret", GH_SECRET]);
    v.verify(&gh_headers(GH_SIG), GH_BODY, 0).unwrap();
    let body = b"{\"a\": 1,\n \"b\":\"\xc3\xa9\"}\r\n";
    let sig = format!("sha256={}", hex256("new-secret", &[body]));
    v.verify(&gh_headers(&sig), body, 0).unwrap();
    assert_eq!(
        err(
            &v,
            &gh_headers(&sig),
            b"{\"a\": 1,\n \"b\":\"\xc3\xa9\"}\n",
            0
        ),
        VerifyError::NoValidSignature
    );
    let bin = b"\xff\x00\xfe";
    let sig = format!("sha256={}", hex256(GH_SECRET, &[bin]));
    v.verify(&gh_headers(&sig), bin, 0).unwrap();
}

// ---------------------------------------------------------------------------------------------
// Slack
// ---------------------------------------------------------------------------------------------

/// Slack's documentation ("Verifying requests from Slack", walk-through).
const SLACK_SECRET: &str = "8f742231b10e8888abcd99yyyzzz85a5";
const SLACK_TS: i64 = 1531420618;
const SLACK_BODY: &[u8] = b"token=xyzz0WbapA4vBCDEFasx0q6G&team_id=T1DC2JH3J&team_domain=testteamnow&channel_id=G8PSS9T3V&channel_name=foobar&user_id=U2CERLKJA&user_name=roadrunner&command=%2Fwebhook-collect&text=&response_url=https%3A%2F%2Fhooks.slack.com%2Fcommands%2FT1DC2JH3J%2F397700885554%2F96rGlfmibIGlgcZRskXaIFfN&trigger_id=398738663015.47445629121.803a0bc887a14d10d2c447fce8b6703c";
const SLACK_SIG: &str = "v0=a2114d57b48eac39b9ad189dd8316235a7b4a8d21a10bd27519666489c69b503";

fn slack_headers(ts: &str, sig: &str) -> HeaderMap {
    hdrs(&[
        ("x-slack-request-timestamp", ts),
        ("x-slack-signature", sig),
    ])
}

#[test]
fn slack_published_vector_and_failures() {
    let v = verifier(Scheme::Slack, &[SLACK_SECRET]);
    let ts = SLACK_TS.to_string();
    let h = slack_headers(&ts, SLACK_SIG);
    let ok = v.verify(&h, SLACK_BODY, SLACK_TS).unwrap();
    assert_eq!(ok.timestamp, Some(SLACK_TS));
    assert_eq!(
        ok.replay_key,
        format!("h:{}", sha256_hex(&[b"v0:1531420618:", SLACK_BODY]))
    );
    assert_eq!(v.provider(), "slack");
    // Tampering.
    let mut body = SLACK_BODY.to_vec();
    body[0] = b'T';
    assert_eq!(err(&v, &h, &body, SLACK_TS), VerifyError::NoValidSignature);
    let moved = slack_headers(&(SLACK_TS - 1).to_string(), SLACK_SIG);
    assert_eq!(
        err(&v, &moved, SLACK_BODY, SLACK_TS),
        VerifyError::NoValidSignature
    );
    let wrong = verifier(Scheme::Slack, &["8f742231b10e8888abcd99yyyzzz85a6"]);
    assert_eq!(
        err(&wrong, &h, SLACK_BODY, SLACK_TS),
        VerifyError::NoValidSignature
    );
    // Window.
    assert_eq!(
        err(&v, &h, SLACK_BODY, SLACK_TS + 301),
        VerifyError::TimestampTooOld
    );
    assert_eq!(
        err(&v, &h, SLACK_BODY, SLACK_TS - 301),
        VerifyError::TimestampInFuture
    );
    // Missing.
    assert_eq!(
        err(
            &v,
            &hdrs(&[("x-slack-signature", SLACK_SIG)]),
            SLACK_BODY,
            SLACK_TS
        ),
        VerifyError::MissingHeader("x-slack-request-timestamp")
    );
    assert_eq!(
        err(
            &v,
            &hdrs(&[("x-slack-request-timestamp", &ts)]),
            SLACK_BODY,
            SLACK_TS
        ),
        VerifyError::MissingHeader("x-slack-signature")
    );
    // Malformed.
    for bad in [
        "a2114d57b48eac39b9ad189dd8316235a7b4a8d21a10bd27519666489c69b503",
        "v1=a2114d57b48eac39b9ad189dd8316235a7b4a8d21a10bd27519666489c69b503",
        "v0=a2114d57b48eac39b9ad189dd8316235a7b4a8d21a10bd27519666489c69b5",
    ] {
        assert_eq!(
            err(&v, &slack_headers(&ts, bad), SLACK_BODY, SLACK_TS),
            VerifyError::MalformedHeader("x-slack-signature")
        );
    }
    assert_eq!(
        err(
            &v,
            &slack_headers("1531420618.5", SLACK_SIG),
            SLACK_BODY,
            SLACK_TS
        ),
        VerifyError::MalformedHeader("x-slack-request-timestamp")
    );
}

#[test]
fn slack_rotation() {
    let v = verifier(Scheme::Slack, &["newer-signing-secret", SLACK_SECRET]);
    let ts = SLACK_TS.to_string();
    v.verify(&slack_headers(&ts, SLACK_SIG), SLACK_BODY, SLACK_TS)
        .unwrap();
    let body = br#"{"type":"event_callback","event":{"type":"app_mention"}}"#;
    let sig = format!(
        "v0={}",
        hex256("newer-signing-secret", &[b"v0:", ts.as_bytes(), b":", body])
    );
    v.verify(&slack_headers(&ts, &sig), body, SLACK_TS).unwrap();
}

// ---------------------------------------------------------------------------------------------
// Shopify
// ---------------------------------------------------------------------------------------------

const SHOPIFY_SECRET: &str = "shpss_portcullis_test_secret";
const SHOPIFY_BODY: &[u8] =
    br#"{"id":820982911946154508,"email":"jon@example.com","topic":"orders/create"}"#;
/// Computed independently with Python's `hmac` and `base64` (Shopify documents the algorithm,
/// base64 of HMAC-SHA256 over the raw body, but publishes no vector):
/// `base64.b64encode(hmac.new(SECRET, BODY, hashlib.sha256).digest())`.
const SHOPIFY_SIG: &str = "AzW2fw+pHXRUEN9moKDRKPkX9yRNKzPS1IRbyrKoA+E=";

fn shopify_headers(sig: &str) -> HeaderMap {
    hdrs(&[
        ("x-shopify-hmac-sha256", sig),
        ("x-shopify-topic", "orders/create"),
    ])
}

#[test]
fn shopify_vector_and_failures() {
    let v = verifier(Scheme::Shopify, &[SHOPIFY_SECRET]);
    let ok = v
        .verify(&shopify_headers(SHOPIFY_SIG), SHOPIFY_BODY, 0)
        .unwrap();
    assert_eq!(ok.timestamp, None);
    assert_eq!(ok.replay_key, format!("h:{}", sha256_hex(&[SHOPIFY_BODY])));
    assert_eq!(v.provider(), "shopify");
    let mut body = SHOPIFY_BODY.to_vec();
    body.push(b'\n');
    assert_eq!(
        err(&v, &shopify_headers(SHOPIFY_SIG), &body, 0),
        VerifyError::NoValidSignature
    );
    let wrong = verifier(Scheme::Shopify, &["shpss_other"]);
    assert_eq!(
        err(&wrong, &shopify_headers(SHOPIFY_SIG), SHOPIFY_BODY, 0),
        VerifyError::NoValidSignature
    );
    assert_eq!(
        err(&v, &HeaderMap::new(), SHOPIFY_BODY, 0),
        VerifyError::MissingHeader("x-shopify-hmac-sha256")
    );
    for bad in [
        "AzW2fw+pHXRUEN9moKDRKPkX9yRNKzPS1IRbyrKoA+E",
        "AzW2fw-pHXRUEN9moKDRKPkX9yRNKzPS1IRbyrKoA-E=",
        "sha256=AzW2fw+pHXRUEN9moKDRKPkX9yRNKzPS1IRbyrKoA+E=",
        "0335b67f0fa91d745410df66a0a0d128f917f7244d2b33d2d4846fcab2a803e1",
    ] {
        assert_eq!(
            err(&v, &shopify_headers(bad), SHOPIFY_BODY, 0),
            VerifyError::MalformedHeader("x-shopify-hmac-sha256"),
            "{bad}"
        );
    }
}

#[test]
fn shopify_rotation_and_binary_body() {
    let v = verifier(Scheme::Shopify, &["shpss_new", SHOPIFY_SECRET]);
    v.verify(&shopify_headers(SHOPIFY_SIG), SHOPIFY_BODY, 0)
        .unwrap();
    let bin = b"\x80\x81 \x00";
    let sig = B64.encode(hmac_sha256(b"shpss_new", &[bin]));
    v.verify(&shopify_headers(&sig), bin, 0).unwrap();
}

// ---------------------------------------------------------------------------------------------
// Generic HMAC
// ---------------------------------------------------------------------------------------------

const GEN_SECRET: &str = "generic-secret-0123456789";
const GEN_BODY: &[u8] = br#"{"event":"build.finished","ok":true}"#;
/// Python: `"sha512=" + hmac.new(SECRET, b"1700000000." + BODY, hashlib.sha512).hexdigest()`.
const GEN_SIG512: &str = "sha512=82327162e35a34a284946e27c5f701d2e41f0261406af0f76188dc8467d1329ed9c1fcbfb7b75faa2c75422b6cc865e039b5b5ddf562cf0d59298076b8ac6a67";
/// Python: `base64.b64encode(hmac.new(SECRET, BODY, hashlib.sha256).digest())`.
const GEN_SIG256: &str = "qF3UGPTSmjqgw7FTTW0UHSQ7wgBs2JVTWzqmFRmgoRg=";

fn gen512() -> Scheme {
    Scheme::Hmac(HmacScheme {
        signature_header: HeaderName::from_static("x-signature"),
        algorithm: HmacAlgorithm::Sha512,
        encoding: SigEncoding::Hex,
        prefix: Some("sha512=".into()),
        timestamp_header: Some(HeaderName::from_static("x-timestamp")),
        template: "{timestamp}.{body}".into(),
    })
}

fn gen256() -> Scheme {
    Scheme::Hmac(HmacScheme {
        signature_header: HeaderName::from_static("x-signature"),
        algorithm: HmacAlgorithm::Sha256,
        encoding: SigEncoding::Base64,
        prefix: None,
        timestamp_header: None,
        template: "{body}".into(),
    })
}

fn gen_headers(sig: &str, ts: &str) -> HeaderMap {
    hdrs(&[("x-signature", sig), ("x-timestamp", ts)])
}

#[test]
fn generic_sha512_timestamped() {
    let v = verifier(gen512(), &[GEN_SECRET]);
    let h = gen_headers(GEN_SIG512, "1700000000");
    let ok = v.verify(&h, GEN_BODY, 1700000000).unwrap();
    assert_eq!(ok.timestamp, Some(1700000000));
    assert_eq!(
        ok.replay_key,
        format!("h:{}", sha256_hex(&[b"1700000000.", GEN_BODY]))
    );
    assert_eq!(v.provider(), "hmac");
    assert_eq!(
        err(
            &v,
            &h,
            br#"{"event":"build.finished","ok":false}"#,
            1700000000
        ),
        VerifyError::NoValidSignature
    );
    assert_eq!(
        err(
            &v,
            &gen_headers(GEN_SIG512, "1700000001"),
            GEN_BODY,
            1700000000
        ),
        VerifyError::NoValidSignature
    );
    assert_eq!(
        err(&v, &h, GEN_BODY, 1700000301),
        VerifyError::TimestampTooOld
    );
    assert_eq!(
        err(&v, &h, GEN_BODY, 1699999699),
        VerifyError::TimestampInFuture
    );
    assert_eq!(
        err(
            &v,
            &hdrs(&[("x-signature", GEN_SIG512)]),
            GEN_BODY,
            1700000000
        ),
        VerifyError::MissingHeader("timestamp")
    );
    assert_eq!(
        err(
            &v,
            &hdrs(&[("x-timestamp", "1700000000")]),
            GEN_BODY,
            1700000000
        ),
        VerifyError::MissingHeader("signature")
    );
    // Prefix required; the SHA-256 length is not accepted for SHA-512.
    for bad in [&GEN_SIG512[7..], &GEN_SIG512[..71], "sha512=00"] {
        assert_eq!(
            err(&v, &gen_headers(bad, "1700000000"), GEN_BODY, 1700000000),
            VerifyError::MalformedHeader("signature")
        );
    }
    let wrong = verifier(gen512(), &["generic-secret-012345678"]);
    assert_eq!(
        err(&wrong, &h, GEN_BODY, 1700000000),
        VerifyError::NoValidSignature
    );
    // Rotation.
    let both = verifier(gen512(), &["next", GEN_SECRET]);
    both.verify(&h, GEN_BODY, 1700000000).unwrap();
    let next = format!(
        "sha512={}",
        encode_hex(&hmac_sha512(b"next", &[b"1700000000.", GEN_BODY]))
    );
    both.verify(&gen_headers(&next, "1700000000"), GEN_BODY, 1700000000)
        .unwrap();
}

#[test]
fn generic_sha256_base64_untimed() {
    let v = verifier(gen256(), &[GEN_SECRET]);
    let ok = v
        .verify(&hdrs(&[("x-signature", GEN_SIG256)]), GEN_BODY, 0)
        .unwrap();
    assert_eq!(ok.timestamp, None);
    assert_eq!(ok.replay_key, format!("h:{}", sha256_hex(&[GEN_BODY])));
    assert_eq!(
        err(&v, &hdrs(&[("x-signature", GEN_SIG256)]), b"{}", 0),
        VerifyError::NoValidSignature
    );
    assert_eq!(
        err(&v, &hdrs(&[("x-signature", "not base64")]), GEN_BODY, 0),
        VerifyError::MalformedHeader("signature")
    );
}

#[test]
fn generic_template_validation() {
    let with = |template: &str, ts: bool, prefix: Option<&str>| {
        Verifier::new(
            Scheme::Hmac(HmacScheme {
                signature_header: HeaderName::from_static("x-signature"),
                algorithm: HmacAlgorithm::Sha256,
                encoding: SigEncoding::Hex,
                prefix: prefix.map(str::to_owned),
                timestamp_header: ts.then(|| HeaderName::from_static("x-timestamp")),
                template: template.into(),
            }),
            secrets(&["k"]),
            TOL,
        )
    };
    with("{body}", false, None).unwrap();
    with("v1:{timestamp}:{body}", true, Some("v1=")).unwrap();
    with("{body}.{timestamp}", true, None).unwrap();
    for (template, ts, prefix) in [
        ("", false, None),
        ("{timestamp}", true, None),
        ("{body}{body}", false, None),
        ("{body}", true, None),
        ("{timestamp}.{body}", false, None),
        ("{timestamp}{timestamp}{body}", true, None),
        ("{id}.{body}", false, None),
        ("{Body}", false, None),
        ("{body}}", false, None),
        ("{{body}", false, None),
        ("{body", false, None),
        ("{body}", false, Some("")),
        ("{body}", false, Some("sha 256=")),
    ] {
        assert!(
            matches!(with(template, ts, prefix), Err(ConfigError::BadTemplate(_))),
            "{template:?} {ts} {prefix:?}"
        );
    }
    assert!(with(&"x".repeat(2000), false, None).is_err());
}

#[test]
fn generic_literal_template_parts() {
    let scheme = Scheme::Hmac(HmacScheme {
        signature_header: HeaderName::from_static("x-sig"),
        algorithm: HmacAlgorithm::Sha256,
        encoding: SigEncoding::Hex,
        prefix: None,
        timestamp_header: Some(HeaderName::from_static("x-ts")),
        template: "ts={timestamp}&body={body}&end".into(),
    });
    let v = verifier(scheme, &["k"]);
    let sig = hex256("k", &[b"ts=10&body=", b"abc", b"&end"]);
    let ok = v
        .verify(&hdrs(&[("x-sig", &sig), ("x-ts", "10")]), b"abc", 10)
        .unwrap();
    assert_eq!(
        ok.replay_key,
        format!("h:{}", sha256_hex(&[b"ts=10&body=abc&end"]))
    );
}

// ---------------------------------------------------------------------------------------------
// Shared properties
// ---------------------------------------------------------------------------------------------

#[test]
fn replay_keys_are_stable_and_bound_to_signed_material() {
    // Same message: same key.
    let v = verifier(Scheme::Stripe, &[STRIPE_SECRET]);
    let body = b"{}";
    let h = stripe_headers(&format!(
        "t={STRIPE_TS},v1={}",
        stripe_sig(STRIPE_SECRET, STRIPE_TS, body)
    ));
    let a = v.verify(&h, body, STRIPE_TS).unwrap();
    let b = v.verify(&h, body, STRIPE_TS + 10).unwrap();
    assert_eq!(a.replay_key, b.replay_key);
    // The same body re-signed at another time (a provider retry) is a different delivery.
    let h2 = stripe_headers(&format!(
        "t={},v1={}",
        STRIPE_TS + 1,
        stripe_sig(STRIPE_SECRET, STRIPE_TS + 1, body)
    ));
    assert_ne!(
        v.verify(&h2, body, STRIPE_TS).unwrap().replay_key,
        a.replay_key
    );
    // Adding decoys or unsigned headers does not change the key.
    let mut h3 = stripe_headers(&format!(
        "t={STRIPE_TS},v1={},v1={}",
        "00".repeat(32),
        stripe_sig(STRIPE_SECRET, STRIPE_TS, body)
    ));
    h3.insert("x-request-id", HeaderValue::from_static("anything"));
    assert_eq!(
        v.verify(&h3, body, STRIPE_TS).unwrap().replay_key,
        a.replay_key
    );
    // Standard: the signed id, whichever signature verified it.
    let (signing, public) = std_ed_keys();
    let v = verifier(Scheme::Standard, &[STD_SECRET, &public]);
    let ts = STD_TS.to_string();
    let k1 = v
        .verify(&std_headers(STD_ID, &ts, STD_SIG), STD_BODY, STD_TS)
        .unwrap()
        .replay_key;
    let v1a = std_v1a(&signing, STD_ID, STD_TS, STD_BODY);
    let k2 = v
        .verify(&std_headers(STD_ID, &ts, &v1a), STD_BODY, STD_TS)
        .unwrap()
        .replay_key;
    assert_eq!(k1, k2);
    assert_eq!(k1, format!("id:{STD_ID}"));
}

#[test]
fn verify_errors_never_show_signatures() {
    let v = verifier(Scheme::Github, &[GH_SECRET]);
    let e = err(&v, &gh_headers(GH_SIG), b"tampered", 0);
    let shown = format!("{e} {e:?}");
    assert!(!shown.contains("757107"));
    assert!(!shown.contains("Secret"));
}

#[test]
fn verifier_is_send_sync() {
    fn check<T: Send + Sync + 'static>() {}
    check::<Verifier>();
    check::<StandardSigner>();
}

#[test]
fn event_types() {
    let none = HeaderMap::new();
    assert_eq!(
        event_type(&Scheme::Standard, &none, SDK_COMPACT.as_bytes()).as_deref(),
        Some("contact.created")
    );
    assert_eq!(
        event_type(
            &Scheme::Stripe,
            &none,
            br#"{"id":"evt_1","type":"charge.succeeded","data":{"object":{"type":"card"}}}"#
        )
        .as_deref(),
        Some("charge.succeeded")
    );
    assert_eq!(
        event_type(
            &Scheme::Slack,
            &none,
            br#"{"type":"event_callback","event":{"type":"app_mention","text":"hi"}}"#
        )
        .as_deref(),
        Some("app_mention")
    );
    assert_eq!(
        event_type(
            &Scheme::Slack,
            &none,
            br#"{"type":"url_verification","challenge":"x"}"#
        )
        .as_deref(),
        Some("url_verification")
    );
    assert_eq!(event_type(&Scheme::Slack, &none, SLACK_BODY), None);
    for odd in [r#"{"type":"a\u0000b"}"#, r#"{"type":"line\nbreak"}"#] {
        assert_eq!(
            event_type(&Scheme::Standard, &none, odd.as_bytes()),
            None,
            "{odd}"
        );
    }
    assert_eq!(
        event_type(&Scheme::Github, &gh_headers(GH_SIG), GH_BODY).as_deref(),
        Some("push")
    );
    assert_eq!(
        event_type(
            &Scheme::Shopify,
            &shopify_headers(SHOPIFY_SIG),
            SHOPIFY_BODY
        )
        .as_deref(),
        Some("orders/create")
    );
    assert_eq!(event_type(&gen256(), &none, GEN_BODY), None);
    // Absent, ambiguous or odd: None.
    assert_eq!(event_type(&Scheme::Github, &none, b"{}"), None);
    let dup = hdrs(&[("x-github-event", "push"), ("x-github-event", "ping")]);
    assert_eq!(event_type(&Scheme::Github, &dup, b"{}"), None);
    assert_eq!(event_type(&Scheme::Stripe, &none, br#"{"type":1}"#), None);
    assert_eq!(
        event_type(&Scheme::Stripe, &none, br#"{"type":"a","type":"b"}"#),
        None
    );
    assert_eq!(event_type(&Scheme::Stripe, &none, br#"{"type":""}"#), None);
    assert_eq!(event_type(&Scheme::Stripe, &none, b"\xff"), None);
    let long = format!(r#"{{"type":"{}"}}"#, "a".repeat(300));
    assert_eq!(event_type(&Scheme::Stripe, &none, long.as_bytes()), None);
}

// ---------------------------------------------------------------------------------------------
// No input panics
// ---------------------------------------------------------------------------------------------

mod props {
    use super::*;
    use proptest::prelude::*;

    fn all_verifiers() -> Vec<Verifier> {
        let (_, public) = std_ed_keys();
        vec![
            verifier(Scheme::Standard, &[STD_SECRET, &public]),
            verifier(Scheme::Stripe, &[STRIPE_SECRET]),
            verifier(Scheme::Github, &[GH_SECRET]),
            verifier(Scheme::Slack, &[SLACK_SECRET]),
            verifier(Scheme::Shopify, &[SHOPIFY_SECRET]),
            verifier(gen512(), &[GEN_SECRET]),
            verifier(gen256(), &[GEN_SECRET]),
        ]
    }

    const NAMES: [&str; 12] = [
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
        "x-github-event",
        "x-shopify-topic",
    ];

    /// Header values: arbitrary bytes, or text that looks like the real thing.
    fn value() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..300),
            "(v1,|v1a,|v2,|t=|v1=|v0=|sha256=|sha512=| |,|=|[A-Za-z0-9+/=]{0,90}|[0-9a-f]{0,130}|[0-9]{0,14}){0,12}"
                .prop_map(String::into_bytes),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn arbitrary_headers_and_bodies_never_panic(
            pairs in proptest::collection::vec((0..NAMES.len(), value()), 0..8),
            body in proptest::collection::vec(any::<u8>(), 0..200),
            now in any::<i64>(),
        ) {
            let mut headers = HeaderMap::new();
            for (name, value) in pairs {
                if let Ok(value) = HeaderValue::from_bytes(&value) {
                    headers.append(NAMES[name], value);
                }
            }
            for v in all_verifiers() {
                let _ = v.verify(&headers, &body, now);
                let _ = event_type(v.scheme(), &headers, &body);
            }
        }

        #[test]
        fn signed_deliveries_verify_and_any_body_change_fails(
            body in proptest::collection::vec(any::<u8>(), 0..200),
            flip in any::<prop::sample::Index>(),
            bit in 0u8..8,
            ts in 0i64..4_000_000_000,
        ) {
            let signer = StandardSigner::new(SDK_STD_SECRET.as_bytes()).unwrap();
            let v = verifier(Scheme::Standard, &[SDK_STD_SECRET]);
            let sig = signer.sign("msg_x", ts, &body);
            let h = std_headers("msg_x", &ts.to_string(), &sig);
            prop_assert!(v.verify(&h, &body, ts).is_ok());
            if !body.is_empty() {
                let mut tampered = body.clone();
                tampered[flip.index(body.len())] ^= 1 << bit;
                prop_assert_eq!(v.verify(&h, &tampered, ts), Err(VerifyError::NoValidSignature));
            }
        }

        #[test]
        fn arbitrary_secrets_never_panic(secret in proptest::collection::vec(any::<u8>(), 0..80)) {
            for scheme in [Scheme::Standard, Scheme::Stripe, gen512()] {
                let _ = Verifier::new(scheme, vec![Zeroizing::new(secret.clone())], TOL);
            }
            let mut prefixed = b"whsec_".to_vec();
            prefixed.extend_from_slice(&secret);
            let _ = StandardSigner::new(&prefixed);
            let mut prefixed = b"whpk_".to_vec();
            prefixed.extend_from_slice(&secret);
            let _ = Verifier::new(Scheme::Standard, vec![Zeroizing::new(prefixed)], TOL);
        }
    }
}
