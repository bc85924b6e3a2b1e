//! The secrets model: types, values, options and the metadata the vault shows.

use crate::VaultError;
use secrecy::{ExposeSecret, SecretBox};
use serde::Serialize;
use std::{fmt, time::Duration};

/// What kind of secret a value is; structured types are JSON objects with required fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SecretType {
    /// Any bytes.
    Opaque,
    /// A bearer token.
    BearerToken,
    /// `{"username": ..., "password": ...}`.
    BasicCredentials,
    /// `{"client_id": ..., "client_secret": ...}`.
    Oauth2Client,
    /// A webhook signing secret shared with a sender (`whsec_...` for Standard Webhooks).
    WebhookSigning,
    /// An HMAC key.
    HmacKey,
    /// `{"private_key": base64 seed, "public_key": base64}`.
    Ed25519KeyPair,
}

impl SecretType {
    /// All types, for help text.
    pub const ALL: [SecretType; 7] = [
        Self::Opaque,
        Self::BearerToken,
        Self::BasicCredentials,
        Self::Oauth2Client,
        Self::WebhookSigning,
        Self::HmacKey,
        Self::Ed25519KeyPair,
    ];

    /// The stored tag.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Opaque => "opaque",
            Self::BearerToken => "bearer_token",
            Self::BasicCredentials => "basic_credentials",
            Self::Oauth2Client => "oauth2_client",
            Self::WebhookSigning => "webhook_signing",
            Self::HmacKey => "hmac_key",
            Self::Ed25519KeyPair => "ed25519_key_pair",
        }
    }

    /// Parses a stored or typed tag.
    pub fn parse(s: &str) -> Result<Self, VaultError> {
        Self::ALL
            .into_iter()
            .find(|t| t.as_str() == s)
            .ok_or_else(|| {
                VaultError::Invalid(format!(
                    "unknown secret type {s:?}; expected one of {}",
                    Self::ALL.map(|t| t.as_str()).join(", ")
                ))
            })
    }

    /// The fields every value of this type has (a JSON object's): empty for the types whose
    /// values are any bytes (`opaque`, tokens, keys), which may still be JSON objects.
    pub fn fields(self) -> &'static [&'static str] {
        self.required_fields()
    }

    fn required_fields(self) -> &'static [&'static str] {
        match self {
            Self::BasicCredentials => &["username", "password"],
            Self::Oauth2Client => &["client_id", "client_secret"],
            Self::Ed25519KeyPair => &["private_key", "public_key"],
            _ => &[],
        }
    }

    /// Checks that `value` fits this type. Messages name fields, never values.
    pub fn validate(self, value: &[u8]) -> Result<(), VaultError> {
        if value.is_empty() {
            return Err(VaultError::InvalidValue("the value is empty".into()));
        }
        let fields = self.required_fields();
        if fields.is_empty() {
            return Ok(());
        }
        let v: serde_json::Value = serde_json::from_slice(value).map_err(|_| {
            VaultError::InvalidValue(format!(
                "a {} secret is a JSON object with {}",
                self.as_str(),
                fields.join(", ")
            ))
        })?;
        for f in fields {
            if v.get(f).and_then(|x| x.as_str()).is_none_or(str::is_empty) {
                return Err(VaultError::InvalidValue(format!(
                    "a {} secret needs a non-empty string field {f:?}",
                    self.as_str()
                )));
            }
        }
        Ok(())
    }
}

/// A decrypted secret value, zeroed when the last reference goes. `Debug` never shows it.
pub struct SecretValue {
    bytes: SecretBox<[u8]>,
    /// The version it came from.
    pub version: i64,
}

impl SecretValue {
    pub(crate) fn new(bytes: Vec<u8>, version: i64) -> Self {
        SecretValue {
            bytes: SecretBox::new(bytes.into_boxed_slice()),
            version,
        }
    }

    /// The raw value. Callers must not log or persist it.
    pub fn expose(&self) -> &[u8] {
        self.bytes.expose_secret()
    }

    /// One string field of a structured (JSON object) secret, for `{secret:NAME#field}`.
    pub fn field(&self, field: &str) -> Result<SecretValue, VaultError> {
        let v: serde_json::Value = serde_json::from_slice(self.expose())
            .map_err(|_| VaultError::InvalidValue("the secret is not a JSON object".into()))?;
        let s = v.get(field).and_then(|x| x.as_str()).ok_or_else(|| {
            VaultError::InvalidValue(format!("the secret has no string field {field:?}"))
        })?;
        Ok(SecretValue::new(s.as_bytes().to_vec(), self.version))
    }
}

impl fmt::Debug for SecretValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretValue(version {}, [REDACTED])", self.version)
    }
}

/// Options for `put` and `rotate`.
#[derive(Debug, Clone, Default)]
pub struct PutOptions {
    /// The type; kept from the existing secret when `None`, `opaque` for a new one.
    pub secret_type: Option<SecretType>,
    /// Expiry, from now.
    pub expires_in: Option<Duration>,
    /// Rotation policy.
    pub max_age: Option<Duration>,
    /// Consumers allowed (`route:ID`, ...). `None` keeps the existing list.
    pub consumers: Option<Vec<String>>,
    /// Versions to keep; default 5.
    pub keep_versions: Option<i64>,
    /// Keep the previous version valid this long after the new one (rotation overlap).
    pub grace: Option<Duration>,
    /// Who is doing this, for the event.
    pub actor: String,
}

/// A version as `show` presents it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct VersionInfo {
    /// Version number.
    pub version: i64,
    /// `active`, `disabled`, `destroyed`, or `expired-grace` for a superseded version whose
    /// grace period ended.
    pub state: String,
    /// Unix seconds.
    pub created_at: i64,
    /// End of the grace period, for a superseded version.
    pub valid_until: Option<i64>,
    /// First use by the gateway.
    pub first_used_at: Option<i64>,
}

/// A secret as `list` and `show` present it: metadata only, never the value.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct SecretInfo {
    /// Name.
    pub name: String,
    /// Type.
    pub secret_type: String,
    /// Unix seconds.
    pub created_at: i64,
    /// Unix seconds.
    pub updated_at: i64,
    /// Unix seconds.
    pub expires_at: Option<i64>,
    /// Seconds.
    pub max_age_secs: Option<i64>,
    /// Allowed consumers.
    pub consumers: Vec<String>,
    /// The newest usable version.
    pub current_version: Option<i64>,
    /// True when the newest version is older than `max_age`.
    pub rotation_overdue: bool,
    /// Versions, newest first.
    pub versions: Vec<VersionInfo>,
}
