//! Prometheus metrics. The recorder is process-global (the `metrics` facade); the admin
//! listener renders it. Labels are bounded by construction: route ids come from config and
//! methods outside the standard set collapse to `OTHER`, so a client cannot grow the series.

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use std::{sync::OnceLock, time::Duration};

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Access to the rendered metrics.
#[derive(Clone)]
pub struct Metrics {
    handle: PrometheusHandle,
}

impl Metrics {
    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        self.handle.render()
    }
}

/// Latency buckets in seconds: sub-millisecond resolution for the gateway's own overhead, up
/// to the longest sensible route timeout.
const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0,
];

/// Installs the global recorder once (later calls share it) and starts its upkeep task on the
/// current tokio runtime.
pub fn init_metrics() -> Metrics {
    let handle = HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
                .unwrap_or_else(|_| PrometheusBuilder::new());
            match builder.install_recorder() {
                Ok(h) => {
                    let upkeep = h.clone();
                    std::thread::Builder::new()
                        .name("metrics-upkeep".into())
                        .spawn(move || loop {
                            std::thread::sleep(Duration::from_secs(5));
                            upkeep.run_upkeep();
                        })
                        .ok();
                    h
                }
                // Another recorder is installed (only possible in tests that install their
                // own); render an empty, private one rather than fail.
                Err(_) => PrometheusBuilder::new().build_recorder().handle(),
            }
        })
        .clone();
    describe();
    Metrics { handle }
}

fn describe() {
    metrics::describe_counter!(
        "portcullis_http_requests_total",
        "Data-plane requests by route, method and status."
    );
    metrics::describe_histogram!(
        "portcullis_http_request_duration_seconds",
        metrics::Unit::Seconds,
        "Time from request head received to response head sent, by route."
    );
    metrics::describe_counter!(
        "portcullis_undeclared_requests_total",
        "Requests that matched no declared route, by method."
    );
    metrics::describe_counter!(
        "portcullis_upstream_errors_total",
        "Upstream failures by route and kind."
    );
    metrics::describe_counter!(
        "portcullis_shed_total",
        "Requests and connections refused under load, by reason (route_concurrency with its route, or connections)."
    );
    metrics::describe_gauge!(
        "portcullis_open_connections",
        "Open data-plane client connections (capped by server.max_connections)."
    );
    metrics::describe_counter!(
        "portcullis_config_reloads_total",
        "Configuration reloads by result."
    );
}

/// A bounded label for an HTTP method.
pub fn method_label(m: &http::Method) -> &'static str {
    match *m {
        http::Method::GET => "GET",
        http::Method::HEAD => "HEAD",
        http::Method::POST => "POST",
        http::Method::PUT => "PUT",
        http::Method::PATCH => "PATCH",
        http::Method::DELETE => "DELETE",
        http::Method::OPTIONS => "OPTIONS",
        _ => "OTHER",
    }
}
