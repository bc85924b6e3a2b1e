//! Validation of a PostgreSQL `store.url`. The URL may hold a password, so no message here
//! ever repeats it.

use crate::validate::Checker;
use std::ops::Range;

const SSL_MODES: [&str; 6] = [
    "disable",
    "allow",
    "prefer",
    "require",
    "verify-ca",
    "verify-full",
];

/// Checks a `postgres://` / `postgresql://` URL; false (with an error) when it is unusable.
pub(crate) fn postgres_url(c: &mut Checker, u: &str, span: Range<usize>) -> bool {
    let Ok(parsed) = url::Url::parse(u) else {
        c.error(
            Some(span),
            "store.url is not a valid PostgreSQL URL; expected postgres://USER@HOST:PORT/DATABASE",
        );
        return false;
    };
    let mut ssl_mode = None;
    let mut socket = false;
    let mut password_param = false;
    let mut other_host = None;
    for (k, v) in parsed.query_pairs() {
        match &*k {
            "sslmode" | "ssl-mode" => ssl_mode = Some(v.into_owned()),
            "host" if v.starts_with('/') => socket = true,
            "host" | "hostaddr" => other_host = Some(v.into_owned()),
            "password" => password_param = true,
            "sslrootcert"
            | "ssl-root-cert"
            | "ssl-ca"
            | "sslcert"
            | "ssl-cert"
            | "sslkey"
            | "ssl-key"
            | "statement-cache-capacity"
            | "port"
            | "dbname"
            | "user"
            | "application_name" => {}
            // The driver logs a parameter it does not know with its value, which may be a
            // secret (libpq's `sslpassword`): refused here, named without its value.
            other => {
                c.error(
                    Some(span),
                    format!("store.url: unknown connection parameter {other:?}; known: sslmode, sslrootcert, sslcert, sslkey, host, hostaddr, port, dbname, user, password, application_name, statement-cache-capacity"),
                );
                return false;
            }
        }
    }
    if let Some(mode) = &ssl_mode {
        if !SSL_MODES.contains(&mode.as_str()) {
            c.error(
                Some(span),
                format!("store.url: sslmode must be one of {}", SSL_MODES.join(", ")),
            );
            return false;
        }
    }
    if parsed.password().is_some() || password_param {
        c.warn(
            Some(span.clone()),
            "store.url holds a database password in the config file; keep the file readable by \
             the gateway's user only, or leave it out and set PGPASSWORD",
        );
    }
    // `host=` / `hostaddr=` in the query override the URL's host, as the driver reads them.
    let host = other_host.unwrap_or_else(|| parsed.host_str().unwrap_or("").to_string());
    let local = socket || host.is_empty() || crate::validate_limits::is_loopback(&host);
    let verified = matches!(ssl_mode.as_deref(), Some("verify-full"));
    if !local && !verified {
        c.warn(
            Some(span),
            "store.url reaches another machine without sslmode=verify-full: the database \
             connection (vault ciphertext, key hashes, any password) may travel unencrypted or \
             to an unverified server",
        );
    }
    true
}
