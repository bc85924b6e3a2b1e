//! Request quotas: daily and monthly counts per client (over all its requests) and per client
//! on one route, over UTC calendar windows, persisted in the store so they survive restarts
//! (and are shared by instances on one database). Charged after the rate limits, all or
//! nothing, so a refused request uses up nothing. If the store cannot answer, the request is
//! refused (503): a quota is a promise to the party paying for the upstream.

use crate::{
    chain::ResponseHeaders,
    rate_limit::{RATELIMIT, RATELIMIT_POLICY},
    Clients, Flow, Policy, Step,
};
use http::{HeaderMap, HeaderValue, Request};
use portcullis_config::QuotaConfig;
use portcullis_core::{text::seconds_up, Body, GatewayError, Identity, RequestContext};
use portcullis_store::{QuotaCharge, Store};
use std::{
    sync::{
        atomic::{AtomicI32, Ordering},
        Arc,
    },
    time::Duration,
};
use time::{Date, OffsetDateTime};

/// The quota policy for one route.
pub struct Quota {
    route: Arc<str>,
    route_quota: Option<QuotaConfig>,
    clients: Clients,
    store: Option<Arc<dyn Store>>,
    /// The day (Julian day number) whose older windows were last pruned.
    pruned: AtomicI32,
}

/// One counter of this request: its name in the `RateLimit` headers, the charge, its window's
/// length and reset.
struct Counter {
    name: &'static str,
    charge: QuotaCharge,
    window: &'static str,
    length: Duration,
    reset: Duration,
}

impl Quota {
    /// Quotas on `route`: its own per-client quota and each client's overall quota.
    pub fn new(
        route: &str,
        route_quota: Option<QuotaConfig>,
        clients: Clients,
        store: Option<Arc<dyn Store>>,
    ) -> Self {
        Quota {
            route: Arc::from(route),
            route_quota,
            clients,
            store,
            pruned: AtomicI32::new(0),
        }
    }

    fn counters(&self, client: &str, now: OffsetDateTime) -> Vec<Counter> {
        let today = now.date();
        let tomorrow = today.next_day().unwrap_or(today);
        let (y, m) = (today.year(), today.month());
        let next_month = if m == time::Month::December {
            Date::from_calendar_date(y + 1, time::Month::January, 1)
        } else {
            Date::from_calendar_date(y, m.next(), 1)
        }
        .unwrap_or(tomorrow);
        let this_month = Date::from_calendar_date(y, m, 1).unwrap_or(today);
        // Kept exact; the headers round it up, so a client that waits `Retry-After` seconds
        // is never a fraction of a second early.
        let until = |d: Date| {
            Duration::try_from(d.midnight().assume_utc() - now)
                .unwrap_or(Duration::ZERO)
                .max(Duration::from_secs(1))
        };
        let day_len = Duration::from_secs(86_400);
        let month_len = Duration::from_secs(
            u64::try_from((next_month - this_month).whole_seconds()).unwrap_or(2_592_000),
        );
        let day = format!("d:{today}");
        let month = format!("m:{y:04}-{:02}", m as u8);
        let mut out = Vec::new();
        let mut add = |name, key: &str, q: &QuotaConfig| {
            if let Some(limit) = q.daily {
                out.push(Counter {
                    name: if name == "client" {
                        "client-daily"
                    } else {
                        "route-daily"
                    },
                    charge: QuotaCharge {
                        key: key.to_string(),
                        window: day.clone(),
                        limit,
                    },
                    window: "daily",
                    length: day_len,
                    reset: until(tomorrow),
                });
            }
            if let Some(limit) = q.monthly {
                out.push(Counter {
                    name: if name == "client" {
                        "client-monthly"
                    } else {
                        "route-monthly"
                    },
                    charge: QuotaCharge {
                        key: key.to_string(),
                        window: month.clone(),
                        limit,
                    },
                    window: "monthly",
                    length: month_len,
                    reset: until(next_month),
                });
            }
        };
        if let Some(q) = self.clients.get(client).and_then(|c| c.quota.as_ref()) {
            add("client", &format!("c:{client}"), q);
        }
        if let Some(q) = &self.route_quota {
            add("route", &format!("cr:{}:{client}", self.route), q);
        }
        out
    }

    /// Once a day, drops the counts of past windows, in the background.
    fn prune(&self, store: &Arc<dyn Store>, now: OffsetDateTime) {
        let day = now.date().to_julian_day();
        let last = self.pruned.load(Ordering::Relaxed);
        if last == day
            || self
                .pruned
                .compare_exchange(last, day, Ordering::AcqRel, Ordering::Relaxed)
                .is_err()
        {
            return;
        }
        let keep = vec![
            format!("d:{}", now.date()),
            format!("m:{:04}-{:02}", now.year(), now.month() as u8),
        ];
        let store = store.clone();
        tokio::spawn(async move {
            if let Err(e) = store.quotas().prune_quotas(&keep).await {
                tracing::warn!(error = %e, "pruning past quota windows failed");
            }
        });
    }
}

/// Longest wait for the store to charge a request's quotas, before it is refused with 503: a
/// stalled disk or database must not hold requests (and their connections) for ever.
const STORE_WAIT: Duration = Duration::from_secs(2);

impl Quota {
    /// The counter a refusal reports: of the full counters, the one that resets last, so a
    /// client told to come back tomorrow is not refused again by a full monthly quota. The
    /// store names the first full one, `first`; the later ones are looked up only now.
    async fn binding<'c>(
        &self,
        store: &Arc<dyn Store>,
        counters: &'c [Counter],
        first: usize,
    ) -> &'c Counter {
        let mut binding = &counters[first];
        for c in counters.iter().skip(first + 1) {
            if c.reset <= binding.reset {
                continue;
            }
            let used = tokio::time::timeout(
                STORE_WAIT,
                store.quotas().quota_used(&c.charge.key, &c.charge.window),
            )
            .await;
            if matches!(used, Ok(Ok(u)) if u >= c.charge.limit) {
                binding = c;
            }
        }
        binding
    }
}

fn policy_item(c: &Counter) -> String {
    format!(
        "\"{}\";q={};w={}",
        c.name,
        c.charge.limit,
        c.length.as_secs()
    )
}

impl Policy for Quota {
    fn name(&self) -> &'static str {
        "quota"
    }

    fn has_response_phase(&self) -> bool {
        false
    }

    fn on_request(&self, req: Request<Body>) -> Step<'_, Flow> {
        Step::later(self.request_phase(req))
    }
}

/// The request phase itself: it charges the quota in the store, so it is an async method
/// whose future `Step::later` boxes.
impl Quota {
    async fn request_phase(&self, mut req: Request<Body>) -> Result<Flow, GatewayError> {
        let Some(client) = req
            .extensions()
            .get::<Identity>()
            .map(|i| i.client_id.clone())
        else {
            return Err(GatewayError::Unauthorized { presented: false });
        };
        let now = OffsetDateTime::now_utc();
        let counters = self.counters(&client, now);
        if counters.is_empty() {
            return Ok(Flow::Continue(req));
        }
        let Some(store) = &self.store else {
            return Err(GatewayError::Unavailable {
                retry_after: Some(Duration::from_secs(1)),
            });
        };
        self.prune(store, now);
        let charges: Vec<QuotaCharge> = counters.iter().map(|c| c.charge.clone()).collect();
        let policies = counters
            .iter()
            .map(policy_item)
            .collect::<Vec<_>>()
            .join(", ");
        let policy_header = HeaderValue::from_str(&policies).ok();
        let charged = match tokio::time::timeout(STORE_WAIT, store.quotas().charge(&charges)).await
        {
            Ok(answer) => answer.map_err(|e| e.to_string()),
            Err(_) => Err(format!("no answer within {STORE_WAIT:?}")),
        };
        match charged {
            Err(e) => {
                tracing::warn!(error = %e, route = %self.route, "quota store unavailable; refusing");
                Err(GatewayError::Unavailable {
                    retry_after: Some(Duration::from_secs(1)),
                })
            }
            Ok(Err(i)) => {
                let c = self.binding(store, &counters, i).await;
                metrics::counter!("portcullis_quota_exceeded_total", "route" => self.route.to_string(), "quota" => c.name).increment(1);
                let err = GatewayError::QuotaExceeded {
                    retry_after: c.reset,
                    window: c.window,
                };
                let id = req
                    .extensions()
                    .get::<RequestContext>()
                    .map(|c| c.request_id.clone())
                    .unwrap_or_else(portcullis_core::RequestId::generate);
                let mut res = portcullis_core::problem_response(&err, &id);
                if let Some(p) = policy_header {
                    res.headers_mut().append(RATELIMIT_POLICY, p);
                }
                let item = format!("\"{}\";r=0;t={}", c.name, seconds_up(c.reset));
                if let Ok(v) = HeaderValue::from_str(&item) {
                    res.headers_mut().append(RATELIMIT, v);
                }
                Ok(Flow::Respond(res))
            }
            Ok(Ok(used)) => {
                // The tightest quota goes into the RateLimit list: what is left and seconds
                // until it resets.
                let (c, left) = counters
                    .iter()
                    .zip(&used)
                    .map(|(c, u)| (c, c.charge.limit.saturating_sub(*u)))
                    .min_by_key(|(_, left)| *left)
                    .unwrap_or((&counters[0], 0));
                let mut h = HeaderMap::new();
                if let Ok(v) = HeaderValue::from_str(&format!(
                    "\"{}\";r={left};t={}",
                    c.name,
                    seconds_up(c.reset)
                )) {
                    h.append(RATELIMIT, v);
                }
                if let Some(p) = policy_header {
                    h.append(RATELIMIT_POLICY, p);
                }
                req.extensions_mut().insert(ResponseHeaders(h));
                Ok(Flow::Continue(req))
            }
        }
    }
}
