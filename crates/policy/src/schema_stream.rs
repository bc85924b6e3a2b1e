//! A fast path for JSON Schema validation: the common subset of the 2020-12 keywords checked
//! while the body is tokenized, together with the route's JSON structure limits, in one pass
//! that builds no tree and allocates nothing. The tokenizer is first a byte scanner of our
//! own for plain JSON (strings without escapes, integers: [`scan`]), and serde_json
//! for whatever the scanner leaves undecided; both drive the same checks ([`Walk`]).
//!
//! Why: on a 1 KiB body, building the `serde_json::Value` that jsonschema needs (and dropping
//! it) costs about four times the validation itself (bench/RESULTS.md, issue 5). Most request
//! schemas are types, properties, required, additionalProperties, lengths, bounds, patterns
//! and string enums, which can be checked on the token stream.
//!
//! The contract that keeps this safe: the fast path only ever says "valid". When it cannot
//! say so (the body fails, a number is too large to compare exactly, a key repeats in a way
//! it does not track), the caller runs the full path (limits walk, tree, jsonschema) and that
//! verdict stands, with its exact error pointers. So [`StreamSchema::accepts`] returning true
//! must imply that jsonschema accepts the same document within the same limits; a
//! differential property test checks it against jsonschema itself. A schema that uses any
//! keyword outside the subset gets no fast path at all ([`StreamSchema::compile`] gives
//! `None`), so unsupported keywords are never skipped.
//!
//! Repeated keys: the tree keeps a key's last value, and the walk checks every value, so it
//! is stricter there, never laxer. `minProperties`/`maxProperties` would count repeats
//! differently and are left to the full path.

mod scan;

use crate::pattern::Pattern;
use portcullis_config::JsonLimits;
use serde::de::{DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Number, Value};
use std::{borrow::Cow, cell::RefCell, cmp::Ordering, fmt};

const NULL: u8 = 1;
const BOOLEAN: u8 = 2;
const INTEGER: u8 = 4;
const NUMBER: u8 = 8;
const STRING: u8 = 16;
const ARRAY: u8 = 32;
const OBJECT: u8 = 64;

/// Limits for a walk that has none configured: serde_json's own recursion limit (128) still
/// stops deep nesting.
const UNBOUNDED: JsonLimits = JsonLimits {
    max_depth: u32::MAX,
    max_string: u64::MAX,
    max_array: u64::MAX,
    max_members: u64::MAX,
    explicit: false,
};

/// A request schema compiled for the streaming check.
pub struct StreamSchema {
    root: Node,
}

/// One (sub)schema.
#[derive(Default)]
enum Node {
    /// `true`, `{}` or a schema of annotations only.
    #[default]
    Any,
    /// `false`: nothing is valid.
    Never,
    Rules(Box<Rules>),
}

/// The assertions of one schema object, each optional.
#[derive(Default)]
struct Rules {
    /// Allowed instance types as bits; 0 when `type` is absent.
    types: u8,
    /// `enum` and `const`: the instance must be in every list.
    enums: Vec<Vec<Scalar>>,
    min_length: Option<u64>,
    max_length: Option<u64>,
    /// `pattern`: a plain class run checked directly, anything else by jsonschema itself
    /// (`{"pattern": ...}`), so the regex dialect is exactly the one the full path uses.
    pattern: Option<Pattern>,
    minimum: Option<Num>,
    maximum: Option<Num>,
    exclusive_minimum: Option<Num>,
    exclusive_maximum: Option<Num>,
    min_items: Option<u64>,
    max_items: Option<u64>,
    items: Node,
    /// The names of `properties` and `required`, sorted for binary search.
    names: Vec<Name>,
    /// One bit per distinct required name.
    required: u64,
    additional: Node,
    /// The four numeric bounds as one inclusive integer range, when every bound present is
    /// an integer: an integer instance is then checked with two comparisons.
    int_bounds: Option<(i128, i128)>,
}

impl Rules {
    /// `minLength` and `maxLength` on the count of code points. Out of line and cold: the
    /// byte length decides most strings without it, and inlined it kept the string check
    /// from being inlined into the scanner.
    #[cold]
    #[inline(never)]
    fn length_holds(&self, v: &str) -> bool {
        let chars = v.chars().count() as u64;
        !(self.min_length.is_some_and(|m| chars < m) || self.max_length.is_some_and(|m| chars > m))
    }

    /// The schema for the value of `key`, marking it in `seen` when it is required.
    fn property(&self, key: &str, seen: &mut u64) -> &Node {
        // A few names: length and first byte rule out most of them before any comparison of
        // the whole text (each a `memcmp` call); the binary search compares at every step.
        let name = if self.names.len() <= 8 {
            let k = key.as_bytes();
            self.names.iter().find(|n| {
                let n = n.name.as_bytes();
                n.len() == k.len() && n.first() == k.first() && n == k
            })
        } else {
            self.names
                .binary_search_by(|n| (*n.name).cmp(key))
                .ok()
                .map(|at| &self.names[at])
        };
        match name {
            Some(name) => {
                if let Some(bit) = name.bit {
                    *seen |= 1 << bit;
                }
                name.node.as_ref().unwrap_or(&self.additional)
            }
            None => &self.additional,
        }
    }

    /// The scanner's key lookup without reading the key first: when `rest` (the bytes after
    /// a key's opening quote) starts with one of the few names and its closing quote, that
    /// name's byte length and schema. A name holding no quote, backslash or control
    /// character is written the same way in every JSON text that spells it without escapes,
    /// so these bytes are exactly that key. `None` sends the key through the full read and
    /// [`Rules::property`].
    #[inline]
    fn property_at(&self, rest: &[u8], seen: &mut u64) -> Option<(usize, &Node)> {
        if self.names.len() > 8 {
            return None;
        }
        // The first eight bytes as one word, compared with each name's head under its mask:
        // no `memcmp` call for names of up to seven bytes (measured: the call and the
        // byte compares cost about as much as reading the key did).
        let mut head = [0u8; 8];
        head.copy_from_slice(rest.get(..8)?);
        let word = u64::from_le_bytes(head);
        let name = self.names.iter().find(|n| {
            let b = n.name.as_bytes();
            n.plain
                && word & n.mask == n.head
                && (b.len() < 8
                    || (rest.get(b.len()) == Some(&b'"') && rest[8..].starts_with(&b[8..])))
        })?;
        if let Some(bit) = name.bit {
            *seen |= 1 << bit;
        }
        Some((
            name.name.len(),
            name.node.as_ref().unwrap_or(&self.additional),
        ))
    }
}

/// A property name the object rules mention.
struct Name {
    name: Box<str>,
    /// The `properties` schema; `None` when only `required` names it, so its value is an
    /// additional property.
    node: Option<Node>,
    /// Its bit in `Rules::required`.
    bit: Option<u8>,
    /// Not empty, and no quote, backslash or control character: [`Rules::property_at`] may
    /// match it on the raw bytes.
    plain: bool,
    /// The name followed by its closing quote, its first eight bytes as a little-endian word
    /// (zero-padded), and the mask of the bytes that word holds.
    head: u64,
    mask: u64,
}

/// An `enum`/`const` member the walk compares: numbers, arrays and objects are left to the
/// full path (numeric equality in JSON Schema ignores representation, 1 == 1.0).
#[derive(PartialEq)]
enum Scalar {
    Null,
    Bool(bool),
    Str(Box<str>),
}

/// A number as serde_json represents it.
#[derive(Clone, Copy)]
enum Num {
    U(u64),
    I(i64),
    F(f64),
}

impl Num {
    fn of(n: &Number) -> Num {
        if let Some(u) = n.as_u64() {
            Num::U(u)
        } else if let Some(i) = n.as_i64() {
            Num::I(i)
        } else {
            Num::F(n.as_f64().unwrap_or(f64::NAN))
        }
    }

    fn integer(self) -> Option<i128> {
        match self {
            Num::U(u) => Some(u.into()),
            Num::I(i) => Some(i.into()),
            Num::F(_) => None,
        }
    }

    /// Exact comparison; `None` when it cannot be done exactly in f64 (an integer beyond 2^53
    /// against a float), and the full path decides.
    fn cmp(self, other: Num) -> Option<Ordering> {
        const EXACT: i128 = 1 << 53;
        match (self.integer(), other.integer()) {
            (Some(a), Some(b)) => Some(a.cmp(&b)),
            (Some(a), None) if a.abs() <= EXACT => (a as f64).partial_cmp(&other.float()),
            (None, Some(b)) if b.abs() <= EXACT => self.float().partial_cmp(&(b as f64)),
            (None, None) => self.float().partial_cmp(&other.float()),
            _ => None,
        }
    }

    fn float(self) -> f64 {
        match self {
            Num::F(f) => f,
            _ => f64::NAN,
        }
    }

    fn is_integer(self) -> bool {
        match self {
            Num::F(f) => f.fract() == 0.0,
            _ => true,
        }
    }
}

impl StreamSchema {
    /// The streaming form of `schema`, or `None` when it uses anything outside the subset.
    /// Call it on a schema jsonschema has already compiled.
    pub fn compile(schema: &Value) -> Option<StreamSchema> {
        Some(StreamSchema {
            root: compile(schema, true)?,
        })
    }

    /// True when `bytes` is one JSON document within `limits` (all of them when `None`) that
    /// satisfies the schema. False means "not known": run the full path.
    pub fn accepts(&self, bytes: &[u8], limits: Option<&JsonLimits>) -> bool {
        self.check(bytes, limits, true)
    }

    /// `accepts` without the byte scanner's first try: the serde_json walk alone (public for
    /// the benchmark that compares the two, and the tests).
    pub fn accepts_via_serde(&self, bytes: &[u8], limits: Option<&JsonLimits>) -> bool {
        self.check(bytes, limits, false)
    }

    fn check(&self, bytes: &[u8], limits: Option<&JsonLimits>, scan_first: bool) -> bool {
        let scratch = RefCell::new(Value::String(String::new()));
        let walk = self.walk(limits.unwrap_or(&UNBOUNDED), &scratch);
        // One UTF-8 check of the whole body, so serde_json does not check each string again
        // (measured: a tenth of the walk on the 1 KiB order). JSON that is not UTF-8 is
        // invalid anyway; the full path reports it.
        let Ok(text) = std::str::from_utf8(bytes) else {
            return false;
        };
        // The byte scanner first; only what it leaves undecided goes through serde_json.
        if scan_first {
            match scan::document(text, walk) {
                Ok(()) => return true,
                Err(scan::Stop::Refuse) => return false,
                Err(scan::Stop::Unsure) => {}
            }
        }
        let mut de = serde_json::Deserializer::from_str(text);
        walk.deserialize(&mut de).is_ok() && de.end().is_ok()
    }
}

impl StreamSchema {
    /// The walk of a whole document.
    fn walk<'a>(&'a self, limits: &'a JsonLimits, scratch: &'a RefCell<Value>) -> Walk<'a> {
        Walk {
            node: &self.root,
            limits,
            depth: 0,
            scratch,
        }
    }
}

fn compile(schema: &Value, root: bool) -> Option<Node> {
    let map = match schema {
        Value::Bool(true) => return Some(Node::Any),
        Value::Bool(false) => return Some(Node::Never),
        Value::Object(map) => map,
        _ => return None,
    };
    let mut r = Rules::default();
    let mut asserts = false;
    for (keyword, value) in map {
        asserts |= !matches!(
            keyword.as_str(),
            "$schema"
                | "$id"
                | "$defs"
                | "$comment"
                | "title"
                | "description"
                | "default"
                | "examples"
                | "deprecated"
                | "readOnly"
                | "writeOnly"
        );
        match keyword.as_str() {
            // A different meta-schema could switch vocabularies off; only the standard one.
            "$schema" if root => {
                let uri = value.as_str()?;
                if uri.trim_end_matches('#') != "https://json-schema.org/draft/2020-12/schema" {
                    return None;
                }
            }
            // Without `$ref` nothing refers to `$id` or `$defs`.
            "$id" | "$defs" if root => {}
            "$comment" | "title" | "description" | "default" | "examples" | "deprecated"
            | "readOnly" | "writeOnly" => {}
            "type" => r.types = types(value)?,
            "enum" => r.enums.push(
                value
                    .as_array()?
                    .iter()
                    .map(scalar)
                    .collect::<Option<_>>()?,
            ),
            "const" => r.enums.push(vec![scalar(value)?]),
            "minLength" => r.min_length = Some(value.as_u64()?),
            "maxLength" => r.max_length = Some(value.as_u64()?),
            "pattern" => r.pattern = Some(Pattern::compile(value)?),
            "minimum" => r.minimum = Some(Num::of(value.as_number()?)),
            "maximum" => r.maximum = Some(Num::of(value.as_number()?)),
            "exclusiveMinimum" => r.exclusive_minimum = Some(Num::of(value.as_number()?)),
            "exclusiveMaximum" => r.exclusive_maximum = Some(Num::of(value.as_number()?)),
            "minItems" => r.min_items = Some(value.as_u64()?),
            "maxItems" => r.max_items = Some(value.as_u64()?),
            // 2020-12 `items` is one schema (the array form is an older draft's).
            "items" => r.items = compile(value, false)?,
            "properties" => {
                for (name, sub) in value.as_object()? {
                    let node = compile(sub, false)?;
                    name_entry(&mut r.names, name).node = Some(node);
                }
            }
            "required" => {
                let mut bits = 0u8;
                for name in value.as_array()? {
                    let entry = name_entry(&mut r.names, name.as_str()?);
                    if entry.bit.is_none() {
                        if bits == 64 {
                            return None;
                        }
                        entry.bit = Some(bits);
                        bits += 1;
                    }
                }
                r.required = if bits == 64 {
                    u64::MAX
                } else {
                    (1u64 << bits) - 1
                };
            }
            "additionalProperties" => r.additional = compile(value, false)?,
            _ => return None,
        }
    }
    r.int_bounds = int_bounds(&r);
    Some(if asserts {
        Node::Rules(Box::new(r))
    } else {
        Node::Any
    })
}

/// `Rules::int_bounds`: `None` when a bound is not an integer (the exact comparison of
/// [`Num::cmp`] decides then).
fn int_bounds(r: &Rules) -> Option<(i128, i128)> {
    let (mut lo, mut hi) = (i128::MIN, i128::MAX);
    for (bound, shift, lower) in [
        (r.minimum, 0, true),
        (r.exclusive_minimum, 1, true),
        (r.maximum, 0, false),
        (r.exclusive_maximum, -1, false),
    ] {
        let Some(b) = bound else { continue };
        let b = b.integer()? + shift;
        if lower {
            lo = lo.max(b);
        } else {
            hi = hi.min(b);
        }
    }
    Some((lo, hi))
}

/// `Name::head` and `Name::mask` for `name`.
fn head_word(name: &str) -> (u64, u64) {
    let mut head = [0u8; 8];
    let mut mask = [0u8; 8];
    for (i, b) in name.bytes().chain([b'"']).take(8).enumerate() {
        head[i] = b;
        mask[i] = 0xff;
    }
    (u64::from_le_bytes(head), u64::from_le_bytes(mask))
}

/// The entry for `name`, added in sorted place when new.
fn name_entry<'a>(names: &'a mut Vec<Name>, name: &str) -> &'a mut Name {
    let at = match names.binary_search_by(|n| (*n.name).cmp(name)) {
        Ok(at) => at,
        Err(at) => {
            names.insert(
                at,
                Name {
                    name: name.into(),
                    node: None,
                    bit: None,
                    plain: !name.is_empty()
                        && !name.bytes().any(|b| b == b'"' || b == b'\\' || b < 0x20),
                    head: head_word(name).0,
                    mask: head_word(name).1,
                },
            );
            at
        }
    };
    &mut names[at]
}

fn types(value: &Value) -> Option<u8> {
    let one = |v: &Value| {
        Some(match v.as_str()? {
            "null" => NULL,
            "boolean" => BOOLEAN,
            "integer" => INTEGER,
            "number" => NUMBER,
            "string" => STRING,
            "array" => ARRAY,
            "object" => OBJECT,
            _ => return None,
        })
    };
    match value {
        Value::Array(list) if !list.is_empty() => {
            list.iter().try_fold(0u8, |acc, v| Some(acc | one(v)?))
        }
        Value::Array(_) => None,
        v => one(v),
    }
}

fn scalar(v: &Value) -> Option<Scalar> {
    Some(match v {
        Value::Null => Scalar::Null,
        Value::Bool(b) => Scalar::Bool(*b),
        Value::String(s) => Scalar::Str(s.as_str().into()),
        _ => return None,
    })
}

/// One value, checked against `node` at `depth` containers deep.
#[derive(Clone, Copy)]
struct Walk<'a> {
    node: &'a Node,
    limits: &'a JsonLimits,
    depth: u32,
    // One reusable `Value::String` for the pattern check, so matching allocates nothing
    // after the first string.
    scratch: &'a RefCell<Value>,
}

/// The walk stops serde_json with this; the caller only needs "not accepted".
fn no<E: serde::de::Error>() -> E {
    E::custom("not accepted")
}

impl<'a> Walk<'a> {
    /// The rules to apply, `None` for an unconstrained value.
    fn rules<E: serde::de::Error>(&self) -> Result<Option<&'a Rules>, E> {
        match self.node {
            Node::Any => Ok(None),
            Node::Never => Err(no()),
            Node::Rules(r) => Ok(Some(r)),
        }
    }

    fn typed<E: serde::de::Error>(r: &Rules, bits: u8) -> Result<(), E> {
        if r.types != 0 && r.types & bits == 0 {
            return Err(no());
        }
        Ok(())
    }

    /// The type check for an array or object, which no `enum` member (a scalar) equals.
    fn container<E: serde::de::Error>(r: &Rules, bits: u8) -> Result<(), E> {
        Self::typed(r, bits)?;
        if !r.enums.is_empty() {
            return Err(no());
        }
        Ok(())
    }

    fn scalar<E: serde::de::Error>(&self, bits: u8, s: Scalar) -> Result<(), E> {
        let Some(r) = self.rules()? else {
            return Ok(());
        };
        Self::typed(r, bits)?;
        if r.enums.iter().any(|list| !list.contains(&s)) {
            return Err(no());
        }
        Ok(())
    }

    // Inlined into the scanner: out of line it cost ~500 instructions per request in calls
    // (measured when an unrelated change moved the inlining threshold).
    #[inline]
    fn number<E: serde::de::Error>(&self, n: Num) -> Result<(), E> {
        let Some(r) = self.rules()? else {
            return Ok(());
        };
        Self::typed(
            r,
            if n.is_integer() {
                NUMBER | INTEGER
            } else {
                NUMBER
            },
        )?;
        // No enum member is a number (see `Scalar`), so an enum refuses every number.
        if !r.enums.is_empty() {
            return Err(no());
        }
        if let (Some((lo, hi)), Some(v)) = (r.int_bounds, n.integer()) {
            return if lo <= v && v <= hi {
                Ok(())
            } else {
                Err(no())
            };
        }
        let holds = |bound: Option<Num>, ok: fn(Ordering) -> bool| {
            bound.is_none_or(|b| n.cmp(b).is_some_and(ok))
        };
        if holds(r.minimum, Ordering::is_ge)
            && holds(r.maximum, Ordering::is_le)
            && holds(r.exclusive_minimum, Ordering::is_gt)
            && holds(r.exclusive_maximum, Ordering::is_lt)
        {
            Ok(())
        } else {
            Err(no())
        }
    }

    #[inline]
    fn string<E: serde::de::Error>(&self, v: &str) -> Result<(), E> {
        if v.len() as u64 > self.limits.max_string {
            return Err(no());
        }
        let Some(r) = self.rules()? else {
            return Ok(());
        };
        Self::typed(r, STRING)?;
        if r.enums.iter().any(|list| {
            !list
                .iter()
                .any(|s| matches!(s, Scalar::Str(e) if **e == *v))
        }) {
            return Err(no());
        }
        if r.min_length.is_some() || r.max_length.is_some() {
            // JSON Schema counts code points, as jsonschema does. A code point is one to four
            // bytes, so the byte length bounds the count from both sides; only a string
            // those bounds leave undecided is counted (on the benchmark order, none is).
            let bytes = v.len() as u64;
            let surely_within = r.max_length.is_none_or(|m| bytes <= m)
                && r.min_length.is_none_or(|m| bytes.div_ceil(4) >= m);
            if !surely_within && !r.length_holds(v) {
                return Err(no());
            }
        }
        if let Some(p) = &r.pattern {
            if !p.matches(v, self.scratch) {
                return Err(no());
            }
        }
        Ok(())
    }

    fn enter<E: serde::de::Error>(&self, node: &'a Node) -> Result<Walk<'a>, E> {
        let depth = self.depth + 1;
        if depth > self.limits.max_depth {
            return Err(no());
        }
        Ok(Walk {
            node,
            depth,
            ..*self
        })
    }
}

impl<'de> DeserializeSeed<'de> for Walk<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Walk<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<(), E> {
        self.scalar(BOOLEAN, Scalar::Bool(v))
    }
    fn visit_unit<E: serde::de::Error>(self) -> Result<(), E> {
        self.scalar(NULL, Scalar::Null)
    }
    fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<(), E> {
        self.number(Num::U(v))
    }
    fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<(), E> {
        self.number(Num::I(v))
    }
    fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<(), E> {
        self.number(Num::F(v))
    }
    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<(), E> {
        self.string(v)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let rules = self.rules()?;
        if let Some(r) = rules {
            Self::container(r, ARRAY)?;
        }
        let inner = self.enter(rules.map_or(&Node::Any, |r| &r.items))?;
        let mut count = 0u64;
        while seq.next_element_seed(inner)?.is_some() {
            count += 1;
            if count > self.limits.max_array {
                return Err(no());
            }
        }
        if let Some(r) = rules {
            if r.min_items.is_some_and(|m| count < m) || r.max_items.is_some_and(|m| count > m) {
                return Err(no());
            }
        }
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let rules = self.rules()?;
        if let Some(r) = rules {
            Self::container(r, OBJECT)?;
        }
        let mut inner = self.enter(&Node::Any)?;
        let mut members = 0u64;
        let mut seen = 0u64;
        while let Some(key) = map.next_key_seed(Key(self.limits.max_string))? {
            members += 1;
            if members > self.limits.max_members {
                return Err(no());
            }
            inner.node = match rules {
                None => &Node::Any,
                Some(r) => r.property(&key, &mut seen),
            };
            map.next_value_seed(inner)?;
        }
        if rules.is_some_and(|r| seen != r.required) {
            return Err(no());
        }
        Ok(())
    }
}

/// An object key, borrowed from the input when it has no escapes, within the string limit.
struct Key(u64);

impl<'de> DeserializeSeed<'de> for Key {
    type Value = Cow<'de, str>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Cow<'de, str>, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for Key {
    type Value = Cow<'de, str>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object key")
    }

    fn visit_borrowed_str<E: serde::de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
        if v.len() as u64 > self.0 {
            return Err(no());
        }
        Ok(Cow::Borrowed(v))
    }

    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
        if v.len() as u64 > self.0 {
            return Err(no());
        }
        Ok(Cow::Owned(v.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    /// What the full path decides: limits walk and tree, then jsonschema.
    fn full_path(schema: &Value, doc: &[u8], limits: &JsonLimits) -> bool {
        let validator = jsonschema::draft202012::new(schema).expect("schema compiles");
        crate::parse_json_within(doc, limits).is_ok_and(|v| validator.is_valid(&v))
    }

    fn fast(schema: &Value, doc: &str) -> bool {
        StreamSchema::compile(schema)
            .expect("streams")
            .accepts(doc.as_bytes(), Some(&JsonLimits::DEFAULT))
    }

    fn order_schema() -> Value {
        json!({
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "type": "object",
            "required": ["customer", "items"],
            "additionalProperties": false,
            "properties": {
                "customer": { "type": "string", "maxLength": 8 },
                "note": { "type": ["string", "null"] },
                "items": {
                    "type": "array", "minItems": 1, "maxItems": 2,
                    "items": {
                        "type": "object", "required": ["sku", "qty"], "additionalProperties": false,
                        "properties": {
                            "sku": { "type": "string", "pattern": "^[A-Z0-9-]{3,20}$" },
                            "qty": { "type": "integer", "minimum": 1, "maximum": 1000 },
                            "kind": { "enum": ["a", "b", null] }
                        }
                    }
                }
            }
        })
    }

    #[test]
    fn string_lengths_count_code_points_where_bytes_do_not_decide() {
        // Two-byte é and four-byte 😀: the byte length alone would say "long enough" for
        // "é" under minLength 2 and "too long" for "😀😀" under maxLength 3.
        let schema = json!({ "type": "string", "minLength": 2, "maxLength": 3 });
        let limits = JsonLimits::DEFAULT;
        for (s, valid) in [
            ("é", false),
            ("éé", true),
            ("ééé", true),
            ("éééé", false),
            ("😀", false),
            ("😀😀", true),
            ("😀a😀", true),
            ("ab", true),
            ("abcd", false),
            ("a", false),
        ] {
            let doc = serde_json::to_string(s).expect("a JSON string");
            assert_eq!(fast(&schema, &doc), valid, "{s}");
            assert_eq!(full_path(&schema, doc.as_bytes(), &limits), valid, "{s}");
        }
        // Only a lower bound: eight bytes are at least two code points whatever they hold.
        let min_only = json!({ "type": "string", "minLength": 2 });
        assert!(fast(&min_only, "\"abcdefgh\""));
        assert!(!fast(&min_only, "\"😀\""));
    }

    #[test]
    fn a_typical_schema_accepts_and_refuses_like_jsonschema() {
        let s = order_schema();
        let l = JsonLimits::DEFAULT;
        for (doc, valid) in [
            (
                r#"{"customer":"acme","items":[{"sku":"AB-1","qty":3}]}"#,
                true,
            ),
            (
                r#"{"customer":"acme","items":[{"sku":"AB-1","qty":3.0,"kind":null}],"note":null}"#,
                true,
            ),
            (
                r#"{"customer":"\u00e9\u00e9\u00e9\u00e9\u00e9\u00e9\u00e9\u00e9","items":[{"sku":"AB-1","qty":1}]}"#,
                true,
            ),
            (
                r#"{"customer":"acme","items":[{"sku":"ab-1","qty":3}]}"#,
                false,
            ),
            (
                r#"{"customer":"acme","items":[{"sku":"AB-1","qty":3.5}]}"#,
                false,
            ),
            (
                r#"{"customer":"acme","items":[{"sku":"AB-1","qty":0}]}"#,
                false,
            ),
            (
                r#"{"customer":"acme","items":[{"sku":"AB-1","qty":1001}]}"#,
                false,
            ),
            (
                r#"{"customer":"acme","items":[{"sku":"AB-1","qty":3,"kind":"c"}]}"#,
                false,
            ),
            (r#"{"customer":"acme","items":[{"sku":"AB-1"}]}"#, false),
            (r#"{"customer":"acme","items":[]}"#, false),
            (
                r#"{"customer":"acme","items":[{"sku":"AAA","qty":1},{"sku":"AAA","qty":1},{"sku":"AAA","qty":1}]}"#,
                false,
            ),
            (
                r#"{"customer":"acme-corporation","items":[{"sku":"AB-1","qty":3}]}"#,
                false,
            ),
            (
                r#"{"customer":"acme","items":[{"sku":"AB-1","qty":3}],"x":1}"#,
                false,
            ),
            (r#"{"items":[{"sku":"AB-1","qty":3}]}"#, false),
            (
                r#"{"customer":"acme","items":[{"sku":"AB-1","qty":3}]} x"#,
                false,
            ),
            (r#"["customer"]"#, false),
            ("", false),
        ] {
            assert_eq!(full_path(&s, doc.as_bytes(), &l), valid, "full path, {doc}");
            assert_eq!(fast(&s, doc), valid, "fast path, {doc}");
        }
    }

    #[test]
    fn the_limits_are_checked_in_the_same_pass() {
        let any = json!({});
        let l = JsonLimits {
            max_depth: 2,
            max_string: 3,
            max_array: 2,
            max_members: 2,
            explicit: true,
        };
        let s = StreamSchema::compile(&any).expect("streams");
        for (doc, within) in [
            (r#"[[1]]"#, true),
            (r#"[[[1]]]"#, false),
            (r#"["abc"]"#, true),
            (r#"["abcd"]"#, false),
            (r#"{"abcd":1}"#, false),
            (r#"[1,2]"#, true),
            (r#"[1,2,3]"#, false),
            (r#"{"a":1,"b":2}"#, true),
            (r#"{"a":1,"b":2,"c":3}"#, false),
        ] {
            assert_eq!(s.accepts(doc.as_bytes(), Some(&l)), within, "{doc}");
            assert_eq!(full_path(&any, doc.as_bytes(), &l), within, "{doc}");
        }
        let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        assert!(
            !s.accepts(deep.as_bytes(), None),
            "serde_json's recursion limit holds"
        );
    }

    #[test]
    fn keywords_outside_the_subset_leave_the_schema_to_the_full_path() {
        for schema in [
            json!({"$ref": "#/$defs/a", "$defs": {"a": {}}}),
            json!({"oneOf": [{}]}),
            json!({"properties": {"a": {"anyOf": [{}]}}}),
            json!({"format": "email"}),
            json!({"minProperties": 1}),
            json!({"enum": [1, "a"]}),
            json!({"const": {"a": 1}}),
            json!({"items": [{}]}),
            json!({"prefixItems": [{}]}),
            json!({"uniqueItems": true}),
            json!({"multipleOf": 2}),
            json!({"patternProperties": {"^a": {}}}),
            json!({"unevaluatedProperties": false}),
            json!({"$schema": "http://json-schema.org/draft-07/schema#"}),
            json!({"properties": {"a": {"$schema": "https://json-schema.org/draft/2020-12/schema"}}}),
            json!({"x-custom": 1}),
        ] {
            assert!(StreamSchema::compile(&schema).is_none(), "{schema}");
        }
        assert!(StreamSchema::compile(&json!(true)).is_some());
        assert!(StreamSchema::compile(&json!({"title": "t", "$comment": "c"})).is_some());
    }

    #[test]
    fn numbers_too_large_to_compare_exactly_are_left_to_the_full_path() {
        // 2^53 + 1 is not a float; against a float bound the walk does not guess.
        let s = json!({"maximum": 9007199254740992.5});
        assert!(!fast(&s, "9007199254740993"));
        let s = json!({"maximum": 9007199254740993u64});
        assert!(fast(&s, "9007199254740993"));
        assert!(!fast(&s, "9007199254740994"));
        assert!(fast(&s, "-9007199254740994"));
        let s = json!({"exclusiveMinimum": 1.5});
        assert!(fast(&s, "2") && !fast(&s, "1.5") && !fast(&s, "1"));
    }

    #[test]
    fn a_repeated_key_is_checked_at_every_value() {
        let s = json!({"properties": {"a": {"type": "integer"}}});
        // The walk checks every copy and leaves a failing one to the full path, which
        // refuses the repeated name: serde_json's tree keeps only the last value, so it
        // would otherwise accept what a first-wins upstream reads as "x".
        assert!(!full_path(&s, br#"{"a":"x","a":1}"#, &JsonLimits::DEFAULT));
        assert!(!fast(&s, r#"{"a":"x","a":1}"#));
        assert!(!full_path(&s, br#"{"a":1,"a":"x"}"#, &JsonLimits::DEFAULT));
        assert!(!fast(&s, r#"{"a":1,"a":"x"}"#));
    }

    #[test]
    fn false_and_required_without_properties() {
        let s = json!({"required": ["a"], "additionalProperties": false});
        // `a` is required but not in `properties`, so it is itself an additional property.
        assert!(!fast(&s, r#"{"a":1}"#) && !full_path(&s, br#"{"a":1}"#, &JsonLimits::DEFAULT));
        let s = json!({"properties": {"a": false}});
        assert!(!fast(&s, r#"{"a":1}"#) && fast(&s, r#"{"b":1}"#));
        let s = json!({"items": false});
        assert!(fast(&s, "[]") && !fast(&s, "[1]") && fast(&s, r#""not an array""#));
    }

    // Differential testing against jsonschema: random schemas of the subset, random documents.

    fn bound() -> impl Strategy<Value = Value> {
        prop_oneof![
            (-5i64..5).prop_map(Value::from),
            (-10i64..10).prop_map(|n| json!(n as f64 / 2.0)),
            Just(json!(9007199254740993u64)),
            Just(json!(-9007199254740993i64)),
            Just(json!(9007199254740992.0)),
        ]
    }

    fn scalar_value() -> impl Strategy<Value = Value> {
        prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            "[ab1]{0,2}".prop_map(Value::String)
        ]
    }

    fn leaf_schema() -> impl Strategy<Value = Value> {
        let kinds = prop::sample::subsequence(
            vec![
                "null", "boolean", "integer", "number", "string", "array", "object",
            ],
            0..3,
        );
        (
            kinds,
            prop::option::of(0u64..4),
            prop::option::of(0u64..4),
            prop::option::of(prop::sample::select(vec![
                "^[A-Z]+$", "a", "^\\d{2}$", "^\\w*$",
            ])),
            prop::option::of(bound()),
            prop::option::of(bound()),
            prop::option::of(bound()),
            prop::option::of(bound()),
            prop::option::of(prop::collection::vec(scalar_value(), 0..3)),
            prop::option::of(scalar_value()),
        )
            .prop_map(
                |(kinds, min_len, max_len, pattern, min, max, emin, emax, en, constant)| {
                    let mut m = serde_json::Map::new();
                    match kinds.len() {
                        0 => {}
                        1 => {
                            m.insert("type".into(), json!(kinds[0]));
                        }
                        _ => {
                            m.insert("type".into(), json!(kinds));
                        }
                    }
                    let mut put = |k: &str, v: Option<Value>| {
                        if let Some(v) = v {
                            m.insert(k.into(), v);
                        }
                    };
                    put("minLength", min_len.map(Value::from));
                    put("maxLength", max_len.map(Value::from));
                    put("pattern", pattern.map(Value::from));
                    put("minimum", min);
                    put("maximum", max);
                    put("exclusiveMinimum", emin);
                    put("exclusiveMaximum", emax);
                    put("enum", en.map(Value::Array));
                    put("const", constant);
                    Value::Object(m)
                },
            )
    }

    /// Property names: one byte, prefixes of each other, and names around the scanner's
    /// eight-byte word (seven, eight and ten bytes).
    fn key() -> impl Strategy<Value = String> {
        prop::sample::select(vec![
            "a",
            "ab",
            "b",
            "c",
            "abcdefg",
            "abcdefgh",
            "abcdefghij",
        ])
        .prop_map(String::from)
    }

    fn schema() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![8 => leaf_schema(), 1 => any::<bool>().prop_map(Value::Bool)];
        leaf.prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                (
                    inner.clone(),
                    prop::option::of(0u64..3),
                    prop::option::of(0u64..4)
                )
                    .prop_map(|(items, min, max)| {
                        let mut s = json!({"type": "array", "items": items});
                        if let Some(m) = min {
                            s["minItems"] = m.into();
                        }
                        if let Some(m) = max {
                            s["maxItems"] = m.into();
                        }
                        s
                    }),
                (
                    prop::collection::btree_map(key(), inner.clone(), 0..3),
                    prop::sample::subsequence(vec!["a", "b", "c", "d", "ab", "abcdefgh"], 0..3),
                    prop::option::of(prop_oneof![any::<bool>().prop_map(Value::Bool), inner]),
                )
                    .prop_map(|(props, required, additional)| {
                        let mut s = json!({
                            "properties": Value::Object(props.into_iter().collect()),
                            "required": required,
                        });
                        if let Some(a) = additional {
                            s["additionalProperties"] = a;
                        }
                        s
                    }),
            ]
        })
    }

    fn document() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            (-6i64..6).prop_map(Value::from),
            (-12i64..12).prop_map(|n| json!(n as f64 / 2.0)),
            prop::sample::select(vec![
                json!(9007199254740993u64),
                json!(9007199254740992u64),
                json!(-9007199254740993i64),
                json!(18446744073709551615u64),
                json!(1e300),
            ]),
            "[ab1AZ_\u{e9} ]{0,5}".prop_map(Value::String),
        ];
        leaf.prop_recursive(4, 32, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::btree_map(
                    prop_oneof![key(), Just("d".to_owned()), Just("abcdefghi".to_owned())],
                    inner,
                    0..4,
                )
                .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    /// Whether a document or schema holds an integer beyond 2^53: compared with a float, the
    /// walk leaves it to the full path.
    fn has_large_integer(v: &Value) -> bool {
        match v {
            Value::Number(n) => {
                n.as_u64().is_some_and(|u| u > 1 << 53)
                    || n.as_i64().is_some_and(|i| i < -(1 << 53))
            }
            Value::Array(a) => a.iter().any(has_large_integer),
            Value::Object(o) => o.values().any(has_large_integer),
            _ => false,
        }
    }

    /// The scanner's verdict (`None` when it leaves the document to serde_json).
    fn scanned(stream: &StreamSchema, text: &str, limits: &JsonLimits) -> Option<bool> {
        let scratch = RefCell::new(Value::String(String::new()));
        match scan::document(text, stream.walk(limits, &scratch)) {
            Ok(()) => Some(true),
            Err(scan::Stop::Refuse) => Some(false),
            Err(scan::Stop::Unsure) => None,
        }
    }

    #[test]
    fn the_scanner_reads_the_json_grammar_exactly_and_leaves_what_needs_decoding() {
        let any = StreamSchema::compile(&json!(true)).expect("streams");
        let l = JsonLimits::DEFAULT;
        for doc in [
            "0",
            "-1",
            " [ ] ",
            "{}",
            "[1,2,[3]]",
            r#"{"a":{"b":[true,false,null]}}"#,
            "18446744073709551615",
            "-9223372036854775808",
            "\"\x7f\"",
            "\t\n\r 1 ",
            // Beyond ASCII: the body is checked as UTF-8 once, and lengths count code points.
            "\"\u{e9}\"",
            "\n\"\u{e9}\u{1f600}\"",
        ] {
            assert_eq!(scanned(&any, doc, &l), Some(true), "{doc:?}");
        }
        for doc in [
            "",
            "01",
            "-",
            "-a",
            "+1",
            "1 2",
            "[1,]",
            "[,1]",
            r#"{"a":1,}"#,
            r#"{"a"}"#,
            r#"{a:1}"#,
            "tru",
            "nulll",
            "[",
            "\"abc",
            "\"a\u{1}b\"",
            "\u{c}1",
            "[1]]",
        ] {
            assert_eq!(scanned(&any, doc, &l), Some(false), "{doc:?}");
            assert!(serde_json::from_str::<Value>(doc).is_err(), "{doc:?}");
        }
        // Decoding, floats and integers serde_json gives as floats: the serde_json walk's.
        for doc in [
            r#""\u0041""#,
            "1.5",
            "1e3",
            "-0",
            "18446744073709551616",
            "-9223372036854775809",
            r#"{"\u0061":1}"#,
        ] {
            assert_eq!(scanned(&any, doc, &l), None, "{doc:?}");
            assert_eq!(
                any.accepts(doc.as_bytes(), Some(&l)),
                any.check(doc.as_bytes(), Some(&l), false),
                "{doc:?}"
            );
        }
        let deep = format!("{}{}", "[".repeat(100), "]".repeat(100));
        assert_eq!(
            scanned(
                &any,
                &deep,
                &JsonLimits {
                    max_depth: 1000,
                    ..l
                }
            ),
            None
        );
    }

    /// The scanner matches the schema's names on the raw bytes: prefixes, names around its
    /// eight-byte word, keys at the end of the body, and names it must not match that way.
    #[test]
    fn keys_match_on_raw_bytes_as_in_the_tree() {
        let schema = json!({
            "type": "object",
            "additionalProperties": false,
            "required": ["a"],
            "properties": {
                "a": { "type": "integer", "exclusiveMinimum": 0, "exclusiveMaximum": 3 },
                "ab": { "type": "string", "maxLength": 3 },
                "abcdefg": { "type": "null" },
                "abcdefgh": { "type": "boolean" },
                "abcdefghij": { "type": "integer", "minimum": 1.5 },
                "q\"t": { "type": "null" },
                "b\\s": { "type": "null" },
                "\u{e9}t\u{e9}": { "type": "integer" }
            }
        });
        let stream = StreamSchema::compile(&schema).expect("streams");
        for doc in [
            r#"{"a":1}"#,
            r#"{"a":2,"ab":"x"}"#,
            r#"{"a":3}"#,
            r#"{"a":0}"#,
            r#"{"ab":"x"}"#,
            r#"{"a":1,"abc":1}"#,
            r#"{"a":1,"abcdefg":null,"abcdefgh":true,"abcdefghij":2}"#,
            r#"{"a":1,"abcdefgh":null}"#,
            r#"{"a":1,"abcdefghi":true}"#,
            r#"{"a":1,"abcdefghij":1}"#,
            r#"{"a":1,"abcdefghijk":2}"#,
            r#"{"a":1,"q\"t":null}"#,
            r#"{"a":1,"b\\s":null}"#,
            "{\"a\":1,\"\u{e9}t\u{e9}\":5}",
            "{\"a\":1,\"\u{e9}t\u{e9}\":\"x\"}",
            "{\"a\":1,\"ab\":\"\u{e9}\u{e9}\u{e9}\"}",
            "{\"a\":1,\"ab\":\"\u{e9}\u{e9}\u{e9}\u{e9}\"}",
            r#"{"\u0061":1}"#,
            r#"{"ab":"x","a":1}"#,
            r#"{ "a" : 1 , "ab" : "x" }"#,
            "{\"a\":1,\n\"ab\":\"x\ty\"}",
            "{\"a\":1,\n\"ab\":\"xy\"}",
        ] {
            let full = full_path(&schema, doc.as_bytes(), &JsonLimits::DEFAULT);
            assert_eq!(
                stream.accepts(doc.as_bytes(), Some(&JsonLimits::DEFAULT)),
                full,
                "{doc}"
            );
        }
        // The cases above are not all alike: some pass, some fail.
        assert!(stream.accepts(br#"{"a":2,"ab":"x"}"#, Some(&JsonLimits::DEFAULT)));
        assert!(!stream.accepts(br#"{"a":3}"#, Some(&JsonLimits::DEFAULT)));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2048))]

        /// Where the scanner decides, it decides as the serde_json walk does.
        #[test]
        fn the_scanner_agrees_with_the_serde_walk(schema in schema(), doc in document(), d in 1u32..6, s in 0u64..8, a in 0u64..5, m in 0u64..5) {
            let stream = StreamSchema::compile(&schema).expect("the subset streams");
            // Compact (no byte below 0x20: the scanner's memchr path) and pretty-printed
            // (whitespace between tokens: its word loop).
            for text in [doc.to_string(), serde_json::to_string_pretty(&doc).expect("json")] {
                for limits in [JsonLimits::DEFAULT, JsonLimits { max_depth: d, max_string: s, max_array: a, max_members: m, explicit: true }] {
                    if let Some(verdict) = scanned(&stream, &text, &limits) {
                        prop_assert_eq!(verdict, stream.check(text.as_bytes(), Some(&limits), false), "{} against {}", text, schema);
                    }
                }
            }
        }

        /// Token soup: whatever the scanner accepts serde_json parses, and whatever it refuses
        /// as malformed serde_json refuses too.
        #[test]
        fn the_scanner_reads_json_as_serde_json_does(doc in prop::collection::vec(prop::sample::select(vec![
            "[", "]", "{", "}", ",", ":", " ", "\"a\"", "\"", "0", "01", "7", "-", "-0", "-3", "1.5", "1e2",
            "true", "tru", "null", "false", "\"\\u0041\"", "\"\u{e9}\"", "\u{c}", "x", "\\",
        ]), 0..14).prop_map(|t| t.concat())) {
            let any = StreamSchema::compile(&json!(true)).expect("streams");
            if let Some(verdict) = scanned(&any, &doc, &UNBOUNDED) {
                prop_assert_eq!(verdict, serde_json::from_str::<Value>(&doc).is_ok(), "{:?}", doc);
            }
        }

        /// The fast path never accepts what the full path refuses, and (without repeated keys
        /// or huge integers, which it may leave to the full path) accepts all it accepts.
        #[test]
        fn agrees_with_jsonschema(schema in schema(), doc in document(), escape_keys in any::<bool>(), d in 1u32..6, s in 0u64..8, a in 0u64..5, m in 0u64..5) {
            let Some(stream) = StreamSchema::compile(&schema) else {
                return Err(TestCaseError::fail(format!("the subset did not stream: {schema}")));
            };
            // Keys written with escapes must match `properties` as the tree does; compact and
            // pretty-printed text take the scanner's two string paths.
            for plain in [doc.to_string(), serde_json::to_string_pretty(&doc).expect("json")] {
                let text = if escape_keys { plain.replace("\"a\":", "\"\\u0061\":") } else { plain };
                for limits in [JsonLimits::DEFAULT, JsonLimits { max_depth: d, max_string: s, max_array: a, max_members: m, explicit: true }] {
                    let fast = stream.accepts(text.as_bytes(), Some(&limits));
                    let full = full_path(&schema, text.as_bytes(), &limits);
                    prop_assert!(!fast || full, "fast accepted what jsonschema refuses: {} against {}", text, schema);
                    if !has_large_integer(&doc) && !has_large_integer(&schema) {
                        prop_assert_eq!(fast, full, "{} against {}", text, schema);
                    }
                }
            }
        }

        /// Whatever the bytes, the walk answers without panicking, and never accepts what the
        /// full path refuses.
        #[test]
        fn arbitrary_bytes_are_never_accepted_wrongly(bytes in prop::collection::vec(any::<u8>(), 0..128)) {
            let schema = json!({"type": ["object", "array", "string"], "items": {"maxLength": 2}});
            let stream = StreamSchema::compile(&schema).expect("streams");
            if stream.accepts(&bytes, Some(&JsonLimits::DEFAULT)) {
                prop_assert!(full_path(&schema, &bytes, &JsonLimits::DEFAULT));
            }
        }
    }
}
