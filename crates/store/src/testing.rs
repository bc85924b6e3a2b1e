//! Scratch PostgreSQL databases for tests (the `testing` feature; never in a release build):
//! each test gets a database of its own on the machine's server, dropped when it ends.

use sqlx::{Connection, Executor};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

/// The server tests create their databases on: the machine's PostgreSQL on 127.0.0.1:5432,
/// unless `PORTCULLIS_TEST_POSTGRES` names another.
pub fn admin_url() -> String {
    std::env::var("PORTCULLIS_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// A database of the test's own, dropped (with any connections still open) when this goes.
pub struct TestDb {
    name: String,
}

impl TestDb {
    /// Creates an empty database. Panics when the server is unreachable: tests that need
    /// PostgreSQL fail loudly rather than pass without it.
    pub async fn create() -> TestDb {
        static N: AtomicU32 = AtomicU32::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let name = format!(
            "pcl_test_{}_{}_{}_{nanos}",
            std::process::id(),
            unix_secs(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        let mut admin = sqlx::PgConnection::connect(&admin_url())
            .await
            .expect("PostgreSQL on 127.0.0.1:5432 (.ci/run starts it)");
        drop_orphans(&mut admin).await;
        admin
            .execute(format!("CREATE DATABASE {name}").as_str())
            .await
            .expect("CREATE DATABASE");
        TestDb { name }
    }

    /// A `postgres://` URL of this database.
    pub fn url(&self) -> String {
        let base = admin_url();
        let cut = base.rfind('/').unwrap_or(base.len());
        format!("{}/{}", &base[..cut], self.name)
    }
}

fn unix_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Drops the databases of test processes that are gone (killed before their `Drop` ran), once
/// per process.
async fn drop_orphans(admin: &mut sqlx::PgConnection) {
    static DONE: AtomicBool = AtomicBool::new(false);
    if DONE.swap(true, Ordering::Relaxed) {
        return;
    }
    let Ok(names) = sqlx::query_scalar::<_, String>(
        "SELECT datname FROM pg_database WHERE datname LIKE 'pcl\\_test\\_%'",
    )
    .fetch_all(&mut *admin)
    .await
    else {
        return;
    };
    for name in names {
        // pcl_test_<pid>_<unix seconds>_...: only an hour-old database of a process that is
        // gone here is dropped (a live test elsewhere, in another PID namespace sharing the
        // server, keeps its database).
        let mut parts = name.strip_prefix("pcl_test_").unwrap_or("").split('_');
        let pid = parts.next().and_then(|p| p.parse::<u32>().ok());
        let born = parts.next().and_then(|t| t.parse::<u64>().ok());
        let (Some(pid), Some(born)) = (pid, born) else {
            continue;
        };
        let old = unix_secs().saturating_sub(born) > 3600;
        if old
            && pid != std::process::id()
            && !std::path::Path::new(&format!("/proc/{pid}")).exists()
        {
            // Names come from the server and match pcl_test_<digits>_...: quoted anyway.
            let _ = admin
                .execute(format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)").as_str())
                .await;
        }
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        // On a thread and runtime of its own: this also runs while a failed test unwinds,
        // inside or outside a runtime.
        let name = self.name.clone();
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async {
                if let Ok(mut admin) = sqlx::PgConnection::connect(&admin_url()).await {
                    let _ = admin
                        .execute(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)").as_str())
                        .await;
                }
            });
        })
        .join();
    }
}
