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

/// Refuses paths that different servers would interpret differently: dot segments (also
/// percent-encoded), encoded or backslash separators, NUL. Routing happens on the raw path,
/// so what the gateway matched is exactly what the upstream receives.
pub fn check_path(path: &str) -> Result<(), MalformedKind> {
    if !path.starts_with('/') {
        return Err(MalformedKind::InvalidPath);
    }
    // Without `%`, a backslash or `.` none of the checks below can match: most paths stop here,
    // without the lower-cased copy.
    if !path.bytes().any(|b| matches!(b, b'%' | b'\\' | b'.')) {
        return Ok(());
    }
    let lower = path.to_ascii_lowercase();
    if lower.contains("%2f") || lower.contains("%5c") || lower.contains('\\') {
        return Err(MalformedKind::EncodedSeparator);
    }
    if lower.contains("%00") {
        return Err(MalformedKind::InvalidPath);
    }
    for seg in lower.split('/') {
        let decoded = seg.replace("%2e", ".");
        if decoded == "." || decoded == ".." {
            return Err(MalformedKind::DotSegments);
        }
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
        ] {
            assert_eq!(check_path(p), Err(want), "{p}");
        }
        for ok in ["/", "/a/b.c", "/a/..b", "/v1/orders/42", "/a/%20b"] {
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
        fn accepted_paths_are_unambiguous(path in "[/a-zA-Z0-9.%\\\\-]{0,40}") {
            if check_path(&path).is_ok() {
                let lower = path.to_ascii_lowercase();
                prop_assert!(path.starts_with('/'));
                prop_assert!(!lower.contains("%2f") && !lower.contains("%5c") && !lower.contains('\\'));
                for seg in lower.split('/') {
                    let d = seg.replace("%2e", ".");
                    prop_assert!(d != "." && d != "..");
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
