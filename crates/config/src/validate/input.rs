//! Route input rules: structural limits on JSON bodies and typed path and query parameters.

use super::Checker;
use crate::{model::*, raw::*};
use std::ops::Range;
use toml::Spanned;

/// serde_json refuses the 128th level of nesting before the gateway's checker sees it; a
/// configured limit stays well below that, so the limit (with its pointer) is what a client
/// meets, never the parser's backstop.
const MAX_JSON_DEPTH: u64 = 100;

/// Longest regular expression program a pattern may compile to; far above anything a
/// parameter needs, far below the regex crate's own default.
const PATTERN_SIZE_LIMIT: usize = 256 * 1024;

pub(super) fn json_limits(c: &mut Checker, raw: Option<RawJsonLimits>, ctx: &str) -> JsonLimits {
    let mut out = JsonLimits::DEFAULT;
    // Not spanned as a whole: toml cannot give a span to a table written with dotted keys
    // (`json_limits.max_depth = 8`); every value in it has one.
    let Some(r) = raw else { return out };
    out.explicit = true;
    let at_least_one = |c: &mut Checker, v: Option<(u64, Range<usize>)>, name: &str| {
        let (n, span) = v?;
        if n == 0 {
            c.error(
                Some(span),
                format!("{ctx}: json_limits.{name} must be at least 1"),
            );
            return None;
        }
        Some(n)
    };
    if let Some(d) = at_least_one(
        c,
        r.max_depth.as_ref().map(|v| (*v.get_ref(), v.span())),
        "max_depth",
    ) {
        if d > MAX_JSON_DEPTH {
            c.error(
                r.max_depth.as_ref().map(|v| v.span()),
                format!("{ctx}: json_limits.max_depth is {d}; expected between 1 and {MAX_JSON_DEPTH} (the JSON parser refuses deeper documents anyway)"),
            );
        } else {
            out.max_depth = d as u32;
        }
    }
    if let Some(n) = at_least_one(
        c,
        r.max_string.map(|v| (v.get_ref().0, v.span())),
        "max_string",
    ) {
        out.max_string = n;
    }
    if let Some(n) = at_least_one(
        c,
        r.max_array.map(|v| (*v.get_ref(), v.span())),
        "max_array",
    ) {
        out.max_array = n;
    }
    if let Some(n) = at_least_one(
        c,
        r.max_members.map(|v| (*v.get_ref(), v.span())),
        "max_members",
    ) {
        out.max_members = n;
    }
    out
}

pub(super) fn params(
    c: &mut Checker,
    raw: Option<RawParams>,
    template: &[String],
    ctx: &str,
) -> Option<ParamsConfig> {
    let r = raw?;
    let mut path = Vec::new();
    for (name, p) in r.path {
        if !template.iter().any(|t| t.trim_start_matches('*') == name) {
            c.error(
                Some(p.span()),
                format!("{ctx}: params.path.{name}: the route's path does not capture {{{name}}}"),
            );
            continue;
        }
        if let Some(req) = &p.get_ref().required {
            c.error(
                Some(req.span()),
                format!("{ctx}: params.path.{name}: path parameters are always present; required applies to query parameters"),
            );
        }
        if let Some(rule) = param(c, p, &format!("{ctx}: params.path.{name}")) {
            path.push((name, rule));
        }
    }
    let mut query = Vec::new();
    for (name, p) in r.query {
        if name.is_empty() {
            c.error(
                Some(p.span()),
                format!("{ctx}: params.query: a parameter name may not be empty"),
            );
            continue;
        }
        if let Some(rule) = param(c, p, &format!("{ctx}: params.query.{name}")) {
            query.push((name, rule));
        }
    }
    let reject_unknown_query = match r.unknown_query.as_ref().map(|u| u.get_ref().as_str()) {
        None | Some("allow") => false,
        Some("reject") => true,
        Some(other) => {
            c.error(
                r.unknown_query.as_ref().map(|u| u.span()),
                format!(
                    "{ctx}: params.unknown_query {other:?} is not known; expected \"allow\" or \"reject\""
                ),
            );
            false
        }
    };
    Some(ParamsConfig {
        path,
        query,
        reject_unknown_query,
    })
}

fn param(c: &mut Checker, raw: Spanned<RawParam>, ctx: &str) -> Option<ParamRule> {
    let p = raw.into_inner();
    let errors_before = c.found.len();
    let kind_name = p.kind.get_ref().as_str();
    let numeric = matches!(kind_name, "integer" | "number");
    // Rules that do not fit the type are errors: a `maximum` on a string would otherwise be
    // silently ignored, and the route would accept what its author meant to refuse.
    let misplaced: [(&str, Option<Range<usize>>, bool); 6] = [
        ("minimum", p.minimum.as_ref().map(|v| v.span()), numeric),
        ("maximum", p.maximum.as_ref().map(|v| v.span()), numeric),
        (
            "min_length",
            p.min_length.as_ref().map(|v| v.span()),
            kind_name == "string",
        ),
        (
            "max_length",
            p.max_length.as_ref().map(|v| v.span()),
            kind_name == "string",
        ),
        (
            "pattern",
            p.pattern.as_ref().map(|v| v.span()),
            kind_name == "string",
        ),
        (
            "enum",
            p.values.as_ref().map(|v| v.span()),
            matches!(kind_name, "string" | "integer"),
        ),
    ];
    for (rule, span, fits) in misplaced {
        if span.is_some() && !fits {
            c.error(
                span,
                format!("{ctx}: {rule} does not apply to a {kind_name} parameter"),
            );
        }
    }
    let kind = match kind_name {
        "string" => {
            let (min_length, max_length) = (
                p.min_length.as_ref().map(|v| *v.get_ref()),
                p.max_length.as_ref().map(|v| *v.get_ref()),
            );
            if let (Some(lo), Some(hi)) = (min_length, max_length) {
                if lo > hi {
                    c.error(
                        p.min_length.as_ref().map(|v| v.span()),
                        format!("{ctx}: min_length ({lo}) is greater than max_length ({hi})"),
                    );
                }
            }
            let pattern = p.pattern.as_ref().and_then(|pat| {
                match regex::RegexBuilder::new(pat.get_ref())
                    .size_limit(PATTERN_SIZE_LIMIT)
                    .build()
                {
                    Ok(re) => Some(re),
                    Err(e) => {
                        c.error(
                            Some(pat.span()),
                            format!(
                                "{ctx}: pattern is not a valid regular expression: {}",
                                regex_reason(&e)
                            ),
                        );
                        None
                    }
                }
            });
            let values = enum_values(c, &p.values, ctx, |v| match v {
                RawScalar::Str(s) => Some(s.clone()),
                _ => None,
            });
            ParamKind::String {
                min_length,
                max_length,
                pattern,
                values,
            }
        }
        "integer" => {
            let bound = |c: &mut Checker, v: &Option<Spanned<RawScalar>>, name: &str| match v {
                None => None,
                Some(s) => match s.get_ref() {
                    RawScalar::Int(n) => Some(*n),
                    _ => {
                        c.error(
                            Some(s.span()),
                            format!("{ctx}: {name} of an integer parameter must be an integer"),
                        );
                        None
                    }
                },
            };
            let minimum = bound(c, &p.minimum, "minimum");
            let maximum = bound(c, &p.maximum, "maximum");
            if let (Some(lo), Some(hi)) = (minimum, maximum) {
                if lo > hi {
                    c.error(
                        p.minimum.as_ref().map(|v| v.span()),
                        format!("{ctx}: minimum ({lo}) is greater than maximum ({hi})"),
                    );
                }
            }
            let values = enum_values(c, &p.values, ctx, |v| match v {
                RawScalar::Int(n) => Some(*n),
                _ => None,
            });
            ParamKind::Integer {
                minimum,
                maximum,
                values,
            }
        }
        "number" => {
            let bound = |c: &mut Checker, v: &Option<Spanned<RawScalar>>, name: &str| match v {
                None => None,
                Some(s) => match s.get_ref() {
                    RawScalar::Int(n) => Some(*n as f64),
                    RawScalar::Float(f) if f.is_finite() => Some(*f),
                    _ => {
                        c.error(
                            Some(s.span()),
                            format!("{ctx}: {name} of a number parameter must be a finite number"),
                        );
                        None
                    }
                },
            };
            let minimum = bound(c, &p.minimum, "minimum");
            let maximum = bound(c, &p.maximum, "maximum");
            if let (Some(lo), Some(hi)) = (minimum, maximum) {
                if lo > hi {
                    c.error(
                        p.minimum.as_ref().map(|v| v.span()),
                        format!("{ctx}: minimum ({lo}) is greater than maximum ({hi})"),
                    );
                }
            }
            ParamKind::Number { minimum, maximum }
        }
        "boolean" => ParamKind::Boolean,
        "uuid" => ParamKind::Uuid,
        other => {
            c.error(
                Some(p.kind.span()),
                format!("{ctx}: type {other:?} is not known; expected string, integer, number, boolean or uuid"),
            );
            return None;
        }
    };
    if c.found[errors_before..]
        .iter()
        .any(|d| d.severity == crate::Severity::Error)
    {
        return None;
    }
    Some(ParamRule {
        required: p.required.is_some_and(|r| *r.get_ref()),
        kind,
    })
}

fn enum_values<T>(
    c: &mut Checker,
    raw: &Option<Spanned<Vec<RawScalar>>>,
    ctx: &str,
    take: impl Fn(&RawScalar) -> Option<T>,
) -> Vec<T> {
    let Some(raw) = raw else { return Vec::new() };
    if raw.get_ref().is_empty() {
        c.error(
            Some(raw.span()),
            format!("{ctx}: enum is empty; list the accepted values or leave it out"),
        );
        return Vec::new();
    }
    let mut out = Vec::new();
    for v in raw.get_ref() {
        match take(v) {
            Some(t) => out.push(t),
            None => {
                c.error(
                    Some(raw.span()),
                    format!(
                        "{ctx}: enum value {} does not have the parameter's type",
                        scalar_text(v)
                    ),
                );
                return Vec::new();
            }
        }
    }
    out
}

/// The one line of a regex error that says what is wrong (its display also draws the pattern
/// with a caret, over several lines, which does not fit a one-line diagnostic).
fn regex_reason(e: &regex::Error) -> String {
    let text = e.to_string();
    text.lines()
        .find_map(|l| l.trim().strip_prefix("error: "))
        .map_or_else(
            || text.lines().last().unwrap_or("").trim().to_string(),
            str::to_string,
        )
}

fn scalar_text(v: &RawScalar) -> String {
    match v {
        RawScalar::Int(n) => n.to_string(),
        RawScalar::Float(f) => f.to_string(),
        RawScalar::Str(s) => format!("{s:?}"),
        RawScalar::Bool(b) => b.to_string(),
    }
}
