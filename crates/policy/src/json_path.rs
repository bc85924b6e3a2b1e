//! Dotted paths into JSON values (`user.email`), applied through arrays element by element.

use serde_json::Value;

/// The value at `path`, when it exists and is not inside an array.
pub(crate) fn get<'a>(v: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.').try_fold(v, |cur, seg| cur.get(seg))
}

/// True when a request body sets `path` in a way some upstream reads as `path`: the member
/// names compared in any ASCII case (ASP.NET Core binds `Role` to `role`), and a literal
/// dotted name taken as the nested path (`{"account.is_admin": true}` is that field to a
/// MongoDB `$set` and to binders that expand dots). For `request_deny_fields`: better to
/// refuse a body an upstream would not misread than to pass one it would.
pub(crate) fn sets(v: &Value, path: &str) -> bool {
    fn walk(v: &Value, segs: &[&str]) -> bool {
        if segs.is_empty() {
            return true;
        }
        match v {
            Value::Array(items) => items.iter().any(|i| walk(i, segs)),
            Value::Object(m) => m.iter().any(|(key, x)| {
                // `key` may spell the next one or more segments, joined by dots.
                let mut rest = key.as_str();
                for (i, seg) in segs.iter().enumerate() {
                    let Some(after) = strip_prefix_ignore_case(rest, seg) else {
                        return false;
                    };
                    if after.is_empty() {
                        if walk(x, &segs[i + 1..]) {
                            return true;
                        }
                        return false;
                    }
                    match after.strip_prefix('.') {
                        Some(more) => rest = more,
                        None => return false,
                    }
                }
                false
            }),
            _ => false,
        }
    }
    walk(v, &path.split('.').collect::<Vec<_>>())
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
        assert_eq!(get(&v, "total"), Some(&serde_json::json!(2)));
        keep_only(&mut v, &["items".into()]);
        assert!(get(&v, "total").is_none());
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
