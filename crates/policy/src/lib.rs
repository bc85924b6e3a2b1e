//! The per-route policy chain.
//!
//! A route is a [`Chain`]: an ordered list of [`Policy`] steps in front of a [`Terminal`] (the
//! upstream forwarder). A request meets the policies in order; each may pass it on, answer it
//! itself, or fail it. The response then travels back through the policies that passed the
//! request on, in reverse order, error responses included. `build` in the proxy crate assembles
//! the chain for a route in one function; a new policy is one module here with its config type
//! in `portcullis-config`, plus one line there.

mod authenticate;
mod authorize;
mod body_limit;
mod chain;
mod concurrency;
mod cors;
mod deprecation;
mod ip_filter;
mod json_limits;
mod json_path;
mod json_schema;
mod minimize;
mod object_rules;
mod params;
mod pattern;
mod quota;
mod rate_limit;
mod response_fields;
mod schema_stream;
mod validate_body;

pub use authenticate::{Authenticate, Clients};
pub use authorize::Authorize;
pub use body_limit::{read_limited, BodyLimit, BodyTooLarge};
pub use chain::{Chain, Flow, HoldUntilSent, Policy, ResponseHeaders, Step, StepFuture, Terminal};
pub use concurrency::Concurrency;
pub use cors::{actual_headers as cors_headers, preflight, refused_preflight, Cors};
pub use deprecation::Deprecation;
pub use ip_filter::IpFilter;
pub use json_limits::{check_json, parse_json_within, JsonFault, JsonLimitCheck};
pub use json_schema::JsonSchema;
pub use minimize::{minimize, MaskStyle};
pub use object_rules::ObjectRules;
pub use params::Params;
pub use quota::Quota;
pub use rate_limit::{LimitStore, RateLimit};
pub use response_fields::ResponseFields;
pub use schema_stream::StreamSchema;
pub use validate_body::ValidateBody;
