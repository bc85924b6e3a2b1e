//! The gateway's one error type. Every layer returns it; [`GatewayError::status`] and
//! [`crate::problem_response`] are the single place a cause becomes an HTTP answer. Internal
//! causes (upstream error text, I/O errors) ride along for the log line and never reach the
//! client.

use crate::BoxError;
use http::{Method, StatusCode};
use std::time::Duration;

/// Why a request could not be parsed or accepted as well-formed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MalformedKind {
    /// The path has `.` or `..` segments, which different servers resolve differently.
    DotSegments,
    /// The path has an encoded `/` or `\`, a classic way to slip past path-based rules.
    EncodedSeparator,
    /// The path is not an absolute path (or has bytes that are not allowed).
    InvalidPath,
    /// The path has an empty segment (`//`), which some servers merge and routing does not.
    EmptySegment,
    /// The path percent-encodes a character that needs no encoding (`%61` for `a`): only
    /// a way to make one path look like another to path-based rules.
    EncodedUnreserved,
    /// A percent-escape is malformed, or the escapes do not decode to UTF-8 (overlong
    /// forms of `.` and `/` among them).
    InvalidEncoding,
    /// The path has `;`, which Java servers and others read as path parameters and strip.
    PathParameter,
    /// The path has an encoded `%` (`%25`): an upstream that decodes twice reads another path.
    DoubleEncoding,
    /// A header value is not acceptable (control characters, bad Host).
    InvalidHeader,
    /// The body ended early or could not be read.
    InvalidBody,
    /// The body is not JSON the gateway can check: not valid JSON (RFC 8259), or a number
    /// beyond a 64-bit float's range (`1e400`), which JSON allows but no checker represents.
    InvalidJson,
}

impl MalformedKind {
    fn detail(self) -> &'static str {
        match self {
            Self::DotSegments => "The request path contains '.' or '..' segments.",
            Self::EncodedSeparator => "The request path contains an encoded '/' or '\\'.",
            Self::InvalidPath => "The request path is not valid.",
            Self::EmptySegment => "The request path contains an empty segment ('//').",
            Self::EncodedUnreserved => {
                "The request path percent-encodes a character that needs no encoding."
            }
            Self::InvalidEncoding => "The request path has an invalid percent-encoding.",
            Self::PathParameter => "The request path contains ';'.",
            Self::DoubleEncoding => "The request path contains an encoded '%'.",
            Self::InvalidHeader => "A request header is not valid.",
            Self::InvalidBody => "The request body could not be read.",
            Self::InvalidJson => {
                "The request body is not valid JSON, or holds a number too large to check."
            }
        }
    }
}

/// Everything that can stop a request inside the gateway.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// No declared route has this path.
    #[error("no route matches")]
    NotFound,
    /// A route has this path but not this method.
    #[error("method not allowed")]
    MethodNotAllowed {
        /// The methods the path does answer.
        allow: Vec<Method>,
    },
    /// The route is past its sunset date.
    #[error("route retired")]
    Gone,
    /// The body is larger than the route accepts.
    #[error("request body too large")]
    PayloadTooLarge {
        /// The route's limit in bytes.
        limit: u64,
    },
    /// The request body arrived more slowly than `server.min_body_rate` allows.
    #[error("request body too slow")]
    RequestTimeout,
    /// The request target is too long.
    #[error("request target too long")]
    UriTooLong,
    /// A `Transfer-Encoding` other than `chunked` alone (`gzip, chunked`): the gateway would
    /// pass the still-encoded body on without the coding that says so (RFC 9112 §6.1: 501).
    #[error("transfer coding not supported")]
    UnsupportedTransferCoding,
    /// Too many request headers, or too many header bytes.
    #[error("request headers too large")]
    HeadersTooLarge,
    /// No valid credential. The same answer for a missing, unknown, wrong, expired or revoked
    /// credential, so callers cannot tell which (no key enumeration).
    #[error("unauthenticated")]
    Unauthorized {
        /// True when a credential was presented (RFC 6750 `error="invalid_token"`).
        presented: bool,
    },
    /// A known caller lacks the scope, role or network this request needs.
    #[error("forbidden")]
    Forbidden,
    /// An egress destination the SSRF guard refuses: an internal address, a name that resolves
    /// to one, a redirect to one, or a URL trick in the caller's path. One answer for every
    /// cause, so the egress gateway cannot be used to map the internal network; the cause
    /// goes to the log only.
    #[error("destination refused")]
    DestinationRefused,
    /// Too many requests, or locked out after repeated authentication failures.
    #[error("too many requests")]
    TooManyRequests {
        /// When to try again.
        retry_after: Duration,
    },
    /// A webhook's signature, timestamp or headers did not verify. One answer for every
    /// cause; the cause goes to the log only.
    #[error("webhook verification failed")]
    WebhookUnverified,
    /// The caller's daily or monthly quota is used up.
    #[error("quota exceeded")]
    QuotaExceeded {
        /// Until the quota's window resets.
        retry_after: Duration,
        /// `daily` or `monthly`.
        window: &'static str,
    },
    /// The request body does not satisfy the route's schema; (JSON pointer, keyword) pairs.
    #[error("request body invalid")]
    Invalid {
        /// Where and which rule failed; never the offending values.
        errors: Vec<(String, String)>,
    },
    /// A JSON request body breaks one of the route's structural limits (depth, string length,
    /// array length, object members).
    #[error("JSON body exceeds a structural limit")]
    JsonLimit {
        /// JSON pointer of the offending container or string; never its content.
        pointer: String,
        /// Which limit: `max_depth`, `max_string`, `max_array`, `max_members`, or
        /// `unique_member_names` for an object that repeats a name.
        rule: &'static str,
        /// The configured limit.
        limit: u64,
    },
    /// Path or query parameters break the route's declarations; (pointer such as
    /// `/query/limit`, rule) pairs.
    #[error("request parameters invalid")]
    InvalidParams {
        /// Where and which rule failed; never the offending values.
        errors: Vec<(String, String)>,
    },
    /// The request's content type is not one the route accepts.
    #[error("unsupported media type")]
    UnsupportedMediaType,
    /// The request is malformed.
    #[error("malformed request: {0:?}")]
    Malformed(MalformedKind),
    /// The upstream did not answer in time.
    #[error("upstream timed out")]
    UpstreamTimeout,
    /// The upstream could not be reached or answered with something unusable.
    #[error("upstream failed")]
    BadGateway(#[source] BoxError),
    /// A credential this route needs from the vault is unavailable (revoked, expired, not
    /// bound to the route). The request fails closed instead of going out without it.
    #[error("credential unavailable")]
    CredentialUnavailable(#[source] BoxError),
    /// The gateway will not take this request now (draining, overloaded).
    #[error("service unavailable")]
    Unavailable {
        /// Suggested wait before retrying.
        retry_after: Option<Duration>,
    },
    /// Shed under load: the route's concurrency limit or the server's connection cap is
    /// reached. Answered at once, never queued.
    #[error("overloaded")]
    Overloaded {
        /// Suggested wait before retrying.
        retry_after: Duration,
    },
    /// A bug or an unexpected internal failure.
    #[error("internal error")]
    Internal(#[source] BoxError),
}

impl GatewayError {
    /// The HTTP status this error answers with.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::NotFound => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            Self::Gone => StatusCode::GONE,
            Self::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            Self::UriTooLong => StatusCode::URI_TOO_LONG,
            Self::UnsupportedTransferCoding => StatusCode::NOT_IMPLEMENTED,
            Self::HeadersTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            Self::Malformed(_) | Self::JsonLimit { .. } | Self::InvalidParams { .. } => {
                StatusCode::BAD_REQUEST
            }
            Self::Invalid { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            Self::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::Unauthorized { .. } | Self::WebhookUnverified => StatusCode::UNAUTHORIZED,
            Self::Forbidden | Self::DestinationRefused => StatusCode::FORBIDDEN,
            Self::TooManyRequests { .. } | Self::QuotaExceeded { .. } => {
                StatusCode::TOO_MANY_REQUESTS
            }
            Self::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
            Self::BadGateway(_) => StatusCode::BAD_GATEWAY,
            Self::Unavailable { .. } | Self::CredentialUnavailable(_) | Self::Overloaded { .. } => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// Stable problem type slug; the `type` member is `urn:portcullis:problem:<slug>`.
    pub fn slug(&self) -> &'static str {
        match self {
            Self::NotFound => "route-not-found",
            Self::MethodNotAllowed { .. } => "method-not-allowed",
            Self::Gone => "route-retired",
            Self::PayloadTooLarge { .. } => "body-too-large",
            Self::RequestTimeout => "request-timeout",
            Self::UriTooLong => "uri-too-long",
            Self::UnsupportedTransferCoding => "unsupported-transfer-coding",
            Self::HeadersTooLarge => "headers-too-large",
            Self::Malformed(_) => "malformed-request",
            Self::Invalid { .. } => "invalid-body",
            Self::JsonLimit { .. } => "json-limit-exceeded",
            Self::InvalidParams { .. } => "invalid-parameters",
            Self::UnsupportedMediaType => "unsupported-media-type",
            Self::Unauthorized { .. } => "unauthenticated",
            Self::WebhookUnverified => "webhook-unverified",
            Self::Forbidden => "forbidden",
            Self::DestinationRefused => "destination-refused",
            Self::TooManyRequests { .. } => "too-many-requests",
            Self::QuotaExceeded { .. } => "quota-exceeded",
            Self::UpstreamTimeout => "upstream-timeout",
            Self::BadGateway(_) => "upstream-unavailable",
            Self::Unavailable { .. } => "unavailable",
            Self::CredentialUnavailable(_) => "credential-unavailable",
            Self::Overloaded { .. } => "overloaded",
            Self::Internal(_) => "internal-error",
        }
    }

    /// Short, fixed human summary.
    pub fn title(&self) -> &'static str {
        match self {
            Self::NotFound => "No route matches this request",
            Self::MethodNotAllowed { .. } => "Method not allowed on this route",
            Self::Gone => "This endpoint has been retired",
            Self::PayloadTooLarge { .. } => "Request body too large",
            Self::RequestTimeout => "Request body too slow",
            Self::UriTooLong => "Request target too long",
            Self::UnsupportedTransferCoding => "Transfer coding not supported",
            Self::HeadersTooLarge => "Request headers too large",
            Self::Malformed(_) => "Malformed request",
            Self::Invalid { .. } => "Request body does not match the schema",
            Self::JsonLimit { .. } => "JSON body exceeds a structural limit",
            Self::InvalidParams { .. } => "Request parameters are not valid",
            Self::UnsupportedMediaType => "Unsupported content type",
            Self::Unauthorized { .. } => "Authentication required",
            Self::WebhookUnverified => "Webhook verification failed",
            Self::Forbidden => "Not allowed",
            Self::DestinationRefused => "Destination refused",
            Self::TooManyRequests { .. } => "Too many requests",
            Self::QuotaExceeded { .. } => "Quota exceeded",
            Self::UpstreamTimeout => "Upstream did not answer in time",
            Self::BadGateway(_) => "Upstream unavailable",
            Self::Unavailable { .. } => "Service unavailable",
            Self::CredentialUnavailable(_) => "Upstream credential unavailable",
            Self::Overloaded { .. } => "Too busy",
            Self::Internal(_) => "Internal error",
        }
    }

    /// A client-safe explanation: fixed text and configured limits only, never a cause.
    pub fn detail(&self) -> Option<String> {
        match self {
            Self::PayloadTooLarge { limit } => Some(format!(
                "This route accepts bodies of at most {limit} bytes."
            )),
            Self::Malformed(kind) => Some(kind.detail().to_string()),
            Self::QuotaExceeded { window, .. } => Some(format!(
                "The {window} request quota is used up; it resets at the start of the next {} (UTC).",
                if *window == "daily" { "day" } else { "month" }
            )),
            Self::RequestTimeout => {
                Some("The request body arrived more slowly than this server accepts.".into())
            }
            Self::UnsupportedTransferCoding => Some(
                "Only the chunked transfer coding is accepted; send the body uncompressed or use Content-Encoding.".into(),
            ),
            Self::Overloaded { .. } => Some(
                "Too many requests or connections are in progress; retry after the time in Retry-After.".into(),
            ),
            Self::JsonLimit { rule, .. } if *rule == "unique_member_names" => Some(
                "An object in the JSON body has the same member name more than once.".into(),
            ),
            Self::JsonLimit { rule, limit, .. } => Some(format!(
                "The JSON body exceeds this route's {rule} limit of {limit}."
            )),
            Self::Gone => Some(
                "The endpoint passed its sunset date. See the deprecation link published for it."
                    .into(),
            ),
            _ => None,
        }
    }

    /// The internal cause for the log line; `None` when the error is its own explanation.
    pub fn cause(&self) -> Option<String> {
        let mut src: Option<&(dyn std::error::Error + 'static)> = match self {
            Self::BadGateway(e) | Self::Internal(e) | Self::CredentialUnavailable(e) => {
                Some(e.as_ref())
            }
            _ => None,
        };
        let mut parts = Vec::new();
        while let Some(e) = src {
            parts.push(e.to_string());
            src = e.source();
        }
        (!parts.is_empty()).then(|| parts.join(": "))
    }
}
