//! Request paths come straight from clients: the hygiene check and the inventory's shape
//! normaliser must never panic, and what the check accepts must start with '/'.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|path: &str| {
    if portcullis_proxy::check_path(path).is_ok() {
        assert!(path.starts_with('/'));
    }
    let shape = portcullis_proxy::path_shape(path);
    assert!(shape.starts_with('/'));
});
