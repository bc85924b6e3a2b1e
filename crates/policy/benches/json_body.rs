//! The guarded route's body work on bench/policies.sh's 1 KiB order: the JSON-limits walk
//! (counting only, and building the tree the schema reads), serde_json's own parse for
//! comparison, dropping the tree, the JSON Schema check, and the streaming check that
//! replaces all of them when the schema allows it.
//! Run: `cargo bench -p portcullis-policy --bench json_body`.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use portcullis_config::JsonLimits;
use portcullis_policy::{check_json, parse_json_within, StreamSchema};
use serde_json::{json, Value};

fn order() -> Vec<u8> {
    let items: Vec<Value> = (0..24)
        .map(|i| json!({"sku": format!("SKU-{i:04}"), "qty": i + 1}))
        .collect();
    let mut doc = json!({"customer": "acme-corp", "items": items, "note": ""});
    let len = serde_json::to_vec(&doc).expect("json").len();
    doc["note"] = Value::String("x".repeat(1024 - len));
    let bytes = serde_json::to_vec(&doc).expect("json");
    assert_eq!(bytes.len(), 1024);
    bytes
}

fn bench(c: &mut Criterion) {
    let body = order();
    let limits = JsonLimits::DEFAULT;
    let schema = json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "type": "object",
        "required": ["customer", "items"],
        "additionalProperties": false,
        "properties": {
            "customer": { "type": "string", "maxLength": 64 },
            "note": { "type": "string", "maxLength": 512 },
            "items": {
                "type": "array", "minItems": 1, "maxItems": 50,
                "items": {
                    "type": "object", "required": ["sku", "qty"], "additionalProperties": false,
                    "properties": {
                        "sku": { "type": "string", "pattern": "^[A-Z0-9-]{3,20}$" },
                        "qty": { "type": "integer", "minimum": 1, "maximum": 1000 }
                    }
                }
            }
        }
    });
    let validator = jsonschema::draft202012::new(&schema).expect("schema");
    let tree = parse_json_within(&body, &limits).expect("within limits");
    assert!(validator.is_valid(&tree));

    let mut g = c.benchmark_group("json_body_1KiB");
    g.bench_function("limits_count_only", |b| {
        b.iter(|| check_json(black_box(&body), &limits))
    });
    g.bench_function("limits_and_tree", |b| {
        b.iter(|| parse_json_within(black_box(&body), &limits))
    });
    g.bench_function("serde_json_from_slice", |b| {
        b.iter(|| serde_json::from_slice::<Value>(black_box(&body)))
    });
    g.bench_function("schema_is_valid", |b| {
        b.iter(|| validator.is_valid(black_box(&tree)))
    });
    // The route's path since the streaming fast path: limits and schema in one pass, no tree.
    let stream = StreamSchema::compile(&schema).expect("the order schema streams");
    assert!(stream.accepts(&body, Some(&limits)));
    g.bench_function("stream_limits_and_schema", |b| {
        b.iter(|| stream.accepts(black_box(&body), Some(&limits)))
    });
    // The same check without the byte scanner: serde_json's tokens drive the walk.
    g.bench_function("stream_limits_and_schema_serde_walk", |b| {
        b.iter(|| stream.accepts_via_serde(black_box(&body), Some(&limits)))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
