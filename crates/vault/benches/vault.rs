//! Vault hot paths: resolving a cached secret (every request that injects a credential) and
//! a cold decrypt of a 1 KiB secret (the first request after a rotation or restart).
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use portcullis_vault::{decrypt, encrypt, Kek, LogEventSink, PutOptions, StaticKeyProvider, Vault};
use std::sync::Arc;

fn benches(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let vault = rt.block_on(async {
        let store: Arc<dyn portcullis_store::Store> =
            Arc::new(portcullis_store::SqliteStore::memory().await.unwrap());
        let v = Vault::open(
            store,
            Arc::new(StaticKeyProvider(Kek::from_bytes([3; 32]))),
            Arc::new(LogEventSink),
        )
        .await
        .unwrap();
        let opts = PutOptions {
            consumers: Some(vec!["route:r".into()]),
            ..Default::default()
        };
        v.put("api-token", &[b'x'; 64], &opts).await.unwrap();
        v.resolve("api-token", "route:r").await.unwrap();
        v
    });
    let mut g = c.benchmark_group("vault");
    g.throughput(Throughput::Elements(1));
    g.bench_function("resolve_cached", |b| {
        b.iter(|| {
            let fut = vault.resolve("api-token", "route:r");
            // A cache hit never awaits anything; poll it to completion without a runtime hop.
            let waker = std::task::Waker::noop();
            let mut cx = std::task::Context::from_waker(waker);
            let mut fut = std::pin::pin!(fut);
            match fut.as_mut().poll(&mut cx) {
                std::task::Poll::Ready(v) => v.unwrap(),
                std::task::Poll::Pending => panic!("cache miss"),
            }
        })
    });
    let kek = Kek::from_bytes([5; 32]);
    let sealed = encrypt(&kek, "blob", 1, &[7u8; 1024]).unwrap();
    g.bench_function("decrypt_1KiB_cold", |b| {
        b.iter(|| decrypt(&kek, "blob", 1, &sealed.wrapped_dek, &sealed.ciphertext).unwrap())
    });
    g.finish();
}

use std::future::Future;
criterion_group!(vault_benches, benches);
criterion_main!(vault_benches);
