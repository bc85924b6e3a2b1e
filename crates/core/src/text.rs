//! Small formatters for the hot path: addresses and numbers written straight into a buffer,
//! without `core::fmt` (whose `Ipv4Addr` display alone cost ~1,500 instructions per call on
//! the benchmark, several times per request).

use std::{io::Write, net::IpAddr, time::Duration};

/// `d` in whole seconds, rounded up: a client told to wait `Retry-After` seconds (or that a
/// limit resets in `t` seconds) must not be refused again for coming back on time.
pub fn seconds_up(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

/// `ip` with an IPv4-mapped IPv6 address turned into the IPv4 address it carries, so that
/// rules, logs and forwarding headers see one form of each client.
pub fn normalise_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// The source a client is counted as by rate limits and the lockout: an IPv4 address, or
/// the /64 network (its first address) of an IPv6 one. One IPv6 host usually holds a whole
/// /64 (SLAAC, privacy addresses), so counting single addresses would hand it 2^64
/// allowances, or a fresh address per lockout.
pub fn client_source(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => IpAddr::V6((u128::from(v6) & !u128::from(u64::MAX)).into()),
        v4 => v4,
    }
}

/// Appends `ip` as `Display` writes it.
pub fn push_ip(out: &mut Vec<u8>, ip: IpAddr) {
    match ip {
        IpAddr::V4(v4) => {
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    out.push(b'.');
                }
                push_u64(out, u64::from(octet));
            }
        }
        IpAddr::V6(v6) => {
            // Rare on the hot path; writing into a Vec cannot fail.
            let _ = write!(out, "{v6}");
        }
    }
}

/// Appends `n` in decimal.
pub fn push_u64(out: &mut Vec<u8>, mut n: u64) {
    // Octets, status codes and clock fields are small: skip the buffer and the copy.
    if n < 10 {
        out.push(b'0' + n as u8);
        return;
    }
    if n < 100 {
        out.extend_from_slice(&[b'0' + (n / 10) as u8, b'0' + (n % 10) as u8]);
        return;
    }
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn an_ipv6_client_is_counted_by_its_64_and_an_ipv4_one_by_its_address() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1"
            .parse()
            .unwrap_or(IpAddr::from([0; 16]));
        let b: IpAddr = "2001:db8:1:2:ffff:1:2:3"
            .parse()
            .unwrap_or(IpAddr::from([0; 16]));
        let other: IpAddr = "2001:db8:1:3::1".parse().unwrap_or(IpAddr::from([0; 16]));
        assert_eq!(client_source(a), client_source(b));
        assert_ne!(client_source(a), client_source(other));
        assert_eq!(client_source(a).to_string(), "2001:db8:1:2::");
        let v4: IpAddr = [192, 0, 2, 7].into();
        let v4_next: IpAddr = [192, 0, 2, 8].into();
        assert_ne!(client_source(v4), client_source(v4_next));
        assert_eq!(client_source(v4).to_string(), "192.0.2.7");
    }

    proptest! {
        #[test]
        fn addresses_and_numbers_read_as_display_writes_them(a in any::<[u8; 4]>(), b in any::<[u16; 8]>(), n in any::<u64>()) {
            for ip in [IpAddr::from(a), IpAddr::from(b)] {
                let mut out = Vec::new();
                push_ip(&mut out, ip);
                prop_assert_eq!(String::from_utf8(out).expect("ascii"), ip.to_string());
            }
            let mut out = Vec::new();
            push_u64(&mut out, n);
            prop_assert_eq!(String::from_utf8(out).expect("ascii"), n.to_string());
        }
    }
}
