//! Error classes and the one table that maps them to HTTP statuses.
//!
//! Every stage has its own error enum (in its own module) that answers `class()`; this module
//! owns `ErrorClass`, its status and stable machine-readable code, and the `ProxyError` that the
//! request path carries to the edge, where `respond::error` turns it into a response. Nothing
//! else decides a status code for a failure.

use http::StatusCode;
use std::time::Duration;

/// What kind of failure happened, independent of which stage saw it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorClass {
    /// The URL or a parameter is malformed or out of range.
    BadRequest,
    /// Signature missing or wrong, or the API key is not accepted.
    Forbidden,
    /// The API needs a key that was not given.
    Unauthorized,
    /// The source (or stored result) does not exist.
    NotFound,
    /// Wrong HTTP method for the route.
    MethodNotAllowed,
    /// The request path is over the configured limit.
    UriTooLong,
    /// Source bytes, source pixels or output pixels over a limit.
    TooLarge,
    /// Not an image, or an image format we do not read.
    Unsupported,
    /// An image that claims a supported format but cannot be decoded (truncated, corrupt).
    Unprocessable,
    /// The client did not send its request body in time.
    RequestTimeout,
    /// Too many requests from this client.
    RateLimited,
    /// The origin failed.
    Upstream,
    /// The origin or the whole request ran past its deadline.
    Timeout,
    /// The inference queue is full; retry later.
    Overloaded,
    /// A bug or an unexpected failure on our side.
    Internal,
}

impl ErrorClass {
    /// The only status table.
    pub fn status(self) -> StatusCode {
        match self {
            ErrorClass::BadRequest => StatusCode::BAD_REQUEST,
            ErrorClass::Unauthorized => StatusCode::UNAUTHORIZED,
            ErrorClass::Forbidden => StatusCode::FORBIDDEN,
            ErrorClass::NotFound => StatusCode::NOT_FOUND,
            ErrorClass::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ErrorClass::UriTooLong => StatusCode::URI_TOO_LONG,
            ErrorClass::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ErrorClass::Unsupported => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ErrorClass::Unprocessable => StatusCode::UNPROCESSABLE_ENTITY,
            ErrorClass::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            ErrorClass::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            ErrorClass::Upstream => StatusCode::BAD_GATEWAY,
            ErrorClass::Timeout => StatusCode::GATEWAY_TIMEOUT,
            ErrorClass::Overloaded => StatusCode::SERVICE_UNAVAILABLE,
            ErrorClass::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// Stable code for JSON error bodies and metrics labels.
    pub fn code(self) -> &'static str {
        match self {
            ErrorClass::BadRequest => "bad_request",
            ErrorClass::Unauthorized => "unauthorized",
            ErrorClass::Forbidden => "forbidden",
            ErrorClass::NotFound => "not_found",
            ErrorClass::MethodNotAllowed => "method_not_allowed",
            ErrorClass::UriTooLong => "uri_too_long",
            ErrorClass::TooLarge => "too_large",
            ErrorClass::Unsupported => "unsupported_media_type",
            ErrorClass::Unprocessable => "unprocessable_image",
            ErrorClass::RequestTimeout => "request_timeout",
            ErrorClass::RateLimited => "rate_limited",
            ErrorClass::Upstream => "upstream_error",
            ErrorClass::Timeout => "timeout",
            ErrorClass::Overloaded => "overloaded",
            ErrorClass::Internal => "internal",
        }
    }

    /// Whether the message may be shown to the client. Internal errors say "internal error".
    pub fn is_client_visible(self) -> bool {
        !matches!(self, ErrorClass::Internal)
    }
}

/// A failure on its way to the edge: a class, a message, and an optional retry hint.
#[derive(Debug, Clone)]
pub struct ProxyError {
    pub class: ErrorClass,
    pub message: String,
    pub retry_after: Option<Duration>,
    /// The methods a `MethodNotAllowed` route accepts (`Allow`); `GET, HEAD` when unset.
    pub allow: Option<&'static str>,
}

impl ProxyError {
    pub fn new(class: ErrorClass, message: impl Into<String>) -> Self {
        Self { class, message: message.into(), retry_after: None, allow: None }
    }

    /// A 405 for a route that accepts only `allow` (e.g. `"POST"`).
    pub fn method_not_allowed(allow: &'static str) -> Self {
        Self { allow: Some(allow), ..Self::new(ErrorClass::MethodNotAllowed, format!("use {allow}")) }
    }

    pub fn with_retry_after(mut self, after: Duration) -> Self {
        self.retry_after = Some(after);
        self
    }
}

impl std::fmt::Display for ProxyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.class.code(), self.message)
    }
}

/// Implemented by every stage error so the edge never matches through nested enums.
pub trait Classify: std::fmt::Display {
    fn class(&self) -> ErrorClass;
    fn retry_after(&self) -> Option<Duration> {
        None
    }
}

impl<E: Classify> From<E> for ProxyError {
    fn from(e: E) -> Self {
        ProxyError { class: e.class(), message: e.to_string(), retry_after: e.retry_after(), allow: None }
    }
}

impl Classify for crate::engine::InferError {
    fn class(&self) -> ErrorClass {
        match self {
            crate::engine::InferError::Cancelled => ErrorClass::Timeout,
            crate::engine::InferError::Input(_) => ErrorClass::BadRequest,
            crate::engine::InferError::Model(_) => ErrorClass::Internal,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_internal_errors_hide_their_message() {
        assert!(!ErrorClass::Internal.is_client_visible());
        assert!(ErrorClass::BadRequest.is_client_visible());
        assert_eq!(ErrorClass::Overloaded.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(ErrorClass::Unprocessable.status().as_u16(), 422);
    }
}
