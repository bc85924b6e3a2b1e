//! The SSRF corpus: URLs, caller paths and DNS answers that must be refused, and public
//! destinations that must still be accepted. Nothing here opens a connection: names resolve
//! through the `TestResolver` table.
#![allow(clippy::unwrap_used)]

use std::net::IpAddr;
use std::sync::Arc;

use portcullis_egress::{
    join_destination, parse_destination, GuardedResolver, Policy, Reason, Refusal, Target,
    TestResolver,
};
use url::Url;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn table() -> TestResolver {
    TestResolver::new()
        .with("public.test", [ip("93.184.216.34")])
        .with("public6.test", [ip("2606:2800:220:1:248:1893:25c8:1946")])
        .with(
            "api.example.com",
            [ip("93.184.216.34"), ip("2606:4700::1111")],
        )
        .with("internal.test", [ip("10.0.0.5")])
        .with("meta.test", [ip("169.254.169.254")])
        .with("loop.test", [ip("127.0.0.1")])
        .with("v6loop.test", [ip("::1")])
        .with("mapped.test", [ip("::ffff:10.0.0.1")])
        .with("mixed.test", [ip("93.184.216.34"), ip("192.168.1.1")])
        .with("mixed6.test", [ip("2606:4700::1111"), ip("fd00::1")])
        .with("cgnat.test", [ip("100.64.1.1")])
        .with("nat64.test", [ip("64:ff9b::a9fe:a9fe")])
        .with("imds6.test", [ip("fd00:ec2::254")])
        .with("teredo.test", [ip("2001:0:4136:e378:8000:63bf:80ff:fffe")])
        .with("empty.test", [])
}

fn resolver(policy: Policy) -> GuardedResolver {
    GuardedResolver::new(Arc::new(policy), Arc::new(table()))
}

/// Parse, check, and resolve a name host: what the client does before connecting.
async fn destination(raw: &str, policy: &Policy) -> Result<Vec<IpAddr>, Refusal> {
    let (_, target) = parse_destination(raw, policy)?;
    match target {
        Target::Ip(ip) => Ok(vec![ip]),
        Target::Name(name) => resolver(policy.clone()).resolve_checked(&name).await,
    }
}

const REFUSED_URLS: &[(&str, &str)] = &[
    // Decimal, octal, hex and mixed-base IPv4.
    ("decimal loopback", "http://2130706433/"),
    ("octal loopback", "http://0177.0.0.1/"),
    ("hex loopback", "http://0x7f.0.0.1/"),
    ("mixed short hex", "http://0x7f.1/"),
    ("short form", "http://127.1/"),
    ("hex whole", "http://0x7f000001/"),
    ("octal whole", "http://017700000001/"),
    ("octal private", "http://0300.0250.0.1/"),
    ("hex metadata", "http://0xa9.0xfe.0xa9.0xfe/"),
    ("decimal metadata", "http://2852039166/latest/meta-data/"),
    ("uppercase hex metadata", "http://0XA9FEA9FE/"),
    ("mixed bases", "http://0x7f.000.0.01/"),
    ("trailing dot", "http://127.0.0.1./"),
    ("percent-encoded dots in host", "http://127%2e0%2e0%2e1/"),
    ("fullwidth digits", "http://\u{ff11}\u{ff12}\u{ff17}.0.0.1/"),
    ("circled digits", "http://\u{2460}\u{2461}\u{2466}.0.0.1/"),
    ("zero", "http://0/"),
    ("unspecified", "http://0.0.0.0:8080/"),
    // Plain special-purpose IPv4.
    ("metadata", "http://169.254.169.254/latest/meta-data/"),
    ("rfc1918 10/8", "http://10.0.0.1/"),
    ("rfc1918 172.16/12", "https://172.16.0.1:443/"),
    ("rfc1918 192.168/16", "http://192.168.1.1/"),
    ("cgnat", "http://100.64.0.1/"),
    ("multicast", "http://224.0.0.1/"),
    ("broadcast", "http://255.255.255.255/"),
    ("reserved", "http://240.0.0.1/"),
    ("documentation", "http://192.0.2.1/"),
    ("benchmarking", "http://198.18.0.1/"),
    ("ietf", "http://192.0.0.1/"),
    ("uppercase scheme", "HTTP://127.0.0.1/"),
    // IPv6 forms and embeddings.
    ("v6 loopback", "http://[::1]/"),
    ("v6 loopback long", "http://[0:0:0:0:0:0:0:1]:80/"),
    ("v6 unspecified", "http://[::]/"),
    ("mapped loopback", "http://[::ffff:127.0.0.1]/"),
    ("mapped loopback hex", "http://[::ffff:7f00:1]/"),
    (
        "mapped metadata long",
        "http://[0:0:0:0:0:ffff:169.254.169.254]/",
    ),
    ("compatible", "http://[::127.0.0.1]/"),
    ("nat64", "http://[64:ff9b::169.254.169.254]/"),
    ("local nat64", "http://[64:ff9b:1::a00:1]/"),
    ("6to4", "http://[2002:7f00:1::1]/"),
    ("teredo", "http://[2001:0:4136:e378:8000:63bf:80ff:fffe]/"),
    ("zone id", "http://[fe80::1%25eth0]/"),
    ("zone id raw", "http://[fe80::1%eth0]/"),
    ("link-local v6", "http://[fe80::1]/"),
    ("aws imds v6", "http://[fd00:ec2::254]/latest/meta-data/"),
    ("ula", "http://[fc00::1]/"),
    ("multicast v6", "http://[ff02::1]/"),
    ("documentation v6", "http://[2001:db8::1]/"),
    ("orchid v2", "http://[2001:20::1]/"),
    ("site-local", "http://[fec0::1]/"),
    ("unbracketed v6", "http://::1/"),
    // Names resolving to refused addresses, and names refused without resolving.
    ("localhost", "http://localhost/"),
    ("localhost uppercase trailing dot", "http://LOCALHOST./"),
    ("localhost subdomain", "http://foo.localhost:8080/"),
    ("name to private", "http://internal.test/"),
    ("name to metadata", "http://meta.test/latest/meta-data/"),
    ("name to loopback", "http://loop.test:8080/"),
    ("name to v6 loopback", "http://v6loop.test/"),
    ("name to mapped private", "http://mapped.test/"),
    ("name to cgnat", "http://cgnat.test/"),
    ("name to nat64", "http://nat64.test/"),
    ("name to imds v6", "http://imds6.test/"),
    ("name to teredo", "http://teredo.test/"),
    ("mixed answer v4", "http://mixed.test/"),
    ("mixed answer v6", "https://mixed6.test/"),
    ("empty answer", "http://empty.test/"),
    ("unknown name", "http://nonexistent.test/"),
    // Userinfo and parser confusion.
    ("userinfo", "http://evil.com@127.0.0.1/"),
    ("userinfo on public host", "http://user:pass@public.test/"),
    ("empty userinfo", "http://:@public.test/"),
    ("port-looking userinfo", "http://public.test:80@127.0.0.1/"),
    ("fragment confusion", "http://127.0.0.1#@evil.com/"),
    ("fragment on public host", "http://public.test/#x"),
    ("backslash confusion", "http://evil.com\\@127.0.0.1/"),
    ("backslash path", "http://public.test\\..\\admin"),
    ("tab in host", "http://127.0.0.1\tevil.com/"),
    ("tab splitting a name", "http://loc\talhost/"),
    ("newline in host", "http://public.test\n.internal.test/"),
    ("crlf injection", "http://public.test/\r\nHost: 127.0.0.1"),
    ("leading space", " http://127.0.0.1/"),
    ("encoded crlf in host", "http://public.test%0d%0a/"),
    ("encoded slash in path", "http://public.test/a%2f..%2fadmin"),
    ("encoded dot segment", "http://public.test/v1/%2e%2e/admin"),
    ("scheme-relative", "//127.0.0.1/"),
    ("no host", "http:///etc/passwd"),
    // Other schemes.
    ("file", "file:///etc/passwd"),
    ("gopher", "gopher://127.0.0.1:70/_GET%20/"),
    ("ftp", "ftp://public.test/"),
    ("data", "data:text/plain,hello"),
    ("dict", "dict://127.0.0.1:11211/stats"),
    ("javascript", "javascript:alert(1)"),
    ("websocket", "ws://public.test/"),
    ("ldap", "ldap://public.test/"),
    ("jar", "jar:http://public.test/a.jar!/"),
];

#[tokio::test]
async fn corpus_refused() {
    assert!(REFUSED_URLS.len() >= 40);
    let policy = Policy::default();
    let mut accepted = Vec::new();
    for (what, raw) in REFUSED_URLS {
        match destination(raw, &policy).await {
            Ok(addrs) => accepted.push(format!("{what}: {raw:?} -> {addrs:?}")),
            Err(r) => {
                // The detail is for logs; the public text never varies.
                assert!(!r.to_string().is_empty());
                assert_eq!(Refusal::PUBLIC_MESSAGE, "destination refused");
            }
        }
    }
    assert!(accepted.is_empty(), "accepted:\n{}", accepted.join("\n"));
}

#[tokio::test]
async fn corpus_reasons() {
    let policy = Policy::default();
    let addr = |raw: &'static str| {
        let policy = policy.clone();
        async move {
            match destination(raw, &policy).await {
                Err(Refusal::Address { reason, .. } | Refusal::ResolvedAddress { reason, .. }) => {
                    Some(reason)
                }
                other => panic!("{raw}: {other:?}"),
            }
        }
    };
    assert_eq!(addr("http://2130706433/").await, Some(Reason::Loopback));
    assert_eq!(
        addr("http://0xa9.0xfe.0xa9.0xfe/").await,
        Some(Reason::LinkLocal)
    );
    assert_eq!(
        addr("http://[::ffff:127.0.0.1]/").await,
        Some(Reason::Loopback)
    );
    assert_eq!(
        addr("http://[64:ff9b::169.254.169.254]/").await,
        Some(Reason::Nat64)
    );
    assert_eq!(
        addr("http://[2002:7f00:1::1]/").await,
        Some(Reason::SixToFour)
    );
    assert_eq!(
        addr("http://[2001:0:4136:e378:8000:63bf:80ff:fffe]/").await,
        Some(Reason::Teredo)
    );
    assert_eq!(addr("http://[fd00:ec2::254]/").await, Some(Reason::Private));
    assert_eq!(addr("http://mixed.test/").await, Some(Reason::Private));
    // IDNA maps fullwidth and circled digits to ASCII before the IPv4 parse.
    assert_eq!(
        addr("http://\u{ff11}\u{ff12}\u{ff17}.0.0.1/").await,
        Some(Reason::Loopback)
    );
    assert_eq!(
        addr("http://\u{2460}\u{2461}\u{2466}.0.0.1/").await,
        Some(Reason::Loopback)
    );
    assert_eq!(addr("http://0x7f.000.0.01/").await, Some(Reason::Loopback));
    assert_eq!(addr("http://0/").await, Some(Reason::Unspecified));
    assert_eq!(
        addr("http://127%2e0%2e0%2e1/").await,
        Some(Reason::Loopback)
    );
    assert_eq!(addr("http://127.0.0.1./").await, Some(Reason::Loopback));
    assert_eq!(addr("http://mapped.test/").await, Some(Reason::Private));

    let err = |raw: &'static str| {
        let policy = policy.clone();
        async move { destination(raw, &policy).await.unwrap_err() }
    };
    assert_eq!(err("http://evil.com@127.0.0.1/").await, Refusal::Userinfo);
    assert_eq!(err("http://:@public.test/").await, Refusal::Userinfo);
    assert_eq!(
        err("http://evil.com\\@127.0.0.1/").await,
        Refusal::Backslash
    );
    assert_eq!(
        err("http://127.0.0.1\tevil.com/").await,
        Refusal::ControlCharacter
    );
    assert_eq!(
        err("gopher://127.0.0.1:70/").await,
        Refusal::Scheme("gopher".into())
    );
    assert_eq!(err("http://public.test/a%2fb").await, Refusal::EncodedSlash);
    assert_eq!(
        err("http://public.test/v1/%2e%2e/x").await,
        Refusal::DotSegment
    );
    assert!(matches!(
        err("http://[fe80::1%25eth0]/").await,
        Refusal::Unparseable(_)
    ));
    assert!(matches!(
        err("http://localhost/").await,
        Refusal::AmbiguousHost(_)
    ));
    assert!(matches!(
        err("http://empty.test/").await,
        Refusal::NoAddress { .. }
    ));
    assert!(matches!(
        err("http://nonexistent.test/").await,
        Refusal::Resolution { .. }
    ));
}

/// The `url` crate (WHATWG) turns every numeric host form into an IPv4 host, so the guard
/// classifies the address, not a name; this pins that behaviour down.
#[test]
fn url_crate_normalises_numeric_hosts() {
    let lo = url::Host::Ipv4("127.0.0.1".parse().unwrap());
    for raw in [
        "http://2130706433/",
        "http://0177.0.0.1/",
        "http://0x7f.1/",
        "http://127.1/",
        "http://0x7F.0.0.0x1/",
        "http://017700000001/",
        "http://127.0.0.1./",
        "http://127%2e0%2e0%2e1/",
        "http://\u{ff11}\u{ff12}\u{ff17}.0.0.1/",
    ] {
        let url = Url::parse(raw).unwrap();
        assert_eq!(url.host(), Some(lo.clone()), "{raw}");
    }
    // Not numbers by WHATWG rules: invalid, so never a name the resolver could interpret.
    for raw in ["http://0x7g.1/", "http://1.2.3.4.5/", "http://256.1.1.1/"] {
        assert!(Url::parse(raw).is_err(), "{raw}");
    }
}

#[test]
fn caller_paths_refused() {
    let policy = Policy::default();
    let base = Url::parse("https://public.test/v1/").unwrap();
    let paths = [
        "../admin",
        "/../admin",
        "users/../../admin",
        "%2e%2e/admin",
        "%2E%2E/admin",
        ".%2e/admin",
        "%2e./admin",
        "%252e%252e/admin",
        "./users",
        "%2e",
        "a%2fb",
        "a%2Fb",
        "a%5cb",
        "a%5C..%5Cadmin",
        "a%252fb",
        "a\\b",
        "..\\admin",
        "a\0b",
        "a%00b",
        "a\r\nHost: evil",
        "a%0d%0aHost:%20evil",
        "a\tb",
        "a b",
        "a#frag",
        "x?q=%0d%0aSet-Cookie:1",
        "x?q=%250d%250a",
    ];
    for p in paths {
        let r = join_destination(&base, p, &policy);
        assert!(r.is_err(), "{p:?} accepted: {r:?}");
    }
    // A base that itself is unacceptable.
    for b in [
        "http://u:p@public.test/",
        "http://127.0.0.1/",
        "ftp://public.test/",
        "https://public.test/v1?key=1",
        "https://public.test/v1#f",
    ] {
        let base = Url::parse(b).unwrap();
        assert!(join_destination(&base, "x", &policy).is_err(), "{b}");
    }
}

#[tokio::test]
async fn public_destinations_accepted() {
    let policy = Policy::default();
    let ok = [
        ("http://public.test/", vec![ip("93.184.216.34")]),
        ("http://Public.Test./path?q=1", vec![ip("93.184.216.34")]),
        (
            "https://public6.test/x",
            vec![ip("2606:2800:220:1:248:1893:25c8:1946")],
        ),
        (
            "https://api.example.com/v1/users",
            vec![ip("93.184.216.34"), ip("2606:4700::1111")],
        ),
        ("http://93.184.216.34/", vec![ip("93.184.216.34")]),
        (
            "https://[2606:4700::1111]:8443/",
            vec![ip("2606:4700::1111")],
        ),
        // IPv4-mapped: allowed exactly when the embedded address is.
        ("http://[::ffff:93.184.216.34]/", vec![ip("93.184.216.34")]),
    ];
    for (raw, want) in ok {
        let got = destination(raw, &policy).await;
        let got = got.unwrap_or_else(|e| panic!("{raw}: {e}"));
        let want: Vec<IpAddr> = want;
        // The mapped literal comes back as parsed; compare canonical forms.
        let canon: Vec<IpAddr> = got.iter().map(|i| i.to_canonical()).collect();
        assert_eq!(canon, want, "{raw}");
    }
    let base = Url::parse("https://api.example.com/v1/").unwrap();
    for (p, want) in [
        ("users/42", "https://api.example.com/v1/users/42"),
        (
            "/users/42?expand=true&next=a/b.c",
            "https://api.example.com/v1/users/42?expand=true&next=a/b.c",
        ),
        (
            "files/report.v2.json",
            "https://api.example.com/v1/files/report.v2.json",
        ),
        ("a%20b/%C3%A9", "https://api.example.com/v1/a%20b/%C3%A9"),
    ] {
        let (url, target) = join_destination(&base, p, &policy).unwrap();
        assert_eq!(url.as_str(), want);
        assert_eq!(target, Target::Name("api.example.com".into()));
    }
}

#[tokio::test]
async fn policy_exceptions_and_own_listeners() {
    let policy = Policy {
        allow_cidrs: vec!["10.0.0.0/24".parse().unwrap()],
        deny_extra: vec!["93.184.216.0/24".parse().unwrap()],
        own_addrs: vec!["2606:4700::1111/128".parse().unwrap()],
    };
    assert!(policy.is_dangerous());
    // The dangerous exception re-admits exactly its CIDR.
    assert_eq!(
        destination("http://internal.test/", &policy).await.unwrap(),
        vec![ip("10.0.0.5")]
    );
    assert!(destination("http://10.0.1.1/", &policy).await.is_err());
    assert!(destination("http://[::ffff:10.0.0.7]/", &policy)
        .await
        .is_ok());
    // Extra denials and own listeners win over everything.
    assert!(matches!(
        destination("http://public.test/", &policy).await,
        Err(Refusal::ResolvedAddress {
            reason: Reason::DeniedByConfig,
            ..
        })
    ));
    assert!(matches!(
        destination("http://[2606:4700::1111]/", &policy).await,
        Err(Refusal::Address {
            reason: Reason::OwnListener,
            ..
        })
    ));
    assert!(destination("http://api.example.com/", &policy)
        .await
        .is_err());
}
