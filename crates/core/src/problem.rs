//! RFC 9457 problem details: the only shape an error response from the gateway takes.

use crate::{full, Body, GatewayError, RequestId, REQUEST_ID_HEADER};
use http::{header, HeaderValue, Response, StatusCode};
use serde::Serialize;

/// Media type of problem responses.
pub const PROBLEM_CONTENT_TYPE: &str = "application/problem+json";

/// A problem details document.
#[derive(Debug, Serialize)]
pub struct Problem<'a> {
    /// Stable URI naming the kind of problem.
    #[serde(rename = "type")]
    pub type_uri: String,
    /// Short summary, the same for every occurrence of this type.
    pub title: &'a str,
    /// The HTTP status, repeated for consumers that lose the status line.
    pub status: u16,
    /// Client-safe explanation of this occurrence.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// The request id, to quote when asking an operator about this request.
    pub request_id: &'a str,
    /// For schema, JSON limit and parameter failures: which JSON pointer failed which rule.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<serde_json::Value>,
}

/// Carried in the extensions of a response made from an error, so the access log and metrics
/// can name the cause without parsing the body. Never serialized to the client.
#[derive(Debug, Clone)]
pub struct ErrorInfo {
    /// The problem type slug.
    pub slug: &'static str,
    /// The internal cause, for the log line only.
    pub cause: Option<String>,
}

/// The longest pointer a problem repeats back. Pointers are made of the client's own keys,
/// which may be huge: past this they are cut, marked with `…`, so an error answer (and the
/// log line that records it) stays small. It bounds size only; a short key comes back whole
/// to the client that sent it.
const MAX_POINTER: usize = 256;

fn shown_pointer(p: &str) -> std::borrow::Cow<'_, str> {
    if p.len() <= MAX_POINTER {
        return p.into();
    }
    let mut end = MAX_POINTER;
    while !p.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &p[..end]).into()
}

/// Builds the problem+json response for `err`, with [`ErrorInfo`] in its extensions. Headers a status requires (`Allow` on 405,
/// `Retry-After` on 503) are set here, so every producer of the error gets them.
pub fn problem_response(err: &GatewayError, request_id: &RequestId) -> Response<Body> {
    let status = err.status();
    let problem = Problem {
        type_uri: format!("urn:portcullis:problem:{}", err.slug()),
        title: err.title(),
        status: status.as_u16(),
        detail: err.detail(),
        request_id: request_id.as_str(),
        errors: match err {
            GatewayError::Invalid { errors } | GatewayError::InvalidParams { errors } => errors
                .iter()
                .map(|(p, r)| serde_json::json!({ "pointer": shown_pointer(p), "rule": r }))
                .collect(),
            GatewayError::JsonLimit { pointer, rule, .. } => {
                vec![serde_json::json!({ "pointer": shown_pointer(pointer), "rule": rule })]
            }
            _ => Vec::new(),
        },
    };
    let body = serde_json::to_vec(&problem).unwrap_or_else(|_| b"{}".to_vec());
    let mut res = Response::new(full(body));
    *res.status_mut() = status;
    res.extensions_mut().insert(ErrorInfo {
        slug: err.slug(),
        cause: err.cause(),
    });
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(PROBLEM_CONTENT_TYPE),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(REQUEST_ID_HEADER, request_id.header_value());
    match err {
        GatewayError::MethodNotAllowed { allow } => {
            let list = allow
                .iter()
                .map(|m| m.as_str())
                .collect::<Vec<_>>()
                .join(", ");
            if let Ok(v) = HeaderValue::from_str(&list) {
                h.insert(header::ALLOW, v);
            }
        }
        GatewayError::Unavailable {
            retry_after: Some(d),
        }
        | GatewayError::TooManyRequests { retry_after: d }
        | GatewayError::QuotaExceeded { retry_after: d, .. }
        | GatewayError::Overloaded { retry_after: d } => {
            h.insert(
                header::RETRY_AFTER,
                HeaderValue::from(crate::text::seconds_up(*d).max(1)),
            );
        }
        GatewayError::Unauthorized { presented } => {
            let challenge = if *presented {
                "Bearer realm=\"portcullis\", error=\"invalid_token\""
            } else {
                "Bearer realm=\"portcullis\""
            };
            h.insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static(challenge),
            );
        }
        _ => {}
    }
    if status == StatusCode::PAYLOAD_TOO_LARGE
        || status == StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
        || status == StatusCode::REQUEST_TIMEOUT
    {
        // The rest of the request may still be on the wire; do not try to reuse the connection.
        h.insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    res
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    async fn body_json(res: Response<Body>) -> serde_json::Value {
        let bytes = res
            .into_body()
            .collect()
            .await
            .map(|c| c.to_bytes())
            .unwrap_or_default();
        serde_json::from_slice(&bytes).unwrap_or_default()
    }

    #[test]
    fn internal_causes_never_reach_the_body() {
        let rt = tokio_rt();
        let secret_cause: crate::BoxError =
            "connect to 10.1.2.3:5432 failed: /srv/app/db.rs".into();
        let err = GatewayError::BadGateway(secret_cause);
        let id = RequestId::generate();
        let res = problem_response(&err, &id);
        assert_eq!(res.status(), StatusCode::BAD_GATEWAY);
        assert_eq!(res.headers()[header::CONTENT_TYPE], PROBLEM_CONTENT_TYPE);
        let v = rt.block_on(body_json(res));
        let text = v.to_string();
        assert!(
            !text.contains("10.1.2.3") && !text.contains("db.rs"),
            "{text}"
        );
        assert_eq!(v["type"], "urn:portcullis:problem:upstream-unavailable");
        assert_eq!(v["status"], 502);
        assert_eq!(v["request_id"], id.as_str());
        assert!(err.cause().is_some_and(|c| c.contains("10.1.2.3")));
    }

    #[test]
    fn status_specific_headers() {
        let id = RequestId::generate();
        let res = problem_response(
            &GatewayError::MethodNotAllowed {
                allow: vec![http::Method::GET, http::Method::POST],
            },
            &id,
        );
        assert_eq!(res.headers()[header::ALLOW], "GET, POST");
        let res = problem_response(
            &GatewayError::Unavailable {
                retry_after: Some(std::time::Duration::from_secs(5)),
            },
            &id,
        );
        assert_eq!(res.headers()[header::RETRY_AFTER], "5");
        let res = problem_response(
            &GatewayError::Overloaded {
                retry_after: std::time::Duration::from_secs(1),
            },
            &id,
        );
        assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(res.headers()[header::RETRY_AFTER], "1");
        let res = problem_response(&GatewayError::RequestTimeout, &id);
        assert_eq!(res.status(), StatusCode::REQUEST_TIMEOUT);
        assert_eq!(res.headers()[header::CONNECTION], "close");
    }

    #[test]
    fn input_failures_list_pointer_and_rule() {
        let rt = tokio_rt();
        let id = RequestId::generate();
        let res = problem_response(
            &GatewayError::JsonLimit {
                pointer: "/items/3".into(),
                rule: "max_depth",
                limit: 32,
            },
            &id,
        );
        assert_eq!(res.status(), StatusCode::BAD_REQUEST);
        let v = rt.block_on(body_json(res));
        assert_eq!(v["type"], "urn:portcullis:problem:json-limit-exceeded");
        assert_eq!(
            v["errors"],
            serde_json::json!([{ "pointer": "/items/3", "rule": "max_depth" }])
        );
        assert!(v["detail"]
            .as_str()
            .is_some_and(|d| d.contains("max_depth limit of 32")));
        let res = problem_response(
            &GatewayError::InvalidParams {
                errors: vec![
                    ("/path/id".into(), "type".into()),
                    ("/query/limit".into(), "duplicate".into()),
                ],
            },
            &id,
        );
        assert_eq!(res.status(), StatusCode::BAD_REQUEST);
        let v = rt.block_on(body_json(res));
        assert_eq!(v["type"], "urn:portcullis:problem:invalid-parameters");
        assert_eq!(v["errors"][1]["pointer"], "/query/limit");
        assert_eq!(v["errors"][1]["rule"], "duplicate");
    }

    #[test]
    fn long_pointers_are_cut_so_a_body_of_huge_keys_is_not_echoed_back() {
        let rt = tokio_rt();
        let id = RequestId::generate();
        // Keys from the client's own body: 33 levels of 60 KB keys once came back whole.
        let key = format!("SECRET-TOKEN-{}", "é".repeat(30_000));
        let pointer = format!("/{key}").repeat(33);
        let res = problem_response(
            &GatewayError::JsonLimit {
                pointer,
                rule: "max_depth",
                limit: 32,
            },
            &id,
        );
        let v = rt.block_on(body_json(res));
        let shown = v["errors"][0]["pointer"].as_str().unwrap_or_default();
        assert!(
            shown.len() <= MAX_POINTER + '…'.len_utf8(),
            "{}",
            shown.len()
        );
        assert!(shown.starts_with("/SECRET-TOKEN-é") && shown.ends_with('…'));
        assert!(v.to_string().len() < 2048);
        assert_eq!(shown_pointer("/items/3"), "/items/3");
    }

    fn tokio_rt() -> SimpleRt {
        SimpleRt
    }

    /// Polls a ready future to completion; full bodies never pend.
    struct SimpleRt;
    impl SimpleRt {
        fn block_on<F: std::future::Future>(&self, f: F) -> F::Output {
            let waker = std::task::Waker::noop();
            let mut cx = std::task::Context::from_waker(waker);
            let mut f = std::pin::pin!(f);
            loop {
                if let std::task::Poll::Ready(v) = f.as_mut().poll(&mut cx) {
                    return v;
                }
            }
        }
    }
}
