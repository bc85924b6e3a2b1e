//! Request paths come straight from clients: the hygiene check and the inventory's shape
//! normaliser must never panic, and what the check accepts must be one unambiguous spelling:
//! absolute, no empty segment, no `;`, every escape well formed and of a character that needs
//! one, no dot segment.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|path: &str| {
    if portcullis_proxy::check_path(path).is_ok() {
        assert!(path.starts_with('/'));
        assert!(!path.contains("//") && !path.contains(';') && !path.contains('\\'));
        for (i, _) in path.match_indices('%') {
            let v = path
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok());
            assert!(v.is_some_and(|v| !v.is_ascii_alphanumeric()
                && !b"-._~%;/\\".contains(&v)
                && v != 0));
        }
        assert!(path.split('/').all(|s| s != "." && s != ".."));
    }
    let shape = portcullis_proxy::path_shape(path);
    assert!(shape.starts_with('/'));
});
