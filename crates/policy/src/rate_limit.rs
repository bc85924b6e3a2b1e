//! Rate limits: GCRA (the generic cell rate algorithm, equivalent to a token bucket of
//! `limit + burst` refilled at `limit` per `period`), exact under concurrency, counting only
//! admitted requests. The in-memory limiter is sharded; a Redis backend for several instances
//! plugs in behind [`Limiter`].

use crate::{chain::ResponseHeaders, Flow, Policy};
use async_trait::async_trait;
use http::{HeaderValue, Request, Response};
use portcullis_config::{RateKey, RateLimitConfig};
use portcullis_core::{Body, GatewayError, Identity, RequestContext};
use std::{
    collections::HashMap,
    hash::BuildHasher,
    sync::{Arc, Mutex, OnceLock},
    time::{Duration, Instant},
};

/// The outcome of one limiter decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    /// Admitted.
    pub allowed: bool,
    /// Requests still allowed right now.
    pub remaining: u64,
    /// Until the allowance is full again (admitted) or until the next request may pass.
    pub wait: Duration,
}

/// A place rate-limit state lives.
pub trait Limiter: Send + Sync {
    /// Decides for `key` under `limit` and records the request if it is admitted.
    fn check(&self, key: &str, limit: &RateLimitConfig) -> Decision;
}

const SHARDS: usize = 64;
/// Most keys tracked per shard before idle ones are evicted.
const MAX_KEYS_PER_SHARD: usize = 16_384;

/// The in-memory limiter: one theoretical arrival time per key, in sharded maps.
pub struct MemoryLimiter {
    epoch: Instant,
    shards: Vec<Mutex<HashMap<String, u64>>>,
    hasher: std::collections::hash_map::RandomState,
}

impl Default for MemoryLimiter {
    fn default() -> Self {
        MemoryLimiter {
            epoch: Instant::now(),
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            hasher: std::collections::hash_map::RandomState::new(),
        }
    }
}

impl MemoryLimiter {
    /// The process-wide limiter.
    pub fn shared() -> Arc<MemoryLimiter> {
        static SHARED: OnceLock<Arc<MemoryLimiter>> = OnceLock::new();
        SHARED
            .get_or_init(|| Arc::new(MemoryLimiter::default()))
            .clone()
    }
}

impl Limiter for MemoryLimiter {
    fn check(&self, key: &str, l: &RateLimitConfig) -> Decision {
        let now = u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX);
        let t = u64::try_from((l.period.as_nanos() / u128::from(l.limit.max(1))).max(1))
            .unwrap_or(u64::MAX);
        // The bucket holds `limit + burst`: that many may pass at once.
        let capacity = l.limit.saturating_add(l.burst);
        let window = t.saturating_mul(capacity);
        let shard = &self.shards[(self.hasher.hash_one(key) as usize) % SHARDS];
        let Ok(mut map) = shard.lock() else {
            return Decision {
                allowed: false,
                remaining: 0,
                wait: Duration::from_secs(1),
            };
        };
        let tat = map.get(key).copied().unwrap_or(now).max(now);
        let new_tat = tat.saturating_add(t);
        if new_tat - now > window {
            let wait = Duration::from_nanos(new_tat - now - window);
            return Decision {
                allowed: false,
                remaining: 0,
                wait,
            };
        }
        if map.len() >= MAX_KEYS_PER_SHARD && !map.contains_key(key) {
            // Keys whose bucket is full again carry no state worth keeping.
            map.retain(|_, v| *v > now);
        }
        map.insert(key.to_string(), new_tat);
        let used = new_tat - now;
        Decision {
            allowed: true,
            remaining: (window - used) / t,
            wait: Duration::from_nanos(used),
        }
    }
}

/// The rate-limit policy for one route: every configured limit must admit the request.
pub struct RateLimit {
    route: Arc<str>,
    limits: Vec<RateLimitConfig>,
    limiter: Arc<dyn Limiter>,
    policy_header: HeaderValue,
}

impl RateLimit {
    /// Limits for `route` kept in `limiter`.
    pub fn new(route: &str, limits: Vec<RateLimitConfig>, limiter: Arc<dyn Limiter>) -> Self {
        let policy = limits
            .iter()
            .enumerate()
            .map(|(i, l)| {
                format!(
                    "\"l{i}\";q={};w={}",
                    l.limit + l.burst,
                    l.period.as_secs().max(1)
                )
            })
            .collect::<Vec<_>>()
            .join(", ");
        RateLimit {
            route: Arc::from(route),
            limits,
            limiter,
            policy_header: HeaderValue::from_str(&policy)
                .unwrap_or_else(|_| HeaderValue::from_static("")),
        }
    }

    fn key(&self, l: &RateLimitConfig, i: usize, req: &Request<Body>) -> Option<String> {
        let ctx = req.extensions().get::<RequestContext>()?;
        let client = req
            .extensions()
            .get::<Identity>()
            .map(|id| id.client_id.clone());
        let part = match &l.per {
            RateKey::Client => format!("c:{}", client?),
            RateKey::Ip => format!("ip:{}", ctx.client_ip),
            RateKey::Route => "r".to_string(),
            RateKey::ClientRoute => format!("cr:{}", client?),
            RateKey::Header(h) => format!(
                "h:{}:{}",
                h,
                String::from_utf8_lossy(req.headers().get(h).map_or(&b""[..], |v| v.as_bytes()))
            ),
        };
        Some(format!("{}|{i}|{part}", self.route))
    }
}

#[derive(Clone, Copy)]
struct Allowance {
    remaining: u64,
    reset: Duration,
}

#[async_trait]
impl Policy for RateLimit {
    fn name(&self) -> &'static str {
        "rate_limit"
    }

    async fn on_request(&self, mut req: Request<Body>) -> Result<Flow, GatewayError> {
        let mut tightest: Option<Allowance> = None;
        for (i, l) in self.limits.iter().enumerate() {
            // Fail closed: a per-client limit with no identity refuses rather than skips.
            let key = self
                .key(l, i, &req)
                .ok_or(GatewayError::Unauthorized { presented: false })?;
            let d = self.limiter.check(&key, l);
            if !d.allowed {
                metrics::counter!("portcullis_rate_limited_total", "route" => self.route.to_string(), "limit" => i.to_string()).increment(1);
                // Answer here rather than fail, so the 429 carries this policy's headers too.
                let err = GatewayError::TooManyRequests {
                    retry_after: d.wait.max(Duration::from_secs(1)),
                };
                let id = req
                    .extensions()
                    .get::<RequestContext>()
                    .map(|c| c.request_id.clone())
                    .unwrap_or_else(portcullis_core::RequestId::generate);
                let mut res = portcullis_core::problem_response(&err, &id);
                res.headers_mut()
                    .insert("ratelimit-policy", self.policy_header.clone());
                res.headers_mut()
                    .insert("ratelimit", HeaderValue::from_static("\"l\";r=0"));
                return Ok(Flow::Respond(res));
            }
            if tightest.is_none_or(|t| d.remaining < t.remaining) {
                tightest = Some(Allowance {
                    remaining: d.remaining,
                    reset: d.wait,
                });
            }
        }
        if let Some(a) = tightest {
            // IETF RateLimit header: remaining requests and seconds until the allowance is full.
            let v = format!(
                "\"l\";r={};t={}",
                a.remaining,
                a.reset.as_secs_f64().ceil() as u64
            );
            if let Ok(v) = HeaderValue::from_str(&v) {
                let mut h = http::HeaderMap::new();
                h.insert("ratelimit", v);
                req.extensions_mut().insert(ResponseHeaders(h));
            }
        }
        Ok(Flow::Continue(req))
    }

    async fn on_response(
        &self,
        mut res: Response<Body>,
        _ctx: &RequestContext,
    ) -> Result<Response<Body>, GatewayError> {
        res.headers_mut()
            .insert("ratelimit-policy", self.policy_header.clone());
        Ok(res)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limit(limit: u64, secs: u64, burst: u64) -> RateLimitConfig {
        RateLimitConfig {
            per: RateKey::Client,
            limit,
            period: Duration::from_secs(secs),
            burst,
        }
    }

    #[test]
    fn admits_exactly_limit_plus_burst_at_once() {
        let m = MemoryLimiter::default();
        let l = limit(100, 60, 20);
        let admitted = (0..200).filter(|_| m.check("k", &l).allowed).count();
        assert_eq!(admitted, 120);
        let other = (0..10).filter(|_| m.check("other", &l).allowed).count();
        assert_eq!(other, 10);
    }

    #[test]
    fn rejected_requests_do_not_consume_allowance() {
        let m = MemoryLimiter::default();
        let l = limit(2, 10, 0);
        assert!(m.check("k", &l).allowed);
        let second = m.check("k", &l);
        assert!(second.allowed);
        assert_eq!(second.remaining, 0);
        let first_reject = m.check("k", &l);
        assert!(!first_reject.allowed);
        for _ in 0..50 {
            let again = m.check("k", &l);
            assert!(!again.allowed);
            // Had rejections counted, the wait would grow by 5 s each time.
            assert!(again.wait <= first_reject.wait);
        }
    }

    #[test]
    fn concurrent_callers_get_exactly_the_limit() {
        let m = Arc::new(MemoryLimiter::default());
        let l = limit(100, 60, 0);
        let handles: Vec<_> = (0..8)
            .map(|_| {
                let (m, l) = (m.clone(), l.clone());
                std::thread::spawn(move || (0..50).filter(|_| m.check("k", &l).allowed).count())
            })
            .collect();
        let total: usize = handles.into_iter().map(|h| h.join().unwrap_or(0)).sum();
        assert_eq!(total, 100);
    }
}
