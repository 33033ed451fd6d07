//! Restart to first served request of a `ken-kv` server holding a large store (issue 17):
//! fills a store to `--mib` MiB of values of `--value-bytes` (default 1,000; written into
//! the store while the server is down, then 300 puts through it; skipped when `--store`
//! already holds that many rows), then `--runs` times:
//! SIGKILL the server, drop the page cache (`sync; echo 3 > /proc/sys/vm/drop_caches`, root
//! only: without it the runs are warm and the output says so), start it again and time from
//! `spawn` to the first reply of a `Get` of a key written during the fill (the client
//! retransmits every millisecond, so the figure is good to about a millisecond). The same
//! number of warm runs (page cache kept) follow. Prints one JSON line: p50, p99 and max of
//! each, the store's size, the binary's size, the load average.
//!
//! ```text
//! cargo build --release -p ken-apps --bins --examples
//! target/release/examples/cold_restart --mib 1024 --runs 30 [--value-bytes N] [--store DIR/kv.db] [--bin PATH]
//! ```
//!
//! `--bin` times another build of `ken-kv` (a stripped copy, say) on the same store.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ken::{BlockingClient, ClientId, ClientOptions};
use ken_apps::kv::{Reply, Request, KV_TABLE};

fn arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .cloned()
}

fn serve(bin: &Path, store: &Path, addr: SocketAddr) -> Child {
    serve_with(bin, store, addr, Stdio::null())
}

/// Starts the server with its stderr to `stderr`.
fn serve_with(bin: &Path, store: &Path, addr: SocketAddr, stderr: Stdio) -> Child {
    Command::new(bin)
        .args([
            "serve",
            "--id",
            "kv",
            "--listen",
            &addr.to_string(),
            "--store",
        ])
        .arg(store)
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .expect("start ken-kv")
}

/// Reads the server's stderr on a thread; returns when its `ready:` line arrived (after
/// recovery, before the first request), or `None` if it never did.
fn ready_at(server: &mut Child) -> std::sync::mpsc::Receiver<Instant> {
    use std::io::BufRead;
    let (tx, rx) = std::sync::mpsc::channel();
    let stderr = server.stderr.take().expect("stderr piped");
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr).lines() {
            let Ok(line) = line else { return };
            if line.starts_with("ready:") {
                let _ = tx.send(Instant::now());
            }
        }
    });
    rx
}

/// A client that retransmits every millisecond: the restart is timed to about that.
fn eager_client() -> BlockingClient<Request, Reply> {
    BlockingClient::with_id(
        ClientId::random(),
        1,
        ClientOptions {
            retry_initial: Duration::from_millis(1),
            retry_max: Duration::from_millis(1),
            deadline: Duration::from_secs(30),
            refused_grace: Duration::from_secs(30),
        },
    )
    .expect("client")
}

fn key(n: usize) -> String {
    format!("k{n:09}")
}

fn value(n: usize, bytes: usize) -> String {
    std::iter::repeat_n(char::from(b'a' + (n % 26) as u8), bytes).collect()
}

/// Writes `rows` rows straight into the (closed) store, as `ken-kv` would have: table
/// [`KV_TABLE`], key = the key's bytes, value = the codec-encoded `String`, 1,000 rows a
/// commit. Much faster than a put per turn, and the same rows.
fn fill(store: &Path, rows: usize, value_bytes: usize) {
    let started = Instant::now();
    let (mut s, _) = ken::store::Store::open(store, "kv").expect("open the store to fill it");
    let mut n = 0;
    while n < rows {
        let mut b = ken::store::Batch::default();
        for _ in 0..1000.min(rows - n) {
            b.table_writes.push(ken::store::TableWrite {
                table: KV_TABLE.into(),
                key: key(n).into_bytes(),
                value: Some(ken::store::codec::encode(&value(n, value_bytes))),
            });
            n += 1;
        }
        s.commit(&b).expect("fill commit");
    }
    eprintln!("filled {rows} rows in {:?}", started.elapsed());
}

fn drop_caches() -> bool {
    // `sync` first: dirty pages are not dropped. Writing the knob needs root.
    let _ = Command::new("sync").status();
    std::fs::write("/proc/sys/vm/drop_caches", "3\n").is_ok()
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

fn summary(name: &str, mut ms: Vec<f64>) -> String {
    ms.sort_by(f64::total_cmp);
    format!(
        "\"{name}_ms_p50\":{:.1},\"{name}_ms_p99\":{:.1},\"{name}_ms_max\":{:.1}",
        percentile(&ms, 0.5),
        percentile(&ms, 0.99),
        ms[ms.len() - 1]
    )
}

fn main() {
    let mib: usize = arg("--mib").map_or(1024, |v| v.parse().expect("--mib: a number"));
    let runs: usize = arg("--runs").map_or(30, |v| v.parse().expect("--runs: a number"));
    assert!(runs > 0, "--runs must be at least 1");
    let exe = std::env::current_exe().expect("exe");
    let here = exe
        .parent()
        .and_then(|d| d.parent())
        .expect("target/release")
        .to_path_buf();
    let bin = arg("--bin").map_or_else(|| here.join("ken-kv"), PathBuf::from);
    let _dir;
    let store = match arg("--store") {
        Some(p) => PathBuf::from(p),
        None => {
            _dir = tempfile::tempdir_in("/var/tmp").expect("a directory in /var/tmp");
            _dir.path().join("kv.db")
        }
    };
    let port = std::net::UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .expect("a free port")
        .port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
    let value_bytes: usize =
        arg("--value-bytes").map_or(1000, |v| v.parse().expect("--value-bytes: a number"));
    let rows = (mib * 1024 * 1024 / value_bytes).max(1);

    // The server creates the store (with kv's identity); the rows go in while it is down.
    let mut server = serve(&bin, &store, addr);
    let mut probe = eager_client();
    let present = matches!(
        probe.call(addr, &Request::Get { key: key(rows - 1) }),
        Ok(Reply::Value(Some(_)))
    );
    if !present {
        server.kill().expect("SIGKILL");
        server.wait().expect("reaped");
        fill(&store, rows, value_bytes);
        server = serve(&bin, &store, addr);
        // A few puts through the server, so that the crash image has a WAL of turns.
        for n in 0..300 {
            probe
                .call(
                    addr,
                    &Request::Put {
                        key: key(n),
                        value: value(n, value_bytes),
                    },
                )
                .expect("put");
        }
    }
    let store_bytes = std::fs::metadata(&store).map_or(0, |m| m.len());
    let bin_bytes = std::fs::metadata(&bin).map_or(0, |m| m.len());

    // Each run: (spawn to the ready line, spawn to the first reply), milliseconds.
    let mut timed = |cold: bool| -> Option<(f64, f64)> {
        server.kill().expect("SIGKILL");
        server.wait().expect("reaped");
        let dropped = cold && drop_caches();
        if cold && !dropped {
            return None;
        }
        let mut c = eager_client();
        let n = rows / 2;
        let started = Instant::now();
        server = serve_with(&bin, &store, addr, Stdio::piped());
        let ready = ready_at(&mut server);
        match c.call(addr, &Request::Get { key: key(n) }) {
            Ok(Reply::Value(Some(v))) => assert_eq!(v, value(n, value_bytes), "row {n}"),
            other => panic!("first request after a restart: {other:?}"),
        }
        let served = started.elapsed().as_secs_f64() * 1e3;
        let ready = ready
            .recv_timeout(Duration::from_secs(5))
            .expect("the server's ready line")
            .duration_since(started)
            .as_secs_f64()
            * 1e3;
        Some((ready, served))
    };
    let wal_bytes = std::fs::metadata(ken::store::wal_path(&store)).map_or(0, |m| m.len());
    let (cold_ready, cold): (Vec<f64>, Vec<f64>) = (0..runs).filter_map(|_| timed(true)).unzip();
    let (warm_ready, warm): (Vec<f64>, Vec<f64>) = (0..runs).filter_map(|_| timed(false)).unzip();
    server.kill().expect("SIGKILL");
    let _ = server.wait();
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let cold_part = if cold.is_empty() {
        "\"cold\":\"not measured: drop_caches needs root\"".to_string()
    } else {
        format!(
            "{},{}",
            summary("cold", cold),
            summary("cold_ready", cold_ready)
        )
    };
    println!(
        "{{\"mib\":{mib},\"value_bytes\":{value_bytes},\"rows\":{rows},\"runs\":{runs},\"store_bytes\":{store_bytes},\"wal_bytes\":{wal_bytes},\"bin\":\"{}\",\
         \"bin_bytes\":{bin_bytes},{cold_part},{},{},\"load\":\"{}\"}}",
        bin.display(),
        summary("warm", warm),
        summary("warm_ready", warm_ready),
        load.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
    );
}
