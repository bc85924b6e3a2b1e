//! Two vaults on one PostgreSQL database (a fresh one per test, on the machine's real server)
//! are two gateway instances: concurrent writers to one secret all land, and an instance that
//! missed a master-key rotation refuses to write instead of encrypting under the retired key.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use portcullis_store::{testing::TestDb, PgStore, Store};
use portcullis_vault::{FileKeyProvider, LogEventSink, PutOptions, Vault, VaultError};
use std::{collections::BTreeSet, path::Path, sync::Arc};

async fn instance(db: &TestDb, key: &Path) -> Arc<Vault> {
    let store: Arc<dyn Store> = Arc::new(PgStore::connect(&db.url()).await.unwrap());
    Vault::open(
        store,
        Arc::new(FileKeyProvider::new(key.to_path_buf(), true)),
        Arc::new(LogEventSink),
    )
    .await
    .unwrap()
}

fn opts() -> PutOptions {
    PutOptions {
        consumers: Some(vec!["route:a".into()]),
        actor: "test".into(),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writes_to_one_secret_from_two_instances_all_land_and_one_stays_usable() {
    let db = TestDb::create().await;
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("master.key");
    let a = instance(&db, &key).await;
    let b = instance(&db, &key).await;
    a.put("tok", b"v-initial", &opts()).await.unwrap();
    let tasks: Vec<_> = (0..24)
        .map(|i| {
            let v = if i % 2 == 0 { a.clone() } else { b.clone() };
            tokio::spawn(async move { v.put("tok", format!("v-{i}").as_bytes(), &opts()).await })
        })
        .collect();
    let mut versions = BTreeSet::new();
    for t in tasks {
        versions.insert(t.await.unwrap().expect("every write lands"));
    }
    assert_eq!(versions, (2..=25).collect::<BTreeSet<i64>>());
    // Whichever write was last, the newest version decrypts, on both instances.
    for v in [&a, &b] {
        v.invalidate();
        let got = v.resolve("tok", "route:a").await.unwrap();
        assert_eq!(got.version, 25);
        assert!(got.expose().starts_with(b"v-"));
    }
    assert_eq!(a.show("tok").await.unwrap().current_version, Some(25));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_that_missed_a_kek_rotation_refuses_to_write_under_the_retired_key() {
    let db = TestDb::create().await;
    let here = tempfile::tempdir().unwrap();
    let there = tempfile::tempdir().unwrap();
    let a = instance(&db, &here.path().join("master.key")).await;
    // The other instance holds a copy of the same key file, on its own machine.
    std::fs::copy(
        here.path().join("master.key"),
        there.path().join("master.key"),
    )
    .unwrap();
    let b = instance(&db, &there.path().join("master.key")).await;
    a.put("tok", b"before", &opts()).await.unwrap();
    assert_eq!(
        b.resolve("tok", "route:a").await.unwrap().expose(),
        b"before"
    );

    let p = a.rotate_kek(None, "test").await.unwrap();
    assert!(p.complete);
    let wider = PutOptions {
        consumers: Some(vec!["route:a".into(), "route:b".into()]),
        ..opts()
    };
    let err = b.put("tok", b"after", &wider).await.unwrap_err();
    assert!(matches!(&err, VaultError::RetiredKey), "{err}");
    assert_eq!(
        a.show("tok").await.unwrap().versions.len(),
        1,
        "nothing was written under the retired key"
    );
    assert_eq!(
        a.show("tok").await.unwrap().consumers,
        ["route:a"],
        "nor the refused write's settings"
    );
    // The rotating instance still writes, under the new key, and reads back.
    a.put("tok", b"after", &opts()).await.unwrap();
    assert_eq!(
        a.resolve("tok", "route:a").await.unwrap().expose(),
        b"after"
    );
}
