//! The REST API under `/api/v1/`: uploads (`upscale`, `batch`) into the request path's shared
//! miss path (`pipeline::uploaded`), the info endpoints (`info`) and the OpenAPI document
//! (`openapi`). This module owns HTTP shapes only: multipart reading (`form`), the mapping of
//! form fields onto the URL option table (`fields`), JSON answers. Routing is
//! `routes.rs`.

pub mod batch;
pub mod fields;
pub mod form;
pub mod image_info;
pub mod info;
pub mod jobs;
pub mod openapi;
pub mod purge;
pub mod upscale;

use bytes::Bytes;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A request body the API can stream: hyper's `Incoming`, or any other body of `Bytes`.
pub trait RequestBody: http_body::Body<Data = Bytes, Error: Into<BoxError>> + Send + 'static {}

impl<B> RequestBody for B
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
}
