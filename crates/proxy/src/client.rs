//! Upstream HTTP clients: connection-pooled hyper clients over rustls that always verify
//! certificates (webpki roots plus an optional per-route CA), unless a route sets the
//! `dangerous_skip_upstream_tls_verify` switch. Clients are shared between routes with the
//! same TLS and connect settings, so their pools are shared too.

use crate::{
    pool::{Http1Pool, SendError},
    BuildError,
};
use http::{
    uri::{Authority, PathAndQuery, Scheme},
    Request, Response, Uri,
};
use http_body_util::BodyExt;
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::{
    client::legacy::{connect::HttpConnector, Client},
    rt::{TokioExecutor, TokioTimer},
};
use portcullis_config::UpstreamTls;
use portcullis_core::{Body, BoxError};
use rustls::{
    client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    pki_types::{CertificateDer, ServerName, UnixTime},
    ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use rustls_pki_types::pem::PemObject;
use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

/// A pooled upstream client.
pub(crate) type UpstreamClient = Client<HttpsConnector<HttpConnector>, Body>;

#[derive(Clone, PartialEq, Eq, Hash)]
struct ClientKey {
    tls: UpstreamTls,
    connect_timeout: Duration,
}

/// Clients by settings, reused across reloads so a reload does not drop warm connections.
#[derive(Default)]
pub(crate) struct ClientCache {
    clients: Mutex<HashMap<ClientKey, UpstreamClient>>,
    pools: Mutex<HashMap<(Authority, Duration), Arc<Http1Pool>>>,
}

/// How a route or webhook reaches its upstream.
#[derive(Clone)]
pub(crate) enum Transport {
    /// A plain-HTTP upstream: HTTP/1.1 through the upstream's own pool ([`Http1Pool`]).
    Plain(Arc<Http1Pool>),
    /// An HTTPS upstream (HTTP/1.1 or HTTP/2 by ALPN) through hyper-util's client.
    Tls(Box<UpstreamClient>),
}

/// A request that got no answer.
#[derive(Debug)]
pub(crate) struct SendFailure {
    /// No connection could be opened (as opposed to a failed exchange).
    pub connect: bool,
    pub error: BoxError,
}

impl Transport {
    /// The `Host` this transport gives a request that has none: the plain-HTTP pool's own,
    /// built once. `None` for HTTPS, where hyper-util's client (or `:authority` on HTTP/2)
    /// takes it from the URI, so the header must be absent.
    pub(crate) fn own_host(&self) -> Option<&http::HeaderValue> {
        match self {
            Transport::Plain(pool) => Some(pool.host()),
            Transport::Tls(_) => None,
        }
    }

    /// Sends `req` to `path` on the upstream at `scheme://authority` and returns the answer's
    /// head; the body streams after. Without a `Host` header the upstream's own is set.
    pub(crate) async fn send(
        &self,
        mut req: Request<Body>,
        scheme: &Scheme,
        authority: &Authority,
        path: PathAndQuery,
    ) -> Result<Response<Body>, SendFailure> {
        match self {
            Transport::Plain(pool) => {
                // hyper's connection-level client writes the URI as given: origin-form.
                *req.uri_mut() = Uri::from(path);
                pool.send(req).await.map_err(|e| SendFailure {
                    connect: matches!(e, SendError::Connect(_)),
                    error: Box::new(e),
                })
            }
            Transport::Tls(client) => {
                *req.uri_mut() = Uri::builder()
                    .scheme(scheme.clone())
                    .authority(authority.clone())
                    .path_and_query(path)
                    .build()
                    .map_err(|e| SendFailure {
                        connect: false,
                        error: Box::new(e),
                    })?;
                // Boxed: hyper-util's future (over 1 KB) held inline made the plain-HTTP
                // path's future, moved on every request, as large; next to a TLS exchange
                // one allocation is nothing.
                match Box::pin(client.request(req)).await {
                    Ok(res) => Ok(res.map(|b| b.map_err(BoxError::from).boxed_unsync())),
                    Err(e) => Err(SendFailure {
                        connect: e.is_connect(),
                        error: Box::new(e),
                    }),
                }
            }
        }
    }
}

impl ClientCache {
    pub(crate) fn get(
        &self,
        tls: &UpstreamTls,
        connect_timeout: Duration,
    ) -> Result<UpstreamClient, BuildError> {
        let key = ClientKey {
            tls: tls.clone(),
            connect_timeout,
        };
        let mut map = self
            .clients
            .lock()
            .map_err(|_| BuildError::Internal("client cache poisoned".into()))?;
        if let Some(c) = map.get(&key) {
            return Ok(c.clone());
        }
        let client = build(tls, connect_timeout)?;
        map.insert(key, client.clone());
        Ok(client)
    }

    /// Forgets the pools that no configuration generation holds any more (an upstream that a
    /// reload removed, once the requests still on the old generation are done). Their idle
    /// connections close as the pool is dropped, and their sweepers stop. Called after a
    /// reload; a pool still in use by a finishing request is forgotten at a later one.
    pub(crate) fn prune_unused_pools(&self) {
        if let Ok(mut pools) = self.pools.lock() {
            pools.retain(|_, p| Arc::strong_count(p) > 1);
        }
    }

    /// Pools held now (for tests).
    #[cfg(test)]
    pub(crate) fn pool_count(&self) -> usize {
        self.pools.lock().map(|p| p.len()).unwrap_or(0)
    }

    /// The transport for an upstream: a shared pool for plain HTTP, a shared client for TLS.
    pub(crate) fn transport(
        &self,
        scheme: &Scheme,
        authority: &Authority,
        tls: &UpstreamTls,
        connect_timeout: Duration,
    ) -> Result<Transport, BuildError> {
        if *scheme != Scheme::HTTP {
            return self
                .get(tls, connect_timeout)
                .map(|c| Transport::Tls(Box::new(c)));
        }
        let key = (authority.clone(), connect_timeout);
        let mut pools = self
            .pools
            .lock()
            .map_err(|_| BuildError::Internal("client cache poisoned".into()))?;
        if let Some(p) = pools.get(&key) {
            return Ok(Transport::Plain(p.clone()));
        }
        let pool = Http1Pool::new(
            authority,
            connector(connect_timeout),
            MAX_IDLE_PER_HOST,
            IDLE_TIMEOUT,
        )
        .map_err(|e| BuildError::Internal(e.to_string()))?;
        pools.insert(key, pool.clone());
        Ok(Transport::Plain(pool))
    }
}

fn build(tls: &UpstreamTls, connect_timeout: Duration) -> Result<UpstreamClient, BuildError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| BuildError::Tls(e.to_string()))?;
    let config = if tls.dangerous_skip_verify {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerification(provider)))
            .with_no_client_auth()
    } else {
        let mut roots = RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        if let Some(ca) = &tls.ca {
            let certs = CertificateDer::pem_file_iter(ca)
                .and_then(|it| it.collect::<Result<Vec<_>, _>>())
                .map_err(|e| BuildError::Tls(format!("upstream CA file {}: {e}", ca.display())))?;
            let (added, _) = roots.add_parsable_certificates(certs);
            if added == 0 {
                return Err(BuildError::Tls(format!(
                    "upstream CA file {} holds no usable certificate",
                    ca.display()
                )));
            }
        }
        builder.with_root_certificates(roots).with_no_client_auth()
    };

    let mut http = connector(connect_timeout);
    http.enforce_http(false);
    let https = HttpsConnectorBuilder::new()
        .with_tls_config(config)
        .https_or_http()
        .enable_http1()
        .enable_http2()
        .wrap_connector(http);
    Ok(Client::builder(TokioExecutor::new())
        .timer(TokioTimer::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(IDLE_TIMEOUT)
        .pool_max_idle_per_host(MAX_IDLE_PER_HOST)
        .build(https))
}

/// How long an idle upstream connection is kept.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Most idle connections kept per upstream.
const MAX_IDLE_PER_HOST: usize = 256;

/// TCP connect settings shared by both kinds of upstream client.
fn connector(connect_timeout: Duration) -> HttpConnector {
    let mut http = HttpConnector::new();
    http.set_nodelay(true);
    http.set_connect_timeout(Some(connect_timeout));
    http.set_keepalive(Some(Duration::from_secs(60)));
    http
}

/// Accepts any certificate. Only reachable through `dangerous_skip_upstream_tls_verify`,
/// which `portcullis check` flags. Signatures are still checked, so the handshake itself is
/// sound; only the identity of the peer is not.
#[derive(Debug)]
struct NoVerification(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pools_nothing_holds_are_forgotten_and_shared_ones_kept() {
        let cache = ClientCache::default();
        let tls = UpstreamTls::default();
        let (a, b): (Authority, Authority) = (
            "10.0.0.1:80".parse().expect("authority"),
            "10.0.0.2:80".parse().expect("authority"),
        );
        let t = Duration::from_secs(1);
        let held = cache.transport(&Scheme::HTTP, &a, &tls, t).ok();
        let again = cache.transport(&Scheme::HTTP, &a, &tls, t).ok();
        // The same authority and connect timeout share one pool.
        match (&held, &again) {
            (Some(Transport::Plain(x)), Some(Transport::Plain(y))) => assert!(Arc::ptr_eq(x, y)),
            _ => panic!("plain-HTTP upstreams get a pool"),
        }
        drop(cache.transport(&Scheme::HTTP, &b, &tls, t));
        assert_eq!(cache.pool_count(), 2);
        cache.prune_unused_pools();
        assert_eq!(cache.pool_count(), 1, "b is held by nothing, a by a route");
        drop((held, again));
        cache.prune_unused_pools();
        assert_eq!(cache.pool_count(), 0);
    }
}
