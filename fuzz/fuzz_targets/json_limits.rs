//! Request bodies come straight from clients: the JSON structure-limits walk, in both its
//! counting and its building form, must never panic, must agree with serde_json on what is
//! JSON, and the tree it builds must be serde_json's.
#![no_main]
use libfuzzer_sys::fuzz_target;
use portcullis_config::JsonLimits;

fuzz_target!(|data: &[u8]| {
    let unlimited = JsonLimits {
        max_depth: 127,
        max_string: u64::MAX,
        max_array: u64::MAX,
        max_members: u64::MAX,
        explicit: true,
    };
    let theirs = serde_json::from_slice::<serde_json::Value>(data).ok();
    assert_eq!(
        portcullis_policy::check_json(data, &unlimited).is_ok(),
        theirs.is_some()
    );
    assert_eq!(
        portcullis_policy::parse_json_within(data, &unlimited).ok(),
        theirs
    );
    let tight = JsonLimits {
        max_depth: 3,
        max_string: 8,
        max_array: 4,
        max_members: 4,
        explicit: true,
    };
    assert_eq!(
        portcullis_policy::check_json(data, &tight).err(),
        portcullis_policy::parse_json_within(data, &tight).err()
    );
});
