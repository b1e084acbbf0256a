//! What every page shares: the top bar, times, the message page.

use askama::Template;
use axum::response::{Html, IntoResponse, Response};
use http::StatusCode;

/// What the top bar shows for a logged-in user.
pub(crate) struct Nav {
    pub user: String,
    pub role: String,
    pub csrf: String,
    pub admin: bool,
    pub deployer: bool,
}

/// A time as people read it, with its zone.
pub(crate) fn when(ms: i64) -> String {
    match jiff::Timestamp::from_millisecond(ms) {
        Ok(at) => at.strftime("%Y-%m-%d %H:%M:%S UTC").to_string(),
        Err(_) => "—".to_owned(),
    }
}

pub(crate) fn query_escape(text: &str) -> String {
    let mut out = String::new();
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.' | b'~' | b'/') {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

pub(crate) fn render(template: &impl Template, status: StatusCode) -> Response {
    match template.render() {
        Ok(html) => (status, Html(html)).into_response(),
        Err(error) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("the page could not be rendered: {error}"),
        )
            .into_response(),
    }
}

#[derive(Template)]
#[template(path = "message.html")]
pub(crate) struct MessagePage<'a> {
    pub nav: Option<Nav>,
    pub title: &'a str,
    pub message: &'a str,
    pub hint: Option<&'a str>,
}

pub(crate) fn message(status: StatusCode, title: &str, text: &str, hint: Option<&str>) -> Response {
    render(
        &MessagePage {
            nav: None,
            title,
            message: text,
            hint,
        },
        status,
    )
}

/// An API refusal as a page: 403 stays 403 (a viewer pressing deploy), and so on.
pub(crate) fn refused(nav: Option<Nav>, error: crate::api::Refused) -> Response {
    render(
        &MessagePage {
            nav,
            title: if error.status == StatusCode::FORBIDDEN {
                "Not allowed"
            } else {
                "That did not work"
            },
            message: &error.message,
            hint: error.hint.as_deref(),
        },
        error.status,
    )
}
