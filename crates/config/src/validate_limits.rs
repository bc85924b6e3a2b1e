//! Validation of where limits are kept: `[shared_state]`, each route's choice when it is
//! unreachable, and quotas.

use crate::{
    model::{
        ClientConfig, QuotaConfig, RouteConfig, SharedBackend, SharedStateConfig,
        SharedStateFailure, StoreConfig,
    },
    raw::{RawQuota, RawSharedState},
    validate::Checker,
};
use std::{collections::HashMap, ops::Range, sync::Arc, time::Duration};
use toml::Spanned;

const DEFAULT_TIMEOUT: Duration = Duration::from_millis(250);

pub(crate) fn shared_state(c: &mut Checker, raw: RawSharedState) -> SharedStateConfig {
    let backend = match &raw.url {
        None => SharedBackend::Memory,
        Some(u) if u.get_ref().trim() == "memory" => SharedBackend::Memory,
        Some(u) => {
            let s = u.get_ref().trim();
            match url::Url::parse(s) {
                Ok(parsed)
                    if matches!(parsed.scheme(), "redis" | "rediss") && parsed.host().is_some() =>
                {
                    if parsed.password().is_some() {
                        c.warn(Some(u.span()), "shared_state.url holds a Redis password in the config file; keep the file readable by the gateway's user only");
                    }
                    if parsed.scheme() == "redis" && !parsed.host_str().is_some_and(is_loopback) {
                        c.warn(Some(u.span()), "shared_state.url is plain redis:// to another machine; counters (and any password) travel unencrypted, use rediss://");
                    }
                    SharedBackend::Redis(s.to_string())
                }
                // Never echo the value: it may hold a password.
                _ => {
                    c.error(Some(u.span()), "shared_state.url is not \"memory\" or a redis:// / rediss:// URL with a host");
                    SharedBackend::Memory
                }
            }
        }
    };
    let instances = match raw.instances {
        Some(n) if *n.get_ref() == 0 => {
            c.error(Some(n.span()), "shared_state.instances must be at least 1");
            1
        }
        Some(n) => *n.get_ref(),
        None => 1,
    };
    let timeout = match raw.timeout {
        Some(t) if t.get_ref().0.is_zero() || t.get_ref().0 > Duration::from_secs(10) => {
            c.error(Some(t.span()), "shared_state.timeout must be between 1ms and 10s: rate-limited requests wait for it");
            DEFAULT_TIMEOUT
        }
        Some(t) => t.get_ref().0,
        None => DEFAULT_TIMEOUT,
    };
    let key_prefix = match raw.key_prefix {
        Some(p) => {
            let v = p.get_ref();
            if v.is_empty()
                || v.len() > 64
                || !v
                    .chars()
                    .all(|ch| ch.is_ascii_alphanumeric() || matches!(ch, '-' | '_' | '.' | ':'))
            {
                c.error(
                    Some(p.span()),
                    "shared_state.key_prefix must be 1-64 letters, digits, '-', '_', '.' or ':'",
                );
            }
            v.clone()
        }
        None => "portcullis".to_string(),
    };
    SharedStateConfig {
        backend,
        instances,
        timeout,
        key_prefix,
    }
}

pub(crate) fn is_loopback(host: &str) -> bool {
    host == "localhost"
        || host
            .trim_matches(|ch| ch == '[' || ch == ']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

pub(crate) fn failure_choice(
    c: &mut Checker,
    raw: Option<Spanned<String>>,
    ctx: &str,
) -> SharedStateFailure {
    match raw.as_ref().map(|v| v.get_ref().as_str()) {
        None | Some("fall_back_local") => SharedStateFailure::FallBackLocal,
        Some("fail_closed") => SharedStateFailure::FailClosed,
        Some(other) => {
            c.error(
                raw.as_ref().map(|v| v.span()),
                format!("{ctx}: shared_state_failure {other:?} is not known; expected fall_back_local or fail_closed"),
            );
            SharedStateFailure::FallBackLocal
        }
    }
}

pub(crate) fn quota(c: &mut Checker, raw: Spanned<RawQuota>, ctx: &str) -> Option<QuotaConfig> {
    let span = raw.span();
    let q = raw.into_inner();
    if q.daily.is_none() && q.monthly.is_none() {
        c.error(
            Some(span),
            format!("{ctx}: quota needs daily, monthly or both"),
        );
        return None;
    }
    if q.daily == Some(0) || q.monthly == Some(0) {
        c.error(
            Some(span),
            format!(
                "{ctx}: a quota of 0 refuses everything; remove the route or the client instead"
            ),
        );
        return None;
    }
    if let (Some(d), Some(m)) = (q.daily, q.monthly) {
        if d > m {
            c.warn(Some(span), format!("{ctx}: the daily quota ({d}) is larger than the monthly one ({m}); the monthly one always binds first"));
        }
    }
    Some(QuotaConfig {
        daily: q.daily,
        monthly: q.monthly,
    })
}

/// Warnings for a configuration meant for several instances, where counting differs from one
/// instance's: quotas kept in each instance's own SQLite store, a shared PostgreSQL store
/// beside limits kept in memory, and `fall_back_local` with `instances = 1`, which gives every
/// instance the whole limit while Redis is away.
pub(crate) fn fleet(
    c: &mut Checker,
    store: &StoreConfig,
    shared: &SharedStateConfig,
    clients: &[Arc<ClientConfig>],
    routes: &[Arc<RouteConfig>],
    webhooks: bool,
    spans: &HashMap<String, Range<usize>>,
) {
    let redis = matches!(shared.backend, SharedBackend::Redis(_));
    let shared_store = store.is_shared();
    if (redis || shared.instances > 1) && !shared_store {
        let quota_route = routes.iter().find(|r| r.quota.is_some());
        if quota_route.is_some() || clients.iter().any(|cl| cl.quota.is_some()) {
            c.warn(
                quota_route.and_then(|r| spans.get(&r.id).cloned()),
                "quotas are counted in each instance's own store (SQLite): several instances \
                 (a Redis [shared_state], or shared_state.instances > 1) do not share quota \
                 counts, so each one admits the whole quota; use a postgres:// store.url \
                 shared by them",
            );
        }
    }
    if shared_store && !redis && (webhooks || routes.iter().any(|r| !r.rate_limits.is_empty())) {
        c.warn(
            None,
            "store.url is a database several instances can share, but [shared_state] is in \
             memory: each instance enforces rate limits and remembers webhook message ids on \
             its own (a replay sent to another instance passes); set shared_state.url to the \
             fleet's Redis",
        );
    }
    if redis && shared.instances == 1 {
        if let Some(r) = routes.iter().find(|r| {
            !r.rate_limits.is_empty() && r.shared_state_failure == SharedStateFailure::FallBackLocal
        }) {
            c.warn(
                spans.get(&r.id).cloned(),
                format!(
                    "route {:?} falls back to local limits while Redis is unreachable, divided \
                     by shared_state.instances = 1: every instance then admits the whole limit; \
                     set instances to the number of gateways sharing this Redis",
                    r.id
                ),
            );
        }
    }
}
