//! The console against a real agent: the first admin's setup link, logins and lockout,
//! sessions and CSRF, roles checked by the API's own scope table, escaping, and actions that
//! land in the audit log.

use crate::harness::Agent;
use berth_testkit::{HttpAnswer, form, http_request, http_request_to};
use std::time::{Duration, Instant};

const ADMIN_PASSWORD: &str = "tide pool lantern";
const VIEWER_PASSWORD: &str = "quiet orchard lamp";

struct Console {
    addr: String,
    /// The Host header: the address itself, or the console's domain through the proxy.
    host: String,
}

impl Console {
    fn get(&self, path: &str, cookie: Option<&str>) -> HttpAnswer {
        let cookie = cookie.map(|c| format!("berth_session={c}"));
        let mut headers = Vec::new();
        if let Some(cookie) = &cookie {
            headers.push(("cookie", cookie.as_str()));
        }
        http_request_to(&self.addr, &self.host, "GET", path, &headers, "").unwrap()
    }

    fn post(&self, path: &str, cookies: &str, pairs: &[(&str, &str)]) -> HttpAnswer {
        http_request_to(
            &self.addr,
            &self.host,
            "POST",
            path,
            &[
                ("cookie", cookies),
                ("content-type", "application/x-www-form-urlencoded"),
            ],
            &form(pairs),
        )
        .unwrap()
    }

    /// Logs in through the form, as a browser does: the login page's cookie and token first.
    fn login(&self, name: &str, password: &str) -> HttpAnswer {
        let page = self.get("/login", None);
        assert_eq!(page.status, 200, "{page:?}");
        let login_cookie = page.cookie("berth_login").expect("a login cookie");
        let token = hidden(&page.body, "csrf");
        assert_eq!(token, login_cookie);
        self.post(
            "/login",
            &format!("berth_login={login_cookie}"),
            &[
                ("name", name),
                ("password", password),
                ("csrf", &token),
                ("next", "/"),
            ],
        )
    }

    fn session(&self, name: &str, password: &str) -> String {
        let answer = self.login(name, password);
        assert_eq!(answer.status, 303, "{answer:?}");
        answer.cookie("berth_session").expect("a session cookie")
    }
}

/// The value of a hidden form field.
fn hidden(html: &str, name: &str) -> String {
    let marker = format!("name=\"{name}\" value=\"");
    let start = html
        .find(&marker)
        .unwrap_or_else(|| panic!("no {name} field in {html}"))
        + marker.len();
    html[start..]
        .split('"')
        .next()
        .unwrap_or_default()
        .to_owned()
}

/// The `href` of the element with this id, its entities decoded.
fn link_to(html: &str, id: &str) -> String {
    let marker = format!("id=\"{id}\"");
    let element = &html[html
        .find(&marker)
        .unwrap_or_else(|| panic!("no #{id} in {html}"))..];
    let start = element.find("href=\"").expect("an href") + "href=\"".len();
    element[start..]
        .split('"')
        .next()
        .unwrap_or_default()
        .replace("&#38;", "&")
        .replace("&amp;", "&")
}

fn link_secret(text: &str) -> String {
    let start = text.find("/link/").expect("a setup link") + "/link/".len();
    text[start..].chars().take(64).collect()
}

fn assert_headers(answer: &HttpAnswer) {
    let csp = answer.header("content-security-policy").unwrap_or("");
    assert!(
        csp.contains("script-src 'self'") && csp.contains("frame-ancestors 'none'"),
        "{answer:?}"
    );
    assert_eq!(answer.header("x-frame-options"), Some("DENY"));
    assert_eq!(answer.header("cache-control"), Some("no-store"));
}

#[test]
fn the_console_logs_in_checks_roles_and_csrf_and_audits_what_it_does() {
    let agent = Agent::start_with(
        &[],
        &[
            "--dashboard",
            "127.0.0.1:0",
            "--console-login-rate",
            "30",
            "--console-lockout-after",
            "4",
        ],
    );
    let url = agent.agent_file()["dashboard"]
        .as_str()
        .expect("the agent names its console")
        .to_owned();
    let addr = url.trim_start_matches("http://").to_owned();
    let console = Console {
        host: addr.clone(),
        addr,
    };

    // First start: the agent printed a one-time link for the admin.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !agent.log().contains("/link/") {
        assert!(Instant::now() < deadline, "{}", agent.log());
        std::thread::sleep(Duration::from_millis(100));
    }
    let secret = link_secret(&agent.log());
    let page = console.get(&format!("/link/{secret}"), None);
    assert_eq!(page.status, 200, "{page:?}");
    assert!(page.body.contains("Welcome, admin"), "{}", page.body);
    assert_headers(&page);
    // The policy refuses a weak password and the link stays usable.
    let weak = console.post(
        &format!("/link/{secret}"),
        "",
        &[("password", "password1234"), ("again", "password1234")],
    );
    assert_eq!(weak.status, 400);
    assert!(weak.body.contains("attackers try first"), "{}", weak.body);
    let set = console.post(
        &format!("/link/{secret}"),
        "",
        &[("password", ADMIN_PASSWORD), ("again", ADMIN_PASSWORD)],
    );
    assert_eq!(set.status, 303, "{set:?}");
    let flags = set.headers_named("set-cookie").join(" | ");
    assert!(
        flags.contains("berth_session=")
            && flags.contains("HttpOnly")
            && flags.contains("SameSite=Strict"),
        "{flags}"
    );
    // Used once, the link is spent.
    assert_eq!(console.get(&format!("/link/{secret}"), None).status, 404);

    // Anonymous requests go to the login page.
    let anonymous = console.get("/", None);
    assert_eq!(anonymous.status, 303);
    assert_eq!(anonymous.header("location"), Some("/login?next=/"));

    // Each login gets a new session id.
    let admin = console.session("admin", ADMIN_PASSWORD);
    let again = console.session("admin", ADMIN_PASSWORD);
    assert_ne!(admin, again);

    // An app whose version carries markup is shown escaped.
    let app = agent.app("console");
    app.write(&crate::harness::web("GREETING = \"one\""));
    agent
        .berth_in(
            app.path(),
            &["deploy", "--version", "<script>alert(1)</script>"],
        )
        .success();
    app.write(&crate::harness::web("GREETING = \"two\""));
    agent
        .berth_in(app.path(), &["deploy", "--version", "v2"])
        .success();
    let overview = console.get("/", Some(&admin));
    assert_eq!(overview.status, 200, "{overview:?}");
    assert_headers(&overview);
    assert!(overview.body.contains(&app.name), "{}", overview.body);
    assert!(
        overview.body.contains("Uptime, 30 days"),
        "{}",
        overview.body
    );
    // The health probes' history gives each service its uptime on the app's page.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let page = console.get(&format!("/apps/{}", app.name), Some(&admin));
        if page.body.contains("100 % · 100 % · 100 %") {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{}", page.body);
        std::thread::sleep(Duration::from_millis(500));
    }
    let page = console.get(&format!("/apps/{}", app.name), Some(&admin));
    assert_eq!(page.status, 200);
    assert!(
        page.body
            .contains("&#60;script&#62;alert(1)&#60;/script&#62;")
            && !page.body.contains("<script>alert"),
        "{}",
        page.body
    );

    // The logs page shows the service's last lines; its stream needs a login too.
    let logs = console.get(&format!("/apps/{}/logs", app.name), Some(&admin));
    assert_eq!(logs.status, 200, "{logs:?}");
    assert!(logs.body.contains("listening on port"), "{}", logs.body);
    assert_headers(&logs);
    let anonymous = console.get(&format!("/apps/{}/logs/stream?service=web", app.name), None);
    assert_eq!(anonymous.status, 303);

    // A viewer, added with the CLI and set up from the link it printed.
    let added = agent.berth_in(app.path(), &["users", "add", "vera", "--role", "viewer"]);
    added.success();
    let viewer_secret = link_secret(&added.stdout);
    assert_eq!(
        console
            .post(
                &format!("/link/{viewer_secret}"),
                "",
                &[("password", VIEWER_PASSWORD), ("again", VIEWER_PASSWORD)],
            )
            .status,
        303
    );
    let viewer = console.session("vera", VIEWER_PASSWORD);
    let viewer_page = console.get(&format!("/apps/{}", app.name), Some(&viewer));
    assert_eq!(viewer_page.status, 200);
    assert!(
        !viewer_page.body.contains("Deploy again"),
        "a viewer sees no buttons"
    );
    let viewer_csrf = hidden(&viewer_page.body, "csrf");

    // A viewer cannot deploy: the API's scope table refuses it, and the refusal is audited.
    let rollback = format!("/apps/{}/rollback", app.name);
    let refused = console.post(
        &rollback,
        &format!("berth_session={viewer}"),
        &[("csrf", &viewer_csrf), ("release", "1")],
    );
    assert_eq!(refused.status, 403, "{refused:?}");
    assert!(
        refused.body.contains("needs the deployer role"),
        "{}",
        refused.body
    );
    let audit = agent
        .berth_in(app.path(), &["audit", "-n", "50", "--json"])
        .json()
        .to_string();
    assert!(
        audit.contains("user vera via console") && audit.contains("refused"),
        "{audit}"
    );

    // CSRF: no token, or another session's token, is refused before anything happens.
    let admin_page = console.get(&format!("/apps/{}", app.name), Some(&admin));
    let admin_csrf = hidden(&admin_page.body, "csrf");
    for token in ["", viewer_csrf.as_str()] {
        let answer = console.post(
            &rollback,
            &format!("berth_session={admin}"),
            &[("csrf", token), ("release", "1")],
        );
        assert_eq!(answer.status, 403, "{answer:?}");
    }
    // Another origin is refused even with the token.
    let cross = http_request(
        &console.addr,
        "POST",
        &rollback,
        &[
            ("cookie", &format!("berth_session={admin}")),
            ("content-type", "application/x-www-form-urlencoded"),
            ("origin", "https://evil.example"),
        ],
        &form(&[("csrf", &admin_csrf), ("release", "1")]),
    )
    .unwrap();
    assert_eq!(cross.status, 403);

    // The admin deploys release 1 again from the app page; the audit page shows it.
    let confirm = console.get(&format!("{rollback}?release=1"), Some(&admin));
    assert_eq!(confirm.status, 200, "{confirm:?}");
    assert!(
        confirm.body.contains("Deploy release 1"),
        "{}",
        confirm.body
    );
    let done = console.post(
        &rollback,
        &format!("berth_session={admin}"),
        &[("csrf", &admin_csrf), ("release", "1")],
    );
    assert_eq!(done.status, 200, "{}", done.body);
    assert!(done.body.contains("done"), "{}", done.body);
    agent.wait_serving("one");
    let audit_page = console.get("/audit?user=admin", Some(&admin));
    assert_eq!(audit_page.status, 200);
    assert!(
        audit_page.body.contains("user admin via console") && audit_page.body.contains("rollback"),
        "{}",
        audit_page.body
    );
    let csv = console.get("/audit.csv?action=login", Some(&admin));
    assert_eq!(csv.status, 200);
    assert!(
        csv.body.starts_with("at,actor,action,target,result,detail"),
        "{}",
        csv.body
    );
    assert!(csv.body.contains("user/vera"), "{}", csv.body);

    // A secret set from the console never comes back in a page.
    let value = "s3cr3t-value-that-must-not-show";
    let secrets_path = format!("/apps/{}/secrets", app.name);
    let page = console.get(&secrets_path, Some(&admin));
    assert_eq!(page.status, 200, "{page:?}");
    let csrf = hidden(&page.body, "csrf");
    let set = console.post(
        &secrets_path,
        &format!("berth_session={admin}"),
        &[("csrf", &csrf), ("name", "API_KEY"), ("value", value)],
    );
    assert_eq!(set.status, 200, "{set:?}");
    assert!(set.body.contains("API_KEY is set"), "{}", set.body);
    for path in [
        secrets_path.as_str(),
        &format!("/apps/{}", app.name),
        "/audit",
    ] {
        let page = console.get(path, Some(&admin));
        assert!(!page.body.contains(value), "{path} shows the value");
    }
    assert_eq!(
        agent
            .berth_in(
                app.path(),
                &["secrets", "get", "API_KEY", "--app", &app.name]
            )
            .stdout
            .trim(),
        value
    );
    // Only admins reach secrets: a viewer is refused by the API.
    assert_eq!(console.get(&secrets_path, Some(&viewer)).status, 403);

    // A token made in the console is shown once and works; revoked, it stops.
    let page = console.get("/tokens", Some(&admin));
    assert_eq!(page.status, 200);
    let made = console.post(
        "/tokens",
        &format!("berth_session={admin}"),
        &[
            ("csrf", &hidden(&page.body, "csrf")),
            ("name", "from-console"),
            ("scope", "read"),
            ("app", ""),
            ("days", "30"),
        ],
    );
    assert_eq!(made.status, 200, "{made:?}");
    assert!(made.body.contains("berth_"), "{}", made.body);
    let listed = console.get("/tokens", Some(&admin));
    assert!(listed.body.contains("from-console") && !listed.body.contains("<code>berth_"));
    let revoked = console.post(
        "/tokens/from-console/revoke",
        &format!("berth_session={admin}"),
        &[("csrf", &hidden(&listed.body, "csrf"))],
    );
    assert_eq!(revoked.status, 303);
    let tokens = agent
        .berth_in(app.path(), &["tokens", "list", "--json"])
        .json();
    assert!(
        tokens
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["name"] == "from-console" && t["revoked_at"].is_i64()),
        "{tokens}"
    );

    // Sign-up: closed by default; once open, a request waits for an admin's approval.
    assert_eq!(console.get("/signup", None).status, 404);
    agent
        .berth_in(app.path(), &["users", "sign-up", "open"])
        .success();
    let form_page = console.get("/signup", None);
    assert_eq!(form_page.status, 200);
    let signup_cookie = form_page.cookie("berth_login").unwrap();
    let asked = console.post(
        "/signup",
        &format!("berth_login={signup_cookie}"),
        &[
            ("csrf", &hidden(&form_page.body, "csrf")),
            ("name", "sam"),
            ("password", VIEWER_PASSWORD),
            ("again", VIEWER_PASSWORD),
        ],
    );
    assert_eq!(asked.status, 200, "{asked:?}");
    assert!(asked.body.contains("Your request is in"), "{}", asked.body);
    assert_eq!(console.login("sam", VIEWER_PASSWORD).status, 401);
    let users_page = console.get("/users", Some(&admin));
    assert!(users_page.body.contains("Approve"), "{}", users_page.body);
    let approved = console.post(
        "/users/sam/approve",
        &format!("berth_session={admin}"),
        &[("csrf", &hidden(&users_page.body, "csrf"))],
    );
    assert_eq!(approved.status, 303, "{approved:?}");
    assert_eq!(console.login("sam", VIEWER_PASSWORD).status, 303);
    let audit = agent
        .berth_in(app.path(), &["audit", "-n", "50", "--json"])
        .json()
        .to_string();
    assert!(
        audit.contains("sign-up request") && audit.contains("user approve"),
        "{audit}"
    );

    // A viewer does not reach the users page (admin only).
    assert_eq!(console.get("/users", Some(&viewer)).status, 403);

    // Wrong passwords lock the account (four here, `--console-lockout-after 4`; five by
    // default): the right one is then refused too, with the same words as a wrong one.
    for _ in 0..4 {
        assert_eq!(console.login("vera", "not the password").status, 401);
    }
    let locked = console.login("vera", VIEWER_PASSWORD);
    assert_eq!(locked.status, 401);
    assert!(
        locked.body.contains("wrong name or password"),
        "{}",
        locked.body
    );
    let audit = agent
        .berth_in(app.path(), &["audit", "-n", "100", "--json"])
        .json()
        .to_string();
    assert!(audit.contains("the account is locked"), "{audit}");

    // Disabling a user ends their sessions at once.
    agent
        .berth_in(app.path(), &["users", "disable", "vera"])
        .success();
    assert_eq!(console.get("/", Some(&viewer)).status, 303);
    let list = agent
        .berth_in(app.path(), &["users", "list", "--json"])
        .json();
    let vera = list
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["name"] == "vera")
        .unwrap();
    assert_eq!(vera["status"], "disabled", "{list}");

    // Logging out ends the session.
    let logout = console.post(
        "/logout",
        &format!("berth_session={admin}"),
        &[("csrf", &admin_csrf)],
    );
    assert_eq!(logout.status, 303);
    assert_eq!(console.get("/", Some(&admin)).status, 303);

    two_factor(&agent, &console, app.path());
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// Enrolment by QR code (its key read from the page), a login with a code, a recovery code
/// that works once, and the policy that requires a second factor of everyone.
fn two_factor(agent: &Agent, console: &Console, dir: &std::path::Path) {
    let admin = console.session("admin", ADMIN_PASSWORD);
    let account = console.get("/account", Some(&admin));
    assert_eq!(account.status, 200);
    let csrf = hidden(&account.body, "csrf");
    let cookie = format!("berth_session={admin}");
    let begun = console.post("/account/totp/begin", &cookie, &[("csrf", &csrf)]);
    assert_eq!(begun.status, 200, "{begun:?}");
    assert!(
        begun.body.contains("<svg"),
        "the QR code is drawn on the server"
    );
    assert_headers(&begun);
    let key_at = begun.body.find("Key: <code>").unwrap() + "Key: <code>".len();
    let key: String = begun.body[key_at..]
        .chars()
        .take_while(|c| *c != '<')
        .collect();
    let secret = berth_auth::totp::secret_from_text(&key).expect("a base32 key");
    let code = berth_auth::totp::code_at_step(&secret, berth_auth::totp::step_of(now_ms()));
    let wrong = console.post(
        "/account/totp/confirm",
        &cookie,
        &[("csrf", &csrf), ("code", "000000x")],
    );
    assert_eq!(wrong.status, 400);
    let confirmed = console.post(
        "/account/totp/confirm",
        &cookie,
        &[("csrf", &csrf), ("code", &code)],
    );
    assert_eq!(confirmed.status, 200, "{confirmed:?}");
    let recovery: Vec<String> = confirmed
        .body
        .split("<li><code>")
        .skip(1)
        .map(|part| part.split('<').next().unwrap().to_owned())
        .collect();
    assert_eq!(recovery.len(), 10, "{}", confirmed.body);

    // The password alone now opens only the code form.
    let half = console.login("admin", ADMIN_PASSWORD);
    assert_eq!(half.status, 303);
    assert!(
        half.header("location").unwrap().starts_with("/login/code"),
        "{half:?}"
    );
    let half_cookie = half.cookie("berth_session").unwrap();
    assert_eq!(console.get("/", Some(&half_cookie)).status, 303);
    let form = console.get("/login/code", Some(&half_cookie));
    let code_csrf = hidden(&form.body, "csrf");
    // A code from two steps ahead is refused.
    let far = berth_auth::totp::code_at_step(&secret, berth_auth::totp::step_of(now_ms()) + 3);
    let refused = console.post(
        "/login/code",
        &format!("berth_session={half_cookie}"),
        &[("csrf", &code_csrf), ("code", &far), ("next", "/")],
    );
    assert_eq!(refused.status, 401);
    let whole = console.post(
        "/login/code",
        &format!("berth_session={half_cookie}"),
        &[("csrf", &code_csrf), ("code", &recovery[0]), ("next", "/")],
    );
    assert_eq!(whole.status, 303, "{whole:?}");
    let session = whole.cookie("berth_session").unwrap();
    assert_ne!(
        session, half_cookie,
        "a new session id after the second factor"
    );
    assert_eq!(console.get("/", Some(&session)).status, 200);
    // The recovery code worked once.
    let half = console
        .login("admin", ADMIN_PASSWORD)
        .cookie("berth_session")
        .unwrap();
    let form = console.get("/login/code", Some(&half));
    let again = console.post(
        "/login/code",
        &format!("berth_session={half}"),
        &[
            ("csrf", &hidden(&form.body, "csrf")),
            ("code", &recovery[0]),
            ("next", "/"),
        ],
    );
    assert_eq!(again.status, 401);
    let users = agent.berth_in(dir, &["users", "list", "--json"]).json();
    let admin_info = users
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["name"] == "admin")
        .unwrap();
    assert_eq!(admin_info["two_factor"], true, "{users}");

    // Required of everyone: a user without it is sent to set it up.
    agent
        .berth_in(dir, &["users", "two-factor", "required"])
        .success();
    let added = agent.berth_in(dir, &["users", "add", "otto", "--role", "viewer"]);
    added.success();
    let otto_secret = link_secret(&added.stdout);
    console.post(
        &format!("/link/{otto_secret}"),
        "",
        &[("password", VIEWER_PASSWORD), ("again", VIEWER_PASSWORD)],
    );
    let otto = console.session("otto", VIEWER_PASSWORD);
    let sent = console.get("/", Some(&otto));
    assert_eq!(sent.status, 303);
    assert_eq!(sent.header("location"), Some("/account"));
    let page = console.get("/account", Some(&otto));
    assert!(
        page.body.contains("required on this console"),
        "{}",
        page.body
    );
    let audit = agent
        .berth_in(dir, &["audit", "-n", "100", "--json"])
        .json()
        .to_string();
    assert!(
        audit.contains("two-factor on") && audit.contains("with a second factor"),
        "{audit}"
    );

    // An address that keeps trying is slowed down: 429 past the rate, audited.
    let mut limited = false;
    for _ in 0..40 {
        if console.login("nobody", "whatever it is").status == 429 {
            limited = true;
            break;
        }
    }
    assert!(limited, "never rate limited");
    let audit = agent
        .berth_in(dir, &["audit", "-n", "20", "--json"])
        .json()
        .to_string();
    assert!(audit.contains("attempts a minute from"), "{audit}");
}

const ROUTE_USER_PASSWORD: &str = "amber kettle harbour";

/// An app's pages behind `auth = "berth"`: the proxy sends anonymous browsers to the console,
/// the console hands a logged-in user back with a one-time ticket, and the app sees the user's
/// name in a header no client can forge and never the session cookie.
#[test]
fn a_route_with_auth_berth_lets_in_console_users_only() {
    let agent = Agent::start_with(
        &[],
        &[
            "--dashboard",
            "127.0.0.1:0",
            "--dashboard-domain",
            "console.test",
        ],
    );
    let url = agent.agent_file()["dashboard"]
        .as_str()
        .expect("the agent names its console")
        .to_owned();
    // The console on its own domain, through the proxy.
    let port = agent.http.rsplit(':').next().unwrap().to_owned();
    assert_eq!(url, format!("http://console.test:{port}"));
    let console = Console {
        addr: agent.http.clone(),
        host: format!("console.test:{port}"),
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while !agent.log().contains("/link/") {
        assert!(Instant::now() < deadline, "{}", agent.log());
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        agent.log().contains(&format!("{url}/link/")),
        "the setup link names the console's domain: {}",
        agent.log()
    );
    let login_page = console.get("/login", None);
    assert_eq!(login_page.status, 200, "{login_page:?}");
    assert_headers(&login_page);
    let app = agent.app("guarded");
    let added = agent.berth_in(app.path(), &["users", "add", "rita", "--role", "viewer"]);
    added.success();
    let set = console.post(
        &format!("/link/{}", link_secret(&added.stdout)),
        "",
        &[
            ("password", ROUTE_USER_PASSWORD),
            ("again", ROUTE_USER_PASSWORD),
        ],
    );
    assert_eq!(set.status, 303, "{set:?}");
    let rita = console.session("rita", ROUTE_USER_PASSWORD);

    let service = |name: &str, route: &str| {
        format!(
            "[services.{name}]\nbuild = \".\"\nport = 8080\nhealthcheck = {{ path = \"/health\", interval = \"1s\", start_timeout = \"20s\" }}\nroute = {route}\nstop_timeout = \"2s\"\n"
        )
    };
    app.write(&format!(
        "app = \"{{app}}\"\n\n{}\n{}",
        service("web", r#"{ domains = ["admin.test"], auth = "berth" }"#),
        service(
            "ops",
            r#"{ domains = ["ops.test"], auth = { login = "berth", role = "admin" } }"#
        ),
    ));
    agent.berth_in(app.path(), &["deploy"]).success();
    let proxy = |host: &str, method: &str, path: &str, headers: &[(&str, &str)]| {
        berth_testkit::http_request_to(&agent.http, host, method, path, headers, "").unwrap()
    };

    // Anonymous: a page load goes to the console's login hand-off, with a login state the
    // browser keeps as a cookie of the app's host; anything else gets 401.
    let anonymous = proxy("admin.test", "GET", "/echo?x=1", &[]);
    assert_eq!(anonymous.status, 303, "{anonymous:?}");
    let state = anonymous
        .cookie("berth-login-state")
        .expect("a login state");
    assert_eq!(
        anonymous.header("location"),
        Some(
            format!("{url}/handoff?to=http%3A%2F%2Fadmin.test%2Fecho%3Fx%3D1&state={state}")
                .as_str()
        )
    );
    let state_cookie = format!("berth-login-state={state}");
    let posted = proxy("admin.test", "POST", "/echo", &[]);
    assert_eq!(posted.status, 401, "{posted:?}");
    // A forged cookie is no login.
    let forged = proxy(
        "admin.test",
        "GET",
        "/echo",
        &[("cookie", &format!("berth-login={}", "ab".repeat(32)))],
    );
    assert_eq!(forged.status, 303);

    // The console: without a session, its login first, coming back to the hand-off.
    let handoff = format!("/handoff?to=http%3A%2F%2Fadmin.test%3A1%2Fecho%3Fx%3D1&state={state}");
    let handoff = handoff.as_str();
    let to_login = console.get(handoff, None);
    assert_eq!(to_login.status, 303);
    assert!(
        to_login
            .header("location")
            .is_some_and(|l| l.starts_with("/login?next=/handoff")),
        "{to_login:?}"
    );
    // Only a host a route with auth names is ever a destination.
    let elsewhere = console.get(
        &format!("/handoff?to=http%3A%2F%2Fevil.test%2F&state={state}"),
        Some(&rita),
    );
    assert_eq!(elsewhere.status, 404, "{elsewhere:?}");
    // Without the browser's login state there is no ticket.
    let stateless = console.get("/handoff?to=http%3A%2F%2Fadmin.test%2F", Some(&rita));
    assert_eq!(stateless.status, 400, "{stateless:?}");
    // A viewer cannot open a route that asks for admins.
    let too_low = console.get(
        &format!("/handoff?to=http%3A%2F%2Fops.test%2F&state={state}"),
        Some(&rita),
    );
    assert_eq!(too_low.status, 403, "{too_low:?}");
    assert!(
        too_low.body.contains("needs the admin role"),
        "{}",
        too_low.body
    );

    // Logged in: back to the app's host with a one-time ticket, by a link the page's script
    // follows (a redirect after the login form would break the console's form-action).
    let back = console.get(handoff, Some(&rita));
    assert_eq!(back.status, 200, "{back:?}");
    assert_headers(&back);
    let landing = link_to(&back.body, "handoff");
    // The ticket goes to this proxy's own scheme and port, whatever port the link named.
    let landing_path = landing
        .strip_prefix(&format!("http://admin.test:{port}"))
        .unwrap_or_else(|| panic!("{landing}"));
    assert!(
        landing_path.starts_with("/.berth/login?ticket="),
        "{landing}"
    );
    // Another browser (without this login state) cannot use the ticket, and spends it.
    let fixation = proxy("admin.test", "GET", landing_path, &[]);
    assert_eq!(fixation.status, 403, "{fixation:?}");
    let back = console.get(handoff, Some(&rita));
    let landing = link_to(&back.body, "handoff");
    let landing_path = landing
        .strip_prefix(&format!("http://admin.test:{port}"))
        .unwrap_or_else(|| panic!("{landing}"));
    // The ticket is traded for the route's cookie, once.
    let traded = proxy(
        "admin.test",
        "GET",
        landing_path,
        &[("cookie", &state_cookie)],
    );
    assert_eq!(traded.status, 303, "{traded:?}");
    assert_eq!(traded.header("location"), Some("/echo?x=1"));
    let flags = traded.headers_named("set-cookie").join(" | ");
    assert!(
        flags.contains("HttpOnly") && flags.contains("SameSite=Lax") && flags.contains("Path=/"),
        "{flags}"
    );
    let cookie = traded
        .cookie("berth-login")
        .expect("a route session cookie");
    let again = proxy(
        "admin.test",
        "GET",
        landing_path,
        &[("cookie", &state_cookie)],
    );
    assert_eq!(again.status, 403, "a ticket works once: {again:?}");
    // Shown on another host, a ticket opens nothing.
    let ticket_elsewhere = proxy(
        "ops.test",
        "GET",
        landing_path,
        &[("cookie", &state_cookie)],
    );
    assert_eq!(ticket_elsewhere.status, 403, "{ticket_elsewhere:?}");

    // In: the app sees who, from the proxy, and neither a client's forgery nor the cookie.
    let cookies = format!("theirs=1; berth-login={cookie}");
    let page = proxy(
        "admin.test",
        "GET",
        "/echo",
        &[
            ("cookie", &cookies),
            ("x-berth-user", "admin"),
            ("x-berth-role", "admin"),
        ],
    );
    assert_eq!(page.status, 200, "{page:?}");
    let seen = page.body.to_ascii_lowercase();
    assert!(seen.contains("x-berth-user: rita"), "{}", page.body);
    assert!(seen.contains("x-berth-role: viewer"), "{}", page.body);
    assert!(!seen.contains("x-berth-user: admin"), "{}", page.body);
    assert!(seen.contains("theirs=1"), "{}", page.body);
    assert!(
        !seen.contains(&cookie),
        "the app never sees the session: {}",
        page.body
    );
    // The cookie opens its own host only.
    let other_host = proxy("ops.test", "GET", "/echo", &[("cookie", &cookies)]);
    assert_eq!(other_host.status, 303, "{other_host:?}");
    // And it is no console session.
    assert_eq!(console.get("/", Some(&cookie)).status, 303);

    // The hand-off and the trade are in the audit log.
    let audit = agent
        .berth_in(app.path(), &["audit", "-n", "30", "--json"])
        .json()
        .to_string();
    assert!(
        audit.contains("app login") && audit.contains("route login"),
        "{audit}"
    );

    // No app may route a path of the console's domain, nor put an open route beside one
    // with auth on a domain (it would be sent the host's login cookie).
    let clash = agent.app("clash");
    for (route, wanted) in [
        (
            r#"{ domains = ["console.test"], path = "/x" }"#,
            "the console's domain",
        ),
        (
            r#"{ domains = ["admin.test"], path = "/open" }"#,
            "mixes a route with auth",
        ),
    ] {
        clash.write(&format!("app = \"{{app}}\"\n\n{}", service("web", route)));
        let refused = agent.berth_in(clash.path(), &["deploy"]);
        refused.failure(2);
        assert!(
            refused.stderr.contains(wanted),
            "{route}: {}",
            refused.stderr
        );
    }

    // Disabling the user ends the route's session too; so does logging out of it.
    agent
        .berth_in(app.path(), &["users", "disable", "rita"])
        .success();
    let disabled = proxy("admin.test", "GET", "/echo", &[("cookie", &cookies)]);
    assert_eq!(disabled.status, 303, "{disabled:?}");
    let out = proxy(
        "admin.test",
        "GET",
        "/.berth/logout",
        &[("cookie", &cookies)],
    );
    assert_eq!(out.status, 200);
    assert!(
        out.headers_named("set-cookie")
            .join(" ")
            .contains("Max-Age=0"),
        "{out:?}"
    );
}

const OPERATOR_PASSWORD: &str = "granite meadow compass";

/// The pages around the apps: backups (run, verify, a restore that asks for the app's name),
/// the server's charts, alerts and their mutes, certificates, and two releases compared.
#[test]
fn the_console_runs_backups_and_shows_the_server_alerts_and_release_differences() {
    let agent = Agent::start_with(&[], &["--dashboard", "127.0.0.1:0"]);
    let url = agent.agent_file()["dashboard"].as_str().unwrap().to_owned();
    let addr = url.trim_start_matches("http://").to_owned();
    let console = Console {
        host: addr.clone(),
        addr,
    };
    let app = agent.app("pages");
    let added = agent.berth_in(app.path(), &["users", "add", "olga", "--role", "admin"]);
    added.success();
    let set = console.post(
        &format!("/link/{}", link_secret(&added.stdout)),
        "",
        &[
            ("password", OPERATOR_PASSWORD),
            ("again", OPERATOR_PASSWORD),
        ],
    );
    assert_eq!(set.status, 303, "{set:?}");
    let olga = console.session("olga", OPERATOR_PASSWORD);
    let cookie = format!("berth_session={olga}");

    let manifest = |greeting: &str| {
        format!(
            "{}\n[backups.state]\nsource = \"berth\"\n",
            crate::harness::web(&format!("GREETING = \"{greeting}\""))
        )
    };
    app.write(&manifest("one"));
    agent
        .berth_in(app.path(), &["deploy", "--version", "v1"])
        .success();
    app.write(&manifest("two"));
    agent
        .berth_in(app.path(), &["deploy", "--version", "v2"])
        .success();

    // Two releases compared, either way round.
    let compared = console.get(
        &format!("/apps/{}/compare?from=1&to=2", app.name),
        Some(&olga),
    );
    assert_eq!(compared.status, 200, "{compared:?}");
    assert!(
        compared.body.contains("~ services.web.env.GREETING"),
        "{}",
        compared.body
    );
    // Releases come 50 a page, newest first: two fit on the first, none on the second.
    let first = console.get(&format!("/apps/{}", app.name), Some(&olga));
    assert!(
        first.body.contains("<td>r2</td>") && !first.body.contains("Older releases"),
        "{}",
        first.body
    );
    let second = console.get(&format!("/apps/{}?page=1", app.name), Some(&olga));
    assert_eq!(second.status, 200);
    assert!(
        second.body.contains("Newer releases") && !second.body.contains("<td>r1</td>"),
        "{}",
        second.body
    );
    let missing = console.get(
        &format!("/apps/{}/compare?from=1&to=9", app.name),
        Some(&olga),
    );
    assert_eq!(missing.status, 404, "{missing:?}");
    assert!(missing.body.contains("no release 9"), "{}", missing.body);

    // Backups: none yet, one taken from the page, read back and checked, then verified again.
    let backups = format!("/apps/{}/backups", app.name);
    let empty = console.get(&backups, Some(&olga));
    assert_eq!(empty.status, 200, "{empty:?}");
    assert!(empty.body.contains("No backup yet"), "{}", empty.body);
    let csrf = hidden(&empty.body, "csrf");
    let ran = console.post(&format!("{backups}/run"), &cookie, &[("csrf", &csrf)]);
    assert_eq!(ran.status, 200, "{ran:?}");
    assert!(ran.body.contains("✓"), "{}", ran.body);
    let listed = console.get(&backups, Some(&olga));
    assert!(listed.body.contains("checked"), "{}", listed.body);
    let id = hidden(&listed.body, "id");
    let verified = console.post(
        &format!("{backups}/verify"),
        &cookie,
        &[("csrf", &csrf), ("name", "state"), ("id", &id)],
    );
    assert_eq!(verified.status, 200, "{verified:?}");
    assert!(verified.body.contains("✓"), "{}", verified.body);
    // A restore asks for the app's name; anything else restores nothing.
    let confirm = console.get(
        &format!("{backups}/restore?name=state&id={id}"),
        Some(&olga),
    );
    assert_eq!(confirm.status, 200, "{confirm:?}");
    assert!(confirm.body.contains("safety backup"), "{}", confirm.body);
    let mistyped = console.post(
        &format!("{backups}/restore"),
        &cookie,
        &[
            ("csrf", &csrf),
            ("name", "state"),
            ("id", &id),
            ("confirm", "yes"),
        ],
    );
    assert_eq!(mistyped.status, 400, "{mistyped:?}");
    assert!(
        mistyped.body.contains("nothing was restored"),
        "{}",
        mistyped.body
    );
    let unknown = console.get(
        &format!("{backups}/restore?name=state&id=not-a-backup"),
        Some(&olga),
    );
    assert_eq!(unknown.status, 404);

    // The server's charts, drawn on the server.
    for window in ["1h", "24h", "7d"] {
        let server = console.get(&format!("/server?window={window}"), Some(&olga));
        assert_eq!(server.status, 200, "{server:?}");
        assert_headers(&server);
        assert!(
            server.body.contains("<svg class=\"chart\"") && server.body.contains("Memory"),
            "{}",
            server.body
        );
    }
    // The overview's last hour per app.
    let overview = console.get("/", Some(&olga));
    assert!(overview.body.contains("Requests, 5xx"), "{}", overview.body);

    // Alerts: a mute made from the page is listed, audited and removed.
    let alerts = console.get("/alerts", Some(&olga));
    assert_eq!(alerts.status, 200, "{alerts:?}");
    assert!(alerts.body.contains("Nothing is firing"), "{}", alerts.body);
    let muted = console.post(
        "/alerts/mute",
        &cookie,
        &[
            ("csrf", &csrf),
            ("app", &app.name),
            ("rule", "service_down"),
            ("subject", ""),
            ("hours", "4"),
        ],
    );
    assert_eq!(muted.status, 303, "{muted:?}");
    let alerts = console.get("/alerts", Some(&olga));
    let scope = format!("app {}, rule service_down", app.name);
    assert!(alerts.body.contains(&scope), "{}", alerts.body);
    let remove = alerts
        .body
        .split("action=\"/alerts/mutes/")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .expect("an unmute button")
        .to_owned();
    let unmuted = console.post(
        &format!("/alerts/mutes/{remove}"),
        &cookie,
        &[("csrf", &csrf)],
    );
    assert_eq!(unmuted.status, 303, "{unmuted:?}");
    assert!(!console.get("/alerts", Some(&olga)).body.contains(&scope));

    // Certificates: none on a plain-HTTP agent, and the page says how to get one.
    let certificates = console.get("/certificates", Some(&olga));
    assert_eq!(certificates.status, 200);
    assert!(
        certificates.body.contains("--https"),
        "{}",
        certificates.body
    );

    let audit = agent
        .berth_in(app.path(), &["audit", "-n", "40", "--json"])
        .json()
        .to_string();
    assert!(audit.contains("user olga via console"), "{audit}");
    assert!(audit.contains("backup"), "{audit}");
}

/// `auth = { login = "basic", users_secret = "..." }`: HTTP basic auth against argon2 hashes
/// in a berth secret (lines made by `berth secrets hash-password`), checked by the proxy with
/// no console running; the password stays at the edge, and guessing locks the name.
#[test]
fn a_route_with_basic_auth_lets_in_the_users_of_its_secret_only() {
    let agent = Agent::start_with(&[], &["--dashboard", "off"]);
    let app = agent.app("basic");
    app.write(&crate::harness::web("GREETING = \"tools\"").replace(
        "route = { domains = [] }",
        "route = { domains = [\"tools.test\"], auth = { login = \"basic\", users_secret = \"TOOL_USERS\" } }",
    ));
    // Without the secret, the route says it is not set up, not who may pass.
    agent.berth_in(app.path(), &["deploy"]).success();
    let get = |headers: &[(&str, &str)]| {
        berth_testkit::http_request_to(&agent.http, "tools.test", "GET", "/echo", headers, "")
            .unwrap()
    };
    let unset = get(&[]);
    assert_eq!(unset.status, 503, "{unset:?}");
    assert!(!unset.body.contains("TOOL_USERS"), "{}", unset.body);

    let weak = agent.berth_input(app.path(), "short\n", &["secrets", "hash-password", "ann"]);
    weak.failure(2);
    assert!(weak.stderr.contains("12"), "{}", weak.stderr);
    let line = agent.berth_input(
        app.path(),
        "juniper kettle morning\n",
        &["secrets", "hash-password", "ann"],
    );
    line.success();
    assert!(line.stdout.starts_with("ann:$argon2id$"), "{}", line.stdout);
    agent
        .berth_input(app.path(), &line.stdout, &["secrets", "set", "TOOL_USERS"])
        .success();
    // The users are read again within 30 seconds of a change.
    let basic = |user: &str, password: &str| {
        format!(
            "Basic {}",
            data_encoding::BASE64.encode(format!("{user}:{password}").as_bytes())
        )
    };
    let deadline = Instant::now() + Duration::from_secs(40);
    let asked = loop {
        let asked = get(&[]);
        if asked.status == 401 {
            break asked;
        }
        assert!(Instant::now() < deadline, "{asked:?}");
        std::thread::sleep(Duration::from_millis(500));
    };
    assert!(
        asked
            .header("www-authenticate")
            .is_some_and(|v| v.starts_with("Basic realm=")),
        "{asked:?}"
    );
    let right = basic("ann", "juniper kettle morning");
    let page = get(&[("authorization", &right), ("x-berth-user", "root")]);
    assert_eq!(page.status, 200, "{page:?}");
    let seen = page.body.to_ascii_lowercase();
    assert!(seen.contains("x-berth-user: ann"), "{}", page.body);
    assert!(seen.contains("x-berth-role: basic"), "{}", page.body);
    assert!(
        !seen.contains("authorization"),
        "the password stays at the edge: {}",
        page.body
    );
    assert!(!seen.contains("x-berth-user: root"), "{}", page.body);
    // Wrong passwords: asked again, then the name is locked, right password or not.
    let wrong = basic("ann", "not the password");
    for _ in 0..4 {
        assert_eq!(get(&[("authorization", &wrong)]).status, 401);
    }
    assert_eq!(get(&[("authorization", &wrong)]).status, 429);
    let locked = get(&[("authorization", &right)]);
    assert_eq!(locked.status, 429, "{locked:?}");
    assert!(locked.header("retry-after").is_some(), "{locked:?}");
    let audit = agent
        .berth_in(app.path(), &["audit", "-n", "20", "--json"])
        .json()
        .to_string();
    assert!(
        audit.contains("route login") && audit.contains("locked"),
        "{audit}"
    );
}
