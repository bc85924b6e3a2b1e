//! Secret references: configuration never holds a secret, only `{secret:NAME}` or
//! `{secret:NAME#field}` (one field of a structured secret), resolved from the vault at
//! request time.

use std::fmt;

/// A reference to a secret in the vault.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SecretRef {
    /// Secret name.
    pub name: String,
    /// A field of a structured (JSON object) secret.
    pub field: Option<String>,
}

impl fmt::Display for SecretRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.field {
            Some(field) => write!(f, "{{secret:{}#{field}}}", self.name),
            None => write!(f, "{{secret:{}}}", self.name),
        }
    }
}

/// A value made of literal text around at most one secret reference, such as
/// `"Bearer {secret:github-token}"`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretTemplate {
    /// Text before the reference (or the whole value when there is none).
    pub prefix: String,
    /// The reference, if any.
    pub secret: Option<SecretRef>,
    /// Text after the reference.
    pub suffix: String,
}

fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'/'))
}

/// Parses a template; the error says what is wrong.
pub fn parse_template(s: &str) -> Result<SecretTemplate, String> {
    let Some(start) = s.find("{secret:") else {
        if s.contains("{secret") {
            return Err(format!(
                "{s:?} looks like a malformed secret reference; write {{secret:NAME}}"
            ));
        }
        return Ok(SecretTemplate {
            prefix: s.to_string(),
            secret: None,
            suffix: String::new(),
        });
    };
    let rest = &s[start + "{secret:".len()..];
    let end = rest
        .find('}')
        .ok_or_else(|| format!("{s:?}: unterminated secret reference"))?;
    let inner = &rest[..end];
    let suffix = &rest[end + 1..];
    if suffix.contains("{secret:") {
        return Err(format!("{s:?}: at most one secret reference per value"));
    }
    let (name, field) = match inner.split_once('#') {
        Some((n, f)) => (n, Some(f)),
        None => (inner, None),
    };
    if !valid_name(name) {
        return Err(format!(
            "{s:?}: secret name {name:?} is not valid (letters, digits, '.', '_', '-', '/')"
        ));
    }
    if let Some(f) = field {
        if f.is_empty()
            || !f
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        {
            return Err(format!("{s:?}: field {f:?} is not valid"));
        }
    }
    Ok(SecretTemplate {
        prefix: s[..start].to_string(),
        secret: Some(SecretRef {
            name: name.to_string(),
            field: field.map(str::to_string),
        }),
        suffix: suffix.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_parse() {
        let t = parse_template("Bearer {secret:gh-token}").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(t.prefix, "Bearer ");
        assert_eq!(
            t.secret,
            Some(SecretRef {
                name: "gh-token".into(),
                field: None
            })
        );
        let t = parse_template("{secret:sf#client_id}").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(t.secret.map(|s| s.field), Some(Some("client_id".into())));
        assert!(parse_template("plain").is_ok_and(|t| t.secret.is_none()));
        for bad in [
            "{secret:}",
            "{secret:a b}",
            "{secret:x",
            "{secret:a}{secret:b}",
            "{secret:a#}",
            "{secretx}",
        ] {
            assert!(parse_template(bad).is_err(), "{bad}");
        }
    }
}
