//! Types every layer of the gateway shares: the body type, the per-request context, request
//! ids, and the one error type with its single mapping to RFC 9457 problem+json responses.

mod body;
mod context;
mod error;
mod identity;
mod problem;
mod request_id;
pub mod sleep_slot;
pub mod text;

pub use body::{
    client_body, empty, find_cause, full, Body, BodyTooSlow, BoxError, ClientBodyError,
};
pub use context::{ClientCert, Connection, RequestContext, RouteMatch};
pub use error::{GatewayError, MalformedKind};
pub use identity::{AuthKind, Identity, IdentityData, TokenClaims};
pub use problem::{problem_response, ErrorInfo, Problem, PROBLEM_CONTENT_TYPE};
pub use request_id::{RequestId, REQUEST_ID_HEADER};
