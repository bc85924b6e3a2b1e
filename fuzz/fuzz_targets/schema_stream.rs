//! The streaming schema check reads client bodies and may only ever answer "valid" for a body
//! the full path (limits walk, tree, jsonschema) also accepts. For a few schemas in its subset
//! and two sets of limits, any body it accepts must pass the full path, and nothing panics.
#![no_main]
use libfuzzer_sys::fuzz_target;
use portcullis_config::JsonLimits;
use portcullis_policy::{parse_json_within, JsonSchema};
use std::sync::OnceLock;

fn schemas() -> &'static [JsonSchema] {
    static S: OnceLock<Vec<JsonSchema>> = OnceLock::new();
    S.get_or_init(|| {
        [
            r#"{"type":"object","required":["a","b"],"additionalProperties":false,
                "properties":{"a":{"type":"string","maxLength":3,"pattern":"^[a-z]*$"},
                              "b":{"type":"array","minItems":1,"maxItems":3,
                                   "items":{"type":"integer","minimum":-2,"exclusiveMaximum":5.5}},
                              "c":{"enum":["x",true,null]}}}"#,
            r#"{"type":["object","array","string","null"],"items":{"const":"k"},
                "properties":{"n":{"type":"number","maximum":1e3}},"additionalProperties":{"type":"boolean"}}"#,
            r#"{"items":false,"required":["\u00e9"],"properties":{"\u00e9":{"minLength":2}}}"#,
            "true",
        ]
        .iter()
        .map(|s| {
            let v: serde_json::Value = serde_json::from_str(s).expect("schema JSON");
            let c = JsonSchema::compile(&v).expect("schema compiles");
            assert!(c.streams(), "{s} is meant to be in the fast path's subset");
            c
        })
        .collect()
    })
}

fuzz_target!(|data: &[u8]| {
    let tight = JsonLimits {
        max_depth: 3,
        max_string: 8,
        max_array: 4,
        max_members: 4,
        explicit: true,
    };
    for limits in [JsonLimits::DEFAULT, tight] {
        for schema in schemas() {
            if schema.accepts_bytes(data, Some(&limits)) {
                let tree = parse_json_within(data, &limits).expect("accepted, so within limits");
                assert!(schema.is_valid(&tree), "accepted a body jsonschema refuses");
            }
        }
    }
});
