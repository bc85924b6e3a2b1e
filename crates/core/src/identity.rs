//! The verified caller of a request, set by the authentication policy and read by everything
//! after it (authorization, identity headers to the upstream, logs).

use std::{collections::BTreeMap, sync::Arc};

/// How the caller authenticated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthKind {
    /// A Portcullis API key.
    ApiKey,
    /// A JWT from a trusted issuer.
    Jwt,
    /// A client certificate.
    Mtls,
    /// An access token this gateway issued.
    OAuth2,
}

/// A verified caller.
#[derive(Debug, Clone)]
pub struct Identity {
    /// The client id.
    pub client_id: Arc<str>,
    /// Roles of the client.
    pub roles: Arc<[String]>,
    /// Scopes granted for this request.
    pub scopes: Arc<[String]>,
    /// Client attributes (such as `tenant`).
    pub attributes: Arc<BTreeMap<String, String>>,
    /// How it authenticated.
    pub kind: AuthKind,
    /// The API key id used, if any (never the secret part).
    pub key_id: Option<Arc<str>>,
}
