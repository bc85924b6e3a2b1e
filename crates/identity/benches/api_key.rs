//! API-key verification from the in-memory cache: the per-request cost of `auth = ["api_key"]`.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use portcullis_identity::ApiKeys;
use portcullis_vault::{Kek, LogEventSink, StaticKeyProvider, Vault};
use std::sync::Arc;

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (keys, key) = rt.block_on(async {
        let store: Arc<dyn portcullis_store::Store> =
            Arc::new(portcullis_store::SqliteStore::memory().await.unwrap());
        let vault = Vault::open(
            store.clone(),
            Arc::new(StaticKeyProvider(Kek::from_bytes([4; 32]))),
            Arc::new(LogEventSink),
        )
        .await
        .unwrap();
        let keys = ApiKeys::open(store, &vault).await.unwrap();
        for i in 0..1000 {
            keys.issue(&format!("client-{i}"), None).await.unwrap();
        }
        let k = keys.issue("bench", None).await.unwrap();
        (keys, k.key.to_string())
    });
    let mut g = c.benchmark_group("api_key");
    g.throughput(Throughput::Elements(1));
    g.bench_function("verify_cached_valid", |b| {
        b.iter(|| keys.verify(&key).unwrap())
    });
    let wrong = format!("{}x", &key[..key.len() - 1]);
    g.bench_function("verify_cached_wrong_secret", |b| {
        b.iter(|| keys.verify(&wrong).is_err())
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
