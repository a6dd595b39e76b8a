//! An `ObjectStore` whose every call ends within a time limit (`cache.store.timeout`).
//!
//! The result tier and the claims beside it sit on one store; a store that accepts connections
//! and never answers must cost a request a bounded delay, not its deadline. object_store's own
//! client timeouts do not bound this: each try may take its full timeout and the retry loop
//! runs for minutes. Wrapping the store once bounds every call made through it: the call
//! itself, and for reads the body too (a stalled body yields an error at the same deadline).
//! A timeout is `object_store::Error::Generic` with store `timeout`.

use std::fmt;
use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::{self, BoxStream, StreamExt};
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, GetResultPayload, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMultipartOptions, PutOptions, PutPayload, PutResult, RenameOptions, Result,
};
use tokio::time::Instant;

/// `inner` with a time limit on every call.
#[derive(Debug)]
pub struct TimedStore {
    inner: Arc<dyn ObjectStore>,
    limit: Duration,
}

impl TimedStore {
    pub fn new(inner: Arc<dyn ObjectStore>, limit: Duration) -> TimedStore {
        TimedStore { inner, limit }
    }

    async fn within<T>(&self, what: &'static str, call: impl std::future::Future<Output = Result<T>>) -> Result<T> {
        tokio::time::timeout(self.limit, call).await.unwrap_or_else(|_| Err(timed_out(what, self.limit)))
    }
}

fn timed_out(what: &'static str, limit: Duration) -> object_store::Error {
    object_store::Error::Generic { store: "timeout", source: format!("{what} took longer than {limit:?}").into() }
}

/// Ends `s` with a timeout error at `deadline` (then nothing more).
fn until<T: Send + 'static>(
    s: BoxStream<'static, Result<T>>,
    deadline: Instant,
    what: &'static str,
    limit: Duration,
) -> BoxStream<'static, Result<T>> {
    stream::unfold(Some(s), move |state| async move {
        let mut s = state?;
        match tokio::time::timeout_at(deadline, s.next()).await {
            Ok(Some(item)) => Some((item, Some(s))),
            Ok(None) => None,
            Err(_) => Some((Err(timed_out(what, limit)), None)),
        }
    })
    .boxed()
}

impl fmt::Display for TimedStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TimedStore({:?}, {})", self.limit, self.inner)
    }
}

#[async_trait]
impl ObjectStore for TimedStore {
    async fn put_opts(&self, location: &Path, payload: PutPayload, opts: PutOptions) -> Result<PutResult> {
        self.within("put", self.inner.put_opts(location, payload, opts)).await
    }

    async fn put_multipart_opts(&self, location: &Path, opts: PutMultipartOptions) -> Result<Box<dyn MultipartUpload>> {
        // Only the start is bounded; upres writes results with single puts.
        self.within("multipart put", self.inner.put_multipart_opts(location, opts)).await
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> Result<GetResult> {
        let deadline = Instant::now() + self.limit;
        let mut got = self.within("get", self.inner.get_opts(location, options)).await?;
        if let GetResultPayload::Stream(body) = got.payload {
            got.payload = GetResultPayload::Stream(until(body, deadline, "get (body)", self.limit));
        }
        Ok(got)
    }

    async fn get_ranges(&self, location: &Path, ranges: &[Range<u64>]) -> Result<Vec<Bytes>> {
        self.within("get ranges", self.inner.get_ranges(location, ranges)).await
    }

    fn delete_stream(&self, locations: BoxStream<'static, Result<Path>>) -> BoxStream<'static, Result<Path>> {
        until(self.inner.delete_stream(locations), Instant::now() + self.limit, "delete", self.limit)
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
        until(self.inner.list(prefix), Instant::now() + self.limit, "list", self.limit)
    }

    fn list_with_offset(&self, prefix: Option<&Path>, offset: &Path) -> BoxStream<'static, Result<ObjectMeta>> {
        until(self.inner.list_with_offset(prefix, offset), Instant::now() + self.limit, "list", self.limit)
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
        self.within("list", self.inner.list_with_delimiter(prefix)).await
    }

    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> Result<()> {
        self.within("copy", self.inner.copy_opts(from, to, options)).await
    }

    async fn rename_opts(&self, from: &Path, to: &Path, options: RenameOptions) -> Result<()> {
        self.within("rename", self.inner.rename_opts(from, to, options)).await
    }
}
