//! Certificates from an ACME directory (Let's Encrypt by default): issued when a domain first
//! appears, renewed well before expiry, retried with backoff when they fail, and hot-swapped
//! into the store without dropping a connection.

use crate::TlsError;
use crate::pem;
use crate::store::{CertSource, CertState, CertStatus, CertStore};
use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, ChallengeType, Identifier, NewAccount,
    NewOrder, OrderStatus, RetryPolicy,
};
use rustls::sign::CertifiedKey;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, watch};

pub const LETS_ENCRYPT: &str = "https://acme-v02.api.letsencrypt.org/directory";
pub const LETS_ENCRYPT_STAGING: &str = "https://acme-staging-v02.api.letsencrypt.org/directory";

/// Which challenge proves control of a domain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Challenge {
    /// A token served at `http://DOMAIN/.well-known/acme-challenge/` (needs port 80).
    Http01,
    /// A special certificate presented on the TLS port (needs port 443 only).
    TlsAlpn01,
}

#[derive(Debug, Clone)]
pub struct AcmeConfig {
    pub directory: String,
    /// An email address for the CA's expiry notices.
    pub contact: Option<String>,
    /// An extra root certificate to trust for the directory's own TLS (a private CA).
    pub directory_root: Option<PathBuf>,
    pub challenge: Challenge,
    /// Renew when less than this much validity is left (30 days).
    pub renew_before: Duration,
    /// How often to look at every certificate.
    pub check_interval: Duration,
}

impl Default for AcmeConfig {
    fn default() -> Self {
        Self {
            directory: LETS_ENCRYPT.to_owned(),
            contact: None,
            directory_root: None,
            challenge: Challenge::Http01,
            renew_before: Duration::from_secs(30 * 86_400),
            check_interval: Duration::from_secs(3600),
        }
    }
}

/// First retry after a minute, doubling up to an hour.
fn backoff(failures: u32) -> Duration {
    Duration::from_secs(60u64.saturating_mul(1 << failures.min(6).saturating_sub(1)))
        .min(Duration::from_secs(3600))
}

pub struct Acme {
    config: AcmeConfig,
    store: Arc<CertStore>,
    dir: PathBuf,
    account: tokio::sync::Mutex<Option<Account>>,
    /// Per domain: consecutive failures and when to try again.
    failures: Mutex<HashMap<String, (u32, i64)>>,
    /// Per domain: when the CA suggests renewing (renewal information), if it says.
    suggested: Mutex<HashMap<String, i64>>,
}

impl Acme {
    /// Loads the certificates already obtained (from `dir`) into the store.
    pub fn new(
        config: AcmeConfig,
        store: Arc<CertStore>,
        dir: &Path,
    ) -> Result<Arc<Self>, TlsError> {
        let io = |e: std::io::Error| TlsError::Storage {
            path: dir.display().to_string(),
            message: e.to_string(),
        };
        std::fs::create_dir_all(dir.join("certificates")).map_err(io)?;
        let acme = Arc::new(Self {
            config,
            store,
            dir: dir.to_owned(),
            account: tokio::sync::Mutex::new(None),
            failures: Mutex::new(HashMap::new()),
            suggested: Mutex::new(HashMap::new()),
        });
        for entry in std::fs::read_dir(dir.join("certificates"))
            .map_err(io)?
            .flatten()
        {
            let domain = entry.file_name().to_string_lossy().into_owned();
            let (Ok(chain), Ok(key)) = (
                std::fs::read(entry.path().join("fullchain.pem")),
                std::fs::read(entry.path().join("privkey.pem")),
            ) else {
                continue;
            };
            match pem::load(&chain, &key, &domain) {
                Ok(loaded) => acme.install(&domain, loaded),
                Err(error) => {
                    tracing::warn!(%domain, %error, "ignoring an unreadable stored certificate")
                }
            }
        }
        Ok(acme)
    }

    fn install(&self, domain: &str, loaded: pem::LoadedCertificate) {
        self.store.install(&[domain.to_owned()], loaded.key);
        let state = if loaded.not_after <= pem::now() {
            CertState::Expired
        } else {
            CertState::Valid
        };
        self.store.set_status(CertStatus {
            domain: domain.to_owned(),
            source: CertSource::Acme,
            state,
            not_after: Some(loaded.not_after),
            issuer: Some(loaded.issuer),
            last_error: None,
            next_attempt: Some(loaded.not_after - self.config.renew_before.as_secs() as i64),
        });
    }

    /// When the domain's certificate should be renewed (Unix seconds); `None` if it has none.
    fn renew_at(&self, domain: &str) -> Option<i64> {
        let status = self.store.status(domain)?;
        let by_age = status.not_after? - self.config.renew_before.as_secs() as i64;
        let suggested = self
            .suggested
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(domain)
            .copied();
        Some(suggested.map_or(by_age, |s| s.min(by_age)))
    }

    fn due(&self, domain: &str, now: i64) -> bool {
        let blocked = self
            .failures
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(domain)
            .is_some_and(|(_, next)| *next > now);
        if blocked {
            return false;
        }
        match self.renew_at(domain) {
            None => {
                !self.store.has_certificate(domain)
                    || self
                        .store
                        .status(domain)
                        .is_some_and(|s| s.state != CertState::Valid)
            }
            Some(at) => at <= now,
        }
    }

    /// Keeps the wanted domains certified until `shutdown` resolves. `force` asks for an
    /// immediate renewal of one domain.
    pub async fn run(
        self: Arc<Self>,
        mut wanted: watch::Receiver<BTreeSet<String>>,
        mut force: mpsc::Receiver<String>,
        shutdown: impl std::future::Future<Output = ()>,
    ) {
        tokio::pin!(shutdown);
        loop {
            let domains = wanted.borrow_and_update().clone();
            let now = pem::now();
            for domain in &domains {
                if self.due(domain, now)
                    && let Err(error) = self.obtain(domain).await
                {
                    tracing::warn!(%domain, %error, "certificate not obtained");
                }
            }
            self.refresh_renewal_info(&domains).await;
            let next = self.next_wakeup(&domains);
            tokio::select! {
                changed = wanted.changed() => if changed.is_err() { return },
                Some(domain) = force.recv() => {
                    if let Err(error) = self.obtain(&domain).await {
                        tracing::warn!(%domain, %error, "forced renewal failed");
                    }
                }
                () = tokio::time::sleep(next) => {}
                () = &mut shutdown => return,
            }
        }
    }

    fn next_wakeup(&self, domains: &BTreeSet<String>) -> Duration {
        let now = pem::now();
        let failures = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        let mut next = self.config.check_interval;
        for domain in domains {
            let at = failures
                .get(domain)
                .map(|(_, at)| *at)
                .or_else(|| self.renew_at(domain));
            if let Some(at) = at {
                next = next.min(Duration::from_secs(
                    u64::try_from((at - now).max(1)).unwrap_or(1),
                ));
            }
        }
        next
    }

    /// Asks the CA when to renew each certificate (ACME renewal information), where it says.
    async fn refresh_renewal_info(&self, domains: &BTreeSet<String>) {
        let Ok(account) = self.account().await else {
            return;
        };
        for domain in domains {
            let Ok(chain) = std::fs::read(self.cert_dir(domain).join("fullchain.pem")) else {
                continue;
            };
            let Some(Ok(leaf)) = rustls_pki_types::pem::PemObject::pem_slice_iter(&chain).next()
            else {
                continue;
            };
            let leaf: CertificateDer<'static> = leaf;
            let Ok(id) = instant_acme::CertificateIdentifier::try_from(&leaf) else {
                continue;
            };
            if let Ok((info, _)) = account.renewal_info(&id).await {
                let window = &info.suggested_window;
                let at = point_in_window(
                    domain,
                    window.start.unix_timestamp(),
                    window.end.unix_timestamp(),
                );
                self.suggested
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(domain.clone(), at);
            }
        }
    }

    fn cert_dir(&self, domain: &str) -> PathBuf {
        self.dir.join("certificates").join(domain)
    }

    async fn account(&self) -> Result<Account, TlsError> {
        let mut cached = self.account.lock().await;
        if let Some(account) = cached.as_ref() {
            return Ok(account.clone());
        }
        let builder = match &self.config.directory_root {
            Some(root) => Account::builder_with_root(root),
            None => Account::builder(),
        }
        .map_err(|e| self.acme_error("prepare an ACME client", e))?;
        let key = format!("account-{:016x}.json", fnv(&self.config.directory));
        let path = self.dir.join(key);
        let account = match std::fs::read(&path)
            .ok()
            .and_then(|bytes| serde_json::from_slice::<AccountCredentials>(&bytes).ok())
        {
            Some(credentials) => builder
                .from_credentials(credentials)
                .await
                .map_err(|e| self.acme_error("load the ACME account", e))?,
            None => {
                let contact = self.config.contact.as_ref().map(|c| format!("mailto:{c}"));
                let contacts: Vec<&str> = contact.iter().map(String::as_str).collect();
                let new = NewAccount {
                    contact: &contacts,
                    terms_of_service_agreed: true,
                    only_return_existing: false,
                };
                let (account, credentials) = builder
                    .create(&new, self.config.directory.clone(), None)
                    .await
                    .map_err(|e| self.acme_error("create an ACME account", e))?;
                let json = serde_json::to_vec(&credentials).map_err(|e| TlsError::Storage {
                    path: path.display().to_string(),
                    message: e.to_string(),
                })?;
                write_private(&path, &json)?;
                account
            }
        };
        *cached = Some(account.clone());
        Ok(account)
    }

    fn acme_error(&self, action: &str, error: instant_acme::Error) -> TlsError {
        TlsError::Acme {
            directory: self.config.directory.clone(),
            action: action.to_owned(),
            message: describe(&error),
        }
    }

    /// Obtains (or renews) the certificate of one domain now. On failure the previous
    /// certificate, if any, stays in place and the failure is recorded for status.
    pub async fn obtain(&self, domain: &str) -> Result<(), TlsError> {
        if self.store.status(domain).is_none() {
            self.store.set_status(CertStatus {
                domain: domain.to_owned(),
                source: CertSource::Acme,
                state: CertState::Pending,
                not_after: None,
                issuer: None,
                last_error: None,
                next_attempt: None,
            });
        }
        match self.order(domain).await {
            Ok(loaded) => {
                self.failures
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(domain);
                self.suggested
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(domain);
                tracing::info!(%domain, not_after = loaded.not_after, "certificate installed");
                self.install(domain, loaded);
                Ok(())
            }
            Err(error) => {
                let (count, next) = {
                    let mut failures = self.failures.lock().unwrap_or_else(|p| p.into_inner());
                    let entry = failures.entry(domain.to_owned()).or_insert((0, 0));
                    entry.0 += 1;
                    entry.1 = pem::now() + backoff(entry.0).as_secs() as i64;
                    *entry
                };
                let message = error.to_string();
                self.store.update_status(domain, |status| {
                    status.state = CertState::Failing;
                    status.last_error = Some(message.clone());
                    status.next_attempt = Some(next);
                });
                tracing::warn!(%domain, attempts = count, retry_in = next - pem::now(), %message, "certificate attempt failed");
                Err(error)
            }
        }
    }

    async fn order(&self, domain: &str) -> Result<pem::LoadedCertificate, TlsError> {
        let account = self.account().await?;
        let identifiers = [Identifier::Dns(domain.to_owned())];
        let mut order = account
            .new_order(&NewOrder::new(&identifiers))
            .await
            .map_err(|e| self.acme_error("place an order", e))?;
        let kind = match self.config.challenge {
            Challenge::Http01 => ChallengeType::Http01,
            Challenge::TlsAlpn01 => ChallengeType::TlsAlpn01,
        };
        let mut tokens = Vec::new();
        {
            let mut authorizations = order.authorizations();
            while let Some(authorization) = authorizations.next().await {
                let mut authorization =
                    authorization.map_err(|e| self.acme_error("read an authorization", e))?;
                match authorization.status {
                    AuthorizationStatus::Valid => continue,
                    AuthorizationStatus::Pending => {}
                    other => {
                        return Err(TlsError::Acme {
                            directory: self.config.directory.clone(),
                            action: format!("authorize {domain}"),
                            message: format!("the authorization is {other:?}"),
                        });
                    }
                }
                let mut challenge = authorization.challenge(kind.clone()).ok_or_else(|| TlsError::Acme {
                    directory: self.config.directory.clone(),
                    action: format!("authorize {domain}"),
                    message: format!("the CA does not offer the {kind:?} challenge; choose another with --acme-challenge"),
                })?;
                let key_authorization = challenge.key_authorization();
                match self.config.challenge {
                    Challenge::Http01 => {
                        self.store
                            .set_http01(&challenge.token, key_authorization.as_str());
                        tokens.push(challenge.token.clone());
                    }
                    Challenge::TlsAlpn01 => {
                        let key = alpn_certificate(domain, key_authorization.digest().as_ref())?;
                        self.store.set_alpn_challenge(domain, key);
                    }
                }
                challenge
                    .set_ready()
                    .await
                    .map_err(|e| self.acme_error("start validation", e))?;
            }
        }
        let polled = order
            .poll_ready(&RetryPolicy::new().timeout(Duration::from_secs(90)))
            .await;
        let result = match polled {
            Ok(OrderStatus::Ready) => {
                let key_pem = order
                    .finalize()
                    .await
                    .map_err(|e| self.acme_error("finalize the order", e));
                match key_pem {
                    Ok(key_pem) => order
                        .poll_certificate(&RetryPolicy::new().timeout(Duration::from_secs(90)))
                        .await
                        .map_err(|e| self.acme_error("download the certificate", e))
                        .map(|chain| (chain, key_pem)),
                    Err(e) => Err(e),
                }
            }
            Ok(status) => Err(TlsError::Acme {
                directory: self.config.directory.clone(),
                action: format!("validate {domain}"),
                message: format!(
                    "the order is {status:?}: {}",
                    self.validation_problem(&mut order).await
                ),
            }),
            Err(e) => Err(self.acme_error(&format!("validate {domain}"), e)),
        };
        for token in tokens {
            self.store.clear_http01(&token);
        }
        self.store.clear_alpn_challenge(domain);
        let (chain_pem, key_pem) = result?;
        let loaded = pem::load(chain_pem.as_bytes(), key_pem.as_bytes(), domain)?;
        let dir = self.cert_dir(domain);
        std::fs::create_dir_all(&dir).map_err(|e| TlsError::Storage {
            path: dir.display().to_string(),
            message: e.to_string(),
        })?;
        write_private(&dir.join("privkey.pem"), key_pem.as_bytes())?;
        write_private(&dir.join("fullchain.pem"), chain_pem.as_bytes())?;
        Ok(loaded)
    }

    /// What the CA said about a failed validation, for the operator.
    async fn validation_problem(&self, order: &mut instant_acme::Order) -> String {
        let mut problems = Vec::new();
        let mut authorizations = order.authorizations();
        while let Some(Ok(authorization)) = authorizations.next().await {
            for challenge in &authorization.challenges {
                if let Some(problem) = &challenge.error {
                    problems.push(
                        problem
                            .detail
                            .clone()
                            .unwrap_or_else(|| format!("{problem:?}")),
                    );
                }
            }
        }
        if problems.is_empty() {
            "the CA gave no reason".into()
        } else {
            problems.join("; ")
        }
    }
}

/// The self-signed certificate that answers a TLS-ALPN-01 challenge (RFC 8737).
fn alpn_certificate(domain: &str, digest: &[u8]) -> Result<Arc<CertifiedKey>, TlsError> {
    let bad = |e: rcgen::Error| TlsError::Certificate {
        what: format!("the TLS-ALPN-01 certificate for {domain}"),
        message: e.to_string(),
    };
    let mut params = rcgen::CertificateParams::new(vec![domain.to_owned()]).map_err(bad)?;
    params.custom_extensions = vec![rcgen::CustomExtension::new_acme_identifier(digest)];
    let key = rcgen::KeyPair::generate().map_err(bad)?;
    let certificate = params.self_signed(&key).map_err(bad)?;
    let provider = rustls::crypto::aws_lc_rs::default_provider();
    let key_der = PrivateKeyDer::Pkcs8(key.serialize_der().into());
    // Not `CertifiedKey::from_der`: its key check parses the certificate with webpki, which
    // refuses the critical acmeIdentifier extension this certificate must carry.
    let signing_key = provider
        .key_provider
        .load_private_key(key_der)
        .map_err(|e| TlsError::Certificate {
            what: format!("the TLS-ALPN-01 certificate for {domain}"),
            message: e.to_string(),
        })?;
    Ok(Arc::new(CertifiedKey::new(
        vec![certificate.der().clone()],
        signing_key,
    )))
}

fn describe(error: &instant_acme::Error) -> String {
    match error {
        instant_acme::Error::Api(problem) => {
            let mut text = problem
                .detail
                .clone()
                .unwrap_or_else(|| problem.r#type.clone().unwrap_or_default());
            for sub in &problem.subproblems {
                if let Some(detail) = &sub.detail {
                    text.push_str("; ");
                    text.push_str(detail);
                }
            }
            text
        }
        other => {
            let mut text = other.to_string();
            let mut source = std::error::Error::source(other);
            while let Some(cause) = source {
                text.push_str(": ");
                text.push_str(&cause.to_string());
                source = cause.source();
            }
            text
        }
    }
}

/// Writes a key or certificate (0600) through a new file renamed into place: never over a
/// leftover temporary file or through a link.
fn write_private(path: &Path, bytes: &[u8]) -> Result<(), TlsError> {
    berth_fs::write_replacing(path, bytes, 0o600).map_err(|e| TlsError::Storage {
        path: path.display().to_string(),
        message: e.to_string(),
    })
}

/// A stable, dependency-free hash for file names.
fn fnv(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// When to renew within the CA's suggested window: spread over it (RFC 9773 asks clients not
/// to all come at its start), but the same point for the same domain and window, so repeated
/// checks do not move it around.
fn point_in_window(domain: &str, start: i64, end: i64) -> i64 {
    use std::hash::{Hash, Hasher};
    let Ok(width) = u64::try_from(end - start) else {
        return start;
    };
    if width == 0 {
        return start;
    }
    let mut hasher = std::hash::DefaultHasher::new();
    (domain, start, end).hash(&mut hasher);
    start + (hasher.finish() % width) as i64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renewal_points_spread_over_the_window_and_stay_put() {
        let (start, end) = (1_800_000_000, 1_800_000_000 + 2 * 86_400);
        let points: Vec<i64> = (0..200)
            .map(|i| point_in_window(&format!("site{i}.example"), start, end))
            .collect();
        assert!(points.iter().all(|p| (start..end).contains(p)));
        let first_half = points.iter().filter(|p| **p < start + 86_400).count();
        assert!(
            (60..=140).contains(&first_half),
            "{first_half} of 200 in the first half"
        );
        assert_eq!(
            point_in_window("a.example", start, end),
            point_in_window("a.example", start, end)
        );
        assert_eq!(
            point_in_window("a.example", end, start),
            end,
            "an inverted window"
        );
        assert_eq!(point_in_window("a.example", start, start), start);
    }

    #[test]
    fn backoff_doubles_from_a_minute_to_an_hour() {
        assert_eq!(backoff(1), Duration::from_secs(60));
        assert_eq!(backoff(2), Duration::from_secs(120));
        assert_eq!(backoff(3), Duration::from_secs(240));
        assert_eq!(
            backoff(20),
            Duration::from_secs(1920).min(Duration::from_secs(3600))
        );
    }

    #[test]
    fn the_alpn_challenge_certificate_names_the_domain() {
        let key = alpn_certificate("example.com", &[7u8; 32]).unwrap();
        let (names, _, _) = pem::describe(&key.cert[0]).unwrap();
        assert_eq!(names, ["example.com"]);
    }
}
