use std::path::PathBuf;

use crypto_accel::ChunkId;

/// Everything that can go wrong in the chunk store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The chunk is not in the store.
    #[error("chunk {id} not found")]
    NotFound {
        /// The requested chunk.
        id: ChunkId,
    },
    /// Storing the request would exceed the configured capacity.
    #[error(
        "store full: need {need} bytes, {free} of {capacity} free; \
         delete data or raise capacity_bytes"
    )]
    Full {
        /// Bytes the request needs on disk (headers included).
        need: u64,
        /// Bytes still free under the capacity.
        free: u64,
        /// The configured capacity.
        capacity: u64,
    },
    /// The stored bytes of a chunk failed their checksum; the store never returns them.
    #[error("chunk {id} is corrupt on disk: {reason}")]
    Corrupt {
        /// The damaged chunk.
        id: ChunkId,
        /// What failed, and where.
        reason: String,
    },
    /// A chunk is larger than `max_chunk_bytes`.
    #[error("chunk of {len} bytes exceeds the {max}-byte limit (max_chunk_bytes)")]
    TooLarge {
        /// The chunk's length.
        len: u64,
        /// The configured limit.
        max: u32,
    },
    /// An operating-system call failed.
    #[error("{op} {}: {source}", path.display())]
    Io {
        /// What the store was doing.
        op: &'static str,
        /// The file or directory involved.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The store was closed (or its writer stopped) before the request completed.
    #[error("chunk store is closed")]
    Closed,
    /// Another process (or another handle in this one) has the store open.
    #[error(
        "store directory {} is locked by another process (or another open handle); \
         stop it or use a different directory",
        path.display()
    )]
    Locked {
        /// The lock file.
        path: PathBuf,
    },
    /// An earlier write or sync failed, so the writer refuses further writes until reopened.
    #[error("chunk store writer stopped after an I/O error ({reason}); reopen the store")]
    Failed {
        /// The error that stopped the writer.
        reason: String,
    },
    /// `BackendChoice::IoUring` was requested but io_uring cannot be used here.
    #[error("io_uring backend unavailable: {reason}; use BackendChoice::Auto or Portable")]
    IoUringUnavailable {
        /// Why setting up io_uring failed.
        reason: String,
    },
    /// The store's files are inconsistent in a way recovery cannot repair.
    #[error("chunk store is damaged: {reason}; move the directory aside and restore it")]
    Damaged {
        /// What is wrong.
        reason: String,
    },
    /// The configuration is unusable.
    #[error("invalid chunk store config: {0}")]
    BadConfig(&'static str),
}

/// Result alias for chunk store operations.
pub type StoreResult<T> = Result<T, StoreError>;

impl StoreError {
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        StoreError::Io {
            op,
            path: path.into(),
            source,
        }
    }
}
