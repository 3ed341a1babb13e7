//! Real processes on loopback: a 4-validator devnet commits; the next proposer killed with
//! kill -9 gives an impeach block and the chain goes on; one validator down (f = 1) → it
//! goes on; two down → it halts without forking and resumes when one returns;
//! SIGSTOP/SIGCONT; a restarted node catches up; the explorer page in headless chromium
//! shows a growing height.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use storage_node::node::config::Role;
use storage_node::node::devnet::send_signal;

mod common;
use common::Net;

const PERIOD_MS: u64 = 500;

/// One devnet at a time: two of them (13 processes) on a 2-core machine starve each other's
/// timers and the test would measure the machine, not the protocol.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner())
}

impl Net {
    fn start(validators: usize, proposers: usize, storage: usize) -> Net {
        Net::start_with(validators, proposers, storage, PERIOD_MS, 1, |_| {})
    }

    /// Highest height among live nodes.
    fn max_height(&self) -> u64 {
        self.live()
            .into_iter()
            .filter_map(|i| self.height(i))
            .max()
            .unwrap_or(0)
    }

    fn json(&self, i: usize, path: &str) -> serde_json::Value {
        ureq::get(&format!("{}{path}", self.api(i)))
            .timeout(Duration::from_secs(5))
            .call()
            .unwrap()
            .into_json()
            .unwrap()
    }

    fn block_hash(&self, i: usize, n: u64) -> Option<String> {
        let r = ureq::get(&format!("{}/blocks/{n}", self.api(i)))
            .timeout(Duration::from_secs(5))
            .call()
            .ok()?;
        let v: serde_json::Value = r.into_json().ok()?;
        v.get("hash")?.as_str().map(str::to_string)
    }

    /// Every live node agrees on every block hash up to the lowest live height.
    fn assert_no_fork(&self) {
        let live = self.live();
        let low = live
            .iter()
            .filter_map(|i| self.height(*i))
            .min()
            .unwrap_or(0);
        let from = low.saturating_sub(20).max(1);
        for n in from..=low {
            let hashes: BTreeMap<String, Vec<usize>> =
                live.iter().fold(BTreeMap::new(), |mut m, i| {
                    if let Some(h) = self.block_hash(*i, n) {
                        m.entry(h).or_insert_with(Vec::new).push(*i);
                    }
                    m
                });
            assert!(hashes.len() <= 1, "fork at height {n}: {hashes:?}");
        }
    }

    fn log(&self, i: usize) -> PathBuf {
        self.file.nodes[i].config.parent().unwrap().join("node.log")
    }
}

fn tail(p: &Path) -> String {
    let t = std::fs::read_to_string(p).unwrap_or_default();
    let lines: Vec<&str> = t.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

#[test]
fn devnet_commits_impeaches_tolerates_f_halts_at_2f_and_catches_up() {
    let _one = serial();
    let mut net = Net::start(4, 3, 1);
    let v: Vec<usize> = (0..4).map(|k| net.idx(&format!("validator-{k}"))).collect();
    let watcher = v[0];
    net.wait_height(watcher, 3, Duration::from_secs(90), "devnet start");
    eprintln!("devnet commits: height {:?}", net.height(watcher));

    // kill -9 the proposer whose turn is next → an impeach block, and the chain goes on.
    let st = net.json(watcher, "/status");
    let next = st["next_proposer"].as_str().unwrap().to_string();
    let p = net
        .file
        .nodes
        .iter()
        .position(|n| n.address == next)
        .expect("next proposer is a devnet node");
    assert_eq!(net.file.nodes[p].role, Role::Proposer);
    net.kill9(p);
    let start = Instant::now();
    let mut impeached = false;
    while start.elapsed() < Duration::from_secs(60) {
        let imp = net.json(watcher, "/impeachments");
        if imp.as_array().is_some_and(|a| {
            a.iter()
                .any(|x| x["proposer"].as_str() == Some(next.as_str()))
        }) {
            impeached = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    assert!(
        impeached,
        "no impeach block for the killed proposer; validator log:\n{}",
        tail(&net.log(watcher))
    );
    let h = net.height(watcher).unwrap();
    net.wait_height(watcher, h + 3, Duration::from_secs(60), "after impeachment");
    net.restart(p);

    // One validator down (f = 1): the chain goes on.
    net.kill9(v[3]);
    let h = net.height(watcher).unwrap();
    net.wait_height(watcher, h + 3, Duration::from_secs(60), "with f = 1 down");
    net.assert_no_fork();

    // Two down: it halts without forking...
    net.kill9(v[2]);
    std::thread::sleep(Duration::from_secs(3));
    let halted = net.max_height();
    std::thread::sleep(Duration::from_secs(4));
    assert!(
        net.max_height() <= halted + 1,
        "the chain went on with 2 of 4 validators down: {halted} → {}",
        net.max_height()
    );
    net.assert_no_fork();
    // ... and resumes when one returns.
    net.restart(v[2]);
    net.wait_height(
        watcher,
        halted + 3,
        Duration::from_secs(90),
        "after a validator returned",
    );
    net.restart(v[3]);

    // SIGSTOP / SIGCONT a validator.
    let pid = net.pid(v[1]);
    send_signal(pid, "STOP").unwrap();
    let h = net.height(watcher).unwrap();
    net.wait_height(
        watcher,
        h + 2,
        Duration::from_secs(60),
        "with one validator stopped",
    );
    send_signal(pid, "CONT").unwrap();
    let h = net.height(watcher).unwrap();
    net.wait_height(
        v[1],
        h,
        Duration::from_secs(60),
        "stopped validator catching up",
    );

    // A restarted node catches up and agrees.
    let s = net.idx("storage-0");
    net.kill9(s);
    let h = net.height(watcher).unwrap();
    net.wait_height(
        watcher,
        h + 4,
        Duration::from_secs(60),
        "while storage-0 is down",
    );
    net.restart(s);
    let h = net.height(watcher).unwrap();
    net.wait_height(s, h, Duration::from_secs(60), "restarted node catching up");
    net.wait_height(
        v[3],
        h,
        Duration::from_secs(60),
        "restarted validator catching up",
    );
    net.assert_no_fork();
}

/// The explorer page in a real headless browser shows a height that increases.
#[test]
fn explorer_page_shows_a_growing_height_in_headless_chromium() {
    let Some(chromium) = ["chromium", "chromium-browser", "google-chrome"]
        .into_iter()
        .find(|b| {
            std::process::Command::new(b)
                .arg("--version")
                .output()
                .is_ok_and(|o| o.status.success())
        })
    else {
        eprintln!("skipped: no chromium (the CI installs Debian's `chromium`)");
        return;
    };
    let _one = serial();
    let net = Net::start(4, 1, 0);
    net.wait_height(0, 2, Duration::from_secs(90), "devnet start");
    let read_height = || -> Option<u64> {
        let out = std::process::Command::new(chromium)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--disable-background-networking",
                "--virtual-time-budget=3000",
                "--dump-dom",
            ])
            .arg(format!("{}/", net.api(0)))
            .output()
            .ok()?;
        let dom = String::from_utf8_lossy(&out.stdout);
        let at = dom.find("id=\"height\"")?;
        let rest = &dom[at..];
        let gt = rest.find('>')?;
        let end = rest[gt + 1..].find('<')?;
        rest[gt + 1..gt + 1 + end].trim().parse().ok()
    };
    let first = read_height().expect("the page shows a height");
    // A slow machine may take a while per headless load: poll, bounded.
    let t = Instant::now();
    let mut second = first;
    while second <= first && t.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_secs(2));
        second = read_height().expect("the page shows a height");
    }
    assert!(
        second > first,
        "height did not increase in 30 s: {first} → {second}"
    );
}

/// Lines of a running `cpchain devnet`'s standard output, read on a thread.
struct DevnetRun {
    child: std::process::Child,
    lines: std::sync::mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl DevnetRun {
    /// `cpchain devnet` run in `tmp` with `--data-dir data_dir` (relative to `tmp` or not).
    fn start(tmp: &Path, data_dir: &str) -> DevnetRun {
        use std::io::BufRead;
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_cpchain"))
            .args([
                "devnet",
                "--validators",
                "1",
                "--proposers",
                "1",
                "--storage",
                "0",
            ])
            .args(["--period-ms", "300", "--data-dir", data_dir])
            .current_dir(tmp)
            // Its own temp dir: the local-node file of a devnet running here stays alone.
            .env("TMPDIR", tmp)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let out = child.stdout.take().unwrap();
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for l in std::io::BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(l).is_err() {
                    break;
                }
            }
        });
        DevnetRun {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// The first line (from now on) containing `what`, within 90 s.
    fn wait_for(&mut self, what: &str) -> String {
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(90) {
            if let Ok(l) = self.lines.recv_timeout(Duration::from_millis(200)) {
                self.seen.push(l.clone());
                if l.contains(what) {
                    return l;
                }
            }
        }
        panic!(
            "no line with {what:?}; output so far:\n{}",
            self.seen.join("\n")
        );
    }

    /// The height in "blocks are final (height N)."
    fn final_height(&mut self) -> u64 {
        let l = self.wait_for("blocks are final");
        l.split("height ")
            .nth(1)
            .and_then(|r| r.trim_end_matches(").").parse().ok())
            .unwrap_or_else(|| panic!("no height in {l:?}"))
    }
}

impl Drop for DevnetRun {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = send_signal(self.child.id(), "TERM");
            let _ = self.child.wait();
        }
    }
}

#[test]
fn devnet_command_resumes_its_data_dir_and_reports_a_node_that_exits() {
    let _one = serial();
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("dn");
    // Made under a relative --data-dir, resumed under an absolute one.
    let mut run = DevnetRun::start(tmp.path(), "dn");
    let first = run.final_height();
    run.wait_for("Ctrl-C stops the network");
    // A node killed under the devnet is named, with the command that starts it again.
    let file = storage_node::node::devnet::DevnetFile::load(&data).unwrap();
    let proposer = file
        .nodes
        .iter()
        .find(|n| n.role == Role::Proposer)
        .unwrap();
    send_signal(proposer.pid, "KILL").unwrap();
    let l = run.wait_for("exited");
    assert!(l.starts_with(&proposer.name), "{l}");
    assert!(
        l.contains(&format!(
            "cpchain node --config {}",
            proposer.config.display()
        )),
        "{l}"
    );
    // Stopped (as by Ctrl-C), then started again on the same directory: the chain resumes
    // past where it was instead of the command refusing the directory.
    send_signal(run.child.id(), "TERM").unwrap();
    run.wait_for("stopped; data kept in");
    assert!(run.child.wait().unwrap().success());
    let mut again = DevnetRun::start(tmp.path(), data.to_str().unwrap());
    again.wait_for("resuming the 2 nodes");
    let resumed = again.final_height();
    assert!(
        resumed > first,
        "resumed at {resumed}, first run reached {first}"
    );
    // While it runs, a third start on the directory is refused, naming the running node.
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_cpchain"))
        .args(["devnet", "--data-dir", data.to_str().unwrap()])
        .env("TMPDIR", tmp.path())
        .output()
        .unwrap();
    assert!(!o.status.success());
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(e.contains("still runs (pid"), "{e}");
}
