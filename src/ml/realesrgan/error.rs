//! The one error of loading a Real-ESRGAN-family model: each variant keeps its cause
//! (`source()`), so a caller can tell a bad file from a graph mismatch or a kernel failure.

use std::path::PathBuf;

use crate::ml::fastconv::FastConvError;
use crate::ml::ncnn::NcnnError;

#[derive(thiserror::Error, Debug)]
pub enum ModelError {
    /// A model file could not be read.
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    /// The `.param` is not text.
    #[error(".param is not UTF-8 text")]
    NotUtf8(#[source] std::str::Utf8Error),
    /// The `.param` or `.bin` is not a valid ncnn file.
    #[error(transparent)]
    Ncnn(#[from] NcnnError),
    /// The file's graph (or its weights) does not match what the network expects.
    #[error("{0}")]
    Graph(String),
    /// The graph check of one architecture failed (the cause says where).
    #[error("the graph is not {arch}: {source}")]
    NotArch { arch: String, source: Box<ModelError> },
    /// The fastconv path could not be built (the cause says why).
    #[error("fastconv: {0}")]
    FastPath(#[source] Box<ModelError>),
    /// A layer or device the fastconv path does not handle.
    #[error("{0}")]
    Unsupported(String),
    #[error(transparent)]
    FastConv(#[from] FastConvError),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}
