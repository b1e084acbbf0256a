//! The console (berth-dashboard) served by the agent: its pages call the API router in-process
//! as the logged-in user, and its accounts live in the agent's state file.

use crate::api::ApiState;
use berth_auth::accounts::{self, AccountStore, LinkPurpose, Role, Settings, UserRecord};
use berth_auth::app_login::{self, Tickets};
use berth_engine::engine::CONSOLE_ROUTE;
use berth_proxy::{BasicVerdict, LoginGate, LoginVerdict, Proxy, RouteAuth};
use std::sync::Arc;

/// The user the first-start setup link is for.
const FIRST_ADMIN: &str = "admin";

/// On a first start (no console user yet), an admin account with a one-time setup link,
/// printed to the log; again at each start while that account has no password and its
/// links have expired. A handover (the same agent, replaced) never prints one.
pub(crate) fn first_admin_link(state: &ApiState, took_over: bool) {
    if took_over {
        return;
    }
    let store = state.engine.store();
    let users = match store.users() {
        Ok(users) => users,
        Err(error) => {
            tracing::warn!(%error, "cannot read the console's users");
            return;
        }
    };
    let waiting = match users.as_slice() {
        [] => {
            let record = UserRecord::new(
                FIRST_ADMIN,
                Role::Admin,
                berth_state::now_ms(),
                "the agent's first start",
            );
            if let Err(error) = store.insert_user(&record) {
                tracing::warn!(%error, "cannot add the console's first admin");
                return;
            }
            true
        }
        [only] => only.name == FIRST_ADMIN && only.password_hash.is_none(),
        _ => false,
    };
    if !waiting {
        return;
    }
    match crate::api::make_user_link(state, FIRST_ADMIN, LinkPurpose::Setup) {
        Ok(link) => {
            let url = link.url.unwrap_or(link.path);
            tracing::warn!(
                url = %url,
                "the console has no admin yet: open this link within the hour to set the admin's password (it works once; `berth users reset admin` makes a new one)"
            );
            state.engine.audit(
                "the agent",
                "user add",
                &format!("user/{FIRST_ADMIN}"),
                "ok",
                "first start: a setup link was printed to the agent's log",
            );
        }
        Err(error) => {
            tracing::warn!(error = %error.0.message, "cannot make the first admin's setup link")
        }
    }
}

/// The console's routes; routes with `auth = "berth"` log in through it, so the proxy gets
/// its login gate here.
pub(crate) fn router(
    state: ApiState,
    listen: Option<crate::DashboardListen>,
    proxy: &Arc<Proxy>,
) -> axum::Router {
    let engine = state.engine.clone();
    let audit: berth_dashboard::AuditSink =
        Arc::new(move |actor, action, target, result, detail| {
            engine.audit(actor, action, target, result, detail);
        });
    let accounts = state.engine.store().clone();
    let engine_for_gate = state.engine.clone();
    // Only an address a browser elsewhere can open: not 0.0.0.0 (a domain, or loopback for
    // an SSH tunnel).
    let console_url = state
        .info
        .dashboard
        .clone()
        .filter(|url| !url.contains("://0.0.0.0") && !url.contains("://[::]"));
    let https = state.info.https.is_some();
    let api = crate::api::router(state);
    let mut console = berth_dashboard::Console::new(Arc::clone(&accounts), api, audit.clone());
    if let Some(listen) = listen {
        // Served on a domain: through the proxy (its requests come from loopback and state
        // the client's address) and over HTTPS when the agent serves it.
        console.behind_proxy = listen.domain.is_some();
        console.secure_cookies = listen.domain.is_some() && https;
        console.login_rate_per_minute = listen.login_rate_per_minute;
        console.settings.max_failures = listen.lockout_after.max(1);
        console.settings.lockout_ms =
            i64::try_from(listen.lockout_for.as_millis()).unwrap_or(i64::MAX);
        console.settings.policy.require_classes = listen.password_classes;
    }
    let tickets = Arc::new(Tickets::default());
    let lookup_in = Arc::clone(proxy);
    console.app_logins = Some(berth_dashboard::AppLogins {
        tickets: Arc::clone(&tickets),
        routes: Arc::new(move |host, path| {
            let login = lookup_in.route_login(host, path)?;
            Some(berth_dashboard::AppRoute {
                role: route_role(&login.auth),
                two_factor: login.auth.two_factor,
                prefix: login.prefix,
                origin: login.origin,
            })
        }),
    });
    proxy.set_login_gate(Arc::new(RouteGate {
        accounts,
        settings: console.settings.clone(),
        tickets,
        console_url,
        audit,
        engine: engine_for_gate,
        basic: Default::default(),
        users_secrets: Default::default(),
    }));
    berth_dashboard::router(Arc::new(console))
}

/// The role a route asks for; one this agent does not know (a newer manifest) asks for the
/// most.
fn route_role(auth: &RouteAuth) -> Role {
    auth.role.parse().unwrap_or(Role::Admin)
}

/// Routes with `auth`, answered from the console's accounts (`"berth"`) or an app secret's
/// users (basic auth).
struct RouteGate {
    accounts: Arc<berth_state::Store>,
    settings: Settings,
    tickets: Arc<Tickets>,
    console_url: Option<String>,
    audit: berth_dashboard::AuditSink,
    engine: Arc<berth_engine::Engine>,
    basic: app_login::BasicLogins,
    /// Each basic-auth route's users, read from its secret at most every 30 seconds.
    users_secrets: std::sync::Mutex<std::collections::HashMap<(String, String), (i64, String)>>,
}

/// The gate of an agent without a console: basic auth works, console logins answer 503.
pub(crate) fn gate_without_console(engine: &Arc<berth_engine::Engine>, proxy: &Proxy) {
    let auditing = engine.clone();
    let audit: berth_dashboard::AuditSink =
        Arc::new(move |actor, action, target, result, detail| {
            auditing.audit(actor, action, target, result, detail);
        });
    proxy.set_login_gate(Arc::new(RouteGate {
        accounts: engine.store().clone(),
        settings: Settings::default(),
        tickets: Arc::new(Tickets::default()),
        console_url: None,
        audit,
        engine: engine.clone(),
        basic: Default::default(),
        users_secrets: Default::default(),
    }));
}

const USERS_SECRET_FRESH_MS: i64 = 30_000;

impl RouteGate {
    fn users_of(&self, app: &str, secret: &str, now: i64) -> Option<String> {
        let key = (app.to_owned(), secret.to_owned());
        let mut cached = self.users_secrets.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((at, users)) = cached.get(&key)
            && now - at < USERS_SECRET_FRESH_MS
        {
            return Some(users.clone());
        }
        match self.engine.channel_secret(app, secret) {
            Ok(users) => {
                cached.insert(key, (now, users.clone()));
                Some(users)
            }
            Err(error) => {
                tracing::warn!(app, secret, error = %error.message, "a route's basic-auth users cannot be read: set them with `berth secrets set` (lines made by `berth secrets hash-password NAME`)");
                None
            }
        }
    }
}

impl LoginGate for RouteGate {
    fn check(&self, host: &str, cookie: &str, auth: &RouteAuth) -> LoginVerdict {
        let now = berth_state::now_ms();
        match accounts::app_session_user(&*self.accounts, &self.settings, cookie, host, now) {
            Ok(Some((session, user))) => {
                match app_login::allowed(
                    &user,
                    session.second_factor,
                    route_role(auth),
                    auth.two_factor,
                ) {
                    Ok(()) => LoginVerdict::Allow {
                        role: user.role.as_str().to_owned(),
                        user: user.name,
                    },
                    Err(denied) => LoginVerdict::Denied(denied.to_string()),
                }
            }
            Ok(None) => LoginVerdict::Login,
            // Closed, not open: a page that needs a login is not served while logins cannot
            // be read.
            Err(error) => {
                tracing::warn!(%error, host, "cannot read a route's login session");
                LoginVerdict::Denied(
                    "the server cannot check logins just now; try again in a moment".to_owned(),
                )
            }
        }
    }

    fn redeem(
        &self,
        host: &str,
        ticket: &str,
        state: &str,
        client_ip: &str,
        user_agent: &str,
    ) -> Option<String> {
        let client = accounts::Client {
            ip: client_ip.to_owned(),
            user_agent: user_agent.to_owned(),
        };
        let now = berth_state::now_ms();
        match app_login::redeem(
            &*self.accounts,
            &self.tickets,
            ticket,
            host,
            state,
            &client,
            now,
        ) {
            Ok(Some((session, user))) => {
                (self.audit)(
                    &format!("user {} from {client_ip}", user.name),
                    "route login",
                    host,
                    "ok",
                    &user_agent.chars().take(200).collect::<String>(),
                );
                Some(session.cookie)
            }
            Ok(None) => None,
            Err(error) => {
                tracing::warn!(%error, host, "cannot open a route's login session");
                None
            }
        }
    }

    fn check_basic(
        &self,
        app: &str,
        users_secret: &str,
        authorization: Option<&str>,
        client_ip: &str,
    ) -> BasicVerdict {
        let now = berth_state::now_ms();
        let Some(users) = self.users_of(app, users_secret, now) else {
            return BasicVerdict::Unavailable;
        };
        match self.basic.check(app, &users, authorization, client_ip, now) {
            app_login::BasicOutcome::Allow(user) => BasicVerdict::Allow { user },
            app_login::BasicOutcome::Refused => BasicVerdict::Refused,
            app_login::BasicOutcome::Locked(ms) => {
                (self.audit)(
                    &format!("basic auth from {client_ip}"),
                    "route login",
                    app,
                    "locked",
                    "too many wrong passwords",
                );
                BasicVerdict::Locked(std::time::Duration::from_millis(
                    u64::try_from(ms).unwrap_or(0),
                ))
            }
        }
    }

    fn logout(&self, cookie: &str) {
        if let Err(error) = accounts::close_session(&*self.accounts, cookie) {
            tracing::warn!(%error, "cannot end a route's login session");
        }
    }

    fn login_url(&self, return_to: &str, state: &str) -> Option<String> {
        self.console_url
            .as_ref()
            .map(|console| format!("{console}/handoff?to={return_to}&state={state}"))
    }
}

/// Routes `domain` to the console's listener through the proxy, and asks for its certificate
/// like an app route's.
pub(crate) fn route_domain(
    proxy: &Proxy,
    edge: &berth_engine::edge::Edge,
    domain: &str,
    listener: std::net::SocketAddr,
    https: bool,
) {
    let mut upstream = listener;
    if upstream.ip().is_unspecified() {
        upstream.set_ip(if upstream.is_ipv4() {
            std::net::Ipv4Addr::LOCALHOST.into()
        } else {
            std::net::Ipv6Addr::LOCALHOST.into()
        });
    }
    proxy.set_app_routes(
        CONSOLE_ROUTE,
        vec![berth_proxy::RouteSpec {
            app: CONSOLE_ROUTE.to_owned(),
            service: "console".to_owned(),
            release: 0,
            domains: vec![domain.to_owned()],
            path: "/".to_owned(),
            upstreams: vec![berth_proxy::Upstream::new(upstream, "console")],
            settings: berth_proxy::RouteSettings {
                max_body: 1 << 20,
                redirect_https: https,
                hsts: https,
                // The login form is never served in clear text, not even before the
                // certificate comes.
                https_only: https,
                ..Default::default()
            },
        }],
    );
    edge.set_own_domains(std::iter::once(domain.to_owned()).collect());
}

/// The console's address on its domain: HTTPS when the agent serves it, with the listener's
/// port unless it is the scheme's own.
pub(crate) fn domain_url(
    domain: &str,
    http: Option<std::net::SocketAddr>,
    https: Option<std::net::SocketAddr>,
) -> String {
    match (https, http) {
        (Some(addr), _) if addr.port() == 443 => format!("https://{domain}"),
        (Some(addr), _) => format!("https://{domain}:{}", addr.port()),
        (None, Some(addr)) if addr.port() == 80 => format!("http://{domain}"),
        (None, Some(addr)) => format!("http://{domain}:{}", addr.port()),
        (None, None) => format!("http://{domain}"),
    }
}
