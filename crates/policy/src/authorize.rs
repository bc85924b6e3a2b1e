//! Function-level authorization: the caller must hold every scope the route requires and at
//! least one of its roles (when it names any). A known caller without them gets 403.

use crate::{Flow, Policy, Step};
use http::Request;
use portcullis_core::{Body, GatewayError, Identity};

/// The authorization policy for one route.
pub struct Authorize {
    scopes: Vec<String>,
    roles: Vec<String>,
}

impl Authorize {
    /// Requires all of `scopes` and any of `roles` (when non-empty).
    pub fn new(scopes: Vec<String>, roles: Vec<String>) -> Self {
        Authorize { scopes, roles }
    }
}

impl Policy for Authorize {
    fn name(&self) -> &'static str {
        "authorize"
    }

    fn has_response_phase(&self) -> bool {
        false
    }

    fn on_request(&self, req: Request<Body>) -> Step<'_, Flow> {
        // Fail closed: without an identity (a chain built without authentication) nothing passes.
        let Some(id) = req.extensions().get::<Identity>() else {
            return Err(GatewayError::Unauthorized { presented: false }).into();
        };
        let has_scopes = self.scopes.iter().all(|s| id.scopes.iter().any(|g| g == s));
        let has_role =
            self.roles.is_empty() || self.roles.iter().any(|r| id.roles.iter().any(|g| g == r));
        if !has_scopes || !has_role {
            tracing::info!(target: "portcullis::security", event = "forbidden", client = %id.client_id, "caller lacks a required scope or role");
            return Err(GatewayError::Forbidden).into();
        }
        Ok(Flow::Continue(req)).into()
    }
}
