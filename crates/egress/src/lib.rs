#![forbid(unsafe_code)]
//! Egress building blocks for calling third-party APIs safely.
//!
//! - [`ssrf`]: which IP addresses may be contacted ([`classify`], [`Policy`]).
//! - [`url_guard`]: destination URLs from an integration's base URL and a caller-chosen path,
//!   and header values.
//! - [`resolver`]: the DNS resolver that checks every address it hands to reqwest, and the
//!   client built on it ([`GuardedClient`]).
//! - [`retry`]: backoff with full jitter, `Retry-After`, which requests may be retried, and a
//!   retry budget.
//! - [`breaker`]: a circuit breaker per integration.
//!
//! This crate depends on no other portcullis crate; the gateway wires it to the config.

pub mod breaker;
pub mod error;
pub mod pin;
pub mod resolver;
pub mod retry;
pub mod ssrf;
pub mod url_guard;

pub use error::{find_refusal, Refusal};
pub use resolver::{
    client, ClientOptions, EgressError, GuardedClient, GuardedResolver, Lookup, Redirects,
    SystemLookup, TestResolver, Timeouts,
};
pub use ssrf::{classify, Policy, Reason, Verdict};
pub use url_guard::{check_header_value, check_url, join_destination, parse_destination, Target};
