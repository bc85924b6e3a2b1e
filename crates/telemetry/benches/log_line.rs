//! The access log's per-request costs: formatting the line on the request task, and
//! redacting it on the writer thread.
#![allow(missing_docs)]

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use portcullis_telemetry::{AccessRecord, Redactor};
use std::{
    net::{IpAddr, Ipv4Addr},
    time::{Duration, SystemTime},
};

fn record() -> AccessRecord<'static> {
    AccessRecord {
        request_id: "5f0c6a3e-2b7d-4c1e-9a8f-0d2e4b6c8a1f",
        client_ip: IpAddr::V4(Ipv4Addr::new(203, 0, 113, 27)),
        client_ip_text: None,
        method: "GET",
        path: "/api/orders/12345/items",
        route: "orders",
        status: 200,
        elapsed: Duration::from_micros(734),
        error: None,
        cause: None,
    }
}

fn benches(c: &mut Criterion) {
    let r = record();
    let mut line = Vec::with_capacity(512);
    c.bench_function("access_line_format", |b| {
        b.iter(|| {
            line.clear();
            black_box(&r).write_json(&mut line, SystemTime::now());
            black_box(line.len())
        })
    });
    let redactor = Redactor::default();
    let mut text = Vec::new();
    r.write_json(&mut text, SystemTime::now());
    let text = String::from_utf8(text).unwrap_or_default();
    // The check that lets the writer copy an access line without the scan above.
    let values = [r.request_id, r.method, r.path, r.route, "", ""];
    c.bench_function("access_line_clears", |b| {
        b.iter(|| black_box(redactor.clears(black_box(&values))))
    });
    let mut out = Vec::with_capacity(512);
    c.bench_function("access_line_redact", |b| {
        b.iter(|| {
            out.clear();
            redactor.redact_into(black_box(&text), &mut out);
            black_box(out.len())
        })
    });
}

criterion_group!(log_line, benches);
criterion_main!(log_line);
