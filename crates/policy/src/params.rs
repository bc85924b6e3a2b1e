//! Typed path and query parameters (OWASP API8, input validation): each declared parameter
//! must have its type and satisfy its rules, declared query parameters may appear at most once
//! (HTTP parameter pollution: the gateway and the upstream could read different copies), and
//! undeclared ones can be refused. Failures are 400 problem+json listing `/path/NAME` or
//! `/query/NAME` with the rule, never the value.
//!
//! Query strings are decoded as `application/x-www-form-urlencoded` (`+` is a space), names
//! included, so `li%6Dit=5` is `limit`. Path parameters are percent-decoded (`+` stays `+`)
//! and must be UTF-8.

use crate::{Flow, Policy, Step};
use http::Request;
use portcullis_config::{ParamKind, ParamRule, ParamsConfig};
use portcullis_core::{Body, GatewayError, RouteMatch};
use std::borrow::Cow;

/// Most errors reported for one request.
const MAX_REPORTED: usize = 20;

/// Unknown parameter names up to this length are named in the error; longer ones are not
/// echoed back (the pointer is then just `/query`).
const MAX_ECHOED_NAME: usize = 64;

/// The parameter policy for one route.
pub struct Params {
    cfg: ParamsConfig,
}

impl Params {
    /// Checks requests against `cfg`.
    pub fn new(cfg: ParamsConfig) -> Self {
        Params { cfg }
    }

    /// Every failure of the captured path parameters (raw, as routed) and the raw query string
    /// against the declarations, as (pointer, rule) pairs, at most [`MAX_REPORTED`].
    fn errors(&self, route: Option<&RouteMatch>, query: Option<&str>) -> Vec<(String, String)> {
        let mut errors = Vec::new();
        let mut fail = |section: &str, name: &str, rule: &str| {
            if errors.len() < MAX_REPORTED {
                errors.push((pointer(section, name), rule.to_string()));
            }
        };
        for (name, rule) in &self.cfg.path {
            // The router captured every template parameter; a missing one fails closed.
            let raw = route.and_then(|m| m.param(name));
            let failed = match raw.map(|v| percent_encoding::percent_decode_str(v).decode_utf8()) {
                None => Some("required"),
                Some(Err(_)) => Some("encoding"),
                Some(Ok(v)) => check(rule, &v),
            };
            if let Some(r) = failed {
                fail("path", name, r);
            }
        }
        if self.cfg.query.is_empty() && !self.cfg.reject_unknown_query {
            return errors;
        }
        let pairs: Vec<(Cow<'_, str>, Cow<'_, str>)> = query
            .map(|q| url::form_urlencoded::parse(q.as_bytes()).collect())
            .unwrap_or_default();
        for (name, rule) in &self.cfg.query {
            // Names in any ASCII case: ASP.NET binds `LIMIT=500` to `limit`.
            let mut found = pairs
                .iter()
                .filter(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v);
            let failed = match (found.next(), found.next()) {
                // `limit[]=500`, `limit[x]=500`: qs-style parsers (Express, PHP, Rails) read
                // them as `limit`, an array or object the rule never saw.
                _ if pairs.iter().any(|(k, _)| is_structured_form(k, name)) => Some("structured"),
                (None, _) => rule.required.then_some("required"),
                (Some(_), Some(_)) => Some("duplicate"),
                // Invalid UTF-8 decodes to U+FFFD; the upstream may read the raw bytes
                // differently from what was checked, so it is refused.
                (Some(v), None) if v.contains('\u{FFFD}') => Some("encoding"),
                (Some(v), None) => check(rule, v),
            };
            if let Some(r) = failed {
                fail("query", name, r);
            }
        }
        if self.cfg.reject_unknown_query {
            let mut reported: Vec<&str> = Vec::new();
            for (k, _) in &pairs {
                if self
                    .cfg
                    .query
                    .iter()
                    .any(|(n, _)| n.eq_ignore_ascii_case(k))
                    || reported.contains(&k.as_ref())
                {
                    continue;
                }
                reported.push(k);
                if k.chars().count() <= MAX_ECHOED_NAME && !k.chars().any(char::is_control) {
                    fail("query", k, "unknown");
                } else {
                    fail("query", "", "unknown");
                }
            }
        }
        errors
    }
}

/// True when `key` is `name[...]`, the form qs-style query parsers read as `name` holding an
/// array or an object.
pub(crate) fn is_structured_form(key: &str, name: &str) -> bool {
    key.get(..name.len())
        .is_some_and(|head| head.eq_ignore_ascii_case(name))
        && key[name.len()..].starts_with('[')
}

/// `/section/name` as an RFC 6901 pointer (`/section` without a name).
fn pointer(section: &str, name: &str) -> String {
    if name.is_empty() {
        format!("/{section}")
    } else {
        format!("/{section}/{}", name.replace('~', "~0").replace('/', "~1"))
    }
}

/// The first rule `v` (decoded) breaks, if any.
fn check(rule: &ParamRule, v: &str) -> Option<&'static str> {
    match &rule.kind {
        ParamKind::String {
            min_length,
            max_length,
            pattern,
            values,
        } => {
            let len = v.chars().count() as u64;
            if min_length.is_some_and(|m| len < m) {
                Some("min_length")
            } else if max_length.is_some_and(|m| len > m) {
                Some("max_length")
            } else if !values.is_empty() && !values.iter().any(|e| e == v) {
                Some("enum")
            } else if pattern.as_ref().is_some_and(|p| !p.is_match(v)) {
                Some("pattern")
            } else {
                None
            }
        }
        ParamKind::Integer {
            minimum,
            maximum,
            values,
        } => {
            let digits = v.strip_prefix('-').unwrap_or(v);
            let n = (!digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()))
                .then(|| v.parse::<i64>().ok())
                .flatten();
            match n {
                None => Some("type"),
                Some(n) if minimum.is_some_and(|m| n < m) => Some("minimum"),
                Some(n) if maximum.is_some_and(|m| n > m) => Some("maximum"),
                Some(n) if !values.is_empty() && !values.contains(&n) => Some("enum"),
                Some(_) => None,
            }
        }
        ParamKind::Number { minimum, maximum } => {
            match json_number(v).then(|| v.parse::<f64>().ok()).flatten() {
                Some(n) if n.is_finite() => {
                    if minimum.is_some_and(|m| n < m) {
                        Some("minimum")
                    } else if maximum.is_some_and(|m| n > m) {
                        Some("maximum")
                    } else {
                        None
                    }
                }
                _ => Some("type"),
            }
        }
        ParamKind::Boolean => (!matches!(v, "true" | "false")).then_some("type"),
        ParamKind::Uuid => (v.len() != 36 || uuid::Uuid::try_parse(v).is_err()).then_some("type"),
    }
}

/// JSON number syntax: `-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?`. Rust's float parser
/// alone would also take `inf`, `NaN`, `+1` and `.5`, which other parsers read differently.
fn json_number(v: &str) -> bool {
    let b = v.as_bytes();
    let mut i = usize::from(b.first() == Some(&b'-'));
    let digits = |i: &mut usize| {
        let start = *i;
        while b.get(*i).is_some_and(u8::is_ascii_digit) {
            *i += 1;
        }
        *i - start
    };
    let int_start = i;
    let n = digits(&mut i);
    if n == 0 || (n > 1 && b[int_start] == b'0') {
        return false;
    }
    if b.get(i) == Some(&b'.') {
        i += 1;
        if digits(&mut i) == 0 {
            return false;
        }
    }
    if matches!(b.get(i), Some(b'e' | b'E')) {
        i += 1;
        if matches!(b.get(i), Some(b'+' | b'-')) {
            i += 1;
        }
        if digits(&mut i) == 0 {
            return false;
        }
    }
    i == b.len()
}

impl Policy for Params {
    fn name(&self) -> &'static str {
        "params"
    }

    fn has_response_phase(&self) -> bool {
        false
    }

    fn reads_route_match(&self) -> bool {
        true
    }

    fn on_request(&self, req: Request<Body>) -> Step<'_, Flow> {
        let errors = self.errors(req.extensions().get::<RouteMatch>(), req.uri().query());
        if !errors.is_empty() {
            return Err(GatewayError::InvalidParams { errors }).into();
        }
        Ok(Flow::Continue(req)).into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> ParamsConfig {
        let string = |min, max, pattern: Option<&str>, values: &[&str]| ParamKind::String {
            min_length: min,
            max_length: max,
            pattern: pattern.and_then(|p| regex::Regex::new(p).ok()),
            values: values.iter().map(|v| v.to_string()).collect(),
        };
        let rule = |required, kind| ParamRule { required, kind };
        ParamsConfig {
            path: vec![(
                "id".into(),
                rule(
                    false,
                    ParamKind::Integer {
                        minimum: Some(1),
                        maximum: None,
                        values: vec![],
                    },
                ),
            )],
            query: vec![
                (
                    "limit".into(),
                    rule(
                        false,
                        ParamKind::Integer {
                            minimum: Some(1),
                            maximum: Some(100),
                            values: vec![],
                        },
                    ),
                ),
                (
                    "status".into(),
                    rule(false, string(None, None, None, &["open", "closed"])),
                ),
                (
                    "q".into(),
                    rule(true, string(Some(1), Some(8), Some("^[a-z ]+$"), &[])),
                ),
                (
                    "ratio".into(),
                    rule(
                        false,
                        ParamKind::Number {
                            minimum: Some(0.0),
                            maximum: Some(1.0),
                        },
                    ),
                ),
                ("flag".into(), rule(false, ParamKind::Boolean)),
                ("ref".into(), rule(false, ParamKind::Uuid)),
                ("a/b".into(), rule(false, ParamKind::Boolean)),
            ],
            reject_unknown_query: true,
        }
    }

    fn run(id: &str, query: &str) -> Vec<(String, String)> {
        let m = RouteMatch {
            params: vec![("id".into(), id.into())],
        };
        Params::new(cfg()).errors(Some(&m), Some(query))
    }

    type Errors = Vec<(String, String)>;

    fn e(pointer: &str, rule: &str) -> (String, String) {
        (pointer.into(), rule.into())
    }

    #[test]
    fn valid_requests_pass() {
        for q in [
            "q=abc",
            "q=hi%20you&limit=100&status=open",
            "q=hi+you",
            "q=ab&ratio=0.5&flag=true&ref=67e55044-10b1-426f-9247-bb680e5fe0c8",
            "q=ab&ratio=1e-1&a%2Fb=false",
            "q=ab&&",
        ] {
            assert_eq!(run("42", q), vec![], "{q}");
        }
    }

    #[test]
    fn each_rule_is_named_with_its_pointer() {
        let cases: &[(&str, &str, Errors)] = &[
            ("0", "q=a", vec![e("/path/id", "minimum")]),
            ("x1", "q=a", vec![e("/path/id", "type")]),
            ("%FF", "q=a", vec![e("/path/id", "encoding")]),
            ("1", "", vec![e("/query/q", "required")]),
            ("1", "q=", vec![e("/query/q", "min_length")]),
            ("1", "q=abcdefghi", vec![e("/query/q", "max_length")]),
            ("1", "q=ABC", vec![e("/query/q", "pattern")]),
            ("1", "q=a&limit=101", vec![e("/query/limit", "maximum")]),
            ("1", "q=a&limit=+5", vec![e("/query/limit", "type")]),
            ("1", "q=a&limit=5.0", vec![e("/query/limit", "type")]),
            (
                "1",
                "q=a&limit=99999999999999999999",
                vec![e("/query/limit", "type")],
            ),
            ("1", "q=a&status=pending", vec![e("/query/status", "enum")]),
            ("1", "q=a&ratio=1.5", vec![e("/query/ratio", "maximum")]),
            ("1", "q=a&ratio=NaN", vec![e("/query/ratio", "type")]),
            ("1", "q=a&ratio=.5", vec![e("/query/ratio", "type")]),
            ("1", "q=a&flag=1", vec![e("/query/flag", "type")]),
            (
                "1",
                "q=a&ref=67e5504410b1426f9247bb680e5fe0c8",
                vec![e("/query/ref", "type")],
            ),
            ("1", "q=a&a%2Fb=maybe", vec![e("/query/a~1b", "type")]),
            ("1", "q=a%FF", vec![e("/query/q", "encoding")]),
            // Parameter pollution: a declared name twice, however it is spelled.
            (
                "1",
                "q=a&limit=1&li%6Dit=2",
                vec![e("/query/limit", "duplicate")],
            ),
            (
                "1",
                "q=a&x=1&x=2&y",
                vec![e("/query/x", "unknown"), e("/query/y", "unknown")],
            ),
        ];
        for (id, q, want) in cases {
            assert_eq!(&run(id, q), want, "{id} {q}");
        }
        let long = format!("q=a&{}=1", "n".repeat(100));
        assert_eq!(run("1", &long), vec![e("/query", "unknown")]);
        // Several failures at once, bounded.
        assert_eq!(run("0", "limit=0").len(), 3);
        let many: String = (0..100).map(|i| format!("u{i}=1&")).collect();
        assert_eq!(run("1", &format!("q=a&{many}")).len(), MAX_REPORTED);
    }

    #[test]
    fn json_number_syntax() {
        for ok in ["0", "-0", "1.5", "-12.25e+3", "1E9", "10"] {
            assert!(json_number(ok), "{ok}");
        }
        for bad in [
            "", "-", "01", "1.", ".1", "+1", "1e", "inf", "NaN", "1_0", "0x10", " 1",
        ] {
            assert!(!json_number(bad), "{bad}");
        }
    }
}
