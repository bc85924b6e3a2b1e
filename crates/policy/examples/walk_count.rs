//! Runs the streaming schema check of one body N times, for callgrind: instructions per
//! check are (count at N2 - count at N1) / (N2 - N1), exact and repeatable where wall-clock
//! benches on this machine are not. bench/schema-walk.sh runs it on the benchmark order.
//! Usage: `walk_count SCHEMA.json BODY.json N` (prints how many checks accepted).
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use portcullis_config::JsonLimits;
use portcullis_policy::StreamSchema;
use serde_json::Value;
use std::hint::black_box;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, schema, body, n] = &args[..] else {
        eprintln!("usage: walk_count SCHEMA.json BODY.json N");
        std::process::exit(2);
    };
    let schema: Value =
        serde_json::from_slice(&std::fs::read(schema).expect("schema file")).expect("schema JSON");
    let body = std::fs::read(body).expect("body file");
    let n: usize = n.parse().expect("N");
    let stream = StreamSchema::compile(&schema).expect("the schema is in the streaming subset");
    let limits = JsonLimits::DEFAULT;
    let accepted = (0..n)
        .filter(|_| black_box(&stream).accepts(black_box(&body), Some(&limits)))
        .count();
    println!("{accepted}");
}
