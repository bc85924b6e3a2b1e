//! What the gateway knows about a request beyond the request itself. Stored in the request's
//! extensions by the connection layer; policies read it (and later issues add the verified
//! identity to it).

use crate::RequestId;
use std::{
    net::{IpAddr, SocketAddr},
    sync::Arc,
    time::Instant,
};

/// Per-request facts established before routing.
#[derive(Debug, Clone)]
pub struct RequestContext {
    /// The id that ties logs together.
    pub request_id: RequestId,
    /// The TCP peer.
    pub peer: SocketAddr,
    /// The client's address: the peer, or from `X-Forwarded-For` when the peer is a trusted
    /// proxy.
    pub client_ip: IpAddr,
    /// The connection arrived over TLS.
    pub tls: bool,
    /// When the gateway started on this request.
    pub received_at: Instant,
    /// The client certificate the TLS listener verified, if the client presented one.
    pub client_cert: Option<Arc<ClientCert>>,
    /// The verified caller, once authentication has run. Policies set the `Identity`
    /// extension on the request; the chain copies it here for the response phase.
    pub identity: Option<crate::Identity>,
}

/// The declared route a request matched, with its captured path parameters.
#[derive(Debug, Clone)]
pub struct RouteMatch {
    /// The route id.
    pub route_id: Arc<str>,
    /// The route's path template.
    pub template: Arc<str>,
    /// Captured parameters, in template order: the name (shared with the routing table) and
    /// the value as the request had it.
    pub params: Vec<(Arc<str>, String)>,
}

impl RouteMatch {
    /// The value captured for `name`, if any.
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(k, _)| &**k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// A client certificate verified during the TLS handshake (against `server.client_ca`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientCert {
    /// SHA-256 of the leaf certificate's DER, lower-case hex.
    pub fingerprint: String,
    /// DNS subject alternative names, lower-case.
    pub dns_names: Vec<String>,
}
