//! The agent's side of the edge: which domains get ACME certificates and which use files
//! (recomputed whenever an app's routes change), and what the proxy asks of TLS.

use berth_api::CertificateInfo;
use berth_manifest::Manifest;
use berth_manifest::Tls;
use berth_proxy::Upstream;
use berth_tls::{CertStore, CertificateFiles, CertificateMetrics, FileCertificates};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use tokio::sync::{mpsc, watch};

/// What the proxy routes for an app: the live manifest and its web containers' upstreams.
#[derive(Clone)]
pub struct LiveApp {
    pub manifest: Manifest,
    pub release: i64,
    /// Current web containers per service: (container id, upstream).
    pub upstreams: BTreeMap<String, Vec<(String, Arc<Upstream>)>>,
}

pub struct Edge {
    pub store: Arc<CertStore>,
    files: FileCertificates,
    wanted_files: Mutex<BTreeMap<CertificateFiles, Vec<String>>>,
    /// Domains the ACME worker keeps certified; `None` when ACME is off.
    acme_domains: Option<watch::Sender<BTreeSet<String>>>,
    renew: Option<mpsc::Sender<String>>,
    /// Whether the agent serves HTTPS at all.
    pub https: bool,
    pub metrics: CertificateMetrics,
    /// Domains the agent serves itself (the console's), certified like an app's.
    own_domains: Mutex<BTreeSet<String>>,
    /// The ACME domains of the apps' routes, as last computed.
    app_domains: Mutex<BTreeSet<String>>,
}

impl Edge {
    pub fn new(
        store: Arc<CertStore>,
        https: bool,
        acme: Option<(watch::Sender<BTreeSet<String>>, mpsc::Sender<String>)>,
    ) -> Self {
        let (acme_domains, renew) = match acme {
            Some((domains, renew)) => (Some(domains), Some(renew)),
            None => (None, None),
        };
        Self {
            store,
            files: FileCertificates::default(),
            wanted_files: Mutex::new(BTreeMap::new()),
            acme_domains,
            renew,
            https,
            metrics: CertificateMetrics::default(),
            own_domains: Mutex::new(BTreeSet::new()),
            app_domains: Mutex::new(BTreeSet::new()),
        }
    }

    /// Domains the agent serves itself, which get ACME certificates like the apps' routes.
    pub fn set_own_domains(&self, domains: BTreeSet<String>) {
        *self.own_domains.lock().unwrap_or_else(|p| p.into_inner()) = domains;
        let apps = self
            .app_domains
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        self.want_acme(apps);
    }

    fn want_acme(&self, apps: BTreeSet<String>) {
        let mut acme = apps.clone();
        acme.extend(
            self.own_domains
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .iter()
                .cloned(),
        );
        *self.app_domains.lock().unwrap_or_else(|p| p.into_inner()) = apps;
        if let Some(sender) = &self.acme_domains {
            sender.send_if_modified(|current| {
                let changed = *current != acme;
                *current = acme;
                changed
            });
        }
    }

    /// Recomputes the wanted certificates from every app's live routes.
    pub fn update(&self, apps: &HashMap<String, LiveApp>) {
        if !self.https {
            return;
        }
        let mut acme = BTreeSet::new();
        let mut files: BTreeMap<CertificateFiles, Vec<String>> = BTreeMap::new();
        for live in apps.values() {
            if let Some(page) = &live.manifest.status_page {
                acme.extend(page.domains.iter().cloned());
            }
            for service in live.manifest.web_services() {
                let Some(route) = &service.route else {
                    continue;
                };
                match &route.tls {
                    Tls::Auto => acme.extend(
                        route
                            .domains
                            .iter()
                            .filter(|d| !d.starts_with("*."))
                            .cloned(),
                    ),
                    Tls::Files { cert, key } => {
                        let entry = files
                            .entry(CertificateFiles {
                                cert: cert.clone(),
                                key: key.clone(),
                            })
                            .or_default();
                        entry.extend(route.domains.iter().cloned());
                        entry.sort();
                        entry.dedup();
                    }
                    Tls::Off => {}
                }
            }
        }
        self.files.sync(&self.store, &files);
        *self.wanted_files.lock().unwrap_or_else(|p| p.into_inner()) = files;
        self.want_acme(acme);
    }

    /// Reloads certificate files that changed on disk.
    pub fn refresh_files(&self) {
        let wanted = self
            .wanted_files
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        self.files.sync(&self.store, &wanted);
    }

    /// Asks the ACME worker to renew a domain's certificate now.
    pub fn renew(&self, domain: &str) -> Result<(), crate::OpError> {
        let Some(renew) = &self.renew else {
            return Err(crate::OpError::invalid("ACME is off on this agent")
                .hint("start the agent with --https and an --acme-directory"));
        };
        let managed = self
            .acme_domains
            .as_ref()
            .is_some_and(|d| d.borrow().contains(domain));
        if !managed {
            return Err(crate::OpError::not_found(format!(
                "no route asks for an ACME certificate for {domain}"
            )));
        }
        renew.try_send(domain.to_owned()).map_err(|_| {
            crate::OpError::failed("the certificate worker is busy; try again in a moment")
        })
    }

    pub fn certificates(&self) -> Vec<CertificateInfo> {
        self.store
            .statuses()
            .into_iter()
            .map(|s| CertificateInfo {
                source: s.source.as_str().to_owned(),
                state: s.state.as_str().to_owned(),
                domain: s.domain,
                not_after: s.not_after,
                issuer: s.issuer,
                last_error: s.last_error,
                next_attempt: s.next_attempt,
            })
            .collect()
    }
}

/// What the proxy asks of TLS, answered from the certificate store.
pub struct EdgeHooks(pub Arc<CertStore>);

impl berth_proxy::TlsHooks for EdgeHooks {
    fn http01_response(&self, token: &str) -> Option<String> {
        self.0.http01(token)
    }

    fn serves_https(&self, host: &str) -> bool {
        self.0.has_certificate(host)
    }
}
