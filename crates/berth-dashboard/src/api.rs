//! The agent's API, called in-process as the logged-in user: the request carries a
//! [`ConsoleUser`] extension (which no network client can set), and the agent's access check
//! turns it into the scope of the user's role.

use axum::body::Body;
use berth_api::{ApiError, OperationEvent, Outcome};
use berth_auth::accounts::Role;
use http::{Method, Request, StatusCode};
use http_body_util::BodyExt;
use serde::de::DeserializeOwned;
use tower::ServiceExt;

/// Who a console request acts as, for the agent's access check and audit log.
#[derive(Debug, Clone)]
pub struct ConsoleUser {
    pub name: String,
    pub role: Role,
    /// The browser's address, for the audit log.
    pub ip: String,
}

/// An answer of the API that is not a success, as the user should read it.
#[derive(Debug, Clone)]
pub struct Refused {
    pub status: StatusCode,
    pub message: String,
    pub hint: Option<String>,
}

impl Refused {
    fn internal(message: impl Into<String>) -> Self {
        Refused {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            message: message.into(),
            hint: None,
        }
    }
}

/// Bodies larger than this are not read into a page.
const BODY_LIMIT: usize = 64 * 1024 * 1024;

async fn send(
    api: &axum::Router,
    user: &ConsoleUser,
    method: Method,
    path: &str,
    body: Option<serde_json::Value>,
) -> Result<(StatusCode, bytes::Bytes), Refused> {
    let mut request = Request::builder().method(method).uri(path);
    let body = match body {
        Some(json) => {
            request = request.header(http::header::CONTENT_TYPE, "application/json");
            Body::from(json.to_string())
        }
        None => Body::empty(),
    };
    let mut request = request
        .body(body)
        .map_err(|e| Refused::internal(format!("cannot build the request for {path}: {e}")))?;
    request.extensions_mut().insert(user.clone());
    let response = api
        .clone()
        .oneshot(request)
        .await
        .map_err(|e| Refused::internal(format!("{path} failed: {e}")))?;
    let status = response.status();
    let bytes = http_body_util::Limited::new(response.into_body(), BODY_LIMIT)
        .collect()
        .await
        .map_err(|e| Refused::internal(format!("cannot read the answer of {path}: {e}")))?
        .to_bytes();
    Ok((status, bytes))
}

fn refusal(status: StatusCode, bytes: &[u8]) -> Refused {
    match serde_json::from_slice::<ApiError>(bytes) {
        Ok(error) => Refused {
            status,
            message: error.message,
            hint: error.hint,
        },
        Err(_) => Refused {
            status,
            message: String::from_utf8_lossy(bytes).chars().take(500).collect(),
            hint: None,
        },
    }
}

/// A JSON answer.
pub async fn get<T: DeserializeOwned>(
    api: &axum::Router,
    user: &ConsoleUser,
    path: &str,
) -> Result<T, Refused> {
    call(api, user, Method::GET, path, None).await
}

pub async fn call<T: DeserializeOwned>(
    api: &axum::Router,
    user: &ConsoleUser,
    method: Method,
    path: &str,
    body: Option<serde_json::Value>,
) -> Result<T, Refused> {
    let (status, bytes) = send(api, user, method, path, body).await?;
    if !status.is_success() {
        return Err(refusal(status, &bytes));
    }
    // An empty answer (204) reads as JSON null.
    let bytes = if bytes.is_empty() {
        bytes::Bytes::from_static(b"null")
    } else {
        bytes
    };
    serde_json::from_slice(&bytes)
        .map_err(|e| Refused::internal(format!("the answer of {path} is not understood: {e}")))
}

/// What an operation (rollback, restart) did: its steps and its outcome.
pub struct Operation {
    pub events: Vec<OperationEvent>,
    pub outcome: Option<Outcome>,
}

/// Runs an operation to its end (the API streams its events; the page shows them all).
pub async fn operation(
    api: &axum::Router,
    user: &ConsoleUser,
    path: &str,
    body: serde_json::Value,
) -> Result<Operation, Refused> {
    let (status, bytes) = send(api, user, Method::POST, path, Some(body)).await?;
    if !status.is_success() {
        return Err(refusal(status, &bytes));
    }
    let mut events = Vec::new();
    let mut outcome = None;
    for line in bytes.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
        if let Ok(event) = serde_json::from_slice::<OperationEvent>(line) {
            if let OperationEvent::Finished(done) = &event {
                outcome = Some((**done).clone());
            }
            events.push(event);
        }
    }
    Ok(Operation { events, outcome })
}

/// The lines of an NDJSON answer read whole (logs without `follow`).
pub async fn lines(
    api: &axum::Router,
    user: &ConsoleUser,
    path: &str,
) -> Result<Vec<Vec<u8>>, Refused> {
    let (status, bytes) = send(api, user, Method::GET, path, None).await?;
    if !status.is_success() {
        return Err(refusal(status, &bytes));
    }
    Ok(bytes
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .map(<[u8]>::to_vec)
        .collect())
}

/// An answer that goes on (logs with `follow`): its body as it arrives.
pub async fn follow(
    api: &axum::Router,
    user: &ConsoleUser,
    path: &str,
) -> Result<axum::body::Body, Refused> {
    let mut request = Request::builder()
        .method(Method::GET)
        .uri(path)
        .body(Body::empty())
        .map_err(|e| Refused::internal(format!("cannot build the request for {path}: {e}")))?;
    request.extensions_mut().insert(user.clone());
    let response = api
        .clone()
        .oneshot(request)
        .await
        .map_err(|e| Refused::internal(format!("{path} failed: {e}")))?;
    let status = response.status();
    if !status.is_success() {
        let bytes = http_body_util::Limited::new(response.into_body(), 64 * 1024)
            .collect()
            .await
            .map(|c| c.to_bytes())
            .unwrap_or_default();
        return Err(refusal(status, &bytes));
    }
    Ok(response.into_body())
}

/// A body's lines as they complete; a line longer than 64 KiB is cut there.
pub fn split_lines(body: axum::body::Body) -> impl futures_util::Stream<Item = Vec<u8>> {
    use futures_util::StreamExt;
    const LONGEST: usize = 64 * 1024;
    let chunks = body.into_data_stream();
    futures_util::stream::unfold(
        (
            chunks,
            Vec::<u8>::new(),
            std::collections::VecDeque::<Vec<u8>>::new(),
        ),
        |(mut chunks, mut partial, mut ready)| async move {
            loop {
                if let Some(line) = ready.pop_front() {
                    return Some((line, (chunks, partial, ready)));
                }
                let chunk = chunks.next().await?.ok()?;
                for byte in chunk {
                    if byte == b'\n' {
                        ready.push_back(std::mem::take(&mut partial));
                    } else if partial.len() < LONGEST {
                        partial.push(byte);
                    }
                }
            }
        },
    )
    .filter(|line| std::future::ready(!line.is_empty()))
}
