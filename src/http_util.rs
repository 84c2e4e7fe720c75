//! HTTP pieces every listener and the upstream client share: the body type,
//! small response builders, header hygiene, path checks and query parsing.
//! A leaf: it imports nothing else of Latch's.

pub mod headers;
pub mod path;
pub mod query;

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode};
use http_body_util::{combinators::BoxBody, BodyExt, Full};

/// Any error, boxed.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The error of a [`Body`]: a concrete type around [`BoxError`]. (With the
/// bare trait object as the error, rustc cannot prove handler futures
/// `Send` once a body is wrapped in `Limited`.)
#[derive(Debug)]
pub struct BodyError(pub BoxError);

impl std::fmt::Display for BodyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for BodyError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&*self.0)
    }
}

impl From<BoxError> for BodyError {
    fn from(e: BoxError) -> BodyError {
        BodyError(e)
    }
}

impl From<hyper::Error> for BodyError {
    fn from(e: hyper::Error) -> BodyError {
        BodyError(Box::new(e))
    }
}

/// The body type of every request handler, response and upstream request.
pub type Body = BoxBody<Bytes, BodyError>;

/// A whole body from bytes.
pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed()
}

/// A JSON response with the given status.
pub fn json(status: StatusCode, value: &serde_json::Value) -> Response<Body> {
    let mut resp = Response::new(full(value.to_string()));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

/// A request with its body boxed: what every handler takes, so tests can
/// hand one any body they like.
pub fn boxed_request<B>(req: Request<B>) -> Request<Body>
where
    B: http_body::Body<Data = Bytes> + Send + Sync + 'static,
    B::Error: Into<BoxError>,
{
    req.map(|b| b.map_err(|e| BodyError(e.into())).boxed())
}

/// A response body fed from a channel, one data frame per message (event
/// streams); it ends when the sender is dropped.
pub struct ChannelBody(pub tokio::sync::mpsc::Receiver<Bytes>);

impl http_body::Body for ChannelBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, BodyError>>> {
        self.0
            .poll_recv(cx)
            .map(|m| m.map(|b| Ok(http_body::Frame::data(b))))
    }
}
