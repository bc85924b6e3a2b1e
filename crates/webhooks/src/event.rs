//! The event type of a delivery, for per-endpoint allowlists.

use http::{HeaderMap, HeaderName};
use serde::Deserialize;

use crate::headers::single;
use crate::Scheme;

/// Longest event type returned; anything longer is treated as absent.
const MAX_EVENT_TYPE: usize = 256;

const GITHUB_EVENT: HeaderName = HeaderName::from_static("x-github-event");
const SHOPIFY_TOPIC: HeaderName = HeaderName::from_static("x-shopify-topic");

/// Just the field needed; serde skips the rest of the document without building it.
#[derive(Deserialize)]
struct Typed {
    #[serde(rename = "type")]
    kind: Option<String>,
}

/// Slack's envelope: `type` and, for `event_callback`, `event.type`.
#[derive(Deserialize)]
struct Envelope {
    #[serde(rename = "type")]
    kind: Option<String>,
    event: Option<Inner>,
}

#[derive(Deserialize)]
struct Inner {
    #[serde(rename = "type")]
    kind: Option<String>,
}

/// The event type of a delivery, for allowlists. Call it after [`crate::Verifier::verify`]
/// succeeded.
///
/// - Standard, Stripe: the JSON body's top-level `type` (signed, since the body is).
/// - Slack: `event.type` when the body's `type` is `event_callback`, else the body's `type`
///   (`url_verification`, `app_rate_limited`); `None` for form-encoded bodies (slash commands,
///   interactivity). Signed.
/// - GitHub: the `X-GitHub-Event` header. **Unsigned**: GitHub does not sign headers, so this is
///   only as trustworthy as the transport (TLS from GitHub). Changing it on a replayed delivery
///   does not help an attacker past the replay cache, whose key hashes the signed body.
/// - Shopify: the `X-Shopify-Topic` header. **Unsigned**, like GitHub's.
/// - Generic HMAC: `None` (no known location).
///
/// `None` also when the body is not JSON, the field is missing or not a string, longer than
/// 256 bytes or holds a control character, or the header is absent, repeated with different values or not ASCII. An
/// allowlist should treat `None` as "not allowed".
pub fn event_type(scheme: &Scheme, headers: &HeaderMap, body: &[u8]) -> Option<String> {
    let found = match scheme {
        Scheme::Standard | Scheme::Stripe => serde_json::from_slice::<Typed>(body).ok()?.kind,
        Scheme::Slack => {
            let envelope = serde_json::from_slice::<Envelope>(body).ok()?;
            match envelope.kind.as_deref() {
                Some("event_callback") => envelope.event?.kind,
                _ => envelope.kind,
            }
        }
        Scheme::Github => Some(
            single(headers, &GITHUB_EVENT, "x-github-event", MAX_EVENT_TYPE)
                .ok()?
                .to_owned(),
        ),
        Scheme::Shopify => Some(
            single(headers, &SHOPIFY_TOPIC, "x-shopify-topic", MAX_EVENT_TYPE)
                .ok()?
                .to_owned(),
        ),
        Scheme::Hmac(_) => None,
    }?;
    // Control characters (a JSON "\u0000" among them) are no event type anyone allowlists,
    // and a NUL cannot be stored in a PostgreSQL TEXT column: the queued event would be
    // refused by the store on every retry of the sender.
    (!found.is_empty() && found.len() <= MAX_EVENT_TYPE && !found.chars().any(char::is_control))
        .then_some(found)
}
