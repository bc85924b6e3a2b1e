//! One access-log line and the request metrics for every data-plane request.

use http::{Method, StatusCode};
use portcullis_core::{ErrorInfo, RequestContext};
use std::{cell::RefCell, sync::Arc, time::Duration};

/// What the access log and metrics record about a finished request head.
pub(crate) struct Outcome<'a> {
    pub ctx: &'a RequestContext,
    pub method: &'a Method,
    pub path: &'a str,
    pub route: &'a str,
    pub status: StatusCode,
    pub error: Option<&'a ErrorInfo>,
    pub elapsed: Duration,
}

pub(crate) fn record(o: &Outcome<'_>, access_log: bool) {
    let method = portcullis_telemetry::method_label(o.method);
    with_handles(o.route, method, o.status, |h| {
        h.requests.increment(1);
        h.duration.record(o.elapsed.as_secs_f64());
    });

    if !access_log {
        return;
    }
    portcullis_telemetry::log_access(&portcullis_telemetry::AccessRecord {
        request_id: o.ctx.request_id.as_str(),
        client_ip: o.ctx.client_ip,
        client_ip_text: o.ctx.connection.text_of(o.ctx.client_ip),
        method,
        path: o.path,
        route: o.route,
        status: o.status.as_u16(),
        elapsed: o.elapsed,
        error: o.error.map(|e| e.slug),
        cause: o.error.and_then(|e| e.cause.as_deref()),
    });
}

/// The status as a metric label; the common codes without an allocation.
pub(crate) fn status_label(s: StatusCode) -> metrics::SharedString {
    let known = match s.as_u16() {
        200 => "200",
        201 => "201",
        202 => "202",
        204 => "204",
        301 => "301",
        302 => "302",
        304 => "304",
        400 => "400",
        401 => "401",
        403 => "403",
        404 => "404",
        405 => "405",
        408 => "408",
        410 => "410",
        413 => "413",
        415 => "415",
        422 => "422",
        429 => "429",
        431 => "431",
        500 => "500",
        502 => "502",
        503 => "503",
        504 => "504",
        other => return metrics::SharedString::from(other.to_string()),
    };
    metrics::SharedString::const_str(known)
}

/// The registered metrics of one (route, method, status).
struct Handles {
    route: Arc<str>,
    method: &'static str,
    status: StatusCode,
    requests: metrics::Counter,
    duration: metrics::Histogram,
}

/// Most label sets a thread remembers; past it the cache starts over.
const CACHED_LABEL_SETS: usize = 64;

thread_local! {
    /// Handles already looked up by this worker thread. Looking a metric up in the registry
    /// hashes and compares every label on every request (about 1,500 instructions of the
    /// no-policy route's budget); a hit here compares a route id and two small values. The
    /// registry hands out the same metric for the same labels, so a handle stays right across
    /// reloads.
    static HANDLES: RefCell<Vec<Handles>> = const { RefCell::new(Vec::new()) };
}

fn with_handles(route: &str, method: &'static str, status: StatusCode, f: impl FnOnce(&Handles)) {
    let register = || Handles {
        route: Arc::from(route),
        method,
        status,
        requests: metrics::counter!(
            "portcullis_http_requests_total",
            "route" => route.to_string(),
            "method" => method,
            "status" => status_label(status)
        ),
        duration: metrics::histogram!(
            "portcullis_http_request_duration_seconds",
            "route" => route.to_string()
        ),
    };
    HANDLES.with(|cache| {
        let Ok(mut cache) = cache.try_borrow_mut() else {
            // Never re-entered, but never panic on it either.
            return f(&register());
        };
        let hit = cache.iter().position(|h| {
            // Route ids are short: comparing the text is a few instructions. (A pointer
            // test would need the cache to hold the generation's own text alive.)
            &*h.route == route && h.method == method && h.status == status
        });
        let at = match hit {
            Some(i) => i,
            None => {
                if cache.len() >= CACHED_LABEL_SETS {
                    cache.clear();
                }
                cache.push(register());
                cache.len() - 1
            }
        };
        f(&cache[at]);
    })
}
