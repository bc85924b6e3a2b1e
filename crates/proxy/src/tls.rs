//! Server-side TLS for the data-plane listener: rustls with TLS 1.2 and 1.3 only, ALPN for
//! HTTP/2 and HTTP/1.1.

use crate::BuildError;
use portcullis_config::TlsFiles;
use rustls::ServerConfig;
use rustls_pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer};
use std::sync::Arc;

/// Reads the certificate chain and key and builds the rustls server configuration. Used at
/// start, on reload, and by `portcullis check` to prove the files are usable.
pub fn load_server_tls(files: &TlsFiles) -> Result<Arc<ServerConfig>, BuildError> {
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
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| BuildError::Tls(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| BuildError::Tls(format!("certificate and key do not work together: {e}")))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}
