//! Dotted paths into JSON values (`user.email`), applied through arrays element by element.

use serde_json::Value;

/// True when a request body sets `path` in a way some upstream reads as `path`: the member
/// names compared in any ASCII case (ASP.NET Core binds `Role` to `role`), and a literal
/// dotted name taken as the nested path (`{"account.is_admin": true}` is that field to a
/// MongoDB `$set` and to binders that expand dots). For `request_deny_fields`: better to
/// refuse a body an upstream would not misread than to pass one it would.
pub(crate) fn sets(v: &Value, path: &str) -> bool {
    let mut found = Vec::new();
    read_as(v, path, true, &mut found);
    !found.is_empty()
}

/// The one value a body gives `path` as binders read it (see [`sets`]), not inside an array;
/// `None` when it gives none or several (`{"tenant":"acme","Tenant":"evil"}`, or
/// `{"account":{"tenant":"acme"},"account.tenant":"evil"}`): an object rule must not judge
/// one copy while the upstream uses another.
pub(crate) fn only_value<'a>(v: &'a Value, path: &str) -> Option<&'a Value> {
    let mut found = Vec::new();
    read_as(v, path, false, &mut found);
    match found.as_slice() {
        [one] => Some(one),
        _ => None,
    }
}

/// Every value `v` gives `path`: member names in any ASCII case, a member name that spells
/// several segments joined by dots, and (with `through_arrays`) each element of an array.
fn read_as<'a>(v: &'a Value, path: &str, through_arrays: bool, found: &mut Vec<&'a Value>) {
    fn walk<'a>(v: &'a Value, segs: &[&str], arrays: bool, found: &mut Vec<&'a Value>) {
        if segs.is_empty() {
            found.push(v);
            return;
        }
        match v {
            Value::Array(items) if arrays => {
                items.iter().for_each(|i| walk(i, segs, arrays, found))
            }
            Value::Object(m) => {
                for (key, x) in m {
                    // `key` may spell the next one or more segments, joined by dots.
                    let mut rest = key.as_str();
                    for (i, seg) in segs.iter().enumerate() {
                        let Some(after) = strip_prefix_ignore_case(rest, seg) else {
                            break;
                        };
                        if after.is_empty() {
                            walk(x, &segs[i + 1..], arrays, found);
                            break;
                        }
                        match after.strip_prefix('.') {
                            Some(more) => rest = more,
                            None => break,
                        }
                    }
                }
            }
            _ => {}
        }
    }
    walk(
        v,
        &path.split('.').collect::<Vec<_>>(),
        through_arrays,
        found,
    )
}

fn strip_prefix_ignore_case<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let head = s.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &s[prefix.len()..])
}

/// Removes `path` everywhere it occurs (through arrays).
pub(crate) fn remove(v: &mut Value, path: &str) {
    fn walk(v: &mut Value, segs: &[&str]) {
        match v {
            Value::Array(items) => items.iter_mut().for_each(|i| walk(i, segs)),
            Value::Object(m) => match segs {
                [] => {}
                [last] => {
                    m.remove(*last);
                }
                [first, rest @ ..] => {
                    if let Some(x) = m.get_mut(*first) {
                        walk(x, rest);
                    }
                }
            },
            _ => {}
        }
    }
    walk(v, &path.split('.').collect::<Vec<_>>());
}

/// Applies `f` to the value at `path` everywhere it occurs (through arrays).
pub(crate) fn update(v: &mut Value, path: &str, f: &dyn Fn(&mut Value)) {
    fn walk(v: &mut Value, segs: &[&str], f: &dyn Fn(&mut Value)) {
        match v {
            Value::Array(items) => items.iter_mut().for_each(|i| walk(i, segs, f)),
            Value::Object(m) => match segs {
                [] => {}
                [last] => {
                    if let Some(x) = m.get_mut(*last) {
                        f(x);
                    }
                }
                [first, rest @ ..] => {
                    if let Some(x) = m.get_mut(*first) {
                        walk(x, rest, f);
                    }
                }
            },
            _ => {}
        }
    }
    walk(v, &path.split('.').collect::<Vec<_>>(), f);
}

/// Keeps only the top-level fields named in `allow` (of each element, for an array).
pub(crate) fn keep_only(v: &mut Value, allow: &[String]) {
    match v {
        Value::Array(items) => items.iter_mut().for_each(|i| keep_only(i, allow)),
        Value::Object(m) => m.retain(|k, _| allow.iter().any(|a| a == k)),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_work_through_arrays() {
        let mut v = serde_json::json!({"items": [{"id": 1, "user": {"email": "a", "name": "b"}}, {"id": 2}], "total": 2});
        assert!(sets(&v, "items.user.email"));
        remove(&mut v, "items.user.email");
        assert!(!sets(&v, "items.user.email"));
        assert_eq!(only_value(&v, "total"), Some(&serde_json::json!(2)));
        keep_only(&mut v, &["items".into()]);
        assert!(only_value(&v, "total").is_none());
    }
}

#[cfg(test)]
mod sets_tests {
    use super::sets;
    use serde_json::json;

    #[test]
    fn a_field_is_set_in_any_case_and_as_a_dotted_name() {
        for body in [
            json!({ "role": "admin" }),
            json!({ "Role": "admin" }),
            json!({ "ROLE": null }),
            json!([{ "x": 1 }, { "role": 1 }]),
        ] {
            assert!(sets(&body, "role"), "{body}");
        }
        for body in [
            json!({ "account": { "is_admin": true } }),
            json!({ "Account": { "IS_ADMIN": true } }),
            json!({ "account.is_admin": true }),
            json!({ "ACCOUNT.is_admin": true }),
            json!({ "account": [{ "is_admin": true }] }),
        ] {
            assert!(sets(&body, "account.is_admin"), "{body}");
        }
        for body in [
            json!({ "roles": 1 }),
            json!({ "rol": 1 }),
            json!({ "account": { "is_admins": true } }),
            json!({ "account.is_admin_x": true }),
            json!({ "account": true }),
            json!({ "accountis_admin": true }),
        ] {
            assert!(
                !sets(&body, "role") && !sets(&body, "account.is_admin"),
                "{body}"
            );
        }
    }
}
