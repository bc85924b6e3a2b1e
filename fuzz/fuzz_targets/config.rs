//! The configuration parser reports errors for any input; it never panics.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    let _ = portcullis_config::parse(text, "fuzz.toml", std::path::Path::new("/nonexistent"));
});
