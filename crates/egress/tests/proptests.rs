//! Property tests: the classifier and the URL guard never panic, and what they accept is
//! consistent with the policy.
#![allow(clippy::unwrap_used)]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use portcullis_egress::ssrf::parse_loose_ipv4;
use portcullis_egress::{
    check_header_value, classify, join_destination, parse_destination, Policy, Target, Verdict,
};
use proptest::prelude::*;
use url::Url;

fn url_like() -> impl Strategy<Value = String> {
    let scheme = prop::sample::select(vec![
        "http://",
        "https://",
        "HTTP://",
        "file://",
        "gopher://",
        "//",
        "",
    ]);
    let host = prop::sample::select(vec![
        "127.0.0.1",
        "0x7f.1",
        "2130706433",
        "[::1]",
        "[::ffff:10.0.0.1]",
        "evil.com@10.0.0.1",
        "public.test",
        "localhost",
        "0177.0.0.1",
        "[fe80::1%25eth0]",
        "93.184.216.34",
        "",
    ]);
    let path = "[a-zA-Z0-9%./\\\\?#@:\\t\\r\\n -]{0,24}";
    (scheme, host, path).prop_map(|(s, h, p)| format!("{s}{h}{p}"))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(4000))]

    #[test]
    fn classify_never_panics_v4(bits: u32) {
        let ip = Ipv4Addr::from(bits);
        let v = classify(IpAddr::V4(ip));
        // The mapped form gets the same verdict.
        prop_assert_eq!(classify(IpAddr::V6(ip.to_ipv6_mapped())), v);
    }

    #[test]
    fn classify_never_panics_v6(bits: u128) {
        let ip = Ipv6Addr::from(bits);
        let v = classify(IpAddr::V6(ip));
        // Only global unicast can be allowed.
        if v == Verdict::Allowed && ip.to_ipv4_mapped().is_none() {
            prop_assert_eq!(ip.segments()[0] & 0xe000, 0x2000);
        }
    }

    #[test]
    fn loose_ipv4_never_panics(s in "[0-9a-fA-FxX.]{0,40}") {
        let _ = parse_loose_ipv4(&s);
    }

    #[test]
    fn parse_destination_never_panics(s in any::<String>()) {
        let _ = parse_destination(&s, &Policy::default());
    }

    #[test]
    fn parse_destination_accepts_only_allowed(s in url_like()) {
        if let Ok((url, target)) = parse_destination(&s, &Policy::default()) {
            prop_assert!(url.scheme() == "http" || url.scheme() == "https");
            prop_assert!(url.username().is_empty() && url.password().is_none());
            prop_assert!(url.fragment().is_none());
            if let Target::Ip(ip) = target {
                prop_assert!(classify(ip).is_allowed(), "{} -> {}", s, ip);
            }
        }
    }

    #[test]
    fn join_never_panics_and_stays_under_base(p in any::<String>(), q in "[a-z./%2eEfF5cC]{0,20}") {
        let base = Url::parse("https://public.test/v1/").unwrap();
        let policy = Policy::default();
        for path in [p.as_str(), q.as_str()] {
            if let Ok((url, _)) = join_destination(&base, path, &policy) {
                prop_assert!(url.path().starts_with("/v1/"), "{:?} -> {}", path, url);
                prop_assert_eq!(url.host_str(), Some("public.test"));
                prop_assert!(!url.path().split('/').any(|seg| seg == ".." || seg == "."));
            }
        }
    }

    #[test]
    fn header_values_with_crlf_refused(v in any::<Vec<u8>>()) {
        let bad = v.iter().any(|b| matches!(b, b'\r' | b'\n' | 0));
        prop_assert_eq!(check_header_value(&v).is_err(), bad);
    }
}
