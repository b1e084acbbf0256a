//! The certificate store: which certificate to present for a server name, the pending ACME
//! challenge answers, and what is known about each certificate (for `berth status`).

use arc_swap::ArcSwap;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

/// Where a certificate comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CertSource {
    Acme,
    Files,
}

impl CertSource {
    pub fn as_str(self) -> &'static str {
        match self {
            CertSource::Acme => "acme",
            CertSource::Files => "files",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CertState {
    /// Installed and not expired.
    Valid,
    /// Being obtained for the first time.
    Pending,
    /// The last attempt failed; the previous certificate (if any) is still served.
    Failing,
    /// Installed but past its expiry.
    Expired,
}

impl CertState {
    pub fn as_str(self) -> &'static str {
        match self {
            CertState::Valid => "valid",
            CertState::Pending => "pending",
            CertState::Failing => "failing",
            CertState::Expired => "expired",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CertStatus {
    pub domain: String,
    pub source: CertSource,
    pub state: CertState,
    /// Unix seconds.
    pub not_after: Option<i64>,
    pub issuer: Option<String>,
    pub last_error: Option<String>,
    /// Unix seconds of the next attempt after a failure or the planned renewal.
    pub next_attempt: Option<i64>,
}

#[derive(Debug, Default)]
pub struct CertStore {
    /// By exact server name, and `*.example.com` for wildcard certificates.
    certs: ArcSwap<HashMap<String, Arc<CertifiedKey>>>,
    alpn_challenges: Mutex<HashMap<String, Arc<CertifiedKey>>>,
    http01: Mutex<HashMap<String, String>>,
    status: Mutex<BTreeMap<String, CertStatus>>,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

impl CertStore {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Presents `key` for each of `names` from now on (copy-on-write: handshakes in progress
    /// keep the certificate they started with).
    pub fn install(&self, names: &[String], key: Arc<CertifiedKey>) {
        let mut map = HashMap::clone(&self.certs.load());
        for name in names {
            map.insert(name.to_ascii_lowercase(), Arc::clone(&key));
        }
        self.certs.store(Arc::new(map));
    }

    pub fn remove(&self, names: &[String]) {
        let mut map = HashMap::clone(&self.certs.load());
        for name in names {
            map.remove(&name.to_ascii_lowercase());
        }
        self.certs.store(Arc::new(map));
        let mut status = lock(&self.status);
        for name in names {
            status.remove(name);
        }
    }

    fn lookup(&self, host: &str) -> Option<Arc<CertifiedKey>> {
        let host = host.to_ascii_lowercase();
        let certs = self.certs.load();
        if let Some(key) = certs.get(&host) {
            return Some(Arc::clone(key));
        }
        let (_, parent) = host.split_once('.')?;
        certs.get(&format!("*.{parent}")).cloned()
    }

    /// What a client that names no server (one connecting by IP address) is shown: the one
    /// certificate installed, if there is just one; with several, none, since no choice would
    /// be right for every such client.
    fn only_certificate(&self) -> Option<Arc<CertifiedKey>> {
        let certs = self.certs.load();
        let mut keys = certs.values();
        let first = keys.next()?;
        keys.all(|other| Arc::ptr_eq(first, other))
            .then(|| Arc::clone(first))
    }

    /// Whether a certificate is installed for `host`.
    pub fn has_certificate(&self, host: &str) -> bool {
        self.lookup(host).is_some()
    }

    /// The certificate presented for `host`, for tests and status.
    pub fn certificate(&self, host: &str) -> Option<Arc<CertifiedKey>> {
        self.lookup(host)
    }

    pub fn set_http01(&self, token: &str, key_authorization: &str) {
        lock(&self.http01).insert(token.to_owned(), key_authorization.to_owned());
    }

    pub fn clear_http01(&self, token: &str) {
        lock(&self.http01).remove(token);
    }

    pub fn http01(&self, token: &str) -> Option<String> {
        lock(&self.http01).get(token).cloned()
    }

    pub fn set_alpn_challenge(&self, domain: &str, key: Arc<CertifiedKey>) {
        lock(&self.alpn_challenges).insert(domain.to_ascii_lowercase(), key);
    }

    pub fn clear_alpn_challenge(&self, domain: &str) {
        lock(&self.alpn_challenges).remove(&domain.to_ascii_lowercase());
    }

    pub fn set_status(&self, status: CertStatus) {
        lock(&self.status).insert(status.domain.clone(), status);
    }

    pub fn status(&self, domain: &str) -> Option<CertStatus> {
        lock(&self.status).get(domain).cloned()
    }

    pub fn update_status(&self, domain: &str, update: impl FnOnce(&mut CertStatus)) {
        if let Some(status) = lock(&self.status).get_mut(domain) {
            update(status);
        }
    }

    pub fn statuses(&self) -> Vec<CertStatus> {
        lock(&self.status).values().cloned().collect()
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let Some(name) = hello.server_name().map(str::to_owned) else {
            return self.only_certificate();
        };
        let validating = hello
            .alpn()
            .is_some_and(|mut protocols| protocols.any(|p| p == b"acme-tls/1"));
        if validating {
            return lock(&self.alpn_challenges)
                .get(&name.to_ascii_lowercase())
                .cloned();
        }
        self.lookup(&name)
    }
}

/// A TLS server configuration presenting the store's certificates: TLS 1.2 and 1.3 with
/// rustls's AEAD-only cipher suites, HTTP/2 and HTTP/1.1 by ALPN, and `acme-tls/1` for
/// TLS-ALPN-01 validations.
pub fn server_config(store: Arc<CertStore>) -> Result<Arc<rustls::ServerConfig>, rustls::Error> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_cert_resolver(store);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec(), b"acme-tls/1".to_vec()];
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::pki_types::ServerName;

    fn certificate(
        names: &[&str],
    ) -> (
        Arc<CertifiedKey>,
        rustls::pki_types::CertificateDer<'static>,
    ) {
        let (cert, key) = crate::pem::self_signed(names);
        let loaded = crate::pem::load(cert.as_bytes(), key.as_bytes(), "test").unwrap();
        (loaded.key, loaded.leaf)
    }

    /// A full handshake in memory; the client sends SNI only for a DNS name. Returns the
    /// certificate the server presented.
    fn handshake(
        store: Arc<CertStore>,
        trusted: &rustls::pki_types::CertificateDer<'static>,
        server_name: &str,
    ) -> Result<rustls::pki_types::CertificateDer<'static>, rustls::Error> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(trusted.clone()).unwrap();
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let client_config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let name = ServerName::try_from(server_name.to_owned()).unwrap();
        let mut client = rustls::ClientConnection::new(Arc::new(client_config), name).unwrap();
        let mut server = rustls::ServerConnection::new(server_config(store).unwrap()).unwrap();
        for _ in 0..10 {
            let mut bytes = Vec::new();
            client.write_tls(&mut bytes).unwrap();
            server.read_tls(&mut bytes.as_slice()).unwrap();
            server.process_new_packets()?;
            let mut bytes = Vec::new();
            server.write_tls(&mut bytes).unwrap();
            client.read_tls(&mut bytes.as_slice()).unwrap();
            client.process_new_packets()?;
            if !client.is_handshaking() && !server.is_handshaking() {
                break;
            }
        }
        Ok(client.peer_certificates().unwrap()[0].clone())
    }

    #[test]
    fn a_client_without_sni_gets_the_only_certificate_and_none_when_there_are_several() {
        let store = CertStore::new();
        let (key, leaf) = certificate(&["a.example", "127.0.0.1"]);
        store.install(&["a.example".into(), "www.a.example".into()], key);
        assert_eq!(
            handshake(store.clone(), &leaf, "a.example").unwrap(),
            leaf,
            "by SNI"
        );
        assert_eq!(
            handshake(store.clone(), &leaf, "127.0.0.1").unwrap(),
            leaf,
            "no SNI (an IP address), one certificate"
        );
        let (other, _) = certificate(&["b.example"]);
        store.install(&["b.example".into()], other);
        assert!(
            handshake(store.clone(), &leaf, "127.0.0.1").is_err(),
            "no SNI, two certificates: none fits every client"
        );
        assert_eq!(handshake(store, &leaf, "a.example").unwrap(), leaf);
    }
}
