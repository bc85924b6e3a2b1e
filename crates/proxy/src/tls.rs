//! Server-side TLS for the data-plane listener: rustls with TLS 1.2 and 1.3 only, ALPN for
//! HTTP/2 and HTTP/1.1.

use crate::BuildError;
use portcullis_config::TlsFiles;
use rustls::ServerConfig;
use rustls_pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer};
use std::sync::Arc;

/// Reads the certificate chain and key and builds the rustls server configuration. Used at
/// start, on reload, and by `portcullis check` to prove the files are usable.
pub fn load_server_tls(
    files: &TlsFiles,
    client_ca: Option<&std::path::Path>,
) -> Result<Arc<ServerConfig>, BuildError> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&files.cert)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| BuildError::Tls(format!("certificate file {}: {e}", files.cert.display())))?;
    if certs.is_empty() {
        return Err(BuildError::Tls(format!(
            "certificate file {} holds no certificate",
            files.cert.display()
        )));
    }
    let key = PrivateKeyDer::from_pem_file(&files.key)
        .map_err(|e| BuildError::Tls(format!("key file {}: {e}", files.key.display())))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| BuildError::Tls(e.to_string()))?
        .with_client_cert_verifier(client_verifier(client_ca, &provider)?)
        .with_single_cert(certs, key)
        .map_err(|e| BuildError::Tls(format!("certificate and key do not work together: {e}")))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Client certificates: none asked for without a CA; with one, verified against it but
/// optional at the handshake, so routes without `mtls` keep working for clients without one.
fn client_verifier(
    ca: Option<&std::path::Path>,
    provider: &Arc<rustls::crypto::CryptoProvider>,
) -> Result<Arc<dyn rustls::server::danger::ClientCertVerifier>, BuildError> {
    let Some(ca) = ca else {
        return Ok(rustls::server::WebPkiClientVerifier::no_client_auth());
    };
    let certs = CertificateDer::pem_file_iter(ca)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| BuildError::Tls(format!("client CA file {}: {e}", ca.display())))?;
    let mut roots = rustls::RootCertStore::empty();
    let (added, _) = roots.add_parsable_certificates(certs);
    if added == 0 {
        return Err(BuildError::Tls(format!(
            "client CA file {} holds no usable certificate",
            ca.display()
        )));
    }
    rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .allow_unauthenticated()
        .build()
        .map_err(|e| BuildError::Tls(format!("client CA: {e}")))
}

/// The verified client certificate of a TLS connection, if one was presented.
pub(crate) fn client_cert(
    conn: &rustls::ServerConnection,
) -> Option<Arc<portcullis_core::ClientCert>> {
    use sha2::Digest;
    let leaf = conn.peer_certificates()?.first()?;
    let fingerprint = sha2::Sha256::digest(leaf.as_ref())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let dns_names = webpki::EndEntityCert::try_from(leaf)
        .map(|c| {
            c.valid_dns_names()
                .map(|n| n.to_ascii_lowercase())
                .collect()
        })
        .unwrap_or_default();
    Some(Arc::new(portcullis_core::ClientCert {
        fingerprint,
        dns_names,
    }))
}
