//! The console's HTTP side: routes, the headers every answer carries, cookies, the session
//! gate and the CSRF check.

use crate::api::ConsoleUser;
use crate::view::Nav;
use crate::{Console, view};
use axum::extract::{ConnectInfo, Request};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use berth_auth::accounts::{self, AccountStore, Role, SessionRecord, UserRecord};
use http::{HeaderMap, HeaderValue, StatusCode, header};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

/// A strict policy on every answer: no inline script, no framing, nothing from elsewhere;
/// pages (which show what a login may see) are never cached.
pub(crate) async fn security_headers(request: Request, next: Next) -> Response {
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; style-src 'self'; script-src 'self'; img-src 'self' data:; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    // Not `no-referrer`: browsers then send `Origin: null` with every form, which the
    // same-origin check refuses. `same-origin` still keeps this console's URLs (setup links
    // among them) from other sites.
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    if !headers.contains_key(header::CACHE_CONTROL) {
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    response
}

/// A state-changing request that names another origin is refused before any handler: the
/// CSRF token is the main defence, this one costs nothing.
pub(crate) async fn same_origin_posts(request: Request, next: Next) -> Response {
    if request.method() != http::Method::GET && request.method() != http::Method::HEAD {
        let origin = request
            .headers()
            .get(header::ORIGIN)
            .and_then(|v| v.to_str().ok());
        let host = request
            .headers()
            .get(header::HOST)
            .and_then(|v| v.to_str().ok());
        if let Some(origin) = origin {
            let same = host.is_some_and(|host| {
                origin == format!("http://{host}")
                    || origin == format!("https://{host}")
                    // HTTP/2 through the proxy: its Host is the name without the port.
                    || (!host.contains(':')
                        && origin
                            .split_once("://")
                            .and_then(|(_, rest)| rest.rsplit_once(':'))
                            .is_some_and(|(name, port)| {
                                name == host && port.bytes().all(|b| b.is_ascii_digit())
                            }))
            });
            if !same {
                return forbidden_form();
            }
        }
    }
    next.run(request).await
}

pub(crate) fn forbidden_form() -> Response {
    view::message(
        StatusCode::FORBIDDEN,
        "Refused",
        "This form did not come from this console's page, or the page is too old: reload it and try again.",
        None,
    )
}

/// The address the browser connects from.
/// Behind berth's proxy, the client is the one the proxy names, not the proxy: a request
/// from loopback with `X-Real-IP` gets that address as its peer. (Only loopback: a client
/// elsewhere cannot claim an address. One on this machine could, but still meets each
/// account's lockout.)
pub(crate) async fn proxied_client<S>(
    axum::extract::State(console): axum::extract::State<std::sync::Arc<Console<S>>>,
    mut request: Request,
    next: Next,
) -> Response {
    if console.behind_proxy {
        let peer = request
            .extensions()
            .get::<ConnectInfo<SocketAddr>>()
            .map(|info| info.0);
        let stated = request
            .headers()
            .get("x-real-ip")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<IpAddr>().ok());
        if let (Some(peer), Some(client)) = (peer, stated)
            && peer.ip().is_loopback()
        {
            request
                .extensions_mut()
                .insert(ConnectInfo(SocketAddr::new(client, peer.port())));
        }
    }
    next.run(request).await
}

pub(crate) fn client_ip(request_extensions: &http::Extensions) -> IpAddr {
    request_extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|info| info.0.ip())
        .unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST))
}

pub(crate) fn user_agent(headers: &HeaderMap) -> String {
    headers
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .chars()
        .take(200)
        .collect()
}

/// The session cookie's name: `__Host-` when served over HTTPS, which the browser then binds
/// to this host and path and sends only over TLS.
pub(crate) fn session_cookie<S>(console: &Console<S>) -> &'static str {
    if console.secure_cookies {
        "__Host-berth_session"
    } else {
        "berth_session"
    }
}

pub(crate) fn login_cookie<S>(console: &Console<S>) -> &'static str {
    if console.secure_cookies {
        "__Host-berth_login"
    } else {
        "berth_login"
    }
}

pub(crate) fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value)
}

/// A `Set-Cookie` value: HttpOnly and SameSite=Strict always, Secure over HTTPS; `None`
/// clears it.
pub(crate) fn set_cookie<S>(console: &Console<S>, name: &str, value: Option<&str>) -> HeaderValue {
    let secure = if console.secure_cookies {
        "; Secure"
    } else {
        ""
    };
    let text = match value {
        Some(value) => format!("{name}={value}; Path=/; HttpOnly; SameSite=Strict{secure}"),
        None => format!("{name}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0{secure}"),
    };
    HeaderValue::from_str(&text).unwrap_or(HeaderValue::from_static("berth_session=; Max-Age=0"))
}

/// A logged-in request.
pub(crate) struct Signed {
    pub session: SessionRecord,
    pub user: UserRecord,
    pub as_user: ConsoleUser,
}

/// The request's live session, or a redirect to the login page.
// The error is the answer itself (a redirect or a page), returned once per request.
#[allow(clippy::result_large_err)]
pub(crate) fn signed<S: AccountStore>(
    console: &Console<S>,
    headers: &HeaderMap,
    ip: IpAddr,
    path: &str,
) -> Result<Signed, Response> {
    let to_login = || {
        let next = if path.starts_with('/') && !path.starts_with("//") {
            path
        } else {
            "/"
        };
        Redirect::to(&format!("/login?next={}", view::query_escape(next))).into_response()
    };
    let Some(cookie) = cookie(headers, session_cookie(console)) else {
        return Err(to_login());
    };
    match accounts::session_user(
        &*console.accounts,
        &console.settings,
        cookie,
        jiff::Timestamp::now().as_millisecond(),
    ) {
        Ok(Some((_, user)))
            if user.totp_secret.is_none()
                && !path.starts_with("/account")
                && accounts::two_factor_required(&*console.accounts).unwrap_or(false) =>
        {
            Err(Redirect::to("/account").into_response())
        }
        Ok(Some((session, user))) => Ok(Signed {
            as_user: ConsoleUser {
                name: user.name.clone(),
                role: user.role,
                ip: ip.to_string(),
            },
            session,
            user,
        }),
        Ok(None) => Err(to_login()),
        Err(error) => Err(view::message(
            StatusCode::INTERNAL_SERVER_ERROR,
            "The console cannot read its sessions",
            &error.to_string(),
            None,
        )),
    }
}

/// The CSRF check of a state-changing form: its token must be the session's.
#[allow(clippy::result_large_err)]
pub(crate) fn check_csrf(signed: &Signed, presented: &str) -> Result<(), Response> {
    if accounts::csrf_matches(&signed.session, presented) {
        Ok(())
    } else {
        Err(forbidden_form())
    }
}

/// The top bar of a logged-in page.
pub(crate) fn nav(signed: &Signed) -> Nav {
    Nav {
        user: signed.user.name.clone(),
        role: signed.user.role.to_string(),
        csrf: signed.session.csrf.clone(),
        admin: signed.user.role == Role::Admin,
        deployer: signed.user.role >= Role::Deployer,
    }
}

/// Where to go after login: only a path on this console, never `//elsewhere` or a scheme.
pub(crate) fn safe_next(next: Option<&str>) -> String {
    match next {
        // A path of plain characters only: no `//host`, no scheme, no backslash, and no tab or
        // newline, which browsers drop from a Location (`/\t/evil.example` is `//evil.example`).
        Some(path)
            if path.starts_with('/')
                && !path.starts_with("//")
                && path.len() <= 512
                && path
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"/_.-~?=&%+".contains(&b)) =>
        {
            path.to_owned()
        }
        _ => "/".to_owned(),
    }
}

/// A state-changing request: its session, with its form's CSRF token checked first.
#[allow(clippy::result_large_err)]
pub(crate) fn posted<S: AccountStore>(
    console: &Console<S>,
    headers: &HeaderMap,
    extensions: &http::Extensions,
    back: &str,
    csrf: &str,
) -> Result<Signed, Response> {
    let signed = signed(console, headers, client_ip(extensions), back)?;
    check_csrf(&signed, csrf)?;
    Ok(signed)
}

/// A redirect that sets the session cookie (`Some`) or clears it (`None`); after a login it
/// also clears the login form's own cookie.
pub(crate) fn redirect_with_session<S>(
    console: &Console<S>,
    to: &str,
    session: Option<&str>,
) -> axum::response::Response {
    let mut response = Redirect::to(to).into_response();
    let headers = response.headers_mut();
    headers.append(
        header::SET_COOKIE,
        set_cookie(console, session_cookie(console), session),
    );
    if session.is_some() {
        headers.append(
            header::SET_COOKIE,
            set_cookie(console, login_cookie(console), None),
        );
    }
    response
}

/// A form that carries nothing but its CSRF token.
#[derive(serde::Deserialize)]
pub(crate) struct CsrfForm {
    #[serde(default)]
    pub csrf: String,
}

/// An API refusal as a page: 403 stays 403 (a viewer pressing deploy), and so on.
pub(crate) fn refused(signed: &Signed, error: crate::api::Refused) -> axum::response::Response {
    view::refused(Some(nav(signed)), error)
}

pub(crate) fn not_found(what: &str) -> axum::response::Response {
    view::message(
        StatusCode::NOT_FOUND,
        "Not found",
        &format!("There is no such {what}."),
        None,
    )
}

/// A name that may go into an API path: an app's, a service's (lower-case letters, digits,
/// `-` and `_`); anything else is no such thing, and never reaches another route.
pub(crate) fn valid_app(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_next_page_after_login_stays_on_this_console() {
        assert_eq!(safe_next(Some("/apps/shop")), "/apps/shop");
        assert_eq!(safe_next(Some("//evil.example/")), "/");
        assert_eq!(safe_next(Some("https://evil.example/")), "/");
        assert_eq!(safe_next(Some("/\\evil.example")), "/");
        assert_eq!(safe_next(Some("/\t/evil.example")), "/");
        assert_eq!(
            safe_next(Some("/audit?user=alice&page=2")),
            "/audit?user=alice&page=2"
        );
        assert_eq!(safe_next(None), "/");
    }
}
