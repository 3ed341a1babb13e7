//! The cpchain storage node: the durable chunk store, the seal/open pipeline, and (later) the
//! networked daemon and its client.
//!
//! Main types: [`ChunkStore`] (shards on local disk, io_uring with a portable fallback, group
//! commit, checksums, crash recovery), [`seal`] / [`open`] (client-side encryption, erasure
//! coding and content addressing of data, streamed with bounded memory) and [`Manifest`].

mod manifest;
pub mod node;
mod pipeline;
mod store;
pub mod torture;

pub use manifest::{BlockEntry, Manifest, ManifestDir, MAX_BLOCKS, MAX_BLOCK_SIZE};
pub use pipeline::{
    open, rebuild_shards, seal, seal_with_salt, CountingSink, MemoryShards, OpenParams, OpenReport,
    PipelineError, PipelineResult, SealParams, Shard, ShardSink, ShardSource, StoreSink,
};
pub use store::{
    Backend, BackendChoice, ChunkRegion, ChunkStore, CompactReport, PutTicket, RecoveryReport,
    StoreConfig, StoreError, StoreResult, StoreStats,
};
