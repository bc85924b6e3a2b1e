//! Assembly of a route's policy chain: the one place that decides which policies a route runs
//! and in what order. Read top to bottom; that is the order a request meets them.

use crate::forward::Forwarder;
use portcullis_config::RouteConfig;
use portcullis_policy::{BodyLimit, Chain, Deprecation, Policy};
use std::sync::Arc;

/// Builds the chain for `route` in front of its upstream forwarder.
pub(crate) fn route_chain(route: &RouteConfig, upstream: Forwarder) -> Chain {
    let mut steps: Vec<Arc<dyn Policy>> = Vec::new();

    // 1. Retired or retiring: 410 Gone from the sunset on; Deprecation, Sunset and Link
    //    headers on every response before it.
    if let Some(d) = &route.deprecation {
        steps.push(Arc::new(Deprecation::new(d)));
    }

    // 2. Request size: a declared Content-Length over the limit is refused before reading; a
    //    streamed body is cut off the moment it passes the limit.
    steps.push(Arc::new(BodyLimit::new(route.max_body)));

    // Identity, authorization, rate limits and validation slot in here, in that order, as
    // later capabilities land: cheap refusals first, body-reading policies last.

    Chain::new(steps, Arc::new(upstream))
}
