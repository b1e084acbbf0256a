//! Routes that only logged-in console users may open (`auth = "berth"`), checked at the edge
//! so the app never sees an anonymous request. The proxy knows nothing of accounts: a
//! [`LoginGate`] (the agent, over its state file) answers who a session cookie belongs to and
//! trades the console's one-time tickets for sessions. The session cookie is the proxy's own:
//! it is removed from the request before the app sees it, so an app cannot replay it, and the
//! user's name reaches the app in `X-Berth-User`, a header the proxy removes from every
//! client's request on every route.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

/// The header that tells the app who is logged in.
pub const USER_HEADER: HeaderName = HeaderName::from_static("x-berth-user");
/// The header that tells the app the user's console role.
pub const ROLE_HEADER: HeaderName = HeaderName::from_static("x-berth-role");

/// The session cookie over HTTPS: `__Host-` pins it to this host, path `/` and `Secure`.
pub const SECURE_COOKIE: &str = "__Host-berth-login";
/// The session cookie over plain HTTP (a local test or a route with `tls = "off"`).
pub const PLAIN_COOKIE: &str = "berth-login";

/// Where the browser lands with a console ticket, below the route's path.
pub const LOGIN_PATH: &str = "/.berth/login";
/// Ends the route's session, below the route's path.
pub const LOGOUT_PATH: &str = "/.berth/logout";

/// Who may open a route: console users with at least `role`, with a second factor when
/// `two_factor`. The role is the gate's to interpret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteAuth {
    pub role: String,
    pub two_factor: bool,
    /// HTTP basic auth against the users of this app secret, instead of a console login.
    pub basic: Option<String>,
}

/// What the gate says of a request's basic-auth credentials.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BasicVerdict {
    Allow {
        user: String,
    },
    /// None given, or wrong: ask again (401).
    Refused,
    /// Too many wrong ones: try again after this long.
    Locked(std::time::Duration),
    /// The users cannot be read (their secret is not set): 503, the detail in the log.
    Unavailable,
}

/// What the gate says of a request to a route with [`RouteAuth`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// A logged-in user who may open the route.
    Allow { user: String, role: String },
    /// No session, or one that ended: log in first.
    Login,
    /// Logged in, but not allowed (their role, or no second factor): the reason to show.
    Denied(String),
}

/// The agent's side of route logins. Calls may block on the state file: the proxy makes them
/// off its event loops.
pub trait LoginGate: Send + Sync + 'static {
    /// Whose session `cookie` is on `host`, and whether they may open a route asking `auth`.
    fn check(&self, host: &str, cookie: &str, auth: &RouteAuth) -> Verdict;
    /// Trades a console ticket for a session cookie value that opens `host`; `state` is the
    /// browser's login state cookie, which the ticket must have been issued for.
    fn redeem(
        &self,
        host: &str,
        ticket: &str,
        state: &str,
        client_ip: &str,
        user_agent: &str,
    ) -> Option<String>;
    /// Ends the session `cookie` names.
    fn logout(&self, cookie: &str);
    /// Checks a request's `Authorization` header (if any) against the users in secret
    /// `users_secret` of `app`.
    fn check_basic(
        &self,
        app: &str,
        users_secret: &str,
        authorization: Option<&str>,
        client_ip: &str,
    ) -> BasicVerdict;
    /// The console page that logs the browser in and sends it back to a whole URL, given
    /// percent-encoded for a query parameter (`return_to`), with the browser's login `state`;
    /// `None` while no console serves logins.
    fn login_url(&self, return_to: &str, state: &str) -> Option<String>;
}

/// The login state cookie: set on the way to the console, and required back with the ticket,
/// so a ticket someone else obtained cannot log this browser in as them.
pub const STATE_COOKIE: &str = "berth-login-state";

fn cookie_pairs(value: &[u8]) -> impl Iterator<Item = (&[u8], &[u8])> {
    value.split(|b| *b == b';').filter_map(|pair| {
        let pair = pair.trim_ascii();
        let at = pair.iter().position(|b| *b == b'=')?;
        Some((&pair[..at], &pair[at + 1..]))
    })
}

/// A cookie's value among the request's `Cookie` headers, read as bytes (another cookie that
/// is not text must not hide this one).
pub(crate) fn request_cookie(headers: &HeaderMap, wanted: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .flat_map(|v| cookie_pairs(v.as_bytes()))
        .find(|(name, _)| *name == wanted.as_bytes())
        .and_then(|(_, value)| std::str::from_utf8(value).ok())
        .map(|value| value.trim_matches('"').to_owned())
}

/// The value of the route session cookie among the request's `Cookie` headers.
pub(crate) fn session_cookie(headers: &HeaderMap, https: bool) -> Option<String> {
    request_cookie(headers, if https { SECURE_COOKIE } else { PLAIN_COOKIE })
}

fn ours(name: &[u8]) -> bool {
    name == SECURE_COOKIE.as_bytes()
        || name == PLAIN_COOKIE.as_bytes()
        || name == STATE_COOKIE.as_bytes()
}

/// Whether the request carries any of the proxy's login cookies (a cheap look first: nearly
/// every request carries none).
pub(crate) fn carries_login_cookies(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::COOKIE)
        .iter()
        .any(|v| v.as_bytes().windows(11).any(|w| w == b"berth-login"))
}

/// Removes the proxy's login cookies from the request, keeping every other cookie byte for
/// byte. Done on every route: no app is ever sent a login of the host.
pub(crate) fn strip_session_cookie(headers: &mut HeaderMap) {
    if !carries_login_cookies(headers) {
        return;
    }
    let values: Vec<HeaderValue> = headers.get_all(header::COOKIE).iter().cloned().collect();
    headers.remove(header::COOKIE);
    for value in values {
        let kept: Vec<&[u8]> = value
            .as_bytes()
            .split(|b| *b == b';')
            .map(<[u8]>::trim_ascii)
            .filter(|pair| {
                let name = pair.split(|b| *b == b'=').next().unwrap_or_default();
                !pair.is_empty() && !ours(name)
            })
            .collect();
        if kept.is_empty() {
            continue;
        }
        if let Ok(value) = HeaderValue::from_bytes(&kept.join(&b"; "[..])) {
            headers.append(header::COOKIE, value);
        }
    }
}

/// Removes any `Set-Cookie` of the proxy's login cookies from an app's response: an app may
/// not log its visitors in (or out) as someone.
pub(crate) fn strip_login_set_cookie(headers: &mut HeaderMap) {
    let touches = headers.get_all(header::SET_COOKIE).iter().any(|v| {
        let name = v
            .as_bytes()
            .split(|b| *b == b'=')
            .next()
            .unwrap_or_default();
        ours(name.trim_ascii())
    });
    if !touches {
        return;
    }
    let kept: Vec<HeaderValue> = headers
        .get_all(header::SET_COOKIE)
        .iter()
        .filter(|v| {
            let name = v
                .as_bytes()
                .split(|b| *b == b'=')
                .next()
                .unwrap_or_default();
            !ours(name.trim_ascii())
        })
        .cloned()
        .collect();
    headers.remove(header::SET_COOKIE);
    for value in kept {
        headers.append(header::SET_COOKIE, value);
    }
}

/// A fresh login state: 128 random bits, hex.
pub(crate) fn new_state() -> String {
    let bytes: [u8; 16] = rand::random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The `Set-Cookie` of a login state: this host, ten minutes (a login and a code, with time).
pub(crate) fn set_state_cookie(state: &str, https: bool) -> String {
    cookie(STATE_COOKIE, state, https, Some(600))
}

/// Ends the login state once it was used.
pub(crate) fn clear_state_cookie(https: bool) -> String {
    cookie(STATE_COOKIE, "", https, Some(0))
}

/// A `Set-Cookie` value of the proxy's: this host and every path, no script, `Lax`.
fn cookie(name: &str, value: &str, https: bool, max_age: Option<u32>) -> String {
    let secure = if https { "; Secure" } else { "" };
    let max_age = max_age
        .map(|seconds| format!("; Max-Age={seconds}"))
        .unwrap_or_default();
    format!("{name}={value}; Path=/; HttpOnly; SameSite=Lax{secure}{max_age}")
}

/// Whether a session cookie's value is worth looking up (the form the agent issues).
pub(crate) fn plausible_session(value: &str) -> bool {
    value.len() == 64 && value.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The `Set-Cookie` value that carries a new route session (or ends one, when `value` is
/// empty). `Lax`, not `Strict`: the browser arrives from the console, another site, and a
/// strict cookie set on that navigation would not be sent on the redirect that follows it.
pub(crate) fn set_cookie(value: &str, https: bool) -> String {
    let name = if https { SECURE_COOKIE } else { PLAIN_COOKIE };
    cookie(name, value, https, value.is_empty().then_some(0))
}

/// A path on this host to go back to after a login: one that starts with a single `/`, so
/// the login cannot send the browser elsewhere.
pub(crate) fn local_target(target: &str) -> Option<&str> {
    let local = target.starts_with('/')
        && !target.starts_with("//")
        && !target.starts_with("/\\")
        && !target.chars().any(|c| c.is_control());
    local.then_some(target)
}

/// One query parameter, percent-decoded.
pub(crate) fn query_param(query: &str, name: &str) -> Option<String> {
    query
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| percent_decode(value))
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match (bytes[i], bytes.get(i + 1), bytes.get(i + 2)) {
            (b'%', Some(&high), Some(&low)) if hex(high).is_some() && hex(low).is_some() => {
                let value = hex(high).unwrap_or(0) * 16 + hex(low).unwrap_or(0);
                out.push(value as u8);
                i += 3;
            }
            (b'+', _, _) => {
                out.push(b' ');
                i += 1;
            }
            (byte, _, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Percent-encodes a whole URL for a query parameter.
pub(crate) fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len() * 3);
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.' | b'~') {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// A header value for the user's name or role (names are plain ASCII; anything else is left
/// out rather than passed on).
pub(crate) fn header_value(text: &str) -> Option<HeaderValue> {
    HeaderValue::from_str(text).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cookies(values: &[&str]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for value in values {
            headers.append(header::COOKIE, HeaderValue::from_str(value).unwrap());
        }
        headers
    }

    #[test]
    fn the_session_cookie_is_read_by_scheme_and_never_passed_on() {
        let mut headers = cookies(&[
            "a=1; berth-login=abc; b=2; berth-login-state=s",
            "__Host-berth-login=def",
        ]);
        // A cookie that is not text (an app's `name=José`) hides nothing.
        headers.append(
            header::COOKIE,
            HeaderValue::from_bytes(b"name=Jos\xc3\xa9").unwrap(),
        );
        assert_eq!(session_cookie(&headers, false).as_deref(), Some("abc"));
        assert_eq!(session_cookie(&headers, true).as_deref(), Some("def"));
        assert_eq!(request_cookie(&headers, STATE_COOKIE).as_deref(), Some("s"));
        strip_session_cookie(&mut headers);
        let left: Vec<_> = headers
            .get_all(header::COOKIE)
            .iter()
            .map(|v| v.as_bytes().to_vec())
            .collect();
        assert_eq!(
            left,
            vec![b"a=1; b=2".to_vec(), b"name=Jos\xc3\xa9".to_vec()]
        );
        let mut answer = HeaderMap::new();
        answer.append(header::SET_COOKIE, HeaderValue::from_static("app=1"));
        answer.append(
            header::SET_COOKIE,
            HeaderValue::from_static("__Host-berth-login=x; Path=/"),
        );
        answer.append(
            header::SET_COOKIE,
            HeaderValue::from_static("berth-login-state=y"),
        );
        strip_login_set_cookie(&mut answer);
        let kept: Vec<_> = answer.get_all(header::SET_COOKIE).iter().collect();
        assert_eq!(kept, vec![HeaderValue::from_static("app=1")]);
        let mut only_ours = cookies(&["berth-login=abc"]);
        strip_session_cookie(&mut only_ours);
        assert!(only_ours.get(header::COOKIE).is_none());
    }

    #[test]
    fn a_login_goes_back_only_to_a_path_on_the_same_host() {
        assert_eq!(local_target("/admin?x=1"), Some("/admin?x=1"));
        assert_eq!(local_target("//evil.test/"), None);
        assert_eq!(local_target("/\\evil.test/"), None);
        assert_eq!(local_target("https://evil.test/"), None);
        assert_eq!(local_target("/a\nb"), None);
    }

    #[test]
    fn query_parameters_round_trip_through_percent_encoding() {
        let url = "http://admin.test:8080/a b?x=1&y=é";
        let query = format!("to={}&ticket=t", percent_encode(url));
        assert_eq!(query_param(&query, "to").as_deref(), Some(url));
        assert_eq!(query_param(&query, "ticket").as_deref(), Some("t"));
        assert_eq!(query_param("to=%zz%4", "to").as_deref(), Some("%zz%4"));
    }

    #[test]
    fn cookies_are_host_only_http_only_and_lax() {
        assert_eq!(
            set_cookie("abc", true),
            "__Host-berth-login=abc; Path=/; HttpOnly; SameSite=Lax; Secure"
        );
        assert_eq!(
            set_cookie("", false),
            "berth-login=; Path=/; HttpOnly; SameSite=Lax; Max-Age=0"
        );
    }
}
