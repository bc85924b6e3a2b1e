//! Structural limits on JSON request bodies (OWASP API4): nesting depth, string length (keys
//! and values), array length and object members. A small body can still be expensive for
//! whatever parses it next (the schema validator, the upstream's parser), so the shape is
//! checked before anything builds a tree from it.
//!
//! The check walks serde_json's token stream with a `DeserializeSeed` that counts and keeps
//! nothing: no tree is built, keys are borrowed from the buffer when they need no unescaping,
//! and a failure records its place while the error unwinds, so the happy path allocates
//! nothing. Nesting recurses once per level, and the configured depth (at most 100) stops it
//! before serde_json's own backstop (which refuses the 128th level); a body of 100 000 `[` is
//! refused at the limit, with its pointer.
//!
//! When a later policy of the route parses the body (the schema, object rules), the same walk
//! builds the `serde_json::Value` instead ([`TreeBuilder`]) and leaves it in the request's
//! extensions as [`ParsedJson`], so the body is parsed once, not twice. The two walks are one
//! generic visitor: the counting one builds `()` and still allocates nothing.

use crate::{
    body_limit::read_limited,
    validate_body::{json_label, JsonLabel},
    Flow, Policy, Step,
};
use bytes::Bytes;
use http::{header, Request};
use portcullis_config::JsonLimits;
use portcullis_core::{full, Body, GatewayError, MalformedKind};
use serde::de::{DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::Value;
use std::{borrow::Cow, cell::RefCell, fmt, marker::PhantomData, sync::Arc};

/// Why a body failed the check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JsonFault {
    /// Not a JSON document (serde_json's verdict).
    Invalid,
    /// A structural limit was passed.
    Limit {
        /// RFC 6901 pointer of the offending container or string (`/` for the top level).
        /// A key that is too long is reported at its object, so the key is never echoed.
        pointer: String,
        /// `max_depth`, `max_string`, `max_array` or `max_members`.
        rule: &'static str,
        /// The limit that was passed.
        limit: u64,
    },
}

impl JsonFault {
    /// The gateway error a client gets for this fault (400 either way).
    pub fn into_error(self) -> GatewayError {
        match self {
            JsonFault::Invalid => GatewayError::Malformed(MalformedKind::InvalidJson),
            JsonFault::Limit {
                pointer,
                rule,
                limit,
            } => GatewayError::JsonLimit {
                pointer,
                rule,
                limit,
            },
        }
    }
}

/// Checks that `bytes` is one JSON document within `limits`, without building it.
pub fn check_json(bytes: &[u8], limits: &JsonLimits) -> Result<(), JsonFault> {
    walk::<NoTree>(bytes, limits)
}

/// The document in `bytes`, with no structural limits but one: a repeated member name is
/// refused, as [`parse_json_within`] refuses it. For the steps that read a body the route's
/// limits have already passed.
pub(crate) fn parse_json_unique(bytes: &[u8]) -> Result<Value, GatewayError> {
    // serde_json's own recursion limit (128 levels) still bounds the depth.
    const NONE: JsonLimits = JsonLimits {
        max_depth: u32::MAX,
        max_string: u64::MAX,
        max_array: u64::MAX,
        max_members: u64::MAX,
        explicit: false,
    };
    parse_json_within(bytes, &NONE).map_err(JsonFault::into_error)
}

/// Checks `bytes` like [`check_json`] and returns the document, built in the same pass.
pub fn parse_json_within(bytes: &[u8], limits: &JsonLimits) -> Result<Value, JsonFault> {
    walk::<TreeBuilder>(bytes, limits)
}

fn walk<B: Build>(bytes: &[u8], limits: &JsonLimits) -> Result<B::Out, JsonFault> {
    let fault = RefCell::new(None);
    let walker = Walker::<B> {
        limits,
        depth: 0,
        fault: &fault,
        build: PhantomData,
    };
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let parsed = walker
        .deserialize(&mut de)
        .and_then(|v| de.end().map(|()| v));
    match (parsed, fault.into_inner()) {
        (Ok(v), _) => Ok(v),
        (Err(_), Some(f)) => {
            let mut pointer = String::new();
            for seg in f.path.iter().rev() {
                match seg {
                    Segment::Index(i) => {
                        pointer.push('/');
                        pointer.push_str(&i.to_string());
                    }
                    // A name is the caller's own text: one longer than schema errors repeat
                    // back ends the pointer at its object instead.
                    Segment::Key(k) if k.len() > MAX_NAMED => break,
                    Segment::Key(k) => {
                        pointer.push('/');
                        pointer.push_str(&k.replace('~', "~0").replace('/', "~1"));
                    }
                }
            }
            if pointer.is_empty() {
                pointer.push('/');
            }
            Err(JsonFault::Limit {
                pointer,
                rule: f.rule,
                limit: f.limit,
            })
        }
        (Err(_), None) => Err(JsonFault::Invalid),
    }
}

/// What the walk makes of the values it visits: nothing ([`NoTree`]) or the document
/// ([`TreeBuilder`]), exactly as `serde_json::from_slice::<Value>` would build it.
trait Build {
    type Out;
    type Seq;
    type Map;
    fn scalar(v: Value) -> Self::Out;
    fn string(s: &str) -> Self::Out;
    fn seq(capacity: usize) -> Self::Seq;
    fn push(seq: &mut Self::Seq, v: Self::Out);
    fn end_seq(seq: Self::Seq) -> Self::Out;
    fn map() -> Self::Map;
    /// Adds a member; false when the object already has one of that name.
    fn insert(map: &mut Self::Map, k: Cow<'_, str>, v: Self::Out) -> bool;
    fn end_map(map: Self::Map) -> Self::Out;
}

/// The counting walk: every value is `()`, so nothing is kept or allocated.
struct NoTree;

impl Build for NoTree {
    type Out = ();
    type Seq = ();
    type Map = ();
    #[inline]
    fn scalar(_: Value) {}
    #[inline]
    fn string(_: &str) {}
    #[inline]
    fn seq(_: usize) {}
    #[inline]
    fn push(_: &mut (), _: ()) {}
    #[inline]
    fn end_seq(_: ()) {}
    #[inline]
    fn map() {}
    /// Names are not remembered: without a tree the gateway reads no member's value, so a
    /// repeated name changes nothing it decides.
    #[inline]
    fn insert(_: &mut (), _: Cow<'_, str>, _: ()) -> bool {
        true
    }
    #[inline]
    fn end_map(_: ()) {}
}

/// The building walk.
struct TreeBuilder;

impl Build for TreeBuilder {
    type Out = Value;
    type Seq = Vec<Value>;
    type Map = serde_json::Map<String, Value>;
    fn scalar(v: Value) -> Value {
        v
    }
    fn string(s: &str) -> Value {
        Value::String(s.to_owned())
    }
    fn seq(capacity: usize) -> Vec<Value> {
        // serde_json caps its own hint the same way: never trust a size from the input.
        Vec::with_capacity(capacity.min(4096))
    }
    fn push(seq: &mut Vec<Value>, v: Value) {
        seq.push(v);
    }
    fn end_seq(seq: Vec<Value>) -> Value {
        Value::Array(seq)
    }
    fn map() -> Self::Map {
        serde_json::Map::new()
    }
    fn insert(map: &mut Self::Map, k: Cow<'_, str>, v: Value) -> bool {
        // A repeated name is refused, not resolved: serde_json keeps the last value and many
        // upstreams the first, so the schema (and object rules) would judge one value and
        // the upstream act on another.
        match map.entry(k.into_owned()) {
            serde_json::map::Entry::Vacant(e) => {
                e.insert(v);
                true
            }
            serde_json::map::Entry::Occupied(_) => false,
        }
    }
    fn end_map(map: Self::Map) -> Value {
        Value::Object(map)
    }
}

/// Longest member name repeated back in a limit's error pointer (as for schema errors).
const MAX_NAMED: usize = 64;

/// The document [`JsonLimitCheck`] built, for the later policies of the same request. It
/// belongs to the exact body bytes it was parsed from: a policy that replaced the body in
/// between gets `None` and parses the new one.
#[derive(Clone)]
pub(crate) struct ParsedJson {
    value: Arc<Value>,
    // Identity of the buffer, compared, never dereferenced.
    addr: usize,
    len: usize,
}

impl ParsedJson {
    fn new(value: Value, bytes: &Bytes) -> Self {
        ParsedJson {
            value: Arc::new(value),
            addr: bytes.as_ptr() as usize,
            len: bytes.len(),
        }
    }

    /// The document, when `bytes` is the very buffer it was parsed from.
    pub(crate) fn for_bytes(&self, bytes: &Bytes) -> Option<&Value> {
        (bytes.as_ptr() as usize == self.addr && bytes.len() == self.len).then_some(&*self.value)
    }
}

/// The rule of a refusal for an object that repeats a member name (each name at most once).
pub const DUPLICATE_NAME: &str = "unique_member_names";

/// A recorded limit failure: the rule, and the path to it collected innermost first while the
/// error unwinds through the containers.
struct Fault {
    rule: &'static str,
    limit: u64,
    path: Vec<Segment>,
}

enum Segment {
    Index(u64),
    Key(String),
}

/// The error the walker stops serde_json with; the details are in the shared [`Fault`].
fn stop<E: serde::de::Error>(fault: &RefCell<Option<Fault>>, rule: &'static str, limit: u64) -> E {
    *fault.borrow_mut() = Some(Fault {
        rule,
        limit,
        path: Vec::new(),
    });
    E::custom("JSON limit")
}

/// Adds a container segment to a recorded fault on the way out. Syntax errors record nothing.
fn unwind(fault: &RefCell<Option<Fault>>, seg: impl FnOnce() -> Segment) {
    if let Some(f) = fault.borrow_mut().as_mut() {
        f.path.push(seg());
    }
}

/// One value at `depth` containers deep.
struct Walker<'a, B> {
    limits: &'a JsonLimits,
    depth: u32,
    fault: &'a RefCell<Option<Fault>>,
    build: PhantomData<fn() -> B>,
}

// Derived Clone/Copy would require `B: Copy`; the walker only holds references.
impl<B> Clone for Walker<'_, B> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<B> Copy for Walker<'_, B> {}

impl<B> Walker<'_, B> {
    fn string<E: serde::de::Error>(&self, len: usize) -> Result<(), E> {
        if len as u64 > self.limits.max_string {
            return Err(stop(self.fault, "max_string", self.limits.max_string));
        }
        Ok(())
    }

    /// The walker for the children of a container at this level, after the depth check.
    fn enter<E: serde::de::Error>(&self) -> Result<Walker<'_, B>, E> {
        let depth = self.depth + 1;
        if depth > self.limits.max_depth {
            return Err(stop(self.fault, "max_depth", self.limits.max_depth.into()));
        }
        Ok(Walker { depth, ..*self })
    }
}

impl<'de, B: Build> DeserializeSeed<'de> for Walker<'_, B> {
    type Value = B::Out;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<B::Out, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de, B: Build> Visitor<'de> for Walker<'_, B> {
    type Value = B::Out;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<B::Out, E> {
        Ok(B::scalar(Value::Bool(v)))
    }
    fn visit_i64<E>(self, v: i64) -> Result<B::Out, E> {
        Ok(B::scalar(Value::Number(v.into())))
    }
    fn visit_u64<E>(self, v: u64) -> Result<B::Out, E> {
        Ok(B::scalar(Value::Number(v.into())))
    }
    fn visit_f64<E>(self, v: f64) -> Result<B::Out, E> {
        Ok(B::scalar(
            serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number),
        ))
    }
    fn visit_unit<E>(self) -> Result<B::Out, E> {
        Ok(B::scalar(Value::Null))
    }
    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<B::Out, E> {
        self.string(v.len())?;
        Ok(B::string(v))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<B::Out, A::Error> {
        let inner = self.enter()?;
        let mut items = B::seq(seq.size_hint().unwrap_or(0));
        let mut index = 0u64;
        loop {
            if index == self.limits.max_array {
                // One more element is one too many; `Overflow` fails only if there is one.
                return seq
                    .next_element_seed(Overflow {
                        fault: self.fault,
                        rule: "max_array",
                        limit: self.limits.max_array,
                    })
                    .map(|_| B::end_seq(items));
            }
            match seq.next_element_seed(inner) {
                Ok(Some(v)) => {
                    B::push(&mut items, v);
                    index += 1;
                }
                Ok(None) => return Ok(B::end_seq(items)),
                Err(e) => {
                    unwind(self.fault, || Segment::Index(index));
                    return Err(e);
                }
            }
        }
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<B::Out, A::Error> {
        let inner = self.enter()?;
        let mut members = 0u64;
        let mut out = B::map();
        loop {
            if members == self.limits.max_members {
                return map
                    .next_key_seed(Overflow {
                        fault: self.fault,
                        rule: "max_members",
                        limit: self.limits.max_members,
                    })
                    .map(|_| B::end_map(out));
            }
            // A key that is too long fails here and is reported at this object.
            let Some(key) = map.next_key_seed(Key(self.limits, self.fault))? else {
                return Ok(B::end_map(out));
            };
            match map.next_value_seed(inner) {
                Ok(v) => {
                    if !B::insert(&mut out, key, v) {
                        // Reported at this object: the name itself is not echoed.
                        return Err(stop(self.fault, DUPLICATE_NAME, 1));
                    }
                }
                Err(e) => {
                    unwind(self.fault, || Segment::Key(key.into_owned()));
                    return Err(e);
                }
            }
            members += 1;
        }
    }
}

/// An object key: length-checked, borrowed from the input when it has no escapes.
struct Key<'a>(&'a JsonLimits, &'a RefCell<Option<Fault>>);

impl Key<'_> {
    fn check<E: serde::de::Error>(&self, len: usize) -> Result<(), E> {
        if len as u64 > self.0.max_string {
            return Err(stop(self.1, "max_string", self.0.max_string));
        }
        Ok(())
    }
}

impl<'de> DeserializeSeed<'de> for Key<'_> {
    type Value = Cow<'de, str>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Cow<'de, str>, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for Key<'_> {
    type Value = Cow<'de, str>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object key")
    }

    fn visit_borrowed_str<E: serde::de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
        self.check(v.len())?;
        Ok(Cow::Borrowed(v))
    }

    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
        self.check(v.len())?;
        Ok(Cow::Owned(v.to_owned()))
    }
}

/// Stands in for the element (or key) past a count limit: fails as soon as serde_json
/// finds one, before reading it.
struct Overflow<'a> {
    fault: &'a RefCell<Option<Fault>>,
    rule: &'static str,
    limit: u64,
}

impl<'de> DeserializeSeed<'de> for Overflow<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, _: D) -> Result<(), D::Error> {
        Err(stop(self.fault, self.rule, self.limit))
    }
}

/// The JSON-limits policy for one route: reads the body (within `max_body`), checks it, and
/// passes the buffered bytes on, so later policies and the upstream get the same body.
pub struct JsonLimitCheck {
    limits: JsonLimits,
    max_body: u64,
    require_json: bool,
    keep_tree: bool,
}

impl JsonLimitCheck {
    /// Checks bodies with a JSON content type and lets others pass; with `require_json`
    /// (a route whose later policies read the body as JSON), a non-empty body labelled
    /// otherwise is refused (415): read as JSON here, a JSON-and-form polyglot labelled as
    /// a form passed the rules while the upstream read `&role=admin` out of it. A JSON type
    /// with a charset other than UTF-8 is refused either way.
    pub fn new(limits: JsonLimits, max_body: u64, require_json: bool) -> Self {
        JsonLimitCheck {
            limits,
            max_body,
            require_json,
            keep_tree: false,
        }
    }

    /// Also builds the document in the same pass and leaves it as [`ParsedJson`] for later
    /// policies that would otherwise parse the body again.
    pub fn keeping_tree(mut self) -> Self {
        self.keep_tree = true;
        self
    }
}

impl Policy for JsonLimitCheck {
    fn name(&self) -> &'static str {
        "json_limits"
    }

    fn has_response_phase(&self) -> bool {
        false
    }

    fn on_request(&self, req: Request<Body>) -> Step<'_, Flow> {
        Step::later(self.request_phase(req))
    }
}

/// The request phase itself: it reads the body, so it is an async method whose future
/// `Step::later` boxes.
impl JsonLimitCheck {
    async fn request_phase(&self, req: Request<Body>) -> Result<Flow, GatewayError> {
        use http_body::Body as _;
        if req.body().is_end_stream() {
            return Ok(Flow::Continue(req));
        }
        let label = json_label(req.headers().get(header::CONTENT_TYPE));
        match label {
            JsonLabel::Utf8 => {}
            JsonLabel::OtherCharset => return Err(GatewayError::UnsupportedMediaType),
            JsonLabel::Other if !self.require_json => return Ok(Flow::Continue(req)),
            // A declared length says the body is not empty: refused before it is read.
            JsonLabel::Other if req.body().size_hint().lower() > 0 => {
                return Err(GatewayError::UnsupportedMediaType)
            }
            // A chunked body may still turn out empty: read it (within the limit) to see.
            JsonLabel::Other => {}
        }
        let (mut parts, body) = req.into_parts();
        let bytes = read_limited(body, self.max_body).await?;
        if !bytes.is_empty() && label == JsonLabel::Other {
            return Err(GatewayError::UnsupportedMediaType);
        }
        if !bytes.is_empty() {
            if self.keep_tree {
                let value =
                    parse_json_within(&bytes, &self.limits).map_err(JsonFault::into_error)?;
                parts.extensions.insert(ParsedJson::new(value, &bytes));
            } else {
                check_json(&bytes, &self.limits).map_err(JsonFault::into_error)?;
            }
        }
        Ok(Flow::Continue(Request::from_parts(parts, full(bytes))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(depth: u32, string: u64, array: u64, members: u64) -> JsonLimits {
        JsonLimits {
            max_depth: depth,
            max_string: string,
            max_array: array,
            max_members: members,
            explicit: true,
        }
    }

    fn fault(doc: &str, l: &JsonLimits) -> Option<(String, &'static str)> {
        match check_json(doc.as_bytes(), l) {
            Ok(()) => None,
            Err(JsonFault::Limit { pointer, rule, .. }) => Some((pointer, rule)),
            Err(JsonFault::Invalid) => Some((String::new(), "invalid")),
        }
    }

    #[test]
    fn each_rule_names_its_pointer() {
        let l = limits(3, 8, 3, 2);
        assert_eq!(fault(r#"{"a":[[1]]}"#, &l), None);
        assert_eq!(
            fault(r#"{"a":[[{"b":1}]]}"#, &l),
            Some(("/a/0/0".into(), "max_depth"))
        );
        assert_eq!(
            fault(r#"{"a":{"b":"SENTINEL-x"}}"#, &l),
            Some(("/a/b".into(), "max_string"))
        );
        // A long key is reported at its object, never echoed.
        assert_eq!(
            fault(r#"{"a":{"SENTINEL-key":1}}"#, &l),
            Some(("/a".into(), "max_string"))
        );
        assert_eq!(
            fault(r#"{"a":[1,2,[1,2,3,4]]}"#, &l),
            Some(("/a/2".into(), "max_array"))
        );
        // A name over 64 bytes on the way to a fault is not repeated back either: the
        // pointer ends at the object that holds it.
        let long = format!("SECRET{}", "k".repeat(64));
        let l = limits(3, 1000, 3, 2);
        assert_eq!(
            fault(&format!(r#"{{"a":{{"{long}":[[1]]}}}}"#), &l),
            Some(("/a".into(), "max_depth"))
        );
        let l = limits(3, 8, 3, 2);
        assert_eq!(fault(r#"[1,2,3]"#, &l), None);
        assert_eq!(
            fault(r#"{"a":1,"b":{"c":1,"d":2,"e":3}}"#, &l),
            Some(("/b".into(), "max_members"))
        );
        assert_eq!(
            fault(r#"{"a":1,"b":2,"c":3}"#, &l),
            Some(("/".into(), "max_members"))
        );
        assert_eq!(
            fault(r#""123456789""#, &l),
            Some(("/".into(), "max_string"))
        );
        // Keys are escaped per RFC 6901; lengths count unescaped bytes.
        assert_eq!(
            fault(r#"{"a/b~":["\u00e9\u00e9\u00e9\u00e9\u00e9"]}"#, &l),
            Some(("/a~1b~0/0".into(), "max_string"))
        );
        assert_eq!(fault(r#"["\u00e9\u00e9\u00e9\u00e9"]"#, &l), None);
    }

    #[test]
    fn invalid_documents_are_invalid_not_limits() {
        let l = JsonLimits::DEFAULT;
        for doc in ["", "{", "[1,]", "{\"a\":1}x", "nul", "\"\\ud800\"", "[1 2]"] {
            assert_eq!(
                check_json(doc.as_bytes(), &l),
                Err(JsonFault::Invalid),
                "{doc:?}"
            );
        }
    }

    #[test]
    fn deep_nesting_stops_at_the_limit_without_overflowing() {
        let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        let l = limits(100, 10, 10, 10);
        match check_json(deep.as_bytes(), &l) {
            Err(JsonFault::Limit { pointer, rule, .. }) => {
                assert_eq!(rule, "max_depth");
                assert_eq!(pointer, "/0".repeat(100));
            }
            other => panic!("{other:?}"),
        }
        let deep_objects = "{\"a\":".repeat(50_000);
        assert!(matches!(
            check_json(deep_objects.as_bytes(), &JsonLimits::DEFAULT),
            Err(JsonFault::Limit {
                rule: "max_depth",
                ..
            })
        ));
        // Exactly at the limit is fine.
        let ok = format!("{}{}", "[".repeat(100), "]".repeat(100));
        assert_eq!(check_json(ok.as_bytes(), &l), Ok(()));
    }

    #[tokio::test]
    async fn the_policy_checks_json_bodies_and_passes_the_same_bytes_on() {
        use http_body_util::BodyExt;
        let p = JsonLimitCheck::new(limits(2, 100, 100, 100), 1024, false);
        let req = |ct: &str, body: &'static str| {
            Request::builder()
                .header("content-type", ct)
                .body(full(body))
                .unwrap_or_default()
        };
        let r = p.on_request(req("application/json", "[[[1]]]")).await;
        assert!(matches!(
            r,
            Err(GatewayError::JsonLimit {
                rule: "max_depth",
                ..
            })
        ));
        // Not JSON by its content type: untouched.
        assert!(matches!(
            p.on_request(req("text/plain", "[[[1]]]")).await,
            Ok(Flow::Continue(_))
        ));
        match p
            .on_request(req("application/vnd.x+json; charset=utf-8", "[[1]]"))
            .await
        {
            Ok(Flow::Continue(r)) => {
                let b = r.into_body().collect().await.map(|c| c.to_bytes());
                assert_eq!(b.ok().as_deref(), Some(&b"[[1]]"[..]));
            }
            _ => panic!("expected the request to pass"),
        }
        let any = JsonLimitCheck::new(limits(2, 100, 100, 100), 1024, true);
        assert!(any.on_request(req("text/plain", "[[[1]]]")).await.is_err());
    }

    #[tokio::test]
    async fn the_tree_is_left_for_the_same_bytes_only() {
        use http_body_util::BodyExt;
        let p = JsonLimitCheck::new(limits(3, 100, 100, 100), 1024, false).keeping_tree();
        let req = Request::builder()
            .header("content-type", "application/json")
            .body(full(r#"{"a":[1,2]}"#))
            .unwrap_or_default();
        let Ok(Flow::Continue(req)) = p.on_request(req).await else {
            panic!("expected the request to pass");
        };
        let (parts, body) = req.into_parts();
        let tree = parts.extensions.get::<ParsedJson>().cloned();
        let bytes = body
            .collect()
            .await
            .map(|c| c.to_bytes())
            .unwrap_or_default();
        let tree = tree.expect("the tree is left in the extensions");
        assert_eq!(
            tree.for_bytes(&bytes),
            Some(&serde_json::json!({"a": [1, 2]}))
        );
        // Equal content in another buffer is another body as far as the tree is concerned.
        assert_eq!(tree.for_bytes(&Bytes::copy_from_slice(&bytes)), None);
    }
}

#[cfg(test)]
mod props {
    use super::*;
    use proptest::prelude::*;
    use serde_json::Value;

    const UNLIMITED: JsonLimits = JsonLimits {
        max_depth: 127,
        max_string: u64::MAX,
        max_array: u64::MAX,
        max_members: u64::MAX,
        explicit: true,
    };

    /// (depth, longest string or key, longest array, most members) of a document.
    fn shape(v: &Value) -> (u32, u64, u64, u64) {
        match v {
            Value::String(s) => (0, s.len() as u64, 0, 0),
            Value::Array(a) => a
                .iter()
                .map(shape)
                .fold((1, 0, a.len() as u64, 0), |acc, s| {
                    (
                        acc.0.max(s.0 + 1),
                        acc.1.max(s.1),
                        acc.2.max(s.2),
                        acc.3.max(s.3),
                    )
                }),
            Value::Object(o) => o
                .iter()
                .map(|(k, v)| {
                    let s = shape(v);
                    (s.0, s.1.max(k.len() as u64), s.2, s.3)
                })
                .fold((1, 0, 0, o.len() as u64), |acc, s| {
                    (
                        acc.0.max(s.0 + 1),
                        acc.1.max(s.1),
                        acc.2.max(s.2),
                        acc.3.max(s.3),
                    )
                }),
            _ => (0, 0, 0, 0),
        }
    }

    fn json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            "[a-z/~\u{e9}\"\\\\]{0,6}".prop_map(Value::String),
        ];
        leaf.prop_recursive(6, 48, 5, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
                prop::collection::btree_map("[a-z/~]{0,4}", inner, 0..5)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        /// Whatever a client sends, the checker answers without panicking, and when the limits
        /// are out of the way it agrees with serde_json about what is a JSON document.
        #[test]
        fn arbitrary_bytes_never_panic_and_validity_agrees(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
            let ours = check_json(&bytes, &UNLIMITED);
            let theirs = serde_json::from_slice::<Value>(&bytes);
            prop_assert_eq!(ours.is_ok(), theirs.is_ok(), "{:?}", String::from_utf8_lossy(&bytes));
            let _ = check_json(&bytes, &JsonLimits { max_depth: 1, max_string: 1, max_array: 1, max_members: 1, explicit: true });
            // The building walk gives serde_json's own tree, or fails where it fails (and
            // on a repeated member name, which serde_json resolves to the last value).
            match parse_json_within(&bytes, &UNLIMITED) {
                Err(JsonFault::Limit { rule: DUPLICATE_NAME, .. }) => prop_assert!(theirs.is_ok()),
                built => prop_assert_eq!(built.ok(), theirs.ok()),
            }
        }

        /// Built trees equal serde_json's, escapes and all; a repeated member name is refused
        /// at its object; and otherwise the building walk refuses exactly what the counting
        /// walk refuses.
        #[test]
        fn the_built_tree_is_serde_jsons_tree(v in json(), dup in "[a-z]{1,3}", d in 1u32..5, s in 0u64..6) {
            let text = format!("{{\"{dup}\":1,\"e\\u00e9\\n\":[1.5,-2,18446744073709551615],\"{dup}x\":{v}}}");
            prop_assert_eq!(parse_json_within(text.as_bytes(), &UNLIMITED).ok(), serde_json::from_str::<Value>(&text).ok());
            let l = JsonLimits { max_depth: d, max_string: s, max_array: 3, max_members: 3, explicit: true };
            prop_assert_eq!(parse_json_within(text.as_bytes(), &l).err(), check_json(text.as_bytes(), &l).err());
            let repeated = format!("{{\"{dup}\":1,\"e\":[{v}],\"{dup}\":{v}}}");
            prop_assert_eq!(
                parse_json_within(repeated.as_bytes(), &UNLIMITED).err(),
                Some(JsonFault::Limit { pointer: "/".into(), rule: DUPLICATE_NAME, limit: 1 })
            );
            // Nested, the pointer names the object that repeats the name, never the name.
            let nested = format!("{{\"o\":[{repeated}]}}");
            prop_assert_eq!(
                parse_json_within(nested.as_bytes(), &UNLIMITED).err(),
                Some(JsonFault::Limit { pointer: "/o/0".into(), rule: DUPLICATE_NAME, limit: 1 })
            );
        }

        /// JSON-looking text (brackets, quotes, escapes) reaches the interesting parser states.
        #[test]
        fn json_like_text_agrees_with_serde_json(text in "[\\[\\]{}\",:0-9a-z\\\\ .eE+-]{0,64}") {
            let ours = check_json(text.as_bytes(), &UNLIMITED);
            prop_assert_eq!(ours.is_ok(), serde_json::from_str::<Value>(&text).is_ok(), "{:?}", text);
        }

        /// On valid documents the verdict is exactly "is the shape within the limits", and a
        /// reported pointer names a real node of the document.
        #[test]
        fn verdict_matches_the_shape(v in json(), d in 1u32..5, s in 0u64..6, a in 0u64..5, m in 0u64..5) {
            let text = v.to_string();
            let l = JsonLimits { max_depth: d, max_string: s, max_array: a, max_members: m, explicit: true };
            let (depth, string, array, members) = shape(&v);
            let within = depth <= d && string <= s && array <= a && members <= m;
            match check_json(text.as_bytes(), &l) {
                Ok(()) => prop_assert!(within, "{} passed {:?}", text, l),
                Err(JsonFault::Limit { pointer, .. }) => {
                    prop_assert!(!within, "{} refused at {}", text, pointer);
                    let p = if pointer == "/" { "" } else { pointer.as_str() };
                    prop_assert!(v.pointer(p).is_some(), "{} has no {}", text, pointer);
                }
                Err(JsonFault::Invalid) => prop_assert!(false, "{} called invalid", text),
            }
        }
    }
}
