//! Memory of a `ken-kv` server against the number of cached clients (issue 17): starts
//! `ken-kv serve` (the release binary beside this example), puts one value of
//! `--value-bytes`, measures the server's RSS idle, after `--clients` distinct clients each
//! read that value (every client's last reply, cached, is that large), and after a SIGKILL
//! and restart (recovery reads every cached client). Prints one JSON line.
//!
//! `cargo build --release -p ken-apps --bins --examples && target/release/examples/reply_cache_rss`

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ken::BlockingClient;
use ken_apps::kv::{Reply, Request};

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map_or(default, |v| v.parse().expect("a number"))
}

fn rss_kb(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

fn serve(bin: &Path, store: &Path, addr: SocketAddr) -> Child {
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
        .stderr(Stdio::null())
        .spawn()
        .expect("start ken-kv")
}

fn wait_up(addr: SocketAddr) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let mut c: BlockingClient<Request, Reply> = BlockingClient::new().expect("client");
        if c.call(
            addr,
            &Request::Get {
                key: "probe".into(),
            },
        )
        .is_ok()
        {
            return;
        }
        assert!(Instant::now() < deadline, "server did not answer");
    }
}

fn main() {
    let clients = arg("--clients", 10_000);
    let value_bytes = arg("--value-bytes", 4096);
    let exe = std::env::current_exe().expect("exe");
    let bin = exe
        .parent()
        .and_then(|d| d.parent())
        .expect("target/release")
        .join("ken-kv");
    let dir = tempfile::tempdir().expect("tempdir");
    let store = dir.path().join("kv.db");
    let port = std::net::UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .expect("a free port")
        .port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
    let mut server = serve(&bin, &store, addr);
    wait_up(addr);
    let mut c: BlockingClient<Request, Reply> = BlockingClient::new().expect("client");
    c.call(
        addr,
        &Request::Put {
            key: "big".into(),
            value: "x".repeat(value_bytes),
        },
    )
    .expect("put");
    std::thread::sleep(Duration::from_millis(200));
    let idle = rss_kb(server.id());
    for _ in 0..clients {
        let mut c: BlockingClient<Request, Reply> = BlockingClient::new().expect("client");
        match c.call(addr, &Request::Get { key: "big".into() }) {
            Ok(Reply::Value(Some(v))) => assert_eq!(v.len(), value_bytes),
            other => panic!("unexpected reply {other:?}"),
        }
    }
    std::thread::sleep(Duration::from_millis(200));
    let cached = rss_kb(server.id());
    server.kill().expect("SIGKILL");
    server.wait().expect("reaped");
    let mut server = serve(&bin, &store, addr);
    wait_up(addr);
    std::thread::sleep(Duration::from_millis(200));
    let restarted = rss_kb(server.id());
    let store_bytes = std::fs::metadata(&store).map_or(0, |m| m.len());
    server.kill().expect("SIGKILL");
    let _ = server.wait();
    println!(
        "{{\"clients\":{clients},\"value_bytes\":{value_bytes},\"rss_idle_kb\":{idle},\
         \"rss_cached_kb\":{cached},\"rss_after_restart_kb\":{restarted},\
         \"cached_over_idle\":{:.2},\"restart_over_idle\":{:.2},\"store_bytes\":{store_bytes}}}",
        cached as f64 / idle as f64,
        restarted as f64 / idle as f64
    );
}
