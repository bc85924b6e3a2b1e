//! X-Forwarded-For is attacker-controlled: parsing it must never panic, and an untrusted peer
//! is never replaced by anything in it.
#![no_main]
use libfuzzer_sys::fuzz_target;
use std::net::IpAddr;

fuzz_target!(|data: &[u8]| {
    let mut h = http::HeaderMap::new();
    if let Ok(v) = http::HeaderValue::from_bytes(data) {
        h.insert("x-forwarded-for", v);
    }
    let trusted: Vec<ipnet::IpNet> = vec!["10.0.0.0/8".parse().expect("cidr")];
    let outsider = IpAddr::from([203, 0, 113, 5]);
    assert_eq!(portcullis_proxy::client_ip(outsider, &h, &trusted), outsider);
    let _ = portcullis_proxy::client_ip(IpAddr::from([10, 1, 2, 3]), &h, &trusted);
});
