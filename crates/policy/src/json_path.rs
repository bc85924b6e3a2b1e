//! Dotted paths into JSON values (`user.email`), applied through arrays element by element.

use serde_json::Value;

/// The value at `path`, when it exists and is not inside an array.
pub(crate) fn get<'a>(v: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.').try_fold(v, |cur, seg| cur.get(seg))
}

/// True when `path` exists anywhere (through arrays too).
pub(crate) fn contains(v: &Value, path: &str) -> bool {
    fn walk(v: &Value, segs: &[&str]) -> bool {
        match (v, segs.split_first()) {
            (_, None) => true,
            (Value::Array(items), Some(_)) => items.iter().any(|i| walk(i, segs)),
            (Value::Object(m), Some((first, rest))) => m.get(*first).is_some_and(|x| walk(x, rest)),
            _ => false,
        }
    }
    walk(v, &path.split('.').collect::<Vec<_>>())
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
        assert!(contains(&v, "items.user.email"));
        remove(&mut v, "items.user.email");
        assert!(!contains(&v, "items.user.email"));
        assert_eq!(get(&v, "total"), Some(&serde_json::json!(2)));
        keep_only(&mut v, &["items".into()]);
        assert!(get(&v, "total").is_none());
    }
}
