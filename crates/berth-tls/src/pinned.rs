//! TLS for the agent's own API: a self-signed certificate the agent makes once and keeps, and
//! a client configuration that trusts exactly that certificate, by the SHA-256 fingerprint
//! the agent prints (no certificate authority is involved, so none can be fooled).

use crate::TlsError;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use std::path::Path;
use std::sync::Arc;

/// `sha256:` and the hex SHA-256 of a certificate's DER bytes.
pub fn fingerprint(certificate: &CertificateDer<'_>) -> String {
    use sha2::Digest;
    format!(
        "sha256:{}",
        hex::encode(sha2::Sha256::digest(certificate.as_ref()))
    )
}

fn normalize(fingerprint: &str) -> String {
    let text = fingerprint.trim().to_ascii_lowercase();
    let hex = text.strip_prefix("sha256:").unwrap_or(&text);
    hex.chars().filter(|c| *c != ':').collect()
}

/// The API's server configuration from `dir` (`cert.pem`, `key.pem`), made there on first use:
/// a self-signed certificate for `names` (10 years; it is trusted by fingerprint, not by
/// name or date). Returns the configuration and the certificate's fingerprint.
pub fn api_server_config(
    dir: &Path,
    names: &[String],
) -> Result<(Arc<rustls::ServerConfig>, String), TlsError> {
    let storage = |e: &dyn std::fmt::Display| TlsError::Storage {
        path: dir.display().to_string(),
        message: e.to_string(),
    };
    let (cert_path, key_path) = (dir.join("cert.pem"), dir.join("key.pem"));
    let loaded = match (
        std::fs::read(&cert_path),
        berth_fs::read_private(&key_path, 64 << 10),
    ) {
        (Ok(cert), Ok(key)) => crate::pem::load(&cert, &key, "the API's certificate")?,
        _ => {
            let bad = |e: rcgen::Error| TlsError::Certificate {
                what: "the API's certificate".into(),
                message: e.to_string(),
            };
            let mut params = rcgen::CertificateParams::new(names.to_vec()).map_err(bad)?;
            params.distinguished_name = rcgen::DistinguishedName::new();
            params
                .distinguished_name
                .push(rcgen::DnType::CommonName, "berth agent API");
            params.not_before = rcgen::date_time_ymd(2025, 1, 1);
            params.not_after = rcgen::date_time_ymd(2099, 1, 1);
            let key = rcgen::KeyPair::generate().map_err(bad)?;
            let certificate = params.self_signed(&key).map_err(bad)?;
            std::fs::create_dir_all(dir).map_err(|e| storage(&e))?;
            berth_fs::write_replacing(&key_path, key.serialize_pem().as_bytes(), 0o600)
                .map_err(|e| storage(&e))?;
            berth_fs::write_replacing(&cert_path, certificate.pem().as_bytes(), 0o644)
                .map_err(|e| storage(&e))?;
            crate::pem::load(
                certificate.pem().as_bytes(),
                key.serialize_pem().as_bytes(),
                "the API's certificate",
            )?
        }
    };
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TlsError::Certificate {
            what: "the API's TLS configuration".into(),
            message: e.to_string(),
        })?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(Always(Arc::clone(&loaded.key))));
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok((Arc::new(config), fingerprint(&loaded.leaf)))
}

/// The one certificate, whatever name the client asks for.
#[derive(Debug)]
struct Always(Arc<rustls::sign::CertifiedKey>);

impl rustls::server::ResolvesServerCert for Always {
    fn resolve(
        &self,
        _hello: rustls::server::ClientHello<'_>,
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(Arc::clone(&self.0))
    }
}

/// A client configuration that accepts exactly the certificate with `fingerprint`
/// (`sha256:HEX`, colons allowed), whatever name or dates it carries.
pub fn pinned_client_config(fingerprint: &str) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let wanted = normalize(fingerprint);
    if wanted.len() != 64 || !wanted.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(TlsError::Certificate {
            what: "the agent's fingerprint".into(),
            message: format!(
                "`{fingerprint}` is not a SHA-256 fingerprint (sha256: and 64 hex digits, as the agent prints it)"
            ),
        });
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let verifier = Arc::new(Pinned {
        wanted,
        provider: Arc::clone(&provider),
    });
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TlsError::Certificate {
            what: "the API client's TLS configuration".into(),
            message: e.to_string(),
        })?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

#[derive(Debug)]
struct Pinned {
    wanted: String,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if normalize(&fingerprint(end_entity)) == self.wanted {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General(format!(
                "the agent's certificate is {}, not the pinned sha256:{}",
                fingerprint(end_entity),
                self.wanted
            )))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_are_compared_whatever_their_spelling() {
        assert_eq!(normalize("SHA256:AB:cd"), "abcd");
        assert!(pinned_client_config("sha256:1234").is_err());
        assert!(pinned_client_config(&format!("sha256:{}", "a".repeat(64))).is_ok());
    }

    #[test]
    fn the_certificate_is_made_once_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let names = vec!["berth-agent".to_owned()];
        let (_, first) = api_server_config(dir.path(), &names).unwrap();
        let (_, again) = api_server_config(dir.path(), &names).unwrap();
        assert_eq!(first, again);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join("key.pem"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
