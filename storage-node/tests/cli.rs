//! The `cpchain` binary end to end: keys, put/get round trip, the demo, and one-line errors
//! with non-zero exit codes.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::process::{Command, Output};

fn cpchain(home: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cpchain"))
        .arg("--home")
        .arg(home)
        .args(args)
        .output()
        .expect("run cpchain")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn put_get_round_trip_and_errors() {
    let home = tempfile::tempdir().unwrap();
    let h = home.path();

    // Without a key, put explains what to do.
    let input = h.join("in.bin");
    let data: Vec<u8> = (0..300_000u32).map(|i| (i * 7 + i / 13) as u8).collect();
    std::fs::write(&input, &data).unwrap();
    let o = cpchain(h, &["put", "--local", input.to_str().unwrap()]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("cpchain keys new"), "{}", stderr(&o));
    assert_eq!(stderr(&o).trim().lines().count(), 1, "{}", stderr(&o));

    let o = cpchain(h, &["keys", "new"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = cpchain(h, &["keys", "new"]);
    assert!(!o.status.success(), "second keys new must not overwrite");

    let o = cpchain(
        h,
        &[
            "put",
            "--local",
            input.to_str().unwrap(),
            "--block-size",
            "64KiB",
            "-k",
            "4",
            "-m",
            "2",
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let id = String::from_utf8(o.stdout).unwrap().trim().to_string();
    assert_eq!(id.len(), 64);

    let out = h.join("out.bin");
    let o = cpchain(h, &["get", "--local", &id, "-o", out.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(std::fs::read(&out).unwrap(), data);

    let o = cpchain(h, &["ls"]);
    assert!(String::from_utf8_lossy(&o.stdout).contains(&id));

    // An output that is not a regular file (a FIFO here; /dev/null alike) is written in
    // place: never replaced by a renamed temporary file.
    let fifo = h.join("out.fifo");
    let made = Command::new("mkfifo").arg(&fifo).status().unwrap();
    assert!(made.success());
    let reader = {
        let fifo = fifo.clone();
        std::thread::spawn(move || std::fs::read(fifo).unwrap())
    };
    let o = cpchain(h, &["get", "--local", &id, "-o", fifo.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(reader.join().unwrap(), data);
    use std::os::unix::fs::FileTypeExt;
    assert!(std::fs::metadata(&fifo).unwrap().file_type().is_fifo());
    assert!(!fifo.with_extension("cpchain-partial").exists());

    // Unknown and malformed ids: one-line errors, non-zero exit, no output file left.
    let missing = "ab".repeat(32);
    let out2 = h.join("out2.bin");
    let o = cpchain(
        h,
        &["get", "--local", &missing, "-o", out2.to_str().unwrap()],
    );
    assert!(!o.status.success());
    assert!(stderr(&o).contains("no data with id"), "{}", stderr(&o));
    assert!(!out2.exists());
    let o = cpchain(h, &["get", "--local", "xyz", "-o", out2.to_str().unwrap()]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("not a data id"), "{}", stderr(&o));

    // rm deletes shards and manifest.
    let o = cpchain(h, &["rm", &id]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = cpchain(h, &["get", "--local", &id, "-o", out2.to_str().unwrap()]);
    assert!(!o.status.success());
}

#[test]
fn demo_verifies_a_round_trip() {
    let home = tempfile::tempdir().unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_cpchain"))
        .env("TMPDIR", home.path())
        .args(["demo", "--size", "3MiB", "--block-size", "256KiB"])
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{out}\n{}", stderr(&o));
    assert!(
        out.contains("verified round trip: 3145728 identical bytes"),
        "{out}"
    );
    assert!(out.contains("MiB/s"), "{out}");
}

#[test]
fn bad_size_argument_is_a_usage_error() {
    let o = Command::new(env!("CARGO_BIN_EXE_cpchain"))
        .args(["demo", "--size", "12 parsecs"])
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(stderr(&o).contains("unknown size unit"), "{}", stderr(&o));
}

#[test]
fn status_and_tx_use_the_local_node_without_flags() {
    let home = tempfile::tempdir().unwrap();
    // A private temp dir, so a devnet running on this machine is not the one found.
    let tmp = tempfile::tempdir().unwrap();
    // What a running `cpchain devnet` leaves there (port 1: nothing listens, the error
    // names the address tried).
    std::fs::write(
        tmp.path().join("cpchain-local-node"),
        "http://127.0.0.1:1\n",
    )
    .unwrap();
    assert!(cpchain(home.path(), &["keys", "new"]).status.success());
    for args in [
        &["status"][..],
        &["tx", "transfer", &"ab".repeat(32), "1"][..],
    ] {
        let o = Command::new(env!("CARGO_BIN_EXE_cpchain"))
            .arg("--home")
            .arg(home.path())
            .args(args)
            .env("TMPDIR", tmp.path())
            .env_remove("CPCHAIN_API")
            .output()
            .unwrap();
        assert!(!o.status.success(), "{args:?}");
        assert!(
            stderr(&o).contains("127.0.0.1:1"),
            "{args:?} did not try the local node: {}",
            stderr(&o)
        );
    }
}

#[test]
fn a_one_node_chain_from_init_proposes_every_block_itself() {
    let home = tempfile::tempdir().unwrap();
    let dir = home.path().join("mynode");
    // The default period (1 s, impeach timeout 2 s): a loaded test machine must not
    // delay the lone proposer into a real impeachment.
    let o = cpchain(home.path(), &["init", dir.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    // A free port for the API instead of the default 8645 (tests run side by side).
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let cfg = dir.join("node.toml");
    let text = std::fs::read_to_string(&cfg).unwrap();
    assert!(text.contains("127.0.0.1:8645"), "{text}");
    std::fs::write(
        &cfg,
        text.replace("127.0.0.1:8645", &format!("127.0.0.1:{port}")),
    )
    .unwrap();
    let mut node = Command::new(env!("CARGO_BIN_EXE_cpchain"))
        .arg("--home")
        .arg(home.path())
        .args(["node", "--config", cfg.to_str().unwrap()])
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(home.path().join("node.log")).unwrap())
        .spawn()
        .unwrap();
    let api = format!("http://127.0.0.1:{port}");
    let start = std::time::Instant::now();
    let mut height = None;
    while start.elapsed() < std::time::Duration::from_secs(60) {
        height = storage_node::node::devnet::height_of(&api);
        if height.is_some_and(|h| h >= 7) {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let impeachments: serde_json::Value = ureq::get(&format!("{api}/impeachments"))
        .call()
        .ok()
        .and_then(|r| r.into_json().ok())
        .unwrap_or_default();
    let _ = node.kill();
    let _ = node.wait();
    let log = std::fs::read_to_string(home.path().join("node.log")).unwrap_or_default();
    assert!(
        height.is_some_and(|h| h >= 7),
        "height {height:?}; log:\n{log}"
    );
    // The only proposer is always up: no block of the chain may be an impeach block.
    assert_eq!(
        impeachments.as_array().map(Vec::len),
        Some(0),
        "{impeachments}; log:\n{log}"
    );
}
