//! X-Request-Id is echoed into logs and upstream requests: whatever arrives, the id used is
//! valid and a legal header value.
#![no_main]
use libfuzzer_sys::fuzz_target;
use portcullis_core::RequestId;

fuzz_target!(|data: &[u8]| {
    let v = http::HeaderValue::from_bytes(data).ok();
    let id = RequestId::from_header_or_new(v.as_ref());
    assert!(RequestId::is_valid(id.as_str()));
});
