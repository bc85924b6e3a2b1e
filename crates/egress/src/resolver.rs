//! The checking resolver and the egress HTTP client built on it.
//!
//! [`GuardedResolver`] is reqwest's DNS resolver: it resolves a name, classifies every address
//! of the answer, and hands reqwest only addresses it checked. reqwest (hyper-util's
//! connector) connects to exactly the addresses the resolver returned and never resolves the
//! name a second time, so a DNS answer cannot change between the check and the connection
//! (no DNS rebinding). TLS is still verified against the host name of the URL.
//!
//! If any address of an answer is refused, the whole name is refused: a name that mixes public
//! and internal addresses is either misconfigured or an attack, and connecting only to the
//! public part would hide it.
//!
//! reqwest does not call the resolver for IP-literal hosts, so those are checked before the
//! request is sent ([`GuardedClient::execute`]) and on every redirect hop.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use url::Url;

use crate::error::{find_refusal, Refusal};
use crate::ssrf::{Policy, Verdict};
use crate::url_guard::{check_header_value, check_ip, check_name, check_url, Target};

/// The future a [`Lookup`] returns.
pub type LookupFuture = Pin<Box<dyn Future<Output = io::Result<Vec<IpAddr>>> + Send>>;

/// Name to addresses, without any checking: the system resolver in production, a fixed table
/// ([`TestResolver`]) in tests.
pub trait Lookup: Send + Sync + 'static {
    /// Resolves `host` (lowercase, no trailing dot) to its addresses.
    fn lookup(&self, host: &str) -> LookupFuture;
}

/// The system resolver through `tokio::net::lookup_host` (getaddrinfo on a blocking thread).
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemLookup;

impl Lookup for SystemLookup {
    fn lookup(&self, host: &str) -> LookupFuture {
        let host = host.to_string();
        Box::pin(async move {
            let addrs = tokio::net::lookup_host((host.as_str(), 0)).await?;
            Ok(addrs.map(|a| a.ip()).collect())
        })
    }
}

/// A fixed name-to-addresses table, for tests: names that resolve to internal addresses,
/// answers mixing public and private addresses, public names that must never be contacted.
/// An unknown name fails to resolve.
#[derive(Debug, Clone, Default)]
pub struct TestResolver {
    map: HashMap<String, Vec<IpAddr>>,
}

impl TestResolver {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds (or replaces) a name's answer.
    pub fn with(mut self, name: &str, addrs: impl IntoIterator<Item = IpAddr>) -> Self {
        self.map
            .insert(name.to_ascii_lowercase(), addrs.into_iter().collect());
        self
    }
}

impl Lookup for TestResolver {
    fn lookup(&self, host: &str) -> LookupFuture {
        let answer = self.map.get(host).cloned();
        Box::pin(async move {
            answer.ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "name not in table"))
        })
    }
}

/// Resolves names and refuses those with any address the [`Policy`] refuses.
#[derive(Clone)]
pub struct GuardedResolver {
    policy: Arc<Policy>,
    lookup: Arc<dyn Lookup>,
}

impl std::fmt::Debug for GuardedResolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GuardedResolver")
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

impl GuardedResolver {
    /// A resolver checking against `policy`, resolving through `lookup`.
    pub fn new(policy: Arc<Policy>, lookup: Arc<dyn Lookup>) -> Self {
        Self { policy, lookup }
    }

    /// Resolves `host` and returns its addresses if every one of them is allowed.
    ///
    /// An IP literal is classified directly; numeric names that are not canonical IP literals
    /// (`2130706433`, `0x7f.1`) and `localhost` names are refused without resolving.
    pub async fn resolve_checked(&self, host: &str) -> Result<Vec<IpAddr>, Refusal> {
        let literal = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        if let Ok(ip) = literal.parse::<IpAddr>() {
            return check_ip(ip, &self.policy).map(|ip| vec![ip]);
        }
        let name = check_name(host)?;
        let answer = self
            .lookup
            .lookup(&name)
            .await
            .map_err(|e| Refusal::Resolution {
                host: name.clone(),
                detail: e.to_string(),
            })?;
        if answer.is_empty() {
            return Err(Refusal::NoAddress { host: name });
        }
        let mut out: Vec<IpAddr> = Vec::with_capacity(answer.len());
        for ip in answer {
            if let Verdict::Refused(reason) = self.policy.check(ip) {
                return Err(Refusal::ResolvedAddress {
                    host: name,
                    ip,
                    reason,
                });
            }
            if !out.contains(&ip) {
                out.push(ip);
            }
        }
        Ok(out)
    }
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let this = self.clone();
        let host = name.as_str().to_string();
        Box::pin(async move {
            match this.resolve_checked(&host).await {
                Ok(ips) => {
                    // The connector sets the port from the URL.
                    let addrs: Addrs = Box::new(ips.into_iter().map(|ip| SocketAddr::new(ip, 0)));
                    Ok(addrs)
                }
                Err(refusal) => {
                    note_refusal(&refusal);
                    Err(Box::new(refusal) as Box<dyn std::error::Error + Send + Sync>)
                }
            }
        })
    }
}

fn note_refusal(refusal: &Refusal) {
    tracing::warn!(kind = refusal.kind(), detail = %refusal, "egress destination refused");
    metrics::counter!("portcullis_egress_refused_total", "kind" => refusal.kind()).increment(1);
}

/// Client timeouts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// Resolution plus TCP connect plus TLS handshake.
    pub connect: Duration,
    /// Longest wait for the first byte of the response and between reads.
    pub read: Duration,
    /// The whole exchange, including redirects and reading the body.
    pub total: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            connect: Duration::from_secs(5),
            read: Duration::from_secs(30),
            total: Duration::from_secs(60),
        }
    }
}

/// What the client does with 3xx responses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Redirects {
    /// Hand 3xx responses back without following them (the default).
    #[default]
    None,
    /// Follow up to `max_hops` redirects, re-checking each hop's URL (scheme, userinfo,
    /// IP-literal hosts here; name hosts are checked by the resolver when connecting).
    /// With `same_origin_only`, a hop to another scheme, host or port is an error: set it
    /// when the request carries a credential in a header reqwest does not strip on its own
    /// (it strips only `Authorization`, `Cookie`, `Proxy-Authorization` and `WWW-Authenticate`).
    Follow {
        /// Most hops followed.
        max_hops: usize,
        /// Refuse hops that leave the first request's origin.
        same_origin_only: bool,
    },
}

/// How to build the egress client.
#[derive(Debug, Clone, Default)]
pub struct ClientOptions {
    /// Timeouts.
    pub timeouts: Timeouts,
    /// Redirect handling.
    pub redirects: Redirects,
    /// Extra trusted roots (a private CA, a test CA).
    pub extra_roots: Vec<reqwest::Certificate>,
    /// Leave out the built-in webpki roots (trust only `extra_roots`).
    pub no_builtin_roots: bool,
    /// Extra trusted roots as DER, for a pinned client (which builds its own TLS settings).
    pub roots_der: Vec<rustls::pki_types::CertificateDer<'static>>,
    /// SHA-256 pins of the server's certificate or public key; empty: no pinning.
    pub pins: Vec<[u8; 32]>,
}

/// Builds a reqwest client whose every connection goes through a [`GuardedResolver`]: no
/// proxy from the environment (a proxy would resolve the name itself), TLS 1.2 or later
/// verified against the host name, the given redirect rules.
///
/// IP-literal hosts bypass the resolver, so send through [`GuardedClient`], or check the URL
/// with [`check_url`] before every request.
pub fn client(
    policy: Arc<Policy>,
    lookup: Arc<dyn Lookup>,
    options: &ClientOptions,
) -> Result<reqwest::Client, reqwest::Error> {
    let resolver = Arc::new(GuardedResolver::new(policy.clone(), lookup));
    let redirect = match options.redirects {
        Redirects::None => reqwest::redirect::Policy::none(),
        Redirects::Follow {
            max_hops,
            same_origin_only,
        } => redirect_policy(policy, max_hops, same_origin_only),
    };
    let mut builder = reqwest::Client::builder()
        .use_rustls_tls()
        .dns_resolver(resolver)
        .no_proxy()
        .redirect(redirect)
        .referer(false)
        .min_tls_version(reqwest::tls::Version::TLS_1_2)
        .tls_built_in_root_certs(!options.no_builtin_roots)
        .connect_timeout(options.timeouts.connect)
        .read_timeout(options.timeouts.read)
        .timeout(options.timeouts.total);
    for root in &options.extra_roots {
        builder = builder.add_root_certificate(root.clone());
    }
    if !options.pins.is_empty() {
        // Pinned: a rustls configuration of our own (same roots, TLS 1.2+) whose verifier
        // also requires a pin. reqwest's own root settings above do not apply to it.
        match crate::pin::pinned_tls(&options.pins, &options.roots_der, !options.no_builtin_roots) {
            Ok(tls) => builder = builder.use_preconfigured_tls(tls),
            Err(e) => {
                // Fail closed: without enforceable pins, trust nothing, so no TLS connection
                // succeeds.
                tracing::error!(error = %e, "certificate pins cannot be enforced; refusing every TLS connection");
                let nothing = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
                    rustls::crypto::ring::default_provider(),
                ))
                .with_safe_default_protocol_versions()
                .map(|b| {
                    b.with_root_certificates(rustls::RootCertStore::empty())
                        .with_no_client_auth()
                });
                if let Ok(nothing) = nothing {
                    builder = builder.use_preconfigured_tls(nothing);
                }
            }
        }
    }
    builder.build()
}

/// The redirect rule: re-check each hop's URL, cap the hops, optionally stay on the origin.
pub fn redirect_policy(
    policy: Arc<Policy>,
    max_hops: usize,
    same_origin_only: bool,
) -> reqwest::redirect::Policy {
    reqwest::redirect::Policy::custom(move |attempt| {
        let refusal = check_hop(
            attempt.url(),
            attempt.previous(),
            &policy,
            max_hops,
            same_origin_only,
        );
        match refusal {
            None => attempt.follow(),
            Some(r) => {
                note_refusal(&r);
                attempt.error(r)
            }
        }
    })
}

fn check_hop(
    next: &Url,
    previous: &[Url],
    policy: &Policy,
    max_hops: usize,
    same_origin_only: bool,
) -> Option<Refusal> {
    // `previous` holds the first request and every hop already followed.
    if previous.len() > max_hops {
        return Some(Refusal::TooManyRedirects(max_hops));
    }
    if let Err(r) = check_url(next, policy) {
        return Some(r);
    }
    if same_origin_only
        && previous
            .first()
            .is_some_and(|first| first.origin() != next.origin())
    {
        return Some(Refusal::CrossOrigin);
    }
    None
}

/// Why an egress call failed: refused by the guard, or an HTTP failure.
#[derive(Debug, thiserror::Error)]
pub enum EgressError {
    /// The destination (or a redirect hop, or a header value) was refused. Answer the
    /// workflow with [`Refusal::PUBLIC_MESSAGE`] only.
    #[error("egress refused: {0}")]
    Refused(Refusal),
    /// Connection, TLS, timeout or protocol failure.
    #[error("egress request failed: {0}")]
    Http(#[source] reqwest::Error),
}

/// A [`client`] plus the pre-flight check of the request's URL and header values, so that
/// IP-literal hosts are classified too.
#[derive(Debug, Clone)]
pub struct GuardedClient {
    client: reqwest::Client,
    policy: Arc<Policy>,
}

impl GuardedClient {
    /// Builds the client (see [`client`]).
    pub fn new(
        policy: Arc<Policy>,
        lookup: Arc<dyn Lookup>,
        options: &ClientOptions,
    ) -> Result<Self, reqwest::Error> {
        Ok(Self {
            client: client(policy.clone(), lookup, options)?,
            policy,
        })
    }

    /// The underlying client, for building requests (`inner().get(url).build()`).
    pub fn inner(&self) -> &reqwest::Client {
        &self.client
    }

    /// Checks the URL and every header value, then sends the request. Refusals raised inside
    /// reqwest (resolver, redirect policy) come back as [`EgressError::Refused`] too.
    pub async fn execute(&self, req: reqwest::Request) -> Result<reqwest::Response, EgressError> {
        let checked = check_url(req.url(), &self.policy).and_then(|target| {
            for v in req.headers().values() {
                check_header_value(v.as_bytes())?;
            }
            Ok(target)
        });
        if let Err(r) = checked {
            note_refusal(&r);
            return Err(EgressError::Refused(r));
        }
        if let Ok(Target::Ip(_)) = checked {
            tracing::debug!(url = %req.url(), "egress to an allowed IP literal");
        }
        self.client
            .execute(req)
            .await
            .map_err(|e| match find_refusal(&e) {
                Some(r) => EgressError::Refused(r.clone()),
                None => EgressError::Http(e),
            })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn mixed_answer_refused_whole() {
        let lookup = TestResolver::new().with(
            "mixed.test",
            [
                "93.184.216.34".parse().unwrap(),
                "10.0.0.1".parse().unwrap(),
            ],
        );
        let r = GuardedResolver::new(Arc::new(Policy::default()), Arc::new(lookup));
        let err = r.resolve_checked("mixed.test").await.unwrap_err();
        assert_eq!(err.kind(), "resolved_address");
        assert_eq!(
            err.to_string(),
            "mixed.test resolves to refused address 10.0.0.1 (private)"
        );
    }

    #[test]
    fn hops() {
        let p = Policy::default();
        let first = Url::parse("https://a.example.com/x").unwrap();
        let same = Url::parse("https://a.example.com/y").unwrap();
        let other = Url::parse("https://b.example.com/y").unwrap();
        assert_eq!(
            check_hop(&same, std::slice::from_ref(&first), &p, 3, true),
            None
        );
        assert_eq!(
            check_hop(&other, std::slice::from_ref(&first), &p, 3, true),
            Some(Refusal::CrossOrigin)
        );
        assert_eq!(
            check_hop(&other, std::slice::from_ref(&first), &p, 3, false),
            None
        );
        assert_eq!(
            check_hop(&same, &[first.clone(), same.clone()], &p, 1, false),
            Some(Refusal::TooManyRedirects(1))
        );
        let meta = Url::parse("http://169.254.169.254/latest").unwrap();
        assert_eq!(
            check_hop(&meta, &[first], &p, 3, false).unwrap().kind(),
            "address"
        );
    }
}
