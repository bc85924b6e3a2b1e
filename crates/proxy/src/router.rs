//! Request path checks and route lookup (matchit, one tree for all methods).

use crate::template::{compile_template, Part};
use http::Method;
use portcullis_config::RouteConfig;
use portcullis_core::{MalformedKind, RouteMatch};
use portcullis_policy::Chain;
use std::sync::Arc;

/// A declared route ready to serve.
pub(crate) struct CompiledRoute {
    pub id: Arc<str>,
    pub config: Arc<RouteConfig>,
    pub chain: Chain,
}

/// All routes that share one path template (they differ by method).
struct PathEntry {
    template: Arc<str>,
    /// The template's parameter names, so a match shares them instead of copying each.
    param_names: Vec<Arc<str>>,
    routes: Vec<CompiledRoute>,
}

/// The routing table of one configuration generation.
#[derive(Default)]
pub(crate) struct RouteTable {
    router: matchit::Router<usize>,
    entries: Vec<PathEntry>,
}

/// The outcome of a lookup.
pub(crate) enum Lookup<'a> {
    /// The route, and its captured parameters when its chain reads them.
    Found(&'a CompiledRoute, Option<RouteMatch>),
    NoPath,
    NoMethod(Vec<Method>),
}

impl RouteTable {
    /// Adds a route. Overlaps were refused by config validation; an insert error here means a
    /// template that validation let through, which is reported rather than ignored.
    pub(crate) fn insert(&mut self, route: CompiledRoute) -> Result<(), String> {
        let template = route.config.path.clone();
        if let Some(e) = self.entries.iter_mut().find(|e| *e.template == *template) {
            e.routes.push(route);
            return Ok(());
        }
        self.router
            .insert(template.clone(), self.entries.len())
            .map_err(|e| e.to_string())?;
        self.entries.push(PathEntry {
            param_names: param_names(&template),
            template: Arc::from(template),
            routes: vec![route],
        });
        Ok(())
    }

    /// Finds the route for `method` and `path`. HEAD is answered by a route that declares GET.
    pub(crate) fn lookup(&self, method: &Method, path: &str) -> Lookup<'_> {
        let Ok(m) = self.router.at(path) else {
            return Lookup::NoPath;
        };
        let Some(entry) = self.entries.get(*m.value) else {
            return Lookup::NoPath;
        };
        let hit = entry
            .routes
            .iter()
            .find(|r| r.config.allows(method))
            .or_else(|| {
                (*method == Method::HEAD)
                    .then(|| entry.routes.iter().find(|r| r.config.allows(&Method::GET)))
                    .flatten()
            });
        match hit {
            Some(route) => {
                // Captured only for a chain that reads them: copying the values is an
                // allocation per parameter, and most routes never look at one.
                let matched = route.chain.reads_route_match().then(|| RouteMatch {
                    params: m
                        .params
                        .iter()
                        .map(|(k, v)| {
                            let name = entry
                                .param_names
                                .iter()
                                .find(|n| ***n == *k)
                                .cloned()
                                .unwrap_or_else(|| Arc::from(k));
                            (name, v.to_string())
                        })
                        .collect(),
                });
                Lookup::Found(route, matched)
            }
            None => {
                let mut allow: Vec<Method> = entry
                    .routes
                    .iter()
                    .flat_map(|r| r.config.methods.iter().cloned())
                    .collect();
                if allow.contains(&Method::GET) && !allow.contains(&Method::HEAD) {
                    allow.push(Method::HEAD);
                }
                Lookup::NoMethod(allow)
            }
        }
    }

    /// The first route with a CORS policy among those sharing `path`'s template, whatever
    /// their methods: the route a preflight for an undeclared method belongs to.
    pub(crate) fn cors_route_at(&self, path: &str) -> Option<&CompiledRoute> {
        let m = self.router.at(path).ok()?;
        self.entries
            .get(*m.value)?
            .routes
            .iter()
            .find(|r| r.config.cors.is_some())
    }

    /// Every compiled route, in declaration order per path.
    pub(crate) fn routes(&self) -> impl Iterator<Item = &CompiledRoute> {
        self.entries.iter().flat_map(|e| e.routes.iter())
    }
}

/// The names of a template's `{name}` and `{*name}` parameters, in order.
fn param_names(template: &str) -> Vec<Arc<str>> {
    compile_template(template)
        .into_iter()
        .filter_map(|p| match p {
            Part::Param(name) => Some(Arc::from(name)),
            Part::Literal(_) => None,
        })
        .collect()
}

/// Refuses paths that different servers would interpret differently, so that a path-based
/// rule (a route's auth, its IP rules) cannot be slipped past by writing the same path
/// another way: dot segments (also percent-encoded), encoded or backslash separators, NUL,
/// empty segments (`//`), `;` path parameters, percent-encoded unreserved characters
/// (`%61` for `a`), malformed escapes and escapes that are not UTF-8 (`%c0%ae`, an overlong
/// `.`). Routing happens on the raw path, so what the gateway matched is exactly what the
/// upstream receives: refusing, rather than normalising, keeps that true.
///
/// Not refused: letter case and a trailing `.` in a segment. Routes match them as written;
/// an upstream that folds them (IIS, case-insensitive file systems) must not be given a
/// catch-all route beside routes that protect a part of it.
pub fn check_path(path: &str) -> Result<(), MalformedKind> {
    let b = path.as_bytes();
    if b.first() != Some(&b'/') {
        return Err(MalformedKind::InvalidPath);
    }
    // One pass for `//`, `\\`, `;` and whether `.` or `%` occur; most paths have neither.
    let (mut dot, mut pct) = (false, false);
    let mut prev = 0u8;
    for &c in b {
        match c {
            b'/' if prev == b'/' => return Err(MalformedKind::EmptySegment),
            b'\\' => return Err(MalformedKind::EncodedSeparator),
            b';' => return Err(MalformedKind::PathParameter),
            b'.' => dot = true,
            b'%' => pct = true,
            _ => {}
        }
        prev = c;
    }
    if !pct {
        // Nothing to decode: only written dot segments are left to find, with no copy.
        if dot
            && b.split(|c| *c == b'/')
                .any(|seg| seg == b"." || seg == b"..")
        {
            return Err(MalformedKind::DotSegments);
        }
        return Ok(());
    }
    let mut decoded = Vec::with_capacity(b.len());
    let mut encoded_dot = false;
    let mut i = 0;
    while i < b.len() {
        if b[i] != b'%' {
            decoded.push(b[i]);
            i += 1;
            continue;
        }
        let hex = |j: usize| b.get(j).and_then(|c| (*c as char).to_digit(16));
        let (Some(hi), Some(lo)) = (hex(i + 1), hex(i + 2)) else {
            return Err(MalformedKind::InvalidEncoding);
        };
        let v = (hi * 16 + lo) as u8;
        match v {
            b'/' | b'\\' => return Err(MalformedKind::EncodedSeparator),
            0 => return Err(MalformedKind::InvalidPath),
            // The encoded forms of what is refused as written, as Spring's strict firewall
            // refuses them: an upstream that decodes before it strips `;` parameters, or
            // decodes twice, would read `/admin%3b/x` or `/%2561dmin/x` as `/admin...`.
            b';' => return Err(MalformedKind::PathParameter),
            b'%' => return Err(MalformedKind::DoubleEncoding),
            b'.' => encoded_dot = true,
            c if c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'~') => {
                return Err(MalformedKind::EncodedUnreserved)
            }
            _ => {}
        }
        decoded.push(v);
        i += 3;
    }
    if std::str::from_utf8(&decoded).is_err() {
        return Err(MalformedKind::InvalidEncoding);
    }
    if decoded
        .split(|c| *c == b'/')
        .any(|seg| seg == b"." || seg == b"..")
    {
        return Err(MalformedKind::DotSegments);
    }
    // `.` is unreserved too: an encoded one outside a dot segment is refused as such.
    if encoded_dot {
        return Err(MalformedKind::EncodedUnreserved);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn template_parameter_names_are_read_in_order() {
        let names = param_names("/v2/{id}/items/{*rest}");
        let names: Vec<&str> = names.iter().map(|n| &**n).collect();
        assert_eq!(names, ["id", "rest"]);
        assert!(param_names("/health").is_empty());
    }

    #[test]
    fn risky_paths_are_refused() {
        for (p, want) in [
            ("/a/../b", MalformedKind::DotSegments),
            ("/a/./b", MalformedKind::DotSegments),
            ("/a/%2e%2E/b", MalformedKind::DotSegments),
            ("/a/.%2e", MalformedKind::DotSegments),
            ("/a%2fb", MalformedKind::EncodedSeparator),
            ("/a%5Cb", MalformedKind::EncodedSeparator),
            ("/a\\b", MalformedKind::EncodedSeparator),
            ("/a%00", MalformedKind::InvalidPath),
            ("*", MalformedKind::InvalidPath),
            // Each of these reached a catch-all route instead of the route that protects
            // `/admin/...`, and the upstream then read it as `/admin/...`.
            ("//admin/x", MalformedKind::EmptySegment),
            ("/admin//x", MalformedKind::EmptySegment),
            ("/%61dmin/x", MalformedKind::EncodedUnreserved),
            ("/admin%2Dx", MalformedKind::EncodedUnreserved),
            ("/a%7e", MalformedKind::EncodedUnreserved),
            ("/admin%2e/x", MalformedKind::EncodedUnreserved),
            ("/x/..;/admin/x", MalformedKind::PathParameter),
            ("/admin;/x", MalformedKind::PathParameter),
            ("/a;jsessionid=1", MalformedKind::PathParameter),
            ("/a/%zz", MalformedKind::InvalidEncoding),
            ("/a/%", MalformedKind::InvalidEncoding),
            ("/a/%4", MalformedKind::InvalidEncoding),
            ("/a/%c0%ae%c0%ae/x", MalformedKind::InvalidEncoding),
            ("/a/%ff", MalformedKind::InvalidEncoding),
            ("/admin%3b/x", MalformedKind::PathParameter),
            ("/%2561dmin/x", MalformedKind::DoubleEncoding),
            ("/%252e%252e/admin/x", MalformedKind::DoubleEncoding),
        ] {
            assert_eq!(check_path(p), Err(want), "{p}");
        }
        for ok in [
            "/",
            "/a/",
            "/a/b.c",
            "/a/..b",
            "/v1/orders/42",
            "/a/%20b",
            "/caf%C3%A9",
            "/a:b@c!$&'()*+,=",
        ] {
            assert_eq!(check_path(ok), Ok(()), "{ok}");
        }
    }
}

#[cfg(test)]
mod props {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Whatever a client sends, the check answers without panicking, and anything it
        /// accepts has no dot segment and no encoded separator left in it.
        #[test]
        fn accepted_paths_are_unambiguous(path in "[/a-zA-Z0-9.%;\\\\-]{0,40}") {
            if check_path(&path).is_ok() {
                let lower = path.to_ascii_lowercase();
                prop_assert!(path.starts_with('/'));
                prop_assert!(!lower.contains("%2f") && !lower.contains("%5c") && !lower.contains('\\'));
                prop_assert!(!path.contains("//") && !path.contains(';'));
                // Every escape is well formed and of a character that needs one.
                for (i, _) in path.match_indices('%') {
                    let v = u8::from_str_radix(path.get(i + 1..i + 3).unwrap_or("zz"), 16);
                    prop_assert!(v.is_ok_and(|v| !v.is_ascii_alphanumeric() && !b"-._~".contains(&v)));
                }
                for seg in lower.split('/') {
                    prop_assert!(seg != "." && seg != "..");
                }
            }
        }

        #[test]
        fn shapes_never_panic_and_stay_bounded(path in any::<String>()) {
            let s = crate::inventory::path_shape(&path);
            prop_assert!(s.starts_with('/'));
            prop_assert!(s.len() <= 13 * 49 + 8);
        }
    }
}
