//! The Redis limiter: one Lua script decides every limit of a request atomically on the
//! server, so any number of Portcullis instances share one exact limit.
//!
//! Failure is explicit: when Redis is unreachable, slow or answers nonsense, `check` returns
//! [`LimiterError::Unavailable`] at once and the caller applies the route's choice (refuse, or
//! decide locally). After a failure, calls fail fast for [`RETRY_AFTER`] and then one request
//! probes; the connection manager reconnects by itself, so service resumes without a restart.
//!
//! It reconnects by itself only when the connection reports an error (reset, end of file,
//! refused). A connection that goes silent instead (a NAT or firewall that dropped its state,
//! a failover behind one address) only times out, and redis-rs retries a timed-out connection
//! rather than replacing it: every decision then timed out until the kernel gave up on the
//! socket, many minutes later, while Redis itself was healthy. So a timeout here replaces the
//! connection, and the socket has `TCP_USER_TIMEOUT` set so the kernel gives up sooner too.

use crate::{Check, Decision, Limiter, LimiterError};
use arc_swap::ArcSwap;
use async_trait::async_trait;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use std::{
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

/// How long calls fail fast after Redis failed, before one request tries it again.
pub const RETRY_AFTER: Duration = Duration::from_secs(1);
/// How long sent data may go unacknowledged before the kernel closes the socket. Well above a
/// loaded network's retransmission times, well below the kernel's default of many minutes.
#[cfg(target_os = "linux")]
const USER_TIMEOUT: Duration = Duration::from_secs(10);

/// How to reach Redis.
#[derive(Debug, Clone)]
pub struct RedisOptions {
    /// A `redis://` or `rediss://` URL. May hold a password: never logged.
    pub url: String,
    /// Prefix of every key Portcullis writes, so deployments can share a Redis.
    pub key_prefix: String,
    /// Longest wait for a connection or an answer.
    pub timeout: Duration,
}

/// Rate-limit state in Redis.
pub struct RedisLimiter {
    /// Replaced whole after a timeout (see the module's doc).
    conn: ArcSwap<ConnectionManager>,
    client: redis::Client,
    config: ConnectionManagerConfig,
    script: redis::Script,
    prefix: String,
    replay_prefix: String,
    token_prefix: String,
    lock_prefix: String,
    unlock: redis::Script,
    failure_prefix: String,
    failures: redis::Script,
    timeout: Duration,
    /// Where Redis is, without credentials, for log lines.
    target: String,
    epoch: Instant,
    /// Milliseconds since `epoch` before which calls fail fast; 0 when healthy.
    down_until: AtomicU64,
    down: AtomicBool,
}

impl RedisLimiter {
    /// A limiter for `opts`. Does not connect yet: the first decision does, so the gateway
    /// starts (and applies each route's failure choice) even while Redis is down.
    pub fn new(opts: &RedisOptions) -> Result<Self, LimiterError> {
        let invalid = || LimiterError::Unavailable("invalid redis URL".into());
        let info = redis::Client::open(opts.url.as_str())
            .map_err(|_| invalid())?
            .get_connection_info()
            .clone();
        let target = info.addr().to_string();
        // No Nagle: decisions from many requests share one connection, and a command held
        // back until the previous one's ACK waits out the server's delayed ACK.
        let tcp = redis::io::tcp::TcpSettings::default().set_nodelay(true);
        // TCP_USER_TIMEOUT is Linux's (redis-rs offers it there only).
        #[cfg(target_os = "linux")]
        let tcp = tcp.set_user_timeout(USER_TIMEOUT);
        let client = redis::Client::open(info.set_tcp_settings(tcp)).map_err(|_| invalid())?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(opts.timeout))
            .set_response_timeout(Some(opts.timeout))
            .set_number_of_retries(1)
            .set_max_delay(RETRY_AFTER);
        let conn = ConnectionManager::new_lazy_with_config(client.clone(), config.clone())
            .map_err(|e| LimiterError::Unavailable(e.to_string()))?;
        Ok(RedisLimiter {
            conn: ArcSwap::from_pointee(conn),
            client,
            config,
            script: redis::Script::new(include_str!("gcra.lua")),
            prefix: format!("{}:rl:", opts.key_prefix),
            replay_prefix: format!("{}:seen:", opts.key_prefix),
            token_prefix: format!("{}:egress-token:", opts.key_prefix),
            lock_prefix: format!("{}:egress-token-lock:", opts.key_prefix),
            // Deletes the lock only while it still holds this owner's value.
            unlock: redis::Script::new(
                "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) else return 0 end",
            ),
            failure_prefix: format!("{}:auth-failures:", opts.key_prefix),
            failures: redis::Script::new(include_str!("auth_failures.lua")),
            timeout: opts.timeout,
            target,
            epoch: Instant::now(),
            down_until: AtomicU64::new(0),
            down: AtomicBool::new(false),
        })
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// While failing fast, lets exactly one caller through per [`RETRY_AFTER`] to probe.
    fn may_try(&self) -> bool {
        let until = self.down_until.load(Ordering::Acquire);
        if until == 0 {
            return true;
        }
        let now = self.now_ms();
        now >= until
            && self
                .down_until
                .compare_exchange(
                    until,
                    now + RETRY_AFTER.as_millis() as u64,
                    Ordering::AcqRel,
                    Ordering::Acquire,
                )
                .is_ok()
    }

    /// A connection to use for one call.
    fn conn(&self) -> ConnectionManager {
        ConnectionManager::clone(&self.conn.load())
    }

    /// The call's error as a [`LimiterError`]; a timeout also replaces the connection.
    fn error(&self, op: &'static str, e: &redis::RedisError) -> LimiterError {
        if e.is_timeout() {
            self.timed_out(op)
        } else {
            self.failed(op, &e.to_string())
        }
    }

    /// No answer in time: the connection may be dead without knowing it, so the next call
    /// gets a new one (the old one's other callers finish or time out on their own).
    fn timed_out(&self, op: &'static str) -> LimiterError {
        if let Ok(fresh) =
            ConnectionManager::new_lazy_with_config(self.client.clone(), self.config.clone())
        {
            self.conn.store(Arc::new(fresh));
        }
        self.failed(op, "timed out")
    }

    fn failed(&self, op: &'static str, why: &str) -> LimiterError {
        metrics::counter!("portcullis_shared_state_errors_total", "op" => op).increment(1);
        self.down_until.store(
            self.now_ms() + RETRY_AFTER.as_millis() as u64,
            Ordering::Release,
        );
        if !self.down.swap(true, Ordering::AcqRel) {
            metrics::gauge!("portcullis_shared_state_up").set(0.0);
            tracing::warn!(
                redis = %self.target,
                error = why,
                "shared state unreachable: rate limits follow each route's shared_state_failure \
                 choice, egress OAuth tokens are cached and authentication failures counted \
                 per instance, until it is back"
            );
        }
        LimiterError::Unavailable(why.to_string())
    }

    fn recovered(&self) {
        if self.down.load(Ordering::Acquire) {
            self.down_until.store(0, Ordering::Release);
            if self.down.swap(false, Ordering::AcqRel) {
                metrics::gauge!("portcullis_shared_state_up").set(1.0);
                tracing::info!(redis = %self.target, "shared state reachable again");
            }
        }
    }

    /// Sends one PING; for readiness checks and tests.
    pub async fn ping(&self) -> Result<(), LimiterError> {
        let mut conn = self.conn();
        let ping = redis::cmd("PING");
        match tokio::time::timeout(self.timeout, ping.query_async::<String>(&mut conn)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(LimiterError::Unavailable(e.to_string())),
            Err(_) => Err(LimiterError::Unavailable("timed out".into())),
        }
    }
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

#[async_trait]
impl Limiter for RedisLimiter {
    async fn check(&self, checks: &[Check<'_>]) -> Result<Vec<Decision>, LimiterError> {
        self.fast_fail()?;
        let mut inv = self.script.prepare_invoke();
        for c in checks {
            // Microseconds keep Lua's doubles exact for centuries of timestamps; an interval
            // under 1 us (over a million requests a second on one key) is rounded up.
            let interval = (micros(c.rate.period) / c.rate.limit.max(1)).max(1);
            inv.key(format!("{}{}", self.prefix, c.key))
                .arg(interval)
                .arg(interval.saturating_mul(c.rate.capacity()));
        }
        let mut conn = self.conn();
        let out = self
            .call("rate_limit", inv.invoke_async::<Vec<i64>>(&mut conn))
            .await?;
        if out.len() != 1 + 3 * checks.len() {
            return Err(self.failed("rate_limit", "unexpected script answer"));
        }
        self.recovered();
        Ok(checks
            .iter()
            .enumerate()
            .map(|(i, _)| {
                let ok = out[1 + 3 * i] == 1;
                let remaining = u64::try_from(out[2 + 3 * i]).unwrap_or(0);
                let wait = Duration::from_micros(u64::try_from(out[3 + 3 * i]).unwrap_or(0));
                Decision {
                    allowed: ok,
                    remaining,
                    wait,
                }
            })
            .collect())
    }
}

#[async_trait]
impl crate::ReplayCache for RedisLimiter {
    async fn remember(&self, key: &str, ttl: Duration) -> Result<bool, LimiterError> {
        self.fast_fail()?;
        let mut conn = self.conn();
        let mut cmd = redis::cmd("SET");
        cmd.arg(format!("{}{key}", self.replay_prefix))
            .arg(1)
            .arg("NX")
            .arg("PX")
            .arg(u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1));
        let seen = self
            .call("replay", cmd.query_async::<Option<String>>(&mut conn))
            .await?;
        self.recovered();
        Ok(seen.is_some())
    }

    async fn forget(&self, key: &str) -> Result<(), LimiterError> {
        let mut conn = self.conn();
        let mut cmd = redis::cmd("DEL");
        cmd.arg(format!("{}{key}", self.replay_prefix));
        self.call("replay", cmd.query_async::<i64>(&mut conn))
            .await
            .map(|_| ())
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}

impl RedisLimiter {
    /// Runs one command under the timeout, timed in `portcullis_shared_state_seconds{op}`;
    /// an error or a timeout is reported (and a timeout replaces the connection). The caller
    /// marks success with [`RedisLimiter::recovered`] once it has judged the answer.
    async fn call<T>(
        &self,
        op: &'static str,
        cmd: impl std::future::Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, LimiterError> {
        let started = Instant::now();
        let answer = tokio::time::timeout(self.timeout, cmd).await;
        metrics::histogram!("portcullis_shared_state_seconds", "op" => op)
            .record(started.elapsed().as_secs_f64());
        match answer {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(self.error(op, &e)),
            Err(_) => Err(self.timed_out(op)),
        }
    }

    /// One command for the token cache: [`RedisLimiter::call`], and recovery on an answer.
    async fn token_op<T>(
        &self,
        cmd: impl std::future::Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, LimiterError> {
        let v = self.call("egress_token", cmd).await?;
        self.recovered();
        Ok(v)
    }

    fn fast_fail(&self) -> Result<(), LimiterError> {
        if self.may_try() {
            Ok(())
        } else {
            Err(LimiterError::Unavailable(
                "failing fast after an error".into(),
            ))
        }
    }
}

#[async_trait]
impl crate::TokenCache for RedisLimiter {
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, LimiterError> {
        self.fast_fail()?;
        let mut conn = self.conn();
        let mut cmd = redis::cmd("GET");
        cmd.arg(format!("{}{key}", self.token_prefix));
        self.token_op(cmd.query_async::<Option<Vec<u8>>>(&mut conn))
            .await
    }

    async fn put(&self, key: &str, sealed: &[u8], ttl: Duration) -> Result<(), LimiterError> {
        self.fast_fail()?;
        let mut conn = self.conn();
        let mut cmd = redis::cmd("SET");
        cmd.arg(format!("{}{key}", self.token_prefix))
            .arg(sealed)
            .arg("PX")
            .arg(millis(ttl));
        self.token_op(cmd.query_async::<()>(&mut conn)).await
    }

    async fn try_lock(&self, key: &str, owner: &str, ttl: Duration) -> Result<bool, LimiterError> {
        self.fast_fail()?;
        let mut conn = self.conn();
        let mut cmd = redis::cmd("SET");
        cmd.arg(format!("{}{key}", self.lock_prefix))
            .arg(owner)
            .arg("NX")
            .arg("PX")
            .arg(millis(ttl));
        self.token_op(cmd.query_async::<Option<String>>(&mut conn))
            .await
            .map(|v| v.is_some())
    }

    async fn unlock(&self, key: &str, owner: &str) -> Result<(), LimiterError> {
        let mut conn = self.conn();
        let mut inv = self.unlock.prepare_invoke();
        inv.key(format!("{}{key}", self.lock_prefix)).arg(owner);
        self.token_op(inv.invoke_async::<i64>(&mut conn))
            .await
            .map(|_| ())
    }
}

#[async_trait]
impl crate::FailureCounter for RedisLimiter {
    async fn count_failure(
        &self,
        key: &str,
        max: u32,
        window: Duration,
        cooldown: Duration,
    ) -> Result<Option<Duration>, LimiterError> {
        self.fast_fail()?;
        let mut conn = self.conn();
        let mut inv = self.failures.prepare_invoke();
        // One hash tag for both keys: a Redis Cluster keeps them in one slot, as the script
        // needs.
        inv.key(format!("{}{{{key}}}:n", self.failure_prefix))
            .key(format!("{}{{{key}}}:lock", self.failure_prefix))
            .arg(max)
            .arg(millis(window))
            .arg(millis(cooldown));
        let left = self
            .call("auth_failure", inv.invoke_async::<i64>(&mut conn))
            .await?;
        self.recovered();
        Ok(u64::try_from(left)
            .ok()
            .filter(|ms| *ms > 0)
            .map(Duration::from_millis))
    }
}
