//! Step 6 of an egress call: what comes back. The third party's answer is untrusted input:
//! headers are filtered, the body is bounded, successful bodies must have a declared content
//! type and satisfy the schema, minimization applies, and any echo of the credential is
//! replaced before the workflow sees it.

use super::EgressTerminal;
use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, StatusCode};
use portcullis_core::GatewayError;
use zeroize::Zeroizing;

/// What replaces an echoed credential in a response.
const REDACTED: &[u8] = b"[REDACTED]";

/// Response headers never handed to the workflow.
const DROPPED_RESPONSE_HEADERS: &[header::HeaderName] = &[
    header::SET_COOKIE,
    header::CONNECTION,
    header::TRANSFER_ENCODING,
    header::CONTENT_LENGTH,
    header::CONTENT_ENCODING,
];

impl EgressTerminal {
    /// The status, headers and body handed to the workflow.
    pub(super) async fn answer(
        &self,
        res: reqwest::Response,
        needles: &[Zeroizing<Vec<u8>>],
    ) -> Result<(StatusCode, HeaderMap, Bytes), GatewayError> {
        let status = res.status();
        let mut headers = self.kept_headers(res.headers());
        let mut body = self.bounded_body(res).await?;
        // Third-party data is untrusted input: the declared content types and schema hold, or
        // the workflow gets 502 and never sees the body.
        if status.is_success() {
            self.check_response(&headers, &body)?;
            body = self.minimized(body)?;
        }
        self.scrub_echoes(&mut headers, &mut body, needles);
        Ok((status, headers, Bytes::from(body)))
    }

    fn kept_headers(&self, from: &HeaderMap) -> HeaderMap {
        let mut back = HeaderMap::new();
        for (name, v) in from {
            if DROPPED_RESPONSE_HEADERS.contains(name)
                || self.config.strip_response_headers.contains(name)
            {
                continue;
            }
            back.append(name.clone(), v.clone());
        }
        back
    }

    /// The whole body, or 502 past `max_response`.
    async fn bounded_body(&self, mut res: reqwest::Response) -> Result<Vec<u8>, GatewayError> {
        let mut buf: Vec<u8> = Vec::new();
        while let Some(chunk) = res
            .chunk()
            .await
            .map_err(|e| GatewayError::BadGateway(Box::new(e)))?
        {
            if (buf.len() + chunk.len()) as u64 > self.config.max_response {
                return Err(GatewayError::BadGateway(
                    "third-party response larger than max_response".into(),
                ));
            }
            buf.extend_from_slice(&chunk);
        }
        Ok(buf)
    }

    fn check_response(&self, headers: &HeaderMap, body: &[u8]) -> Result<(), GatewayError> {
        let id = self.config.id.as_str();
        let bad = |why: &'static str| {
            metrics::counter!("portcullis_egress_bad_responses_total", "integration" => id.to_string(), "reason" => why).increment(1);
            tracing::warn!(
                integration = id,
                reason = why,
                "third-party response refused"
            );
            GatewayError::BadGateway(why.into())
        };
        if !self.config.response_content_types.is_empty() {
            let media = headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .map(|v| {
                    v.split(';')
                        .next()
                        .unwrap_or("")
                        .trim()
                        .to_ascii_lowercase()
                })
                .unwrap_or_default();
            if !self.config.response_content_types.contains(&media) {
                return Err(bad("content type not allowed"));
            }
        }
        if let Some(schema) = self
            .response_schema
            .as_ref()
            .filter(|s| !s.accepts_bytes(body, None))
        {
            let value: serde_json::Value =
                serde_json::from_slice(body).map_err(|_| bad("response is not JSON"))?;
            if !schema.is_valid(&value) {
                return Err(bad("response does not match the schema"));
            }
        }
        Ok(())
    }

    /// Data minimization. It cannot be skipped: a body it cannot parse is refused.
    fn minimized(&self, body: Vec<u8>) -> Result<Vec<u8>, GatewayError> {
        let Some(f) = &self.config.response_filter else {
            return Ok(body);
        };
        let mut v: serde_json::Value = serde_json::from_slice(&body)
            .map_err(|_| GatewayError::BadGateway("response to minimize is not JSON".into()))?;
        portcullis_policy::minimize(
            &mut v,
            f.allow.as_deref(),
            &f.deny,
            &f.mask,
            if f.mask_hash {
                portcullis_policy::MaskStyle::Hash
            } else {
                portcullis_policy::MaskStyle::Last4
            },
        );
        Ok(v.to_string().into_bytes())
    }

    /// Replaces every echo of the credential in the body and the header values.
    fn scrub_echoes(
        &self,
        headers: &mut HeaderMap,
        body: &mut Vec<u8>,
        needles: &[Zeroizing<Vec<u8>>],
    ) {
        let id = self.config.id.as_str();
        let needles: Vec<&[u8]> = needles.iter().map(|n| n.as_slice()).collect();
        let mut scrubbed = 0u64;
        if let Some(clean) = scrub(body, &needles) {
            *body = clean;
            scrubbed += 1;
        }
        for v in headers.values_mut() {
            if let Some(clean) = scrub(v.as_bytes(), &needles) {
                *v = HeaderValue::from_bytes(&clean)
                    .unwrap_or(HeaderValue::from_static("[REDACTED]"));
                scrubbed += 1;
            }
        }
        if scrubbed > 0 {
            metrics::counter!("portcullis_egress_credential_echoes_total", "integration" => id.to_string()).increment(scrubbed);
            tracing::warn!(
                integration = id,
                "the third party echoed the credential; replaced before the workflow saw it"
            );
        }
    }
}

/// Replaces every occurrence of each needle in `hay`.
fn scrub(hay: &[u8], needles: &[&[u8]]) -> Option<Vec<u8>> {
    let mut out: Option<Vec<u8>> = None;
    for n in needles.iter().filter(|n| n.len() >= 4) {
        let src = out.as_deref().unwrap_or(hay);
        if memchr::memmem::find(src, n).is_none() {
            continue;
        }
        let mut next = Vec::with_capacity(src.len());
        let mut last = 0;
        for at in memchr::memmem::find_iter(src, n) {
            if at < last {
                continue;
            }
            next.extend_from_slice(&src[last..at]);
            next.extend_from_slice(REDACTED);
            last = at + n.len();
        }
        next.extend_from_slice(&src[last..]);
        out = Some(next);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::scrub;

    #[test]
    fn every_echo_is_replaced() {
        let out = scrub(b"a SECRETxyz b SECRETxyz", &[b"SECRETxyz"]).unwrap_or_default();
        assert_eq!(out, b"a [REDACTED] b [REDACTED]".to_vec());
        assert!(scrub(b"nothing here", &[b"SECRETxyz"]).is_none());
    }
}
