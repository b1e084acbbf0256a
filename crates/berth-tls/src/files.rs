//! Certificates the operator supplies as files: loaded for their domains and reloaded when
//! the files change (renewed by another tool), without a restart.

use crate::pem;
use crate::store::{CertSource, CertState, CertStatus, CertStore};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct CertificateFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// A loaded pair of files: when they were last modified and the domains they serve.
#[derive(Debug, Clone, PartialEq)]
struct Loaded {
    cert_modified: Option<SystemTime>,
    key_modified: Option<SystemTime>,
    domains: Vec<String>,
}

#[derive(Default)]
pub struct FileCertificates {
    loaded: Mutex<BTreeMap<CertificateFiles, Loaded>>,
}

fn modified(path: &PathBuf) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

impl FileCertificates {
    /// Makes the store present exactly `wanted` (files -> the domains they serve), loading
    /// what is new or changed. A file that cannot be loaded leaves any earlier version in
    /// place and shows as failing.
    pub fn sync(&self, store: &Arc<CertStore>, wanted: &BTreeMap<CertificateFiles, Vec<String>>) {
        let mut loaded = self.loaded.lock().unwrap_or_else(|p| p.into_inner());
        loaded.retain(|files, previous| {
            let keep = wanted.contains_key(files);
            if !keep {
                store.remove(&previous.domains);
            }
            keep
        });
        for (files, domains) in wanted {
            let current = Loaded {
                cert_modified: modified(&files.cert),
                key_modified: modified(&files.key),
                domains: domains.clone(),
            };
            if loaded.get(files) == Some(&current) {
                continue;
            }
            let read = std::fs::read(&files.cert)
                .map_err(|e| format!("cannot read {}: {e}", files.cert.display()))
                .and_then(|cert| {
                    std::fs::read(&files.key)
                        .map(|key| (cert, key))
                        .map_err(|e| format!("cannot read {}: {e}", files.key.display()))
                })
                .and_then(|(cert, key)| {
                    pem::load(&cert, &key, &files.cert.display().to_string())
                        .map_err(|e| e.to_string())
                });
            match read {
                Ok(certificate) => {
                    let uncovered: Vec<&String> = domains
                        .iter()
                        .filter(|d| !covers(&certificate.names, d))
                        .collect();
                    let warning = (!uncovered.is_empty()).then(|| {
                        format!(
                            "{} does not cover {}",
                            files.cert.display(),
                            uncovered
                                .iter()
                                .map(|d| d.as_str())
                                .collect::<Vec<_>>()
                                .join(", ")
                        )
                    });
                    store.install(domains, certificate.key.clone());
                    for domain in domains {
                        let state = if certificate.not_after <= pem::now() {
                            CertState::Expired
                        } else {
                            CertState::Valid
                        };
                        store.set_status(CertStatus {
                            domain: domain.clone(),
                            source: CertSource::Files,
                            state,
                            not_after: Some(certificate.not_after),
                            issuer: Some(certificate.issuer.clone()),
                            last_error: warning.clone(),
                            next_attempt: None,
                        });
                    }
                    loaded.insert(files.clone(), current);
                }
                Err(message) => {
                    tracing::warn!(cert = %files.cert.display(), %message, "a certificate file could not be loaded");
                    for domain in domains {
                        let previous = store.status(domain);
                        store.set_status(CertStatus {
                            domain: domain.clone(),
                            source: CertSource::Files,
                            state: CertState::Failing,
                            not_after: previous.as_ref().and_then(|p| p.not_after),
                            issuer: previous.and_then(|p| p.issuer),
                            last_error: Some(message.clone()),
                            next_attempt: None,
                        });
                    }
                }
            }
        }
    }
}

fn covers(names: &[String], domain: &str) -> bool {
    names.iter().any(|name| {
        name == domain
            || name.strip_prefix("*.").is_some_and(|suffix| {
                domain
                    .split_once('.')
                    .is_some_and(|(_, parent)| parent == suffix)
            })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_cert(dir: &std::path::Path, names: &[&str]) -> CertificateFiles {
        let (cert, key) = crate::pem::self_signed(names);
        let files = CertificateFiles {
            cert: dir.join("cert.pem"),
            key: dir.join("key.pem"),
        };
        std::fs::write(&files.cert, cert).unwrap();
        std::fs::write(&files.key, key).unwrap();
        files
    }

    #[test]
    fn files_load_and_reload_when_they_change() {
        let dir = tempfile::tempdir().unwrap();
        let store = CertStore::new();
        let certificates = FileCertificates::default();
        let files = write_cert(dir.path(), &["*.example.com"]);
        let wanted = BTreeMap::from([(files.clone(), vec!["*.example.com".to_owned()])]);
        certificates.sync(&store, &wanted);
        assert!(
            store.has_certificate("www.example.com"),
            "a wildcard certificate serves one level of names"
        );
        assert!(!store.has_certificate("example.com"));
        let first = store.certificate("www.example.com").unwrap();

        std::thread::sleep(std::time::Duration::from_millis(20));
        write_cert(dir.path(), &["*.example.com"]);
        certificates.sync(&store, &wanted);
        assert!(
            !Arc::ptr_eq(&first, &store.certificate("www.example.com").unwrap()),
            "the new file was loaded"
        );

        certificates.sync(&store, &BTreeMap::new());
        assert!(
            !store.has_certificate("www.example.com"),
            "certificates no longer wanted are removed"
        );
    }

    #[test]
    fn an_unreadable_file_fails_visibly() {
        let store = CertStore::new();
        let files = CertificateFiles {
            cert: "/nonexistent/cert.pem".into(),
            key: "/nonexistent/key.pem".into(),
        };
        FileCertificates::default()
            .sync(&store, &BTreeMap::from([(files, vec!["a.com".to_owned()])]));
        let status = store.status("a.com").unwrap();
        assert_eq!(status.state, CertState::Failing);
        assert!(
            status
                .last_error
                .unwrap()
                .contains("cannot read /nonexistent/cert.pem")
        );
    }
}
