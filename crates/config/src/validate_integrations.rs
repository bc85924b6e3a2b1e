//! Validation of `[[integrations]]`: egress destinations, their allowlists and credentials.

use crate::{
    model::{
        BreakerSettings, ClientConfig, CredentialConfig, CredentialPlacement, IntegrationConfig,
    },
    raw::{RawBreaker, RawCredential, RawIntegration},
    validate::{
        bounded, duration_within, load_json_schema, parse_net, refill_fits, valid_id, Checker,
    },
};

use std::{collections::HashSet, sync::Arc, time::Duration};
use toml::Spanned;

pub(crate) fn integrations(
    c: &mut Checker,
    raw: Vec<Spanned<RawIntegration>>,
    clients: &[Arc<ClientConfig>],
) -> Vec<Arc<IntegrationConfig>> {
    let known: HashSet<&str> = clients.iter().map(|c| c.id.as_str()).collect();
    let mut ids = HashSet::new();
    let mut out = Vec::new();
    for i in raw {
        let i = i.into_inner();
        let id = i.id.get_ref().clone();
        if !valid_id(&id) || !ids.insert(id.clone()) {
            c.error(Some(i.id.span()), format!("integration id {id:?} is not valid or not unique; expected 1-64 letters, digits, '.', '_' or '-'"));
            continue;
        }
        let ctx = format!("integration {id:?}");
        let base_url = match url::Url::parse(i.base_url.get_ref().trim()) {
            Ok(u)
                if matches!(u.scheme(), "http" | "https")
                    && u.host().is_some()
                    && u.username().is_empty()
                    && u.password().is_none()
                    && u.query().is_none()
                    && u.fragment().is_none() =>
            {
                if u.scheme() == "http" {
                    c.warn(
                        Some(i.base_url.span()),
                        format!(
                            "{ctx}: base_url is plain http://; the credential travels unencrypted"
                        ),
                    );
                }
                Some(u)
            }
            _ => {
                c.error(Some(i.base_url.span()), format!("{ctx}: base_url must be an absolute http(s) URL with a host and no credentials, query or fragment"));
                None
            }
        };
        let mut allow = Vec::new();
        if i.allow.get_ref().is_empty() {
            c.error(Some(i.allow.span()), format!("{ctx}: allow needs at least one {{ methods = [...], path = \"/...\" }}; everything else is refused"));
        }
        for a in i.allow.into_inner() {
            let a = a.into_inner();
            let mut methods = Vec::new();
            for m in &a.methods {
                match http::Method::from_bytes(m.get_ref().to_ascii_uppercase().as_bytes()) {
                    Ok(m) => methods.push(m),
                    Err(_) => c.error(
                        Some(m.span()),
                        format!("{ctx}: {:?} is not an HTTP method", m.get_ref()),
                    ),
                }
            }
            let p = a.path.get_ref();
            if methods.is_empty()
                || !p.starts_with('/')
                || p.contains("..")
                || p.contains(['?', '#', '%', '\\'])
            {
                c.error(Some(a.path.span()), format!("{ctx}: allow entry needs methods and a path template such as \"/repos/{{owner}}/{{repo}}/issues\" (no query, dot segments or escapes)"));
                continue;
            }
            allow.push((methods, p.clone()));
        }
        for cl in i.clients.get_ref() {
            if !known.contains(cl.as_str()) {
                c.error(
                    Some(i.clients.span()),
                    format!("{ctx}: client {cl:?} is not declared in [[clients]]"),
                );
            }
        }
        let credential = i.credential.and_then(|cr| credential(c, cr, &ctx, &id));
        let mut dangerous_allow_cidrs = Vec::new();
        for n in &i.dangerous_allow_cidrs {
            match parse_net(n.get_ref().trim()) {
                Ok(net) => {
                    c.warn(Some(n.span()), format!("{ctx}: dangerous_allow_cidrs re-admits {net}, which the SSRF guard refuses; only for a destination you control"));
                    dangerous_allow_cidrs.push(net);
                }
                Err(e) => c.error(Some(n.span()), format!("{ctx}: dangerous_allow_cidrs: {e}")),
            }
        }
        let mut strip = Vec::new();
        for h in &i.strip_response_headers {
            match http::HeaderName::from_bytes(h.get_ref().to_ascii_lowercase().as_bytes()) {
                Ok(n) => strip.push(n),
                Err(_) => c.error(
                    Some(h.span()),
                    format!("{ctx}: {:?} is not a header name", h.get_ref()),
                ),
            }
        }
        let retry = match i.retry {
            Some(r) => {
                let span = r.span();
                let r = r.into_inner();
                let v = (
                    r.attempts.unwrap_or(3),
                    r.base.map_or(Duration::from_millis(200), |d| d.0),
                    r.max.map_or(Duration::from_secs(10), |d| d.0),
                );
                if v.0 == 0 || v.0 > 10 || v.1.is_zero() || v.2 < v.1 {
                    c.error(
                        Some(span),
                        format!("{ctx}: retry needs 1-10 attempts and 0 < base <= max"),
                    );
                }
                v
            }
            None => (3, Duration::from_millis(200), Duration::from_secs(10)),
        };
        let breaker = i
            .circuit_breaker
            .map_or_else(BreakerSettings::default, |b| breaker(c, b, &ctx));
        let response_schema = i
            .response_schema
            .and_then(|p| load_json_schema(c, p, &format!("{ctx}: response_schema")));
        let response_filter = i.response_fields.map(|f| {
            let f = f.into_inner();
            let mask_hash = match f.mask_style.as_ref().map(|m| m.get_ref().as_str()) {
                None | Some("last4") => false,
                Some("hash") => true,
                Some(other) => {
                    c.error(
                        f.mask_style.as_ref().map(|m| m.span()),
                        format!("{ctx}: mask_style {other:?} is not known; expected last4 or hash"),
                    );
                    false
                }
            };
            crate::model::ResponseFilter {
                allow: f.allow,
                deny: f.deny,
                mask: f.mask,
                mask_hash,
            }
        });
        let rate_limit = i.rate_limit.and_then(|r| {
            let span = r.span();
            let r = r.into_inner();
            if r.limit == 0 || r.period.0.is_zero() {
                c.error(
                    Some(span),
                    format!("{ctx}: rate_limit needs limit > 0 and a period > 0"),
                );
                return None;
            }
            if let Err(e) = refill_fits(r.limit, r.period.0, r.burst) {
                c.error(Some(span), format!("{ctx}: rate_limit {e}"));
                return None;
            }
            Some((
                crate::model::RateLimitConfig {
                    per: crate::model::RateKey::Route,
                    limit: r.limit,
                    period: r.period.0,
                    burst: r.burst,
                },
                r.max_wait.map_or(Duration::ZERO, |d| d.0),
            ))
        });
        // Zero would fail every call; the bounds keep a typo from doing so silently.
        let timeout = duration_within(
            c,
            i.timeout,
            Duration::from_secs(30),
            Duration::from_millis(1)..=Duration::from_secs(3600),
            &format!("{ctx}: timeout"),
        );
        let connect_timeout = duration_within(
            c,
            i.connect_timeout,
            Duration::from_secs(5),
            Duration::from_millis(1)..=Duration::from_secs(300),
            &format!("{ctx}: connect_timeout"),
        );
        let max_response = bounded(
            c,
            i.max_response,
            10 * 1024 * 1024,
            1..=u64::MAX,
            &format!("{ctx}: max_response (bytes)"),
            |b| b.0,
        );
        let Some(base_url) = base_url else { continue };
        out.push(Arc::new(IntegrationConfig {
            id,
            base_url,
            allow,
            clients: i.clients.into_inner(),
            credential,
            timeout,
            connect_timeout,
            max_body: i.max_body.map_or(1024 * 1024, |b| b.0),
            max_response,
            strip_response_headers: strip,
            dangerous_allow_cidrs,
            retry,
            breaker,
            response_schema,
            response_filter,
            rate_limit,
            fallback_base_url: i.fallback_base_url.as_ref().and_then(|f| {
                match url::Url::parse(f.get_ref().trim()) {
                    Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() && u.username().is_empty() && u.query().is_none() => Some(u),
                    _ => {
                        c.error(Some(f.span()), format!("{ctx}: fallback_base_url must be an absolute http(s) URL with a host and no credentials or query"));
                        None
                    }
                }
            }),
            health_check: i.health_check.as_ref().and_then(|h| {
                let r = h.get_ref();
                if !r.path.starts_with('/') {
                    c.error(Some(h.span()), format!("{ctx}: health_check.path must start with /"));
                    return None;
                }
                let interval = r.interval.as_ref().map_or(Duration::from_secs(10), |d| d.0);
                let unhealthy_after = r.unhealthy_after.unwrap_or(2);
                // Refused rather than raised: a zero interval or count is a typo, not a wish.
                if interval < Duration::from_millis(100) || interval > Duration::from_secs(3600) || unhealthy_after == 0 {
                    c.error(Some(h.span()), format!("{ctx}: health_check needs an interval between 100ms and 1h and unhealthy_after >= 1"));
                }
                Some((
                    r.path.clone(),
                    interval.clamp(Duration::from_millis(100), Duration::from_secs(3600)),
                    unhealthy_after.max(1),
                ))
            }),
            ca: i.ca.as_ref().map(|p| {
                let path = c.path(p.get_ref());
                if !path.exists() {
                    c.error(Some(p.span()), format!("{ctx}: ca {} does not exist", path.display()));
                }
                path
            }),
            pin_sha256: i
                .pin_sha256
                .iter()
                .filter_map(|p| {
                    use base64::Engine;
                    match base64::engine::general_purpose::STANDARD
                        .decode(p.get_ref().trim())
                        .ok()
                        .and_then(|b| <[u8; 32]>::try_from(b).ok())
                    {
                        Some(pin) => Some(pin),
                        None => {
                            c.error(Some(p.span()), format!("{ctx}: pin_sha256 entries are base64 SHA-256 digests (44 characters) of a certificate or its public key"));
                            None
                        }
                    }
                })
                .collect(),
            follow_redirects: match &i.follow_redirects {
                Some(n) if *n.get_ref() > 10 => {
                    c.error(
                        Some(n.span()),
                        format!("{ctx}: follow_redirects is at most 10"),
                    );
                    10
                }
                Some(n) => *n.get_ref(),
                None => 0,
            },
            response_content_types: i
                .response_content_types
                .iter()
                .map(|t| t.trim().to_ascii_lowercase())
                .collect(),
        }));
    }
    out
}

fn credential(
    c: &mut Checker,
    raw: Spanned<RawCredential>,
    ctx: &str,
    id: &str,
) -> Option<CredentialConfig> {
    let span = raw.span();
    let r = raw.into_inner();
    // The field names a vault secret: `{secret:NAME}` or just `NAME`. A pasted token is
    // never used as one: it would have to exist in the vault under that name.
    let raw_secret = r.secret.get_ref().trim();
    let secret = match crate::parse_template(raw_secret) {
        Ok(t)
            if t.prefix.is_empty()
                && t.suffix.is_empty()
                && t.secret.as_ref().is_some_and(|s| s.field.is_none()) =>
        {
            t.secret.map(|s| s.name)
        }
        Ok(t)
            if t.secret.is_none()
                && !raw_secret.is_empty()
                && raw_secret.len() <= 128
                && raw_secret
                    .chars()
                    .all(|ch| ch.is_ascii_alphanumeric() || matches!(ch, '-' | '_' | '.')) =>
        {
            Some(raw_secret.to_string())
        }
        _ => None,
    };
    let Some(secret) = secret else {
        c.error(Some(r.secret.span()), format!("{ctx}: credential.secret must name a vault secret, such as \"github-token\" or \"{{secret:github-token}}\""));
        return None;
    };
    c.secret_site(
        crate::model::integration_consumer(id),
        &secret,
        r.secret.span(),
    );
    let placement = match r.kind.get_ref().as_str() {
        "bearer" => CredentialPlacement::Bearer,
        "basic" => CredentialPlacement::Basic,
        "header" => match r
            .header
            .as_ref()
            .map(|h| http::HeaderName::from_bytes(h.get_ref().to_ascii_lowercase().as_bytes()))
        {
            Some(Ok(h)) => CredentialPlacement::Header(h),
            _ => {
                c.error(
                    Some(span),
                    format!("{ctx}: credential type \"header\" needs header = \"NAME\""),
                );
                return None;
            }
        },
        "query" => match r.param {
            Some(p)
                if !p.is_empty()
                    && p.chars()
                        .all(|ch| ch.is_ascii_alphanumeric() || matches!(ch, '_' | '-' | '.')) =>
            {
                CredentialPlacement::Query(p)
            }
            _ => {
                c.error(
                    Some(span),
                    format!("{ctx}: credential type \"query\" needs param = \"NAME\""),
                );
                return None;
            }
        },
        kind @ ("oauth2_client_credentials" | "oauth2_refresh_token") => {
            let url = r
                .token_url
                .as_ref()
                .and_then(|u| url::Url::parse(u.get_ref()).ok());
            match url {
                Some(u)
                    if matches!(u.scheme(), "http" | "https")
                        && u.host().is_some()
                        && u.username().is_empty() =>
                {
                    if u.scheme() == "http" {
                        c.warn(r.token_url.as_ref().map(|t| t.span()), format!("{ctx}: token_url is plain http://; the client secret travels unencrypted"));
                    }
                    if kind == "oauth2_refresh_token" {
                        CredentialPlacement::OAuth2RefreshToken {
                            token_url: u,
                            scopes: r.scopes,
                        }
                    } else {
                        CredentialPlacement::OAuth2ClientCredentials {
                            token_url: u,
                            scopes: r.scopes,
                        }
                    }
                }
                _ => {
                    c.error(Some(span), format!("{ctx}: credential type \"oauth2_client_credentials\" needs token_url = \"https://...\""));
                    return None;
                }
            }
        }
        other => {
            c.error(Some(r.kind.span()), format!("{ctx}: credential type {other:?} is not supported here; expected bearer, header, basic, query, oauth2_client_credentials or oauth2_refresh_token"));
            return None;
        }
    };
    Some(CredentialConfig { placement, secret })
}

/// The breaker's limits: ratios outside `(0, 1]` never or always open, and a window far
/// shorter than a call or probes beyond a small number defeat the point of a breaker.
const WINDOW_RANGE: (Duration, Duration) = (Duration::from_millis(100), Duration::from_secs(3600));
const MAX_PROBES: u32 = 100;

fn breaker(c: &mut Checker, raw: Spanned<RawBreaker>, ctx: &str) -> BreakerSettings {
    let span = raw.span();
    let b = raw.into_inner();
    let d = BreakerSettings::default();
    let v = BreakerSettings {
        failure_ratio: b.failure_ratio.unwrap_or(d.failure_ratio),
        min_requests: b.min_requests.unwrap_or(d.min_requests),
        open_for: b.open_for.map_or(d.open_for, |t| t.0),
        window: b.window.as_ref().map_or(d.window, |w| w.get_ref().0),
        half_open_probes: b
            .half_open_probes
            .as_ref()
            .map_or(d.half_open_probes, |p| *p.get_ref()),
    };
    if !(v.failure_ratio > 0.0 && v.failure_ratio <= 1.0)
        || v.min_requests == 0
        || v.open_for.is_zero()
    {
        c.error(Some(span), format!("{ctx}: circuit_breaker needs 0 < failure_ratio <= 1, min_requests >= 1 and open_for > 0"));
    }
    if let Some(w) = &b.window {
        if w.get_ref().0 < WINDOW_RANGE.0 || w.get_ref().0 > WINDOW_RANGE.1 {
            c.error(
                Some(w.span()),
                format!("{ctx}: circuit_breaker.window must be between 100ms and 1h"),
            );
        }
    }
    if let Some(p) = &b.half_open_probes {
        if *p.get_ref() == 0 || *p.get_ref() > MAX_PROBES {
            c.error(
                Some(p.span()),
                format!(
                    "{ctx}: circuit_breaker.half_open_probes must be between 1 and {MAX_PROBES}"
                ),
            );
        }
    }
    v
}
