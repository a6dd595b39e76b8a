//! The error of every fastconv operation: a shape, offset or slice that does not fit.

/// Errors from shape or slice mismatches.
#[derive(thiserror::Error, Debug, PartialEq)]
pub enum FastConvError {
    #[error("fastconv: {0}")]
    Shape(String),
}

pub(super) fn shape_err<T>(msg: impl Into<String>) -> Result<T, FastConvError> {
    Err(FastConvError::Shape(msg.into()))
}
