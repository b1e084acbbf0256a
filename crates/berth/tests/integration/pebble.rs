//! A real ACME server for tests: Debian's `pebble`, with `pebble-challtestsrv` answering DNS
//! so every name resolves to 127.0.0.1, validating against the agent's own ports.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Pebble {
    pub directory: String,
    /// The CA that signed pebble's own HTTPS listener (the agent trusts it with --acme-ca-root).
    pub listener_ca_path: std::path::PathBuf,
    /// The root pebble issues certificates under (clients trust only this).
    pub issuing_root: String,
    children: Vec<Child>,
    _dir: tempfile::TempDir,
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn wait_for_port(port: u16, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "{what} did not start listening on port {port}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

impl Pebble {
    /// Starts pebble validating HTTP-01 on `http_port` and TLS-ALPN-01 on `tls_port`.
    pub fn start(http_port: u16, tls_port: u16) -> Pebble {
        assert!(
            std::path::Path::new("/usr/bin/pebble").exists(),
            "pebble is not installed: `apt-get install pebble` (.ci/run does it)"
        );
        let dir = tempfile::tempdir().unwrap();
        let ca = berth_testkit::TestCa::new();
        let (cert, key) = ca.leaf(&["localhost", "127.0.0.1"]);
        let cert_path = dir.path().join("listener.pem");
        let key_path = dir.path().join("listener.key");
        let ca_path = dir.path().join("listener-ca.pem");
        std::fs::write(&cert_path, cert).unwrap();
        std::fs::write(&key_path, key).unwrap();
        std::fs::write(&ca_path, &ca.cert_pem).unwrap();

        let (acme_port, management_port, dns_port, challtest_port) =
            (free_port(), free_port(), free_port(), free_port());
        let config = serde_json::json!({
            "pebble": {
                "listenAddress": format!("127.0.0.1:{acme_port}"),
                "managementListenAddress": format!("127.0.0.1:{management_port}"),
                "certificate": cert_path,
                "privateKey": key_path,
                "httpPort": http_port,
                "tlsPort": tls_port,
                "ocspResponderURL": "",
                "externalAccountBindingRequired": false
            }
        });
        let config_path = dir.path().join("pebble.json");
        std::fs::write(&config_path, config.to_string()).unwrap();

        let log = |name: &str| std::fs::File::create(dir.path().join(name)).unwrap();
        let dns = Command::new("pebble-challtestsrv")
            .args(["-dns01", &format!("127.0.0.1:{dns_port}")])
            .args(["-http01", "", "-https01", "", "-tlsalpn01", ""])
            .args(["-management", &format!("127.0.0.1:{challtest_port}")])
            .args(["-defaultIPv4", "127.0.0.1", "-defaultIPv6", ""])
            .stdout(log("challtestsrv.log"))
            .stderr(Stdio::null())
            .spawn()
            .expect("start pebble-challtestsrv");
        wait_for_port(challtest_port, "pebble-challtestsrv");
        let pebble = Command::new("pebble")
            .arg("-config")
            .arg(&config_path)
            .args(["-dnsserver", &format!("127.0.0.1:{dns_port}")])
            .env("PEBBLE_VA_NOSLEEP", "1")
            .env("PEBBLE_WFE_NONCEREJECT", "0")
            .env("PEBBLE_AUTHZREUSE", "0")
            .stdout(log("pebble.log"))
            .stderr(log("pebble.err"))
            .spawn()
            .expect("start pebble");
        let mut this = Pebble {
            directory: format!("https://localhost:{acme_port}/dir"),
            listener_ca_path: ca_path,
            issuing_root: String::new(),
            children: vec![dns, pebble],
            _dir: dir,
        };
        wait_for_port(acme_port, "pebble");
        wait_for_port(management_port, "pebble's management interface");
        let client = berth_testkit::TlsClient::new(&ca.cert_pem, &[b"http/1.1"]);
        this.issuing_root = crate::harness::block_on(async {
            let mut connection = client
                .connect(&format!("127.0.0.1:{management_port}"), "localhost")
                .await
                .unwrap();
            let (status, _, body) = connection
                .get(&format!("localhost:{management_port}"), "/roots/0")
                .await
                .unwrap();
            assert_eq!(status, 200, "{body}");
            body
        });
        this
    }
}

impl Drop for Pebble {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
