//! The one body type flowing through the proxy: an enum rather than a box, so no request or
//! response pays an allocation for it.

use crate::BoxError;
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::task::{Context, Poll};

pub struct ProxyBody {
    kind: Kind,
    /// Keeps the request counted as in progress on its client connection until the
    /// response body is done with, and tells it when the client takes more (see
    /// `admission`).
    activity: Option<crate::RequestActivity>,
}

// The response body lives in one place for its whole life; boxing the large variant would
// bring back the allocation this type exists to avoid.
#[allow(clippy::large_enum_variant)]
enum Kind {
    Empty,
    Full(Option<Bytes>),
    /// A client's request body on its way upstream, within the route's size limit; why it
    /// failed, if it did, is noted for the response.
    Upload(http_body_util::Limited<Incoming>, Arc<ClientBodyFault>),
    /// An upstream's response on its way to the client.
    Tracked(crate::TrackedBody),
}

impl ProxyBody {
    fn of(kind: Kind) -> Self {
        Self {
            kind,
            activity: None,
        }
    }

    /// Ties the request's activity to this response body.
    pub(crate) fn hold(&mut self, activity: crate::RequestActivity) {
        self.activity = Some(activity);
    }

    pub(crate) fn empty() -> Self {
        ProxyBody::of(Kind::Empty)
    }

    pub(crate) fn full(bytes: impl Into<Bytes>) -> Self {
        ProxyBody::of(Kind::Full(Some(bytes.into())))
    }

    pub(crate) fn upload(
        body: http_body_util::Limited<Incoming>,
        fault: Arc<ClientBodyFault>,
    ) -> Self {
        ProxyBody::of(Kind::Upload(body, fault))
    }

    pub(crate) fn tracked(body: crate::TrackedBody) -> Self {
        ProxyBody::of(Kind::Tracked(body))
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let polled = match &mut self.kind {
            Kind::Empty => Poll::Ready(None),
            Kind::Full(bytes) => Poll::Ready(
                bytes
                    .take()
                    .filter(|b| !b.is_empty())
                    .map(|b| Ok(Frame::data(b))),
            ),
            Kind::Upload(body, fault) => {
                let polled = Pin::new(body).poll_frame(cx);
                if let Poll::Ready(Some(Err(error))) = &polled {
                    fault.note(error.is::<http_body_util::LengthLimitError>());
                }
                polled
            }
            Kind::Tracked(body) => Pin::new(body).poll_frame(cx),
        };
        if let Some(activity) = self.activity.as_mut() {
            activity.body_polled(matches!(polled, Poll::Ready(Some(Ok(_)))));
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Empty => true,
            Kind::Full(bytes) => bytes.as_ref().is_none_or(Bytes::is_empty),
            Kind::Upload(body, _) => body.is_end_stream(),
            Kind::Tracked(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Empty => SizeHint::with_exact(0),
            Kind::Full(bytes) => SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64)),
            Kind::Upload(body, _) => body.size_hint(),
            Kind::Tracked(body) => body.size_hint(),
        }
    }
}

/// Whether a client's request body failed on its way upstream, and how: the client's fault,
/// answered 413 or 400, never a 502 blamed on the upstream.
#[derive(Default)]
pub(crate) struct ClientBodyFault(AtomicU8);

/// What went wrong with a client's request body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BodyFault {
    /// Over the route's `max_body`.
    TooLarge,
    /// Malformed (bad chunked framing) or cut short (the client went away).
    Broken,
}

impl ClientBodyFault {
    fn note(&self, too_large: bool) {
        self.0
            .store(if too_large { 1 } else { 2 }, Ordering::Release);
    }

    pub(crate) fn get(&self) -> Option<BodyFault> {
        match self.0.load(Ordering::Acquire) {
            1 => Some(BodyFault::TooLarge),
            2 => Some(BodyFault::Broken),
            _ => None,
        }
    }
}
