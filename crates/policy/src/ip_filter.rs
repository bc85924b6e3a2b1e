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
        self.request_phase(req).into()
    }
}

/// The phases themselves, as plain methods so they can use `?`.
impl IpFilter {
    fn request_phase(&self, req: Request<Body>) -> Result<Flow, GatewayError> {
        let ip = req
            .extensions()
            .get::<RequestContext>()
            .map(|c| c.client_ip)
            .ok_or(GatewayError::Forbidden)?;
        if !self.rules.admits(&ip) {
            return Err(GatewayError::Forbidden);
        }
        Ok(Flow::Continue(req))
    }
}
