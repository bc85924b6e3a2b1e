//! Data minimization of untrusted JSON (third-party responses): keep only allowed top-level
//! fields, remove denied paths, and mask the values at configured paths.

use crate::json_path;
use serde_json::Value;
use sha2::{Digest, Sha256};

/// How a masked value is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MaskStyle {
    /// `****1234`: the last four characters (nothing of values of four or fewer).
    Last4,
    /// `sha256:<16 hex>`: stable across calls, so records can still be joined, but not
    /// reversible for high-entropy values.
    Hash,
}

fn mask(v: &mut Value, style: MaskStyle) {
    let text = match &*v {
        Value::String(s) => s.clone(),
        Value::Null => return,
        other => other.to_string(),
    };
    *v = Value::String(match style {
        MaskStyle::Last4 => {
            let chars: Vec<char> = text.chars().collect();
            if chars.len() <= 4 {
                "****".to_string()
            } else {
                format!(
                    "****{}",
                    chars[chars.len() - 4..].iter().collect::<String>()
                )
            }
        }
        MaskStyle::Hash => {
            let d = Sha256::digest(text.as_bytes());
            format!(
                "sha256:{}",
                d[..8]
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect::<String>()
            )
        }
    });
}

/// Applies `allow` (top-level fields kept; `None` keeps all), then `deny` (dotted paths
/// removed), then `mask` (dotted paths masked), through arrays.
pub fn minimize(
    v: &mut Value,
    allow: Option<&[String]>,
    deny: &[String],
    masked: &[String],
    style: MaskStyle,
) {
    if let Some(allow) = allow {
        json_path::keep_only(v, allow);
    }
    for p in deny {
        json_path::remove(v, p);
    }
    for p in masked {
        json_path::update(v, p, &|x| mask(x, style));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allow_deny_and_mask_apply_through_arrays() {
        let mut v = serde_json::json!({
            "users": [{"email": "ann@example.com", "card": "4111111111111111", "notes": "x"}, {"email": "bo@example.com", "card": 1234}],
            "internal": true
        });
        minimize(
            &mut v,
            Some(&["users".to_string()]),
            &["users.notes".to_string()],
            &["users.card".to_string()],
            MaskStyle::Last4,
        );
        assert_eq!(
            v,
            serde_json::json!({"users": [{"email": "ann@example.com", "card": "****1111"}, {"email": "bo@example.com", "card": "****"}]})
        );
        minimize(
            &mut v,
            None,
            &[],
            &["users.email".to_string()],
            MaskStyle::Hash,
        );
        let e = v["users"][0]["email"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        assert!(e.starts_with("sha256:") && !e.contains("ann"), "{e}");
    }
}
