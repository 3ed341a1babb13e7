use std::fmt;
use std::num::NonZeroUsize;

use super::error::{StoreError, StoreResult};

/// Tuning and limits of a [`ChunkStore`](super::ChunkStore); every queue and size is bounded here.
#[derive(Clone, Debug)]
pub struct StoreConfig {
    /// Most bytes the segment files may occupy together; puts beyond it fail with `Full`.
    pub capacity_bytes: u64,
    /// A segment is sealed and a new one started once it reaches this size.
    pub segment_bytes: u64,
    /// Largest accepted chunk payload.
    pub max_chunk_bytes: u32,
    /// The writer stops gathering requests into one group commit past this many payload bytes.
    pub max_batch_bytes: usize,
    /// Capacity of the request queue in front of the writer thread (backpressure beyond it).
    pub queue_depth: NonZeroUsize,
    /// A sealed segment whose garbage share exceeds this is rewritten by compaction.
    pub compact_garbage_ratio: f64,
    /// Which write backend to use.
    pub backend: BackendChoice,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            capacity_bytes: 64 << 30,
            segment_bytes: 256 << 20,
            max_chunk_bytes: 16 << 20,
            max_batch_bytes: 32 << 20,
            queue_depth: NonZeroUsize::new(1024).unwrap_or(NonZeroUsize::MIN),
            compact_garbage_ratio: 0.5,
            backend: BackendChoice::Auto,
        }
    }
}

impl StoreConfig {
    pub(crate) fn validate(&self) -> StoreResult<()> {
        if self.segment_bytes == 0 {
            return Err(StoreError::BadConfig("segment_bytes must be positive"));
        }
        if self.max_chunk_bytes == 0 {
            return Err(StoreError::BadConfig("max_chunk_bytes must be positive"));
        }
        if self.max_batch_bytes == 0 {
            return Err(StoreError::BadConfig("max_batch_bytes must be positive"));
        }
        if !(self.compact_garbage_ratio > 0.0 && self.compact_garbage_ratio <= 1.0) {
            return Err(StoreError::BadConfig(
                "compact_garbage_ratio must be in (0, 1]",
            ));
        }
        Ok(())
    }
}

/// The write backend requested in [`StoreConfig`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum BackendChoice {
    /// io_uring when the kernel allows it, otherwise portable.
    #[default]
    Auto,
    /// io_uring (tokio-uring); opening fails if it is unavailable.
    IoUring,
    /// Plain `pwrite` + `fdatasync` through `std::fs`.
    Portable,
}

/// The write backend a store actually runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// tokio-uring on the writer thread.
    IoUring,
    /// `std::fs` on the writer thread.
    Portable,
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Backend::IoUring => "io_uring",
            Backend::Portable => "portable",
        })
    }
}
