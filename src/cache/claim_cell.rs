//! One claim object with compare-and-swap, on each kind of store.
//!
//! Claims (`claim.rs`) need three writes that never overwrite a write they have not seen:
//! create-if-absent, replace-if-unchanged and remove-if-unchanged. What each backend offers:
//!
//! - S3, GCS, Azure, memory: create is `PutMode::Create` (`If-None-Match: *`); replace is
//!   `PutMode::Update` with the ETag/version last read or written (`If-Match`); remove writes a
//!   tombstone the same way (object_store has no conditional delete).
//! - Local folders: read-compare-write under an exclusive lock on `claims/.lock` (`flock`),
//!   writes are a temp file renamed into place, and remove deletes under the lock.
//! - A store without `Update`: replace and remove are `Unsupported`; the caller then refuses to
//!   take over (it computes unclaimed) and leaves its own claim to expire.
//!
//! The lock makes a local folder exact between processes on one host (containers sharing a bind
//! mount included); on a network file system it is as good as that file system's locks.

use std::io::{self, Write};
use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload, UpdateVersion};

/// What the cell was when it was read or written last: the condition for the next change.
#[derive(Clone, Debug)]
pub enum Version {
    Tag(UpdateVersion),
    /// Local folders compare content (every claim record is unique: it carries a lease id).
    Content(Bytes),
}

/// The outcome of a conditional change.
pub enum Swap {
    Done(Version),
    /// The cell changed (or vanished) since that version: someone else's now.
    Lost,
}

#[derive(thiserror::Error, Debug)]
pub enum CellError {
    #[error("the store has no conditional overwrite")]
    Unsupported,
    #[error(transparent)]
    Store(#[from] object_store::Error),
    #[error("claim folder: {0}")]
    Io(#[from] io::Error),
}

/// Where claims live, and how they are changed safely there.
#[derive(Clone)]
pub enum Cell {
    Store(Arc<dyn ObjectStore>),
    /// A `file://` store: `root` is its folder, object paths are relative to it.
    Folder { root: PathBuf },
}

impl Cell {
    /// Creates the claim if there is none; `None` if there is one.
    pub async fn create(&self, path: &Path, bytes: Bytes) -> Result<Option<Version>, CellError> {
        match self {
            Cell::Store(store) => {
                let opts = PutOptions::from(PutMode::Create);
                match store.put_opts(path, PutPayload::from(bytes), opts).await {
                    Ok(r) if r.e_tag.is_some() || r.version.is_some() => {
                        Ok(Some(Version::Tag(UpdateVersion { e_tag: r.e_tag, version: r.version })))
                    }
                    // No ETag in the answer: read it (a fresh live claim is changed by nobody).
                    Ok(_) => Ok(self.read(path).await?.map(|(_, v)| v)),
                    Err(object_store::Error::AlreadyExists { .. } | object_store::Error::Precondition { .. }) => Ok(None),
                    Err(e) => Err(e.into()),
                }
            }
            Cell::Folder { root } => {
                let file = root.join(path.as_ref());
                blocking(move || {
                    locked(&file, || match std::fs::read(&file) {
                        Ok(_) => Ok(None),
                        Err(e) if e.kind() == io::ErrorKind::NotFound => {
                            write_atomic(&file, &bytes)?;
                            Ok(Some(Version::Content(bytes)))
                        }
                        Err(e) => Err(e),
                    })
                })
                .await
            }
        }
    }

    /// The claim's bytes and version, or `None` if there is none.
    pub async fn read(&self, path: &Path) -> Result<Option<(Bytes, Version)>, CellError> {
        match self {
            Cell::Store(store) => {
                let got = match store.get(path).await {
                    Ok(g) => g,
                    Err(object_store::Error::NotFound { .. }) => return Ok(None),
                    Err(e) => return Err(e.into()),
                };
                let version = UpdateVersion { e_tag: got.meta.e_tag.clone(), version: got.meta.version.clone() };
                match got.bytes().await {
                    Ok(b) => Ok(Some((b, Version::Tag(version)))),
                    Err(object_store::Error::NotFound { .. }) => Ok(None),
                    Err(e) => Err(e.into()),
                }
            }
            Cell::Folder { root } => {
                let file = root.join(path.as_ref());
                blocking(move || match std::fs::read(&file) {
                    Ok(b) => {
                        let b = Bytes::from(b);
                        Ok(Some((b.clone(), Version::Content(b))))
                    }
                    Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
                    Err(e) => Err(e),
                })
                .await
            }
        }
    }

    /// Replaces the claim with `bytes` if it is still at `expected`.
    pub async fn replace(&self, path: &Path, expected: &Version, bytes: Bytes) -> Result<Swap, CellError> {
        match (self, expected) {
            (Cell::Store(store), Version::Tag(v)) => {
                if v.e_tag.is_none() && v.version.is_none() {
                    return Err(CellError::Unsupported);
                }
                let opts = PutOptions::from(PutMode::Update(v.clone()));
                match store.put_opts(path, PutPayload::from(bytes), opts).await {
                    Ok(r) => Ok(Swap::Done(Version::Tag(UpdateVersion { e_tag: r.e_tag, version: r.version }))),
                    Err(
                        object_store::Error::Precondition { .. }
                        | object_store::Error::AlreadyExists { .. }
                        | object_store::Error::NotFound { .. },
                    ) => Ok(Swap::Lost),
                    Err(object_store::Error::NotImplemented { .. }) => Err(CellError::Unsupported),
                    Err(e) => Err(e.into()),
                }
            }
            (Cell::Folder { root }, Version::Content(old)) => {
                let (file, old) = (root.join(path.as_ref()), old.clone());
                blocking(move || {
                    locked(&file, || {
                        if !holds(&file, &old)? {
                            return Ok(Swap::Lost);
                        }
                        write_atomic(&file, &bytes)?;
                        Ok(Swap::Done(Version::Content(bytes)))
                    })
                })
                .await
            }
            _ => Err(CellError::Unsupported),
        }
    }

    /// Removes the claim if it is still at `expected`. Object stores get `tombstone` written
    /// instead (an expired record: whoever claims next takes it over with a conditional write).
    pub async fn remove(&self, path: &Path, expected: &Version, tombstone: Bytes) -> Result<Swap, CellError> {
        match (self, expected) {
            (Cell::Folder { root }, Version::Content(old)) => {
                let (file, old) = (root.join(path.as_ref()), old.clone());
                blocking(move || {
                    locked(&file, || {
                        if !holds(&file, &old)? {
                            return Ok(Swap::Lost);
                        }
                        std::fs::remove_file(&file)?;
                        Ok(Swap::Done(Version::Content(Bytes::new())))
                    })
                })
                .await
            }
            _ => self.replace(path, expected, tombstone).await,
        }
    }
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> io::Result<T> + Send + 'static) -> Result<T, CellError> {
    tokio::task::spawn_blocking(f).await.map_err(|e| CellError::Io(io::Error::other(e)))?.map_err(CellError::Io)
}

/// Runs `f` holding the exclusive lock of `file`'s folder (`.lock` there; released on close).
fn locked<T>(file: &std::path::Path, f: impl FnOnce() -> io::Result<T>) -> io::Result<T> {
    let dir = file.parent().ok_or_else(|| io::Error::other("claim path has no folder"))?;
    std::fs::create_dir_all(dir)?;
    let lock = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(dir.join(".lock"))?;
    lock.lock()?;
    f()
}

/// Whether `file` holds exactly `bytes` (a missing file holds nothing).
fn holds(file: &std::path::Path, bytes: &[u8]) -> io::Result<bool> {
    match std::fs::read(file) {
        Ok(current) => Ok(current == bytes),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

/// A temp file renamed over `file`, so an unlocked reader sees the old or the new record.
fn write_atomic(file: &std::path::Path, bytes: &[u8]) -> io::Result<()> {
    let mut tmp = file.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_data()?;
    std::fs::rename(&tmp, file)
}
