//! Daily and monthly quotas through the real gateway: counted per client and per client on a
//! route, refused with 429 and the reset time, and kept across a restart.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{assert_problem, route, server_section, upstream, Gw};

fn header(res: &reqwest::Response, name: &str) -> String {
    res.headers()
        .get_all(name)
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect::<Vec<_>>()
        .join(", ")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quotas_count_admitted_requests_and_survive_a_restart() {
    let up = upstream::start(None).await;
    let cfg = format!(
        "{}[[clients]]\nid = \"billing\"\nquota = {{ daily = 3, monthly = 100 }}\n\n{}{}",
        server_section(""),
        route("a", "[\"GET\"]", "/a", &up.url(), "auth = [\"api_key\"]"),
        route("b", "[\"GET\"]", "/b", &up.url(), "auth = [\"api_key\"]\nquota = { daily = 2 }\nrate_limits = [{ per = \"client\", limit = 100, period = \"1m\" }]"),
    );
    let gw = Gw::start(&cfg);
    let key = gw.issue_key("billing").await;

    let first = gw.get_with_key("/b", &key).await;
    assert_eq!(first.status(), 200);
    // One field line per list: a client reading one line must see every item.
    for name in ["ratelimit", "ratelimit-policy"] {
        assert_eq!(first.headers().get_all(name).iter().count(), 1, "{name}");
    }
    let rl = header(&first, "ratelimit");
    // The rate limit's item and the tightest quota's item, in one list.
    assert!(rl.contains("\"l0\";r=99"), "{rl}");
    assert!(rl.contains("\"route-daily\";r=1;t="), "{rl}");
    let policy = header(&first, "ratelimit-policy");
    assert!(policy.contains("\"client-daily\";q=3;w=86400"), "{policy}");
    assert!(policy.contains("\"route-daily\";q=2;w=86400"), "{policy}");
    assert!(policy.contains("\"client-monthly\";q=100;w="), "{policy}");

    assert_eq!(gw.get_with_key("/b", &key).await.status(), 200);
    let refused = gw.get_with_key("/b", &key).await;
    let retry: u64 = header(&refused, "retry-after").parse().unwrap();
    assert!((1..=86_400).contains(&retry), "{retry}");
    assert!(header(&refused, "ratelimit").contains("\"route-daily\";r=0"));
    for name in ["ratelimit", "ratelimit-policy"] {
        assert_eq!(refused.headers().get_all(name).iter().count(), 1, "{name}");
    }
    let p = assert_problem(refused, 429, "quota-exceeded").await;
    assert!(p["detail"].as_str().unwrap().contains("daily"));

    // Two requests used of the client's three: the refused one did not count. That survives
    // a restart.
    let gw = gw.restart();
    let ok = gw.get_with_key("/a", &key).await;
    assert_eq!(ok.status(), 200);
    assert!(header(&ok, "ratelimit").contains("\"client-daily\";r=0;t="));
    let refused = gw.get_with_key("/a", &key).await;
    assert_problem(refused, 429, "quota-exceeded").await;

    let metrics = gw.metrics().await;
    assert!(
        metrics.contains("portcullis_quota_exceeded_total{route=\"a\",quota=\"client-daily\"} 1"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusal_names_the_full_quota_that_resets_last() {
    let up = upstream::start(None).await;
    let cfg = format!(
        "{}[[clients]]\nid = \"billing\"\nquota = {{ daily = 2, monthly = 2 }}\n\n{}",
        server_section(""),
        route("a", "[\"GET\"]", "/a", &up.url(), "auth = [\"api_key\"]"),
    );
    let gw = Gw::start(&cfg);
    let key = gw.issue_key("billing").await;
    assert_eq!(gw.get_with_key("/a", &key).await.status(), 200);
    assert_eq!(gw.get_with_key("/a", &key).await.status(), 200);
    // Both quotas are used up. Coming back tomorrow would only meet the monthly one, so the
    // answer must point to the next month (unless today is the month's last day, when the
    // two reset together).
    let refused = gw.get_with_key("/a", &key).await;
    let now = time::OffsetDateTime::now_utc();
    let today = now.date();
    let next_month = if today.month() == time::Month::December {
        time::Date::from_calendar_date(today.year() + 1, time::Month::January, 1)
    } else {
        time::Date::from_calendar_date(today.year(), today.month().next(), 1)
    }
    .unwrap();
    let to_next_month = (next_month.midnight().assume_utc() - now).whole_seconds();
    let retry: i64 = header(&refused, "retry-after").parse().unwrap();
    let rl = header(&refused, "ratelimit");
    if today.next_day() == Some(next_month) {
        assert!(
            (to_next_month - 5..=to_next_month + 1).contains(&retry),
            "{retry}"
        );
    } else {
        assert!(rl.contains("\"client-monthly\";r=0"), "{rl}");
        assert!(
            (to_next_month - 5..=to_next_month + 1).contains(&retry),
            "Retry-After {retry}, {to_next_month} s to the next month"
        );
        let p = assert_problem(refused, 429, "quota-exceeded").await;
        assert!(p["detail"].as_str().unwrap().contains("monthly"), "{p}");
    }
}

/// Two gateway processes on one PostgreSQL database (a fresh one on the machine's server):
/// one quota between them, exact under concurrent requests to both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_gateways_sharing_postgres_admit_exactly_the_quota() {
    let db = portcullis_store::testing::TestDb::create().await;
    let keys = tempfile::tempdir().unwrap();
    let up = upstream::start(None).await;
    // One master key for both: the API key pepper and every secret live in the shared vault.
    let cfg = format!(
        "{}[store]\nurl = \"{}\"\n\n[vault]\nkey_file = \"{}\"\n\n[[clients]]\nid = \"billing\"\nquota = {{ daily = 6 }}\n\n{}",
        server_section(""),
        db.url(),
        keys.path().join("master.key").display(),
        route("a", "[\"GET\"]", "/a", &up.url(), "auth = [\"api_key\"]"),
    );
    let a = Gw::start(&cfg);
    let key = a.issue_key("billing").await;
    let b = Gw::start(&cfg);
    let c = common::client();
    let tasks: Vec<_> = (0..16)
        .map(|i| {
            let url = if i % 2 == 0 { a.url("/a") } else { b.url("/a") };
            let (c, key) = (c.clone(), key.clone());
            tokio::spawn(async move {
                let res = c.get(url).bearer_auth(key).send().await.unwrap();
                res.status().as_u16()
            })
        })
        .collect();
    let mut by_status = std::collections::BTreeMap::new();
    for t in tasks {
        *by_status.entry(t.await.unwrap()).or_insert(0) += 1;
    }
    assert_eq!(by_status.get(&200), Some(&6), "{by_status:?}");
    assert_eq!(by_status.get(&429), Some(&10), "{by_status:?}");
    // Both see the one count.
    for gw in [&a, &b] {
        let res = gw.get_with_key("/a", &key).await;
        assert!(header(&res, "ratelimit").contains("\"client-daily\";r=0"));
        assert_problem(res, 429, "quota-exceeded").await;
    }
    // `check` does not call these quotas per instance any more.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(["check"])
        .arg(a.config_path())
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}");
    assert!(!text.contains("own store"), "{text}");
}
