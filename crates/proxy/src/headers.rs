//! Header hygiene at the trust boundary: hop-by-hop headers never cross the gateway, and
//! forwarding headers are believed only from trusted proxies.

use http::{header, HeaderMap, HeaderName, HeaderValue};
use ipnet::IpNet;
use portcullis_core::{text::normalise_ip as normalise, Connection};
use std::net::IpAddr;

/// Hop-by-hop headers (RFC 9110 section 7.6.1) plus the non-standard ones proxies also drop.
const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
];

/// Removes hop-by-hop headers, including every header the `Connection` header names.
/// `Upgrade` is removed too: the gateway does not tunnel protocol upgrades.
pub(crate) fn strip_hop_by_hop(h: &mut HeaderMap) {
    // One pass over the names finds whether there is anything to remove at all; most
    // requests and responses carry no hop-by-hop header, and a lookup per listed name (ten
    // hashes) would be the larger cost.
    if !h
        .keys()
        .any(|n| HOP_BY_HOP.contains(n) || *n == header::UPGRADE)
    {
        return;
    }
    // RFC 9112 §6.3: with Transfer-Encoding the message's length is its chunking, and an
    // intermediary must drop a Content-Length beside it. Kept, it would be sent on with the
    // body re-framed: a body longer than it is cut short, a shorter one breaks the connection.
    if h.contains_key(header::TRANSFER_ENCODING) {
        h.remove(header::CONTENT_LENGTH);
    }
    let named: Vec<HeaderName> = h
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    // `Connection: host` would take away the request's target: never named away.
    for n in named.into_iter().filter(|n| *n != header::HOST) {
        h.remove(n);
    }
    for n in HOP_BY_HOP.iter() {
        h.remove(n);
    }
    h.remove(header::UPGRADE);
}

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
/// How far a request header that an upstream may act on can be believed.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Believed {
    /// An ordinary header.
    Yes,
    /// About the client, its connection or the request target: only a trusted proxy may set
    /// it. Client-address headers of nginx, CDNs and load balancers; the scheme, port,
    /// prefix and host overrides frameworks read behind a proxy; client-certificate headers
    /// (the gateway itself checks certificates); and the URL overrides IIS and older
    /// Symfony honour (with them a request to a catch-all route could name a protected
    /// path).
    FromTrustedProxy,
    /// Never: a method override makes a POST that the routes authorized as a POST act as a
    /// DELETE at an upstream that honours it. The gateway authorizes the method it sees, so
    /// no one may change it behind its back.
    Never,
}

/// Classifies `name`. The names of every request pass through here, so most are let go by
/// their length and first letter before the text is compared.
fn believed(name: &str) -> Believed {
    let b = name.as_bytes();
    if !(6..=23).contains(&b.len()) || !matches!(b[0], b'x' | b't' | b'c' | b'f' | b's') {
        return Believed::Yes;
    }
    match name {
        "x-http-method-override" | "x-http-method" | "x-method-override" => Believed::Never,
        "x-real-ip"
        | "true-client-ip"
        | "x-client-ip"
        | "cf-connecting-ip"
        | "x-cluster-client-ip"
        | "x-original-url"
        | "x-rewrite-url"
        | "x-forwarded-port"
        | "x-forwarded-prefix"
        | "x-forwarded-server"
        | "x-forwarded-ssl"
        | "x-forwarded-scheme"
        | "x-forwarded-client-cert"
        | "x-url-scheme"
        | "x-scheme"
        | "front-end-https"
        | "x-host"
        | "x-original-host"
        | "x-ssl-client-cert"
        | "x-ssl-client-dn"
        | "x-ssl-client-verify"
        | "x-client-cert"
        | "ssl-client-cert" => Believed::FromTrustedProxy,
        _ => Believed::Yes,
    }
}

fn trusted(ip: IpAddr, proxies: &[IpNet]) -> bool {
    proxies.iter().any(|n| n.contains(&ip))
}

/// The client's address. It is the TCP peer unless the peer is a trusted proxy; then it is
/// the right-most `X-Forwarded-For` entry that is not itself a trusted proxy, so a client
/// cannot choose its own address by prepending entries. IPv4-mapped IPv6 is normalised.
pub fn client_ip(peer: IpAddr, headers: &HeaderMap, proxies: &[IpNet]) -> IpAddr {
    let peer = normalise(peer);
    if !trusted(peer, proxies) {
        return peer;
    }
    let mut client = peer;
    let entries: Vec<&str> = headers
        .get_all(X_FORWARDED_FOR)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .collect();
    for entry in entries.iter().rev() {
        // An entry that is no address (garbage, or an obfuscated `Forwarded`-style name)
        // ends the walk: nothing left of it can be believed.
        let Some(ip) = forwarded_ip(entry).map(normalise) else {
            break;
        };
        client = ip;
        if !trusted(ip, proxies) {
            break;
        }
    }
    client
}

/// Sets `X-Forwarded-For`, `X-Forwarded-Proto`, `X-Forwarded-Host` and `Forwarded` for the
/// upstream. From an untrusted peer, whatever forwarding headers it sent are discarded first
/// (`X-Real-IP` among them).
pub(crate) fn set_forwarding(
    h: &mut HeaderMap,
    conn: &Connection,
    host: Option<&HeaderValue>,
    proxies: &[IpNet],
) {
    let proto = if conn.tls { "https" } else { "http" };

    // Most requests carry none of these: one pass over the names (a standard name and a
    // custom one compare without hashing) instead of hashed lookups that find nothing.
    let present = h.keys().any(|k| {
        k == header::FORWARDED
            || k == X_FORWARDED_FOR
            || k == X_FORWARDED_PROTO
            || k == X_FORWARDED_HOST
            || believed(k.as_str()) != Believed::Yes
    });

    let (xff, forwarded) = if present {
        forwarding_after(h, conn, host, proxies)
    } else {
        // Nothing earlier to extend: the values depend on the connection and `Host` alone,
        // so the connection's first request works them out for the others.
        let forwarded = match conn.forwarded.get() {
            Some((h, v)) if h.as_ref() == host => Some(v.clone()),
            _ => None,
        };
        let forwarded = forwarded.or_else(|| {
            let v = forwarded_value(&[], conn, host)?;
            let _ = conn.forwarded.set((host.cloned(), v.clone()));
            Some(v)
        });
        (Some(conn.peer_text.clone()), forwarded)
    };
    if let Some(v) = xff {
        h.insert(X_FORWARDED_FOR, v);
    }
    if let Some(v) = forwarded {
        h.insert(header::FORWARDED, v);
    }
    if !present || !h.contains_key(X_FORWARDED_PROTO) {
        h.insert(X_FORWARDED_PROTO, HeaderValue::from_static(proto));
    }
    if let Some(host) = host {
        if !present || !h.contains_key(X_FORWARDED_HOST) {
            h.insert(X_FORWARDED_HOST, host.clone());
        }
    }
}

/// `X-Forwarded-For` and `Forwarded` when the request carries forwarding headers: extended
/// when a trusted proxy passed them on, otherwise discarded (with the proto and host ones).
fn forwarding_after(
    h: &mut HeaderMap,
    conn: &Connection,
    host: Option<&HeaderValue>,
    proxies: &[IpNet],
) -> (Option<HeaderValue>, Option<HeaderValue>) {
    let mut xff: Vec<u8> = Vec::with_capacity(64);
    // What earlier proxies recorded is kept only when a trusted proxy passed it on.
    let mut fwd_before: Vec<u8> = Vec::new();
    let from_proxy = trusted(conn.peer_ip, proxies);
    if from_proxy {
        join_values(h, &X_FORWARDED_FOR, &mut xff);
        join_values(h, &header::FORWARDED, &mut fwd_before);
    } else {
        h.remove(X_FORWARDED_PROTO);
        h.remove(X_FORWARDED_HOST);
    }
    let dropped: Vec<HeaderName> = h
        .keys()
        .filter(|k| match believed(k.as_str()) {
            Believed::Yes => false,
            Believed::FromTrustedProxy => !from_proxy,
            Believed::Never => true,
        })
        .cloned()
        .collect();
    for n in dropped {
        h.remove(n);
    }
    h.remove(X_FORWARDED_FOR);
    h.remove(header::FORWARDED);
    if !xff.is_empty() {
        xff.extend_from_slice(b", ");
    }
    xff.extend_from_slice(conn.peer_text.as_bytes());
    (
        HeaderValue::from_maybe_shared(bytes::Bytes::from(xff)).ok(),
        forwarded_value(&fwd_before, conn, host),
    )
}

/// `Forwarded` (RFC 7239): the earlier elements, if any, then this hop's.
/// The address of one `X-Forwarded-For` entry: `ip`, or with the port some load balancers
/// add, `1.2.3.4:5678`, `[2001:db8::1]:5678` (or `[2001:db8::1]`). Such entries used to end
/// the walk, so the client was taken to be the trusted proxy itself.
fn forwarded_ip(entry: &str) -> Option<IpAddr> {
    let e = entry.trim();
    if let Ok(ip) = e.parse::<IpAddr>() {
        return Some(ip);
    }
    if let Ok(sa) = e.parse::<std::net::SocketAddr>() {
        return Some(sa.ip());
    }
    e.strip_prefix('[')?
        .strip_suffix(']')?
        .parse::<std::net::Ipv6Addr>()
        .ok()
        .map(IpAddr::V6)
}

fn forwarded_value(
    before: &[u8],
    conn: &Connection,
    host: Option<&HeaderValue>,
) -> Option<HeaderValue> {
    let mut buf: Vec<u8> = Vec::with_capacity(96 + before.len() + host.map_or(0, HeaderValue::len));
    if !before.is_empty() {
        buf.extend_from_slice(before);
        buf.extend_from_slice(b", ");
    }
    buf.extend_from_slice(b"for=");
    match conn.peer_ip {
        IpAddr::V4(_) => buf.extend_from_slice(conn.peer_text.as_bytes()),
        IpAddr::V6(_) => {
            buf.extend_from_slice(b"\"[");
            buf.extend_from_slice(conn.peer_text.as_bytes());
            buf.extend_from_slice(b"]\"");
        }
    }
    buf.extend_from_slice(b";proto=");
    buf.extend_from_slice(if conn.tls { b"https" } else { b"http" });
    if let Some(host) = host.and_then(|v| v.to_str().ok()) {
        buf.extend_from_slice(b";host=\"");
        buf.extend(host.bytes().filter(|b| !matches!(b, b'"' | b'\\')));
        buf.push(b'"');
    }
    HeaderValue::from_maybe_shared(bytes::Bytes::from(buf)).ok()
}

/// Appends every value of `name`, joined by ", " (the values that are text).
fn join_values(h: &HeaderMap, name: &HeaderName, out: &mut Vec<u8>) {
    for v in h.get_all(name).iter().filter_map(|v| v.to_str().ok()) {
        if !out.is_empty() {
            out.extend_from_slice(b", ");
        }
        out.extend_from_slice(v.as_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;

    fn nets(s: &[&str]) -> Vec<IpNet> {
        s.iter().filter_map(|n| n.parse().ok()).collect()
    }

    fn xff(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            "x-forwarded-for",
            HeaderValue::from_str(v).unwrap_or(HeaderValue::from_static("")),
        );
        h
    }

    #[test]
    fn untrusted_peers_cannot_spoof_their_address() {
        let peer: IpAddr = "203.0.113.9".parse().unwrap_or(IpAddr::from([0, 0, 0, 0]));
        assert_eq!(
            client_ip(peer, &xff("1.2.3.4"), &nets(&["10.0.0.0/8"])),
            peer
        );
    }

    #[test]
    fn trusted_chain_is_walked_from_the_right() {
        let peer: IpAddr = "10.0.0.2".parse().unwrap_or(IpAddr::from([0, 0, 0, 0]));
        let p = nets(&["10.0.0.0/8"]);
        // The client prepended a fake entry; the proxy appended the real one.
        let got = client_ip(peer, &xff("6.6.6.6, 198.51.100.7, 10.0.0.1"), &p);
        assert_eq!(got, "198.51.100.7".parse::<IpAddr>().unwrap_or(peer));
    }

    #[test]
    fn entries_with_ports_name_their_address() {
        let peer: IpAddr = "10.0.0.2".parse().unwrap_or(IpAddr::from([0, 0, 0, 0]));
        let p = nets(&["10.0.0.0/8"]);
        for (v, want) in [
            ("198.51.100.7:4711", "198.51.100.7"),
            ("[2001:db8::7]:80", "2001:db8::7"),
            ("[2001:db8::7]", "2001:db8::7"),
            ("[::ffff:198.51.100.7]:80", "198.51.100.7"),
            ("198.51.100.7, 10.0.0.1:443", "198.51.100.7"),
        ] {
            let got = client_ip(peer, &xff(v), &p);
            assert_eq!(got, want.parse::<IpAddr>().unwrap_or(peer), "{v}");
        }
        // Not an address: the walk stops at the trusted proxy.
        for v in [
            "garbage",
            "0127.0.0.066",
            "2130706498",
            "1.2.3.4:99999",
            "[1.2.3.4]",
        ] {
            assert_eq!(client_ip(peer, &xff(v), &p), peer, "{v}");
        }
    }

    #[test]
    fn ipv4_mapped_peers_are_normalised() {
        let mapped: IpAddr = "::ffff:10.0.0.2"
            .parse()
            .unwrap_or(IpAddr::from([0, 0, 0, 0]));
        let got = client_ip(mapped, &xff("198.51.100.7"), &nets(&["10.0.0.0/8"]));
        assert_eq!(got, "198.51.100.7".parse::<IpAddr>().unwrap_or(mapped));
    }

    #[test]
    fn hop_by_hop_and_connection_named_headers_go() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-secret-hop"),
        );
        h.insert("x-secret-hop", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(header::TE, HeaderValue::from_static("trailers"));
        h.insert(
            header::PROXY_AUTHORIZATION,
            HeaderValue::from_static("Basic x"),
        );
        h.insert("x-kept", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1, "{h:?}");
        assert!(h.contains_key("x-kept"));
        // Content-Length goes with Transfer-Encoding, and only then.
        let mut h = HeaderMap::new();
        h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("0"));
        h.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        strip_hop_by_hop(&mut h);
        assert!(h.is_empty(), "{h:?}");
        let mut h = HeaderMap::new();
        h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("5"));
        h.insert(header::CONNECTION, HeaderValue::from_static("close"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h[header::CONTENT_LENGTH], "5");
    }

    #[test]
    fn forwarding_headers_from_untrusted_peers_are_replaced() {
        let mut h = xff("6.6.6.6");
        h.insert(header::FORWARDED, HeaderValue::from_static("for=6.6.6.6"));
        h.insert("x-forwarded-proto", HeaderValue::from_static("https"));
        let peer: SocketAddr = "[::1]:5000"
            .parse()
            .unwrap_or(SocketAddr::from(([0, 0, 0, 0], 0)));
        set_forwarding(
            &mut h,
            &Connection::new(peer, false, None),
            Some(&HeaderValue::from_static("gw.example")),
            &[],
        );
        assert_eq!(h["x-forwarded-for"], "::1");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(
            h[header::FORWARDED],
            "for=\"[::1]\";proto=http;host=\"gw.example\""
        );
        // X-Real-IP alone is enough to take the slow path, and it is dropped.
        let mut h = HeaderMap::new();
        h.insert("x-real-ip", HeaderValue::from_static("10.1.1.1"));
        h.insert("x-original-url", HeaderValue::from_static("/admin/x"));
        h.insert("true-client-ip", HeaderValue::from_static("10.1.1.1"));
        set_forwarding(&mut h, &Connection::new(peer, false, None), None, &[]);
        assert!(!h.contains_key("x-real-ip"), "{h:?}");
        assert!(!h.contains_key("x-original-url") && !h.contains_key("true-client-ip"));
        assert_eq!(h["x-forwarded-for"], "::1");
        // Scheme, port, prefix, host and client-certificate overrides go the same way, and a
        // method override goes whoever sent it. Ordinary headers stay.
        let overrides = [
            "x-forwarded-port",
            "x-forwarded-prefix",
            "x-forwarded-ssl",
            "x-forwarded-scheme",
            "x-forwarded-client-cert",
            "x-url-scheme",
            "front-end-https",
            "x-host",
            "x-original-host",
            "x-ssl-client-dn",
            "ssl-client-cert",
        ];
        let overrides_method = [
            "x-http-method-override",
            "x-http-method",
            "x-method-override",
        ];
        let proxy: SocketAddr = "10.0.0.2:5000"
            .parse()
            .unwrap_or(SocketAddr::from(([0, 0, 0, 0], 0)));
        for (from, trusted) in [(peer, false), (proxy, true)] {
            let mut h = HeaderMap::new();
            for n in overrides.iter().chain(&overrides_method) {
                h.insert(*n, HeaderValue::from_static("on"));
            }
            h.insert("x-ordinary", HeaderValue::from_static("kept"));
            set_forwarding(
                &mut h,
                &Connection::new(from, false, None),
                None,
                &nets(&["10.0.0.0/8"]),
            );
            for n in overrides {
                assert_eq!(h.contains_key(n), trusted, "{n} from {from}");
            }
            for n in overrides_method {
                assert!(!h.contains_key(n), "{n} from {from}");
            }
            assert_eq!(h["x-ordinary"], "kept");
        }
    }
    #[test]
    fn a_connections_values_are_reused_only_for_the_same_host() {
        let peer: SocketAddr = "203.0.113.9:5000"
            .parse()
            .unwrap_or(SocketAddr::from(([0, 0, 0, 0], 0)));
        let conn = Connection::new(peer, false, None);
        let host_a = HeaderValue::from_static("a.example");
        let host_b = HeaderValue::from_static("b.example");
        for (host, want) in [
            (
                Some(&host_a),
                "for=203.0.113.9;proto=http;host=\"a.example\"",
            ),
            (
                Some(&host_a),
                "for=203.0.113.9;proto=http;host=\"a.example\"",
            ),
            (
                Some(&host_b),
                "for=203.0.113.9;proto=http;host=\"b.example\"",
            ),
            (None, "for=203.0.113.9;proto=http"),
            (
                Some(&host_a),
                "for=203.0.113.9;proto=http;host=\"a.example\"",
            ),
        ] {
            let mut h = HeaderMap::new();
            set_forwarding(&mut h, &conn, host, &[]);
            assert_eq!(h[header::FORWARDED], want);
            assert_eq!(h["x-forwarded-for"], "203.0.113.9");
            assert_eq!(h.get("x-forwarded-host"), host);
        }
        // A spoofed header on a later request of the same connection is still replaced.
        let mut h = xff("6.6.6.6");
        set_forwarding(&mut h, &conn, Some(&host_a), &[]);
        assert_eq!(h["x-forwarded-for"], "203.0.113.9");
        assert_eq!(h.get_all("x-forwarded-for").iter().count(), 1);
    }

    #[test]
    fn a_trusted_proxys_records_are_extended_not_replaced() {
        let mut h = xff("198.51.100.7");
        h.append("x-forwarded-for", HeaderValue::from_static("10.0.0.9"));
        h.insert(
            header::FORWARDED,
            HeaderValue::from_static("for=198.51.100.7"),
        );
        h.insert("x-forwarded-proto", HeaderValue::from_static("https"));
        h.insert("x-real-ip", HeaderValue::from_static("198.51.100.7"));
        h.insert(header::CONNECTION, HeaderValue::from_static("close"));
        let peer: SocketAddr = "10.0.0.2:5000"
            .parse()
            .unwrap_or(SocketAddr::from(([0, 0, 0, 0], 0)));
        set_forwarding(
            &mut h,
            &Connection::new(peer, true, None),
            Some(&HeaderValue::from_static("gw.\"exa\\mple")),
            &nets(&["10.0.0.0/8"]),
        );
        assert_eq!(h["x-forwarded-for"], "198.51.100.7, 10.0.0.9, 10.0.0.2");
        assert_eq!(
            h[header::FORWARDED],
            "for=198.51.100.7, for=10.0.0.2;proto=https;host=\"gw.example\""
        );
        // The trusted proxy's own proto is kept.
        assert_eq!(h["x-forwarded-proto"], "https");
        assert_eq!(h["x-forwarded-host"], "gw.\"exa\\mple");
        assert_eq!(h["x-real-ip"], "198.51.100.7", "a trusted proxy's is kept");
        strip_hop_by_hop(&mut h);
        assert!(!h.contains_key(header::CONNECTION));
    }
}

#[cfg(test)]
mod connection_tests {
    use super::*;

    #[test]
    fn connection_may_name_headers_away_but_never_host() {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_static("gw.example"));
        h.insert("x-gone", HeaderValue::from_static("1"));
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("host, x-gone, close"),
        );
        strip_hop_by_hop(&mut h);
        assert_eq!(h[header::HOST], "gw.example");
        assert!(!h.contains_key("x-gone") && !h.contains_key(header::CONNECTION));
    }
}

#[cfg(test)]
mod props {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// An untrusted peer's address is never replaced, whatever X-Forwarded-For says; from
        /// a trusted peer the answer is the peer or one of the listed addresses.
        #[test]
        fn client_ip_comes_from_the_peer_or_the_list(xff in "[0-9a-f.:, ]{0,60}", trusted_peer in any::<bool>()) {
            let mut h = HeaderMap::new();
            if let Ok(v) = HeaderValue::from_str(&xff) {
                h.insert("x-forwarded-for", v);
            }
            let peer: IpAddr = if trusted_peer { IpAddr::from([10, 0, 0, 1]) } else { IpAddr::from([203, 0, 113, 1]) };
            let nets: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap_or_else(|_| IpNet::from(peer))];
            let got = client_ip(peer, &h, &nets);
            if !trusted_peer {
                prop_assert_eq!(got, peer);
            } else {
                let listed = xff.split(',').filter_map(|e| e.trim().parse::<IpAddr>().ok()).map(normalise).any(|ip| ip == got);
                prop_assert!(got == peer || listed);
            }
        }
    }
}
