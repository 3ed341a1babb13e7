//! The networked node: config, libp2p networking, the engine that drives the LBFT core,
//! the mempool, the HTTP API with explorer and metrics, and the local devnet launcher.

pub mod api;
pub mod client;
pub mod config;
pub mod coordinator;
pub mod dataplane;
pub mod devnet;
pub mod dfs;
pub mod engine;
pub mod handle;
pub mod mempool;
pub mod net;
pub mod run;
pub mod sizer;
pub mod storage;
pub mod view;

/// A 2-worker tokio runtime for tests.
#[cfg(test)]
#[allow(clippy::unwrap_used)]
pub(crate) fn test_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// Locks `m`; a poisoned lock only means another thread panicked mid-update, and the data
/// behind every lock here stays usable.
pub(crate) fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
