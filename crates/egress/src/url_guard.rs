//! Destination URLs: the integration's base URL from config, joined with the path the caller
//! chose, and checked so that the caller cannot leave the base URL.
//!
//! Raw-text checks run before the URL parser: the WHATWG parser silently removes tabs and
//! newlines, turns `\` into `/` and resolves `%2e%2e` as `..`, so after parsing the evidence
//! is gone. Then the parsed URL is checked (scheme, userinfo, host) and, for a join, the result
//! must stay under the base's scheme, host, port and path prefix.

use std::net::IpAddr;

use url::{Host, Url};

use crate::error::Refusal;
use crate::ssrf::{parse_loose_ipv4, Policy, Verdict};

/// Where a checked URL points.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// An IP-literal host, already classified and allowed. reqwest connects to it without
    /// asking the resolver, which is why it must be checked here.
    Ip(IpAddr),
    /// A host name: the [`GuardedResolver`](crate::resolver::GuardedResolver) classifies its
    /// addresses when the client connects.
    Name(String),
}

/// Checks one header value the gateway is about to send (injected credentials, forwarded
/// values): CR, LF and NUL are refused, whatever the HTTP library would do with them.
pub fn check_header_value(value: &[u8]) -> Result<(), Refusal> {
    if value.iter().any(|b| matches!(b, b'\r' | b'\n' | 0)) {
        return Err(Refusal::HeaderValue);
    }
    Ok(())
}

/// Parses and checks a complete URL (a base URL from config, or a redirect target written as
/// text), refusing what [`check_url`] refuses plus raw control characters, whitespace and
/// backslashes, which the URL parser would otherwise remove or reinterpret.
pub fn parse_destination(raw: &str, policy: &Policy) -> Result<(Url, Target), Refusal> {
    check_raw(raw)?;
    if let Some((_, after)) = raw.split_once("://") {
        let end = after.find(['/', '?', '#']).unwrap_or(after.len());
        // `http://:@host/` parses to a URL without userinfo; refuse the attempt all the same.
        if after[..end].contains('@') {
            return Err(Refusal::Userinfo);
        }
        // The parser resolves `..`, `%2e%2e` and `.%2e`: look at the path as written.
        let rest = &after[end..];
        let path_end = rest.find(['?', '#']).unwrap_or(rest.len());
        check_path_text(&rest[..path_end])?;
    }
    let url = Url::parse(raw).map_err(|e| Refusal::Unparseable(e.to_string()))?;
    check_path_text(url.path())?;
    let target = check_url(&url, policy)?;
    Ok((url, target))
}

/// Checks a parsed URL: `http` or `https`, no userinfo, no fragment, a host, and an IP-literal
/// host allowed by the policy. A name host is returned as [`Target::Name`] unless it is
/// numeric (an IPv4 address in a form the parser left as a name) or a `localhost` name.
pub fn check_url(url: &Url, policy: &Policy) -> Result<Target, Refusal> {
    match url.scheme() {
        "http" | "https" => {}
        other => return Err(Refusal::Scheme(other.to_string())),
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(Refusal::Userinfo);
    }
    if url.fragment().is_some() {
        return Err(Refusal::Fragment);
    }
    let ip = match url.host() {
        None => return Err(Refusal::NoHost),
        Some(Host::Ipv4(v4)) => IpAddr::V4(v4),
        Some(Host::Ipv6(v6)) => IpAddr::V6(v6),
        Some(Host::Domain(name)) => return check_name(name).map(Target::Name),
    };
    check_ip(ip, policy).map(Target::Ip)
}

/// Refuses an address the policy refuses.
pub(crate) fn check_ip(ip: IpAddr, policy: &Policy) -> Result<IpAddr, Refusal> {
    match policy.check(ip) {
        Verdict::Allowed => Ok(ip),
        Verdict::Refused(reason) => Err(Refusal::Address { ip, reason }),
    }
}

/// Refuses numeric and `localhost` names, returns the name lowercased without a trailing dot.
pub(crate) fn check_name(name: &str) -> Result<String, Refusal> {
    let lower = name.to_ascii_lowercase();
    let bare = lower.strip_suffix('.').unwrap_or(&lower);
    if bare.is_empty()
        || parse_loose_ipv4(bare).is_some()
        || bare == "localhost"
        || bare.ends_with(".localhost")
        || bare.contains(['%', '\\', '/', '@', ' ', ':'])
    {
        return Err(Refusal::AmbiguousHost(name.to_string()));
    }
    Ok(bare.to_string())
}

/// Joins an integration's base URL with a caller-chosen `path` (optionally followed by `?` and
/// a query), and checks the result.
///
/// The base must be an `http`/`https` URL without userinfo, query or fragment. The caller's
/// path is refused when it contains control characters or whitespace (raw or
/// percent-encoded), backslashes, `%2f`/`%5c` (any case, also double-encoded as `%252f`), any
/// `.` or `..` segment (raw, `%2e`, `.%2e`, double-encoded), or `#`. Dot segments are refused
/// even where they would stay inside the base path: an upstream may normalise differently from
/// us, and no legitimate API path needs them. The joined URL must keep the base's scheme,
/// host and port and lie under its path.
pub fn join_destination(base: &Url, path: &str, policy: &Policy) -> Result<(Url, Target), Refusal> {
    check_url(base, policy)?;
    if base.query().is_some() {
        return Err(Refusal::BaseQuery);
    }
    check_raw(path)?;
    if path.contains('#') {
        return Err(Refusal::FragmentDelimiter);
    }
    let (path, query) = match path.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (path, None),
    };
    check_path_text(path)?;
    if let Some(q) = query {
        check_encoded_controls(q)?;
    }
    let prefix = base.path().trim_end_matches('/');
    let rest = path.strip_prefix('/').unwrap_or(path);
    let mut url = base.clone();
    url.set_path(&format!("{prefix}/{rest}"));
    url.set_query(query);
    let under = url.path() == prefix
        || url
            .path()
            .strip_prefix(prefix)
            .is_some_and(|r| r.starts_with('/'));
    if !under
        || url.scheme() != base.scheme()
        || url.host() != base.host()
        || url.port_or_known_default() != base.port_or_known_default()
    {
        return Err(Refusal::EscapesBase);
    }
    let target = check_url(&url, policy)?;
    Ok((url, target))
}

/// Raw text: no control characters, no whitespace, no backslash.
fn check_raw(s: &str) -> Result<(), Refusal> {
    for c in s.chars() {
        if c.is_control() || c.is_whitespace() {
            return Err(Refusal::ControlCharacter);
        }
        if c == '\\' {
            return Err(Refusal::Backslash);
        }
    }
    Ok(())
}

/// Each segment, decoded once and twice: no `/` or `\`, no dot segment, no control character.
fn check_path_text(path: &str) -> Result<(), Refusal> {
    for seg in path.split('/') {
        let once = percent_decode(seg.as_bytes());
        let twice = percent_decode(&once);
        for form in [seg.as_bytes(), &once, &twice] {
            if form.iter().any(|b| matches!(b, b'/' | b'\\')) {
                return Err(Refusal::EncodedSlash);
            }
            if form == b"." || form == b".." {
                return Err(Refusal::DotSegment);
            }
            if form.iter().any(|b| b.is_ascii_control()) {
                return Err(Refusal::ControlCharacter);
            }
        }
    }
    Ok(())
}

/// A query may contain `/` and `.`, but not encoded control characters.
fn check_encoded_controls(q: &str) -> Result<(), Refusal> {
    let once = percent_decode(q.as_bytes());
    let twice = percent_decode(&once);
    if [&once, &twice]
        .iter()
        .any(|f| f.iter().any(|b| matches!(b, b'\r' | b'\n' | 0)))
    {
        return Err(Refusal::ControlCharacter);
    }
    Ok(())
}

/// Decodes `%XX` escapes; malformed escapes stay as they are.
fn percent_decode(input: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(input.len());
    let mut i = 0;
    while i < input.len() {
        if input[i] == b'%' && i + 2 < input.len() {
            if let (Some(h), Some(l)) = (hex(input[i + 1]), hex(input[i + 2])) {
                out.push(h << 4 | l);
                i += 3;
                continue;
            }
        }
        out.push(input[i]);
        i += 1;
    }
    out
}

fn hex(b: u8) -> Option<u8> {
    (b as char).to_digit(16).and_then(|d| u8::try_from(d).ok())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn base() -> Url {
        Url::parse("https://api.example.com/v1/").unwrap()
    }

    #[test]
    fn join_ok() {
        let (u, t) = join_destination(&base(), "/users/42?x=1&y=a/b", &Policy::default()).unwrap();
        assert_eq!(u.as_str(), "https://api.example.com/v1/users/42?x=1&y=a/b");
        assert_eq!(t, Target::Name("api.example.com".into()));
        let b = Url::parse("https://api.example.com").unwrap();
        let (u, _) = join_destination(&b, "users", &Policy::default()).unwrap();
        assert_eq!(u.as_str(), "https://api.example.com/users");
    }

    #[test]
    fn join_refusals() {
        let p = Policy::default();
        let cases = [
            ("../admin", Refusal::DotSegment),
            ("a/%2e%2e/b", Refusal::DotSegment),
            ("a/.%2E/b", Refusal::DotSegment),
            ("a/%252e%252e/b", Refusal::DotSegment),
            ("./x", Refusal::DotSegment),
            ("a%2fb", Refusal::EncodedSlash),
            ("a%5Cb", Refusal::EncodedSlash),
            ("a%252Fb", Refusal::EncodedSlash),
            ("a\\b", Refusal::Backslash),
            ("a\0b", Refusal::ControlCharacter),
            ("a%00b", Refusal::ControlCharacter),
            ("a\r\nHost: x", Refusal::ControlCharacter),
            ("a%0d%0ab", Refusal::ControlCharacter),
            ("x?y=%0d%0a", Refusal::ControlCharacter),
            ("a#b", Refusal::FragmentDelimiter),
        ];
        for (path, want) in cases {
            assert_eq!(
                join_destination(&base(), path, &p).unwrap_err(),
                want,
                "{path}"
            );
        }
    }

    #[test]
    fn header_values() {
        assert!(check_header_value(b"Bearer abc").is_ok());
        assert_eq!(check_header_value(b"a\r\nb"), Err(Refusal::HeaderValue));
        assert_eq!(check_header_value(b"a\nb"), Err(Refusal::HeaderValue));
        assert_eq!(check_header_value(b"a\0b"), Err(Refusal::HeaderValue));
    }

    #[test]
    fn decode() {
        assert_eq!(percent_decode(b"%2e%2E%"), b"..%");
        assert_eq!(percent_decode(b"%2"), b"%2");
        assert_eq!(percent_decode(b"%zz%41"), b"%zzA");
    }
}
