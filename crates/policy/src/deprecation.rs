//! Deprecation and sunset (RFC 9745 `Deprecation`, RFC 8594 `Sunset`): before the sunset the
//! route works and tells callers it is going; from the sunset on it answers 410 Gone.

use crate::{Flow, Policy, Step};
use http::{HeaderName, HeaderValue, Request, Response};
use portcullis_config::Deprecation as DeprecationConfig;
use portcullis_core::{Body, GatewayError, RequestContext};
use std::time::SystemTime;
use time::OffsetDateTime;

static DEPRECATION: HeaderName = HeaderName::from_static("deprecation");
static SUNSET: HeaderName = HeaderName::from_static("sunset");

/// The deprecation policy for one route. Header values are rendered once, at build time.
pub struct Deprecation {
    sunset: SystemTime,
    deprecation: HeaderValue,
    sunset_header: HeaderValue,
    link: Option<HeaderValue>,
}

impl Deprecation {
    /// Builds the policy from the route's `deprecated` table.
    pub fn new(cfg: &DeprecationConfig) -> Self {
        let sunset = SystemTime::from(cfg.sunset);
        // RFC 9745: a Structured Field Date, `@` and Unix seconds. Without `since`, the route
        // counts as deprecated from the moment this config was loaded.
        let since = cfg
            .since
            .unwrap_or_else(OffsetDateTime::now_utc)
            .unix_timestamp();
        let link = cfg.link.as_ref().and_then(|l| {
            HeaderValue::from_str(&format!("<{l}>; rel=\"deprecation\"; type=\"text/html\"")).ok()
        });
        Deprecation {
            sunset,
            deprecation: HeaderValue::from_str(&format!("@{since}"))
                .unwrap_or_else(|_| HeaderValue::from_static("@0")),
            sunset_header: HeaderValue::from_str(&httpdate::fmt_http_date(sunset))
                .unwrap_or_else(|_| HeaderValue::from_static("Thu, 01 Jan 1970 00:00:00 GMT")),
            link,
        }
    }
}

impl Policy for Deprecation {
    fn name(&self) -> &'static str {
        "deprecation"
    }

    fn on_request(&self, req: Request<Body>) -> Step<'_, Flow> {
        if SystemTime::now() >= self.sunset {
            return Err(GatewayError::Gone).into();
        }
        Ok(Flow::Continue(req)).into()
    }

    fn on_response<'a>(
        &'a self,
        mut res: Response<Body>,
        _ctx: &'a RequestContext,
    ) -> Step<'a, Response<Body>> {
        let h = res.headers_mut();
        h.insert(DEPRECATION.clone(), self.deprecation.clone());
        h.insert(SUNSET.clone(), self.sunset_header.clone());
        if let Some(link) = &self.link {
            h.append(http::header::LINK, link.clone());
        }
        Ok(res).into()
    }
}
