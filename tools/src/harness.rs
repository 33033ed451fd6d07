//! The one process harness: real child processes started, watched, paused, SIGKILLed and
//! restarted with the same command. `ken torture`, `ken demo`, `ken bench` and every
//! real-process test run their processes through it.
//!
//! A [`Process`] is one command run for as many lives as the caller wants: [`Process::spawn`]
//! starts the next life (optionally armed with a `KEN_CRASH_AT` crash point),
//! [`Process::kill`] ends it with SIGKILL, [`Process::poll`] notices a life that ended on its
//! own, [`Process::pause`] and [`Process::resume`] SIGSTOP and SIGCONT it. Each [`Life`]
//! keeps how it ended ([`End`]), its standard output (a file, read back as lines) and its
//! standard error (a file, and what the runtime's event lines on it said: [`Life::listening_at`],
//! [`Life::stats`], the crash point it hit, a full disk, a port it could not bind).
//!
//! Invariants:
//! - The harness stops a process only with SIGKILL ([`Process::kill`], and `Drop`, so a
//!   failing run leaves no orphans). There is no graceful shutdown to fall back on.
//! - A life counts as killed by us only if we sent SIGKILL *and* its status says SIGKILL; a
//!   process that exited on its own just before our signal keeps its own end, and a life
//!   that died of SIGKILL after printing a `crash_point` line hit a crash point.
//! - A life's stdout goes straight to its file (`<log_dir>/<name>.<life>.stdout`), so a
//!   child never blocks on a full pipe; [`Life::stdout_lines`] returns complete lines only
//!   while the life runs. Its stderr is read line by line by one thread per life, copied to
//!   `<log_dir>/<name>.<life>.stderr` and scanned; the thread keeps only the newest stats
//!   line, the last [`TAIL_LINES_MAX`] other lines and at most [`STALLS_MAX`] stalls, so
//!   memory per life is bounded.
//! - `KEN_CRASH_AT` and `KEN_CRASH_SEED` are removed from every child's environment unless
//!   the spec's variables or the life's crash point set them: a crash point is armed only
//!   when asked for.
//!
//! Stalls: with [`Process::set_stall_gap`], the reader notes every gap between two event
//! lines longer than the gap (the runtime prints a stats line every `KEN_STATS_INTERVAL_MS`,
//! so a longer silence is a stall: CPU starvation, a stuck disk).
//!
//! Also here, since every caller needs them: [`free_ports`] and [`free_addrs`] (the one way
//! this workspace picks loopback ports for children), [`loopback`] and [`wait_until`] (a
//! poll with a deadline).

use std::ffi::OsString;
use std::fs::File;
use std::io::{self, BufRead, BufReader, LineWriter, Read, Seek, SeekFrom, Write};
use std::net::{SocketAddr, UdpSocket};
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Spawn attempts that may fail with "text file busy" before the failure counts (5 ms
/// apart): a program copied a moment ago, while another thread of this process forked a
/// child that still holds the copy's write descriptor until its own exec.
const SPAWN_BUSY_RETRIES_MAX: u32 = 200;

/// Non-event stderr lines kept per life for [`Process::describe`].
pub const TAIL_LINES_MAX: usize = 8;

/// Stalls kept per life.
pub const STALLS_MAX: usize = 1000;

/// `n` distinct UDP ports on 127.0.0.1 that were free a moment ago (bound together on port
/// 0, then released, so the children can bind them; peers need each other's address up
/// front). Another program may take one in between: a child that then cannot bind ends
/// with [`End::BindError`], and callers pick new ports.
pub fn free_ports(n: usize) -> io::Result<Vec<u16>> {
    let sockets = (0..n)
        .map(|_| UdpSocket::bind("127.0.0.1:0"))
        .collect::<io::Result<Vec<_>>>()?;
    sockets
        .iter()
        .map(|s| s.local_addr().map(|a| a.port()))
        .collect()
}

/// [`free_ports`] as loopback addresses.
pub fn free_addrs(n: usize) -> io::Result<Vec<SocketAddr>> {
    Ok(free_ports(n)?.into_iter().map(loopback).collect())
}

/// A loopback address for `port`.
pub fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// Polls `condition` every `poll` until it returns `Some`, or gives up at `deadline`.
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

/// What to run: the same program and environment for every life of a process; the
/// arguments may change between lives ([`Process::set_args`], for new ports).
#[derive(Debug, Clone)]
pub struct Spec {
    /// A short label, used in file names and messages.
    pub name: String,
    pub program: PathBuf,
    pub args: Vec<OsString>,
    /// Extra environment variables (the rest is inherited, minus `env_remove`).
    pub envs: Vec<(OsString, OsString)>,
    /// Inherited variables the child must not see.
    pub env_remove: Vec<OsString>,
    /// Where each life's stdout and stderr files go.
    pub log_dir: PathBuf,
}

impl Spec {
    /// A spec with no extra environment.
    pub fn new(
        name: impl Into<String>,
        program: impl Into<PathBuf>,
        args: impl IntoIterator<Item = impl Into<OsString>>,
        log_dir: impl Into<PathBuf>,
    ) -> Spec {
        Spec {
            name: name.into(),
            program: program.into(),
            args: args.into_iter().map(Into::into).collect(),
            envs: Vec::new(),
            env_remove: Vec::new(),
            log_dir: log_dir.into(),
        }
    }

    /// Adds an environment variable.
    pub fn env(mut self, key: impl Into<OsString>, value: impl Into<OsString>) -> Spec {
        self.envs.push((key.into(), value.into()));
        self
    }
}

/// The runtime's counters as printed by the last `stats` line of a life
/// (`KEN_STATS_INTERVAL_MS`, see ken's driver).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    pub turns: u64,
    pub messages_sent: u64,
    pub retransmits: u64,
    pub duplicates_dropped: u64,
    pub frames_in: u64,
    pub frames_sent: u64,
    pub junk_dropped: u64,
    /// Frames dropped for a key this process does not hold (another cluster, or a rotation
    /// without its accept window).
    pub unknown_key_dropped: u64,
    /// Frames dropped for a bad tag, or untagged where a tag is needed.
    pub bad_tag_dropped: u64,
    pub untagged_dropped: u64,
    /// Frames accepted under an older key than the one this process sends with.
    pub old_key_frames: u64,
    /// Deliveries of a newer schema version's message held (not consumed, not acked).
    pub messages_held: u64,
    /// Messages consumed into the dead-letter table.
    pub dead_letters: u64,
}

/// What the stderr reader saw of one life.
#[derive(Debug, Default)]
struct Events {
    listening_at: Option<Instant>,
    stats: Option<Stats>,
    crash_point: Option<String>,
    store_full: bool,
    bind_error: bool,
    /// When the last event line came.
    last_event_at: Option<Instant>,
    /// Gaps between event lines longer than the stall gap: (last line before, first after).
    stalls: Vec<(Instant, Instant)>,
    /// The last few stderr lines that are not event lines.
    tail: Vec<String>,
}

/// How a life ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum End {
    /// We sent SIGKILL and it died of it.
    KilledByUs,
    /// It SIGKILLed itself at this crash point (`KEN_CRASH_AT`).
    CrashPoint(String),
    /// Its commit failed on a full disk (exit non-zero, "store full" on stderr).
    StoreFull,
    /// It could not bind its UDP port (exit non-zero, "cannot bind UDP" on stderr): someone
    /// else took it, an environment problem to answer with new ports.
    BindError,
    /// Exit code 0.
    Finished,
    /// Anything else (a bug, or a signal we did not send); the text says what.
    Unexpected(String),
}

impl End {
    /// True for an exit with code 0.
    pub fn is_success(&self) -> bool {
        *self == End::Finished
    }
}

/// One run of a process, from spawn to death.
#[derive(Debug)]
pub struct Life {
    /// 1 for the first start, 2 for the first restart, ...
    pub number: u32,
    pub started: Instant,
    /// The crash point this life was armed with (`KEN_CRASH_AT`), if any.
    pub crash_at: Option<String>,
    /// How it ended, once it did.
    pub end: Option<End>,
    /// Its exit status, once it ended.
    pub status: Option<ExitStatus>,
    /// When the harness saw it end (reaped it).
    pub ended_at: Option<Instant>,
    pub stdout_path: PathBuf,
    pub stderr_path: PathBuf,
    events: Arc<Mutex<Events>>,
    reader: Option<JoinHandle<()>>,
}

impl Life {
    fn events(&self) -> std::sync::MutexGuard<'_, Events> {
        self.events.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Its stdout lines: the complete ones while it runs, all of them once it ended.
    pub fn stdout_lines(&self) -> Vec<String> {
        let mut offset = 0;
        self.new_stdout_lines(&mut offset).unwrap_or_default()
    }

    /// The stdout lines after byte `offset` (complete ones only while it runs), advancing
    /// `offset` past them: for callers that read a chatty process's output as it comes.
    pub fn new_stdout_lines(&self, offset: &mut u64) -> io::Result<Vec<String>> {
        let mut f = File::open(&self.stdout_path)?;
        f.seek(SeekFrom::Start(*offset))?;
        let mut text = String::new();
        f.read_to_string(&mut text)?;
        let complete = if self.end.is_some() {
            text.len()
        } else {
            text.rfind('\n').map_or(0, |i| i + 1)
        };
        *offset += complete as u64;
        Ok(text[..complete].lines().map(str::to_string).collect())
    }

    /// The last `max_lines` lines of its stderr (event lines included).
    pub fn stderr_tail(&self, max_lines: usize) -> String {
        let text = std::fs::read_to_string(&self.stderr_path).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(max_lines)..].join("\n")
    }

    /// When it printed its `listening` line (store recovered, socket bound).
    pub fn listening_at(&self) -> Option<Instant> {
        self.events().listening_at
    }

    /// Milliseconds from spawn to the `listening` line, if it came.
    pub fn recovery_ms(&self) -> Option<u64> {
        self.listening_at()
            .map(|t| t.duration_since(self.started).as_millis() as u64)
    }

    /// Its last stats line.
    pub fn stats(&self) -> Option<Stats> {
        self.events().stats
    }

    /// Gaps in its event lines longer than the stall gap (module docs).
    pub fn stalls(&self) -> Vec<(Instant, Instant)> {
        self.events().stalls.clone()
    }

    fn tail(&self) -> String {
        self.events().tail.join(" | ")
    }
}

/// A child process that can be SIGKILLed and restarted with the same command.
#[derive(Debug)]
pub struct Process {
    spec: Spec,
    child: Option<Child>,
    lives: Vec<Life>,
    kills: u32,
    /// Set while SIGSTOPped: when the caller means to SIGCONT it.
    paused_until: Option<Instant>,
    stall_gap: Option<Duration>,
}

impl Process {
    /// A process not started yet.
    pub fn new(spec: Spec) -> Process {
        Process {
            spec,
            child: None,
            lives: Vec::new(),
            kills: 0,
            paused_until: None,
            stall_gap: None,
        }
    }

    /// A process with its first life started.
    pub fn start(spec: Spec) -> io::Result<Process> {
        let mut p = Process::new(spec);
        p.spawn(None)?;
        Ok(p)
    }

    pub fn name(&self) -> &str {
        &self.spec.name
    }

    pub fn spec(&self) -> &Spec {
        &self.spec
    }

    /// Replaces the arguments of later lives (for example new ports after a bind failure).
    pub fn set_args(&mut self, args: Vec<OsString>) {
        self.spec.args = args;
    }

    /// Records gaps between event lines longer than `gap` as stalls, from the next life on.
    pub fn set_stall_gap(&mut self, gap: Option<Duration>) {
        self.stall_gap = gap;
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// How many times [`Process::kill`] killed it.
    pub fn kills(&self) -> u32 {
        self.kills
    }

    pub fn lives(&self) -> &[Life] {
        &self.lives
    }

    /// The newest life (running or ended), if it was ever started.
    pub fn current_life(&self) -> Option<&Life> {
        self.lives.last()
    }

    /// When a pause ([`Process::pause`]) is meant to end, while paused.
    pub fn paused_until(&self) -> Option<Instant> {
        self.paused_until
    }

    /// Starts the next life with the same command; with `crash_at` = (spec, seed), armed
    /// with that crash point (`KEN_CRASH_AT`, `KEN_CRASH_SEED`).
    ///
    /// # Panics
    /// If a life is running.
    pub fn spawn(&mut self, crash_at: Option<(String, u64)>) -> io::Result<()> {
        assert!(self.child.is_none(), "{} is still running", self.spec.name);
        let number = self.lives.len() as u32 + 1;
        let name = &self.spec.name;
        let stdout_path = self.spec.log_dir.join(format!("{name}.{number}.stdout"));
        let stderr_path = self.spec.log_dir.join(format!("{name}.{number}.stderr"));
        let context = |what: String, e: io::Error| {
            io::Error::new(e.kind(), format!("{name} life {number}: {what}: {e}"))
        };
        let stdout = File::create(&stdout_path)
            .map_err(|e| context(format!("create {}", stdout_path.display()), e))?;
        let stderr_log = File::create(&stderr_path)
            .map_err(|e| context(format!("create {}", stderr_path.display()), e))?;
        let mut command = Command::new(&self.spec.program);
        command.args(&self.spec.args);
        for var in self
            .spec
            .env_remove
            .iter()
            .map(OsString::as_os_str)
            .chain(["KEN_CRASH_AT".as_ref(), "KEN_CRASH_SEED".as_ref()])
        {
            command.env_remove(var);
        }
        command
            .envs(self.spec.envs.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(Stdio::piped());
        if let Some((spec, seed)) = &crash_at {
            command
                .env("KEN_CRASH_AT", spec)
                .env("KEN_CRASH_SEED", seed.to_string());
        }
        let mut busy_retries = 0;
        let mut child = loop {
            match command.spawn() {
                Err(e)
                    if e.raw_os_error() == Some(libc::ETXTBSY)
                        && busy_retries < SPAWN_BUSY_RETRIES_MAX =>
                {
                    busy_retries += 1;
                    std::thread::sleep(Duration::from_millis(5));
                }
                other => {
                    break other.map_err(|e| {
                        context(format!("spawn {}", self.spec.program.display()), e)
                    })?
                }
            }
        };
        let started = Instant::now();
        let pipe = child.stderr.take().expect("stderr is piped");
        let events = Arc::new(Mutex::new(Events::default()));
        let sink = Arc::clone(&events);
        let mut log = LineWriter::new(stderr_log);
        let stall_gap = self.stall_gap;
        let reader = std::thread::Builder::new()
            .name(format!("{name}-{number}-stderr"))
            .spawn(move || {
                for line in BufReader::new(pipe).lines() {
                    let Ok(line) = line else { break };
                    let _ = writeln!(log, "{line}");
                    scan_line(&line, &sink, stall_gap);
                }
            });
        let reader = match reader {
            Ok(r) => r,
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(context("start the stderr reader".into(), e));
            }
        };
        self.lives.push(Life {
            number,
            started,
            crash_at: crash_at.map(|(s, _)| s),
            end: None,
            status: None,
            ended_at: None,
            stdout_path,
            stderr_path,
            events,
            reader: Some(reader),
        });
        self.child = Some(child);
        Ok(())
    }

    /// Starts the next life with no crash point ([`Process::spawn`]).
    pub fn restart(&mut self) -> io::Result<()> {
        self.spawn(None)
    }

    /// SIGKILLs the running life and reaps it. Returns how it ended: normally
    /// [`End::KilledByUs`], but a life that ended on its own just before the signal keeps
    /// its own end.
    ///
    /// # Panics
    /// If no life is running.
    pub fn kill(&mut self) -> io::Result<End> {
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
        Ok(self.finish_life(status, true))
    }

    /// Whether the running life ended on its own (`None` while it runs, or if none runs).
    pub fn poll(&mut self) -> io::Result<Option<End>> {
        let Some(child) = self.child.as_mut() else {
            return Ok(None);
        };
        let Some(status) = child.try_wait()? else {
            return Ok(None);
        };
        self.child = None;
        Ok(Some(self.finish_life(status, false)))
    }

    fn finish_life(&mut self, status: ExitStatus, killed_by_us: bool) -> End {
        self.paused_until = None;
        let life = self.lives.last_mut().expect("a running life");
        if let Some(reader) = life.reader.take() {
            // The child is dead, so its end of the pipe is closed and the reader ends.
            let _ = reader.join();
        }
        let events = life.events.lock().unwrap_or_else(|e| e.into_inner());
        let end = if status.signal() == Some(libc::SIGKILL) {
            // A crash point may have fired just before our signal: its line decides.
            match &events.crash_point {
                Some(p) => End::CrashPoint(p.clone()),
                None if killed_by_us => End::KilledByUs,
                None => End::Unexpected("killed by a SIGKILL we did not send".into()),
            }
        } else if status.success() {
            End::Finished
        } else if events.store_full {
            End::StoreFull
        } else if events.bind_error {
            End::BindError
        } else {
            End::Unexpected(format!("{status}; stderr: {}", events.tail.join(" | ")))
        };
        drop(events);
        if end == End::KilledByUs {
            self.kills += 1;
        }
        life.end = Some(end.clone());
        life.status = Some(status);
        life.ended_at = Some(Instant::now());
        end
    }

    /// SIGSTOPs the running life; the caller means to resume it at `until`.
    pub fn pause(&mut self, until: Instant) {
        if let Some(pid) = self.pid() {
            signal(pid, libc::SIGSTOP);
            self.paused_until = Some(until);
        }
    }

    /// SIGCONTs the running life if paused.
    pub fn resume(&mut self) {
        if self.paused_until.take().is_some() {
            if let Some(pid) = self.pid() {
                signal(pid, libc::SIGCONT);
            }
        }
    }

    /// Every stdout line of every life, with its life number.
    pub fn stdout_lines(&self) -> Vec<(u32, String)> {
        self.lives
            .iter()
            .flat_map(|l| l.stdout_lines().into_iter().map(move |s| (l.number, s)))
            .collect()
    }

    /// One line: every life (the last six), its crash point and end, and the newest
    /// stderr lines that are not event lines.
    pub fn describe(&self) -> String {
        let lives: Vec<String> = self
            .lives
            .iter()
            .map(|l| {
                let end = match &l.end {
                    None => "running".to_string(),
                    Some(e) => format!("{e:?}"),
                };
                let crash = l.crash_at.as_deref().unwrap_or("-");
                format!("life {} (crash points {crash}): {end}", l.number)
            })
            .collect();
        let tail = self.current_life().map(Life::tail).unwrap_or_default();
        let log = self
            .current_life()
            .map(|l| l.stderr_path.display().to_string())
            .unwrap_or_default();
        format!(
            "{}: {}; last stderr ({log}): {tail}",
            self.spec.name,
            lives[lives.len().saturating_sub(6)..].join(", ")
        )
    }

    /// Every life in detail (start and end times, stdout) and the stderr tails of the last
    /// `stderr_lives`, `stderr_lines` lines each: for failure messages.
    pub fn report(&self, stderr_lives: usize, stderr_lines: usize) -> String {
        let mut out = format!(
            "process {}: {} lives, {} kills by us\n",
            self.spec.name,
            self.lives.len(),
            self.kills
        );
        let first = self.lives.first().map(|l| l.started);
        let at = |t: Instant| first.map_or(0, |f| t.duration_since(f).as_millis());
        for life in &self.lives {
            let end = match (&life.end, life.ended_at) {
                (Some(e), Some(t)) => format!("ended at {} ms: {e:?}", at(t)),
                _ => "running".to_string(),
            };
            out.push_str(&format!(
                "  life {} started at {} ms, {end}, stdout {:?}\n",
                life.number,
                at(life.started),
                life.stdout_lines()
            ));
        }
        for life in self.lives.iter().rev().take(stderr_lives).rev() {
            let tail = life.stderr_tail(stderr_lines);
            if !tail.is_empty() {
                out.push_str(&format!(
                    "  stderr of life {} ({}):\n",
                    life.number,
                    life.stderr_path.display()
                ));
                for line in tail.lines() {
                    out.push_str(&format!("    {line}\n"));
                }
            }
        }
        out
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Reads one stderr line into `events`.
fn scan_line(line: &str, events: &Mutex<Events>, stall_gap: Option<Duration>) {
    let mut e = events.lock().unwrap_or_else(|e| e.into_inner());
    if line.starts_with("{\"event\":") {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            return;
        };
        if let Some(gap) = stall_gap {
            let now = Instant::now();
            if let Some(last) = e.last_event_at {
                if now.duration_since(last) > gap && e.stalls.len() < STALLS_MAX {
                    e.stalls.push((last, now));
                }
            }
            e.last_event_at = Some(now);
        }
        let n = |k: &str| v.get(k).and_then(serde_json::Value::as_u64).unwrap_or(0);
        match v.get("event").and_then(serde_json::Value::as_str) {
            Some("listening") => {
                e.listening_at.get_or_insert_with(Instant::now);
            }
            Some("stats") => {
                e.stats = Some(Stats {
                    turns: n("turns"),
                    messages_sent: n("messages_sent"),
                    retransmits: n("retransmits"),
                    duplicates_dropped: n("duplicates_dropped"),
                    frames_in: n("frames_in"),
                    frames_sent: n("frames_sent"),
                    junk_dropped: n("junk_dropped"),
                    unknown_key_dropped: n("unknown_key_dropped"),
                    bad_tag_dropped: n("bad_tag_dropped"),
                    untagged_dropped: n("untagged_dropped"),
                    old_key_frames: n("old_key_frames"),
                    messages_held: n("messages_held"),
                    dead_letters: n("dead_letters"),
                });
            }
            Some("crash_point") => {
                e.crash_point = v.get("point").and_then(|p| p.as_str()).map(str::to_string);
            }
            _ => {}
        }
        return;
    }
    if line.contains("store full") {
        e.store_full = true;
    }
    if line.contains("cannot bind UDP") {
        e.bind_error = true;
    }
    if e.tail.len() == TAIL_LINES_MAX {
        e.tail.remove(0);
    }
    e.tail.push(line.chars().take(300).collect());
}

/// Sends `sig` to `pid` (SIGSTOP or SIGCONT; kills go through `Child::kill`).
#[allow(unsafe_code)]
fn signal(pid: u32, sig: libc::c_int) {
    // SAFETY: kill(2) takes no memory arguments; `pid` is our own unreaped child (we hold its
    // `Child` and have not waited for it), so the pid cannot have been reused.
    unsafe {
        libc::kill(pid as libc::pid_t, sig);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(name: &str, script: &str, dir: &std::path::Path) -> Spec {
        Spec::new(name, "/bin/sh", ["-c", script], dir)
    }

    fn wait_end(p: &mut Process) -> End {
        wait_until(
            Instant::now() + Duration::from_secs(10),
            Duration::from_millis(5),
            || p.poll().expect("poll"),
        )
        .expect("the process ends within 10 s")
    }

    #[test]
    fn our_sigkill_is_attributed_to_us_and_a_foreign_one_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let mut p = Process::start(sh("sleeper", "echo up; exec sleep 30", dir.path())).unwrap();
        wait_until(
            Instant::now() + Duration::from_secs(10),
            Duration::from_millis(5),
            || {
                let life = p.current_life().expect("started");
                (!life.stdout_lines().is_empty()).then_some(())
            },
        )
        .expect("the sleeper says it is up");
        assert_eq!(p.kill().unwrap(), End::KilledByUs);
        assert_eq!(p.kills(), 1);
        assert!(!p.is_running());

        // A process that dies of a SIGKILL someone else sent (here: itself) is not our kill.
        let mut p = Process::start(sh("suicide", "kill -9 $$", dir.path())).unwrap();
        let end = wait_end(&mut p);
        assert!(matches!(end, End::Unexpected(_)), "{end:?}");
        let status = p.current_life().unwrap().status.expect("ended");
        assert_eq!(status.signal(), Some(9));
        assert_eq!(p.kills(), 0);
    }

    #[test]
    fn restart_runs_the_same_command_and_keeps_each_lifes_output() {
        let dir = tempfile::tempdir().unwrap();
        let mut p =
            Process::start(sh("echo", "echo out; echo err >&2; exit 3", dir.path())).unwrap();
        let end = wait_end(&mut p);
        assert!(!end.is_success(), "{end:?}");
        assert_eq!(p.current_life().unwrap().status.unwrap().code(), Some(3));
        p.restart().unwrap();
        wait_end(&mut p);
        assert_eq!(p.lives().len(), 2);
        assert_eq!(
            p.stdout_lines(),
            vec![(1, "out".to_string()), (2, "out".to_string())]
        );
        assert_eq!(p.current_life().unwrap().stderr_tail(5), "err");
        assert!(p.describe().contains("err"), "{}", p.describe());
    }

    #[test]
    fn a_running_lifes_partial_line_waits_for_its_newline() {
        let dir = tempfile::tempdir().unwrap();
        let mut p = Process::start(sh(
            "partial",
            "printf 'one\\ntw'; exec sleep 30",
            dir.path(),
        ))
        .unwrap();
        let mut offset = 0;
        let first = wait_until(
            Instant::now() + Duration::from_secs(10),
            Duration::from_millis(5),
            || {
                let life = p.current_life().unwrap();
                let lines = life.new_stdout_lines(&mut offset).unwrap();
                (!lines.is_empty()).then_some(lines)
            },
        )
        .expect("the first line comes");
        assert_eq!(first, vec!["one".to_string()]);
        assert_eq!(offset, 4);
        p.kill().unwrap();
        let life = p.current_life().unwrap();
        assert_eq!(life.new_stdout_lines(&mut offset).unwrap(), vec!["tw"]);
        assert_eq!(life.stdout_lines(), vec!["one", "tw"]);
    }

    #[test]
    fn crash_points_and_event_lines_are_read_from_stderr() {
        let dir = tempfile::tempdir().unwrap();
        let script = r#"echo '{"event":"listening","id":"a","addr":"127.0.0.1:1"}' >&2
echo '{"event":"stats","turns":7,"messages_sent":3}' >&2
echo "crash armed: $KEN_CRASH_AT" >&2
echo '{"event":"crash_point","point":"after_commit"}' >&2
kill -9 $$"#;
        let mut p = Process::new(sh("crasher", script, dir.path()));
        p.spawn(Some(("after_commit:1".into(), 5))).unwrap();
        assert_eq!(wait_end(&mut p), End::CrashPoint("after_commit".into()));
        let life = p.current_life().unwrap();
        assert!(life.listening_at().is_some());
        assert_eq!(
            life.stats().map(|s| (s.turns, s.messages_sent)),
            Some((7, 3))
        );
        assert!(life.stderr_tail(10).contains("crash armed: after_commit:1"));
        assert_eq!(life.crash_at.as_deref(), Some("after_commit:1"));
        // Not armed again unless asked.
        p.set_args(vec![
            "-c".into(),
            "echo \"[$KEN_CRASH_AT]\" >&2; exit 1".into(),
        ]);
        p.restart().unwrap();
        wait_end(&mut p);
        assert_eq!(p.current_life().unwrap().stderr_tail(1), "[]");
    }

    #[test]
    fn free_ports_are_distinct_and_bindable() {
        let ports = free_ports(4).unwrap();
        let distinct: std::collections::BTreeSet<_> = ports.iter().collect();
        assert_eq!(distinct.len(), 4);
        for p in ports {
            UdpSocket::bind(loopback(p)).expect("free a moment ago");
        }
    }

    #[test]
    fn wait_until_gives_up_at_its_deadline() {
        let started = Instant::now();
        let r: Result<(), _> = wait_until(
            started + Duration::from_millis(50),
            Duration::from_millis(5),
            || None,
        );
        assert_eq!(r, Err(TimedOut));
        assert!(started.elapsed() >= Duration::from_millis(50));
    }
}
