//! Log lines carry client-supplied text: the redactor must never panic on any line.
#![no_main]
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;

static REDACTOR: OnceLock<portcullis_telemetry::Redactor> = OnceLock::new();

fuzz_target!(|line: &str| {
    let r = REDACTOR.get_or_init(portcullis_telemetry::Redactor::default);
    let _ = r.redact_line(line);
});
