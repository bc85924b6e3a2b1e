//! The start-up lock. Instances that start together on one new shared database must not
//! each create what all of them share (the master key's registration, the API-key pepper,
//! the OAuth signing key): with check-then-write, two would each write their own and end up
//! with different peppers, or several "active" master keys. Whoever holds this lock creates;
//! the next one waits, then reads what the first wrote.

use crate::StoreError;
use sqlx::{pool::PoolConnection, PgPool, Postgres};
use std::{
    path::Path,
    time::{Duration, Instant},
};

/// The advisory lock id of start-up. Any fixed number unique to this purpose.
const BOOTSTRAP_LOCK: i64 = 0x7063_6c5f_626f_6f74; // "pcl_boot"

/// How long a start waits for another instance's start-up to finish. Creating the shared
/// keys takes milliseconds; a holder this slow is stuck, and failing says so.
pub(crate) const BOOTSTRAP_WAIT: Duration = Duration::from_secs(30);

/// Held while one process creates shared start-up state; [`BootstrapLock::release`] it when
/// done. Dropped unreleased (an error path), it closes its connection, and the server drops
/// the lock with the session.
pub struct BootstrapLock {
    conn: Option<PoolConnection<Postgres>>,
    /// SQLite: an exclusive lock on a file beside the database, released when closed.
    file: Option<std::fs::File>,
}

/// Who holds the start-up lock, as the server sees the session: its backend pid, client
/// address and since when it is connected, for an operator to find (and end, with
/// `pg_terminate_backend`) a stuck start. The pid alone when this role may not see the
/// holder's details; empty when it cannot be read at all (the holder just left).
async fn holder(conn: &mut PoolConnection<Postgres>) -> String {
    // A bigint advisory lock is keyed by its high and low 32 bits (classid, objid), objsubid 1.
    let row = sqlx::query_as::<_, (i32, Option<String>, Option<String>)>(
        "SELECT a.pid, host(a.client_addr), to_char(a.backend_start AT TIME ZONE 'UTC',                 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"')          FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid          WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1            AND l.classid = (($1 >> 32) & 4294967295)::bigint::oid            AND l.objid = ($1 & 4294967295)::bigint::oid            AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())          LIMIT 1",
    )
    .bind(BOOTSTRAP_LOCK)
    .fetch_optional(&mut **conn)
    .await;
    match row {
        // Without the rights to see other roles' sessions (pg_read_all_stats), the server
        // shows the pid only.
        Ok(Some((pid, _, None))) => {
            format!(": server process {pid}; its details are not visible to this role")
        }
        Ok(Some((pid, addr, Some(since)))) => format!(
            ": server process {pid}, client {}, connected since {since}",
            addr.as_deref().unwrap_or("local socket"),
        ),
        _ => String::new(),
    }
}

impl BootstrapLock {
    /// The lock of a store with one process (SQLite): there is no one to take turns with.
    pub(crate) fn uncontended() -> Self {
        BootstrapLock {
            conn: None,
            file: None,
        }
    }

    /// Takes the session-level advisory lock on a connection of its own, polling with
    /// `pg_try_advisory_lock` so that the wait has a bound (a blocking `pg_advisory_lock`
    /// would instead meet `statement_timeout` with an unclear error).
    pub(crate) async fn postgres(pool: &PgPool, wait: Duration) -> Result<Self, StoreError> {
        let mut conn = pool.acquire().await?;
        // A holder whose machine dies keeps its session, and the lock, until the server
        // notices the dead peer: with the OS default keepalive that is about two hours of
        // refused starts. These make it about half a minute.
        if let Err(e) = sqlx::query(
            "SELECT set_config('tcp_keepalives_idle', '10', false), \
                    set_config('tcp_keepalives_interval', '5', false), \
                    set_config('tcp_keepalives_count', '3', false)",
        )
        .execute(&mut *conn)
        .await
        {
            drop(conn.detach());
            return Err(e.into());
        }
        let deadline = Instant::now() + wait;
        loop {
            let got = sqlx::query_scalar::<_, bool>("SELECT pg_try_advisory_lock($1)")
                .bind(BOOTSTRAP_LOCK)
                .fetch_one(&mut *conn)
                .await;
            match got {
                Ok(true) => {
                    return Ok(BootstrapLock {
                        conn: Some(conn),
                        file: None,
                    })
                }
                Ok(false) => {}
                Err(e) => {
                    // The server may have granted it and the answer been lost: end the session
                    // rather than pool a connection that might hold it.
                    drop(conn.detach());
                    return Err(e.into());
                }
            }
            if Instant::now() >= deadline {
                let holder = holder(&mut conn).await;
                return Err(StoreError::Busy(format!(
                    "another instance has been starting for too long (it holds the start-up lock{holder})"
                )));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Takes an exclusive lock on `<database>.lock` beside the SQLite file `db` (created 0600,
    /// and owned like the database when root creates it, as SQLite does for its `-wal` and
    /// `-shm` files, so a CLI command run as root cannot lock the service out). Polls, so the
    /// wait has a bound. The operating system releases the lock when the file is closed, so a
    /// process that dies holding it holds it no longer.
    pub(crate) async fn beside(db: &Path, wait: Duration) -> Result<Self, StoreError> {
        use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
        let mut name = db.as_os_str().to_owned();
        name.push(".lock");
        let path = std::path::PathBuf::from(name);
        let fs_err = |source| StoreError::Filesystem {
            path: path.display().to_string(),
            source,
        };
        // Not create_new: two processes creating it at once both get the same file.
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .map_err(fs_err)?;
        if let (Ok(lock), Ok(owner)) = (file.metadata(), std::fs::metadata(db)) {
            if lock.uid() != owner.uid() {
                // Succeeds only for root; anyone else made the file theirs and keeps it.
                let _ = std::os::unix::fs::chown(&path, Some(owner.uid()), Some(owner.gid()));
            }
        }
        let deadline = Instant::now() + wait;
        loop {
            match file.try_lock() {
                Ok(()) => {
                    return Ok(BootstrapLock {
                        conn: None,
                        file: Some(file),
                    })
                }
                Err(std::fs::TryLockError::WouldBlock) => {}
                Err(std::fs::TryLockError::Error(e)) => return Err(fs_err(e)),
            }
            if Instant::now() >= deadline {
                return Err(StoreError::Busy(
                    "another process has been starting on this database for too long (it holds the start-up lock)".into(),
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Ends the lock, so the next starting instance goes on.
    pub async fn release(mut self) -> Result<(), StoreError> {
        // Closing the file ends a file lock.
        drop(self.file.take());
        let Some(mut conn) = self.conn.take() else {
            return Ok(());
        };
        match sqlx::query_scalar::<_, bool>("SELECT pg_advisory_unlock($1)")
            .bind(BOOTSTRAP_LOCK)
            .fetch_one(&mut *conn)
            .await
        {
            Ok(true) => Ok(()),
            // false: this session did not hold it (a pooler between us and the server moved
            // the session?). Closing ours is all that can be done; say so.
            Ok(false) => {
                drop(conn.detach());
                Err(StoreError::Busy(
                    "the start-up lock was not held by this session (use a direct connection or a session-mode pooler)".into(),
                ))
            }
            Err(e) => {
                // Unknown whether the lock is still held: end the session rather than return
                // a connection that may hold it to the pool.
                drop(conn.detach());
                Err(e.into())
            }
        }
    }
}

impl Drop for BootstrapLock {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            drop(conn.detach());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_start_that_waits_too_long_names_the_session_holding_the_lock() {
        let db = crate::testing::TestDb::create().await;
        let pool = PgPool::connect(&db.url()).await.expect("connect");
        let held = BootstrapLock::postgres(&pool, Duration::from_secs(1))
            .await
            .expect("first start takes the lock");
        let holder_pid: i32 = {
            let mut c = pool.acquire().await.expect("conn");
            // The session that holds it, as the server reports it.
            // Other tests take the same lock in their own databases at the same time.
            sqlx::query_scalar(
                "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted AND objsubid = 1 \
                 AND classid = (($1 >> 32) & 4294967295)::bigint::oid \
                 AND objid = ($1 & 4294967295)::bigint::oid \
                 AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
            )
            .bind(BOOTSTRAP_LOCK)
            .fetch_one(&mut *c)
            .await
            .expect("the lock is visible")
        };
        let err = match BootstrapLock::postgres(&pool, Duration::from_millis(300)).await {
            Ok(_) => panic!("a second start took a held lock"),
            Err(e) => e.to_string(),
        };
        assert!(
            err.contains(&format!(
                "server process {holder_pid}, client 127.0.0.1, connected since 20"
            )),
            "{err}"
        );
        held.release().await.expect("release");
        let again = BootstrapLock::postgres(&pool, Duration::from_secs(1)).await;
        assert!(again.is_ok(), "free again after the release");
    }
}
