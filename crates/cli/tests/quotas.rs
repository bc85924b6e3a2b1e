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
