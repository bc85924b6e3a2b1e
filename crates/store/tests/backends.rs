//! One set of behaviours every `Store` backend must have, run against embedded SQLite and
//! against the machine's real PostgreSQL (a fresh database per test, dropped afterwards), and
//! what sharing one PostgreSQL database between instances must keep exact: quota charges,
//! outbox leases and vault version numbers under concurrent writers.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use portcullis_store::testing::TestDb;
use portcullis_store::{
    ApiKeyRecord, KekRecord, OutboxEvent, PgStore, QuotaCharge, SecretRecord, SqliteStore, Store,
    StoreError, UndeclaredHit, VersionRecord, KEK_NOT_ACTIVE,
};
use std::{collections::BTreeSet, sync::Arc};

async fn pg(db: &TestDb) -> Arc<dyn Store> {
    Arc::new(PgStore::connect(&db.url()).await.unwrap())
}

async fn sqlite() -> Arc<dyn Store> {
    Arc::new(SqliteStore::memory().await.unwrap())
}

/// Runs `check` on SQLite, then on a fresh PostgreSQL database.
macro_rules! on_both_backends {
    ($name:ident, $check:ident) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            $check(sqlite().await).await;
            let db = TestDb::create().await;
            $check(pg(&db).await).await;
        }
    };
}

fn hit(method: &str, shape: &str, hits: u64, t: i64) -> UndeclaredHit {
    UndeclaredHit {
        method: method.into(),
        shape: shape.into(),
        hits,
        first_seen: t,
        last_seen: t,
    }
}

async fn undeclared_hits_accumulate(s: Arc<dyn Store>) {
    s.ping().await.unwrap();
    s.record_undeclared(&[hit("GET", "/a/{id}", 2, 10), hit("POST", "/b", 1, 11)])
        .await
        .unwrap();
    s.record_undeclared(&[hit("GET", "/a/{id}", 3, 20), hit("POST", "/B", 1, 5)])
        .await
        .unwrap();
    let all = s.undeclared().await.unwrap();
    assert_eq!(all[0], {
        let mut h = hit("GET", "/a/{id}", 5, 10);
        h.last_seen = 20;
        h
    });
    // Ties in byte order, whatever the database's collation.
    let rest: Vec<_> = all[1..].iter().map(|h| h.shape.as_str()).collect();
    assert_eq!(rest, ["/B", "/b"]);
}
on_both_backends!(
    undeclared_hits_accumulate_on_both,
    undeclared_hits_accumulate
);

fn charge(key: &str, limit: u64) -> QuotaCharge {
    QuotaCharge {
        key: key.into(),
        window: "d:2026-11-23".into(),
        limit,
    }
}

async fn quota_charges_are_all_or_nothing(s: Arc<dyn Store>) {
    let q = s.quotas();
    // Listed in an order other than the keys' own: the answer follows the list.
    let both = [charge("route", 2), charge("client", 10)];
    assert_eq!(q.charge(&both).await.unwrap(), Ok(vec![1, 1]));
    assert_eq!(q.charge(&both).await.unwrap(), Ok(vec![2, 2]));
    assert_eq!(q.charge(&both).await.unwrap(), Err(0));
    assert_eq!(q.quota_used("client", "d:2026-11-23").await.unwrap(), 2);
    assert_eq!(q.quota_used("route", "d:2026-11-23").await.unwrap(), 2);
    assert_eq!(q.quota_used("other", "d:2026-11-23").await.unwrap(), 0);
    q.prune_quotas(&["d:2026-11-24".into(), "m:2026-11".into()])
        .await
        .unwrap();
    assert_eq!(q.quota_used("client", "d:2026-11-23").await.unwrap(), 0);
}
on_both_backends!(quota_charges_on_both, quota_charges_are_all_or_nothing);

fn event(id: &str) -> OutboxEvent {
    OutboxEvent {
        id: 0,
        webhook: "orders".into(),
        message_id: id.into(),
        event_type: Some("order.paid".into()),
        content_type: Some("application/json".into()),
        body: b"{\"a\":1}\xff\x00".to_vec(),
        received_at: 100,
        attempts: 0,
        next_attempt_at: 100,
        last_error: None,
    }
}

async fn outbox_events_are_claimed_retried_and_dead_lettered(s: Arc<dyn Store>) {
    let o = s.outbox();
    assert!(o.enqueue(&event("m1")).await.unwrap());
    assert!(!o.enqueue(&event("m1")).await.unwrap(), "one row per id");
    assert!(o.enqueue(&event("m2")).await.unwrap());
    let got = o.claim_due(100, 130, 10, "w1").await.unwrap();
    assert_eq!(got.len(), 2);
    assert!(got[0].id < got[1].id);
    assert_eq!(
        got[0].body,
        b"{\"a\":1}\xff\x00".to_vec(),
        "bytes kept exactly"
    );
    assert_eq!(got[0].event_type.as_deref(), Some("order.paid"));
    assert!(
        o.claim_due(120, 150, 10, "w2").await.unwrap().is_empty(),
        "leased"
    );
    // The lease runs out: due again, now leased to the second claimer.
    assert_eq!(o.claim_due(131, 160, 10, "w2").await.unwrap().len(), 2);
    // The first claimer's outcomes no longer count, and its renewal says so.
    assert!(!o.renew(got[0].id, "w1", 500).await.unwrap());
    assert!(!o.delivered(got[0].id, "w1").await.unwrap());
    assert!(!o.retry_later(got[1].id, "w1", 1, 200, "503").await.unwrap());
    assert!(!o.dead(got[1].id, "w1", 1, "x").await.unwrap());
    assert_eq!(o.pending_count().await.unwrap(), 2, "nothing changed");
    assert!(o.renew(got[0].id, "w2", 170).await.unwrap());
    assert!(o.delivered(got[0].id, "w2").await.unwrap());
    assert!(o.retry_later(got[1].id, "w2", 1, 200, "503").await.unwrap());
    assert!(o.claim_due(199, 230, 10, "w3").await.unwrap().is_empty());
    let again = o.claim_due(200, 230, 10, "w3").await.unwrap();
    assert_eq!((again.len(), again[0].attempts), (1, 1));
    // A lease that ran out but was not taken over is still its claimer's.
    assert!(o.renew(again[0].id, "w3", 400).await.unwrap());
    assert!(o.dead(again[0].id, "w3", 2, "max age").await.unwrap());
    assert_eq!(o.pending_count().await.unwrap(), 0);
    let dead = o.dead_letters().await.unwrap();
    assert_eq!(dead[0].last_error.as_deref(), Some("max age"));
    assert!(
        !o.renew(dead[0].id, "w3", 500).await.unwrap(),
        "dead is not renewed"
    );
    assert!(o.replay_dead(dead[0].id, 300).await.unwrap());
    assert!(!o.drop_dead(dead[0].id).await.unwrap(), "pending, not dead");
    assert_eq!(o.claim_due(300, 330, 10, "w4").await.unwrap().len(), 1);
}
on_both_backends!(
    outbox_on_both,
    outbox_events_are_claimed_retried_and_dead_lettered
);

fn kek(id: &str) -> KekRecord {
    KekRecord {
        id: id.into(),
        kcv: vec![0xaa; 32],
        state: "active".into(),
        created_at: 1,
    }
}

fn secret(name: &str, keep: i64) -> SecretRecord {
    SecretRecord {
        name: name.into(),
        secret_type: "bearer_token".into(),
        created_at: 1,
        updated_at: 1,
        expires_at: Some(10_000),
        max_age_secs: None,
        consumers: vec!["route:orders".into(), "webhook:gh".into()],
        keep_versions: keep,
    }
}

fn version(name: &str, kek: &str, number: i64) -> VersionRecord {
    VersionRecord {
        name: name.into(),
        version: number,
        state: "active".into(),
        created_at: 5,
        valid_until: None,
        first_used_at: None,
        kek_id: kek.into(),
        wrapped_dek: vec![1, 2, 3],
        ciphertext: vec![9, 8, 7, 0],
    }
}

async fn vault_versions_rotate_and_wipe(s: Arc<dyn Store>) {
    let v = s.vault();
    let e0 = v.epoch().await.unwrap();
    let kek = KekRecord {
        id: "k1".into(),
        kcv: vec![0xaa; 32],
        state: "active".into(),
        created_at: 1,
    };
    v.insert_kek(&kek).await.unwrap();
    v.insert_kek(&kek).await.unwrap();
    assert_eq!(v.keks().await.unwrap(), vec![kek.clone()]);
    // Another secret, under another active KEK so that the k1 listings below are tok's.
    v.insert_kek(&KekRecord {
        id: "k0".into(),
        created_at: 2,
        ..kek.clone()
    })
    .await
    .unwrap();
    v.add_version(&secret("Alpha", 2), &version("Alpha", "k0", 1), None)
        .await
        .unwrap();
    v.add_version(&secret("tok", 2), &version("tok", "k1", 1), None)
        .await
        .unwrap();
    assert_eq!(v.secret("tok").await.unwrap(), Some(secret("tok", 2)));
    let names: Vec<_> = v
        .secrets()
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.name)
        .collect();
    assert_eq!(names, ["Alpha", "tok"]);
    assert!(v.secret("none").await.unwrap().is_none());

    v.add_version(&secret("tok", 2), &version("tok", "k1", 2), Some(50))
        .await
        .unwrap();
    // A number another writer took, or a key that is not the active one, changes nothing.
    let e1 = v.epoch().await.unwrap();
    for (taken, kek) in [(2, "k1"), (4, "k1"), (3, "unknown")] {
        assert!(
            matches!(
                v.add_version(&secret("tok", 7), &version("tok", kek, taken), Some(60))
                    .await,
                Err(StoreError::Conflict(_))
            ),
            "{taken} {kek}"
        );
    }
    assert_eq!(v.epoch().await.unwrap(), e1);
    assert_eq!(
        v.secret("tok").await.unwrap().map(|s| s.keep_versions),
        Some(2),
        "nor the refused write's settings"
    );
    assert_eq!(v.versions("tok").await.unwrap().len(), 2);
    v.add_version(&secret("tok", 2), &version("tok", "k1", 3), Some(60))
        .await
        .unwrap();
    let vs = v.versions("tok").await.unwrap();
    assert_eq!(vs.iter().map(|x| x.version).collect::<Vec<_>>(), [3, 2, 1]);
    // Two versions kept with ciphertext; the oldest is wiped, not just hidden.
    assert_eq!(vs[2].state, "destroyed");
    assert!(vs[2].ciphertext.is_empty() && vs[2].wrapped_dek.is_empty());
    assert_eq!(
        vs[1].valid_until,
        Some(60),
        "superseded with a grace period"
    );
    assert_eq!(vs[0].ciphertext, vec![9, 8, 7, 0]);

    assert!(v.mark_first_use("tok", 3, 77).await.unwrap());
    assert!(
        !v.mark_first_use("tok", 3, 78).await.unwrap(),
        "only the first"
    );
    assert!(v.set_version_state("tok", 2, "disabled").await.unwrap());
    assert!(
        !v.set_version_state("tok", 1, "active").await.unwrap(),
        "destroyed stays"
    );
    let wrapped = v.versions_wrapped_by("k1", 10).await.unwrap();
    assert_eq!(
        wrapped.iter().map(|x| x.version).collect::<Vec<_>>(),
        [2, 3]
    );
    assert!(v.rewrap("tok", 3, "k1", "k2", &[4, 5]).await.unwrap());
    assert!(
        !v.rewrap("tok", 3, "k1", "k2", &[4, 5]).await.unwrap(),
        "from k1 only"
    );
    assert!(
        !v.rewrap("tok", 1, "k1", "k2", &[4, 5]).await.unwrap(),
        "a destroyed version gets no wrapped key back"
    );
    v.set_kek_state("k1", "retired").await.unwrap();
    assert_eq!(v.keks().await.unwrap()[0].state, "retired");
    assert!(
        matches!(
            v.add_version(&secret("tok", 2), &version("tok", "k1", 4), None).await,
            Err(StoreError::Conflict(why)) if why == KEK_NOT_ACTIVE
        ),
        "a retired KEK wraps nothing new"
    );
    assert!(v.epoch().await.unwrap() > e0, "writes tell other instances");
}
on_both_backends!(vault_on_both, vault_versions_rotate_and_wipe);

async fn api_keys_are_stored_revoked_and_counted(s: Arc<dyn Store>) {
    let k = s.keys();
    let e0 = k.keys_epoch().await.unwrap();
    let key = ApiKeyRecord {
        key_id: "abc".into(),
        client_id: "billing".into(),
        hash: vec![7; 32],
        created_at: 10,
        expires_at: None,
        revoked_at: None,
        last_used_at: None,
    };
    k.insert_key(&key).await.unwrap();
    assert!(k.insert_key(&key).await.is_err(), "key ids are unique");
    k.touch_key("abc", 20).await.unwrap();
    assert!(k.revoke_key("abc", 30).await.unwrap());
    assert!(!k.revoke_key("abc", 31).await.unwrap());
    let all = k.all_keys().await.unwrap();
    assert_eq!(
        (all[0].last_used_at, all[0].revoked_at),
        (Some(20), Some(30))
    );
    assert!(k.keys_epoch().await.unwrap() > e0);
    let t0 = k.tokens_epoch().await.unwrap();
    k.revoke_token("old", 5).await.unwrap();
    assert!(
        k.tokens_epoch().await.unwrap() > t0,
        "revocations tell other instances"
    );
    // Last use never moves back (two instances flush their own times).
    k.touch_key("abc", 15).await.unwrap();
    assert_eq!(k.all_keys().await.unwrap()[0].last_used_at, Some(20));
    k.revoke_token("live", 500).await.unwrap();
    k.revoke_token("live", 500).await.unwrap();
    assert_eq!(k.revoked_tokens(100).await.unwrap(), ["live"]);
}
on_both_backends!(api_keys_on_both, api_keys_are_stored_revoked_and_counted);

/// Two stores on one database are two gateway instances: their own pools and connections.
async fn two_instances() -> (TestDb, Arc<dyn Store>, Arc<dyn Store>) {
    let db = TestDb::create().await;
    let a = pg(&db).await;
    let b = pg(&db).await;
    (db, a, b)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_charging_one_quota_admit_exactly_its_limit() {
    let (_db, a, b) = two_instances().await;
    let tasks: Vec<_> = (0..150)
        .map(|i| {
            let s = if i % 2 == 0 { a.clone() } else { b.clone() };
            tokio::spawn(async move {
                // Each request charges its client's daily and monthly counters and the
                // route's, as the quota policy does, so the rows are locked in one order.
                let charges = [
                    charge("c:billing", 1000),
                    QuotaCharge {
                        window: "m:2026-11".into(),
                        ..charge("c:billing", 1000)
                    },
                    charge("cr:orders:billing", 100),
                ];
                s.quotas().charge(&charges).await.unwrap()
            })
        })
        .collect();
    let mut admitted = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(_) => admitted += 1,
            Err(i) => assert_eq!(i, 2, "only the route quota is full"),
        }
    }
    assert_eq!(admitted, 100);
    let q = a.quotas();
    assert_eq!(
        q.quota_used("cr:orders:billing", "d:2026-11-23")
            .await
            .unwrap(),
        100
    );
    // The refused 50 charged nothing, not even the client-wide counters.
    assert_eq!(
        q.quota_used("c:billing", "d:2026-11-23").await.unwrap(),
        100
    );
    assert_eq!(q.quota_used("c:billing", "m:2026-11").await.unwrap(), 100);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_never_lease_one_outbox_event_twice() {
    let (_db, a, b) = two_instances().await;
    for i in 0..200 {
        assert!(a.outbox().enqueue(&event(&format!("m{i}"))).await.unwrap());
    }
    let claimer = |s: Arc<dyn Store>| {
        tokio::spawn(async move {
            let mut ids = Vec::new();
            loop {
                let batch = s.outbox().claim_due(100, 1000, 7, "w").await.unwrap();
                if batch.is_empty() {
                    return ids;
                }
                ids.extend(batch.into_iter().map(|e| e.id));
            }
        })
    };
    let (x, y) = (claimer(a.clone()), claimer(b.clone()));
    let (x, y) = (x.await.unwrap(), y.await.unwrap());
    let all: BTreeSet<i64> = x.iter().chain(&y).copied().collect();
    assert_eq!(x.len() + y.len(), 200, "each event leased once");
    assert_eq!(all.len(), 200);
    // A starting instance leaves another's leases alone: they may be live.
    b.outbox().release_leases().await.unwrap();
    assert!(a
        .outbox()
        .claim_due(500, 1000, 10, "w2")
        .await
        .unwrap()
        .is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_writing_one_secret_all_land_in_turn() {
    let (_db, a, b) = two_instances().await;
    a.vault().insert_kek(&kek("k1")).await.unwrap();
    // Each writer does what the vault does: read the next number, write it, and on a
    // conflict read again. Every write lands once, with its own number.
    let tasks: Vec<_> = (0..40)
        .map(|i| {
            let s = if i % 2 == 0 { a.clone() } else { b.clone() };
            tokio::spawn(async move {
                loop {
                    let next = s
                        .vault()
                        .versions("tok")
                        .await
                        .unwrap()
                        .first()
                        .map_or(1, |v| v.version + 1);
                    let mut v = version("tok", "k1", next);
                    v.ciphertext = vec![u8::try_from(i).unwrap()];
                    match s.vault().add_version(&secret("tok", 100), &v, None).await {
                        Ok(()) => return next,
                        Err(StoreError::Conflict(_)) => continue,
                        Err(e) => panic!("{e}"),
                    }
                }
            })
        })
        .collect();
    let mut got = BTreeSet::new();
    for t in tasks {
        got.insert(t.await.unwrap());
    }
    assert_eq!(got, (1..=40).collect::<BTreeSet<i64>>());
    let all = a.vault().versions("tok").await.unwrap();
    let writers: BTreeSet<u8> = all.iter().map(|v| v.ciphertext[0]).collect();
    assert_eq!(writers.len(), 40, "no write overwrote another");
    let active: Vec<i64> = all
        .iter()
        .filter(|v| v.state == "active")
        .map(|v| v.version)
        .collect();
    assert_eq!(active, [40], "exactly the newest is usable");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_start_up_lock_makes_instances_take_turns_and_ends_with_its_session() {
    let (_db, a, b) = two_instances().await;
    let held = a.bootstrap_lock().await.unwrap();
    let waiting = tokio::spawn({
        let b = b.clone();
        async move { b.bootstrap_lock().await.unwrap() }
    });
    // Not a timing claim: the lock is held throughout, so the waiter cannot have it yet.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert!(!waiting.is_finished(), "the second instance waits");
    held.release().await.unwrap();
    let second = tokio::time::timeout(std::time::Duration::from_secs(10), waiting)
        .await
        .expect("the second instance goes on once the first releases")
        .unwrap();
    // Dropped without release (an error path): its connection closes and the lock with it.
    drop(second);
    let third = tokio::time::timeout(std::time::Duration::from_secs(10), a.bootstrap_lock())
        .await
        .expect("a dropped lock is not held forever")
        .unwrap();
    third.release().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sqlite_store_ends_its_own_crashed_leases_at_start() {
    let s = sqlite().await;
    s.outbox().enqueue(&event("m1")).await.unwrap();
    assert_eq!(
        s.outbox()
            .claim_due(100, 1000, 10, "w1")
            .await
            .unwrap()
            .len(),
        1
    );
    s.outbox().release_leases().await.unwrap();
    assert_eq!(
        s.outbox()
            .claim_due(101, 1000, 10, "w2")
            .await
            .unwrap()
            .len(),
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn processes_on_one_sqlite_file_take_turns_at_start_up() {
    // Two stores on one file stand for `serve` and a CLI command starting together.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p.db");
    let a: Arc<dyn Store> = Arc::new(SqliteStore::open(&path).await.unwrap());
    let b: Arc<dyn Store> = Arc::new(SqliteStore::open(&path).await.unwrap());
    let held = a.bootstrap_lock().await.unwrap();
    let waiting = tokio::spawn({
        let b = b.clone();
        async move { b.bootstrap_lock().await.unwrap() }
    });
    // Not a timing claim: the lock is held throughout, so the waiter cannot have it yet.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert!(!waiting.is_finished(), "the second process waits");
    held.release().await.unwrap();
    let second = tokio::time::timeout(std::time::Duration::from_secs(10), waiting)
        .await
        .expect("the second goes on once the first releases")
        .unwrap();
    drop(second);
    let third = tokio::time::timeout(std::time::Duration::from_secs(10), a.bootstrap_lock())
        .await
        .expect("a dropped lock is not held")
        .unwrap();
    third.release().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn processes_opening_a_new_sqlite_file_together_all_open_it() {
    // Creating and migrating a new file is where they would race (table exists, file exists,
    // unique counters): each open takes its turn.
    for _ in 0..5 {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.db");
        let opens: Vec<_> = (0..4)
            .map(|_| {
                let path = path.clone();
                tokio::spawn(async move { SqliteStore::open(&path).await.map(|_| ()) })
            })
            .collect();
        for o in opens {
            o.await.unwrap().expect("every open succeeds");
        }
    }
}
