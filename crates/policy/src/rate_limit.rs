//! Rate limits: every limit of a route is decided at once by a [`Limiter`] (GCRA; in memory or
//! in Redis, see `portcullis-state`), all or nothing, so only admitted requests count. When
//! the shared state cannot decide, the route's `shared_state_failure` choice applies:
//! refuse with 503, or decide locally with each limit divided by the number of instances.

use crate::{chain::ResponseHeaders, Flow, Policy, Step};
use http::{HeaderName, HeaderValue, Request, Response};
use portcullis_config::{RateKey, RateLimitConfig, SharedStateFailure};
use portcullis_core::{
    text::{client_source, push_u64, seconds_up},
    Body, GatewayError, Identity, RequestContext,
};
use portcullis_state::{all_allowed, Check, Decision, Limiter, MemoryLimiter, Rate};
use sha2::{Digest, Sha256};
use std::{
    fmt::Write as _,
    sync::{Arc, OnceLock},
    time::Duration,
};

// The IETF headers, parsed once rather than on every insert.
pub(crate) const RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");
pub(crate) const RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");

/// A limit's `RateLimit-Policy` quota and window. The window is whole seconds, so a period
/// that is not (10 per 500 ms) is scaled up to one that is (20 per second), rather than
/// cut down to a window that says 10 per second.
fn policy_window(l: &RateLimitConfig) -> (u64, u64) {
    let w = seconds_up(l.period).max(1);
    let period_ms = l.period.as_millis().max(1);
    let per_window = u128::from(l.limit) * u128::from(w) * 1000 / period_ms;
    let q = u64::try_from(per_window)
        .unwrap_or(u64::MAX)
        .saturating_add(l.burst);
    (q, w)
}

/// Where a route's limits are decided, and what to do when that place is unreachable.
#[derive(Clone)]
pub struct LimitStore {
    /// The configured limiter (memory, or Redis shared by several instances).
    pub shared: Arc<dyn Limiter>,
    /// The local limiter used while the shared one is unreachable.
    pub local: Arc<MemoryLimiter>,
    /// How many instances share the limits (the local fallback divides by it).
    pub instances: u32,
}

/// The rate-limit policy for one route: every configured limit must admit the request.
pub struct RateLimit {
    route: Arc<str>,
    limits: Vec<RateLimitConfig>,
    rates: Vec<Rate>,
    store: LimitStore,
    on_failure: SharedStateFailure,
    policy_header: HeaderValue,
    /// The start of limit `i`'s counter keys: the rate, `limit/period_ms/burst|`, after
    /// `route|` for the limits that count per route (`route`, `client_route`) and after `*|`
    /// for the others (`client`, `ip`, `header:`, `claim:`), so that every route declaring the
    /// same limit on the same key shares one allowance, and limits that differ never share a
    /// counter. (`*` is not allowed in a route id, so the two kinds never meet.) The rate is
    /// in the per-route keys too: state outlives a reload (in memory and in Redis), and a
    /// limit edited from 1 an hour to 100 a minute must not start from the old limit's TAT.
    key_prefixes: Vec<String>,
    /// The decision counters per limit, looked up once: a registry lookup hashes every label,
    /// on every request otherwise. Made on first use, so the exporter is installed by then.
    counters: OnceLock<Counters>,
}

/// Admitted and limited counters, one of each per limit.
struct Counters {
    admitted: Vec<metrics::Counter>,
    limited: Vec<metrics::Counter>,
}

impl RateLimit {
    /// Limits for `route`, decided in `store`.
    pub fn new(
        route: &str,
        limits: Vec<RateLimitConfig>,
        store: LimitStore,
        on_failure: SharedStateFailure,
    ) -> Self {
        // IETF RateLimit-Policy: one named policy per limit, quota = what may pass at once.
        let policy = limits
            .iter()
            .enumerate()
            .map(|(i, l)| {
                let (q, w) = policy_window(l);
                format!("\"l{i}\";q={q};w={w}")
            })
            .collect::<Vec<_>>()
            .join(", ");
        let rates = limits
            .iter()
            .map(|l| Rate {
                limit: l.limit,
                period: l.period,
                burst: l.burst,
            })
            .collect();
        let key_prefixes = limits
            .iter()
            .map(|l| {
                let scope = match l.per {
                    RateKey::Route | RateKey::ClientRoute => route,
                    _ => "*",
                };
                format!("{scope}|{}/{}/{}|", l.limit, l.period.as_millis(), l.burst)
            })
            .collect();
        RateLimit {
            route: Arc::from(route),
            key_prefixes,
            counters: OnceLock::new(),
            limits,
            rates,
            store,
            on_failure,
            policy_header: HeaderValue::from_str(&policy)
                .unwrap_or_else(|_| HeaderValue::from_static("")),
        }
    }

    /// The counter key of limit `l` (whose keys start with `prefix`) for this request; `None`
    /// when it counts clients and the request has none.
    fn key(&self, l: &RateLimitConfig, prefix: &str, req: &Request<Body>) -> Option<String> {
        let ctx = req.extensions().get::<RequestContext>()?;
        let client = || req.extensions().get::<Identity>().map(|id| &id.client_id);
        let mut key = String::with_capacity(prefix.len() + 48);
        key.push_str(prefix);
        match &l.per {
            RateKey::Client => {
                key.push_str("c:");
                key.push_str(client()?);
            }
            RateKey::Ip => {
                let _ = write!(key, "ip:{}", client_source(ctx.client_ip));
            }
            RateKey::Route => key.push('r'),
            RateKey::ClientRoute => {
                key.push_str("cr:");
                key.push_str(client()?);
            }
            // Header values may be credentials: only a digest of them is ever stored (in
            // memory or in Redis). SHA-256, not a seeded hash, so instances agree on the key.
            RateKey::Header(h) => {
                let v = req.headers().get(h).map_or(&b""[..], |v| v.as_bytes());
                let _ = write!(key, "h:{h}:");
                push_digest(&mut key, v);
            }
            // Claims may name people (an email) or be secrets of a kind: a digest only, as
            // for headers. A caller without the claim counts with every other one without it.
            RateKey::Claim(name) => {
                let id = req.extensions().get::<Identity>()?;
                // A token's claims alone, when there is a token; the client's attributes only
                // for callers without one.
                let v = match &id.claims {
                    Some(claims) => claims.get(name),
                    None => id.attributes.get(name),
                }
                .map_or(&b""[..], |v| v.as_bytes());
                let _ = write!(key, "cl:{name}:");
                push_digest(&mut key, v);
            }
        }
        Some(key)
    }

    fn counters(&self) -> &Counters {
        self.counters.get_or_init(|| {
            let per = |outcome: &'static str| {
                (0..self.limits.len())
                    .map(|i| metrics::counter!("portcullis_rate_limit_decisions_total", "route" => self.route.to_string(), "limit" => i.to_string(), "outcome" => outcome))
                    .collect()
            };
            Counters {
                admitted: per("admitted"),
                limited: per("limited"),
            }
        })
    }

    /// Every limit's decision for `checks`, by the configured limiter, or by the route's
    /// failure choice when that limiter cannot decide.
    async fn decide(&self, checks: &[Check<'_>]) -> Result<Vec<Decision>, GatewayError> {
        match self.store.shared.check(checks).await {
            Ok(d) => Ok(d),
            Err(_) => self.unavailable(checks),
        }
    }

    /// The route's `shared_state_failure` choice, when the shared limiter could not decide.
    fn unavailable(&self, checks: &[Check<'_>]) -> Result<Vec<Decision>, GatewayError> {
        match self.on_failure {
            SharedStateFailure::FailClosed => {
                metrics::counter!("portcullis_rate_limit_degraded_total", "route" => self.route.to_string(), "mode" => "fail_closed").increment(1);
                Err(GatewayError::Unavailable {
                    retry_after: Some(Duration::from_secs(1)),
                })
            }
            SharedStateFailure::FallBackLocal => {
                metrics::counter!("portcullis_rate_limit_degraded_total", "route" => self.route.to_string(), "mode" => "fall_back_local").increment(1);
                let n = self.store.instances;
                let local: Vec<Check<'_>> = checks
                    .iter()
                    .map(|c| Check {
                        key: c.key,
                        rate: c.rate.divided(n),
                    })
                    .collect();
                Ok(self.store.local.decide(&local))
            }
        }
    }

    /// The request's counter keys, one per limit; an error when a limit cannot key it.
    fn keys(&self, req: &Request<Body>) -> Result<Vec<String>, GatewayError> {
        let mut keys = Vec::with_capacity(self.limits.len());
        for (l, prefix) in self.limits.iter().zip(&self.key_prefixes) {
            // Fail closed: a per-client limit with no identity refuses rather than skips.
            keys.push(
                self.key(l, prefix, req)
                    .ok_or(GatewayError::Unauthorized { presented: false })?,
            );
        }
        Ok(keys)
    }

    fn checks<'k>(&self, keys: &'k [String]) -> Vec<Check<'k>> {
        keys.iter()
            .zip(&self.rates)
            .map(|(key, rate)| Check { key, rate: *rate })
            .collect()
    }
}

impl Policy for RateLimit {
    fn name(&self) -> &'static str {
        "rate_limit"
    }

    /// Decided in place by an in-memory limiter; a future only for one that must ask Redis.
    fn on_request(&self, req: Request<Body>) -> Step<'_, Flow> {
        let keys = match self.keys(&req) {
            Ok(k) => k,
            Err(e) => return Err(e).into(),
        };
        if let Some(decisions) = self.store.shared.check_now(&self.checks(&keys)) {
            return Ok(self.apply(req, decisions)).into();
        }
        Step::later(async move {
            let decisions = self.decide(&self.checks(&keys)).await?;
            Ok(self.apply(req, decisions))
        })
    }

    fn on_response<'a>(
        &'a self,
        mut res: Response<Body>,
        _ctx: &'a RequestContext,
    ) -> Step<'a, Response<Body>> {
        crate::chain::add_list_item(res.headers_mut(), &RATELIMIT_POLICY, &self.policy_header);
        Ok(res).into()
    }
}

impl RateLimit {
    /// What the decisions mean for the request: a 429 when a limit refuses it, otherwise
    /// the request, carrying the allowance header for its response.
    fn apply(&self, mut req: Request<Body>, decisions: Vec<Decision>) -> Flow {
        if !all_allowed(&decisions) {
            // The binding limit: the refusing one that frees up last.
            let (i, d) = decisions
                .iter()
                .enumerate()
                .filter(|(_, d)| !d.allowed)
                .max_by_key(|(_, d)| d.wait)
                .unwrap_or((0, &decisions[0]));
            let limited = &self.counters().limited;
            for (c, _) in limited.iter().zip(&decisions).filter(|(_, d)| !d.allowed) {
                c.increment(1);
            }
            let wait = d.wait.max(Duration::from_secs(1));
            // Answer here rather than fail, so the 429 carries this policy's headers too.
            let err = GatewayError::TooManyRequests { retry_after: wait };
            let id = req
                .extensions()
                .get::<RequestContext>()
                .map(|c| c.request_id.clone())
                .unwrap_or_else(portcullis_core::RequestId::generate);
            let mut res = portcullis_core::problem_response(&err, &id);
            res.headers_mut()
                .insert(RATELIMIT_POLICY, self.policy_header.clone());
            if let Some(v) = ratelimit_value(i, 0, wait) {
                res.headers_mut().insert(RATELIMIT, v);
            }
            return Flow::Respond(res);
        }
        for c in self.counters().admitted.iter().take(decisions.len()) {
            c.increment(1);
        }
        // IETF RateLimit header for the tightest limit: requests left and seconds until its
        // allowance is full again.
        if let Some((i, d)) = decisions
            .iter()
            .enumerate()
            .min_by_key(|(_, d)| d.remaining)
        {
            if let Some(v) = ratelimit_value(i, d.remaining, d.wait) {
                let mut h = http::HeaderMap::new();
                h.insert(RATELIMIT, v);
                req.extensions_mut().insert(ResponseHeaders(h));
            }
        }
        Flow::Continue(req)
    }
}

/// The IETF `RateLimit` item for limit `i`: `"l<i>";r=<remaining>;t=<seconds until full>`.
/// Written without `fmt`: it is on every admitted request.
/// The first half of `v`'s SHA-256, in hex: a key that names a value without holding it.
/// SHA-256 rather than a seeded hash, so that instances sharing Redis agree on the key.
fn push_digest(key: &mut String, v: &[u8]) {
    for b in &Sha256::digest(v)[..16] {
        let _ = write!(key, "{b:02x}");
    }
}

fn ratelimit_value(i: usize, remaining: u64, wait: Duration) -> Option<HeaderValue> {
    let mut v = Vec::with_capacity(40);
    v.extend_from_slice(b"\"l");
    push_u64(&mut v, i as u64);
    v.extend_from_slice(b"\";r=");
    push_u64(&mut v, remaining);
    v.extend_from_slice(b";t=");
    push_u64(&mut v, seconds_up(wait));
    HeaderValue::from_bytes(&v).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limit(limit: u64, period: Duration, burst: u64) -> RateLimitConfig {
        RateLimitConfig {
            per: RateKey::Ip,
            limit,
            period,
            burst,
        }
    }

    #[test]
    fn the_policy_window_is_whole_seconds_and_the_quota_scales_with_it() {
        let s = Duration::from_secs;
        assert_eq!(policy_window(&limit(100, s(60), 20)), (120, 60));
        assert_eq!(
            policy_window(&limit(10, Duration::from_millis(500), 0)),
            (20, 1)
        );
        assert_eq!(
            policy_window(&limit(10, Duration::from_millis(1500), 2)),
            (15, 2)
        );
        assert_eq!(policy_window(&limit(1, s(3600), 0)), (1, 3600));
    }
}
