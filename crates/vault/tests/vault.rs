//! The vault against a real SQLite file and a real key file.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use portcullis_store::Store;
use portcullis_vault::{EventSink, FileKeyProvider, PutOptions, Vault, VaultError, VaultEvent};
use std::{
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::Duration,
};

const SENTINEL: &str = "SENTINEL-vault-9d2c4e81";

#[derive(Default)]
struct Recorder(Mutex<Vec<VaultEvent>>);
impl EventSink for Recorder {
    fn emit(&self, e: VaultEvent) {
        self.0.lock().unwrap().push(e);
    }
}

struct Env {
    dir: tempfile::TempDir,
    store: Arc<dyn Store>,
    events: Arc<Recorder>,
}

impl Env {
    async fn new() -> Env {
        let dir = tempfile::tempdir().unwrap();
        let store = portcullis_store::open(
            &format!("sqlite://{}", dir.path().join("p.db").display()),
            dir.path(),
        )
        .await
        .unwrap();
        Env {
            dir,
            store,
            events: Arc::default(),
        }
    }
    fn key_path(&self) -> PathBuf {
        self.dir.path().join("master.key")
    }
    async fn vault(&self) -> Result<Arc<Vault>, VaultError> {
        Vault::open(
            self.store.clone(),
            Arc::new(FileKeyProvider::new(self.key_path(), true)),
            self.events.clone(),
        )
        .await
    }
    async fn sql(&self, q: &str) {
        let pool = sqlx::SqlitePool::connect(&format!(
            "sqlite://{}",
            self.dir.path().join("p.db").display()
        ))
        .await
        .unwrap();
        sqlx::query(q).execute(&pool).await.unwrap();
        pool.close().await;
    }
}

fn opts(consumers: &[&str]) -> PutOptions {
    PutOptions {
        consumers: Some(consumers.iter().map(|s| s.to_string()).collect()),
        actor: "test".into(),
        ..Default::default()
    }
}

fn grep_dir(dir: &Path, needle: &[u8]) -> Vec<String> {
    let mut hits = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_file()
            && std::fs::read(&p)
                .unwrap()
                .windows(needle.len())
                .any(|w| w == needle)
        {
            hits.push(p.display().to_string());
        }
    }
    hits
}

#[tokio::test]
async fn values_never_reach_the_database_in_plaintext() {
    let env = Env::new().await;
    let v = env.vault().await.unwrap();
    v.put("api", SENTINEL.as_bytes(), &opts(&["route:r"]))
        .await
        .unwrap();
    v.rotate(
        "api",
        format!("{SENTINEL}-2").as_bytes(),
        &opts(&["route:r"]),
    )
    .await
    .unwrap();
    assert_eq!(
        v.resolve("api", "route:r").await.unwrap().expose(),
        format!("{SENTINEL}-2").as_bytes()
    );
    // Database, WAL and shared memory, as they are on disk right now.
    let files: Vec<_> = std::fs::read_dir(env.dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert!(files.iter().any(|f| f.ends_with("-wal")), "{files:?}");
    assert!(grep_dir(env.dir.path(), SENTINEL.as_bytes()).is_empty());
    // Metadata output carries no value.
    let shown = format!("{:?}", v.show("api").await.unwrap());
    assert!(!shown.contains(SENTINEL));
    assert!(!format!("{:?}", v.resolve("api", "route:r").await.unwrap()).contains(SENTINEL));
}

#[tokio::test]
async fn a_ciphertext_moved_to_another_row_does_not_decrypt() {
    let env = Env::new().await;
    let v = env.vault().await.unwrap();
    v.put("a", b"value-a", &opts(&["route:r"])).await.unwrap();
    v.put("b", b"value-b", &opts(&["route:r"])).await.unwrap();
    v.put("b", b"value-b2", &opts(&["route:r"])).await.unwrap();
    // Copy a's row onto b (another name) and b v1 onto b v2 (another version).
    env.sql("UPDATE vault_versions SET ciphertext = (SELECT ciphertext FROM vault_versions WHERE name='a' AND version=1), wrapped_dek = (SELECT wrapped_dek FROM vault_versions WHERE name='a' AND version=1) WHERE name='b' AND version=2").await;
    v.invalidate();
    assert!(matches!(
        v.resolve("b", "route:r").await,
        Err(VaultError::Decrypt { .. })
    ));
    assert_eq!(
        v.resolve("a", "route:r").await.unwrap().expose(),
        b"value-a"
    );
}

#[tokio::test]
async fn corrupted_ciphertext_is_an_error_not_a_panic() {
    let env = Env::new().await;
    let v = env.vault().await.unwrap();
    v.put("c", b"value", &opts(&["route:r"])).await.unwrap();
    for q in [
        "UPDATE vault_versions SET ciphertext = x'00'",
        "UPDATE vault_versions SET ciphertext = zeroblob(64)",
        "UPDATE vault_versions SET wrapped_dek = x''",
    ] {
        env.sql(q).await;
        v.invalidate();
        assert!(
            matches!(
                v.resolve("c", "route:r").await,
                Err(VaultError::Decrypt { .. })
            ),
            "{q}"
        );
    }
}

#[tokio::test]
async fn a_wrong_master_key_fails_at_open() {
    let env = Env::new().await;
    let v = env.vault().await.unwrap();
    v.put("x", b"1", &opts(&[])).await.unwrap();
    drop(v);
    std::fs::remove_file(env.key_path()).unwrap();
    // A new key file is created... and refused, because this vault was made with another key.
    let err = env.vault().await.map(|_| ()).unwrap_err();
    assert!(matches!(err, VaultError::WrongKey), "{err}");
}

#[tokio::test]
async fn a_world_readable_key_file_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let env = Env::new().await;
    env.vault().await.unwrap();
    std::fs::set_permissions(env.key_path(), std::fs::Permissions::from_mode(0o644)).unwrap();
    let err = env.vault().await.map(|_| ()).unwrap_err().to_string();
    assert!(err.contains("chmod 600"), "{err}");
}

#[tokio::test]
async fn revoke_takes_effect_on_the_next_resolve() {
    let env = Env::new().await;
    let v = env.vault().await.unwrap();
    v.put("t", b"one", &opts(&["route:r"])).await.unwrap();
    assert_eq!(v.resolve("t", "route:r").await.unwrap().version, 1);
    v.revoke("t", 1, "test").await.unwrap();
    assert!(v.resolve("t", "route:r").await.is_err());
    // A revoke made by another process (the CLI) is seen once the change watch runs.
    let v2 = env.vault().await.unwrap();
    v.put("t", b"two", &opts(&["route:r"])).await.unwrap();
    assert_eq!(v2.resolve("t", "route:r").await.unwrap().version, 2);
    v.revoke("t", 2, "cli").await.unwrap();
    assert!(v2.refresh_if_changed().await.unwrap());
    assert!(v2.resolve("t", "route:r").await.is_err());
    assert!(env
        .events
        .0
        .lock()
        .unwrap()
        .iter()
        .any(|e| e.action == "revoke" && e.version == Some(2)));
}

#[tokio::test]
async fn rotation_grace_keeps_the_previous_version_valid() {
    let env = Env::new().await;
    let v = env.vault().await.unwrap();
    v.put("wh", b"old", &opts(&["webhook:w"])).await.unwrap();
    let mut o = opts(&["webhook:w"]);
    o.grace = Some(Duration::from_secs(3600));
    v.rotate("wh", b"new", &o).await.unwrap();
    let all = v.resolve_all("wh", "webhook:w").await.unwrap();
    assert_eq!(
        all.iter().map(|s| s.expose().to_vec()).collect::<Vec<_>>(),
        vec![b"new".to_vec(), b"old".to_vec()]
    );
    assert_eq!(v.resolve("wh", "webhook:w").await.unwrap().expose(), b"new");
    // Without grace the previous version stops at once.
    v.rotate("wh", b"newest", &opts(&["webhook:w"]))
        .await
        .unwrap();
    assert_eq!(v.resolve_all("wh", "webhook:w").await.unwrap().len(), 1);
}

#[tokio::test]
async fn consumers_expiry_and_types_are_enforced() {
    let env = Env::new().await;
    let v = env.vault().await.unwrap();
    v.put("s", b"v", &opts(&["route:a"])).await.unwrap();
    assert!(matches!(
        v.resolve("s", "route:b").await,
        Err(VaultError::NotAllowed { .. })
    ));
    let mut o = opts(&["route:a"]);
    o.expires_in = Some(Duration::ZERO);
    v.put("gone", b"v", &o).await.unwrap();
    assert!(matches!(
        v.resolve("gone", "route:a").await,
        Err(VaultError::Expired(_))
    ));
    assert!(!v
        .findings(Duration::from_secs(86400))
        .await
        .unwrap()
        .is_empty());
    let mut o = opts(&[]);
    o.secret_type = Some(portcullis_vault::SecretType::BasicCredentials);
    assert!(v.put("basic", b"{\"username\":\"u\"}", &o).await.is_err());
    v.put("basic", b"{\"username\":\"u\",\"password\":\"p\"}", &o)
        .await
        .unwrap();
    assert!(v.put("bad name!", b"v", &opts(&[])).await.is_err());
    // A consumer that no configuration can name (a typo) is refused, and nothing is stored.
    for bad in [
        "rout:a",
        "route:",
        "route",
        "route:a b",
        "*",
        "gateway:webhook-signin",
    ] {
        let err = v
            .put("typo", b"v", &opts(&["route:a", bad]))
            .await
            .unwrap_err();
        assert!(
            matches!(&err, VaultError::Invalid(m) if m.contains("expected route:ID") && m.contains("gateway:webhook-signing")),
            "{bad}: {err}"
        );
    }
    assert!(matches!(v.show("typo").await, Err(VaultError::NotFound(_))));
    for good in [
        "webhook:w-1",
        "integration:gh.v2",
        "gateway:webhook-signing",
    ] {
        v.put("typo", b"v", &opts(&[good])).await.unwrap();
    }
}

#[tokio::test]
async fn old_versions_beyond_keep_are_wiped() {
    let env = Env::new().await;
    let v = env.vault().await.unwrap();
    let mut o = opts(&["route:r"]);
    o.keep_versions = Some(2);
    for i in 0..4 {
        v.put("k", format!("{SENTINEL}-{i}").as_bytes(), &o)
            .await
            .unwrap();
    }
    let info = v.show("k").await.unwrap();
    let states: Vec<_> = info.versions.iter().map(|x| x.state.as_str()).collect();
    assert_eq!(states, ["active", "disabled", "destroyed", "destroyed"]);
}

#[tokio::test]
async fn generated_values_are_shared_once_and_stored() {
    let env = Env::new().await;
    let v = env.vault().await.unwrap();
    let (_, share) = v
        .generate("hook", "webhook_signing", &opts(&["webhook:w"]))
        .await
        .unwrap();
    let share = share.unwrap();
    assert!(share.starts_with("whsec_"));
    assert_eq!(
        v.resolve("hook", "webhook:w").await.unwrap().expose(),
        share.as_bytes()
    );
    let (_, pk) = v
        .generate("signer", "ed25519", &opts(&["gateway:oauth"]))
        .await
        .unwrap();
    assert!(pk.unwrap().starts_with("whpk_"));
    let key = v.resolve("signer", "gateway:oauth").await.unwrap();
    assert!(key.field("private_key").is_ok());
    let (_, none) = v.generate("pepper", "random", &opts(&[])).await.unwrap();
    assert!(none.is_none());
}

#[tokio::test]
async fn interrupted_kek_rotation_resumes_and_everything_stays_readable() {
    let env = Env::new().await;
    let v = env.vault().await.unwrap();
    for i in 0..10 {
        v.put(
            &format!("s{i}"),
            format!("value-{i}").as_bytes(),
            &opts(&["route:r"]),
        )
        .await
        .unwrap();
    }
    let old = v.kek_id();
    let p = v.rotate_kek(Some(4), "test").await.unwrap();
    assert!(!p.complete);
    assert_eq!(p.rewrapped, 4);
    // "Restart" mid-rotation: a new process sees both keys and reads every secret.
    drop(v);
    let v = env.vault().await.unwrap();
    for i in 0..10 {
        assert_eq!(
            v.resolve(&format!("s{i}"), "route:r")
                .await
                .unwrap()
                .expose(),
            format!("value-{i}").as_bytes()
        );
    }
    let p = v.rotate_kek(None, "test").await.unwrap();
    assert!(p.complete);
    assert_eq!(p.rewrapped, 6);
    assert_ne!(v.kek_id(), old);
    assert!(!env.dir.path().join("master.key.next").exists());
    drop(v);
    let v = env.vault().await.unwrap();
    for i in 0..10 {
        assert_eq!(
            v.resolve(&format!("s{i}"), "route:r")
                .await
                .unwrap()
                .expose(),
            format!("value-{i}").as_bytes()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_during_kek_rotation_never_see_a_torn_value() {
    let env = Env::new().await;
    let v = env.vault().await.unwrap();
    for i in 0..40 {
        v.put(
            &format!("s{i}"),
            format!("value-{i}").as_bytes(),
            &opts(&["route:r"]),
        )
        .await
        .unwrap();
    }
    let reader = {
        let v = v.clone();
        tokio::spawn(async move {
            let mut reads = 0;
            for round in 0..30 {
                v.invalidate();
                for i in (0..40).step_by(1 + round % 3) {
                    let got = v.resolve(&format!("s{i}"), "route:r").await.unwrap();
                    assert_eq!(got.expose(), format!("value-{i}").as_bytes());
                    reads += 1;
                }
            }
            reads
        })
    };
    let mut p = v.rotate_kek(Some(5), "test").await.unwrap();
    while !p.complete {
        p = v.rotate_kek(Some(5), "test").await.unwrap();
    }
    assert!(reader.await.unwrap() > 0);
}

#[tokio::test]
async fn a_rotation_cut_after_retiring_the_old_key_resumes_and_writes_under_the_new_one() {
    let env = Env::new().await;
    let v = env.vault().await.unwrap();
    v.put("s", b"before", &opts(&["route:r"])).await.unwrap();
    let old = v.kek_id();
    // Stage the next key, then stop where a crash after recording the new states (and
    // before the key file's promotion) would: next active, old retired.
    let p = v.rotate_kek(Some(0), "test").await.unwrap();
    assert!(!p.complete);
    let vs = env.store.vault();
    let next = vs
        .keks()
        .await
        .unwrap()
        .into_iter()
        .find(|k| k.state == "next")
        .unwrap()
        .id;
    vs.set_kek_state(&next, "active").await.unwrap();
    vs.set_kek_state(&old, "retired").await.unwrap();
    drop(v);

    // The key file still holds the old key as current: the vault opens, reads, and writes
    // under the active next key rather than the retired one.
    let v = env.vault().await.unwrap();
    assert_eq!(v.kek_id(), next);
    assert_eq!(v.resolve("s", "route:r").await.unwrap().expose(), b"before");
    v.put("s", b"during", &opts(&["route:r"])).await.unwrap();
    let p = v.rotate_kek(None, "test").await.unwrap();
    assert!(p.complete);
    assert!(!env.dir.path().join("master.key.next").exists());
    drop(v);
    let v = env.vault().await.unwrap();
    assert_eq!(v.kek_id(), next);
    assert_eq!(v.resolve("s", "route:r").await.unwrap().expose(), b"during");
    assert!(vs.versions_wrapped_by(&old, 10).await.unwrap().is_empty());
}

#[tokio::test]
async fn a_refused_write_leaves_the_secret_settings_unchanged() {
    let env = Env::new().await;
    let v = env.vault().await.unwrap();
    v.put("s", b"one", &opts(&["route:r"])).await.unwrap();
    // A write that the store refuses (its KEK is no longer active, and this process has no
    // other key): the consumers asked for are not bound either.
    env.store
        .vault()
        .set_kek_state(&v.kek_id(), "retired")
        .await
        .unwrap();
    let err = v
        .put("s", b"two", &opts(&["route:r", "route:other"]))
        .await
        .unwrap_err();
    assert!(matches!(err, VaultError::RetiredKey), "{err}");
    assert_eq!(v.show("s").await.unwrap().consumers, ["route:r"]);
}

#[tokio::test]
async fn a_rotation_that_raises_keep_keeps_the_graced_version() {
    let env = Env::new().await;
    let v = env.vault().await.unwrap();
    let mut o = opts(&["route:r"]);
    o.keep_versions = Some(1);
    v.put("s", b"one", &o).await.unwrap();
    // The new keep applies to this very write: v1 is kept through its grace, not wiped by
    // the old keep of 1.
    o.keep_versions = Some(3);
    o.grace = Some(Duration::from_secs(3600));
    v.rotate("s", b"two", &o).await.unwrap();
    let values: Vec<Vec<u8>> = v
        .resolve_all("s", "route:r")
        .await
        .unwrap()
        .iter()
        .map(|x| x.expose().to_vec())
        .collect();
    assert_eq!(values, [b"two".to_vec(), b"one".to_vec()]);
}

#[tokio::test]
async fn a_next_key_equal_to_the_current_one_is_ignored_and_never_retires_the_vault_key() {
    let env = Env::new().await;
    let v = env.vault().await.unwrap();
    v.put("s", b"one", &opts(&["route:r"])).await.unwrap();
    let kek = v.kek_id();
    drop(v);
    // Left behind: the next key file holds the key that is already current.
    std::fs::copy(env.key_path(), env.dir.path().join("master.key.next")).unwrap();
    let v = env.vault().await.unwrap();
    // Rotating does not loop over rewrapping every key onto itself, nor retire the only KEK:
    // it wants a genuinely new next key, which the leftover file is in the way of.
    let outcome = tokio::time::timeout(Duration::from_secs(10), v.rotate_kek(None, "test"))
        .await
        .expect("rotation ends");
    assert!(outcome.is_err());
    let states: Vec<String> = env
        .store
        .vault()
        .keks()
        .await
        .unwrap()
        .into_iter()
        .filter(|k| k.id == kek)
        .map(|k| k.state)
        .collect();
    assert_eq!(states, ["active"]);
    v.put("s", b"two", &opts(&["route:r"])).await.unwrap();
    assert_eq!(v.resolve("s", "route:r").await.unwrap().expose(), b"two");
}

#[tokio::test]
async fn a_next_key_an_earlier_rotation_retired_is_ignored_and_never_made_active_again() {
    let env = Env::new().await;
    let v = env.vault().await.unwrap();
    v.put("s", b"one", &opts(&["route:r"])).await.unwrap();
    let old_key = std::fs::read(env.key_path()).unwrap();
    let old = v.kek_id();
    assert!(v.rotate_kek(None, "test").await.unwrap().complete);
    let new = v.kek_id();
    drop(v);
    // The retired key given as the next one (an old file or variable left in place).
    let next = env.dir.path().join("master.key.next");
    std::fs::write(&next, &old_key).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&next, std::fs::Permissions::from_mode(0o600)).unwrap();
    let v = env.vault().await.unwrap();
    assert_eq!(v.kek_id(), new, "writes stay under the active key");
    assert!(v.rotate_kek(None, "test").await.is_err());
    let state = |id: String| {
        let store = env.store.clone();
        async move {
            store
                .vault()
                .keks()
                .await
                .unwrap()
                .into_iter()
                .find(|k| k.id == id)
                .map(|k| k.state)
        }
    };
    assert_eq!(state(old).await.as_deref(), Some("retired"));
    assert_eq!(state(new).await.as_deref(), Some("active"));
    v.put("s", b"two", &opts(&["route:r"])).await.unwrap();
    assert_eq!(v.resolve("s", "route:r").await.unwrap().expose(), b"two");
}

#[tokio::test]
async fn a_key_file_removed_after_the_vault_opened_is_never_replaced_by_a_new_key() {
    let env = Env::new().await;
    // Allowed to create the key: this is the vault's first start.
    let v = env.vault().await.unwrap();
    let key = std::fs::read(env.key_path()).unwrap();
    std::fs::remove_file(env.key_path()).unwrap();
    // A readiness probe (and any reload of the provider) now finds no key, and says so.
    let err = v.verify_own_key().await.unwrap_err();
    assert!(matches!(err, VaultError::KeyAbsent(_)), "{err}");
    assert!(!env.key_path().exists(), "a new master key was made up");
    // Put back, the same process goes on with it.
    std::fs::write(env.key_path(), &key).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(env.key_path(), std::fs::Permissions::from_mode(0o600)).unwrap();
    v.verify_own_key().await.unwrap();
}
