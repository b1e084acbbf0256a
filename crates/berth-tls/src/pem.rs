//! Reading certificates and keys: PEM to a rustls `CertifiedKey`, plus the names and expiry
//! the rest of berth needs.

use crate::TlsError;
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::sync::Arc;

pub struct LoadedCertificate {
    pub key: Arc<CertifiedKey>,
    /// DNS names the leaf certificate covers.
    pub names: Vec<String>,
    /// Unix seconds.
    pub not_after: i64,
    pub issuer: String,
    pub leaf: CertificateDer<'static>,
}

/// Parses a PEM chain (leaf first) and its PEM private key, and checks they belong together.
pub fn load(chain_pem: &[u8], key_pem: &[u8], what: &str) -> Result<LoadedCertificate, TlsError> {
    let bad = |message: String| TlsError::Certificate {
        what: what.to_owned(),
        message,
    };
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(chain_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| bad(format!("the certificate is not valid PEM: {e}")))?;
    let leaf = chain
        .first()
        .cloned()
        .ok_or_else(|| bad("there is no certificate in the file".into()))?;
    let key_der = PrivateKeyDer::from_pem_slice(key_pem)
        .map_err(|e| bad(format!("the private key is not valid PEM: {e}")))?;
    let provider = rustls::crypto::aws_lc_rs::default_provider();
    let key = CertifiedKey::from_der(chain, key_der, &provider)
        .map_err(|e| bad(format!("the key does not fit the certificate: {e}")))?;
    let (names, not_after, issuer) = describe(&leaf).map_err(bad)?;
    Ok(LoadedCertificate {
        key: Arc::new(key),
        names,
        not_after,
        issuer,
        leaf,
    })
}

/// The DNS names, expiry and issuer of a certificate.
pub fn describe(leaf: &CertificateDer<'_>) -> Result<(Vec<String>, i64, String), String> {
    let (_, certificate) = x509_parser::parse_x509_certificate(leaf.as_ref())
        .map_err(|e| format!("the certificate cannot be read: {e}"))?;
    let mut names = Vec::new();
    if let Ok(Some(san)) = certificate.subject_alternative_name() {
        for name in &san.value.general_names {
            if let x509_parser::extensions::GeneralName::DNSName(dns) = name {
                names.push(dns.to_ascii_lowercase());
            }
        }
    }
    let not_after = certificate.validity().not_after.timestamp();
    let issuer = certificate.issuer().to_string();
    Ok((names, not_after, issuer))
}

/// When a DER certificate expires (Unix seconds), or `None` when it cannot be read.
pub fn not_after(der: &[u8]) -> Option<i64> {
    describe(&CertificateDer::from(der)).ok().map(|(_, t, _)| t)
}

pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// A self-signed certificate for `names` and its key, both PEM: the crate's tests' fixture.
#[cfg(test)]
#[allow(clippy::unwrap_used)]
pub(crate) fn self_signed(names: &[&str]) -> (String, String) {
    let key = rcgen::KeyPair::generate().unwrap();
    let params =
        rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
            .unwrap();
    let cert = params.self_signed(&key).unwrap();
    (cert.pem(), key.serialize_pem())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_certificate_and_its_key_load_with_names_and_expiry() {
        let (cert, key) = self_signed(&["example.com", "www.example.com"]);
        let loaded = load(cert.as_bytes(), key.as_bytes(), "test").unwrap();
        assert_eq!(loaded.names, ["example.com", "www.example.com"]);
        assert!(loaded.not_after > now());
    }

    #[test]
    fn a_key_from_another_certificate_is_refused() {
        let (cert, _) = self_signed(&["a.com"]);
        let (_, other_key) = self_signed(&["a.com"]);
        let error = load(cert.as_bytes(), other_key.as_bytes(), "a.com")
            .err()
            .unwrap()
            .to_string();
        assert!(
            error.contains("the key does not fit the certificate"),
            "{error}"
        );
    }

    #[test]
    fn garbage_is_named() {
        let error = load(b"not a cert", b"not a key", "/etc/x.pem")
            .err()
            .unwrap()
            .to_string();
        assert!(error.contains("/etc/x.pem"), "{error}");
    }
}
