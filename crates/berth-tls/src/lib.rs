//! berth's certificates: the store the TLS listener asks for a certificate by server name,
//! certificates from files, and certificates from an ACME directory, obtained and renewed in
//! the background. Keys are written only to the agent's data directory, mode 0600.

mod acme;
mod files;
mod pem;
mod pinned;
mod store;

pub use acme::{Acme, AcmeConfig, Challenge, LETS_ENCRYPT, LETS_ENCRYPT_STAGING};
pub use files::{CertificateFiles, FileCertificates};
pub use pem::{LoadedCertificate, load as load_pem, not_after as certificate_not_after};
pub use pinned::{api_server_config, fingerprint, pinned_client_config};
pub use store::{CertSource, CertState, CertStatus, CertStore, server_config};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{what}: {message}")]
    Certificate { what: String, message: String },
    #[error("cannot store certificate data in {path}: {message}")]
    Storage { path: String, message: String },
    #[error("ACME ({directory}): cannot {action}: {message}")]
    Acme {
        directory: String,
        action: String,
        message: String,
    },
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DomainLabels {
    pub domain: String,
}

/// `berth_certificate_expiry_timestamp_seconds{domain}`, refreshed from the store.
#[derive(Default, Clone)]
pub struct CertificateMetrics {
    expiry: Family<DomainLabels, Gauge>,
}

impl CertificateMetrics {
    pub fn register(&self, registry: &mut prometheus_client::registry::Registry) {
        registry.register(
            "berth_certificate_expiry_timestamp_seconds",
            "When each domain's certificate expires (Unix time)",
            self.expiry.clone(),
        );
    }

    pub fn update(&self, store: &Arc<CertStore>) {
        self.expiry.clear();
        for status in store.statuses() {
            if let Some(not_after) = status.not_after {
                self.expiry
                    .get_or_create(&DomainLabels {
                        domain: status.domain,
                    })
                    .set(not_after);
            }
        }
    }
}
