//! The headers a request gets on its way upstream: hop-by-hop ones removed, and the client's
//! address, scheme and host stated by the edge (`X-Forwarded-*`, `X-Real-IP`, `Forwarded`).
//!
//! What depends only on the connection is worked out once per connection, and what depends on
//! the host once per connection and host, so a keep-alive client's requests copy prepared
//! values instead of formatting and allocating them each time.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");

const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
];

/// Headers a client may send that the edge states itself: never passed on as sent.
/// `X-Berth-User` and `X-Berth-Role` are among them on every route: an app behind a route with
/// `auth = "berth"` trusts them, and one without it must never see a client's forgery either.
const EDGE_STATED: [HeaderName; 7] = [
    X_FORWARDED_FOR,
    X_FORWARDED_HOST,
    X_FORWARDED_PROTO,
    X_REAL_IP,
    header::FORWARDED,
    crate::login::USER_HEADER,
    crate::login::ROLE_HEADER,
];

/// Fields a Connection header may name but never removes: what routes the request and what
/// frames its body are end-to-end, whatever a client claims.
const NEVER_CONNECTION_NAMED: [HeaderName; 2] = [header::HOST, header::CONTENT_LENGTH];

/// The headers a Connection header names (which are hop-by-hop too).
fn connection_named(headers: &HeaderMap) -> Vec<HeaderName> {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().to_ascii_lowercase().as_bytes()).ok())
        .filter(|name| !NEVER_CONNECTION_NAMED.contains(name))
        .collect()
}

/// Removes hop-by-hop headers (including any the Connection header names). `Upgrade` is kept
/// when the connection is being upgraded.
pub(crate) fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Most messages carry none of these: one pass over the names before hashing any.
    let present = headers
        .keys()
        .any(|name| name == header::UPGRADE || HOP_BY_HOP.contains(name));
    if !present {
        return;
    }
    let named = connection_named(headers);
    let upgrading = named.contains(&header::UPGRADE);
    for name in HOP_BY_HOP.iter().chain(named.iter()) {
        if upgrading && name == header::UPGRADE {
            continue;
        }
        headers.remove(name);
    }
    if upgrading {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    } else {
        headers.remove(header::UPGRADE);
    }
}

/// One client connection as forwarding headers name it.
pub(crate) struct ClientIdentity {
    ip: HeaderValue,
    /// The `for=` node of a Forwarded header (IPv6 quoted and bracketed).
    forwarded_node: String,
    scheme: &'static str,
    scheme_value: HeaderValue,
    /// The host of this connection's last request: a keep-alive connection nearly always
    /// asks for one host.
    last_host: Mutex<Option<Arc<RequestHost>>>,
}

/// A request's host: its name for routing and logs, and the header values that state it.
pub(crate) struct RequestHost {
    /// What the client sent (the Host header, or the URI's host for HTTP/2).
    pub(crate) sent: Box<str>,
    /// Lower-case, without the port.
    pub(crate) name: Arc<str>,
    /// `name` as a header value (Host for HTTP/2 requests, and X-Forwarded-Host).
    value: Option<HeaderValue>,
    forwarded: Option<HeaderValue>,
}

impl ClientIdentity {
    pub(crate) fn new(client: SocketAddr, scheme: &'static str) -> Self {
        let ip = client.ip().to_string();
        let forwarded_node = if client.is_ipv6() {
            format!("\"[{ip}]\"")
        } else {
            ip.clone()
        };
        Self {
            ip: HeaderValue::from_str(&ip).unwrap_or_else(|_| HeaderValue::from_static("unknown")),
            forwarded_node,
            scheme,
            scheme_value: HeaderValue::from_static(scheme),
            last_host: Mutex::new(None),
        }
    }

    /// `http` or `https`: how the client reached the edge.
    pub(crate) fn scheme(&self) -> &'static str {
        self.scheme
    }

    /// The host a request is for, given what it sent: prepared once per connection and host.
    pub(crate) fn host(&self, sent: &str) -> Arc<RequestHost> {
        let mut last = self.last_host.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(host) = last.as_ref().filter(|h| *h.sent == *sent) {
            return Arc::clone(host);
        }
        let name = super::strip_port(sent).to_ascii_lowercase();
        let forwarded = format!(
            "for={};proto={};host=\"{}\"",
            self.forwarded_node,
            self.scheme,
            quoted_string_content(&name)
        );
        let host = Arc::new(RequestHost {
            sent: sent.into(),
            value: HeaderValue::from_str(&name).ok(),
            forwarded: HeaderValue::from_str(&forwarded).ok(),
            name: Arc::from(name),
        });
        *last = Some(Arc::clone(&host));
        host
    }
}

/// `text` escaped for the inside of an RFC 9110 quoted-string (as in `Forwarded`'s `host=`),
/// so a value can never close the string and add parameters or elements of its own.
fn quoted_string_content(text: &str) -> std::borrow::Cow<'_, str> {
    if !text.contains(['"', '\\']) {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 4);
    for c in text.chars() {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    std::borrow::Cow::Owned(out)
}

/// An edge-stated header spelled with `_` for `-` (`X_Berth_User`): servers behind CGI-style
/// gateways read both spellings as one variable, so neither may pass.
fn edge_stated_with_underscores(name: &HeaderName) -> bool {
    let name = name.as_str();
    name.contains('_')
        && EDGE_STATED.iter().any(|stated| {
            let stated = stated.as_str();
            stated.len() == name.len()
                && stated
                    .bytes()
                    .zip(name.bytes())
                    .all(|(a, b)| a == b || (a == b'-' && b == b'_'))
        })
}

/// Makes a client's request headers fit to send upstream. berth is the edge: whatever a
/// client claims about earlier hops is replaced, never passed on.
pub(crate) fn prepare_request_headers(
    headers: &mut HeaderMap,
    host: &RequestHost,
    client: &ClientIdentity,
) {
    strip_hop_by_hop(headers);
    for name in &EDGE_STATED {
        headers.remove(name);
    }
    let spelled_otherwise: Vec<HeaderName> = headers
        .keys()
        .filter(|name| edge_stated_with_underscores(name))
        .cloned()
        .collect();
    for name in spelled_otherwise {
        headers.remove(name);
    }
    let sent_host = headers.contains_key(header::HOST);
    for_each_edge_header(sent_host, host, client, |name, value| {
        headers.insert(name.clone(), value.clone());
    });
}

/// What [`prepare_request_headers`] leaves, field by field, without changing the map: the
/// client's headers less hop-by-hop and edge-stated ones (an upgrade is never involved), then
/// the edge's own.
pub(crate) fn for_each_upstream_header(
    headers: &HeaderMap,
    host: &RequestHost,
    client: &ClientIdentity,
    mut emit: impl FnMut(&HeaderName, &HeaderValue),
) {
    // Compared in place rather than collected: browsers send `Connection: keep-alive` with
    // every HTTP/1.1 request, and this runs for each of them.
    let connection = headers.get_all(header::CONNECTION);
    let named_by_connection = |name: &HeaderName| {
        connection
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|token| token.trim().eq_ignore_ascii_case(name.as_str()))
            && !NEVER_CONNECTION_NAMED.contains(name)
    };
    for (name, value) in headers {
        let dropped = name == header::UPGRADE
            || HOP_BY_HOP.contains(name)
            || EDGE_STATED.contains(name)
            || edge_stated_with_underscores(name)
            || named_by_connection(name);
        if !dropped {
            emit(name, value);
        }
    }
    for_each_edge_header(headers.contains_key(header::HOST), host, client, emit);
}

/// The headers the edge states: Host (when the client sent none, as HTTP/2 clients do),
/// X-Forwarded-Host/-For/-Proto, X-Real-IP and Forwarded.
fn for_each_edge_header(
    sent_host: bool,
    host: &RequestHost,
    client: &ClientIdentity,
    mut emit: impl FnMut(&HeaderName, &HeaderValue),
) {
    if let Some(value) = &host.value {
        if !sent_host {
            emit(&header::HOST, value);
        }
        emit(&X_FORWARDED_HOST, value);
    }
    emit(&X_FORWARDED_FOR, &client.ip);
    emit(&X_REAL_IP, &client.ip);
    emit(&X_FORWARDED_PROTO, &client.scheme_value);
    if let Some(value) = &host.forwarded {
        emit(&header::FORWARDED, value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prepared(client: &str, scheme: &'static str, host: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert("x-forwarded-for", HeaderValue::from_static("6.6.6.6"));
        headers.insert("x-forwarded-host", HeaderValue::from_static("evil.test"));
        headers.insert(header::FORWARDED, HeaderValue::from_static("for=6.6.6.6"));
        let identity = ClientIdentity::new(client.parse().unwrap(), scheme);
        prepare_request_headers(&mut headers, &identity.host(host), &identity);
        headers
    }

    #[test]
    fn a_client_cannot_say_who_is_logged_in_on_any_route() {
        let mut headers = HeaderMap::new();
        headers.insert("x-berth-user", HeaderValue::from_static("admin"));
        headers.insert("x-berth-role", HeaderValue::from_static("admin"));
        headers.insert("x_berth_user", HeaderValue::from_static("admin"));
        headers.insert("x_forwarded_for", HeaderValue::from_static("6.6.6.6"));
        headers.insert("x-kept", HeaderValue::from_static("1"));
        let identity = ClientIdentity::new("10.0.0.1:5".parse().unwrap(), "http");
        let host = identity.host("a.test");
        let mut direct = Vec::new();
        for_each_upstream_header(&headers, &host, &identity, |name, _| {
            direct.push(name.as_str().to_owned())
        });
        assert!(direct.contains(&"x-kept".to_owned()));
        assert!(
            !direct.iter().any(|n| n.starts_with("x-berth-")),
            "{direct:?}"
        );
        prepare_request_headers(&mut headers, &host, &identity);
        assert!(headers.get("x-berth-user").is_none());
        assert!(headers.get("x-berth-role").is_none());
    }

    #[test]
    fn hop_by_hop_headers_are_removed_including_named_ones() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, X-Secret"),
        );
        headers.insert("x-secret", HeaderValue::from_static("1"));
        headers.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        headers.insert(header::UPGRADE, HeaderValue::from_static("h2c"));
        headers.insert("x-kept", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut headers);
        assert_eq!(headers.len(), 1, "{headers:?}");
        assert!(headers.contains_key("x-kept"));
    }

    #[test]
    fn connection_never_removes_host_or_content_length() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONNECTION,
            HeaderValue::from_static("Host, content-length, x-gone"),
        );
        headers.insert(header::HOST, HeaderValue::from_static("example.com"));
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from_static("3"));
        headers.insert("x-gone", HeaderValue::from_static("1"));
        let identity = ClientIdentity::new("10.0.0.1:1".parse().unwrap(), "http");
        let host = identity.host("example.com");
        let mut direct = Vec::new();
        for_each_upstream_header(&headers, &host, &identity, |name, _| {
            direct.push(name.clone())
        });
        assert!(direct.contains(&header::HOST), "{direct:?}");
        assert!(direct.contains(&header::CONTENT_LENGTH), "{direct:?}");
        assert!(!direct.iter().any(|n| n == "x-gone"), "{direct:?}");
        strip_hop_by_hop(&mut headers);
        assert_eq!(headers.get(header::HOST).unwrap(), "example.com");
        assert_eq!(headers.get(header::CONTENT_LENGTH).unwrap(), "3");
        assert!(!headers.contains_key("x-gone"));
    }

    #[test]
    fn a_host_cannot_add_elements_to_forwarded() {
        assert_eq!(quoted_string_content("example.com"), "example.com");
        assert_eq!(
            quoted_string_content(r#"x", for=6.6.6.6;host="y"#),
            r#"x\", for=6.6.6.6;host=\"y"#
        );
        let identity = ClientIdentity::new("10.0.0.1:1".parse().unwrap(), "http");
        let host = identity.host(r#"x", for=6.6.6.6;host="y"#);
        let forwarded = host.forwarded.as_ref().unwrap().to_str().unwrap();
        assert_eq!(
            forwarded,
            r#"for=10.0.0.1;proto=http;host="x\", for=6.6.6.6;host=\"y""#
        );
    }

    #[test]
    fn upgrade_headers_survive_an_upgrade() {
        let mut headers = HeaderMap::new();
        headers.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
        headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        assert!(super::super::is_upgrade(&headers));
        strip_hop_by_hop(&mut headers);
        assert_eq!(headers.get(header::UPGRADE).unwrap(), "websocket");
        assert_eq!(headers.get(header::CONNECTION).unwrap(), "upgrade");
    }

    #[test]
    fn forwarded_headers_replace_what_the_client_claimed() {
        let headers = prepared("10.1.2.3:5555", "https", "Example.com:8443");
        assert_eq!(headers.get("x-forwarded-for").unwrap(), "10.1.2.3");
        assert_eq!(headers.get("x-real-ip").unwrap(), "10.1.2.3");
        assert_eq!(headers.get("x-forwarded-host").unwrap(), "example.com");
        assert_eq!(headers.get("x-forwarded-proto").unwrap(), "https");
        assert_eq!(
            headers.get(header::FORWARDED).unwrap(),
            "for=10.1.2.3;proto=https;host=\"example.com\""
        );
        assert_eq!(
            headers.get(header::HOST).unwrap(),
            "example.com",
            "HTTP/2 requests get a Host header"
        );
    }

    #[test]
    fn ipv6_clients_are_quoted_in_forwarded() {
        let headers = prepared("[::1]:5555", "http", "example.com");
        assert_eq!(
            headers.get(header::FORWARDED).unwrap(),
            "for=\"[::1]\";proto=http;host=\"example.com\""
        );
        assert_eq!(headers.get("x-forwarded-for").unwrap(), "::1");
    }

    #[test]
    fn fields_written_directly_are_those_the_prepared_map_holds() {
        let identity = ClientIdentity::new("[2001:db8::7]:5555".parse().unwrap(), "https");
        let mut with_host = HeaderMap::new();
        for (name, value) in [
            ("host", "App.example:8443"),
            ("connection", "keep-alive, X-Secret"),
            ("x-secret", "1"),
            ("keep-alive", "timeout=5"),
            ("te", "trailers"),
            ("upgrade", "h2c"),
            ("x-forwarded-for", "6.6.6.6"),
            ("x-real-ip", "6.6.6.6"),
            ("forwarded", "for=6.6.6.6"),
            ("accept", "text/html"),
            ("cookie", "a=1"),
            ("cookie", "b=2"),
        ] {
            with_host.append(
                HeaderName::from_static(name),
                HeaderValue::from_static(value),
            );
        }
        let mut without_host = with_host.clone();
        without_host.remove(header::HOST);
        // A client's Host is passed on as sent; an HTTP/2 client's authority becomes one.
        for (client_headers, expected_host) in [
            (with_host, "App.example:8443"),
            (without_host, "app.example"),
        ] {
            let host = identity.host("App.example:8443");
            let mut written = Vec::new();
            for_each_upstream_header(&client_headers, &host, &identity, |name, value| {
                written.push((name.to_string(), value.clone()));
            });
            let mut prepared = client_headers.clone();
            prepare_request_headers(&mut prepared, &host, &identity);
            let mut expected: Vec<(String, HeaderValue)> = prepared
                .iter()
                .map(|(name, value)| (name.to_string(), value.clone()))
                .collect();
            written.sort_by(|a, b| a.0.cmp(&b.0).then(a.1.as_bytes().cmp(b.1.as_bytes())));
            expected.sort_by(|a, b| a.0.cmp(&b.0).then(a.1.as_bytes().cmp(b.1.as_bytes())));
            assert_eq!(written, expected);
            let hosts: Vec<&HeaderValue> = written
                .iter()
                .filter(|(n, _)| n == "host")
                .map(|(_, v)| v)
                .collect();
            assert_eq!(hosts, [expected_host]);
            assert!(
                !written
                    .iter()
                    .any(|(n, _)| n == "x-secret" || n == "upgrade" || n == "te")
            );
        }
    }

    #[test]
    fn a_connection_reuses_its_host_until_the_client_names_another() {
        let identity = ClientIdentity::new("10.1.2.3:5555".parse().unwrap(), "http");
        let first = identity.host("a.example");
        assert!(Arc::ptr_eq(&first, &identity.host("a.example")));
        let other = identity.host("B.example:80");
        assert_eq!(&*other.name, "b.example");
        let mut headers = HeaderMap::new();
        prepare_request_headers(&mut headers, &other, &identity);
        assert_eq!(
            headers.get(header::FORWARDED).unwrap(),
            "for=10.1.2.3;proto=http;host=\"b.example\""
        );
        assert!(!Arc::ptr_eq(&first, &identity.host("a.example")));
    }
}
