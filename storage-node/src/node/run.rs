//! `cpchain node`: wires the network, the engine and the HTTP API together and runs until
//! SIGINT/SIGTERM, then shuts down cleanly (the chain store is durable after every block).

use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result};
use chain::Address;

use super::config::{load_key, Genesis, NodeConfig};
use super::engine::{Engine, EngineEvent};
use super::handle::EngineHandle;
use super::net::{Net, NetStats};
use super::storage::StorageService;
use super::view::NodeApi;

/// Engine queue length (network events and API calls); beyond it the network drops
/// (and counts) events and the API answers "busy".
const ENGINE_QUEUE: usize = 65_536;

/// Installs a log subscriber honouring `RUST_LOG` (default `info`, libp2p at `warn`), in
/// colour only on a terminal (and without `NO_COLOR`).
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new("info,libp2p_gossipsub=error,libp2p=warn")
    });
    // Colours only for a person at a terminal: a log file or a pipe gets plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout())
        && std::env::var_os("NO_COLOR").is_none();
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_ansi(ansi)
        .with_writer(|| LogOut(std::io::stdout()))
        .try_init();
}

/// Standard output for logs, where a failed write is dropped: a node must outlive its log
/// reader (`cpchain node | head`, a log shipper that crashed). Left to itself the
/// subscriber reports each failed write on standard error, and panics if that is closed
/// too.
struct LogOut(std::io::Stdout);

impl std::io::Write for LogOut {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        Ok(self.0.write(buf).unwrap_or(buf.len()))
    }

    fn flush(&mut self) -> std::io::Result<()> {
        let _ = self.0.flush();
        Ok(())
    }
}

/// Runs the node described by the config file at `path`.
pub fn run(path: &Path) -> Result<()> {
    init_logging();
    let node = NodeConfig::load(path)?;
    let genesis = Genesis::load(&node.genesis_file)?;
    let cfg = genesis.chain_config()?;
    let key = load_key(&node.key_file)?;
    std::fs::create_dir_all(&node.data_dir)
        .with_context(|| format!("creating {}", node.data_dir.display()))?;
    // Bound first, so a bad or taken address fails before anything else starts.
    let api_listener = std::net::TcpListener::bind(&node.api.listen)
        .and_then(|l| l.set_nonblocking(true).map(|()| l))
        .with_context(|| {
            format!(
                "binding the API to {} ([api] listen in {}; is another node running with it?)",
                node.api.listen,
                path.display()
            )
        })?;
    // The API has a runtime of its own: its handlers wait on the engine, and must never
    // hold up the swarm's tasks (gossip, consensus, shard transfers) while they do.
    let api_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .thread_name("cpchain-api")
        .build()
        .context("starting the API's async runtime")?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .thread_name("cpchain-net")
        .build()
        .context("starting the async runtime")?;
    let mut committee: Vec<Address> = cfg.validators.clone();
    committee.extend(cfg.default_proposers.iter().copied());
    let (net_tx, net_rx) = tokio::sync::mpsc::unbounded_channel();
    let stats = Arc::new(NetStats::default());
    let net = {
        let _guard = rt.enter();
        Net::new(
            key.seed(),
            &node.network.listen,
            &node.network.bootstrap,
            &committee,
            &cfg.validators,
            node.has(super::config::Role::Proposer),
            node.has(super::config::Role::Storage),
        )?
    };
    let peer_id = net.peer_id();
    let storage_role = node.has(super::config::Role::Storage);
    let storage_dir = node.data_dir.join("storage");
    let storage_cfg = node.storage.clone();
    let listen_addrs = node.network.listen.clone();
    let coord_key = key.clone();
    let me = *key.public().as_bytes();
    let net_cmds = net_tx.clone();
    let name = node.name.clone();
    let engine = Engine::open(node, &genesis, key, net_tx, stats.clone(), peer_id)?;
    tracing::info!(
        "{name}: {} at height {}, peer id {peer_id}",
        engine.addr,
        engine.store.head().number
    );
    let (ev_tx, ev_rx) = std::sync::mpsc::sync_channel::<EngineEvent>(ENGINE_QUEUE);
    let engine_thread = std::thread::Builder::new()
        .name("cpchain-engine".into())
        .spawn(move || engine.run(ev_rx))
        .context("starting the engine thread")?;
    let handle = EngineHandle::new(ev_tx.clone());
    let (handle, shard_jobs, provide) = if storage_role {
        let service = Arc::new(StorageService::open(
            &storage_dir,
            me,
            Arc::new(handle.clone()),
            storage_cfg.fault,
        )?);
        service.set_peers(stats.clone());
        let provide = service.held_data();
        let plane = if storage_cfg.data_plane {
            let ip = data_ip(&listen_addrs);
            match super::storage::start_data_plane(
                &service,
                ip,
                storage_cfg.data_port,
                net_cmds.clone(),
            ) {
                Ok(p) => Some(p),
                Err(e) => {
                    tracing::warn!("no data connections (clients will use libp2p): {e:#}");
                    None
                }
            }
        } else {
            None
        };
        let jobs =
            super::storage::spawn_workers(&service, storage_cfg.workers, net_cmds.clone(), plane)?;
        super::coordinator::spawn(
            Arc::clone(&service),
            handle.clone(),
            coord_key,
            cfg.chain_id,
            net_cmds.clone(),
            stats.clone(),
            &storage_cfg,
        )?;
        (handle.with_storage(service), Some(jobs), provide)
    } else {
        (handle, None, Vec::new())
    };
    let records = super::net::RecordGate::new(cfg.chain_id, Arc::new(handle.clone()));
    let api: Arc<dyn NodeApi> = Arc::new(handle);
    let net_events = ev_tx.clone();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = {
        let _guard = api_rt.enter();
        let listener =
            tokio::net::TcpListener::from_std(api_listener).context("serving the API listener")?;
        api_rt.spawn(super::api::serve(listener, api, async move {
            let _ = stop_rx.await;
        }))
    };
    let result = rt.block_on(async move {
        let net_task =
            tokio::spawn(net.run(net_rx, net_events, stats, shard_jobs, provide, records));
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            _ = tokio::signal::ctrl_c() => tracing::info!("interrupted: shutting down"),
            _ = term.recv() => tracing::info!("terminated: shutting down"),
        }
        let _ = stop_tx.send(());
        let _ = server.await;
        net_task.abort();
        anyhow::Ok(())
    });
    let _ = ev_tx.send(EngineEvent::Shutdown);
    drop(ev_tx);
    let _ = engine_thread.join();
    rt.shutdown_timeout(std::time::Duration::from_secs(2));
    api_rt.shutdown_timeout(std::time::Duration::from_secs(2));
    result
}

/// The IP the data listener binds: that of the first listen multiaddr with one, else all
/// interfaces.
fn data_ip(listen: &[String]) -> std::net::IpAddr {
    listen
        .iter()
        .filter_map(|l| l.parse::<libp2p::Multiaddr>().ok())
        .find_map(|a| super::net::ip_of(&a))
        .unwrap_or(std::net::IpAddr::from([0, 0, 0, 0]))
}
