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

/// A verified caller. One shared allocation: the request's copies of it (the extension the
/// authentication policy sets, the chain's context for the response phase) cost one
/// reference count each, not one per field. The fields' own counts are shared by every
/// request of the same client, on every worker thread, so each increment there is a cache
/// line moved between cores.
#[derive(Debug, Clone)]
pub struct Identity(Arc<IdentityData>);

impl Identity {
    /// Wraps what authentication established.
    pub fn new(data: IdentityData) -> Self {
        Identity(Arc::new(data))
    }
}

impl std::ops::Deref for Identity {
    type Target = IdentityData;

    fn deref(&self) -> &IdentityData {
        &self.0
    }
}

/// What an [`Identity`] holds.
#[derive(Debug)]
pub struct IdentityData {
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
    /// A verified token's top-level claims that are text, numbers or booleans, as text
    /// (`None` for API keys and certificates): what `per = "claim:NAME"` rate limits count.
    pub claims: Option<TokenClaims>,
}

/// Claims of a verified token, by name; shared by every request that presents the token.
pub type TokenClaims = Arc<BTreeMap<String, String>>;
