//! Per-route concurrency limit (load shedding). A request over the limit is refused at once
//! with 503 and `Retry-After`, never queued: queueing under overload only adds latency to
//! every caller and memory to the gateway. A request counts as in flight until its response
//! body has been sent or dropped (the permit rides on the body through [`HoldUntilSent`]).
//!
//! The permits belong to the chain, so a hot reload starts the route with fresh counters;
//! requests of the old generation keep their permits on the old counter until they finish.
//! During that overlap a route can briefly have up to twice its limit in flight.

use crate::{Flow, HoldUntilSent, Policy, Step};
use http::Request;
use portcullis_core::{Body, GatewayError};
use std::{sync::Arc, time::Duration};
use tokio::sync::Semaphore;

/// What a shed request is told to wait before retrying.
const RETRY_AFTER: Duration = Duration::from_secs(1);

/// The concurrency limit of one route.
pub struct Concurrency {
    route: Arc<str>,
    permits: Arc<Semaphore>,
}

impl Concurrency {
    /// Admits at most `limit` requests of route `route` at once.
    pub fn new(route: &str, limit: u32) -> Self {
        Concurrency {
            route: Arc::from(route),
            permits: Arc::new(Semaphore::new(limit as usize)),
        }
    }
}

impl Policy for Concurrency {
    fn name(&self) -> &'static str {
        "max_concurrent"
    }

    fn has_response_phase(&self) -> bool {
        false
    }

    fn on_request(&self, mut req: Request<Body>) -> Step<'_, Flow> {
        match self.permits.clone().try_acquire_owned() {
            Ok(permit) => {
                req.extensions_mut().insert(HoldUntilSent(Arc::new(permit)));
                Ok(Flow::Continue(req)).into()
            }
            Err(_) => {
                metrics::counter!("portcullis_shed_total", "reason" => "route_concurrency", "route" => self.route.to_string())
                    .increment(1);
                Err(GatewayError::Overloaded {
                    retry_after: RETRY_AFTER,
                })
                .into()
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::chain::tests::ctx;
    use crate::{Chain, Terminal};
    use async_trait::async_trait;
    use bytes::Bytes;
    use http::{Response, StatusCode};
    use http_body::Frame;
    use http_body_util::{BodyExt, StreamBody};
    use portcullis_core::BoxError;
    use tokio::sync::mpsc;

    /// Answers with a body that streams whatever the test sends into `tx`.
    struct Streaming(std::sync::Mutex<Vec<mpsc::UnboundedReceiver<Bytes>>>);

    #[async_trait]
    impl Terminal for Streaming {
        async fn call(
            &self,
            _req: Request<Body>,
            _ctx: &portcullis_core::RequestContext,
        ) -> Result<Response<Body>, GatewayError> {
            let rx = self.0.lock().unwrap().pop().unwrap();
            let frames = futures_util::stream::unfold(rx, |mut rx| async move {
                rx.recv()
                    .await
                    .map(|b| (Ok::<_, BoxError>(Frame::data(b)), rx))
            });
            Ok(Response::new(StreamBody::new(frames).boxed_unsync()))
        }
    }

    #[tokio::test]
    async fn a_request_is_in_flight_until_its_response_body_ends_or_is_dropped() {
        let (tx1, rx1) = mpsc::unbounded_channel();
        let (_tx2, rx2) = mpsc::unbounded_channel();
        let (_tx3, rx3) = mpsc::unbounded_channel();
        let chain = Chain::new(
            vec![Arc::new(Concurrency::new("r", 1))],
            Arc::new(Streaming(std::sync::Mutex::new(vec![rx3, rx2, rx1]))),
        );
        let req = || Request::new(portcullis_core::empty());
        let first = chain.run(req(), &ctx()).await;
        assert_eq!(first.status(), StatusCode::OK);

        // The first response's body is still streaming: the route is full.
        let shed = chain.run(req(), &ctx()).await;
        assert_eq!(shed.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(shed.headers()[http::header::RETRY_AFTER], "1");

        // The body ends: the permit comes back.
        tx1.send(Bytes::from_static(b"done")).unwrap();
        drop(tx1);
        let body = first.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&body[..], b"done");
        let second = chain.run(req(), &ctx()).await;
        assert_eq!(second.status(), StatusCode::OK);
        assert_eq!(
            chain.run(req(), &ctx()).await.status(),
            StatusCode::SERVICE_UNAVAILABLE
        );

        // Dropping an unfinished body (the client went away) releases too.
        drop(second);
        assert_eq!(chain.run(req(), &ctx()).await.status(), StatusCode::OK);
    }

    #[tokio::test]
    async fn a_refused_request_releases_at_once() {
        struct Refuse;
        impl Policy for Refuse {
            fn name(&self) -> &'static str {
                "refuse"
            }
            fn on_request(&self, _req: Request<Body>) -> crate::Step<'_, Flow> {
                Err(GatewayError::Forbidden).into()
            }
        }
        let (_tx, rx) = mpsc::unbounded_channel();
        let chain = Chain::new(
            vec![Arc::new(Concurrency::new("r", 1)), Arc::new(Refuse)],
            Arc::new(Streaming(std::sync::Mutex::new(vec![rx]))),
        );
        // Both answers are held (not read) at the same time; neither holds the permit.
        let a = chain
            .run(Request::new(portcullis_core::empty()), &ctx())
            .await;
        let b = chain
            .run(Request::new(portcullis_core::empty()), &ctx())
            .await;
        assert_eq!(a.status(), StatusCode::FORBIDDEN);
        assert_eq!(b.status(), StatusCode::FORBIDDEN);
    }
}
