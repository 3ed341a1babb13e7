//! A devnet of real node processes for the integration tests: start, kill -9, restart, and
//! clean up (node logs are kept when a test fails).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, dead_code)]

use std::path::PathBuf;
use std::process::Child;
use std::time::{Duration, Instant};

use storage_node::node::devnet::{
    height_of, prepare, start_node, stop_all, DevnetFile, DevnetParams,
};

/// A running devnet; every node is stopped on drop.
pub struct Net {
    pub file: DevnetFile,
    pub children: Vec<Option<Child>>,
    pub dir: Option<tempfile::TempDir>,
}

impl Drop for Net {
    fn drop(&mut self) {
        let mut live: Vec<(String, Child)> = self
            .children
            .iter_mut()
            .zip(&self.file.nodes)
            .filter_map(|(c, n)| c.take().map(|c| (n.name.clone(), c)))
            .collect();
        stop_all(&mut live, Duration::from_secs(5));
        if std::thread::panicking() {
            if let Some(d) = self.dir.take() {
                eprintln!("node logs kept in {}", d.keep().display());
            }
        }
    }
}

impl Net {
    /// Prepares a devnet of this shape in a temp dir, lets `tweak` edit each node's config
    /// file, and starts every node.
    pub fn start_with(
        validators: usize,
        proposers: usize,
        storage: usize,
        period_ms: u64,
        view_len: u64,
        tweak: impl Fn(&std::path::Path),
    ) -> Net {
        let mut dir = tempfile::tempdir().unwrap();
        // CPCHAIN_TEST_KEEP=1 keeps the devnet (configs, stores, node logs) for a post-mortem.
        if std::env::var_os("CPCHAIN_TEST_KEEP").is_some() {
            dir.disable_cleanup(true);
            eprintln!("keeping the devnet in {}", dir.path().display());
        }
        let file = prepare(&DevnetParams {
            validators,
            proposers,
            storage,
            period_ms,
            impeach_timeout_ms: 1_500,
            data_dir: dir.path().join("devnet"),
            view_len,
            max_block_txs: 1_000,
            binary: PathBuf::from(env!("CARGO_BIN_EXE_cpchain")),
        })
        .unwrap();
        for n in &file.nodes {
            tweak(&n.config);
        }
        let children = file
            .nodes
            .iter()
            .map(|n| Some(start_node(&file.binary, n).unwrap()))
            .collect();
        Net {
            file,
            children,
            dir: Some(dir),
        }
    }

    pub fn idx(&self, name: &str) -> usize {
        self.file.nodes.iter().position(|n| n.name == name).unwrap()
    }

    pub fn api(&self, i: usize) -> &str {
        &self.file.nodes[i].api
    }

    pub fn kill9(&mut self, i: usize) {
        if let Some(mut c) = self.children[i].take() {
            c.kill().unwrap();
            c.wait().unwrap();
        }
    }

    pub fn restart(&mut self, i: usize) {
        assert!(self.children[i].is_none());
        self.children[i] = Some(start_node(&self.file.binary, &self.file.nodes[i]).unwrap());
    }

    pub fn pid(&self, i: usize) -> u32 {
        self.children[i].as_ref().unwrap().id()
    }

    pub fn live(&self) -> Vec<usize> {
        (0..self.children.len())
            .filter(|i| self.children[*i].is_some())
            .collect()
    }

    pub fn height(&self, i: usize) -> Option<u64> {
        height_of(self.api(i))
    }

    pub fn wait_height(&self, i: usize, h: u64, within: Duration, what: &str) {
        let start = Instant::now();
        while start.elapsed() < within {
            if self.height(i).is_some_and(|x| x >= h) {
                return;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        panic!(
            "{what}: node {} did not reach height {h} in {within:?} (at {:?}); logs in {}",
            self.file.nodes[i].name,
            self.height(i),
            self.file.nodes[i].config.parent().unwrap().display()
        );
    }
}
