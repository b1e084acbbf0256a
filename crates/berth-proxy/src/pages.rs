//! Error responses the proxy produces itself. They say what happened without exposing
//! internal addresses.

use crate::ProxyBody;
use http::{Response, StatusCode, header};
use std::time::Duration;

fn page(status: StatusCode, title: &str, detail: &str) -> Response<ProxyBody> {
    page_html(status, title, &format!("<p>{}</p>", escape(detail)))
}

/// A page whose body is `body_html`, markup the caller escaped.
fn page_html(status: StatusCode, title: &str, body_html: &str) -> Response<ProxyBody> {
    let html = format!(
        "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>{code} {title}</title></head>\
         <body style=\"font-family:system-ui,sans-serif;max-width:40em;margin:4em auto\">\
         <h1>{code} {title}</h1>{body_html}<hr><p><small>berth</small></p></body></html>\n",
        code = status.as_u16(),
        title = escape(title),
    );
    let mut response = Response::new(ProxyBody::full(html));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/html; charset=utf-8"),
    );
    headers.insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-store"),
    );
    headers.insert("x-berth-error", header::HeaderValue::from_static("1"));
    response
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

pub(crate) fn no_route(host: &str) -> Response<ProxyBody> {
    page(
        StatusCode::NOT_FOUND,
        "Not Found",
        &format!("No app is routed for the host \u{201c}{host}\u{201d} at this path."),
    )
}

pub(crate) fn bad_gateway(app: &str, service: &str, cause: &str) -> Response<ProxyBody> {
    tracing::warn!(app, service, cause, "no upstream accepted the request");
    page(
        StatusCode::BAD_GATEWAY,
        "Bad Gateway",
        &format!("The {service} service of {app} could not be reached."),
    )
}

pub(crate) fn gateway_timeout(app: &str, service: &str, after: Duration) -> Response<ProxyBody> {
    page(
        StatusCode::GATEWAY_TIMEOUT,
        "Gateway Timeout",
        &format!(
            "The {service} service of {app} did not answer within {} seconds.",
            after.as_secs()
        ),
    )
}

pub(crate) fn method_not_allowed(method: &str) -> Response<ProxyBody> {
    let mut response = page(
        StatusCode::METHOD_NOT_ALLOWED,
        "Method Not Allowed",
        &format!("{method} is not served here."),
    );
    response.headers_mut().insert(
        header::ALLOW,
        header::HeaderValue::from_static("GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS"),
    );
    response
}

pub(crate) fn text(status: StatusCode, body: String) -> Response<ProxyBody> {
    let mut response = Response::new(ProxyBody::full(body));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain"),
    );
    response
}

pub(crate) fn redirect(target: &str) -> Response<ProxyBody> {
    let mut response = page(
        StatusCode::PERMANENT_REDIRECT,
        "Permanent Redirect",
        &format!("This site is served at {target}."),
    );
    if let Ok(location) = header::HeaderValue::from_str(target) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    response.headers_mut().remove("x-berth-error");
    response
}

pub(crate) fn maintenance(app: &str, message: &str) -> Response<ProxyBody> {
    let detail = if message.is_empty() {
        format!("{app} is down for maintenance. Please try again soon.")
    } else {
        message.to_owned()
    };
    let mut response = page(
        StatusCode::SERVICE_UNAVAILABLE,
        "Down for Maintenance",
        &detail,
    );
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, header::HeaderValue::from_static("120"));
    response
}

pub(crate) fn too_many_requests(wait: Duration) -> Response<ProxyBody> {
    let seconds = wait.as_secs_f64().ceil().max(1.0) as u64;
    let mut response = page(
        StatusCode::TOO_MANY_REQUESTS,
        "Too Many Requests",
        &format!("Slow down: try again in {seconds} s."),
    );
    if let Ok(value) = header::HeaderValue::from_str(&seconds.to_string()) {
        response.headers_mut().insert(header::RETRY_AFTER, value);
    }
    response
}

/// The route already serves as many requests as its `max_concurrent` allows.
pub(crate) fn at_capacity(app: &str) -> Response<ProxyBody> {
    let mut response = page(
        StatusCode::SERVICE_UNAVAILABLE,
        "Service Unavailable",
        &format!(
            "{app} is serving as many requests as it is set to take at once. Try again in a moment."
        ),
    );
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
    response
}

pub(crate) fn too_large(limit: u64) -> Response<ProxyBody> {
    let mut response = page(
        StatusCode::PAYLOAD_TOO_LARGE,
        "Payload Too Large",
        &format!(
            "The request body is larger than this site accepts ({} bytes).",
            limit
        ),
    );
    response.headers_mut().insert(
        header::CONNECTION,
        header::HeaderValue::from_static("close"),
    );
    response
}

pub(crate) fn bad_request(problem: &str) -> Response<ProxyBody> {
    let mut response = page(StatusCode::BAD_REQUEST, "Bad Request", problem);
    response.headers_mut().insert(
        header::CONNECTION,
        header::HeaderValue::from_static("close"),
    );
    response
}

/// A redirect that makes the browser GET `target` (after a login hand-off, or to the login),
/// setting a cookie on the way when `cookie` is given.
pub(crate) fn see_other(target: &str, cookies: &[&str]) -> Response<ProxyBody> {
    let mut response = page(StatusCode::SEE_OTHER, "See Other", "Continue to the login.");
    let headers = response.headers_mut();
    if let Ok(location) = header::HeaderValue::from_str(target) {
        headers.insert(header::LOCATION, location);
    }
    for cookie in cookies {
        if let Ok(cookie) = header::HeaderValue::from_str(cookie) {
            headers.append(header::SET_COOKIE, cookie);
        }
    }
    headers.remove("x-berth-error");
    response
}

/// A request that is not a page load (a form post, an API call) with no login.
pub(crate) fn login_required() -> Response<ProxyBody> {
    let mut response = page(
        StatusCode::UNAUTHORIZED,
        "Unauthorized",
        "This page needs a berth console login: open it in a browser to log in, then try again.",
    );
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        header::HeaderValue::from_static("berth-console"),
    );
    response
}

/// Logged in, but not let in.
pub(crate) fn denied(reason: &str) -> Response<ProxyBody> {
    page(StatusCode::FORBIDDEN, "Forbidden", reason)
}

/// A route asks for a login and no console serves logins.
pub(crate) fn login_unavailable() -> Response<ProxyBody> {
    page(
        StatusCode::SERVICE_UNAVAILABLE,
        "Service Unavailable",
        "This page needs a berth console login, and the console is off: the server's operator can start it with berth agent --dashboard.",
    )
}

/// A login hand-off whose ticket was used already or expired (a reload, the back button).
pub(crate) fn login_link_spent(back_to: &str) -> Response<ProxyBody> {
    page_html(
        StatusCode::FORBIDDEN,
        "Login link used",
        &format!(
            "<p>This login link was used already or has expired.</p>\
             <p><a href=\"{}\">Open the page again</a> to log in.</p>",
            escape(back_to)
        ),
    )
}

/// The route's session ended.
pub(crate) fn logged_out(clear_cookie: &str) -> Response<ProxyBody> {
    let mut response = page(
        StatusCode::OK,
        "Logged out",
        "You are logged out of this site.",
    );
    if let Ok(cookie) = header::HeaderValue::from_str(clear_cookie) {
        response.headers_mut().insert(header::SET_COOKIE, cookie);
    }
    response.headers_mut().remove("x-berth-error");
    response
}

/// A route served over HTTPS only, asked over plain HTTP before its certificate came: nothing
/// (a login form, above all) is served in clear text meanwhile.
pub(crate) fn certificate_pending(host: &str) -> Response<ProxyBody> {
    let mut response = page(
        StatusCode::SERVICE_UNAVAILABLE,
        "Service Unavailable",
        &format!(
            "{host} is served over HTTPS only, and its certificate is not there yet. Try again in a minute."
        ),
    );
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, header::HeaderValue::from_static("60"));
    response
}

/// An app's public status page: nothing of anyone's but what the page says, no script, no
/// framing, cacheable for half a minute.
pub(crate) fn status_page(html: String) -> Response<ProxyBody> {
    let mut response = Response::new(ProxyBody::full(html));
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/html; charset=utf-8"),
    );
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        header::HeaderValue::from_static(
            "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
        ),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        header::HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        header::HeaderValue::from_static("no-referrer"),
    );
    headers.insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("public, max-age=30"),
    );
    response
}

/// A route with basic auth, asked without (right) credentials.
pub(crate) fn basic_required(app: &str) -> Response<ProxyBody> {
    let mut response = page(
        StatusCode::UNAUTHORIZED,
        "Unauthorized",
        "This page needs a user name and password.",
    );
    let realm: String = app
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
        .collect();
    if let Ok(value) =
        header::HeaderValue::from_str(&format!("Basic realm=\"{realm}\", charset=\"UTF-8\""))
    {
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, value);
    }
    response
}

/// A route with basic auth whose users cannot be read (their secret is not set).
pub(crate) fn basic_unavailable() -> Response<ProxyBody> {
    page(
        StatusCode::SERVICE_UNAVAILABLE,
        "Service Unavailable",
        "This page's logins are not set up yet; the server's log says what is missing.",
    )
}
