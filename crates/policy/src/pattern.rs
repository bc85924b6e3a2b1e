//! The `pattern` check of the streaming schema walk ([`crate::StreamSchema`]).
//!
//! Most patterns in request schemas are one character class repeated over the whole string:
//! `^[A-Z0-9-]{3,20}$`, `^[a-f0-9]{64}$`, `^[a-z_]+$`. Those are checked here without a regex
//! engine: every character in the class, their number within the bounds. Why: jsonschema's
//! regex keeps its fast per-thread cache only for the first thread that uses it; on every other
//! worker each match takes a cache from a locked pool and puts it back (`Pool::get_slow`,
//! `put_value`). On the issue-5 benchmark's order (24 SKUs) the pattern checks took ~0.9 µs
//! per request of the ~8.5 µs of user time its policies added: the search ~380 ns, the pool
//! ~315 ns, fancy-regex's and jsonschema's dispatch the rest (perf, bench/RESULTS.md).
//!
//! Only patterns whose meaning is the same in every regex dialect take this path: anchored at
//! both ends, one bracketed class of ASCII letters, digits, `_`, `.` and `-` (ranges within
//! one kind), and a plain quantifier. Anything else (escapes, negation, alternation, other
//! characters) is matched by jsonschema itself, so its ECMA-262 dialect stays the rule; a
//! differential property test checks the class path against jsonschema.

use serde_json::Value;
use std::cell::RefCell;

/// A compiled `pattern`.
pub(crate) enum Pattern {
    /// `^[class]{min,max}$`: whether each byte is allowed (a table, not the 128 bits
    /// `class_run` gives: a shift of a `u128` by a byte branches on which half, and a SKU's
    /// letters and digits sit in different halves), and the bounds on the length.
    Class {
        allowed: Box<[bool; 256]>,
        min: u64,
        max: Option<u64>,
    },
    /// jsonschema's matcher for `{"pattern": ...}`.
    Full(jsonschema::Validator),
}

impl Pattern {
    /// The check for the `pattern` keyword's value, or `None` if jsonschema refuses it.
    pub(crate) fn compile(value: &Value) -> Option<Pattern> {
        let text = value.as_str()?;
        if let Some((allowed, min, max)) = class_run(text) {
            let table = std::array::from_fn(|b| b < 128 && allowed >> b & 1 == 1);
            return Some(Pattern::Class {
                allowed: Box::new(table),
                min,
                max,
            });
        }
        let mut one = serde_json::Map::new();
        one.insert("pattern".into(), value.clone());
        Some(Pattern::Full(
            jsonschema::draft202012::new(&Value::Object(one)).ok()?,
        ))
    }

    /// Whether `v` matches. `scratch` is a reusable `Value::String` for the full matcher, so
    /// that matching allocates nothing after the first string.
    pub(crate) fn matches(&self, v: &str, scratch: &RefCell<Value>) -> bool {
        match self {
            Pattern::Class { allowed, min, max } => {
                // Every allowed character is ASCII, so characters are bytes here, and any
                // other byte (also of a multi-byte character) fails the class.
                let n = v.len() as u64;
                n >= *min
                    && max.is_none_or(|m| n <= m)
                    && v.bytes().all(|b| allowed[usize::from(b)])
            }
            Pattern::Full(validator) => {
                let mut scratch = scratch.borrow_mut();
                if let Value::String(s) = &mut *scratch {
                    s.clear();
                    s.push_str(v);
                }
                validator.is_valid(&scratch)
            }
        }
    }
}

/// Characters a class may hold on the class path.
fn plain(c: u8) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-')
}

/// Whether `a-b` is a range within one kind (digits, lower case, upper case).
fn same_kind(a: u8, b: u8) -> bool {
    a <= b
        && ((a.is_ascii_digit() && b.is_ascii_digit())
            || (a.is_ascii_lowercase() && b.is_ascii_lowercase())
            || (a.is_ascii_uppercase() && b.is_ascii_uppercase()))
}

/// `^[class]quantifier$` as (allowed bytes, minimum, maximum), or `None` for any other form.
fn class_run(p: &str) -> Option<(u128, u64, Option<u64>)> {
    let body = p.strip_prefix("^[")?.strip_suffix('$')?;
    let (class, quantifier) = body.split_once(']')?;
    let class = class.as_bytes();
    if class.is_empty() {
        return None;
    }
    let mut allowed = 0u128;
    let mut i = 0;
    while i < class.len() {
        let c = class[i];
        if !plain(c) {
            return None;
        }
        if c != b'-' && class.get(i + 1) == Some(&b'-') && i + 2 < class.len() {
            // A range `a-b`.
            let end = class[i + 2];
            if !plain(end) || end == b'-' || !same_kind(c, end) {
                return None;
            }
            for b in c..=end {
                allowed |= 1 << b;
            }
            i += 3;
            continue;
        }
        // A `-` is literal only first or last in the class.
        if c == b'-' && i != 0 && i != class.len() - 1 {
            return None;
        }
        allowed |= 1 << c;
        i += 1;
    }
    let (min, max) = match quantifier {
        "" => (1, Some(1)),
        "+" => (1, None),
        "*" => (0, None),
        q => {
            let inner = q.strip_prefix('{')?.strip_suffix('}')?;
            let number = |s: &str| -> Option<u64> {
                // Plain decimal only: no sign, no leading zero (left to the regex engine).
                if s.is_empty()
                    || s.len() > 4
                    || (s.len() > 1 && s.starts_with('0'))
                    || !s.bytes().all(|b| b.is_ascii_digit())
                {
                    return None;
                }
                s.parse().ok()
            };
            match inner.split_once(',') {
                None => {
                    let n = number(inner)?;
                    (n, Some(n))
                }
                Some((lo, "")) => (number(lo)?, None),
                Some((lo, hi)) => {
                    let (lo, hi) = (number(lo)?, number(hi)?);
                    if lo > hi {
                        return None;
                    }
                    (lo, Some(hi))
                }
            }
        }
    };
    Some((allowed, min, max))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn full(p: &str) -> jsonschema::Validator {
        jsonschema::draft202012::new(&json!({ "pattern": p })).expect("pattern compiles")
    }

    #[test]
    fn the_common_shapes_take_the_class_path_and_the_rest_do_not() {
        for p in [
            "^[A-Z0-9-]{3,20}$",
            "^[a-f0-9]{64}$",
            "^[a-z_]+$",
            "^[-.a-z]*$",
            "^[0-9]$",
            "^[A-Za-z]{2,}$",
        ] {
            assert!(class_run(p).is_some(), "{p}");
        }
        for p in [
            "[a-z]+",
            "^[a-z]+",
            "^[^a-z]+$",
            "^[\\d]+$",
            "^[a-z]{3,2}$",
            "^[a-z]{1,99999}$",
            "^[z-a]$",
            "^[a-Z]$",
            "^[a-z ]$",
            "^[a-b-c]$",
            "^[a-z]+?$",
            "^[a-z]|[0-9]$",
            "^[a-z][0-9]$",
            "^[]$",
            "^[a-z]{,3}$",
            "^[a-z]{01,3}$",
            "^[a-z]{+1}$",
            "^[é]$",
        ] {
            assert!(class_run(p).is_none(), "{p}");
        }
        let (allowed, min, max) = class_run("^[A-Z0-9-]{3,20}$").expect("class");
        assert_eq!((min, max), (3, Some(20)));
        assert!(allowed >> b'Q' & 1 == 1 && allowed >> b'-' & 1 == 1);
        assert!(allowed >> b'a' & 1 == 0 && allowed >> b'_' & 1 == 0);
    }

    fn piece() -> impl Strategy<Value = &'static str> {
        prop::sample::select(vec![
            "A-Z", "a-z", "0-9", "a-f", "C-F", "3-7", "-", "_", ".", "x", "Q", "5", "z-a", "a-9",
        ])
    }

    proptest! {
        /// Wherever the class path applies, it decides as jsonschema's regex does.
        #[test]
        fn the_class_path_agrees_with_jsonschema(
            pieces in prop::collection::vec(piece(), 1..4),
            quantifier in prop::sample::select(vec!["", "+", "*", "{2}", "{1,3}", "{0,}", "{2,5}", "{0,0}"]),
            inputs in prop::collection::vec("[A-Za-z0-9_.\\-é\\n ]{0,7}", 1..8),
        ) {
            let p = format!("^[{}]{}$", pieces.concat(), quantifier);
            let Some(Pattern::Class { .. }) = Pattern::compile(&json!(p)) else {
                // Not the class path: jsonschema's own matcher, nothing to compare.
                return Ok(());
            };
            let ours = Pattern::compile(&json!(p)).expect("compiles");
            let theirs = full(&p);
            let scratch = RefCell::new(Value::String(String::new()));
            for s in inputs {
                prop_assert_eq!(
                    ours.matches(&s, &scratch),
                    theirs.is_valid(&json!(s)),
                    "pattern {} on {:?}", p, s
                );
            }
        }
    }
}
