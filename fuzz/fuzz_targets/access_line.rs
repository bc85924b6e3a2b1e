//! The access line carries the client's path and the error cause verbatim: whatever they
//! hold, the line must stay one valid JSON object on one line with those exact values, so a
//! client cannot forge or split log lines.
#![no_main]
use libfuzzer_sys::fuzz_target;
use portcullis_telemetry::AccessRecord;
use std::{
    net::IpAddr,
    time::{Duration, SystemTime},
};

fuzz_target!(|input: (&str, &str, [u8; 16], u64)| {
    let (path, cause, ip, micros) = input;
    let record = AccessRecord {
        request_id: "fuzz",
        client_ip: IpAddr::from(ip),
        method: "GET",
        path,
        route: "r",
        status: 500,
        elapsed: Duration::from_micros(micros),
        error: Some("internal"),
        cause: Some(cause),
    };
    let mut line = Vec::new();
    record.write_json(&mut line, SystemTime::now());
    assert_eq!(line.iter().filter(|b| **b == b'\n').count(), 1);
    assert_eq!(line.last(), Some(&b'\n'));
    let v: serde_json::Value = serde_json::from_slice(&line).expect("one JSON object");
    assert_eq!(v["path"].as_str(), Some(path));
    assert_eq!(v["cause"].as_str(), Some(cause));
    assert_eq!(
        v["client_ip"].as_str(),
        Some(IpAddr::from(ip).to_string().as_str())
    );
});
