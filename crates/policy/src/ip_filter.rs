//! Per-route client network rules: deny lists win, a non-empty allow list admits only its
//! networks (403 otherwise). The client address is the socket peer unless a trusted proxy
//! forwarded it, with IPv4-mapped IPv6 already normalised.

use crate::{Flow, Policy, Step};
use http::Request;
use portcullis_config::IpRules;
use portcullis_core::{Body, GatewayError, RequestContext};

/// The IP policy for one route.
pub struct IpFilter {
    rules: IpRules,
}

impl IpFilter {
    /// Applies `rules`.
    pub fn new(rules: IpRules) -> Self {
        IpFilter { rules }
    }
}

impl Policy for IpFilter {
    fn name(&self) -> &'static str {
        "ip_filter"
    }

    fn has_response_phase(&self) -> bool {
        false
    }

    fn on_request(&self, req: Request<Body>) -> Step<'_, Flow> {
        let admitted = req
            .extensions()
            .get::<RequestContext>()
            .is_some_and(|c| self.rules.admits(&c.client_ip));
        if !admitted {
            return Err(GatewayError::Forbidden).into();
        }
        Ok(Flow::Continue(req)).into()
    }
}
