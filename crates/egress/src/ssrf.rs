//! Address classification: which IP addresses an egress call may connect to.
//!
//! [`classify`] is the built-in rule set, a pure function of the address. [`Policy`] layers the
//! configuration on top: extra denied networks, the gateway's own listener addresses, and the
//! `dangerous_` allow list that re-admits otherwise refused networks for one integration.
//!
//! The rule for IPv6 is an allow list: only global unicast (`2000::/3`) minus its special-purpose
//! blocks is allowed, so blocks assigned in the future outside `2000::/3` stay refused.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;

/// Why an address is refused. The names follow the IANA special-purpose registries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    /// `127.0.0.0/8`, `::1`.
    Loopback,
    /// RFC 1918 (`10/8`, `172.16/12`, `192.168/16`) and unique local `fc00::/7`
    /// (which includes AWS's `fd00:ec2::254` metadata address).
    Private,
    /// `169.254.0.0/16` (including the cloud metadata address `169.254.169.254`), `fe80::/10`.
    LinkLocal,
    /// Carrier-grade NAT shared space `100.64.0.0/10`.
    SharedCgnat,
    /// `224.0.0.0/4`, `ff00::/8`.
    Multicast,
    /// `255.255.255.255`.
    Broadcast,
    /// `0.0.0.0`, `::`.
    Unspecified,
    /// `0.0.0.0/8` other than `0.0.0.0` ("this network").
    ThisNetwork,
    /// `192.0.2.0/24`, `198.51.100.0/24`, `203.0.113.0/24`, `2001:db8::/32`, `3fff::/20`.
    Documentation,
    /// `198.18.0.0/15`, `2001:2::/48`.
    Benchmarking,
    /// `192.0.0.0/24` (IETF protocol assignments) and the rest of `2001::/23`.
    IetfProtocol,
    /// `240.0.0.0/4`, the deprecated 6to4 relay anycast `192.88.99.0/24`, site-local `fec0::/10`,
    /// and every IPv6 address outside global unicast `2000::/3` not named otherwise.
    Reserved,
    /// IPv4-compatible IPv6 `::/96` (deprecated; other than `::` and `::1`).
    Ipv4Compatible,
    /// NAT64 `64:ff9b::/96` and local-use NAT64 `64:ff9b:1::/48`: the translator could reach
    /// any IPv4 address, including internal ones.
    Nat64,
    /// 6to4 `2002::/16`: embeds an IPv4 address reached through a relay.
    SixToFour,
    /// Teredo `2001::/32`: embeds an IPv4 address reached through a relay.
    Teredo,
    /// ORCHID `2001:10::/28` and ORCHIDv2 `2001:20::/28`: not routable.
    Orchid,
    /// SRv6 SIDs `5f00::/16`: not for general connections.
    Srv6,
    /// One of the gateway's own listener addresses ([`Policy::own_addrs`]).
    OwnListener,
    /// In the configured [`Policy::deny_extra`].
    DeniedByConfig,
}

impl Reason {
    /// A short stable name for logs and metrics labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Loopback => "loopback",
            Reason::Private => "private",
            Reason::LinkLocal => "link_local",
            Reason::SharedCgnat => "shared_cgnat",
            Reason::Multicast => "multicast",
            Reason::Broadcast => "broadcast",
            Reason::Unspecified => "unspecified",
            Reason::ThisNetwork => "this_network",
            Reason::Documentation => "documentation",
            Reason::Benchmarking => "benchmarking",
            Reason::IetfProtocol => "ietf_protocol",
            Reason::Reserved => "reserved",
            Reason::Ipv4Compatible => "ipv4_compatible",
            Reason::Nat64 => "nat64",
            Reason::SixToFour => "6to4",
            Reason::Teredo => "teredo",
            Reason::Orchid => "orchid",
            Reason::Srv6 => "srv6",
            Reason::OwnListener => "own_listener",
            Reason::DeniedByConfig => "denied_by_config",
        }
    }
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The outcome of classifying one address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// A public address an egress call may connect to.
    Allowed,
    /// Refused, with the class of the address.
    Refused(Reason),
}

impl Verdict {
    /// Whether this is [`Verdict::Allowed`].
    pub fn is_allowed(self) -> bool {
        matches!(self, Verdict::Allowed)
    }
}

/// Classifies an address with the built-in rules only (no configuration).
///
/// IPv4-mapped IPv6 addresses (`::ffff:a.b.c.d`) are classified by their embedded IPv4 address:
/// connecting to one is connecting to that IPv4 address over a dual-stack socket, so it is
/// refused exactly when the embedded address is refused, with the embedded address's reason.
/// Every other IPv6 form that embeds an IPv4 address (compatible, NAT64, 6to4, Teredo) goes
/// through a translator or relay whose reach we cannot judge, and is refused outright.
pub fn classify(ip: IpAddr) -> Verdict {
    match ip {
        IpAddr::V4(v4) => classify_v4(v4),
        IpAddr::V6(v6) => classify_v6(v6),
    }
}

fn classify_v4(ip: Ipv4Addr) -> Verdict {
    let o = ip.octets();
    let reason = match o {
        [0, 0, 0, 0] => Reason::Unspecified,
        [0, ..] => Reason::ThisNetwork,
        [10, ..] => Reason::Private,
        [100, b, ..] if (64..128).contains(&b) => Reason::SharedCgnat,
        [127, ..] => Reason::Loopback,
        [169, 254, ..] => Reason::LinkLocal,
        [172, b, ..] if (16..32).contains(&b) => Reason::Private,
        [192, 0, 0, _] => Reason::IetfProtocol,
        [192, 0, 2, _] => Reason::Documentation,
        [192, 88, 99, _] => Reason::Reserved,
        [192, 168, ..] => Reason::Private,
        [198, 18 | 19, ..] => Reason::Benchmarking,
        [198, 51, 100, _] => Reason::Documentation,
        [203, 0, 113, _] => Reason::Documentation,
        [255, 255, 255, 255] => Reason::Broadcast,
        [a, ..] if (224..240).contains(&a) => Reason::Multicast,
        [a, ..] if a >= 240 => Reason::Reserved,
        _ => return Verdict::Allowed,
    };
    Verdict::Refused(reason)
}

fn classify_v6(ip: Ipv6Addr) -> Verdict {
    let s = ip.segments();
    if let Some(v4) = ip.to_ipv4_mapped() {
        return classify_v4(v4);
    }
    let reason = if ip.is_unspecified() {
        Reason::Unspecified
    } else if ip.is_loopback() {
        Reason::Loopback
    } else if s[..6] == [0; 6] {
        Reason::Ipv4Compatible
    } else if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] || s[..3] == [0x64, 0xff9b, 1] {
        Reason::Nat64
    } else if s[0] & 0xfe00 == 0xfc00 {
        Reason::Private
    } else if s[0] & 0xffc0 == 0xfe80 {
        Reason::LinkLocal
    } else if s[0] & 0xffc0 == 0xfec0 {
        Reason::Reserved
    } else if s[0] & 0xff00 == 0xff00 {
        Reason::Multicast
    } else if s[0] == 0x2002 {
        Reason::SixToFour
    } else if s[0] == 0x2001 && s[1] == 0 {
        Reason::Teredo
    } else if s[0] == 0x2001 && (s[1] & 0xfff0 == 0x0010 || s[1] & 0xfff0 == 0x0020) {
        Reason::Orchid
    } else if s[0] == 0x2001 && s[1] == 0x0002 && s[2] == 0 {
        Reason::Benchmarking
    } else if (s[0] == 0x2001 && s[1] == 0x0db8) || (s[0] == 0x3fff && s[1] & 0xf000 == 0) {
        Reason::Documentation
    } else if s[0] == 0x2001 && s[1] < 0x0200 {
        // The rest of 2001::/23, IETF protocol assignments.
        Reason::IetfProtocol
    } else if s[0] == 0x5f00 {
        Reason::Srv6
    } else if s[0] & 0xe000 != 0x2000 {
        // Not global unicast 2000::/3.
        Reason::Reserved
    } else {
        return Verdict::Allowed;
    };
    Verdict::Refused(reason)
}

/// The configured address policy of one integration (or of the whole egress gateway).
///
/// Precedence: [`deny_extra`](Self::deny_extra) and [`own_addrs`](Self::own_addrs) always
/// refuse; then an address the built-in rules refuse is allowed only when it is inside one of
/// [`allow_cidrs`](Self::allow_cidrs). The allow list relaxes the built-in classes and nothing
/// else, so an integration cannot be pointed at the gateway's own listeners.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Policy {
    /// The `dangerous_allow_cidrs` exception: networks re-admitted although the built-in rules
    /// refuse them (a test upstream on loopback, a partner reached over a private link).
    /// `portcullis check` flags every use.
    pub allow_cidrs: Vec<IpNet>,
    /// Networks refused in addition to the built-in rules.
    pub deny_extra: Vec<IpNet>,
    /// The gateway's own listener addresses (data plane, admin), refused so that an egress call
    /// cannot loop back into the gateway. A listener on `0.0.0.0` or `::` should be listed
    /// with the host's concrete addresses.
    pub own_addrs: Vec<IpNet>,
}

impl Policy {
    /// Classifies an address under this policy.
    ///
    /// IPv4-mapped addresses are checked as their embedded IPv4 address, so a CIDR written
    /// as IPv4 in any of the lists also covers the mapped form.
    pub fn check(&self, ip: IpAddr) -> Verdict {
        let ip = canonical(ip);
        let contains = |nets: &[IpNet]| nets.iter().any(|n| n.contains(&ip));
        if contains(&self.deny_extra) {
            return Verdict::Refused(Reason::DeniedByConfig);
        }
        if contains(&self.own_addrs) {
            return Verdict::Refused(Reason::OwnListener);
        }
        match classify(ip) {
            Verdict::Allowed => Verdict::Allowed,
            Verdict::Refused(_) if contains(&self.allow_cidrs) => Verdict::Allowed,
            refused => refused,
        }
    }

    /// Whether the policy uses the `dangerous_` exception (for `check`'s warning).
    pub fn is_dangerous(&self) -> bool {
        !self.allow_cidrs.is_empty()
    }
}

/// Maps `::ffff:a.b.c.d` to `a.b.c.d`, leaves everything else alone.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => ip,
        },
        v4 => v4,
    }
}

/// Parses a host the way `inet_aton` and the WHATWG URL standard do: one to four parts
/// separated by dots, each decimal, octal (leading `0`) or hex (`0x`), the last part filling
/// the remaining bytes (`127.1`, `0x7f.1`, `2130706433`, `0177.0.0.1`). One trailing dot is
/// accepted. Returns `None` when the host is not such a number.
///
/// The URL guard uses it as a second opinion on hosts the URL parser left as names, so that a
/// resolver which interprets numeric names (glibc does) cannot reach an address we did not
/// classify.
pub fn parse_loose_ipv4(host: &str) -> Option<Ipv4Addr> {
    let host = host.strip_suffix('.').unwrap_or(host);
    if host.is_empty() {
        return None;
    }
    let parts: Vec<&str> = host.split('.').collect();
    if parts.len() > 4 {
        return None;
    }
    let mut nums = Vec::with_capacity(parts.len());
    for p in &parts {
        nums.push(parse_part(p)?);
    }
    let (last, init) = nums.split_last()?;
    let mut value: u64 = 0;
    for (i, n) in init.iter().enumerate() {
        if *n > 255 {
            return None;
        }
        value |= n << (8 * (3 - i));
    }
    let room = 8 * (4 - init.len()) as u32;
    if room < 64 && *last >= (1u64 << room) {
        return None;
    }
    value |= last;
    u32::try_from(value).ok().map(Ipv4Addr::from)
}

fn parse_part(p: &str) -> Option<u64> {
    if p.is_empty() || p.len() > 32 {
        return None;
    }
    let (digits, radix) = if let Some(h) = p.strip_prefix("0x").or_else(|| p.strip_prefix("0X")) {
        (h, 16)
    } else if p.len() > 1 && p.starts_with('0') {
        (&p[1..], 8)
    } else {
        (p, 10)
    };
    if digits.is_empty() {
        // "0x" alone is zero in WHATWG.
        return (radix == 16).then_some(0);
    }
    if !digits.chars().all(|c| c.is_digit(radix)) {
        return None;
    }
    u64::from_str_radix(digits, radix)
        .ok()
        .filter(|v| *v <= u32::MAX as u64)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn r(s: &str) -> Verdict {
        classify(s.parse().unwrap())
    }

    #[test]
    fn v4_classes() {
        assert_eq!(r("127.0.0.1"), Verdict::Refused(Reason::Loopback));
        assert_eq!(r("10.1.2.3"), Verdict::Refused(Reason::Private));
        assert_eq!(r("172.31.255.255"), Verdict::Refused(Reason::Private));
        assert_eq!(r("172.32.0.1"), Verdict::Allowed);
        assert_eq!(r("169.254.169.254"), Verdict::Refused(Reason::LinkLocal));
        assert_eq!(r("100.64.0.1"), Verdict::Refused(Reason::SharedCgnat));
        assert_eq!(r("100.128.0.1"), Verdict::Allowed);
        assert_eq!(r("255.255.255.255"), Verdict::Refused(Reason::Broadcast));
        assert_eq!(r("240.0.0.1"), Verdict::Refused(Reason::Reserved));
        assert_eq!(r("198.19.1.1"), Verdict::Refused(Reason::Benchmarking));
        assert_eq!(r("192.0.0.170"), Verdict::Refused(Reason::IetfProtocol));
        assert_eq!(r("93.184.216.34"), Verdict::Allowed);
        assert_eq!(r("8.8.8.8"), Verdict::Allowed);
    }

    #[test]
    fn v6_classes() {
        assert_eq!(r("fd00:ec2::254"), Verdict::Refused(Reason::Private));
        assert_eq!(r("::ffff:127.0.0.1"), Verdict::Refused(Reason::Loopback));
        assert_eq!(r("::ffff:93.184.216.34"), Verdict::Allowed);
        assert_eq!(r("::127.0.0.1"), Verdict::Refused(Reason::Ipv4Compatible));
        assert_eq!(r("64:ff9b::7f00:1"), Verdict::Refused(Reason::Nat64));
        assert_eq!(r("64:ff9b:1::1"), Verdict::Refused(Reason::Nat64));
        assert_eq!(r("2002:7f00:1::"), Verdict::Refused(Reason::SixToFour));
        assert_eq!(r("2001::1"), Verdict::Refused(Reason::Teredo));
        assert_eq!(r("2001:10::1"), Verdict::Refused(Reason::Orchid));
        assert_eq!(r("2001:20::1"), Verdict::Refused(Reason::Orchid));
        assert_eq!(r("2001:db8::1"), Verdict::Refused(Reason::Documentation));
        assert_eq!(r("3fff::1"), Verdict::Refused(Reason::Documentation));
        assert_eq!(r("100::1"), Verdict::Refused(Reason::Reserved));
        assert_eq!(r("2606:4700::1111"), Verdict::Allowed);
        assert_eq!(r("2001:4860:4860::8888"), Verdict::Allowed);
    }

    #[test]
    fn loose_ipv4() {
        let p = |s| parse_loose_ipv4(s);
        let lo = Some(Ipv4Addr::new(127, 0, 0, 1));
        assert_eq!(p("2130706433"), lo);
        assert_eq!(p("0177.0.0.1"), lo);
        assert_eq!(p("0x7f.1"), lo);
        assert_eq!(p("127.1"), lo);
        assert_eq!(p("0x7f000001"), lo);
        assert_eq!(p("127.0.0.1."), lo);
        assert_eq!(p("0x7f.0.0.0x1"), lo);
        assert_eq!(p("example.com"), None);
        assert_eq!(p("256.0.0.1"), None);
        assert_eq!(p("1.2.3.4.5"), None);
        assert_eq!(p("4294967296"), None);
        assert_eq!(p("1.2.65536"), None);
    }

    #[test]
    fn policy_precedence() {
        let policy = Policy {
            allow_cidrs: vec!["127.0.0.0/8".parse().unwrap()],
            deny_extra: vec!["93.184.216.0/24".parse().unwrap()],
            own_addrs: vec!["127.0.0.9/32".parse().unwrap()],
        };
        let c = |s: &str| policy.check(s.parse().unwrap());
        assert_eq!(c("127.0.0.1"), Verdict::Allowed);
        assert_eq!(c("::ffff:127.0.0.1"), Verdict::Allowed);
        assert_eq!(c("127.0.0.9"), Verdict::Refused(Reason::OwnListener));
        assert_eq!(c("93.184.216.34"), Verdict::Refused(Reason::DeniedByConfig));
        assert_eq!(c("10.0.0.1"), Verdict::Refused(Reason::Private));
    }
}
