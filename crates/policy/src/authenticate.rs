//! Authentication: establishes the caller's [`Identity`] from an API key (as
//! `Authorization: Bearer pcl_...` or `X-Api-Key: pcl_...`), or refuses with 401. Failures are
//! counted per source IP and key id; a locked-out source gets 429 before any verification. The
//! credential is consumed here: it is removed before the request goes upstream.

use crate::{Flow, Policy, Step};
use http::{header, HeaderName, Request};
use portcullis_config::ClientConfig;
use portcullis_core::{
    AuthKind, Body, ClientCert, GatewayError, Identity, IdentityData, RequestContext, TokenClaims,
};
use portcullis_identity::{parse_key, ApiKeys, BruteForce, JwtVerifier, TokenIssuer};
use std::{collections::HashMap, sync::Arc};

/// Parsed once: a `&str` name is parsed again on every lookup.
const X_API_KEY: HeaderName = HeaderName::from_static("x-api-key");

/// Clients by id, from the running configuration.
pub type Clients = Arc<HashMap<String, Arc<ClientConfig>>>;

/// The authentication policy for one route.
pub struct Authenticate {
    keys: Option<Arc<ApiKeys>>,
    jwt: Option<Arc<JwtVerifier>>,
    oauth: Option<Arc<TokenIssuer>>,
    mtls: bool,
    /// The configuration's clients by id, each with its share of an [`Identity`] built once:
    /// copying the roles, scopes and attributes out of the client's config for every request
    /// was four allocations (and four frees) per authenticated request.
    prepared: HashMap<String, Prepared>,
    guard: Arc<BruteForce>,
    route: Arc<str>,
}

/// What every request of one client shares in its [`Identity`].
struct Prepared {
    client: Arc<ClientConfig>,
    roles: Arc<[String]>,
    scopes: Arc<[String]>,
    attributes: Arc<std::collections::BTreeMap<String, String>>,
}

impl Prepared {
    fn of(client: &Arc<ClientConfig>) -> Self {
        Prepared {
            client: client.clone(),
            roles: client.roles.clone().into(),
            scopes: client.scopes.clone().into(),
            attributes: Arc::new(client.attributes.clone()),
        }
    }

    /// This client's identity for one request.
    fn identity(
        &self,
        client_id: Arc<str>,
        scopes: Arc<[String]>,
        kind: AuthKind,
        key_id: Option<Arc<str>>,
        claims: Option<TokenClaims>,
    ) -> Identity {
        Identity::new(IdentityData {
            client_id,
            roles: self.roles.clone(),
            scopes,
            attributes: self.attributes.clone(),
            kind,
            key_id,
            claims,
        })
    }
}

/// A credential that verified.
struct Verified {
    client_id: Arc<str>,
    /// The API key's id, for an API key.
    key_id: Option<Arc<str>>,
    /// A token's scopes and claims, for a token.
    token: Option<(Vec<String>, TokenClaims)>,
    kind: AuthKind,
}

impl Verified {
    fn token(c: portcullis_identity::JwtClaims, kind: AuthKind) -> Verified {
        Verified {
            client_id: Arc::from(c.client_id.as_str()),
            key_id: None,
            token: Some((c.scopes, c.claims)),
            kind,
        }
    }
}

/// The identity an API key verified.
fn by_key(v: portcullis_identity::Verified) -> Verified {
    Verified {
        client_id: v.client_id,
        key_id: Some(v.key_id),
        token: None,
        kind: AuthKind::ApiKey,
    }
}

impl Authenticate {
    /// Authenticates against `clients` with whichever of API keys, JWTs and client
    /// certificates the route's `auth` methods enable. With none, every request is refused.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        keys: Option<Arc<ApiKeys>>,
        jwt: Option<Arc<JwtVerifier>>,
        oauth: Option<Arc<TokenIssuer>>,
        mtls: bool,
        clients: Clients,
        guard: Arc<BruteForce>,
        route: &str,
    ) -> Self {
        let prepared = clients
            .iter()
            .map(|(id, c)| (id.clone(), Prepared::of(c)))
            .collect();
        Authenticate {
            keys,
            jwt,
            oauth,
            mtls,
            prepared,
            guard,
            route: Arc::from(route),
        }
    }

    /// The client bound to a verified certificate, by fingerprint or DNS SAN.
    fn by_certificate(&self, cert: &ClientCert) -> Option<&Prepared> {
        self.prepared.values().find(|p| {
            p.client.cert_fingerprints.contains(&cert.fingerprint)
                || cert
                    .dns_names
                    .iter()
                    .any(|n| p.client.cert_sans.contains(n))
        })
    }

    /// An API key's verification, done in place: a keyed hash and a constant-time compare.
    /// None when it is not a valid key of this route.
    fn check_key(&self, id: &str, secret: &str) -> Option<Verified> {
        let v = self.keys.as_ref()?.verify_parts(id, secret).ok()?;
        Some(by_key(v))
    }

    /// [`Authenticate::check_key`] after a reload, for a key id this process did not know.
    async fn check_key_fresh(&self, id: &str, secret: &str) -> Option<Verified> {
        let v = self.keys.as_ref()?.verify_fresh(id, secret).await.ok()?;
        Some(by_key(v))
    }

    /// A bearer token's verification (OAuth first, then JWT), which may wait for keys to be
    /// fetched. None when the token is not valid for any of the route's methods.
    async fn check_token(&self, credential: &str) -> Option<Verified> {
        if credential.matches('.').count() != 2 {
            return None;
        }
        if let Some(issuer) = &self.oauth {
            // Boxed, here and below: the token verifiers' futures are ~1.2-1.8 KB, and inline
            // they would make every token request's phase future that large.
            if let Some(c) = Box::pin(issuer.verify(credential)).await {
                return Some(Verified::token(c, AuthKind::OAuth2));
            }
        }
        let claims = match Box::pin(self.jwt.as_ref()?.verify(credential)).await {
            Ok(c) => c,
            Err(e) => {
                tracing::info!(target: "portcullis::security", route = %self.route, reason = %e, "JWT refused");
                return None;
            }
        };
        Some(Verified::token(claims, AuthKind::Jwt))
    }
}

/// `Authorization: Bearer <credential>` when `Authorization` is text (no other scheme, and no
/// fallback to `X-Api-Key` then), otherwise `X-Api-Key: <credential>`. Borrowed from the
/// request: a `String` copy, as before, put the secret in one more place in memory, never
/// zeroized, and cost an allocation per request.
fn presented(req: &Request<Body>) -> Option<&str> {
    let h = req.headers();
    if let Some(v) = h.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()) {
        let (scheme, rest) = v.split_once(' ')?;
        return scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim());
    }
    h.get(&X_API_KEY)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
}

impl Policy for Authenticate {
    fn name(&self) -> &'static str {
        "authenticate"
    }

    fn has_response_phase(&self) -> bool {
        false
    }

    /// Decided in place for API keys, certificates and refusals; only a bearer token's
    /// verification is a future.
    fn on_request(&self, req: Request<Body>) -> Step<'_, Flow> {
        let Some((ip, cert)) = req
            .extensions()
            .get::<RequestContext>()
            .map(|c| (c.client_ip, c.connection.client_cert.clone()))
        else {
            return Err(GatewayError::Internal("request context missing".into())).into();
        };
        let Some(key) = presented(&req) else {
            return self.without_credential(req, ip, cert).into();
        };
        // A locked-out address is refused outright. A locked-out key id only when the key does
        // not verify: the id is public (it is printed in key lists and logs), so refusing the
        // real key too would let anyone who has seen the id shut its workflow out. Guessing
        // its secret stays refused, and a 256-bit secret is not guessed in a cool-down.
        if let Some(wait) = self.guard.locked(ip, None) {
            return Err(GatewayError::TooManyRequests { retry_after: wait }).into();
        }
        // Split once, for the lockout (by key id) and the verification.
        let parts = parse_key(key);
        let key_locked = parts.and_then(|(id, _)| self.guard.locked_key(id));
        if key.starts_with(portcullis_identity::KEY_PREFIX) {
            let verified = parts.and_then(|(id, secret)| self.check_key(id, secret));
            if verified.is_some() || parts.is_none() || self.keys.is_none() {
                return self.finish(req, ip, verified, key_locked).into();
            }
            // A key that fails here may have been issued (or re-issued) through another
            // instance a moment ago: look again after a shared, rate-limited reload before
            // refusing. Every failure waits alike, so the wait reveals nothing.
            return Step::later(async move {
                let verified = match presented(&req).and_then(parse_key) {
                    Some((id, secret)) => self.check_key_fresh(id, secret).await,
                    None => None,
                };
                self.finish(req, ip, verified, key_locked)
            });
        }
        Step::later(async move {
            let verified = match presented(&req) {
                Some(token) => self.check_token(token).await,
                None => None,
            };
            self.finish(req, ip, verified, key_locked)
        })
    }
}

impl Authenticate {
    /// A request that presents no credential: a client certificate bound to a client (when
    /// the route accepts them), otherwise 401, or 429 for a locked-out source.
    fn without_credential(
        &self,
        mut req: Request<Body>,
        ip: std::net::IpAddr,
        cert: Option<Arc<ClientCert>>,
    ) -> Result<Flow, GatewayError> {
        if let Some(cert) = cert.filter(|_| self.mtls) {
            let Some(prepared) = self.by_certificate(&cert).filter(|p| p.client.enabled) else {
                tracing::warn!(target: "portcullis::security", event = "auth_failure", route = %self.route, client_ip = %ip, cert_fingerprint = %cert.fingerprint, "client certificate is not bound to an enabled client");
                return Err(GatewayError::Unauthorized { presented: true });
            };
            let client = &prepared.client;
            if !client.ip_rules.admits(&ip) {
                return Err(GatewayError::Forbidden);
            }
            let identity = prepared.identity(
                Arc::from(client.id.as_str()),
                prepared.scopes.clone(),
                AuthKind::Mtls,
                None,
                None,
            );
            req.extensions_mut().insert(identity);
            return Ok(Flow::Continue(req));
        }
        if let Some(wait) = self.guard.locked(ip, None) {
            return Err(GatewayError::TooManyRequests { retry_after: wait });
        }
        Err(GatewayError::Unauthorized { presented: false })
    }

    /// The request phase once the credential was verified (`verified`) or refused (`None`);
    /// `key_locked`: the presented key id is locked out for that long.
    fn finish(
        &self,
        mut req: Request<Body>,
        ip: std::net::IpAddr,
        verified: Option<Verified>,
        key_locked: Option<std::time::Duration>,
    ) -> Result<Flow, GatewayError> {
        let prepared = verified
            .as_ref()
            .and_then(|v| self.prepared.get(v.client_id.as_ref()))
            .filter(|p| p.client.enabled);
        let (Some(verified), Some(prepared)) = (verified, prepared) else {
            // Counted and logged like any failure, against a locked key id too: a guess at it
            // still counts against the guessing address (and keeps the id locked).
            let key_id = presented(&req).and_then(ApiKeys::key_id_of);
            let known = key_id.is_some_and(|id| self.keys.as_ref().is_some_and(|k| k.knows(id)));
            let locked = self.guard.fail(ip, key_id, known) || key_locked.is_some();
            // The key id is public (it is not the secret); logging it lets an operator see
            // which key is being guessed at.
            tracing::warn!(target: "portcullis::security", event = "auth_failure", route = %self.route, client_ip = %ip, key_id, locked, "authentication failed");
            metrics::counter!("portcullis_auth_failures_total", "route" => self.route.to_string())
                .increment(1);
            return Err(match key_locked {
                Some(wait) => GatewayError::TooManyRequests { retry_after: wait },
                None => GatewayError::Unauthorized { presented: true },
            });
        };
        let client = &prepared.client;
        if !client.ip_rules.admits(&ip) {
            tracing::warn!(target: "portcullis::security", event = "ip_not_allowed", route = %self.route, client = %client.id, client_ip = %ip, "client called from a network it is not allowed to use");
            return Err(GatewayError::Forbidden);
        }
        let h = req.headers_mut();
        h.remove(header::AUTHORIZATION);
        h.remove(&X_API_KEY);
        // A token's scopes are narrowed to what the client may hold, when the client lists any.
        let (token_scopes, claims) = verified.token.unzip();
        let scopes: Arc<[String]> = match token_scopes {
            Some(t) if client.scopes.is_empty() => t.into(),
            Some(t) => t
                .into_iter()
                .filter(|s| client.scopes.contains(s))
                .collect(),
            None => prepared.scopes.clone(),
        };
        let identity = prepared.identity(
            verified.client_id,
            scopes,
            verified.kind,
            verified.key_id,
            claims,
        );
        req.extensions_mut().insert(identity);
        Ok(Flow::Continue(req))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn request(headers: &[(&str, &[u8])]) -> Request<Body> {
        let mut b = Request::builder();
        for (n, v) in headers {
            b = b.header(*n, HeaderValue::from_bytes(v).expect("value"));
        }
        b.body(portcullis_core::empty()).expect("request")
    }

    fn credential(headers: &[(&str, &[u8])]) -> Option<String> {
        presented(&request(headers)).map(str::to_string)
    }

    #[test]
    fn the_credential_is_found_where_it_was_before() {
        assert_eq!(
            credential(&[("authorization", b"Bearer pcl_ab_cd")]).as_deref(),
            Some("pcl_ab_cd")
        );
        assert_eq!(
            credential(&[("authorization", b"bEaReR   pcl_ab_cd  ")]).as_deref(),
            Some("pcl_ab_cd")
        );
        assert_eq!(
            credential(&[("x-api-key", b"  pcl_ab_cd ")]).as_deref(),
            Some("pcl_ab_cd")
        );
        // Another scheme, or no scheme, in a text `Authorization`: nothing, and no fallback.
        for auth in [&b"Basic dXNlcjpwYXNz"[..], b"pcl_ab_cd"] {
            assert_eq!(
                credential(&[("authorization", auth), ("x-api-key", b"pcl_ab_cd")]),
                None
            );
        }
        // An `Authorization` that is not text is passed over for `X-Api-Key`.
        assert_eq!(
            credential(&[("authorization", b"Bearer \xff"), ("x-api-key", b"pcl_x_y")]).as_deref(),
            Some("pcl_x_y")
        );
        assert_eq!(credential(&[("x-api-key", b"\xffpcl")]), None);
        assert_eq!(credential(&[]), None);
        assert_eq!(
            credential(&[("authorization", b"Bearer ")]).as_deref(),
            Some("")
        );
    }
}
