//! Verification benchmarks (filled in by the verifier work).

fn main() {}
