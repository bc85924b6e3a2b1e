//! Redaction of log lines. Names are matched case-insensitively at any depth of a JSON log
//! line (and inside string values that hold JSON); credential-shaped values (`Bearer ...`,
//! `Basic ...`, Portcullis API keys) are masked wherever they appear, in JSON or plain text.

use aho_corasick::{automaton::Automaton, Anchored};
use arc_swap::ArcSwap;
use regex::Regex;
use std::{collections::HashSet, sync::Arc};

/// What a redacted value is replaced with.
pub const REDACTED: &str = "[REDACTED]";

/// Header names that are always redacted.
const BUILTIN_HEADERS: &[&str] = &[
    "authorization",
    "proxy-authorization",
    "cookie",
    "set-cookie",
    "x-api-key",
];

/// Field names that are always redacted.
const BUILTIN_FIELDS: &[&str] = &[
    "password",
    "passwd",
    "secret",
    "client_secret",
    "token",
    "access_token",
    "refresh_token",
    "id_token",
    "api_key",
    "apikey",
    "private_key",
];

fn is_hex_or_dash(b: u8) -> bool {
    b.is_ascii_hexdigit() || b == b'-'
}

struct Rules {
    names: HashSet<String>,
    plain_kv: Regex,
    /// Matches every line that could need redaction (a listed name anywhere, a credential
    /// scheme or key prefix, or a `\u` escape that could spell a name); lines it does not
    /// match are written as they are, without parsing.
    suspicious: Regex,
    /// The same test as `suspicious`, broadened to plain ASCII literals (ASCII case-folded,
    /// no word boundaries) for [`Redactor::clears`], which runs on request tasks. It is
    /// stepped byte by byte: a regex search's start-up (or an Aho-Corasick search's, with its
    /// prefilter) cost more than the whole scan of a short value. Anything not ASCII is left
    /// to `suspicious`, whose case folding is Unicode's. `None` (never the case: the build
    /// cannot fail for these literals) clears nothing.
    quick: Option<aho_corasick::dfa::DFA>,
    /// No literal of `quick` is spelt with hex digits and `-` alone, so a value spelt with
    /// them alone (a request id in UUID form, most of all) holds none, and [`Redactor::clears`]
    /// passes it after a byte-class check: a third of what stepping the automaton costs.
    hex_clear: bool,
}

/// Scrubs log lines. Cloning shares the rules, and [`Redactor::set_extra`] changes them for
/// every clone (hot reload of the `[logging]` lists).
#[derive(Clone)]
pub struct Redactor {
    // Read on every log line, by request tasks too ([`Redactor::clears`]): an `ArcSwap` load
    // touches no shared reference count, where a lock and an `Arc` clone would bounce one
    // cache line between the worker threads.
    rules: Arc<ArcSwap<Rules>>,
    values: Arc<Regex>,
}

impl Default for Redactor {
    fn default() -> Self {
        Self::new(&[], &[])
    }
}

impl Redactor {
    /// The built-in lists plus configured header and field names.
    pub fn new(extra_headers: &[String], extra_fields: &[String]) -> Self {
        // Credential-shaped values: HTTP auth schemes with their parameter, and API keys in
        // Portcullis's recognisable `pcl_` format.
        let values = Regex::new(r"(?i)\b(bearer|basic|digest|negotiate)\s+[A-Za-z0-9._~+/=\-]+|\bpcl_[A-Za-z0-9_\-]{8,}")
            .unwrap_or_else(|_| unreachable_regex());
        Redactor {
            rules: Arc::new(ArcSwap::from_pointee(Self::rules(
                extra_headers,
                extra_fields,
            ))),
            values: Arc::new(values),
        }
    }

    fn rules(extra_headers: &[String], extra_fields: &[String]) -> Rules {
        let names: HashSet<String> = BUILTIN_HEADERS
            .iter()
            .chain(BUILTIN_FIELDS)
            .map(|s| s.to_string())
            .chain(
                extra_headers
                    .iter()
                    .chain(extra_fields)
                    .map(|s| s.to_ascii_lowercase()),
            )
            .flat_map(|n| {
                // Log fields often spell header names with underscores.
                let alt = n.replace('-', "_");
                [n, alt]
            })
            .collect();
        let mut sorted: Vec<&String> = names.iter().collect();
        sorted.sort_by_key(|n| std::cmp::Reverse(n.len()));
        let alternation = sorted
            .iter()
            .map(|n| regex::escape(n))
            .collect::<Vec<_>>()
            .join("|");
        let plain_kv = Regex::new(&format!(
            r#"(?i)\b({alternation})(\s*[=:]\s*)("[^"]*"|\S+)"#
        ))
        .unwrap_or_else(|_| unreachable_regex());
        // Deliberately broader than the redaction itself: a false hit only costs the full
        // parse, a miss would leak. `.` matches anything so this can never fail open.
        let suspicious = Regex::new(&format!(
            r"(?i)\\u|{alternation}|\b(bearer|basic|digest|negotiate)\s|pcl_"
        ))
        .unwrap_or_else(|_| Regex::new(".").unwrap_or_else(|_| unreachable_regex()));
        let literals = names.iter().map(String::as_str).chain([
            "\\u",
            "bearer",
            "basic",
            "digest",
            "negotiate",
            "pcl_",
        ]);
        let hex_clear = !literals.clone().any(|l| l.bytes().all(is_hex_or_dash));
        let quick = aho_corasick::dfa::DFA::builder()
            .ascii_case_insensitive(true)
            .build(literals)
            .ok();
        Rules {
            names,
            plain_kv,
            suspicious,
            quick,
            hex_clear,
        }
    }

    /// Replaces the configured (non-built-in) names.
    pub fn set_extra(&self, extra_headers: &[String], extra_fields: &[String]) {
        self.rules
            .store(Arc::new(Self::rules(extra_headers, extra_fields)));
    }

    fn current(&self) -> arc_swap::Guard<Arc<Rules>> {
        self.rules.load()
    }

    /// True when none of `values` holds anything the redaction could act on: no listed name,
    /// no credential scheme, no API-key prefix. A line made only of these values and of fixed
    /// text the caller controls (keys, numbers, addresses) would pass [`Self::redact_into`]
    /// unchanged, so the log writer may copy it without scanning it (`LineSink::write_checked`).
    /// The check is broader than the writer's: any non-ASCII byte, or any listed name,
    /// scheme or prefix in any ASCII case, fails it; a false failure only costs the writer's
    /// scan. The values are checked one by one, so no match can span two of them.
    pub fn clears(&self, values: &[&str]) -> bool {
        let rules = self.current();
        let Some(dfa) = &rules.quick else {
            return false;
        };
        let Ok(start) = dfa.start_state(Anchored::No) else {
            return false;
        };
        values.iter().all(|v| {
            if rules.hex_clear && v.bytes().all(is_hex_or_dash) {
                return true;
            }
            let mut at = start;
            v.bytes().all(|b| {
                at = dfa.next_state(Anchored::No, at, b);
                b.is_ascii() && !dfa.is_match(at)
            })
        })
    }

    /// Appends `line` (JSON or plain text) to `out`, redacted. Lines with nothing that could
    /// need redaction are copied as they are, without an intermediate string.
    pub fn redact_into(&self, line: &str, out: &mut Vec<u8>) {
        let rules = self.current();
        if rules.suspicious.is_match(line) {
            out.extend_from_slice(self.redact_suspicious(&rules, line).as_bytes());
        } else {
            out.extend_from_slice(line.as_bytes());
        }
    }

    /// Redacts one log line (JSON or plain text).
    pub fn redact_line(&self, line: &str) -> String {
        let rules = self.current();
        if !rules.suspicious.is_match(line) {
            return line.to_string();
        }
        self.redact_suspicious(&rules, line)
    }

    /// The full redaction of a line the quick check could not clear.
    fn redact_suspicious(&self, rules: &Rules, line: &str) -> String {
        let trimmed = line.trim_end_matches('\n');
        if trimmed.starts_with('{') {
            if let Ok(mut v) = serde_json::from_str::<serde_json::Value>(trimmed) {
                self.redact_value(rules, &mut v);
                let mut out = v.to_string();
                out.push('\n');
                return out;
            }
        }
        let masked = rules.plain_kv.replace_all(line, |c: &regex::Captures| {
            format!("{}{}{REDACTED}", &c[1], &c[2])
        });
        self.values.replace_all(&masked, REDACTED).into_owned()
    }

    fn redact_value(&self, rules: &Rules, v: &mut serde_json::Value) {
        use serde_json::Value;
        match v {
            Value::Object(map) => {
                for (k, val) in map.iter_mut() {
                    if rules.names.contains(&k.to_ascii_lowercase()) {
                        *val = Value::String(REDACTED.into());
                    } else {
                        self.redact_value(rules, val);
                    }
                }
            }
            Value::Array(items) => items.iter_mut().for_each(|i| self.redact_value(rules, i)),
            Value::String(s) => {
                let t = s.trim_start();
                if t.starts_with('{') || t.starts_with('[') {
                    if let Ok(mut inner) = serde_json::from_str::<Value>(t) {
                        self.redact_value(rules, &mut inner);
                        *s = inner.to_string();
                        return;
                    }
                }
                let masked = rules.plain_kv.replace_all(s, |c: &regex::Captures| {
                    format!("{}{}{REDACTED}", &c[1], &c[2])
                });
                let masked = self.values.replace_all(&masked, REDACTED);
                if masked != s.as_str() {
                    *s = masked.into_owned();
                }
            }
            _ => {}
        }
    }

    /// Renders headers for a log field, with sensitive values already replaced.
    pub fn headers_for_log(&self, headers: &http::HeaderMap) -> String {
        let rules = self.current();
        let mut map = serde_json::Map::new();
        for (name, value) in headers {
            let shown = if rules.names.contains(name.as_str()) {
                REDACTED.to_string()
            } else {
                String::from_utf8_lossy(value.as_bytes()).into_owned()
            };
            map.insert(name.as_str().to_string(), serde_json::Value::String(shown));
        }
        serde_json::Value::Object(map).to_string()
    }
}

/// The patterns above are constants; a failure to compile them is a programming error caught
/// by the unit tests, and matching nothing is the safe fallback for the plain-text pass.
fn unreachable_regex() -> Regex {
    Regex::new("$^").unwrap_or_else(|_| std::process::abort())
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: &str = "SENTINEL-s3cr3t-7f1d";

    #[test]
    fn json_fields_are_redacted_at_any_depth() {
        let r = Redactor::new(&["x-internal-token".into()], &["ssn".into()]);
        let line = format!(
            r#"{{"msg":"x","authorization":"Bearer {S}","nested":{{"X-Api-Key":"{S}","list":[{{"ssn":"{S}"}}]}},"x_internal_token":"{S}","headers":"{{\"cookie\":\"{S}\"}}"}}"#
        );
        let out = r.redact_line(&line);
        assert!(!out.contains(S), "{out}");
        assert!(out.contains(REDACTED));
        assert!(out.contains("\"msg\":\"x\""));
    }

    #[test]
    fn credential_shaped_values_are_masked_anywhere() {
        let r = Redactor::default();
        for line in [
            format!(r#"{{"message":"upstream said Bearer {S}"}}"#),
            format!("plain text basic {S} here"),
            format!(r#"{{"m":"key pcl_abc123_{S}"}}"#),
            format!("authorization={S} other=1"),
            format!("password: \"{S}\""),
        ] {
            let out = r.redact_line(&line);
            assert!(!out.contains(S), "{line} -> {out}");
        }
    }

    #[test]
    fn configured_names_can_change_at_runtime() {
        let r = Redactor::default();
        let line = format!(r#"{{"card_number":"{S}"}}"#);
        assert!(r.redact_line(&line).contains(S));
        r.clone().set_extra(&[], &["card_number".into()]);
        assert!(!r.redact_line(&line).contains(S));
    }

    #[test]
    fn headers_for_log_hides_sensitive_headers() {
        let r = Redactor::default();
        let mut h = http::HeaderMap::new();
        h.insert(
            "authorization",
            http::HeaderValue::from_static("Bearer zzz"),
        );
        h.insert("accept", http::HeaderValue::from_static("*/*"));
        let s = r.headers_for_log(&h);
        assert!(!s.contains("zzz") && s.contains("*/*"), "{s}");
    }

    #[test]
    fn clears_only_values_with_nothing_to_redact() {
        let r = Redactor::new(&[], &["card_number".into()]);
        assert!(r.clears(&["/orders/42", "GET", "orders", ""]));
        for bad in [
            "/x/Bearer abc",
            "/login?password=1",
            "/k/pcl_abcdefgh12345",
            "/CARD_NUMBER/1",
            "a\\u0070",
        ] {
            assert!(!r.clears(&["GET", bad]), "{bad}");
        }
        // Unicode case folding is the writer's business: such values are never cleared.
        assert!(!r.clears(&["/to\u{212A}en=1"]));
    }

    #[test]
    fn hex_values_are_cleared_unless_a_listed_name_is_spelt_in_hex() {
        let id = "5f0c6a3e-2b7d-4c1e-9a8f-0d2e4b6c8a1f";
        assert!(Redactor::default().clears(&[id, "GET"]));
        // A configured field name made of hex digits could be inside such a value: then
        // every value goes through the automaton, in any case.
        let r = Redactor::new(&[], &["cafe".into()]);
        assert!(r.clears(&[id]));
        assert!(!r.clears(&["0123-CAFE-4567"]));
        assert!(!r.clears(&["0123cafe"]));
        let r = Redactor::new(&["a-b".into()], &[]);
        assert!(!r.clears(&["0a-b1"]));
    }

    #[test]
    fn ordinary_lines_pass_unchanged() {
        let r = Redactor::default();
        let line = "{\"level\":\"INFO\",\"status\":200,\"route\":\"orders\"}\n";
        assert_eq!(r.redact_line(line), line);
    }
}

#[cfg(test)]
mod props {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// A secret under a sensitive name never survives, whatever surrounds it, in JSON
        /// lines or plain text.
        #[test]
        fn sensitive_values_never_survive(prefix in "[a-z ]{0,10}", secret in "[A-Za-z0-9]{12,24}", name in prop::sample::select(vec!["authorization", "cookie", "x-api-key", "password", "client_secret"])) {
            let r = Redactor::default();
            let json = serde_json::json!({ "msg": prefix.clone(), name: secret.clone(), "nested": { name: [secret.clone()] } }).to_string();
            prop_assert!(!r.redact_line(&json).contains(&secret));
            let plain = format!("{prefix} {name}={secret} done");
            prop_assert!(!r.redact_line(&plain).contains(&secret));
        }

        /// The writer's appending form gives exactly what `redact_line` gives.
        #[test]
        fn redact_into_matches_redact_line(line in "(\\{\"[a-z_]{1,12}\":\"[ -~]{0,30}\"\\}|[ -~]{0,60})\n?") {
            let r = Redactor::default();
            let mut out = b"kept:".to_vec();
            r.redact_into(&line, &mut out);
            prop_assert_eq!(String::from_utf8(out).expect("utf-8"), format!("kept:{}", r.redact_line(&line)));
        }

        /// Whatever the configured names, a value that holds one (in any ASCII case) is never
        /// cleared: the hex shortcut never lets a hex-spelt name through.
        #[test]
        fn clears_never_passes_a_value_holding_a_listed_name(name in "[0-9a-f-]{1,6}", pre in "[0-9a-fA-F-]{0,20}", post in "[0-9a-fA-F-]{0,20}", upper in any::<bool>()) {
            let r = Redactor::new(&[], std::slice::from_ref(&name));
            let spelt = if upper { name.to_ascii_uppercase() } else { name.clone() };
            let value = format!("{pre}{spelt}{post}");
            prop_assert!(!r.clears(&[&value]), "{} in {}", name, value);
        }

        #[test]
        fn arbitrary_lines_never_panic(line in any::<String>()) {
            let _ = Redactor::default().redact_line(&line);
        }
    }

    #[test]
    fn lines_without_anything_sensitive_pass_untouched_and_escapes_do_not_slip_through() {
        const S: &str = "SENTINEL-s3cr3t-7f1d";
        let r = Redactor::default();
        let benign = "{\"msg\":\"request\",\"route\":\"orders\",\"status\":200,\"ms\":1.5}\n";
        assert_eq!(r.redact_line(benign), benign);
        // A name spelled with a JSON escape is still found: the fast path defers to the parse.
        let escaped = format!("{{\"p\\u0061ssword\":\"{S}\"}}\n");
        let out = r.redact_line(&escaped);
        assert!(!out.contains(S), "{out}");
        // Case and nesting inside a string that holds JSON.
        let nested = format!("{{\"body\":\"{{\\\"Client_Secret\\\":\\\"{S}\\\"}}\"}}\n");
        let out = r.redact_line(&nested);
        assert!(!out.contains(S), "{out}");
        let out = r.redact_line(&format!("{{\"h\":\"BEARER {S}\"}}\n"));
        assert!(!out.contains(S), "{out}");
    }
}
