//! The Redis limiter against real Redis servers: the machine's shared one on 127.0.0.1:6379
//! for exactness (under a key prefix of its own), and a private `redis-server` on a free port
//! for the outage test, so the shared server is never stopped.

#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use portcullis_state::{
    all_allowed, Check, Limiter, LimiterError, Rate, RedisLimiter, RedisOptions,
};
use std::{
    process::{Child, Command, Stdio},
    sync::Arc,
    time::{Duration, Instant},
};

fn opts(url: &str) -> RedisOptions {
    RedisOptions {
        url: url.to_string(),
        key_prefix: format!(
            "portcullis-test-{}-{}",
            std::process::id(),
            fastrand_suffix()
        ),
        timeout: Duration::from_millis(500),
    }
}

fn fastrand_suffix() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

fn per_minute(limit: u64) -> Rate {
    Rate {
        limit,
        period: Duration::from_secs(60),
        burst: 0,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_instances_sharing_redis_admit_exactly_the_limit() {
    // Two limiters are two gateway instances: separate connections, one prefix.
    let o = opts("redis://127.0.0.1:6379");
    let a = Arc::new(RedisLimiter::new(&o).unwrap());
    let b = Arc::new(RedisLimiter::new(&o).unwrap());
    a.ping()
        .await
        .expect("the shared Redis on 127.0.0.1:6379 must be running");
    let mut tasks = Vec::new();
    for i in 0..150 {
        let l = if i % 2 == 0 { a.clone() } else { b.clone() };
        tasks.push(tokio::spawn(async move {
            let c = [Check {
                key: "route|0|c:client",
                rate: per_minute(100),
            }];
            all_allowed(&l.check(&c).await.unwrap())
        }));
    }
    let mut admitted = 0;
    for t in tasks {
        admitted += usize::from(t.await.unwrap());
    }
    assert_eq!(admitted, 100);
}

#[tokio::test]
async fn several_limits_are_all_or_nothing_and_refusals_cost_nothing() {
    let l = RedisLimiter::new(&opts("redis://127.0.0.1:6379")).unwrap();
    let checks = [
        Check {
            key: "r|0|wide",
            rate: per_minute(100),
        },
        Check {
            key: "r|1|narrow",
            rate: per_minute(2),
        },
    ];
    let mut admitted = 0;
    for _ in 0..10 {
        let d = l.check(&checks).await.unwrap();
        if all_allowed(&d) {
            admitted += 1;
        } else {
            assert!(
                d[0].allowed && !d[1].allowed,
                "the narrow limit refuses: {d:?}"
            );
            assert!(d[1].wait > Duration::ZERO);
        }
    }
    assert_eq!(admitted, 2);
    // The wide limit recorded the two admitted requests only.
    let d = l.check(&checks[..1]).await.unwrap();
    assert!(d[0].allowed);
    assert_eq!(d[0].remaining, 100 - 3);
}

struct PrivateRedis {
    child: Child,
}

impl PrivateRedis {
    fn start(port: u16) -> PrivateRedis {
        let child = Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server must be installed");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "private redis-server did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        PrivateRedis { child }
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test(flavor = "multi_thread")]
async fn an_outage_is_reported_and_service_resumes_when_redis_returns() {
    let port = free_port();
    let server = PrivateRedis::start(port);
    let l = RedisLimiter::new(&opts(&format!("redis://127.0.0.1:{port}"))).unwrap();
    let c = [Check {
        key: "r|0|k",
        rate: per_minute(1000),
    }];
    assert!(all_allowed(&l.check(&c).await.unwrap()));

    drop(server);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match l.check(&c).await {
            Err(LimiterError::Unavailable(_)) => break,
            Ok(_) => assert!(Instant::now() < deadline, "outage never reported"),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Failing fast: the next call does not wait for a connection attempt.
    assert!(l.check(&c).await.is_err());

    let _server = PrivateRedis::start(port);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(d) = l.check(&c).await {
            assert!(all_allowed(&d));
            break;
        }
        assert!(Instant::now() < deadline, "never reconnected");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_message_is_first_seen_by_exactly_one_instance() {
    use portcullis_state::ReplayCache;
    let o = opts("redis://127.0.0.1:6379");
    let a = Arc::new(RedisLimiter::new(&o).unwrap());
    let b = Arc::new(RedisLimiter::new(&o).unwrap());
    let tasks: Vec<_> = (0..20)
        .map(|i| {
            let c = if i % 2 == 0 { a.clone() } else { b.clone() };
            tokio::spawn(async move {
                c.remember("hook|id:msg_1", Duration::from_secs(60))
                    .await
                    .unwrap()
            })
        })
        .collect();
    let mut first = 0;
    for t in tasks {
        first += usize::from(t.await.unwrap());
    }
    assert_eq!(first, 1);
    b.forget("hook|id:msg_1").await.unwrap();
    assert!(a
        .remember("hook|id:msg_1", Duration::from_secs(60))
        .await
        .unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn token_entries_are_shared_and_the_refresh_lock_has_one_holder() {
    use portcullis_state::TokenCache;
    let o = opts("redis://127.0.0.1:6379");
    let a = Arc::new(RedisLimiter::new(&o).unwrap());
    let b = Arc::new(RedisLimiter::new(&o).unwrap());
    // Opaque bytes (the gateway stores sealed tokens), including bytes that are not UTF-8.
    let sealed = [1u8, 0, 255, 254, 7, 42];
    assert!(a.get("crm:k1").await.unwrap().is_none());
    a.put("crm:k1", &sealed, Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(b.get("crm:k1").await.unwrap().as_deref(), Some(&sealed[..]));

    // Twenty contenders on two instances: exactly one holds the lock.
    let tasks: Vec<_> = (0..20)
        .map(|i| {
            let c = if i % 2 == 0 { a.clone() } else { b.clone() };
            tokio::spawn(async move {
                c.try_lock("crm:k1", &format!("owner-{i}"), Duration::from_secs(60))
                    .await
                    .unwrap()
                    .then_some(i)
            })
        })
        .collect();
    let mut holders = Vec::new();
    for t in tasks {
        holders.extend(t.await.unwrap());
    }
    assert_eq!(holders.len(), 1, "{holders:?}");
    // Only the holder releases it.
    let other = (holders[0] + 1) % 20;
    b.unlock("crm:k1", &format!("owner-{other}")).await.unwrap();
    assert!(!a
        .try_lock("crm:k1", "late", Duration::from_secs(60))
        .await
        .unwrap());
    a.unlock("crm:k1", &format!("owner-{}", holders[0]))
        .await
        .unwrap();
    assert!(b
        .try_lock("crm:k1", "late", Duration::from_secs(60))
        .await
        .unwrap());

    // Entries and locks expire with the TTL they were given.
    a.put("crm:short", &sealed, Duration::from_millis(50))
        .await
        .unwrap();
    assert!(a
        .try_lock("crm:short", "x", Duration::from_millis(50))
        .await
        .unwrap());
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert!(b.get("crm:short").await.unwrap().is_none());
    assert!(b
        .try_lock("crm:short", "y", Duration::from_secs(1))
        .await
        .unwrap());
}

#[tokio::test(flavor = "multi_thread")]
async fn the_token_cache_reports_an_outage_instead_of_guessing() {
    use portcullis_state::TokenCache;
    let port = free_port();
    let server = PrivateRedis::start(port);
    let l = RedisLimiter::new(&opts(&format!("redis://127.0.0.1:{port}"))).unwrap();
    l.put("crm:k", b"sealed", Duration::from_secs(60))
        .await
        .unwrap();
    drop(server);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match l.get("crm:k").await {
            Err(LimiterError::Unavailable(_)) => break,
            Ok(_) => assert!(Instant::now() < deadline, "outage never reported"),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(l
        .try_lock("crm:k", "o", Duration::from_secs(1))
        .await
        .is_err());
}

/// A TCP relay to the shared Redis that can go silent: `silence()` makes every connection it
/// holds swallow what it reads (so the kernel still acknowledges, as a NAT or firewall that
/// dropped the flow's state would leave it) and never answer, while connections made after
/// it pass through again.
struct Relay {
    port: u16,
    epoch: Arc<std::sync::atomic::AtomicU64>,
}

impl Relay {
    async fn start() -> Relay {
        use std::sync::atomic::Ordering;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let epoch = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let current = epoch.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let born = current.load(Ordering::SeqCst);
                let current = current.clone();
                tokio::spawn(async move {
                    let Ok(server) = tokio::net::TcpStream::connect("127.0.0.1:6379").await else {
                        return;
                    };
                    let (mut cr, mut cw) = client.into_split();
                    let (mut sr, mut sw) = server.into_split();
                    let alive = move || current.load(Ordering::SeqCst) == born;
                    let up = {
                        let alive = alive.clone();
                        async move {
                            let mut buf = [0u8; 4096];
                            loop {
                                let n = match tokio::io::AsyncReadExt::read(&mut cr, &mut buf).await
                                {
                                    Ok(0) | Err(_) => return,
                                    Ok(n) => n,
                                };
                                if alive() {
                                    let _ = tokio::io::AsyncWriteExt::write_all(&mut sw, &buf[..n])
                                        .await;
                                }
                            }
                        }
                    };
                    let down = async move {
                        let mut buf = [0u8; 4096];
                        loop {
                            let n = match tokio::io::AsyncReadExt::read(&mut sr, &mut buf).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => n,
                            };
                            if alive() {
                                let _ =
                                    tokio::io::AsyncWriteExt::write_all(&mut cw, &buf[..n]).await;
                            }
                        }
                    };
                    tokio::join!(up, down);
                });
            }
        });
        Relay { port, epoch }
    }

    fn silence(&self) {
        self.epoch.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_that_goes_silent_is_replaced_once_it_times_out() {
    let relay = Relay::start().await;
    let mut o = opts(&format!("redis://127.0.0.1:{}", relay.port));
    o.timeout = Duration::from_millis(250);
    let l = RedisLimiter::new(&o).unwrap();
    let c = [Check {
        key: "silent",
        rate: per_minute(1_000_000),
    }];
    l.check(&c)
        .await
        .expect("the shared Redis on 127.0.0.1:6379 must be running");
    // The held connection goes silent; new ones would work. redis-rs does not replace a
    // connection that only times out, so every decision used to time out from here on.
    relay.silence();
    assert!(matches!(
        l.check(&c).await,
        Err(LimiterError::Unavailable(_))
    ));
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut recovered = false;
    while Instant::now() < deadline {
        if l.check(&c).await.is_ok() {
            recovered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        recovered,
        "still failing 10 s after a fresh connection would have worked"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authentication_failures_are_counted_once_for_every_instance() {
    use portcullis_state::FailureCounter;
    let o = opts("redis://127.0.0.1:6379");
    let a = RedisLimiter::new(&o).unwrap();
    let b = RedisLimiter::new(&o).unwrap();
    let (window, cooldown) = (Duration::from_secs(60), Duration::from_secs(30));
    // Three failures allowed, spread over two instances: the fourth locks, whichever counts it.
    for (i, l) in [&a, &b, &a].into_iter().enumerate() {
        let left = l.count_failure("ip:192.0.2.1", 3, window, cooldown).await;
        assert_eq!(left.unwrap(), None, "failure {}", i + 1);
    }
    let left = b
        .count_failure("ip:192.0.2.1", 3, window, cooldown)
        .await
        .unwrap();
    assert_eq!(left, Some(cooldown));
    // Locked: every instance is told the time still to run, and nothing more is counted.
    let left = a
        .count_failure("ip:192.0.2.1", 3, window, cooldown)
        .await
        .unwrap();
    assert!(
        left.is_some_and(|d| d <= cooldown && d > Duration::from_secs(20)),
        "{left:?}"
    );
    // Another source is counted apart.
    let other = a
        .count_failure("ip:192.0.2.2", 3, window, cooldown)
        .await
        .unwrap();
    assert_eq!(other, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failure_count_runs_out_with_its_window() {
    use portcullis_state::FailureCounter;
    let a = RedisLimiter::new(&opts("redis://127.0.0.1:6379")).unwrap();
    let (window, cooldown) = (Duration::from_millis(300), Duration::from_secs(30));
    assert_eq!(
        a.count_failure("key:k1", 1, window, cooldown)
            .await
            .unwrap(),
        None
    );
    tokio::time::sleep(Duration::from_millis(600)).await;
    // The first failure's window is over: this is the first of a new one, not the second.
    assert_eq!(
        a.count_failure("key:k1", 1, window, cooldown)
            .await
            .unwrap(),
        None
    );
    assert!(a
        .count_failure("key:k1", 1, window, cooldown)
        .await
        .unwrap()
        .is_some());
}
