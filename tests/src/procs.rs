//! Real processes for kill-and-restart tests: find an app binary, start it, SIGKILL it,
//! restart it with the same command, read its stdout lines, pick free loopback ports, and
//! wait for conditions with a deadline.
//!
//! Invariants:
//! - The only way this module stops a process is SIGKILL ([`Proc::kill`], and `Drop`, so a
//!   failing test leaves no orphans). There is no graceful shutdown to fall back on.
//! - Every life of a process is recorded ([`Life`]): how it ended, attributed exactly. A
//!   life counts as killed by us only if we sent SIGKILL *and* the status says SIGKILL; a
//!   process that exited on its own just before our signal keeps its own exit status.
//! - A process's stdout is read by a thread per life into that life's line list, so a child
//!   never blocks on a full pipe; stderr goes to one file per life in the log directory.

use std::ffi::OsString;
use std::fs::File;
use std::io::{self, BufRead, BufReader, Write};
use std::net::{SocketAddr, UdpSocket};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Environment variable: a directory to take app binaries from instead of the target
/// directory of the running test.
pub const APP_BIN_DIR_ENV: &str = "KEN_APP_BIN_DIR";

/// The path of binary `name` of workspace package `package`, built fresh.
///
/// `CARGO_BIN_EXE_<name>` exists only for binaries of the package under test, so this uses
/// `<target>/<profile>/<name>`, next to the running test executable (which lives in
/// `<target>/<profile>/deps/`). Cargo builds a package's plain binaries for `cargo test`
/// only when that package has integration tests (for `CARGO_BIN_EXE_*`): measured on a
/// fresh target directory, `cargo test --workspace --release --no-run` does not build
/// `ken-pingpong`, and `cargo test -p ken-tests` would not rebuild it after an edit of the
/// runtime, so a missing or stale binary is the normal case. Hence the first call for a
/// binary in a test process runs `cargo build -p <package> --bin <name>` with the test's
/// profile and target directory: a no-op of about 0.1 s when the binary is fresh (cargo
/// does not hold the build lock while tests run, so this does not deadlock), a rebuild when
/// the app's sources changed. If cargo cannot be run at all (a test executable copied
/// elsewhere), an existing binary is used as is.
///
/// [`APP_BIN_DIR_ENV`] overrides all of this: the binary is taken from that directory (to
/// test another build, for example one with a diagnostic patch).
///
/// # Panics
/// If the build fails or leaves no binary.
pub fn app_binary(package: &str, name: &str) -> PathBuf {
    if let Some(dir) = std::env::var_os(APP_BIN_DIR_ENV) {
        let path = Path::new(&dir).join(name);
        assert!(
            path.is_file(),
            "{APP_BIN_DIR_ENV} is set, but {} does not exist",
            path.display()
        );
        return path;
    }
    static BUILT: OnceLock<Mutex<Vec<PathBuf>>> = OnceLock::new();
    let exe = std::env::current_exe().expect("the test executable's path");
    let profile_dir = exe
        .ancestors()
        .skip(1)
        .find(|dir| dir.file_name().is_some_and(|n| n != "deps"))
        .expect("the test executable lives in <target>/<profile>/deps")
        .to_path_buf();
    let path = profile_dir.join(name);
    // Serialize the check-and-build so that parallel tests build once.
    let mut built = BUILT
        .get_or_init(|| Mutex::new(Vec::new()))
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    if built.contains(&path) {
        return path;
    }
    let profile = match profile_dir.file_name().and_then(|n| n.to_str()) {
        Some("debug") => "dev".to_string(),
        Some(other) => other.to_string(),
        None => panic!("no profile directory in {}", exe.display()),
    };
    let target_dir = profile_dir
        .parent()
        .expect("<target>/<profile> has a parent");
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate is inside the workspace");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.arg("build")
        .arg("--quiet")
        .arg("--manifest-path")
        .arg(workspace.join("Cargo.toml"))
        .args(["-p", package, "--bin", name, "--profile", &profile])
        // The negative controls need the test-only release-before-commit switch, which only
        // test builds compile in.
        .args(["--features", "ken/unsafe-release-before-commit"])
        .arg("--target-dir")
        .arg(target_dir);
    match cmd.status() {
        Ok(status) => assert!(status.success(), "{cmd:?} failed: {status}"),
        Err(e) if path.is_file() => {
            eprintln!("cannot run cargo ({e}); using {} as it is", path.display());
        }
        Err(e) => panic!("{} is missing and {cmd:?} cannot run: {e}", path.display()),
    }
    assert!(
        path.is_file(),
        "{cmd:?} succeeded but there is no {}",
        path.display()
    );
    built.push(path.clone());
    path
}

/// `n` distinct UDP ports on 127.0.0.1 that were free a moment ago (bound together on
/// port 0, then released). Another process may take one before the app binds it: callers
/// must handle a bind failure by picking again (see [`exited_with_bind_error`]).
pub fn free_udp_ports(n: usize) -> Vec<u16> {
    let sockets: Vec<UdpSocket> = (0..n)
        .map(|_| UdpSocket::bind("127.0.0.1:0").expect("bind UDP 127.0.0.1:0"))
        .collect();
    sockets
        .iter()
        .map(|s| s.local_addr().expect("local address").port())
        .collect()
}

/// A loopback address for `port`.
pub fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// Polls `condition` every `poll` until it returns `Some`, or fails at `deadline`.
pub fn wait_until<T>(
    deadline: Instant,
    poll: Duration,
    mut condition: impl FnMut() -> Option<T>,
) -> Result<T, TimedOut> {
    loop {
        if let Some(v) = condition() {
            return Ok(v);
        }
        let now = Instant::now();
        if now >= deadline {
            return Err(TimedOut);
        }
        std::thread::sleep(poll.min(deadline - now));
    }
}

/// [`wait_until`] reached its deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimedOut;

/// What to run: the same command for every life of a process.
#[derive(Debug, Clone)]
pub struct AppSpec {
    /// A short label, used in log file names and messages.
    pub name: String,
    pub program: PathBuf,
    pub args: Vec<OsString>,
    /// Extra environment variables (the rest is inherited).
    pub envs: Vec<(OsString, OsString)>,
    /// Where each life's stderr goes: `<log_dir>/<name>.<life>.stderr`.
    pub log_dir: PathBuf,
}

/// Spawn attempts that may fail with "text file busy" before the failure counts (5 ms
/// apart).
const SPAWN_BUSY_RETRIES_MAX: u32 = 200;

/// How a life ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LifeEnd {
    /// We sent SIGKILL and the process died of it.
    KilledByUs,
    /// The process ended on its own (or of a signal we did not send).
    Exited(ExitStatus),
}

impl LifeEnd {
    /// True for an exit with code 0.
    pub fn is_success(&self) -> bool {
        matches!(self, LifeEnd::Exited(s) if s.success())
    }
}

/// One run of a process, from spawn to death.
#[derive(Debug)]
pub struct Life {
    /// 1 for the first start, 2 for the first restart, ...
    pub number: u32,
    pub started: Instant,
    pub ended: Option<(Instant, LifeEnd)>,
    pub stderr_path: PathBuf,
    stdout: Arc<Mutex<Vec<String>>>,
    reader: Option<JoinHandle<()>>,
}

impl Life {
    /// The stdout lines read so far (all of them once the life has ended).
    pub fn stdout_lines(&self) -> Vec<String> {
        self.stdout
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The last `max_lines` lines of this life's stderr.
    pub fn stderr_tail(&self, max_lines: usize) -> String {
        let text = std::fs::read_to_string(&self.stderr_path).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(max_lines)..].join("\n")
    }

    fn join_reader(&mut self) {
        if let Some(reader) = self.reader.take() {
            // The child is dead, so its end of the pipe is closed and the reader reaches EOF.
            let _ = reader.join();
        }
    }
}

/// A child process that can be SIGKILLed and restarted with the same command.
#[derive(Debug)]
pub struct Proc {
    spec: AppSpec,
    child: Option<Child>,
    lives: Vec<Life>,
    kills: u32,
}

impl Proc {
    /// Starts the first life.
    pub fn start(spec: AppSpec) -> io::Result<Proc> {
        let mut p = Proc {
            spec,
            child: None,
            lives: Vec::new(),
            kills: 0,
        };
        p.spawn()?;
        Ok(p)
    }

    /// Starts the next life with the same command.
    ///
    /// # Panics
    /// If the process is still running.
    pub fn restart(&mut self) -> io::Result<()> {
        assert!(self.child.is_none(), "{} is still running", self.spec.name);
        self.spawn()
    }

    /// Replaces the arguments of later lives (for example new ports after a bind failure).
    pub fn set_args(&mut self, args: Vec<OsString>) {
        self.spec.args = args;
    }

    fn spawn(&mut self) -> io::Result<()> {
        let number = self.lives.len() as u32 + 1;
        let stderr_path = self
            .spec
            .log_dir
            .join(format!("{}.{number}.stderr", self.spec.name));
        let context = |what: &str, e: io::Error| {
            io::Error::new(
                e.kind(),
                format!("{} life {number}: {what}: {e}", self.spec.name),
            )
        };
        let stderr = File::create(&stderr_path)
            .map_err(|e| context(&format!("create {}", stderr_path.display()), e))?;
        let mut command = Command::new(&self.spec.program);
        command
            .args(&self.spec.args)
            .envs(self.spec.envs.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr);
        let mut busy_retries = 0;
        let mut child = loop {
            match command.spawn() {
                // ETXTBSY: the program was written a moment ago (a private copy) and a child
                // forked meanwhile by another thread of this test process still holds the
                // inherited write descriptor until its own exec. Passes within milliseconds.
                Err(e)
                    if e.raw_os_error() == Some(libc::ETXTBSY)
                        && busy_retries < SPAWN_BUSY_RETRIES_MAX =>
                {
                    busy_retries += 1;
                    std::thread::sleep(Duration::from_millis(5));
                }
                other => {
                    break other.map_err(|e| {
                        context(&format!("spawn {}", self.spec.program.display()), e)
                    })?
                }
            }
        };
        let stdout_pipe = child.stdout.take().expect("stdout is piped");
        let stdout = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&stdout);
        let reader = std::thread::Builder::new()
            .name(format!("{}-{number}-stdout", self.spec.name))
            .spawn(move || {
                for line in BufReader::new(stdout_pipe).lines() {
                    let Ok(line) = line else { break };
                    sink.lock().unwrap_or_else(|e| e.into_inner()).push(line);
                }
            })?;
        self.lives.push(Life {
            number,
            started: Instant::now(),
            ended: None,
            stderr_path,
            stdout,
            reader: Some(reader),
        });
        self.child = Some(child);
        Ok(())
    }

    /// SIGKILLs the running life and reaps it. Returns how it ended: normally
    /// [`LifeEnd::KilledByUs`], but a process that exited on its own just before the signal
    /// keeps its own status.
    ///
    /// # Panics
    /// If the process is not running.
    pub fn kill(&mut self) -> io::Result<LifeEnd> {
        let mut child = self
            .child
            .take()
            .unwrap_or_else(|| panic!("{} is not running", self.spec.name));
        // std's Child::kill sends SIGKILL on Unix. It fails only if the child was already
        // reaped, which cannot happen here (we own it and have not waited for it).
        if let Err(e) = child.kill() {
            self.child = Some(child);
            return Err(e);
        }
        let status = child.wait()?;
        let end = if status.signal() == Some(libc::SIGKILL) {
            self.kills += 1;
            LifeEnd::KilledByUs
        } else {
            LifeEnd::Exited(status)
        };
        self.end_life(end);
        Ok(end)
    }

    /// Checks whether the running life ended on its own. `None` while it runs (or if there
    /// is no running life).
    pub fn poll(&mut self) -> io::Result<Option<LifeEnd>> {
        let Some(child) = self.child.as_mut() else {
            return Ok(None);
        };
        let Some(status) = child.try_wait()? else {
            return Ok(None);
        };
        self.child = None;
        let end = LifeEnd::Exited(status);
        self.end_life(end);
        Ok(Some(end))
    }

    fn end_life(&mut self, end: LifeEnd) {
        let life = self.lives.last_mut().expect("a running life");
        life.ended = Some((Instant::now(), end));
        life.join_reader();
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    pub fn name(&self) -> &str {
        &self.spec.name
    }

    /// How many times [`Proc::kill`] killed it.
    pub fn kills(&self) -> u32 {
        self.kills
    }

    pub fn lives(&self) -> &[Life] {
        &self.lives
    }

    /// The newest life (running or ended).
    pub fn current_life(&self) -> &Life {
        self.lives.last().expect("a process has at least one life")
    }

    /// Every stdout line of every life, with its life number.
    pub fn stdout_lines(&self) -> Vec<(u32, String)> {
        self.lives
            .iter()
            .flat_map(|l| l.stdout_lines().into_iter().map(move |s| (l.number, s)))
            .collect()
    }

    /// A summary of every life and the stderr tail of the last few, for failure messages.
    pub fn describe(&self, stderr_lives: usize, stderr_lines: usize) -> String {
        let mut out = Vec::new();
        let _ = writeln!(
            out,
            "process {}: {} lives, {} kills by us",
            self.spec.name,
            self.lives.len(),
            self.kills
        );
        let first = self.lives.first().map(|l| l.started);
        for life in &self.lives {
            let at = |t: Instant| first.map_or(0, |f| t.duration_since(f).as_millis());
            let end = match life.ended {
                None => "running".to_string(),
                Some((t, e)) => format!("ended at {} ms: {e:?}", at(t)),
            };
            let _ = writeln!(
                out,
                "  life {} started at {} ms, {end}, stdout {:?}",
                life.number,
                at(life.started),
                life.stdout_lines()
            );
        }
        for life in self.lives.iter().rev().take(stderr_lives).rev() {
            let tail = life.stderr_tail(stderr_lines);
            if !tail.is_empty() {
                let _ = writeln!(
                    out,
                    "  stderr of life {} ({}):",
                    life.number,
                    life.stderr_path.display()
                );
                for line in tail.lines() {
                    let _ = writeln!(out, "    {line}");
                }
            }
        }
        String::from_utf8_lossy(&out).into_owned()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// True if `life` ended with a failure to bind its UDP address (the runtime's
/// `cannot bind UDP` error): the port was taken by someone else, an environment problem to
/// answer with new ports, not a bug of the process.
pub fn exited_with_bind_error(life: &Life) -> bool {
    matches!(life.ended, Some((_, LifeEnd::Exited(s))) if s.code() == Some(1))
        && std::fs::read_to_string(&life.stderr_path).is_ok_and(|e| e.contains("cannot bind UDP"))
}
