//! Certificate pinning: TLS is verified as usual (chain to a trusted root, host name,
//! validity) and, in addition, the server's leaf must match a configured SHA-256 pin, of
//! either the whole certificate or its public key (SubjectPublicKeyInfo, as in HPKP's
//! `pin-sha256`), so a pinned integration survives a certificate renewal that keeps its key.

use rustls::{
    client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    client::WebPkiServerVerifier,
    pki_types::{CertificateDer, ServerName, UnixTime},
    DigitallySignedStruct, SignatureScheme,
};
use sha2::{Digest, Sha256};
use std::sync::Arc;

#[derive(Debug)]
struct PinnedVerifier {
    inner: Arc<WebPkiServerVerifier>,
    pins: Vec<[u8; 32]>,
}

/// The SHA-256 of the certificate and of its SubjectPublicKeyInfo.
pub fn fingerprints(cert: &CertificateDer<'_>) -> ([u8; 32], Option<[u8; 32]>) {
    let whole: [u8; 32] = Sha256::digest(cert.as_ref()).into();
    let spki = webpki::EndEntityCert::try_from(cert)
        .ok()
        .map(|c| Sha256::digest(c.subject_public_key_info().as_ref()).into());
    (whole, spki)
}

impl ServerCertVerifier for PinnedVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let verified = self.inner.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        )?;
        let (whole, spki) = fingerprints(end_entity);
        if self.pins.iter().any(|p| *p == whole || Some(*p) == spki) {
            Ok(verified)
        } else {
            metrics::counter!("portcullis_egress_pin_mismatch_total").increment(1);
            Err(rustls::Error::General("certificate pin mismatch".into()))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// A rustls client configuration (TLS 1.2 and 1.3) trusting the webpki roots (unless
/// `builtin` is false) plus `roots`, that also requires one of `pins`.
pub fn pinned_tls(
    pins: &[[u8; 32]],
    roots: &[CertificateDer<'static>],
    builtin: bool,
) -> Result<rustls::ClientConfig, String> {
    let mut store = rustls::RootCertStore::empty();
    if builtin {
        store.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    }
    for r in roots {
        store.add(r.clone()).map_err(|e| e.to_string())?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let inner = WebPkiServerVerifier::builder_with_provider(Arc::new(store), provider.clone())
        .build()
        .map_err(|e| e.to_string())?;
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(PinnedVerifier {
            inner,
            pins: pins.to_vec(),
        }))
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn the_public_key_pin_survives_a_new_certificate_for_the_same_key() {
        let key = rcgen::KeyPair::generate().unwrap();
        let a = rcgen::CertificateParams::new(vec!["a.test".to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let b = rcgen::CertificateParams::new(vec!["a.test".to_string(), "b.test".to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let (whole_a, spki_a) = fingerprints(a.der());
        let (whole_b, spki_b) = fingerprints(b.der());
        assert_ne!(whole_a, whole_b, "different certificates");
        assert!(spki_a.is_some());
        assert_eq!(spki_a, spki_b, "same key, same public-key pin");
        let spki: [u8; 32] = Sha256::digest(key.public_key_der()).into();
        assert_eq!(spki_a, Some(spki));
    }
}
