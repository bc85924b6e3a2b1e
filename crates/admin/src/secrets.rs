//! `/admin/secrets` and the API-key endpoints: the vault and keys over the admin API,
//! mirroring `portcullis secret` and `portcullis client key`. Every call
//! needs the admin token (`Authorization: Bearer <token>`, the token is in
//! `<data_dir>/admin.token`, mode 0600). No response ever carries a secret value, except the
//! one-time output of `generate` for types that must be shared with a sender.

use crate::AdminState;
use axum::{
    extract::{Path, Query, State},
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
    routing::{get, post},
    Json, Router,
};
use portcullis_core::{Problem, RequestId, PROBLEM_CONTENT_TYPE, REQUEST_ID_HEADER};
use portcullis_vault::{PutOptions, SecretType, Vault, VaultError};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use std::sync::Arc;
use subtle::ConstantTimeEq;

pub(crate) fn routes() -> Router<AdminState> {
    Router::new()
        .route("/admin/secrets", get(list))
        .route("/admin/secrets/{name}", get(show).put(put).delete(destroy))
        .route("/admin/secrets/{name}/rotate", post(rotate))
        .route("/admin/secrets/{name}/generate", post(generate))
        .route(
            "/admin/secrets/{name}/versions/{version}/revoke",
            post(revoke),
        )
        .route(
            "/admin/clients/{client}/keys",
            get(list_keys).post(issue_key),
        )
        .route("/admin/keys/{key_id}/revoke", post(revoke_key))
}

pub(crate) fn problem(
    status: StatusCode,
    slug: &str,
    title: &str,
    detail: Option<String>,
) -> Response {
    let id = RequestId::generate();
    let p = Problem {
        type_uri: format!("urn:portcullis:problem:{slug}"),
        title,
        status: status.as_u16(),
        detail,
        request_id: id.as_str(),
        errors: Vec::new(),
    };
    let mut res = (
        status,
        [(axum::http::header::CONTENT_TYPE, PROBLEM_CONTENT_TYPE)],
        Json(p),
    )
        .into_response();
    // As on the data plane: the id to quote is in the header as well as the body.
    res.headers_mut()
        .insert(REQUEST_ID_HEADER, id.header_value());
    res
}

/// Why an admin vault call was refused; turned into problem+json in one place.
pub(crate) enum AdminError {
    Vault(VaultError),
    BadRequest(String),
    Unauthorized,
    NoVault,
}

impl From<VaultError> for AdminError {
    fn from(e: VaultError) -> Self {
        AdminError::Vault(e)
    }
}

impl IntoResponse for AdminError {
    fn into_response(self) -> Response {
        match self {
            AdminError::Vault(VaultError::NotFound(_)) => problem(
                StatusCode::NOT_FOUND,
                "secret-not-found",
                "No such secret or version",
                None,
            ),
            AdminError::Vault(VaultError::Invalid(m) | VaultError::InvalidValue(m))
            | AdminError::BadRequest(m) => problem(
                StatusCode::BAD_REQUEST,
                "invalid-secret-request",
                "Invalid request",
                Some(m),
            ),
            AdminError::Unauthorized => {
                let mut res = problem(
                    StatusCode::UNAUTHORIZED,
                    "admin-unauthorized",
                    "Admin token required",
                    None,
                );
                res.headers_mut().insert(
                    axum::http::header::WWW_AUTHENTICATE,
                    axum::http::HeaderValue::from_static("Bearer realm=\"portcullis-admin\""),
                );
                res
            }
            AdminError::NoVault => problem(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "Vault not available",
                None,
            ),
            // This process's master key is not (or no longer) the vault's: say so to the
            // operator, who can act on it; the message carries no key material.
            AdminError::Vault(e @ (VaultError::RetiredKey | VaultError::WrongKey)) => {
                tracing::error!(error = %e, "admin vault operation refused");
                problem(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "vault-key-unusable",
                    "This instance's master key cannot write to the vault",
                    Some(e.to_string()),
                )
            }
            AdminError::Vault(other) => {
                tracing::error!(error = %other, "admin vault operation failed");
                problem(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal-error",
                    "Internal error",
                    None,
                )
            }
        }
    }
}

/// Checks the bearer token in constant time and returns the vault.
pub(crate) fn authorize<'a>(
    s: &'a AdminState,
    headers: &HeaderMap,
) -> Result<&'a Arc<Vault>, AdminError> {
    let given = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    if s.token.is_empty() || !bool::from(given.as_bytes().ct_eq(s.token.as_bytes())) {
        return Err(AdminError::Unauthorized);
    }
    s.gateway.vault().ok_or(AdminError::NoVault)
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct WriteBody {
    value: Option<SecretString>,
    #[serde(rename = "type")]
    secret_type: Option<String>,
    consumers: Option<Vec<String>>,
    expires: Option<String>,
    max_age: Option<String>,
    keep: Option<i64>,
    grace: Option<String>,
}

fn duration(s: &Option<String>) -> Result<Option<std::time::Duration>, AdminError> {
    s.as_deref()
        .map(|d| {
            humantime::parse_duration(d)
                .map_err(|e| AdminError::BadRequest(format!("duration {d:?}: {e}")))
        })
        .transpose()
}

fn options(b: &WriteBody) -> Result<PutOptions, AdminError> {
    Ok(PutOptions {
        secret_type: b
            .secret_type
            .as_deref()
            .map(SecretType::parse)
            .transpose()?,
        expires_in: duration(&b.expires)?,
        max_age: duration(&b.max_age)?,
        consumers: b.consumers.clone(),
        keep_versions: b.keep,
        grace: duration(&b.grace)?,
        actor: "admin".into(),
    })
}

pub(crate) type Answer = Result<Response, AdminError>;

async fn list(State(s): State<AdminState>, headers: HeaderMap) -> Answer {
    Ok(Json(authorize(&s, &headers)?.list().await?).into_response())
}

async fn show(State(s): State<AdminState>, headers: HeaderMap, Path(name): Path<String>) -> Answer {
    Ok(Json(authorize(&s, &headers)?.show(&name).await?).into_response())
}

async fn write(
    s: AdminState,
    headers: HeaderMap,
    name: String,
    body: WriteBody,
    rotate: bool,
) -> Answer {
    let v = authorize(&s, &headers)?;
    let opts = options(&body)?;
    let value = body
        .value
        .as_ref()
        .ok_or_else(|| AdminError::BadRequest("\"value\" is required".into()))?;
    let bytes = value.expose_secret().as_bytes();
    let version = if rotate {
        v.rotate(&name, bytes, &opts).await?
    } else {
        v.put(&name, bytes, &opts).await?
    };
    Ok((
        StatusCode::CREATED,
        Json(serde_json::json!({ "name": name, "version": version })),
    )
        .into_response())
}

async fn put(
    State(s): State<AdminState>,
    headers: HeaderMap,
    Path(name): Path<String>,
    Json(body): Json<WriteBody>,
) -> Answer {
    write(s, headers, name, body, false).await
}

async fn rotate(
    State(s): State<AdminState>,
    headers: HeaderMap,
    Path(name): Path<String>,
    Json(body): Json<WriteBody>,
) -> Answer {
    write(s, headers, name, body, true).await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GenerateBody {
    #[serde(rename = "type")]
    kind: String,
    consumers: Option<Vec<String>>,
    expires: Option<String>,
    max_age: Option<String>,
}

async fn generate(
    State(s): State<AdminState>,
    headers: HeaderMap,
    Path(name): Path<String>,
    Json(body): Json<GenerateBody>,
) -> Answer {
    let v = authorize(&s, &headers)?;
    let write = WriteBody {
        consumers: body.consumers,
        expires: body.expires,
        max_age: body.max_age,
        ..Default::default()
    };
    let (version, share) = v.generate(&name, &body.kind, &options(&write)?).await?;
    let mut res = (
        StatusCode::CREATED,
        Json(serde_json::json!({ "name": name, "version": version, "share_once": share })),
    )
        .into_response();
    res.headers_mut().insert(
        axum::http::header::CACHE_CONTROL,
        axum::http::HeaderValue::from_static("no-store"),
    );
    Ok(res)
}

async fn revoke(
    State(s): State<AdminState>,
    headers: HeaderMap,
    Path((name, version)): Path<(String, i64)>,
) -> Answer {
    authorize(&s, &headers)?
        .revoke(&name, version, "admin")
        .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[derive(Deserialize)]
struct DestroyQuery {
    version: Option<i64>,
}

async fn destroy(
    State(s): State<AdminState>,
    headers: HeaderMap,
    Path(name): Path<String>,
    Query(q): Query<DestroyQuery>,
) -> Answer {
    authorize(&s, &headers)?
        .destroy(&name, q.version, "admin")
        .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

fn keys_of(s: &AdminState) -> Result<&Arc<portcullis_identity::ApiKeys>, AdminError> {
    s.gateway.api_keys().ok_or(AdminError::NoVault)
}

fn key_error(e: portcullis_identity::KeyError) -> AdminError {
    match e {
        portcullis_identity::KeyError::Request(m) => AdminError::BadRequest(m),
        portcullis_identity::KeyError::Vault(v) => AdminError::Vault(v),
        other => AdminError::Vault(VaultError::Invalid(other.to_string())),
    }
}

async fn list_keys(
    State(s): State<AdminState>,
    headers: HeaderMap,
    Path(client): Path<String>,
) -> Answer {
    authorize(&s, &headers)?;
    Ok(Json(keys_of(&s)?.list(Some(&client)).await.map_err(key_error)?).into_response())
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct IssueBody {
    expires: Option<String>,
}

async fn issue_key(
    State(s): State<AdminState>,
    headers: HeaderMap,
    Path(client): Path<String>,
    body: Option<Json<IssueBody>>,
) -> Answer {
    authorize(&s, &headers)?;
    if !s.gateway.config().clients.iter().any(|c| c.id == client) {
        return Err(AdminError::BadRequest(format!(
            "client {client:?} is not declared"
        )));
    }
    let expires = duration(&body.map(|b| b.0).unwrap_or_default().expires)?;
    let issued = keys_of(&s)?
        .issue(&client, expires)
        .await
        .map_err(key_error)?;
    let mut res = (
        StatusCode::CREATED,
        Json(serde_json::json!({ "key_id": issued.key_id, "key_once": issued.key.as_str() })),
    )
        .into_response();
    res.headers_mut().insert(
        axum::http::header::CACHE_CONTROL,
        axum::http::HeaderValue::from_static("no-store"),
    );
    Ok(res)
}

async fn revoke_key(
    State(s): State<AdminState>,
    headers: HeaderMap,
    Path(key_id): Path<String>,
) -> Answer {
    authorize(&s, &headers)?;
    keys_of(&s)?.revoke(&key_id).await.map_err(key_error)?;
    Ok(StatusCode::NO_CONTENT.into_response())
}
