//! The one error type of the SSRF guard.

use std::net::IpAddr;

use crate::ssrf::Reason;

/// Why a destination was refused.
///
/// The `Display` text is detailed and meant for the access log and the audit trail only: it
/// names addresses and resolution results. What the workflow sees is
/// [`Refusal::PUBLIC_MESSAGE`], so a caller cannot use the egress gateway to map the internal
/// network.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Refusal {
    /// The destination is (or a name resolved to) an address the policy refuses.
    #[error("address {ip} is refused ({reason})")]
    Address {
        /// The refused address.
        ip: IpAddr,
        /// Its class.
        reason: Reason,
    },
    /// A name resolved to at least one refused address; the whole name is refused.
    #[error("{host} resolves to refused address {ip} ({reason})")]
    ResolvedAddress {
        /// The name that was resolved.
        host: String,
        /// The first refused address of the answer.
        ip: IpAddr,
        /// Its class.
        reason: Reason,
    },
    /// Resolution failed.
    #[error("{host} did not resolve: {detail}")]
    Resolution {
        /// The name.
        host: String,
        /// The resolver's error.
        detail: String,
    },
    /// Resolution returned no address.
    #[error("{host} resolved to no address")]
    NoAddress {
        /// The name.
        host: String,
    },
    /// The URL does not parse.
    #[error("URL does not parse: {0}")]
    Unparseable(String),
    /// A scheme other than `http` or `https`.
    #[error("scheme {0:?} is not allowed")]
    Scheme(String),
    /// The URL carries a user name or password.
    #[error("URL carries userinfo")]
    Userinfo,
    /// The URL has a fragment.
    #[error("URL has a fragment")]
    Fragment,
    /// A base URL with a query (a base is scheme, host, port and path prefix).
    #[error("base URL has a query")]
    BaseQuery,
    /// No host.
    #[error("URL has no host")]
    NoHost,
    /// NUL, CR, LF, tab, another control character or a space, raw or percent-encoded.
    #[error("control character or whitespace in URL")]
    ControlCharacter,
    /// A raw backslash.
    #[error("backslash in URL")]
    Backslash,
    /// `%2f` or `%5c` (any case, also double-encoded).
    #[error("encoded slash or backslash in path")]
    EncodedSlash,
    /// A `.` or `..` segment, raw or percent-encoded.
    #[error("dot segment in path")]
    DotSegment,
    /// A `#` in a caller-supplied path or query.
    #[error("fragment delimiter in caller path")]
    FragmentDelimiter,
    /// The joined URL is not under the base URL's path, host or port.
    #[error("path escapes the integration's base URL")]
    EscapesBase,
    /// A host name that is numeric (an IPv4 address in a form the URL parser did not
    /// normalise), or a `localhost` name.
    #[error("ambiguous host {0:?}")]
    AmbiguousHost(String),
    /// A header value with CR, LF or NUL.
    #[error("header value contains CR, LF or NUL")]
    HeaderValue,
    /// More redirects than the policy allows.
    #[error("too many redirects (limit {0})")]
    TooManyRedirects(usize),
    /// A redirect left the origin while the caller asked for same-origin only.
    #[error("redirect leaves the origin")]
    CrossOrigin,
}

impl Refusal {
    /// The only text about a refusal that may reach the workflow.
    pub const PUBLIC_MESSAGE: &'static str = "destination refused";

    /// A short stable name for logs and metric labels.
    pub fn kind(&self) -> &'static str {
        match self {
            Refusal::Address { .. } => "address",
            Refusal::ResolvedAddress { .. } => "resolved_address",
            Refusal::Resolution { .. } => "resolution",
            Refusal::NoAddress { .. } => "no_address",
            Refusal::Unparseable(_) => "unparseable",
            Refusal::Scheme(_) => "scheme",
            Refusal::Userinfo => "userinfo",
            Refusal::Fragment => "fragment",
            Refusal::BaseQuery => "base_query",
            Refusal::NoHost => "no_host",
            Refusal::ControlCharacter => "control_character",
            Refusal::Backslash => "backslash",
            Refusal::EncodedSlash => "encoded_slash",
            Refusal::DotSegment => "dot_segment",
            Refusal::FragmentDelimiter => "fragment_delimiter",
            Refusal::EscapesBase => "escapes_base",
            Refusal::AmbiguousHost(_) => "ambiguous_host",
            Refusal::HeaderValue => "header_value",
            Refusal::TooManyRedirects(_) => "too_many_redirects",
            Refusal::CrossOrigin => "cross_origin",
        }
    }
}

/// Finds a [`Refusal`] in the source chain of an error (a `reqwest::Error` from a refused
/// connection or redirect carries one), so the gateway can log the cause and answer with the
/// generic message.
pub fn find_refusal<'a>(err: &'a (dyn std::error::Error + 'static)) -> Option<&'a Refusal> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = cur {
        if let Some(r) = e.downcast_ref::<Refusal>() {
            return Some(r);
        }
        cur = e.source();
    }
    None
}
