//! `ken status` and `ken admit --cluster` against real bank processes started from a keyed
//! cluster file (issue 16): every member answers with plausible counters that grow; a
//! member SIGKILLed shows "no answer" while the others stay up; an unkeyed request to the
//! keyed cluster gets no answer at all (the negative control: the same request with the
//! key is answered); and a member whose store was wiped is refused by its peer until `ken
//! admit --cluster` admits it on the running peer, after which messages flow to it.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use ken_tools::harness::{self, Process, Spec};
use serde_json::Value;

/// A cluster file of bank members `ids` on fresh loopback ports, keyed with `k.key`.
fn cluster_file(dir: &Path, ids: &[&str]) -> PathBuf {
    let ports = harness::free_ports(ids.len()).unwrap();
    let mut text = String::new();
    for (id, port) in ids.iter().zip(&ports) {
        text.push_str(&format!(
            "[[process]]\nid = \"{id}\"\naddress = \"127.0.0.1:{port}\"\nstore = \"{id}.db\"\n"
        ));
    }
    text.push_str("[settings]\nkey_file = \"k.key\"\n");
    let path = dir.join("cluster.toml");
    std::fs::write(&path, text).unwrap();
    let out = Command::new(crate::ken())
        .arg("keygen")
        .arg(dir.join("k.key"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    path
}

fn bank(dir: &Path, file: &Path, id: &str) -> Process {
    let args: Vec<std::ffi::OsString> = vec![
        "app".into(),
        "bank".into(),
        "--cluster".into(),
        file.into(),
        "--id".into(),
        id.into(),
    ];
    Process::start(Spec::new(id, crate::ken(), args, dir)).unwrap()
}

/// Runs `ken status --json` with `extra` flags: (exit code, document).
fn status(file: &Path, extra: &[&str]) -> (i32, Value) {
    let out = Command::new(crate::ken())
        .arg("status")
        .arg("--cluster")
        .arg(file)
        .arg("--json")
        .args(["--timeout-ms", "700"])
        .args(extra)
        .output()
        .unwrap();
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "ken status --json prints JSON ({e}): {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.code().unwrap_or(-1), doc)
}

/// The row of process `id`.
fn row<'a>(doc: &'a Value, id: &str) -> &'a Value {
    doc["processes"]
        .as_array()
        .expect("a processes array")
        .iter()
        .find(|p| p["id"] == id)
        .unwrap_or_else(|| panic!("a row for {id} in {doc:#}"))
}

/// Peer `peer` in the status of `id`.
fn peer<'a>(doc: &'a Value, id: &str, peer: &str) -> &'a Value {
    row(doc, id)["status"]["peers"]
        .as_array()
        .expect("a peers array")
        .iter()
        .find(|p| p["id"] == peer)
        .unwrap_or_else(|| panic!("peer {peer} in the status of {id}: {doc:#}"))
}

fn u(v: &Value) -> u64 {
    v.as_u64().unwrap_or_else(|| panic!("a number, not {v}"))
}

/// Polls `ken status` until `ok` holds for the document, or panics with the last one.
fn wait_status(file: &Path, what: &str, ok: impl Fn(i32, &Value) -> bool) -> Value {
    let mut last = Value::Null;
    harness::wait_until(
        Instant::now() + Duration::from_secs(30),
        Duration::from_millis(200),
        || {
            let (code, doc) = status(file, &[]);
            let done = ok(code, &doc);
            last = doc.clone();
            done.then_some(doc)
        },
    )
    .unwrap_or_else(|_| panic!("within 30 s: {what}; last status: {last:#}"))
}

#[test]
fn status_rows_of_a_keyed_bank_cluster_a_killed_member_and_an_unkeyed_request() {
    let dir = tempfile::tempdir().unwrap();
    let ids = ["a", "b", "c"];
    let file = cluster_file(dir.path(), &ids);
    let mut procs: Vec<Process> = ids.iter().map(|id| bank(dir.path(), &file, id)).collect();

    let first = wait_status(
        &file,
        "every member up with turns and commits",
        |code, doc| {
            code == 0
                && ids.iter().all(|id| {
                    let r = row(doc, id);
                    r["up"] == true && r["status"]["commits"].as_u64().is_some_and(|c| c > 0)
                })
        },
    );
    for id in ids {
        let s = &row(&first, id)["status"];
        assert_eq!(s["id"], id);
        assert_eq!(s["app"], "bank");
        assert_eq!(s["schema_version"], 1);
        assert_eq!(s["authenticated"], true);
        assert_eq!(s["incarnation"].as_str().unwrap().len(), 16, "{s:#}");
        assert!(u(&s["uptime_ms"]) > 0);
        assert!(
            u(&s["turns"]) > 0 && u(&s["turns_total"]) >= u(&s["turns"]),
            "{s:#}"
        );
        let lat = &s["commit_latency"];
        assert!(u(&lat["samples"]) > 0, "{s:#}");
        assert!(u(&lat["p50_us"]) <= u(&lat["p99_us"]) && u(&lat["p99_us"]) <= u(&lat["max_us"]));
        let peers: Vec<&str> = s["peers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["id"].as_str().unwrap())
            .collect();
        let mut others: Vec<&str> = ids.iter().copied().filter(|o| *o != id).collect();
        others.sort();
        assert_eq!(peers, others);
        assert_eq!(u(&s["held"]) + u(&s["poisoned"]) + u(&s["dead_letters"]), 0);
    }
    // The counters grow: a second sample has more turns.
    let turns_a = u(&row(&first, "a")["status"]["turns"]);
    wait_status(&file, "a's turns grow", |_, doc| {
        row(doc, "a")["status"]["turns"]
            .as_u64()
            .is_some_and(|t| t > turns_a)
    });

    // Negative control: the same request untagged is dropped by every keyed process.
    let (code, doc) = status(&file, &["--no-key"]);
    assert_eq!(code, 2, "some processes did not answer: {doc:#}");
    for id in ids {
        let r = row(&doc, id);
        assert_eq!(r["up"], false, "{id} answered an unkeyed request: {doc:#}");
        assert!(
            r["error"].as_str().unwrap().contains("no answer"),
            "{doc:#}"
        );
    }
    // ... and counted the drops as untagged frames.
    let keyed = wait_status(&file, "untagged drops counted", |code, doc| {
        code == 0
            && ids.iter().all(|id| {
                row(doc, id)["status"]["frames_dropped"]["untagged"]
                    .as_u64()
                    .is_some_and(|n| n > 0)
            })
    });
    assert_eq!(
        u(&row(&keyed, "a")["status"]["frames_dropped"]["admin_malformed"]),
        0
    );
    // A keyed admin request whose payload does not decode is dropped and counted as such.
    send_malformed_admin(dir.path(), row(&keyed, "a")["address"].as_str().unwrap());
    wait_status(&file, "a counts a malformed admin request", |_, doc| {
        row(doc, "a")["status"]["frames_dropped"]["admin_malformed"]
            .as_u64()
            .is_some_and(|n| n > 0)
    });

    // A valid keyed status request too small for its reply gets no answer (a forged source
    // address must not be flooded with replies larger than the request); the same request
    // padded as `ken status` pads it is answered.
    let a_addr = row(&keyed, "a")["address"].as_str().unwrap().to_string();
    assert_eq!(
        status_request_reply_bytes(dir.path(), &a_addr, 0),
        None,
        "an unpadded request was answered"
    );
    let answered = status_request_reply_bytes(dir.path(), &a_addr, ken::admin::ADMIN_REQUEST_BYTES)
        .expect("a padded request gets its reply");
    assert!(
        answered <= ken::limits::AMPLIFICATION_MAX * ken::admin::ADMIN_REQUEST_BYTES,
        "{answered}"
    );

    // SIGKILL b: its row says no answer, a and c stay up.
    procs[1].kill().unwrap();
    let (code, doc) = status(&file, &[]);
    assert_eq!(code, 2, "{doc:#}");
    assert_eq!(row(&doc, "b")["up"], false, "{doc:#}");
    assert!(row(&doc, "b")["error"]
        .as_str()
        .unwrap()
        .contains("no answer"));
    for id in ["a", "c"] {
        assert_eq!(row(&doc, id)["up"], true, "{doc:#}");
    }
    // Messages to b wait in a's outbox, and their age grows.
    let waiting = wait_status(
        &file,
        "a's outbox to b waits for more than 1 s",
        |_, doc| {
            row(doc, "a")["up"] == true
                && peer(doc, "a", "b")["oldest_unacked_age_ms"]
                    .as_u64()
                    .is_some_and(|ms| ms > 1000)
        },
    );
    assert!(u(&peer(&waiting, "a", "b")["outbox"]) > 0, "{waiting:#}");

    // The text view has one row per process.
    let out = Command::new(crate::ken())
        .args(["status", "--timeout-ms", "500", "--cluster"])
        .arg(&file)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(2), "{text}");
    assert!(
        !text.contains('\x1b'),
        "no escape codes in a pipe: {text:?}"
    );
    let rows: Vec<&str> = text.lines().skip(1).take(3).collect();
    assert!(
        rows[0].starts_with("a ") && rows[0].contains(" up "),
        "{text}"
    );
    assert!(
        rows[1].starts_with("b ") && rows[1].contains("no answer"),
        "{text}"
    );
    assert!(
        rows[2].starts_with("c ") && rows[2].contains(" up "),
        "{text}"
    );
    drop(procs);
}

/// Sends process `a` at `addr` an admin request sealed with the cluster key whose payload
/// has the right version and junk after it.
fn send_malformed_admin(dir: &Path, addr: &str) {
    let mut payload = ken::admin::ADMIN_VERSION.to_le_bytes().to_vec();
    payload.extend([0xff; 7]);
    send_admin(dir, addr, 1, payload);
}

/// Sends process `a` at `addr` an admin frame with `payload`, sealed with the cluster key
/// of `dir/k.key`, from a new socket (returned, to read a reply from).
fn send_admin(dir: &Path, addr: &str, seq: u64, payload: Vec<u8>) -> std::net::UdpSocket {
    use ken::transport::{Auth, Frame, FrameKind, Keyring};
    let key = ken::ClusterKey::load(&dir.join("k.key")).unwrap();
    let keys = Keyring::new(&key, &[], false).unwrap();
    let frame = Frame {
        kind: FrameKind::AdminRequest,
        auth: Auth::Cluster,
        from: ken::ProcessId::new("admin-test").unwrap(),
        from_incarnation: ken::Incarnation(0),
        to: ken::ProcessId::new("a").unwrap(),
        to_incarnation: ken::Incarnation(0),
        seq: ken::Seq(seq),
        ack: ken::Seq(0),
        acked: ken::Seq(0),
        payload,
    };
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    socket.send_to(&keys.seal(&frame).unwrap(), addr).unwrap();
    socket
}

/// Sends `a` at `addr` a keyed status request with `padding` zeros; the size of the reply
/// datagram, or `None` if none came within 1 s.
fn status_request_reply_bytes(dir: &Path, addr: &str, padding: usize) -> Option<usize> {
    use ken::admin::{encode_payload, AdminRequest, PaddedRequest};
    let payload = encode_payload(&PaddedRequest {
        request: AdminRequest::Status,
        padding: vec![0; padding],
    });
    let socket = send_admin(dir, addr, 2, payload);
    socket
        .set_read_timeout(Some(std::time::Duration::from_secs(1)))
        .unwrap();
    let mut buf = vec![0u8; 65_536];
    socket.recv_from(&mut buf).ok().map(|(n, _)| n)
}

/// Deletes every file of a store (a destroyed disk), the lock file included.
fn wipe(store: &Path) {
    for suffix in ["", "-wal", "-shm", ".lock"] {
        let mut p = store.to_path_buf().into_os_string();
        p.push(suffix);
        let _ = std::fs::remove_file(p);
    }
}

#[test]
fn a_replaced_member_is_refused_until_admitted_online() {
    let dir = tempfile::tempdir().unwrap();
    let ids = ["a", "b"];
    let file = cluster_file(dir.path(), &ids);
    let mut a = bank(dir.path(), &file, "a");
    let mut b = bank(dir.path(), &file, "b");
    let before = wait_status(&file, "a and b exchange messages", |code, doc| {
        code == 0
            && peer(doc, "a", "b")["delivered"]
                .as_u64()
                .is_some_and(|d| d > 0)
    });
    let old_b = row(&before, "b")["status"]["incarnation"].clone();

    b.kill().unwrap();
    wipe(&dir.path().join("b.db"));
    b.restart().unwrap();
    let refused = wait_status(&file, "a refuses b's new incarnation", |code, doc| {
        code == 0
            && row(doc, "b")["status"]["incarnation"] != old_b
            && peer(doc, "a", "b")["awaiting_admission"] == true
    });
    let new_b = row(&refused, "b")["status"]["incarnation"].clone();
    assert_eq!(
        peer(&refused, "a", "b")["incarnation"],
        old_b,
        "{refused:#}"
    );
    // Negative control: left alone, a keeps refusing it (b consumes nothing of a's), in
    // every sample until b has run for 2 s.
    wait_status(&file, "b up for 2 s, refused all along", |_, doc| {
        assert_eq!(peer(doc, "a", "b")["awaiting_admission"], true, "{doc:#}");
        assert_eq!(u(&peer(doc, "b", "a")["delivered"]), 0, "{doc:#}");
        row(doc, "b")["status"]["uptime_ms"]
            .as_u64()
            .is_some_and(|ms| ms > 2000)
    });

    // A peer that is not one of a's is refused, with a's peers named.
    let out = Command::new(crate::ken())
        .args(["admit", "--cluster"])
        .arg(&file)
        .args(["--id", "a", "zz"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not a peer of a"), "{err}");

    let out = Command::new(crate::ken())
        .args(["admit", "--cluster"])
        .arg(&file)
        .args(["--id", "a", "b"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let admitted = wait_status(&file, "a admits b's new incarnation", |code, doc| {
        code == 0
            && peer(doc, "a", "b")["incarnation"] == new_b
            && peer(doc, "a", "b")["awaiting_admission"] == false
            && peer(doc, "b", "a")["delivered"]
                .as_u64()
                .is_some_and(|d| d > 0)
    });
    assert_eq!(u(&admitted["processes"][0]["status"]["dead_letters"]), 0);
    drop((a.kill(), b.kill()));
}

/// One plain HTTP GET of `path` at `addr`: (status line, body).
fn http_get(addr: &str, path: &str) -> (String, String) {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").expect("a head and a body");
    (head.lines().next().unwrap().to_string(), body.to_string())
}

/// The value of the sample `name` (with its labels, exactly as printed) in `body`.
fn sample(body: &str, name: &str) -> Option<f64> {
    body.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

#[test]
fn metrics_endpoint_serves_the_documented_metrics_and_counters_grow() {
    let dir = tempfile::tempdir().unwrap();
    let file = cluster_file(dir.path(), &["a", "b"]);
    let mut procs = Vec::new();
    for id in ["a", "b"] {
        let args: Vec<std::ffi::OsString> = vec![
            "app".into(),
            "bank".into(),
            "--cluster".into(),
            file.clone().into(),
            "--id".into(),
            id.into(),
            "--metrics".into(),
            "127.0.0.1:0".into(),
        ];
        procs.push(Process::start(Spec::new(id, crate::ken(), args, dir.path())).unwrap());
    }
    // The bound address is printed on stderr.
    let addr = harness::wait_until(
        Instant::now() + Duration::from_secs(30),
        Duration::from_millis(50),
        || {
            procs[0].current_life().and_then(|l| {
                l.stderr_tail(50).lines().find_map(|line| {
                    line.strip_prefix("metrics: http://")
                        .and_then(|rest| rest.strip_suffix("/metrics"))
                        .map(str::to_string)
                })
            })
        },
    )
    .unwrap_or_else(|_| panic!("a metrics line: {}", procs[0].report(1, 30)));
    let scrape = || {
        let (status, body) = http_get(&addr, "/metrics");
        assert_eq!(status, "HTTP/1.1 200 OK", "{body}");
        body
    };
    // Wait for turns and a refresh (once a second).
    let first = harness::wait_until(
        Instant::now() + Duration::from_secs(30),
        Duration::from_millis(200),
        || {
            let body = scrape();
            (sample(&body, "ken_turns_total").is_some_and(|t| t > 0.0)
                && sample(&body, "ken_peer_outbox_messages{peer=\"b\"}").is_some())
            .then_some(body)
        },
    )
    .expect("ken_turns_total above 0 within 30 s");
    // Every metric METRICS.md documents is there.
    let doc =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../ken/METRICS.md"))
            .unwrap();
    let documented: Vec<&str> = doc
        .lines()
        .filter_map(|l| l.strip_prefix("| `")?.split('`').next())
        .collect();
    assert!(
        documented.len() >= 15,
        "METRICS.md lists the metrics: {documented:?}"
    );
    for name in &documented {
        assert!(
            first.lines().any(|l| l.starts_with(name)),
            "metric {name} documented but not served:\n{first}"
        );
    }
    for name in [
        "ken_commit_seconds_bucket",
        "ken_batch_turns_count",
        "ken_frames_dropped_total{reason=\"untagged\"}",
        "ken_fuse_groups{state=\"live\"}",
        "ken_client_requests_total{outcome=\"applied\"}",
        "ken_peer_retransmits_total{peer=\"b\"}",
    ] {
        assert!(first.contains(name), "{name} in:\n{first}");
    }
    assert!(sample(&first, "ken_commit_seconds_count").is_some_and(|n| n > 0.0));
    assert!(sample(&first, "ken_recovery_seconds").is_some_and(|s| s > 0.0));
    // A counter grows between two scrapes.
    let turns = sample(&first, "ken_turns_total").unwrap();
    harness::wait_until(
        Instant::now() + Duration::from_secs(30),
        Duration::from_millis(200),
        || (sample(&scrape(), "ken_turns_total").unwrap() > turns).then_some(()),
    )
    .expect("ken_turns_total grows");
    // Anything but /metrics is a 404.
    assert_eq!(http_get(&addr, "/other").0, "HTTP/1.1 404 Not Found");
    drop(procs);
}
