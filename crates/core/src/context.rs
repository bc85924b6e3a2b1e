//! What the gateway knows about a request beyond the request itself. Stored in the request's
//! extensions by the connection layer; policies read it (and later issues add the verified
//! identity to it).

use crate::{
    sleep_slot::SharedSleepSlot,
    text::{normalise_ip, push_ip},
    RequestId,
};
use http::HeaderValue;
use std::{
    net::{IpAddr, SocketAddr},
    sync::{Arc, OnceLock},
    time::Instant,
};

/// Per-request facts established before routing.
#[derive(Debug, Clone)]
pub struct RequestContext {
    /// The id that ties logs together.
    pub request_id: RequestId,
    /// The client's address: the peer, or from `X-Forwarded-For` when the peer is a trusted
    /// proxy.
    pub client_ip: IpAddr,
    /// When the gateway started on this request.
    pub received_at: Instant,
    /// The verified caller, once authentication has run. Policies set the `Identity`
    /// extension on the request; the chain copies it here for the response phase.
    pub identity: Option<crate::Identity>,
    /// What the connection's requests share (the TCP peer, TLS and the verified client
    /// certificate among it); see [`Connection`].
    pub connection: Arc<Connection>,
}

/// What the gateway derives from a client connection alone, worked out once for all of its
/// requests: formatting the peer's address and the `Forwarded` value on every request was
/// ~1,000 instructions of the no-policy route's budget (`bench/RESULTS.md`).
#[derive(Debug)]
pub struct Connection {
    /// The TCP peer.
    pub peer: SocketAddr,
    /// The connection arrived over TLS.
    pub tls: bool,
    /// The client certificate the TLS listener verified, if the client presented one.
    pub client_cert: Option<Arc<ClientCert>>,
    /// The TCP peer's address, IPv4-mapped IPv6 normalised to IPv4 (as [`RequestContext`]'s
    /// `client_ip` is when the peer is not a trusted proxy).
    pub peer_ip: IpAddr,
    /// `peer_ip` as text: the `X-Forwarded-For` entry this gateway adds, and the access
    /// log's client address when the client is the peer.
    pub peer_text: HeaderValue,
    /// The `Forwarded` value for this connection and the first `Host` it sent: (`Host`,
    /// value). Requests with another `Host` build their own.
    pub forwarded: OnceLock<(Option<HeaderValue>, HeaderValue)>,
    /// The timer of this connection's upstream exchanges, kept from request to request.
    pub exchange_timer: SharedSleepSlot,
}

impl Connection {
    /// The facts of a connection from `peer`.
    pub fn new(peer: SocketAddr, tls: bool, client_cert: Option<Arc<ClientCert>>) -> Self {
        let peer_ip = normalise_ip(peer.ip());
        let mut text = Vec::with_capacity(40);
        push_ip(&mut text, peer_ip);
        Connection {
            peer,
            tls,
            client_cert,
            peer_ip,
            // An address's text is always a valid header value.
            peer_text: HeaderValue::from_maybe_shared(bytes::Bytes::from(text))
                .unwrap_or_else(|_| HeaderValue::from_static("unknown")),
            forwarded: OnceLock::new(),
            exchange_timer: SharedSleepSlot::default(),
        }
    }

    /// The peer's text, when `ip` is the peer's (normalised) address.
    pub fn text_of(&self, ip: IpAddr) -> Option<&str> {
        (ip == self.peer_ip)
            .then(|| self.peer_text.to_str().ok())
            .flatten()
    }
}

/// The path parameters a request's route captured. In the request's extensions only on
/// routes whose chain reads them (`Chain::reads_route_match` in portcullis-policy): the
/// capture copies every value, and most routes never look at one.
#[derive(Debug, Clone)]
pub struct RouteMatch {
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
