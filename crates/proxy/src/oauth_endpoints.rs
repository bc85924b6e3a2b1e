//! The OAuth 2.0 endpoints on the data-plane listener: `POST /oauth/token` (client credentials
//! grant), `POST /oauth/revoke` (RFC 7009), `POST /oauth/introspect` (RFC 7662) and
//! `GET /.well-known/jwks.json`. Errors follow RFC 6749 section 5.2 (`{"error": ...}`), the one
//! place the gateway does not answer with problem+json, because OAuth clients expect it.

use base64::{engine::general_purpose::STANDARD, Engine};
use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use portcullis_config::ClientConfig;
use portcullis_core::{full, Body, GatewayError, MalformedKind};
use portcullis_identity::{BruteForce, OAuthError, TokenIssuer};
use std::{collections::HashMap, net::IpAddr, sync::Arc};

/// The paths this module answers.
pub(crate) fn is_endpoint(path: &str) -> bool {
    matches!(
        path,
        "/oauth/token" | "/oauth/revoke" | "/oauth/introspect" | "/.well-known/jwks.json"
    )
}

const MAX_FORM: u64 = 16 * 1024;

fn json(status: StatusCode, v: &serde_json::Value) -> Response<Body> {
    let mut res = Response::new(full(v.to_string()));
    *res.status_mut() = status;
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    res
}

fn oauth_error(e: &OAuthError, basic: bool) -> Response<Body> {
    let status = if *e == OAuthError::InvalidClient {
        StatusCode::UNAUTHORIZED
    } else if *e == OAuthError::ServerError {
        StatusCode::INTERNAL_SERVER_ERROR
    } else {
        StatusCode::BAD_REQUEST
    };
    let mut res = json(status, &serde_json::json!({ "error": e.code() }));
    if status == StatusCode::UNAUTHORIZED && basic {
        res.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Basic realm=\"portcullis\""),
        );
    }
    res
}

async fn form(
    req: Request<Body>,
) -> Result<(http::request::Parts, HashMap<String, String>), OAuthError> {
    let (parts, body) = req.into_parts();
    let form_type = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| {
            ct.split(';').next().is_some_and(|m| {
                m.trim()
                    .eq_ignore_ascii_case("application/x-www-form-urlencoded")
            })
        });
    if !form_type {
        return Err(OAuthError::InvalidRequest);
    }
    // Too large, malformed or too slow (`server.min_body_rate`): all `invalid_request`.
    let bytes: Bytes = portcullis_policy::read_limited(body, MAX_FORM)
        .await
        .map_err(|_| OAuthError::InvalidRequest)?;
    let mut map = HashMap::new();
    for (k, v) in url::form_urlencoded::parse(&bytes) {
        // RFC 6749 section 3.2: parameters must not be repeated.
        if map.insert(k.into_owned(), v.into_owned()).is_some() {
            return Err(OAuthError::InvalidRequest);
        }
    }
    Ok((parts, map))
}

/// (client, used HTTP Basic) for the request's client credentials.
async fn client_auth<'a>(
    issuer: &TokenIssuer,
    clients: &'a HashMap<String, Arc<ClientConfig>>,
    parts: &http::request::Parts,
    params: &HashMap<String, String>,
) -> Result<(&'a Arc<ClientConfig>, bool), (OAuthError, bool)> {
    let basic = parts
        .headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "));
    let (id, secret, used_basic) = match (basic, params.get("client_secret")) {
        (Some(_), Some(_)) => return Err((OAuthError::InvalidRequest, true)),
        (Some(b), None) => {
            let decoded = STANDARD
                .decode(b.trim())
                .ok()
                .and_then(|d| String::from_utf8(d).ok())
                .ok_or((OAuthError::InvalidClient, true))?;
            let (id, secret) = decoded
                .split_once(':')
                .ok_or((OAuthError::InvalidClient, true))?;
            let dec = |s: &str| {
                url::form_urlencoded::parse(format!("x={s}").as_bytes())
                    .next()
                    .map(|(_, v)| v.into_owned())
                    .unwrap_or_default()
            };
            (dec(id), dec(secret), true)
        }
        (None, Some(secret)) => (
            params
                .get("client_id")
                .cloned()
                .ok_or((OAuthError::InvalidRequest, false))?,
            secret.clone(),
            false,
        ),
        (None, None) => return Err((OAuthError::InvalidClient, false)),
    };
    let client = clients
        .get(&id)
        .ok_or((OAuthError::InvalidClient, used_basic))?;
    issuer
        .authenticate_client(client, &secret)
        .await
        .map_err(|e| (e, used_basic))?;
    Ok((client, used_basic))
}

/// Answers one OAuth endpoint request.
pub(crate) async fn handle(
    issuer: &TokenIssuer,
    clients: &HashMap<String, Arc<ClientConfig>>,
    guard: &BruteForce,
    ip: IpAddr,
    req: Request<Body>,
) -> Result<Response<Body>, GatewayError> {
    let path = req.uri().path().to_string();
    if path == "/.well-known/jwks.json" {
        if req.method() != Method::GET && req.method() != Method::HEAD {
            return Err(GatewayError::MethodNotAllowed {
                allow: vec![Method::GET, Method::HEAD],
            });
        }
        let mut res = json(StatusCode::OK, &issuer.jwks().await);
        res.headers_mut().insert(
            header::CACHE_CONTROL,
            HeaderValue::from_static("public, max-age=300"),
        );
        res.headers_mut().remove(header::PRAGMA);
        return Ok(res);
    }
    if req.method() != Method::POST {
        return Err(GatewayError::MethodNotAllowed {
            allow: vec![Method::POST],
        });
    }
    if let Some(wait) = guard.locked(ip, None) {
        return Err(GatewayError::TooManyRequests { retry_after: wait });
    }
    let (parts, params) = match form(req).await {
        Ok(f) => f,
        Err(e) => return Ok(oauth_error(&e, false)),
    };
    let (client, _) = match client_auth(issuer, clients, &parts, &params).await {
        Ok(c) => c,
        Err((e, basic)) => {
            if e == OAuthError::InvalidClient {
                guard.fail(ip, None, false);
                tracing::warn!(target: "portcullis::security", event = "auth_failure", endpoint = %path, client_ip = %ip, "OAuth client authentication failed");
            }
            return Ok(oauth_error(&e, basic));
        }
    };
    // The client's own network rules, as for its requests: no token (nor revocation or
    // introspection) from a network the client may not call from.
    if !client.ip_rules.admits(&ip) {
        tracing::warn!(target: "portcullis::security", event = "ip_not_allowed", endpoint = %path, client = %client.id, client_ip = %ip, "client called the token endpoint from a network it is not allowed to use");
        return Err(GatewayError::Forbidden);
    }
    match path.as_str() {
        "/oauth/token" => {
            if params.get("grant_type").map(String::as_str) != Some("client_credentials") {
                let e = if params.contains_key("grant_type") {
                    OAuthError::UnsupportedGrantType
                } else {
                    OAuthError::InvalidRequest
                };
                return Ok(oauth_error(&e, false));
            }
            match issuer
                .issue(client, params.get("scope").map(String::as_str))
                .await
            {
                Ok(token) => Ok(json(StatusCode::OK, &token)),
                Err(e) => Ok(oauth_error(&e, false)),
            }
        }
        "/oauth/revoke" => {
            let Some(token) = params.get("token") else {
                return Ok(oauth_error(&OAuthError::InvalidRequest, false));
            };
            issuer.revoke(token, &client.id).await;
            Ok(json(StatusCode::OK, &serde_json::json!({})))
        }
        "/oauth/introspect" => {
            let Some(token) = params.get("token") else {
                return Ok(oauth_error(&OAuthError::InvalidRequest, false));
            };
            Ok(json(StatusCode::OK, &issuer.introspect(token).await))
        }
        _ => Err(GatewayError::Malformed(MalformedKind::InvalidPath)),
    }
}
