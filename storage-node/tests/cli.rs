//! The `cpchain` binary end to end: keys, put/get round trip, the demo, and one-line errors
//! with non-zero exit codes.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::process::{Command, Output};

/// The `cpchain` binary with `--home home`, for arguments, environment and pipes to be
/// added.
fn cpchain_cmd(home: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_cpchain"));
    c.arg("--home").arg(home);
    c
}

fn cpchain(home: &Path, args: &[&str]) -> Output {
    cpchain_cmd(home).args(args).output().expect("run cpchain")
}

/// No temporary file of a get is left in `dir`.
fn assert_no_partial(dir: &Path) {
    let left: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .ends_with(".cpchain-partial")
        })
        .map(|e| e.path())
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
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
    assert_no_partial(h);

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
        let o = cpchain_cmd(home.path())
            .args(args)
            .env("TMPDIR", tmp.path())
            .env_remove("CPCHAIN_API")
            .env_remove("CPCHAIN_NODE")
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
    let o = cpchain(home.path(), &["init", dir.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    // A 10 s impeach timeout: a loaded test machine must not delay the lone proposer into
    // a real impeachment. (The bug impeached every second block whatever the timeout.)
    let genesis = dir.join("genesis.toml");
    let text = std::fs::read_to_string(&genesis).unwrap();
    assert!(text.contains("impeach_timeout_ms = 2000"), "{text}");
    std::fs::write(
        &genesis,
        text.replace("impeach_timeout_ms = 2000", "impeach_timeout_ms = 10000"),
    )
    .unwrap();
    // A free port for the API instead of the default 8645 (tests run side by side), below
    // the ephemeral range so no outgoing connection takes it before the node binds it.
    let port = (0..200)
        .map(|_| 20_000 + rand::random::<u16>() % 10_000)
        .find(|p| std::net::TcpListener::bind(("127.0.0.1", *p)).is_ok())
        .unwrap();
    let cfg = dir.join("node.toml");
    let text = std::fs::read_to_string(&cfg).unwrap();
    assert!(text.contains("127.0.0.1:8645"), "{text}");
    std::fs::write(
        &cfg,
        text.replace("127.0.0.1:8645", &format!("127.0.0.1:{port}")),
    )
    .unwrap();
    // Its logs go to a pipe nobody reads any more (`cpchain node 2>&1 | head`): the node
    // must run on regardless (it used to panic, exit code 101, on the first log line).
    let (out_r, out_w) = std::io::pipe().unwrap();
    drop(out_r);
    let mut node = cpchain_cmd(home.path())
        .args(["node", "--config", cfg.to_str().unwrap()])
        .stdout(out_w.try_clone().unwrap())
        .stderr(out_w)
        .spawn()
        .unwrap();
    let api = format!("http://127.0.0.1:{port}");
    let start = std::time::Instant::now();
    let mut height = None;
    while start.elapsed() < std::time::Duration::from_secs(60) {
        if let Ok(Some(status)) = node.try_wait() {
            panic!("the node exited ({status}) at height {height:?}");
        }
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
    assert!(height.is_some_and(|h| h >= 7), "height {height:?}");
    // The only proposer is always up: no block of the chain may be an impeach block.
    assert_eq!(
        impeachments.as_array().map(Vec::len),
        Some(0),
        "{impeachments}"
    );
}

#[test]
fn a_node_whose_api_address_is_taken_or_bad_fails_at_once() {
    let home = tempfile::tempdir().unwrap();
    let dir = home.path().join("mynode");
    assert!(cpchain(home.path(), &["init", dir.to_str().unwrap()])
        .status
        .success());
    let cfg = dir.join("node.toml");
    let text = std::fs::read_to_string(&cfg).unwrap();
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = held.local_addr().unwrap().to_string();
    for (listen, says) in [
        (taken.as_str(), "is another node running with it?"),
        ("localhost:abc", "invalid port"),
    ] {
        std::fs::write(&cfg, text.replace("127.0.0.1:8645", listen)).unwrap();
        let o = cpchain(home.path(), &["node", "--config", cfg.to_str().unwrap()]);
        assert!(!o.status.success(), "{listen}");
        let e = stderr(&o);
        assert!(e.contains(&format!("binding the API to {listen}")), "{e}");
        assert!(e.contains(says), "{e}");
        // Nothing was opened before the address was checked.
        assert!(
            !dir.join("data").join("chain").exists(),
            "{listen}: the chain store was opened"
        );
    }
}

/// `cpchain ARGS` with standard output a pipe whose reader is already gone, as in
/// `cpchain ls | head -1` once `head` has exited: every write fails with EPIPE.
fn cpchain_to_closed_pipe(home: &Path, args: &[&str]) -> Output {
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    cpchain_cmd(home)
        .args(args)
        .stdout(writer)
        .stderr(std::process::Stdio::piped())
        .output()
        .expect("run cpchain")
}

/// Answers every HTTP request on a loopback port with `body` as JSON; returns its URL.
fn serve_json(body: String) -> String {
    use std::io::{BufRead, BufReader, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            let mut r = BufReader::new(conn.try_clone().unwrap());
            let mut line = String::new();
            while r.read_line(&mut line).is_ok_and(|n| n > 0) && line != "\r\n" {
                line.clear();
            }
            let _ = write!(
                conn,
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
                 Connection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    url
}

#[test]
fn a_closed_standard_output_ends_the_output_quietly() {
    let home = tempfile::tempdir().unwrap();
    let h = home.path();
    assert!(cpchain(h, &["keys", "new"]).status.success());
    let input = h.join("in.bin");
    let data: Vec<u8> = (0..300_000u32).map(|i| (i * 7 + i / 13) as u8).collect();
    std::fs::write(&input, &data).unwrap();
    let o = cpchain(h, &["put", "--local", input.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let id = String::from_utf8(o.stdout).unwrap().trim().to_string();

    let status = serde_json::to_string(&storage_node::node::view::StatusView::default()).unwrap();
    let api = serve_json(status);
    // The fake node answers: status prints (to a terminal or a reader) normally.
    let o = cpchain(h, &["status", "--api", &api]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("chain id"));

    let file = input.to_str().unwrap();
    for args in [
        &["status", "--api", &api][..],
        &["ls"][..],
        &["stats"][..],
        &["keys", "show"][..],
        &["put", "--local", file][..],
        &["get", "--local", &id, "-o", "-"][..],
        &["get", "--local", &id][..],
    ] {
        let o = cpchain_to_closed_pipe(h, args);
        assert!(o.status.success(), "{args:?}: {}", stderr(&o));
        let e = stderr(&o);
        assert!(
            !e.contains("panicked") && !e.contains("Broken pipe"),
            "{args:?}: {e}"
        );
    }
}

#[test]
fn local_get_ranges_outputs_and_wording() {
    let home = tempfile::tempdir().unwrap();
    let h = home.path();
    assert!(cpchain(h, &["keys", "new"]).status.success());
    let small = h.join("small.bin");
    let data = b"hello, world!\n";
    std::fs::write(&small, data).unwrap();
    let o = cpchain(h, &["put", "--local", small.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    // One block, not "1 blocks".
    assert!(stderr(&o).contains("in 1 block ("), "{}", stderr(&o));
    let id = String::from_utf8(o.stdout).unwrap().trim().to_string();

    // --local without -o writes to standard output, as the help says.
    let o = cpchain(h, &["get", "--local", &id]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(o.stdout, data);

    // Ranges: START-END (END exclusive) and START- (to the end).
    for (range, want) in [
        ("5-7", &data[5..7]),
        ("5-", &data[5..]),
        ("0-1MiB", &data[..]),
    ] {
        let o = cpchain(h, &["get", "--local", &id, "--range", range]);
        assert!(o.status.success(), "{range}: {}", stderr(&o));
        assert_eq!(o.stdout, want, "{range}");
    }
    // A range starting at or past the end is an error naming the length, before any output.
    let out = h.join("out.bin");
    for range in ["100-200", "14-", "14-15"] {
        let o = cpchain(
            h,
            &[
                "get",
                "--local",
                &id,
                "--range",
                range,
                "-o",
                out.to_str().unwrap(),
            ],
        );
        assert!(!o.status.success(), "{range}");
        let e = stderr(&o);
        assert!(e.contains("14 bytes"), "{range}: {e}");
        assert_eq!(e.trim().lines().count(), 1, "{e}");
        assert!(!out.exists());
        assert_no_partial(out.parent().unwrap());
    }
    for range in ["5-5", "7-5", "-5"] {
        let o = cpchain(h, &["get", "--local", &id, &format!("--range={range}")]);
        assert!(!o.status.success(), "{range}");
        assert!(o.stdout.is_empty(), "{range}");
    }

    // An existing directory as -o: refused up front, nothing left next to it.
    let adir = h.join("adir");
    std::fs::create_dir(&adir).unwrap();
    let o = cpchain(h, &["get", "--local", &id, "-o", adir.to_str().unwrap()]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("is a directory"), "{}", stderr(&o));
    assert_no_partial(h);

    // A get that fails once writing began (another key's data) leaves no partial file.
    assert!(cpchain(h, &["keys", "new", "--force"]).status.success());
    let o = cpchain(h, &["get", "--local", &id, "-o", out.to_str().unwrap()]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("owned by key"), "{}", stderr(&o));
    assert!(!out.exists());
    assert_no_partial(out.parent().unwrap());

    // rm says what compaction did in words, not a Debug dump.
    let o = cpchain(h, &["rm", &id]);
    assert!(o.status.success(), "{}", stderr(&o));
    let e = stderr(&o);
    assert!(e.contains("deleted 14 shards; compaction: "), "{e}");
    assert!(
        e.contains("reclaimed") && !e.contains("CompactReport"),
        "{e}"
    );
}

#[test]
fn empty_input_is_refused_before_connecting_and_errors_say_it_once() {
    let home = tempfile::tempdir().unwrap();
    let h = home.path();
    assert!(cpchain(h, &["keys", "new"]).status.success());
    let empty = h.join("empty.bin");
    std::fs::write(&empty, b"").unwrap();
    // Port 1: nothing listens, so reaching the node would fail; the emptiness is found first.
    let o = cpchain(
        h,
        &[
            "put",
            empty.to_str().unwrap(),
            "--node",
            "http://127.0.0.1:1",
        ],
    );
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("empty.bin is empty: there is nothing to store"),
        "{}",
        stderr(&o)
    );
    let o = cpchain_cmd(h)
        .args(["put", "-", "--node", "http://127.0.0.1:1"])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("standard input is empty"),
        "{}",
        stderr(&o)
    );
    // Locally an empty file is stored as before.
    let o = cpchain(h, &["put", "--local", empty.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));

    // An OS error is said once, not once more for each error that wraps it.
    let odd_home = h.join("odd-home");
    std::fs::create_dir(&odd_home).unwrap();
    std::fs::write(odd_home.join("store"), b"x").unwrap();
    let o = cpchain(&odd_home, &["stats"]);
    assert!(!o.status.success());
    assert_eq!(
        stderr(&o).matches("File exists").count(),
        1,
        "{}",
        stderr(&o)
    );
}

#[test]
fn every_command_takes_the_node_api_by_either_name() {
    let home = tempfile::tempdir().unwrap();
    assert!(cpchain(home.path(), &["keys", "new"]).status.success());
    let file = home.path().join("f.bin");
    std::fs::write(&file, b"some bytes").unwrap();
    let file = file.to_str().unwrap();
    // Port 1: nothing listens, so the error names the address each command tried.
    for (args, env) in [
        (vec!["status", "--node", "http://127.0.0.1:1"], None),
        (vec!["put", file, "--api", "http://127.0.0.1:1"], None),
        (vec!["status"], Some(("CPCHAIN_NODE", "http://127.0.0.1:1"))),
        (vec!["ls", "--net", "--node", "http://127.0.0.1:1"], None),
        (
            vec!["put", file],
            Some(("CPCHAIN_API", "http://127.0.0.1:1")),
        ),
    ] {
        let mut c = cpchain_cmd(home.path());
        c.args(&args);
        // A private temp dir, so a devnet running on this machine is not the one found.
        c.env("TMPDIR", home.path());
        c.env_remove("CPCHAIN_API").env_remove("CPCHAIN_NODE");
        if let Some((k, v)) = env {
            c.env(k, v);
        }
        let o = c.output().unwrap();
        assert!(!o.status.success(), "{args:?}");
        assert!(
            stderr(&o).contains("http://127.0.0.1:1/"),
            "{args:?} {env:?}: {}",
            stderr(&o)
        );
    }
}

#[test]
fn ls_net_refuses_a_bad_owner_or_limit_before_connecting() {
    let home = tempfile::tempdir().unwrap();
    for (args, says) in [
        (vec!["ls", "--owner", "xyz"], "is not an address"),
        (vec!["ls", "--net", "--limit", "0"], "--limit"),
        (vec!["ls", "--net", "--limit", "201"], "--limit"),
        (vec!["ls", "--key", "k.key"], "add --net"),
    ] {
        let o = cpchain(home.path(), &args);
        assert!(!o.status.success(), "{args:?}");
        assert!(stderr(&o).contains(says), "{args:?}: {}", stderr(&o));
        assert!(!stderr(&o).contains("127.0.0.1"), "{args:?} connected");
    }
}

#[test]
fn reading_commands_do_not_create_a_mistyped_home() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("typo");
    for cmd in ["ls", "stats"] {
        let o = cpchain(&home, &[cmd]);
        assert!(!o.status.success(), "{cmd}");
        assert!(
            stderr(&o).contains("does not exist"),
            "{cmd}: {}",
            stderr(&o)
        );
        assert!(!home.exists(), "{cmd} created {}", home.display());
    }
}

#[test]
fn keys_show_reads_any_key_file_and_a_failed_demo_leaves_no_directory() {
    let home = tempfile::tempdir().unwrap();
    let o = cpchain(home.path(), &["keys", "new"]);
    assert!(o.status.success());
    let public = String::from_utf8(o.stdout).unwrap();
    // Elsewhere (no --home key), the same file read with --key.
    let other = tempfile::tempdir().unwrap();
    let file = home.path().join("key");
    assert!(file.exists(), "the key is not at {}", file.display());
    let o = cpchain(
        other.path(),
        &["keys", "show", "--key", file.to_str().unwrap()],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(String::from_utf8(o.stdout).unwrap(), public);
    // A demo that fails (no data shards) removes its working directory.
    let tmp = tempfile::tempdir().unwrap();
    let o = cpchain_cmd(home.path())
        .args(["demo", "--size", "1MiB", "-k", "0"])
        .env("TMPDIR", tmp.path())
        .output()
        .unwrap();
    assert!(!o.status.success());
    let left: Vec<_> = std::fs::read_dir(tmp.path()).unwrap().collect();
    assert!(left.is_empty(), "left behind: {left:?}; {}", stderr(&o));
}
