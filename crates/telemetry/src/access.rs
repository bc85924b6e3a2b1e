//! The access log's fast path: one JSON line per request, written straight to the log writer.
//!
//! The line has exactly the keys tracing's JSON formatter gives an event with these fields
//! (`timestamp`, `level`, the fields, `target`), so readers of the log see one format. It is
//! built by hand because the generic formatter (a serde visitor per field, `Display` for every
//! value) was about a quarter of the gateway's instructions per request on the benchmark; see
//! `bench/RESULTS.md`. Its text values (request id, method, path, route, error slug,
//! cause) are checked by the redactor on the request task,
//! and the writer thread copies the line without scanning it only when that check clears
//! them; otherwise it is redacted like every other line. The configured level still applies
//! (`target: portcullis::access`, INFO).
//! With the plain-text format, or before logging is set up, the line goes through tracing.

use crate::writer::LineSink;
use portcullis_core::text::{push_ip as write_ip, push_u64};
use std::{
    cell::RefCell,
    net::IpAddr,
    sync::OnceLock,
    time::{Duration, SystemTime},
};

/// The JSON sink, set once by `init_logging` when the format is JSON.
static JSON_SINK: OnceLock<LineSink> = OnceLock::new();

thread_local! {
    static LINE: RefCell<Vec<u8>> = RefCell::new(Vec::with_capacity(512));
}

pub(crate) fn set_json_sink(sink: LineSink) {
    // A second logger in one process (never the case in the binary) keeps the first sink.
    let _ = JSON_SINK.set(sink);
}

/// What the access log records about one finished request. The query string is not among
/// the fields on purpose: it is where tokens and personal data leak.
pub struct AccessRecord<'a> {
    /// The request id sent back to the client.
    pub request_id: &'a str,
    /// The client address the gateway believed (peer, or trusted `X-Forwarded-For`).
    pub client_ip: IpAddr,
    /// `client_ip` as text, when the caller has it already (the connection's peer): written
    /// as it is if it is made of address characters only, otherwise `client_ip` is formatted.
    pub client_ip_text: Option<&'a str>,
    /// Request method.
    pub method: &'a str,
    /// Request path, without the query.
    pub path: &'a str,
    /// Route id, or `-`, `undeclared`, a webhook or integration id.
    pub route: &'a str,
    /// Response status.
    pub status: u16,
    /// Time from the request head to the response head.
    pub elapsed: Duration,
    /// The problem slug when the gateway answered with an error.
    pub error: Option<&'a str>,
    /// The internal cause of that error (logged, never sent to the client).
    pub cause: Option<&'a str>,
}

/// Writes one access-log line, if the configured level lets `portcullis::access` INFO through.
pub fn log_access(r: &AccessRecord<'_>) {
    if !tracing::enabled!(target: "portcullis::access", tracing::Level::INFO) {
        return;
    }
    let Some(sink) = JSON_SINK.get() else {
        tracing::info!(
            target: "portcullis::access",
            request_id = r.request_id,
            client_ip = %r.client_ip,
            method = r.method,
            path = r.path,
            route = r.route,
            status = r.status,
            duration_ms = r.elapsed.as_secs_f64() * 1000.0,
            error = r.error,
            cause = r.cause,
        );
        return;
    };
    LINE.with(|line| {
        // Re-entrancy cannot happen (nothing below logs), but never panic on it.
        let Ok(mut line) = line.try_borrow_mut() else {
            return;
        };
        line.clear();
        r.write_json(&mut line, SystemTime::now());
        sink.write_checked(&line, &r.text_values());
    });
}

impl AccessRecord<'_> {
    /// Every text value of the line: the rest (timestamp, keys, address, numbers) is written
    /// by [`Self::write_json`] from a fixed vocabulary. What the redactor checks before the
    /// writer may skip its scan, so a new text field must be added here.
    fn text_values(&self) -> [&str; 6] {
        [
            self.request_id,
            self.method,
            self.path,
            self.route,
            self.error.unwrap_or(""),
            self.cause.unwrap_or(""),
        ]
    }

    /// Appends this record's JSON line, stamped `now`, to `out` (what [`log_access`] hands to
    /// the writer; public for the benchmark).
    pub fn write_json(&self, out: &mut Vec<u8>, now: SystemTime) {
        out.extend_from_slice(b"{\"timestamp\":\"");
        write_timestamp(out, now);
        out.extend_from_slice(b"\",\"level\":\"INFO\",\"request_id\":");
        json_str(out, self.request_id);
        out.extend_from_slice(b",\"client_ip\":\"");
        match self.client_ip_text {
            Some(t) if is_address_text(t) => out.extend_from_slice(t.as_bytes()),
            _ => write_ip(out, self.client_ip),
        }
        out.extend_from_slice(b"\",\"method\":");
        json_str(out, self.method);
        out.extend_from_slice(b",\"path\":");
        json_str(out, self.path);
        out.extend_from_slice(b",\"route\":");
        json_str(out, self.route);
        out.extend_from_slice(b",\"status\":");
        push_u64(out, u64::from(self.status));
        out.extend_from_slice(b",\"duration_ms\":");
        push_millis(out, self.elapsed);
        if let Some(e) = self.error {
            out.extend_from_slice(b",\"error\":");
            json_str(out, e);
        }
        if let Some(c) = self.cause {
            out.extend_from_slice(b",\"cause\":");
            json_str(out, c);
        }
        out.extend_from_slice(b",\"target\":\"portcullis::access\"}\n");
    }
}

/// Any other hot-path log line, built by hand the same way: `timestamp`, `level`, `message`,
/// the fields in the order given, `target`, as tracing's JSON formatter writes an event.
/// Callers check the level first (`tracing::enabled!` with the same target and level), as a
/// `tracing` macro would. With the plain-text format the line goes through tracing as one
/// text field.
pub struct JsonLine {
    buf: Vec<u8>,
    target: &'static str,
}

impl JsonLine {
    /// Starts an INFO line for `target` with `message`.
    pub fn info(target: &'static str, message: &str) -> Self {
        let mut buf = Vec::with_capacity(320);
        buf.extend_from_slice(b"{\"timestamp\":\"");
        write_timestamp(&mut buf, SystemTime::now());
        buf.extend_from_slice(b"\",\"level\":\"INFO\",\"message\":");
        json_str(&mut buf, message);
        JsonLine { buf, target }
    }

    /// Adds a string field.
    pub fn str(mut self, name: &'static str, value: &str) -> Self {
        self.key(name);
        json_str(&mut self.buf, value);
        self
    }

    /// Adds a string field when there is a value (tracing leaves out `None` too).
    pub fn opt_str(self, name: &'static str, value: Option<&str>) -> Self {
        match value {
            Some(v) => self.str(name, v),
            None => self,
        }
    }

    /// Adds an integer field.
    pub fn u64(mut self, name: &'static str, value: u64) -> Self {
        self.key(name);
        push_u64(&mut self.buf, value);
        self
    }

    /// Adds a duration in milliseconds, to the microsecond.
    pub fn millis(mut self, name: &'static str, d: Duration) -> Self {
        self.key(name);
        push_millis(&mut self.buf, d);
        self
    }

    fn key(&mut self, name: &'static str) {
        self.buf.push(b',');
        json_str(&mut self.buf, name);
        self.buf.push(b':');
    }

    /// Hands the line to the log writer.
    pub fn emit(mut self) {
        self.buf.extend_from_slice(b",\"target\":");
        json_str(&mut self.buf, self.target);
        self.buf.extend_from_slice(b"}\n");
        match JSON_SINK.get() {
            Some(sink) => sink.write_line(&self.buf),
            None => {
                let text = String::from_utf8_lossy(&self.buf);
                tracing::info!(target: "portcullis::log", line = %text.trim_end());
            }
        }
    }
}

/// A JSON string literal, exactly as serde_json writes it. Ids, paths and methods rarely hold
/// anything to escape, so those are copied between quotes; the rest goes through serde_json.
/// Made only of the characters an IPv4 or IPv6 address is written with: such text needs no
/// JSON escaping and is, like a formatted address, outside what the redactor checks.
fn is_address_text(t: &str) -> bool {
    !t.is_empty()
        && t.bytes()
            .all(|b| b.is_ascii_hexdigit() || b == b'.' || b == b':')
}

/// True when `s` holds a byte JSON needs escaped: a control character, `"` or `\\`. Eight
/// bytes at a time (a byte-by-byte test was ~13 instructions per byte of the access line's
/// text): the classic "has a zero byte" and "has a byte below n" word tests, exact for
/// whether any byte qualifies.
fn needs_escape(s: &[u8]) -> bool {
    const ONES: u64 = u64::from_ne_bytes([0x01; 8]);
    const HIGHS: u64 = u64::from_ne_bytes([0x80; 8]);
    let has_zero = |x: u64| x.wrapping_sub(ONES) & !x & HIGHS != 0;
    let mut chunks = s.chunks_exact(8);
    for c in &mut chunks {
        let mut word = [0u8; 8];
        word.copy_from_slice(c);
        let x = u64::from_ne_bytes(word);
        if has_zero(x ^ (ONES * u64::from(b'"')))
            || has_zero(x ^ (ONES * u64::from(b'\\')))
            // Below 0x20: (x - 0x20 in every byte) & !x & 0x80, exact for n <= 0x80.
            || x.wrapping_sub(ONES * 0x20) & !x & HIGHS != 0
        {
            return true;
        }
    }
    chunks
        .remainder()
        .iter()
        .any(|&b| b < 0x20 || b == b'"' || b == b'\\')
}

fn json_str(out: &mut Vec<u8>, s: &str) {
    if !needs_escape(s.as_bytes()) {
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
        return;
    }
    // Writing a &str into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, s);
}

/// The formatted `YYYY-MM-DDTHH:MM:SS.` of one second, with its length.
type SecondPrefix = (u64, [u8; 32], usize);

thread_local! {
    /// The last second this thread formatted: lines within one second share it.
    static SECOND: std::cell::Cell<Option<SecondPrefix>> = const { std::cell::Cell::new(None) };
}

/// RFC 3339 in UTC with microseconds, as tracing's formatter writes it.
fn write_timestamp(out: &mut Vec<u8>, now: SystemTime) {
    let Ok(since_epoch) = now.duration_since(SystemTime::UNIX_EPOCH) else {
        return write_timestamp_in_full(out, now);
    };
    let secs = since_epoch.as_secs();
    let prefix = match SECOND.get() {
        Some(p) if p.0 == secs => p,
        _ => {
            let mut full = Vec::with_capacity(32);
            write_timestamp_in_full(&mut full, now);
            // Everything up to the fraction: "YYYY-MM-DDTHH:MM:SS." is the full form less
            // its 6 digits and the 'Z'.
            let len = full.len().saturating_sub(7);
            let mut bytes = [0u8; 32];
            if len > bytes.len() {
                out.extend_from_slice(&full);
                return;
            }
            bytes[..len].copy_from_slice(&full[..len]);
            SECOND.set(Some((secs, bytes, len)));
            (secs, bytes, len)
        }
    };
    out.extend_from_slice(&prefix.1[..prefix.2]);
    push_padded(out, u64::from(since_epoch.subsec_micros()), 6);
    out.push(b'Z');
}

fn write_timestamp_in_full(out: &mut Vec<u8>, now: SystemTime) {
    let t = time::OffsetDateTime::from(now);
    push_padded(out, u64::try_from(t.year()).unwrap_or(0), 4);
    out.push(b'-');
    push_padded(out, u64::from(u8::from(t.month())), 2);
    out.push(b'-');
    push_padded(out, u64::from(t.day()), 2);
    out.push(b'T');
    push_padded(out, u64::from(t.hour()), 2);
    out.push(b':');
    push_padded(out, u64::from(t.minute()), 2);
    out.push(b':');
    push_padded(out, u64::from(t.second()), 2);
    out.push(b'.');
    push_padded(out, u64::from(t.microsecond()), 6);
    out.push(b'Z');
}

/// A duration as milliseconds with three decimals (microsecond resolution).
fn push_millis(out: &mut Vec<u8>, d: Duration) {
    let micros = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
    push_u64(out, micros / 1000);
    out.push(b'.');
    push_padded(out, micros % 1000, 3);
}

/// `n` in at least `width` digits, zero-padded.
fn push_padded(out: &mut Vec<u8>, n: u64, width: usize) {
    let digits = if n == 0 { 1 } else { n.ilog10() as usize + 1 };
    out.extend(std::iter::repeat_n(b'0', width.saturating_sub(digits)));
    push_u64(out, n);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    fn line(r: &AccessRecord<'_>, now: SystemTime) -> serde_json::Value {
        let mut out = Vec::new();
        r.write_json(&mut out, now);
        assert_eq!(out.last(), Some(&b'\n'));
        serde_json::from_slice(&out).expect("a JSON line")
    }

    fn record<'a>(path: &'a str, cause: Option<&'a str>) -> AccessRecord<'a> {
        AccessRecord {
            request_id: "req-1",
            client_ip: IpAddr::V4(Ipv4Addr::new(198, 51, 100, 7)),
            client_ip_text: None,
            method: "GET",
            path,
            route: "orders",
            status: 502,
            elapsed: Duration::from_micros(12_345),
            error: cause.map(|_| "bad-gateway"),
            cause,
        }
    }

    #[test]
    fn the_line_has_the_keys_and_values_of_the_tracing_format() {
        // 2026-12-01T19:46:09.000042Z
        let now = SystemTime::UNIX_EPOCH + Duration::new(1_796_154_369, 42_000);
        let v = line(&record("/orders/1", Some("connection refused")), now);
        assert_eq!(v["timestamp"], "2026-12-01T19:46:09.000042Z");
        assert_eq!(v["level"], "INFO");
        assert_eq!(v["target"], "portcullis::access");
        assert_eq!(v["request_id"], "req-1");
        assert_eq!(v["client_ip"], "198.51.100.7");
        assert_eq!(v["method"], "GET");
        assert_eq!(v["path"], "/orders/1");
        assert_eq!(v["route"], "orders");
        assert_eq!(v["status"], 502);
        assert_eq!(v["duration_ms"], 12.345);
        assert_eq!(v["error"], "bad-gateway");
        assert_eq!(v["cause"], "connection refused");
    }

    #[test]
    fn a_given_address_text_is_used_only_when_it_is_address_characters() {
        let mut r = record("/", None);
        r.client_ip_text = Some("2001:db8::7");
        assert_eq!(line(&r, SystemTime::now())["client_ip"], "2001:db8::7");
        // Anything else is not copied: the address itself is formatted.
        for bad in ["", "1.2.3.4\",\"x\":\"", "pcl_secret", "1.2.3.4 "] {
            r.client_ip_text = Some(bad);
            assert_eq!(
                line(&r, SystemTime::now())["client_ip"],
                "198.51.100.7",
                "{bad}"
            );
        }
    }

    #[test]
    fn absent_error_fields_are_left_out() {
        let v = line(&record("/", None), SystemTime::now());
        let obj = v.as_object().expect("object");
        assert!(!obj.contains_key("error") && !obj.contains_key("cause"));
    }

    #[test]
    fn strings_are_escaped_and_addresses_written_like_display() {
        let mut r = record("/a\"b\\c\u{1}\n", Some("line\r\nbreak"));
        for ip in [
            IpAddr::V4(Ipv4Addr::new(0, 0, 0, 0)),
            IpAddr::V4(Ipv4Addr::new(255, 10, 1, 100)),
            IpAddr::V6(Ipv6Addr::LOCALHOST),
            IpAddr::V6("2001:db8::ffff:1.2.3.4".parse().expect("v6")),
        ] {
            r.client_ip = ip;
            let v = line(&r, SystemTime::now());
            assert_eq!(v["client_ip"], ip.to_string());
            assert_eq!(v["path"], "/a\"b\\c\u{1}\n");
            assert_eq!(v["cause"], "line\r\nbreak");
        }
    }

    #[test]
    fn other_lines_have_the_tracing_layout() {
        let line = JsonLine::info("portcullis::audit", "egress \"call\"")
            .str("integration", "crm")
            .opt_str("problem", None)
            .opt_str("client", Some("wf"))
            .u64("status", 200)
            .millis("duration_ms", Duration::from_micros(1_234));
        let mut buf = line.buf.clone();
        buf.extend_from_slice(b",\"target\":\"portcullis::audit\"}\n");
        let v: serde_json::Value = serde_json::from_slice(&buf).expect("JSON");
        let keys: Vec<&str> = v
            .as_object()
            .expect("object")
            .keys()
            .map(String::as_str)
            .collect();
        for k in [
            "timestamp",
            "level",
            "message",
            "integration",
            "client",
            "status",
            "duration_ms",
            "target",
        ] {
            assert!(keys.contains(&k), "{k} missing from {keys:?}");
        }
        assert!(!keys.contains(&"problem"));
        assert_eq!(v["message"], "egress \"call\"");
        assert_eq!(v["status"], 200);
        assert_eq!(v["duration_ms"], 1.234);
    }

    #[test]
    fn durations_keep_microseconds() {
        for (us, want) in [(0, 0.0), (7, 0.007), (1_000, 1.0), (999_999, 999.999)] {
            let mut r = record("/", None);
            r.elapsed = Duration::from_micros(us);
            assert_eq!(line(&r, SystemTime::now())["duration_ms"], want, "{us} us");
        }
    }

    proptest::proptest! {
        /// Skipping the writer's scan is safe: whenever the values clear, the full redaction
        /// would have left the line exactly as it is.
        #[test]
        fn a_line_whose_values_clear_is_one_redaction_leaves_alone(
            path in "(/[a-zA-Z0-9_ =:.%-]{0,12}){0,3}|/\\PC{0,30}",
            id in "[a-zA-Z0-9_-]{1,20}",
            route in proptest::sample::select(vec!["orders", "token-exchange", "secret", "-"]),
            cause in proptest::option::of("[a-zA-Z ]{0,8}(Bearer |password=|pcl_)?[a-zA-Z0-9]{0,12}"),
        ) {
            let r = AccessRecord { request_id: &id, path: &path, route, cause: cause.as_deref(), ..record("/", None) };
            let mut out = Vec::new();
            r.write_json(&mut out, SystemTime::now());
            let text = String::from_utf8(out).expect("utf-8");
            let redactor = crate::Redactor::default();
            if redactor.clears(&r.text_values()) {
                proptest::prop_assert_eq!(redactor.redact_line(&text), text);
            }
        }

        /// The word-at-a-time test finds exactly the bytes the byte-by-byte one does.
        #[test]
        fn needs_escape_is_the_byte_test(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..64), clean in proptest::collection::vec(0x20u8..=0xff, 0..40)) {
            let naive = |s: &[u8]| s.iter().any(|&b| b < 0x20 || b == b'"' || b == b'\\');
            proptest::prop_assert_eq!(needs_escape(&bytes), naive(&bytes));
            proptest::prop_assert_eq!(needs_escape(&clean), naive(&clean));
        }

        #[test]
        fn strings_are_written_as_serde_json_writes_them(v in "\\PC{0,40}|[\\x00-\\x7f]{0,40}") {
            let mut ours = Vec::new();
            json_str(&mut ours, &v);
            proptest::prop_assert_eq!(ours, serde_json::to_vec(&v).expect("json"));
        }

        #[test]
        fn timestamps_within_one_second_and_across_seconds_are_the_full_form(
            start in 0u64..4_102_444_800, steps in proptest::collection::vec((0u64..3, 0u32..1_000_000), 1..20)
        ) {
            let mut secs = start;
            for (ahead, micros) in steps {
                secs += ahead;
                let now = SystemTime::UNIX_EPOCH + Duration::new(secs, micros * 1000);
                let (mut cached, mut full) = (Vec::new(), Vec::new());
                write_timestamp(&mut cached, now);
                write_timestamp_in_full(&mut full, now);
                proptest::prop_assert_eq!(cached, full);
            }
        }
    }
}
