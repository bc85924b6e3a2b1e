//! The walk's first try: a byte scanner for the JSON most request bodies are, checked
//! against the same [`Walk`] rules without serde_json's visitor machinery.
//!
//! Why: on the 1 KiB order of the issue-5 benchmark, serde_json's tokenizer and the visitor
//! calls were about two thirds of all the instructions the validation policy spent
//! (bench/RESULTS.md). Most bodies hold only strings without escapes and integers, which
//! need no decoding: the body is checked as UTF-8 once, so a string's text is the bytes
//! between its quotes (its length in code points is counted where a rule needs it).
//!
//! The scanner answers only for such documents. A string with an escape, a number with a
//! fraction or an exponent, an integer serde_json would not give as `u64`/`i64` (`-0`,
//! beyond 64 bits): for any of those it says [`Unsure`](Stop::Unsure)
//! and the serde_json walk runs instead, so every value it checks is exactly the value that
//! walk would have checked, and its verdict is that walk's. JSON it finds malformed is
//! refused; refusing is always safe here, since a refusal only sends the body down the full
//! path, which reports the error itself.

use super::{Node, Num, Scalar, Walk, ARRAY, BOOLEAN, NULL, OBJECT};
use std::fmt;

/// Why the scan stopped.
#[derive(Debug)]
pub(super) enum Stop {
    /// Not valid: the schema, the limits or the JSON grammar refuse it.
    Refuse,
    /// Something the scanner leaves to the serde_json walk.
    Unsure,
}

/// The error type [`Walk`]'s checks are instantiated with here: they only need "refused".
#[derive(Debug)]
struct Refused;

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("not accepted")
    }
}

impl std::error::Error for Refused {}

impl serde::de::Error for Refused {
    fn custom<T: fmt::Display>(_: T) -> Self {
        Refused
    }
}

impl From<Refused> for Stop {
    fn from(_: Refused) -> Stop {
        Stop::Refuse
    }
}

/// Deeper documents are left to the serde_json walk, whose recursion limit (128) then holds
/// exactly as it always has; this one only keeps the scan's own recursion short.
const MAX_NESTING: u32 = 64;

/// Checks the document `text` against `walk`: `Ok` when it is valid, `Err(Refuse)` when it
/// is not, `Err(Unsure)` when the serde_json walk has to decide.
pub(super) fn document(text: &str, walk: Walk<'_>) -> Result<(), Stop> {
    let mut s = Scan {
        text,
        b: text.as_bytes(),
        i: 0,
        clean: !has_control(text.as_bytes()),
    };
    s.value(walk)?;
    s.ws();
    if s.i == s.b.len() {
        Ok(())
    } else {
        Err(Stop::Refuse)
    }
}

struct Scan<'t> {
    text: &'t str,
    b: &'t [u8],
    i: usize,
    /// No byte of the body is below 0x20 (compact JSON: no whitespace between tokens), so no
    /// string holds a control character and its end is its first quote unless a backslash
    /// comes first.
    clean: bool,
}

impl<'t> Scan<'t> {
    /// Skips JSON whitespace (space, tab, line feed, carriage return).
    fn ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.b.get(self.i) {
            self.i += 1;
        }
    }

    /// The next byte after whitespace, not consumed. Compact JSON has none, so the first
    /// byte is tested once before the whitespace loop.
    #[inline(always)]
    fn peek(&mut self) -> Option<u8> {
        match self.b.get(self.i) {
            Some(&c) if c > b' ' => Some(c),
            _ => {
                self.ws();
                self.b.get(self.i).copied()
            }
        }
    }

    fn value(&mut self, w: Walk<'_>) -> Result<(), Stop> {
        match self.peek() {
            Some(b'{') => self.object(w),
            Some(b'[') => self.array(w),
            Some(b'"') => {
                let s = self.string()?;
                Ok(w.string::<Refused>(s)?)
            }
            Some(b'-' | b'0'..=b'9') => {
                let n = self.number()?;
                Ok(w.number::<Refused>(n)?)
            }
            Some(b't') => {
                self.literal(b"true")?;
                Ok(w.scalar::<Refused>(BOOLEAN, Scalar::Bool(true))?)
            }
            Some(b'f') => {
                self.literal(b"false")?;
                Ok(w.scalar::<Refused>(BOOLEAN, Scalar::Bool(false))?)
            }
            Some(b'n') => {
                self.literal(b"null")?;
                Ok(w.scalar::<Refused>(NULL, Scalar::Null)?)
            }
            _ => Err(Stop::Refuse),
        }
    }

    fn literal(&mut self, word: &[u8]) -> Result<(), Stop> {
        if self.b[self.i..].starts_with(word) {
            self.i += word.len();
            Ok(())
        } else {
            Err(Stop::Refuse)
        }
    }

    /// A string at its opening quote: its text, when it holds no escapes.
    fn string(&mut self) -> Result<&'t str, Stop> {
        self.i += 1;
        let start = self.i;
        if self.clean {
            // memchr's vector search: on the benchmark order's 500-byte string about a tenth
            // of the instructions of the word loop below. (A first word checked before it,
            // for short strings, measured 1k instructions worse on the whole order.)
            return match memchr::memchr2(b'"', b'\\', &self.b[start..]) {
                Some(n) if self.b[start + n] == b'"' => {
                    self.i = start + n + 1;
                    Ok(&self.text[start..start + n])
                }
                Some(_) => Err(Stop::Unsure),
                None => Err(Stop::Refuse),
            };
        }
        // Eight bytes at a time: the first byte that ends the plain run is found from a
        // word's mask, so short strings (most keys and values) take one step, not a byte
        // loop. Only the last few bytes of the body go one by one.
        while let Some(chunk) = self.b.get(self.i..self.i + 8) {
            let mut word = [0u8; 8];
            word.copy_from_slice(chunk);
            let stop = stop_bytes(u64::from_le_bytes(word));
            if stop != 0 {
                self.i += (stop.trailing_zeros() / 8) as usize;
                return self.string_end(start);
            }
            self.i += 8;
        }
        while let Some(&b) = self.b.get(self.i) {
            if stop_bytes(u64::from(b)) & 0x80 != 0 {
                return self.string_end(start);
            }
            self.i += 1;
        }
        Err(Stop::Refuse)
    }

    /// At the byte that ended a string's plain run: the closing quote, or what the scan
    /// does not decode, or what JSON does not allow.
    fn string_end(&mut self, start: usize) -> Result<&'t str, Stop> {
        match self.b[self.i] {
            b'"' => {
                let s = &self.text[start..self.i];
                self.i += 1;
                Ok(s)
            }
            b'\\' => Err(Stop::Unsure),
            _ => Err(Stop::Refuse),
        }
    }

    /// An integer as serde_json gives it (`u64` when not negative, `i64` when negative);
    /// anything else it would give as `f64` is left to it.
    fn number(&mut self) -> Result<Num, Stop> {
        let negative = self.b[self.i] == b'-';
        if negative {
            self.i += 1;
        }
        let mut magnitude: u64 = 0;
        match self.b.get(self.i) {
            Some(b'0') => {
                self.i += 1;
                if let Some(b'0'..=b'9') = self.b.get(self.i) {
                    return Err(Stop::Refuse); // a leading zero
                }
            }
            Some(b'1'..=b'9') => {
                while let Some(&d @ b'0'..=b'9') = self.b.get(self.i) {
                    magnitude = magnitude
                        .checked_mul(10)
                        .and_then(|m| m.checked_add(u64::from(d - b'0')))
                        .ok_or(Stop::Unsure)?;
                    self.i += 1;
                }
            }
            _ => return Err(Stop::Refuse),
        }
        if let Some(b'.' | b'e' | b'E') = self.b.get(self.i) {
            return Err(Stop::Unsure);
        }
        if !negative {
            return Ok(Num::U(magnitude));
        }
        // serde_json gives `-0` as a float, and a magnitude beyond 2^63 too.
        match magnitude {
            0 => Err(Stop::Unsure),
            m if m <= 1 << 63 => Ok(Num::I(0i64.wrapping_sub_unsigned(m))),
            _ => Err(Stop::Unsure),
        }
    }

    /// As `Walk`'s `visit_seq`.
    fn array(&mut self, w: Walk<'_>) -> Result<(), Stop> {
        let rules = w.rules::<Refused>()?;
        if let Some(r) = rules {
            Walk::container::<Refused>(r, ARRAY)?;
        }
        let inner = self.enter(&w, rules.map_or(&Node::Any, |r| &r.items))?;
        self.i += 1;
        let mut count = 0u64;
        if self.peek() == Some(b']') {
            self.i += 1;
        } else {
            loop {
                self.value(inner)?;
                count += 1;
                if count > w.limits.max_array {
                    return Err(Stop::Refuse);
                }
                if self.closes(b']')? {
                    break;
                }
            }
        }
        if let Some(r) = rules {
            if r.min_items.is_some_and(|m| count < m) || r.max_items.is_some_and(|m| count > m) {
                return Err(Stop::Refuse);
            }
        }
        Ok(())
    }

    /// As `Walk`'s `visit_map`, keys checked against the string limit as `Key` does.
    fn object(&mut self, w: Walk<'_>) -> Result<(), Stop> {
        let rules = w.rules::<Refused>()?;
        if let Some(r) = rules {
            Walk::container::<Refused>(r, OBJECT)?;
        }
        let mut inner = self.enter(&w, &Node::Any)?;
        self.i += 1;
        let mut members = 0u64;
        let mut seen = 0u64;
        if self.peek() == Some(b'}') {
            self.i += 1;
        } else {
            loop {
                if self.peek() != Some(b'"') {
                    return Err(Stop::Refuse);
                }
                // A key the schema names is matched on the raw bytes, without reading it as
                // a string first (most keys of a validated body are such names).
                let at = rules.and_then(|r| r.property_at(&self.b[self.i + 1..], &mut seen));
                let len = match at {
                    Some((len, node)) => {
                        self.i += len + 2;
                        inner.node = node;
                        len
                    }
                    None => {
                        let key = self.string()?;
                        inner.node = match rules {
                            None => &Node::Any,
                            Some(r) => r.property(key, &mut seen),
                        };
                        key.len()
                    }
                };
                // As the serde_json walk's `Key`.
                if len as u64 > w.limits.max_string {
                    return Err(Stop::Refuse);
                }
                members += 1;
                if members > w.limits.max_members {
                    return Err(Stop::Refuse);
                }
                if self.peek() != Some(b':') {
                    return Err(Stop::Refuse);
                }
                self.i += 1;
                self.value(inner)?;
                if self.closes(b'}')? {
                    break;
                }
            }
        }
        if rules.is_some_and(|r| seen != r.required) {
            return Err(Stop::Refuse);
        }
        Ok(())
    }

    /// After a container's item: a comma (another item follows) or `close` (the container
    /// ends, `true`); anything else is malformed. Inlined: called after every item, and as
    /// a call it cost ~1k instructions on the 1 KiB order.
    #[inline(always)]
    fn closes(&mut self, close: u8) -> Result<bool, Stop> {
        match self.peek() {
            Some(b',') => {
                self.i += 1;
                Ok(false)
            }
            Some(c) if c == close => {
                self.i += 1;
                Ok(true)
            }
            _ => Err(Stop::Refuse),
        }
    }

    /// One container deeper: the walk's own depth limit, and serde_json's.
    fn enter<'a>(&self, w: &Walk<'a>, node: &'a Node) -> Result<Walk<'a>, Stop> {
        if w.depth >= MAX_NESTING {
            return Err(Stop::Unsure);
        }
        Ok(w.enter::<Refused>(node)?)
    }
}

/// Whether `b` holds a byte below 0x20. Folded 32 bytes at a time without an early exit,
/// which the compiler turns into vector compares (~0.15 instructions per byte).
fn has_control(b: &[u8]) -> bool {
    let mut chunks = b.chunks_exact(32);
    let mut any = 0u8;
    for c in &mut chunks {
        any |= c.iter().fold(0u8, |a, &x| a | u8::from(x < 0x20));
    }
    any != 0 || chunks.remainder().iter().any(|&x| x < 0x20)
}

/// The high bit of every byte of `x` (little-endian) that a plain string run cannot hold: a
/// quote, a backslash or a control character (below 0x20); bytes of 0x80 and above (UTF-8
/// beyond ASCII, already checked) are let through. Exact per byte: each test works on the
/// low seven bits and excludes bytes with the high bit set, so no carry crosses into the
/// next byte.
fn stop_bytes(x: u64) -> u64 {
    const LOW7: u64 = u64::from_ne_bytes([0x7f; 8]);
    const ONES: u64 = u64::from_ne_bytes([0x01; 8]);
    // High bit set where the byte's low seven bits are zero, for a byte below 0x80.
    let zero = |y: u64| !((y & LOW7).wrapping_add(LOW7) | y | LOW7);
    let quote = zero(x ^ (ONES * u64::from(b'"')));
    let backslash = zero(x ^ (ONES * u64::from(b'\\')));
    // (b & 0x7f) + 0x60 reaches 0x80 exactly when b & 0x7f >= 0x20.
    let control = !((x & LOW7).wrapping_add(ONES * 0x60) | x | LOW7);
    quote | backslash | control
}
