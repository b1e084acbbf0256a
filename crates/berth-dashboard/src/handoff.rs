//! The console's side of a route with `auth = "berth"`: the proxy sends an anonymous browser
//! here with the page it wanted; a logged-in user who may open that route goes back to its
//! host with a one-time ticket, which the proxy trades there for a session of that host.
//! Only a host and path that such a route serves is ever a destination, so this page is no
//! open redirect.

use crate::Console;
use crate::view::{self, query_escape};
use crate::web::{client_ip, signed};
use askama::Template;
use axum::extract::{Query, State};
use axum::response::Response;
use berth_auth::accounts::{AccountStore, Role};
use berth_auth::app_login::{self, Tickets};
use http::{HeaderMap, StatusCode};
use serde::Deserialize;
use std::sync::Arc;

/// A route that asks for a console login, as the proxy routes it now.
#[derive(Debug, Clone)]
pub struct AppRoute {
    /// The route's path prefix (`/` or `/admin`).
    pub prefix: String,
    pub role: Role,
    pub two_factor: bool,
    /// `scheme://host[:port]` of the proxy that serves it: where the ticket goes, whatever
    /// scheme or port the link asked for.
    pub origin: String,
}

/// Looks up the route that serves a host and path, if it asks for a console login.
pub type RouteLookup = Arc<dyn Fn(&str, &str) -> Option<AppRoute> + Send + Sync>;

/// What the console needs to log users into apps' routes.
pub struct AppLogins {
    pub tickets: Arc<Tickets>,
    pub routes: RouteLookup,
}

#[derive(Deserialize)]
pub(crate) struct HandoffQuery {
    to: Option<String>,
    /// The browser's login state on the app's host, which the ticket is bound to.
    state: Option<String>,
}

/// What of a page's URL (`scheme://authority/path?query`) the hand-off uses: its host and its
/// path. The scheme and port are the proxy's own, never the link's.
struct Target<'a> {
    host: String,
    path: &'a str,
}

fn parse_target(url: &str) -> Option<Target<'_>> {
    let (scheme, rest) = url.split_once("://")?;
    if !matches!(scheme, "http" | "https") {
        return None;
    }
    let (authority, path) = match rest.find('/') {
        Some(at) => rest.split_at(at),
        None => (rest, "/"),
    };
    let plain = |b: u8| b.is_ascii_alphanumeric() || b"-.:[]".contains(&b);
    if authority.is_empty() || !authority.bytes().all(plain) {
        return None;
    }
    if path.bytes().any(|b| b.is_ascii_control() || b == b'\\') || path.starts_with("//") {
        return None;
    }
    let host = match authority.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or_default(),
        None => authority.split(':').next().unwrap_or_default(),
    };
    Some(Target {
        host: host.to_ascii_lowercase(),
        path,
    })
}

pub(crate) async fn handoff<S: AccountStore + Send + Sync + 'static>(
    State(console): State<Arc<Console<S>>>,
    Query(query): Query<HandoffQuery>,
    headers: HeaderMap,
    extensions: http::Extensions,
) -> Response {
    let not_served = || {
        view::message(
            StatusCode::NOT_FOUND,
            "No such login",
            "No route that asks for a berth login serves this address.",
            Some("Open the app's page itself: it sends you here when it needs a login."),
        )
    };
    let to = query.to.unwrap_or_default();
    let state = query.state.unwrap_or_default();
    // Logged in first: an anonymous visitor learns nothing of which routes ask for a login.
    let here = format!(
        "/handoff?to={}&state={}",
        query_escape(&to),
        query_escape(&state)
    );
    let signed = match signed(&console, &headers, client_ip(&extensions), &here) {
        Ok(signed) => signed,
        Err(response) => return response,
    };
    let Some(logins) = &console.app_logins else {
        return not_served();
    };
    let Some(target) = parse_target(&to) else {
        return not_served();
    };
    let Some(route) = (logins.routes)(&target.host, path_only(target.path)) else {
        return not_served();
    };
    if state.len() != 32 || !state.bytes().all(|b| b.is_ascii_hexdigit()) {
        return view::message(
            StatusCode::BAD_REQUEST,
            "This login link is incomplete",
            "The link lacks the login state the app's site gave your browser.",
            Some("Open the app's page itself: it sends you here with a complete link."),
        );
    }
    let second_factor = signed.session.second_factor;
    if let Err(denied) =
        app_login::allowed(&signed.user, second_factor, route.role, route.two_factor)
    {
        (console.audit)(
            &format!("user {} via console", signed.user.name),
            "app login",
            &target.host,
            "refused",
            &denied.to_string(),
        );
        return view::message(
            StatusCode::FORBIDDEN,
            "Not for this account",
            &denied.to_string(),
            None,
        );
    }
    let now = jiff::Timestamp::now().as_millisecond();
    let ticket = logins
        .tickets
        .issue(&signed.user.name, &target.host, &state, second_factor, now);
    (console.audit)(
        &format!("user {} via console", signed.user.name),
        "app login",
        &target.host,
        "ok",
        "",
    );
    let prefix = if route.prefix == "/" {
        ""
    } else {
        route.prefix.as_str()
    };
    let landing = format!(
        "{}{prefix}/.berth/login?ticket={ticket}&to={}",
        route.origin,
        query_escape(target.path),
    );
    // A page with the link rather than a redirect: after the login form, the page's
    // `form-action 'self'` stops a browser from following a redirect to another site.
    view::render(
        &HandoffPage {
            nav: Some(crate::web::nav(&signed)),
            host: target.host.clone(),
            user: signed.user.name.clone(),
            landing,
        },
        StatusCode::OK,
    )
}

#[derive(Template)]
#[template(path = "handoff.html")]
struct HandoffPage {
    nav: Option<crate::view::Nav>,
    host: String,
    user: String,
    landing: String,
}

fn path_only(path_and_query: &str) -> &str {
    path_and_query.split('?').next().unwrap_or("/")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_http_urls_are_destinations() {
        let target = parse_target("https://Admin.Example.com:8443/x/y?z=1").unwrap();
        assert_eq!(
            (target.host.as_str(), target.path),
            ("admin.example.com", "/x/y?z=1")
        );
        assert_eq!(parse_target("http://[::1]:80").unwrap().host, "::1");
        for bad in [
            "javascript://x/",
            "https://evil.test@admin.test/",
            "https://admin.test//evil.test",
            "https://admin.test/\\evil",
            "https://admin.test/a\nb",
            "/relative",
            "https:///x",
        ] {
            assert!(parse_target(bad).is_none(), "{bad:?} was taken");
        }
    }
}
