//! Validation of `[[webhooks]]`: inbound webhook endpoints.

use crate::{
    model::{Delivery, HmacSchemeConfig, RouteConfig, WebhookConfig, WebhookProvider},
    raw::{RawHmacScheme, RawWebhook, RawWebhookSigning},
    validate::{load_json_schema, upstream_url, valid_id, Checker},
};
use std::{collections::HashSet, sync::Arc, time::Duration};
use toml::Spanned;

const DEFAULT_TOLERANCE: Duration = Duration::from_secs(300);
const DEFAULT_MAX_BODY: u64 = 1024 * 1024;
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
const DEFAULT_MAX_AGE: Duration = Duration::from_secs(24 * 3600);
/// Schemes that sign no timestamp can only be de-duplicated for as long as they are remembered.
const DEFAULT_UNTIMED_WINDOW: Duration = Duration::from_secs(24 * 3600);

pub(crate) fn webhooks(
    c: &mut Checker,
    raw: Vec<Spanned<RawWebhook>>,
    routes: &[Arc<RouteConfig>],
) -> Vec<Arc<WebhookConfig>> {
    let mut ids: HashSet<String> = routes.iter().map(|r| r.id.clone()).collect();
    let mut paths = HashSet::new();
    let mut out = Vec::new();
    for w in raw {
        let w = w.into_inner();
        let id = w.id.get_ref().clone();
        if !valid_id(&id) {
            c.error(Some(w.id.span()), format!("webhook id {id:?} is not valid; expected 1-64 letters, digits, '.', '_' or '-'"));
            continue;
        }
        if !ids.insert(id.clone()) {
            c.error(
                Some(w.id.span()),
                format!("webhook id {id:?} is already used by a route or webhook"),
            );
            continue;
        }
        let ctx = format!("webhook {id:?}");
        let path = w.path.get_ref().clone();
        if !path.starts_with('/') || path.contains(['{', '}', '?', '#']) || path.contains("//") {
            c.error(Some(w.path.span()), format!("{ctx}: path {path:?} must be an exact absolute path such as \"/hooks/stripe\" (no parameters, query or fragment)"));
        } else if !paths.insert(path.clone()) {
            c.error(
                Some(w.path.span()),
                format!("{ctx}: path {path:?} is used by another webhook"),
            );
        } else if routes.iter().any(|r| r.path == path) {
            c.error(
                Some(w.path.span()),
                format!("{ctx}: path {path:?} is also a route's path"),
            );
        }
        let provider = provider(c, &w.provider, w.hmac, &ctx);
        let mut secrets = Vec::new();
        if w.secrets.get_ref().is_empty() {
            c.error(
                Some(w.secrets.span()),
                format!("{ctx}: secrets needs at least one {{secret:NAME}}"),
            );
        }
        for s in w.secrets.get_ref() {
            match crate::parse_template(s.get_ref()) {
                Ok(t) if t.prefix.is_empty() && t.suffix.is_empty() && t.secret.as_ref().is_some_and(|r| r.field.is_none()) => {
                    if let Some(r) = &t.secret {
                        c.secret_site(crate::model::webhook_consumer(&id), &r.name, s.span());
                    }
                    secrets.extend(t.secret);
                }
                _ => c.error(Some(s.span()), format!("{ctx}: each secret must be exactly a vault reference such as \"{{secret:stripe-webhook}}\"; signing secrets never belong in the config file")),
            }
        }
        let tolerance = match &w.tolerance {
            Some(t)
                if t.get_ref().0 < Duration::from_secs(1)
                    || t.get_ref().0 > Duration::from_secs(3600) =>
            {
                c.error(
                    Some(t.span()),
                    format!("{ctx}: tolerance must be between 1s and 1h"),
                );
                DEFAULT_TOLERANCE
            }
            Some(t) => t.get_ref().0,
            None => DEFAULT_TOLERANCE,
        };
        let signs_time = matches!(
            &provider,
            Some(WebhookProvider::Standard | WebhookProvider::Stripe | WebhookProvider::Slack)
        ) || matches!(&provider, Some(WebhookProvider::Hmac(h)) if h.timestamp_header.is_some());
        // A replay must be remembered for longer than a signed timestamp stays acceptable
        // (both directions of the tolerance).
        let least = tolerance * 2 + Duration::from_secs(60);
        let dedup_window = match &w.dedup_window {
            Some(d) if signs_time && d.get_ref().0 < least => {
                c.error(Some(d.span()), format!("{ctx}: dedup_window must be at least twice the tolerance plus a minute ({}), or a replayed message could pass", humantime::format_duration(least)));
                least
            }
            Some(d) if d.get_ref().0.is_zero() => {
                c.error(
                    Some(d.span()),
                    format!("{ctx}: dedup_window must be more than 0"),
                );
                DEFAULT_UNTIMED_WINDOW
            }
            Some(d) => d.get_ref().0,
            None if signs_time => least,
            None => DEFAULT_UNTIMED_WINDOW,
        };
        let schema = w
            .schema
            .and_then(|p| load_json_schema(c, p, &format!("{ctx}: schema")));
        let forward = upstream_url(c, &w.forward, &format!("{ctx}: forward")).map(|u| u.url);
        let delivery = match w.delivery.as_ref().map(|d| d.get_ref().as_str()) {
            None | Some("direct") => Delivery::Direct,
            Some("queued") => Delivery::Queued,
            Some(other) => {
                c.error(
                    w.delivery.as_ref().map(|d| d.span()),
                    format!("{ctx}: delivery {other:?} is not known; expected direct or queued"),
                );
                Delivery::Direct
            }
        };
        let max_age = match &w.max_age {
            Some(a) if a.get_ref().0 < Duration::from_secs(1) => {
                c.error(
                    Some(a.span()),
                    format!("{ctx}: max_age must be at least 1s"),
                );
                DEFAULT_MAX_AGE
            }
            Some(a) => a.get_ref().0,
            None => DEFAULT_MAX_AGE,
        };
        let (Some(provider), Some(forward)) = (provider, forward) else {
            continue;
        };
        out.push(Arc::new(WebhookConfig {
            id,
            path,
            provider,
            secrets,
            tolerance,
            event_types: w.event_types,
            schema,
            forward,
            delivery,
            max_body: w.max_body.map_or(DEFAULT_MAX_BODY, |b| b.0),
            dedup_window,
            timeout: w.timeout.map_or(DEFAULT_TIMEOUT, |t| t.0),
            max_age,
        }));
    }
    out
}

fn provider(
    c: &mut Checker,
    name: &Spanned<String>,
    hmac: Option<Spanned<RawHmacScheme>>,
    ctx: &str,
) -> Option<WebhookProvider> {
    let p = match name.get_ref().as_str() {
        "standard" => WebhookProvider::Standard,
        "stripe" => WebhookProvider::Stripe,
        "github" => WebhookProvider::Github,
        "slack" => WebhookProvider::Slack,
        "shopify" => WebhookProvider::Shopify,
        "hmac" => {
            let Some(h) = hmac else {
                c.error(Some(name.span()), format!("{ctx}: provider \"hmac\" needs an hmac = {{ signature_header = ..., ... }} table"));
                return None;
            };
            return hmac_scheme(c, h, ctx).map(WebhookProvider::Hmac);
        }
        // An unknown scheme is a configuration error, never a pass.
        other => {
            c.error(Some(name.span()), format!("{ctx}: provider {other:?} is not known; expected standard, stripe, github, slack, shopify or hmac"));
            return None;
        }
    };
    if let Some(h) = hmac {
        c.error(
            Some(h.span()),
            format!("{ctx}: the hmac table applies only to provider = \"hmac\""),
        );
    }
    Some(p)
}

fn header(c: &mut Checker, v: &Spanned<String>, ctx: &str) -> Option<http::HeaderName> {
    match http::HeaderName::from_bytes(v.get_ref().to_ascii_lowercase().as_bytes()) {
        Ok(h) => Some(h),
        Err(_) => {
            c.error(
                Some(v.span()),
                format!("{ctx}: {:?} is not a header name", v.get_ref()),
            );
            None
        }
    }
}

fn hmac_scheme(
    c: &mut Checker,
    raw: Spanned<RawHmacScheme>,
    ctx: &str,
) -> Option<HmacSchemeConfig> {
    let h = raw.into_inner();
    let signature_header = header(c, &h.signature_header, ctx)?;
    let sha512 = match h.algorithm.as_ref().map(|a| a.get_ref().as_str()) {
        None | Some("sha256") => false,
        Some("sha512") => true,
        Some(other) => {
            c.error(
                h.algorithm.as_ref().map(|a| a.span()),
                format!(
                    "{ctx}: hmac algorithm {other:?} is not supported; expected sha256 or sha512"
                ),
            );
            return None;
        }
    };
    let base64 = match h.encoding.as_ref().map(|a| a.get_ref().as_str()) {
        None | Some("hex") => false,
        Some("base64") => true,
        Some(other) => {
            c.error(
                h.encoding.as_ref().map(|a| a.span()),
                format!("{ctx}: hmac encoding {other:?} is not supported; expected hex or base64"),
            );
            return None;
        }
    };
    let timestamp_header = match &h.timestamp_header {
        Some(t) => Some(header(c, t, ctx)?),
        None => None,
    };
    let template = h
        .template
        .as_ref()
        .map_or("{body}".to_string(), |t| t.get_ref().clone());
    let span = h.template.as_ref().map(|t| t.span());
    let stripped = template.replace("{body}", "").replace("{timestamp}", "");
    if !template.contains("{body}") {
        c.error(
            span.clone(),
            format!("{ctx}: hmac template must contain {{body}}"),
        );
        return None;
    }
    if stripped.contains('{') || stripped.contains('}') {
        c.error(
            span.clone(),
            format!("{ctx}: hmac template knows only {{body}} and {{timestamp}}"),
        );
        return None;
    }
    if template.contains("{timestamp}") != timestamp_header.is_some() {
        c.error(
            span,
            format!("{ctx}: hmac template uses {{timestamp}} exactly when timestamp_header is set"),
        );
        return None;
    }
    Some(HmacSchemeConfig {
        signature_header,
        sha512,
        base64,
        prefix: h.prefix,
        timestamp_header,
        template,
    })
}

pub(crate) fn signing(
    c: &mut Checker,
    raw: Option<Spanned<RawWebhookSigning>>,
    needed: bool,
) -> Option<crate::SecretRef> {
    let Some(raw) = raw else {
        // The default name: `portcullis secret put portcullis-webhook-signing --consumer
        // gateway:webhook-signing` is all it takes; serve refuses to start without it.
        return needed.then(|| crate::SecretRef {
            name: "portcullis-webhook-signing".to_string(),
            field: None,
        });
    };
    let s = raw.into_inner().secret;
    match crate::parse_template(s.get_ref()) {
        Ok(t)
            if t.prefix.is_empty()
                && t.suffix.is_empty()
                && t.secret.as_ref().is_some_and(|r| r.field.is_none()) =>
        {
            if let Some(r) = &t.secret {
                c.secret_site(
                    crate::WEBHOOK_SIGNING_CONSUMER.to_string(),
                    &r.name,
                    s.span(),
                );
            }
            t.secret
        }
        _ => {
            c.error(Some(s.span()), "webhook_signing.secret must be exactly a vault reference such as \"{secret:portcullis-webhook-signing}\"");
            None
        }
    }
}
