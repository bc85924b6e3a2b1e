//! Limiter decisions: the in-memory limiter on a warm key (the hot path of every rate-limited
//! request) and, when a Redis answers on 127.0.0.1:6379, the Redis script round trip.

#![allow(missing_docs)]

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use portcullis_state::{Check, Limiter, MemoryLimiter, Rate, RedisLimiter, RedisOptions};
use std::{hint::black_box, time::Duration};

fn rate() -> Rate {
    // Never refused during the run, so every iteration is a full admit-and-record.
    Rate {
        limit: u64::MAX / 4,
        period: Duration::from_secs(1),
        burst: 0,
    }
}

fn memory(c: &mut Criterion) {
    let m = MemoryLimiter::default();
    let mut g = c.benchmark_group("memory_limiter");
    g.throughput(Throughput::Elements(1));
    let one = [Check {
        key: "orders-list|0|c:billing-workflow",
        rate: rate(),
    }];
    g.bench_function("warm_key_one_limit", |b| {
        b.iter(|| black_box(m.decide(black_box(&one))))
    });
    let two = [
        one[0],
        Check {
            key: "orders-list|1|ip:192.0.2.10",
            rate: rate(),
        },
    ];
    g.bench_function("warm_keys_two_limits", |b| {
        b.iter(|| black_box(m.decide(black_box(&two))))
    });
    g.finish();
}

fn redis(c: &mut Criterion) {
    let Ok(rt) = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    else {
        return;
    };
    let opts = RedisOptions {
        url: "redis://127.0.0.1:6379".into(),
        key_prefix: format!("portcullis-bench-{}", std::process::id()),
        timeout: Duration::from_secs(1),
    };
    let Ok(limiter) = rt.block_on(async { RedisLimiter::new(&opts) }) else {
        return;
    };
    if rt.block_on(limiter.ping()).is_err() {
        eprintln!("no Redis on 127.0.0.1:6379; skipping the Redis round trip");
        return;
    }
    let one = [Check {
        key: "orders-list|0|c:billing-workflow",
        rate: rate(),
    }];
    let mut g = c.benchmark_group("redis_limiter");
    g.throughput(Throughput::Elements(1));
    g.bench_function("round_trip_one_limit", |b| {
        b.iter(|| black_box(rt.block_on(limiter.check(&one))))
    });
    g.finish();
}

criterion_group!(benches, memory, redis);
criterion_main!(benches);
