//! The one body type flowing through the proxy: an enum rather than a box, so no request or
//! response pays an allocation for it.

use crate::BoxError;
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use std::pin::Pin;
use std::task::{Context, Poll};

pub struct ProxyBody {
    kind: Kind,
    /// Keeps the request counted as in progress on its client connection until the
    /// response body is done with (see `admission`).
    _activity: Option<crate::RequestActivity>,
}

// The response body lives in one place for its whole life; boxing the large variant would
// bring back the allocation this type exists to avoid.
#[allow(clippy::large_enum_variant)]
enum Kind {
    Empty,
    Full(Option<Bytes>),
    /// A client's request body on its way upstream, within the route's size limit.
    Upload(http_body_util::Limited<Incoming>),
    /// An upstream's response on its way to the client.
    Tracked(crate::TrackedBody),
}

impl ProxyBody {
    fn of(kind: Kind) -> Self {
        Self {
            kind,
            _activity: None,
        }
    }

    /// Ties the request's activity to this response body.
    pub(crate) fn hold(&mut self, activity: crate::RequestActivity) {
        self._activity = Some(activity);
    }

    pub(crate) fn empty() -> Self {
        ProxyBody::of(Kind::Empty)
    }

    pub(crate) fn full(bytes: impl Into<Bytes>) -> Self {
        ProxyBody::of(Kind::Full(Some(bytes.into())))
    }

    pub(crate) fn upload(body: http_body_util::Limited<Incoming>) -> Self {
        ProxyBody::of(Kind::Upload(body))
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
        match &mut self.kind {
            Kind::Empty => Poll::Ready(None),
            Kind::Full(bytes) => Poll::Ready(
                bytes
                    .take()
                    .filter(|b| !b.is_empty())
                    .map(|b| Ok(Frame::data(b))),
            ),
            Kind::Upload(body) => Pin::new(body).poll_frame(cx),
            Kind::Tracked(body) => Pin::new(body).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Empty => true,
            Kind::Full(bytes) => bytes.as_ref().is_none_or(Bytes::is_empty),
            Kind::Upload(body) => body.is_end_stream(),
            Kind::Tracked(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Empty => SizeHint::with_exact(0),
            Kind::Full(bytes) => SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64)),
            Kind::Upload(body) => body.size_hint(),
            Kind::Tracked(body) => body.size_hint(),
        }
    }
}
