//! `cargo bench -p ken-store`: the raw fsync rate of the disk next to commit throughput at
//! 1, 10, 100 and 1000 turns per commit (two row writes per turn), and their ratios.
//!
//! Environment: `KEN_BENCH_QUICK=1` runs a fraction of a second per phase (smoke test);
//! `KEN_BENCH_DIR=<dir>` measures the disk holding `<dir>` (default: the system temp dir);
//! `KEN_BENCH_PAGE_SIZE=N` creates the throughput phases' store with pages of N bytes;
//! `KEN_BENCH_VALUE_BYTES=N` sizes their table values and outbox payloads (default 100).

use ken_store::bench::{self, BenchOptions};

fn main() {
    let quick = std::env::var_os("KEN_BENCH_QUICK").is_some_and(|v| v != "0");
    let mut opts = if quick {
        BenchOptions::quick()
    } else {
        BenchOptions::full()
    };
    opts.page_size = std::env::var("KEN_BENCH_PAGE_SIZE")
        .ok()
        .and_then(|v| v.parse().ok());
    if let Some(v) = std::env::var("KEN_BENCH_VALUE_BYTES")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        opts.value_bytes = v;
    }
    let base = std::env::var_os("KEN_BENCH_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let dir = tempfile::tempdir_in(&base).expect("a temp dir in KEN_BENCH_DIR or the temp dir");
    println!(
        "ken-store commit bench in {} ({} mode)",
        dir.path().display(),
        if quick { "quick" } else { "full" }
    );
    match bench::run(dir.path(), &opts) {
        Ok(report) => print!("{report}"),
        Err(e) => {
            eprintln!("bench failed: {e}");
            std::process::exit(1);
        }
    }
}
