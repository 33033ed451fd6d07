//! Helpers shared by the integration tests: temp stores, raw connections, seeds.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ken_store::{OpenError, Recovered, Store, StoreOptions};

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

/// A temp directory holding one store path.
pub struct TempStore {
    pub dir: tempfile::TempDir,
    pub path: PathBuf,
}

pub fn temp_store() -> TempStore {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("p.ken");
    TempStore { dir, path }
}

/// A raw read-write SQLite connection, for tests that damage or inspect the file directly.
/// It writes through the `ken-wal` shim, as the owner does, so the pages it writes keep
/// their checksums (the damage a test makes is to records, seen by the record checks).
pub fn raw(path: &Path) -> rusqlite::Connection {
    ken_store::vfs::register().expect("the ken-wal VFS registers");
    rusqlite::Connection::open_with_flags_and_vfs(
        path,
        rusqlite::OpenFlags::default(),
        ken_store::vfs::VFS_NAME,
    )
    .expect("raw connection")
}

/// A seeded RNG: the seed comes from `KEN_SEED` if set, else from the clock; it is printed
/// so a failing run can be replayed.
pub fn seeded_rng(test: &str) -> (ChaCha8Rng, u64) {
    let seed = match std::env::var("KEN_SEED") {
        Ok(s) => s.parse().expect("KEN_SEED is a u64"),
        Err(_) => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock after 1970")
            .as_nanos() as u64,
    };
    eprintln!("{test}: seed {seed} (replay with KEN_SEED={seed})");
    (ChaCha8Rng::seed_from_u64(seed), seed)
}

/// A command that re-runs this test binary as a child running only `test` (full path,
/// e.g. `kill::child_and_parent`), with `env` set so the test acts as the child.
pub fn child_command(test: &str, env: (&str, &Path)) -> std::process::Command {
    let exe = std::env::current_exe().expect("test binary path");
    let mut cmd = std::process::Command::new(exe);
    cmd.args([
        test,
        "--exact",
        "--nocapture",
        "--test-threads=1",
        "--quiet",
    ])
    .env(env.0, env.1);
    cmd
}

/// Reads a child's stdout on a thread and forwards complete lines (newline-terminated; a
/// line cut short by a kill is dropped) over a channel.
pub fn line_reader(
    stdout: std::process::ChildStdout,
) -> (
    std::sync::mpsc::Receiver<String>,
    std::thread::JoinHandle<()>,
) {
    use std::io::BufRead;
    let (tx, rx) = std::sync::mpsc::channel();
    let handle = std::thread::spawn(move || {
        let mut reader = std::io::BufReader::new(stdout);
        let mut line = Vec::new();
        loop {
            line.clear();
            match reader.read_until(b'\n', &mut line) {
                Ok(0) | Err(_) => return,
                Ok(_) if line.last() == Some(&b'\n') => {
                    let text = String::from_utf8_lossy(&line[..line.len() - 1]).into_owned();
                    if tx.send(text).is_err() {
                        return;
                    }
                }
                Ok(_) => return,
            }
        }
    });
    (rx, handle)
}

/// How long [`try_open_with`] retries a spurious `InUse`.
const SPURIOUS_IN_USE_DEADLINE: Duration = Duration::from_secs(10);

/// `Store::open_with`, retrying `InUse` until a deadline.
///
/// Why: tests in this binary spawn child processes from other threads, and between fork and
/// exec a child holds a copy of every descriptor of this process, including the lock file
/// of a store another test has just closed. flock locks belong to the open file
/// description, so for that instant the closed store still looks owned. A real owner opens
/// its store once per process; only tests close and reopen stores while other threads
/// spawn. Tests that expect `InUse` call `Store::open` directly.
pub fn try_open_with(
    path: &Path,
    process_id: &str,
    options: &StoreOptions,
) -> Result<(Store, Recovered), OpenError> {
    let deadline = Instant::now() + SPURIOUS_IN_USE_DEADLINE;
    loop {
        match Store::open_with(path, process_id, options) {
            Err(OpenError::InUse { .. }) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(1));
            }
            other => return other,
        }
    }
}

/// [`try_open_with`] with default options.
pub fn try_open(path: &Path, process_id: &str) -> Result<(Store, Recovered), OpenError> {
    try_open_with(path, process_id, &StoreOptions::default())
}
