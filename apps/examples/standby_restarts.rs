//! What a primary's crash-restarts cost its standby (issue 18): a `ken-kv` primary with a
//! standby (`ken standby serve`, on loopback), loaded by `--clients` threads that put
//! without pause, is SIGKILLed `--kills` times at seeded random moments (0.3 to 1.3 s apart)
//! and started again at once. Each restart either finds the replica in sync, takes back the
//! batches the standby committed and the primary lost (`took back`), ships the commits the
//! standby lacks from the store's batch journal (`from the store's journal`), or reseeds the
//! standby with a copy of the whole store (`reseeding the standby`). Counted from the
//! primary's log (run with `RUST_LOG=warn,ken::standby=info`); one JSON line. The first
//! seeding of the empty replica is one of the reseeds.
//!
//! At the end both are stopped and every put a client saw answered is read back from the
//! replica, promoted as an operator would after losing the primary's disk (`ken standby
//! promote`, then the primary's binary on the replica): `lost` counts the answered puts it
//! does not hold (0, or the standby broke its guarantee).
//!
//! ```text
//! cargo build --release --workspace --bins --examples
//! target/release/examples/standby_restarts [--kills 40] [--clients 8] [--seed 1] [--dir DIR]
//! ```

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ken::{BlockingClient, ClientId, ClientOptions};
use ken_apps::kv::{Reply, Request};
use rand::{Rng, SeedableRng};

fn arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .cloned()
}

/// A free loopback port (bound, read, released: never a fixed port).
fn free_udp() -> SocketAddr {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .expect("a free UDP port")
}

fn free_tcp() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .expect("a free TCP port")
}

fn log_file(path: &Path) -> Stdio {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .expect("open a log file")
        .into()
}

/// Waits until `log` has `n` lines starting with `ready:` (the server's ready line).
fn wait_ready(log: &Path, n: usize) {
    let until = Instant::now() + Duration::from_secs(30);
    while Instant::now() < until {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if text.lines().filter(|l| l.starts_with("ready:")).count() >= n {
            return;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    panic!("no ready line #{n} in {} within 30 s", log.display());
}

fn client() -> BlockingClient<Request, Reply> {
    BlockingClient::with_id(
        ClientId::random(),
        1,
        ClientOptions {
            retry_initial: Duration::from_millis(20),
            retry_max: Duration::from_millis(200),
            deadline: Duration::from_secs(60),
            refused_grace: Duration::from_secs(60),
        },
    )
    .expect("client")
}

fn main() {
    let kills: u32 = arg("--kills").map_or(40, |v| v.parse().expect("--kills: a number"));
    let clients: usize = arg("--clients").map_or(8, |v| v.parse().expect("--clients: a number"));
    let seed: u64 = arg("--seed").map_or(1, |v| v.parse().expect("--seed: a number"));
    let exe = std::env::current_exe().expect("exe");
    let bins = exe
        .parent()
        .and_then(|d| d.parent())
        .expect("target/release")
        .to_path_buf();
    let (ken, kv) = (bins.join("ken"), bins.join("ken-kv"));
    for b in [&ken, &kv] {
        assert!(
            b.exists(),
            "{} is missing: cargo build --release --workspace --bins --examples",
            b.display()
        );
    }
    let _tmp;
    let dir = match arg("--dir") {
        Some(d) => PathBuf::from(d),
        None => {
            _tmp = tempfile::tempdir_in("/var/tmp").expect("a directory in /var/tmp");
            _tmp.path().to_path_buf()
        }
    };
    std::fs::create_dir_all(&dir).expect("create --dir");
    let (addr, ship, promoted_addr) = (free_udp(), free_tcp(), free_udp());
    let cluster = dir.join("cluster.toml");
    std::fs::write(
        &cluster,
        format!(
            "[[process]]\nid = \"kv-a\"\naddress = \"{addr}\"\nstore = \"kv-a.ken\"\n\
             standby = {{ ship = \"{ship}\", address = \"{promoted_addr}\", store = \"kv-a.standby.ken\" }}\n"
        ),
    )
    .expect("write the cluster file");
    let (primary_log, standby_log) = (dir.join("primary.log"), dir.join("standby.log"));
    let mut standby = Command::new(&ken)
        .args(["standby", "serve", "--cluster"])
        .arg(&cluster)
        .args(["--id", "kv-a"])
        .stdout(Stdio::null())
        .stderr(log_file(&standby_log))
        .spawn()
        .expect("start the standby");
    let start = || -> Child {
        Command::new(&kv)
            .args(["serve", "--cluster"])
            .arg(&cluster)
            .args(["--id", "kv-a"])
            .env("RUST_LOG", "warn,ken::standby=info")
            .stdout(Stdio::null())
            .stderr(log_file(&primary_log))
            .spawn()
            .expect("start ken-kv")
    };
    let mut primary = start();
    wait_ready(&primary_log, 1);

    // The load: each client puts its own keys; every answered put is remembered.
    let stop = Arc::new(AtomicBool::new(false));
    let answered: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
    let load: Vec<_> = (0..clients)
        .map(|c| {
            let (stop, answered) = (Arc::clone(&stop), Arc::clone(&answered));
            std::thread::spawn(move || {
                let mut cl = client();
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let (key, value) = (format!("c{c}/{n}"), format!("v{n}"));
                    let put = Request::Put {
                        key: key.clone(),
                        value: value.clone(),
                    };
                    if matches!(cl.call(addr, &put), Ok(Reply::Put { .. })) {
                        answered.lock().expect("lock").push((key, value));
                    }
                    n += 1;
                }
            })
        })
        .collect();

    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    for k in 1..=kills {
        std::thread::sleep(Duration::from_millis(rng.gen_range(300..1300)));
        primary.kill().expect("SIGKILL the primary");
        primary.wait().expect("reap the primary");
        primary = start();
        wait_ready(&primary_log, k as usize + 1);
    }
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    for t in load {
        t.join().expect("a client thread");
    }
    primary.kill().expect("SIGKILL the primary");
    primary.wait().expect("reap");
    standby.kill().expect("SIGKILL the standby");
    standby.wait().expect("reap");

    let log = std::fs::read_to_string(&primary_log).unwrap_or_default();
    let count = |needle: &str| log.lines().filter(|l| l.contains(needle)).count();

    // The replica promoted, as after a lost disk: every answered put must be there.
    let promoted = Command::new(&ken)
        .args(["standby", "promote", "--cluster"])
        .arg(&cluster)
        .args(["--id", "kv-a"])
        .output()
        .expect("ken standby promote");
    assert!(
        promoted.status.success(),
        "promote: {}",
        String::from_utf8_lossy(&promoted.stderr)
    );
    let mut server = Command::new(&kv)
        .args(["serve", "--id", "kv-a", "--no-standby", "--listen"])
        .arg(promoted_addr.to_string())
        .arg("--store")
        .arg(dir.join("kv-a.standby.ken"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the promoted replica");
    let answered = answered.lock().expect("lock").clone();
    let mut reader = client();
    let lost = answered
        .iter()
        .filter(|(key, value)| {
            !matches!(
                reader.call(promoted_addr, &Request::Get { key: key.clone() }),
                Ok(Reply::Value(Some(v))) if &v == value
            )
        })
        .count();
    server.kill().expect("SIGKILL");
    server.wait().expect("reap");
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "{{\"kills\":{kills},\"clients\":{clients},\"seed\":{seed},\"answered_puts\":{},\
         \"lost\":{lost},\"reseeds\":{},\"first_seedings\":{},\"take_backs\":{},\
         \"journal_catch_ups\":{},\"in_sync\":{},\"load\":\"{}\"}}",
        answered.len(),
        count("reseeding the standby"),
        count("replica_commits=0 "),
        count("took back"),
        count("from the store's journal"),
        count("standby in sync"),
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" "),
    );
}
