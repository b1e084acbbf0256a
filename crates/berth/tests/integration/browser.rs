//! The console in a real headless Chromium (Debian's `chromium` and `chromium-driver`, driven
//! over WebDriver): the first admin from the setup link, a deploy of an earlier release and
//! its audit entry, a secret set without its value reaching the page, two-factor enrolment
//! and a login with a code, and a lockout. Screenshots of the main pages are kept in
//! `target/console-screenshots/`.

use crate::harness::Agent;
use fantoccini::{Client, ClientBuilder, Locator};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const PASSWORD: &str = "tide pool lantern";
const SIGN_UP_PASSWORD: &str = "copper lantern harbor";

struct Driver(Child);

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn chromedriver() -> (Driver, String) {
    let port = free_port();
    let child = Command::new("chromedriver")
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect(
            "chromedriver is installed by scripts/install-test-peers (Debian's chromium-driver)",
        );
    let url = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "chromedriver did not start");
        std::thread::sleep(Duration::from_millis(100));
    }
    (Driver(child), url)
}

async fn browser(driver: &str) -> Client {
    let mut capabilities = serde_json::Map::new();
    capabilities.insert(
        "goog:chromeOptions".to_owned(),
        serde_json::json!({
            "binary": "/usr/bin/chromium",
            // `admin.test`, the route with auth = "berth" below, is this machine.
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1280,900", "--host-resolver-rules=MAP admin.test 127.0.0.1", "--disable-features=HttpsUpgrades,HttpsFirstBalancedModeAutoEnable"],
        }),
    );
    ClientBuilder::rustls()
        .unwrap()
        .capabilities(capabilities)
        .connect(driver)
        .await
        .expect("a Chromium session")
}

fn screenshots() -> std::path::PathBuf {
    let target = std::path::Path::new(env!("CARGO_BIN_EXE_berth"))
        .parent()
        .and_then(|p| p.parent())
        .unwrap()
        .join("console-screenshots");
    std::fs::create_dir_all(&target).unwrap();
    target
}

async fn shot(client: &Client, name: &str) {
    let png = client.screenshot().await.unwrap();
    assert!(png.starts_with(b"\x89PNG"), "a PNG screenshot");
    std::fs::write(screenshots().join(format!("{name}.png")), png).unwrap();
}

async fn fill(client: &Client, name: &str, value: &str) {
    let field = client
        .find(Locator::Css(&format!("input[name=\"{name}\"]")))
        .await
        .unwrap_or_else(|e| panic!("no field {name}: {e}"));
    field.clear().await.unwrap();
    field.send_keys(value).await.unwrap();
}

/// Presses a form's button and waits for the page it leads to (every page differs from the
/// last: each carries a fresh token).
async fn press(client: &Client, label: &str) {
    let before = client.source().await.unwrap();
    client
        .find(Locator::XPath(&format!(
            "//button[normalize-space(.)='{label}']"
        )))
        .await
        .unwrap_or_else(|e| panic!("no button {label}: {e}"))
        .click()
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    while client.source().await.unwrap() == before {
        assert!(Instant::now() < deadline, "pressing {label} led nowhere");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn body(client: &Client) -> String {
    client.source().await.unwrap()
}

async fn log_in(client: &Client, base: &str, name: &str, password: &str) -> String {
    client.goto(&format!("{base}/login")).await.unwrap();
    fill(client, "name", name).await;
    fill(client, "password", password).await;
    press(client, "Log in").await;
    body(client).await
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

#[test]
fn the_console_works_in_a_real_browser() {
    let agent = Agent::start_with(
        &[],
        &["--dashboard", "127.0.0.1:0", "--console-login-rate", "100"],
    );
    let base = agent.agent_file()["dashboard"].as_str().unwrap().to_owned();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !agent.log().contains("/link/") {
        assert!(Instant::now() < deadline, "{}", agent.log());
        std::thread::sleep(Duration::from_millis(100));
    }
    let log = agent.log();
    let start = log.find("/link/").unwrap();
    let link: String = log[start..].chars().take("/link/".len() + 64).collect();

    let app = agent.app("browser");
    app.write(&crate::harness::web("GREETING = \"one\""));
    agent
        .berth_in(app.path(), &["deploy", "--version", "first"])
        .success();
    app.write(&crate::harness::web("GREETING = \"two\""));
    agent
        .berth_in(app.path(), &["deploy", "--version", "second"])
        .success();
    agent
        .berth_in(app.path(), &["users", "add", "vera", "--role", "viewer"])
        .success();
    agent
        .berth_in(app.path(), &["users", "sign-up", "open"])
        .success();
    // An admin tool of its own behind the console's login.
    let guarded = agent.app("guarded");
    guarded.write(&crate::harness::web("GREETING = \"guarded\"").replace(
        "route = { domains = [] }",
        "route = { domains = [\"admin.test\"], auth = \"berth\" }",
    ));
    agent.berth_in(guarded.path(), &["deploy"]).success();
    let proxy_port = agent.http.rsplit(':').next().unwrap().to_owned();

    let (_driver, driver_url) = chromedriver();
    crate::harness::block_on(async {
        let client = browser(&driver_url).await;

        // The first admin, from the link the agent printed.
        client.goto(&format!("{base}{link}")).await.unwrap();
        shot(&client, "setup").await;
        fill(&client, "password", PASSWORD).await;
        fill(&client, "again", PASSWORD).await;
        press(&client, "Set the password").await;
        let overview = body(&client).await;
        assert!(overview.contains(&app.name), "{overview}");
        shot(&client, "apps").await;

        // Release 1 deployed again from the app page, behind a confirmation.
        client
            .goto(&format!("{base}/apps/{}", app.name))
            .await
            .unwrap();
        shot(&client, "app").await;
        client
            .find(Locator::Css(&format!(
                "a[href=\"/apps/{}/rollback?release=1\"]",
                app.name
            )))
            .await
            .unwrap()
            .click()
            .await
            .unwrap();
        shot(&client, "confirm").await;
        press(&client, "Deploy release 1").await;
        let done = body(&client).await;
        assert!(done.contains("done"), "{done}");
        agent.wait_serving("one");

        // The audit page shows it, done by this user in the console.
        client
            .goto(&format!("{base}/audit?user=admin"))
            .await
            .unwrap();
        let audit = body(&client).await;
        assert!(
            audit.contains("rollback") && audit.contains("user admin via console"),
            "{audit}"
        );
        shot(&client, "audit").await;

        // A secret set here never comes back in the page.
        let value = "browser-secret-value-1234";
        client
            .goto(&format!("{base}/apps/{}/secrets", app.name))
            .await
            .unwrap();
        fill(&client, "name", "PAYMENT_KEY").await;
        fill(&client, "value", value).await;
        press(&client, "Add").await;
        let page = body(&client).await;
        assert!(page.contains("PAYMENT_KEY is set"), "{page}");
        assert!(!page.contains(value));
        shot(&client, "secrets").await;

        // Live logs: a line the app writes now arrives in the open page.
        client
            .goto(&format!("{base}/apps/{}/logs", app.name))
            .await
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let live = client
                .find(Locator::Id("live-log"))
                .await
                .unwrap()
                .text()
                .await
                .unwrap();
            if live.contains("a info line, as asked") {
                break;
            }
            assert!(Instant::now() < deadline, "no live line arrived: {live:?}");
            let _ = agent.get("/log/info");
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        let state = client
            .find(Locator::Id("live-state"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert_eq!(state, "live");
        shot(&client, "logs").await;

        // The server's charts, alerts, certificates and an app's backups render in a real
        // browser too (drawn on the server; the CSP allows no inline script).
        for (path, name, expected) in [
            ("/server?window=1h".to_owned(), "server", "Memory"),
            ("/alerts".to_owned(), "alerts", "Nothing is firing"),
            ("/certificates".to_owned(), "certificates", "Certificates"),
            (
                format!("/apps/{}/backups", app.name),
                "backups",
                "Backups of",
            ),
            (
                format!("/apps/{}/compare?from=1&to=2", app.name),
                "compare",
                "GREETING",
            ),
        ] {
            client.goto(&format!("{base}{path}")).await.unwrap();
            let page = body(&client).await;
            assert!(page.contains(expected), "{path}: {page}");
            shot(&client, name).await;
        }

        // Users.
        client.goto(&format!("{base}/users")).await.unwrap();
        assert!(body(&client).await.contains("vera"));
        shot(&client, "users").await;

        // The app's own page behind the console's login: the browser goes to the console's
        // hand-off (logging in there first if its console cookie stays home), whose script
        // takes it back to the app with a ticket; the app sees its user named by the proxy.
        client
            .goto(&format!("http://admin.test:{proxy_port}/echo"))
            .await
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut logged_in_again = false;
        loop {
            let page = body(&client).await;
            if page.contains("x-berth-user: admin") {
                assert!(page.contains("x-berth-role: admin"), "{page}");
                assert!(
                    !page.contains("berth-login"),
                    "no login cookie reaches the app: {page}"
                );
                break;
            }
            let at = client.current_url().await.unwrap().to_string();
            if at.starts_with(&format!("{base}/login")) && !logged_in_again {
                fill(&client, "name", "admin").await;
                fill(&client, "password", PASSWORD).await;
                press(&client, "Log in").await;
                logged_in_again = true;
                continue;
            }
            assert!(
                Instant::now() < deadline,
                "never reached the app (at {at}): {page}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(
            client
                .current_url()
                .await
                .unwrap()
                .as_str()
                .starts_with(&format!("http://admin.test:{proxy_port}/echo")),
            "back on the app's own address"
        );
        shot(&client, "route-login").await;
        client.goto(&format!("{base}/")).await.unwrap();

        // Two-factor: enrol by the key the page shows, then log in with a code.
        client.goto(&format!("{base}/account")).await.unwrap();
        press(&client, "Set up two-factor login").await;
        let page = body(&client).await;
        assert!(page.contains("<svg"), "the QR code");
        let key = client
            .find(Locator::XPath("//p[starts-with(., 'Key:')]/code"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let secret = berth_auth::totp::secret_from_text(&key).unwrap();
        let step = berth_auth::totp::step_of(now_ms());
        fill(
            &client,
            "code",
            &berth_auth::totp::code_at_step(&secret, step),
        )
        .await;
        press(&client, "Turn on").await;
        assert!(body(&client).await.contains("recovery codes"));
        let recovery = client
            .find(Locator::Css("ul.codes li code"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        shot(&client, "account").await;
        press(&client, "Log out").await;
        let code_form = log_in(&client, &base, "admin", PASSWORD).await;
        assert!(code_form.contains("Second factor"), "{code_form}");
        fill(
            &client,
            "code",
            &berth_auth::totp::code_at_step(&secret, step + 1),
        )
        .await;
        press(&client, "Log in").await;
        let page = body(&client).await;
        assert!(
            page.contains(&app.name) && page.contains("Log out"),
            "{page}"
        );
        press(&client, "Log out").await;

        // A sign-up request waits for an admin, who approves it on the users page.
        client.goto(&format!("{base}/login")).await.unwrap();
        client
            .find(Locator::LinkText("Ask for one"))
            .await
            .unwrap()
            .click()
            .await
            .unwrap();
        fill(&client, "name", "sam").await;
        fill(&client, "password", SIGN_UP_PASSWORD).await;
        fill(&client, "again", SIGN_UP_PASSWORD).await;
        press(&client, "Ask for an account").await;
        shot(&client, "sign-up").await;
        let waiting = log_in(&client, &base, "sam", SIGN_UP_PASSWORD).await;
        assert!(
            waiting.contains("wrong name or password"),
            "not before approval: {waiting}"
        );
        let code_form = log_in(&client, &base, "admin", PASSWORD).await;
        assert!(code_form.contains("Second factor"), "{code_form}");
        // A recovery code: the authenticator's next code may not be due yet.
        fill(&client, "code", &recovery).await;
        press(&client, "Log in").await;
        client.goto(&format!("{base}/users")).await.unwrap();
        assert!(body(&client).await.contains("sam"));
        client
            .find(Locator::Css("form[action=\"/users/sam/approve\"] button"))
            .await
            .unwrap()
            .click()
            .await
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(15);
        while client
            .find(Locator::Css("form[action=\"/users/sam/approve\"]"))
            .await
            .is_ok()
        {
            assert!(Instant::now() < deadline, "the approval did not land");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        shot(&client, "approved").await;
        press(&client, "Log out").await;
        let page = log_in(&client, &base, "sam", SIGN_UP_PASSWORD).await;
        assert!(page.contains("Log out") && page.contains("sam"), "{page}");
        press(&client, "Log out").await;
        let audit = agent
            .berth_in(app.path(), &["audit", "-n", "80", "--json"])
            .json()
            .to_string();
        assert!(
            audit.contains("user approve") && audit.contains("user/sam"),
            "{audit}"
        );

        // Five wrong passwords lock an account: the right one is then refused too.
        for _ in 0..5 {
            let page = log_in(&client, &base, "admin", "not the password").await;
            assert!(page.contains("wrong name or password"), "{page}");
        }
        let page = log_in(&client, &base, "admin", PASSWORD).await;
        assert!(
            page.contains("wrong name or password") && !page.contains("Second factor"),
            "{page}"
        );
        shot(&client, "locked").await;
        client.close().await.unwrap();
    });
}
