//! Authentication: establishes the caller's [`Identity`] from an API key (as
//! `Authorization: Bearer pcl_...` or `X-Api-Key: pcl_...`), or refuses with 401. Failures are
//! counted per source IP and key id; a locked-out source gets 429 before any verification. The
//! credential is consumed here: it is removed before the request goes upstream.

use crate::{Flow, Policy};
use async_trait::async_trait;
use http::{header, Request};
use portcullis_config::ClientConfig;
use portcullis_core::{AuthKind, Body, GatewayError, Identity, RequestContext};
use portcullis_identity::{ApiKeys, BruteForce};
use std::{collections::HashMap, sync::Arc};

/// Clients by id, from the running configuration.
pub type Clients = Arc<HashMap<String, Arc<ClientConfig>>>;

/// The authentication policy for one route.
pub struct Authenticate {
    keys: Arc<ApiKeys>,
    clients: Clients,
    guard: Arc<BruteForce>,
    route: Arc<str>,
}

impl Authenticate {
    /// Authenticates with API keys against `clients`.
    pub fn new(keys: Arc<ApiKeys>, clients: Clients, guard: Arc<BruteForce>, route: &str) -> Self {
        Authenticate {
            keys,
            clients,
            guard,
            route: Arc::from(route),
        }
    }
}

fn presented(req: &Request<Body>) -> Option<String> {
    let h = req.headers();
    if let Some(v) = h.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()) {
        let (scheme, rest) = v.split_once(' ')?;
        return scheme
            .eq_ignore_ascii_case("bearer")
            .then(|| rest.trim().to_string());
    }
    h.get("x-api-key")
        .and_then(|v| v.to_str().ok())
        .map(|s| s.trim().to_string())
}

#[async_trait]
impl Policy for Authenticate {
    fn name(&self) -> &'static str {
        "authenticate"
    }

    async fn on_request(&self, mut req: Request<Body>) -> Result<Flow, GatewayError> {
        let ip = req
            .extensions()
            .get::<RequestContext>()
            .map(|c| c.client_ip)
            .ok_or_else(|| GatewayError::Internal("request context missing".into()))?;
        let Some(key) = presented(&req) else {
            if let Some(wait) = self.guard.locked(ip, None) {
                return Err(GatewayError::TooManyRequests { retry_after: wait });
            }
            return Err(GatewayError::Unauthorized { presented: false });
        };
        let key_id = ApiKeys::key_id_of(&key);
        if let Some(wait) = self.guard.locked(ip, key_id) {
            return Err(GatewayError::TooManyRequests { retry_after: wait });
        }
        let verified = self.keys.verify(&key).ok();
        let client = verified
            .as_ref()
            .and_then(|v| self.clients.get(v.client_id.as_ref()))
            .filter(|c| c.enabled);
        let (Some(v), Some(client)) = (verified, client) else {
            let locked = self.guard.fail(ip, key_id);
            // The key id is public (it is not the secret); logging it lets an operator see
            // which key is being guessed at.
            tracing::warn!(target: "portcullis::security", event = "auth_failure", route = %self.route, client_ip = %ip, key_id, locked, "authentication failed");
            metrics::counter!("portcullis_auth_failures_total", "route" => self.route.to_string())
                .increment(1);
            return Err(GatewayError::Unauthorized { presented: true });
        };
        if !client.allow_ips.is_empty() && !client.allow_ips.iter().any(|n| n.contains(&ip)) {
            tracing::warn!(target: "portcullis::security", event = "ip_not_allowed", route = %self.route, client = %client.id, client_ip = %ip, "client called from a network it is not allowed to use");
            return Err(GatewayError::Forbidden);
        }
        let h = req.headers_mut();
        h.remove(header::AUTHORIZATION);
        h.remove("x-api-key");
        req.extensions_mut().insert(Identity {
            client_id: v.client_id,
            roles: client.roles.clone().into(),
            scopes: client.scopes.clone().into(),
            attributes: Arc::new(client.attributes.clone()),
            kind: AuthKind::ApiKey,
            key_id: Some(v.key_id),
        });
        Ok(Flow::Continue(req))
    }
}
