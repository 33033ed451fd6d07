//! One member process of a torture cluster: its command, its lives, how each life ended and
//! what it printed.
//!
//! Invariants:
//! - The harness stops a process only with SIGKILL ([`Member::kill`], and `Drop`, so a
//!   failing run leaves no orphans). SIGSTOP/SIGCONT pause and resume it.
//! - A life counts as killed by us only if we sent SIGKILL *and* its status says SIGKILL; a
//!   life that died of SIGKILL after printing a `crash_point` line hit a crash point.
//! - Each life's stdout goes to a file; its stderr is read line by line by one thread per
//!   life, copied to a file and scanned for the runtime's event lines (`listening`, `stats`,
//!   `crash_point`) and for the "store full" and "cannot bind UDP" errors. The thread keeps
//!   only the newest stats line: memory per life is bounded. It also notes when a life went
//!   quiet, when asked ([`Member::stall_gap`]): a gap between two of its event lines longer
//!   than that (the runtime's loop prints a stats line every `KEN_STATS_INTERVAL_MS`, so a
//!   gap is a stall: CPU starvation, a stuck disk), keeping at most [`STALLS_MAX`] of them.

use std::fs::File;
use std::io::{BufRead, BufReader, LineWriter, Write};
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Spawn attempts that may fail with "text file busy" before the failure counts (5 ms
/// apart). The binaries are private copies written before any child is started, so this
/// only matters if something else forks while a copy is open (see ken-tests' procs.rs).
const SPAWN_BUSY_RETRIES_MAX: u32 = 200;

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
}

/// What the stderr reader saw of one life.
#[derive(Debug, Default)]
pub struct Events {
    pub listening_at: Option<Instant>,
    pub stats: Option<Stats>,
    pub crash_point: Option<String>,
    pub store_full: bool,
    pub bind_error: bool,
    /// When the last event line came.
    pub last_event_at: Option<Instant>,
    /// Gaps between event lines longer than the member's `stall_gap`: (last line before,
    /// first after).
    pub stalls: Vec<(Instant, Instant)>,
    /// The last few stderr lines that are not event lines (for violation messages).
    pub tail: Vec<String>,
}

const TAIL_LINES_MAX: usize = 8;

/// Stalls kept per life.
pub const STALLS_MAX: usize = 1000;

/// How a life ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum End {
    /// We sent SIGKILL and it died of it.
    KilledByUs,
    /// It SIGKILLed itself at this crash point.
    CrashPoint(String),
    /// Its commit failed on a full disk (exit 1, "store full").
    StoreFull,
    /// It could not bind its UDP port (someone else took it).
    BindError,
    /// Exit code 0 (pingpong: finished).
    Finished,
    /// Anything else: a bug or an environment problem.
    Unexpected(String),
}

/// One run of a member, from spawn to death.
#[derive(Debug)]
pub struct Life {
    /// 1 for the first start.
    pub number: u32,
    pub started: Instant,
    pub crash_at: Option<String>,
    pub end: Option<End>,
    /// When the harness saw it end (reaped it).
    pub ended_at: Option<Instant>,
    pub stdout_path: PathBuf,
    pub stderr_path: PathBuf,
    pub events: Arc<Mutex<Events>>,
    reader: Option<JoinHandle<()>>,
}

impl Life {
    /// Milliseconds from spawn to the `listening` line, if it came.
    pub fn recovery_ms(&self) -> Option<u64> {
        let e = self.events.lock().unwrap_or_else(|e| e.into_inner());
        e.listening_at
            .map(|t| t.duration_since(self.started).as_millis() as u64)
    }

    /// Gaps in its event lines longer than the member's `stall_gap` (module docs).
    pub fn stalls(&self) -> Vec<(Instant, Instant)> {
        self.events
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .stalls
            .clone()
    }

    /// When it printed its `listening` line.
    pub fn listening_at(&self) -> Option<Instant> {
        self.events
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .listening_at
    }

    pub fn stats(&self) -> Option<Stats> {
        self.events.lock().unwrap_or_else(|e| e.into_inner()).stats
    }

    /// The stdout lines (complete once the life ended).
    pub fn stdout_lines(&self) -> Vec<String> {
        std::fs::read_to_string(&self.stdout_path)
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }

    fn tail(&self) -> String {
        self.events
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .tail
            .join(" | ")
    }
}

/// A member process: the same program and environment for every life; arguments may change
/// (new ports).
#[derive(Debug)]
pub struct Member {
    pub id: String,
    pub program: PathBuf,
    pub args: Vec<String>,
    pub envs: Vec<(String, String)>,
    pub log_dir: PathBuf,
    child: Option<Child>,
    pub lives: Vec<Life>,
    /// Set while SIGSTOPped: when to SIGCONT.
    pub paused_until: Option<Instant>,
    /// Set while down: when to start the next life.
    pub restart_at: Option<Instant>,
    /// Set when the harness SIGKILLed it for good: it is never started again.
    pub killed_for_good: Option<Instant>,
    /// Record gaps between event lines longer than this as stalls (`None`: do not).
    pub stall_gap: Option<Duration>,
}

impl Member {
    pub fn new(
        id: String,
        program: PathBuf,
        args: Vec<String>,
        envs: Vec<(String, String)>,
        log_dir: PathBuf,
    ) -> Member {
        Member {
            id,
            program,
            args,
            envs,
            log_dir,
            child: None,
            lives: Vec::new(),
            paused_until: None,
            restart_at: None,
            killed_for_good: None,
            stall_gap: None,
        }
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn current_life(&self) -> Option<&Life> {
        self.lives.last()
    }

    /// Starts the next life, with `KEN_CRASH_AT=crash_at` (and its seed) if given.
    pub fn spawn(&mut self, crash_at: Option<(String, u64)>) -> anyhow::Result<()> {
        assert!(self.child.is_none(), "{} is still running", self.id);
        assert!(
            self.killed_for_good.is_none(),
            "{} was killed for good and is never started again",
            self.id
        );
        let number = self.lives.len() as u32 + 1;
        let stdout_path = self.log_dir.join(format!("{}.{number}.stdout", self.id));
        let stderr_path = self.log_dir.join(format!("{}.{number}.stderr", self.id));
        let stdout = File::create(&stdout_path)?;
        let mut command = Command::new(&self.program);
        command
            .args(&self.args)
            .envs(self.envs.iter().map(|(k, v)| (k, v)))
            .env_remove("KEN_CRASH_AT")
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(Stdio::piped());
        if let Some((spec, seed)) = &crash_at {
            command
                .env("KEN_CRASH_AT", spec)
                .env("KEN_CRASH_SEED", seed.to_string());
        }
        let mut busy = 0;
        let mut child = loop {
            match command.spawn() {
                Err(e)
                    if e.raw_os_error() == Some(libc::ETXTBSY) && busy < SPAWN_BUSY_RETRIES_MAX =>
                {
                    busy += 1;
                    std::thread::sleep(Duration::from_millis(5));
                }
                other => {
                    break other.map_err(|e| {
                        anyhow::anyhow!(
                            "{} life {number}: spawn {}: {e}",
                            self.id,
                            self.program.display()
                        )
                    })?
                }
            }
        };
        let started = Instant::now();
        let pipe = child.stderr.take().expect("stderr is piped");
        let events = Arc::new(Mutex::new(Events::default()));
        let sink = Arc::clone(&events);
        let mut log = LineWriter::new(File::create(&stderr_path)?);
        let stall_gap = self.stall_gap;
        let reader = std::thread::Builder::new()
            .name(format!("{}-{number}-stderr", self.id))
            .spawn(move || {
                for line in BufReader::new(pipe).lines() {
                    let Ok(line) = line else { break };
                    let _ = writeln!(log, "{line}");
                    scan_line(&line, &sink, stall_gap);
                }
            })?;
        self.lives.push(Life {
            number,
            started,
            crash_at: crash_at.map(|(s, _)| s),
            end: None,
            ended_at: None,
            stdout_path,
            stderr_path,
            events,
            reader: Some(reader),
        });
        self.child = Some(child);
        Ok(())
    }

    /// SIGKILLs the running life and reaps it. A life that ended on its own just before
    /// keeps its own end.
    pub fn kill(&mut self) -> anyhow::Result<End> {
        let mut child = self.child.take().expect("kill: a running life");
        if let Err(e) = child.kill() {
            self.child = Some(child);
            return Err(e.into());
        }
        let status = child.wait()?;
        self.paused_until = None;
        let end = if status.signal() == Some(libc::SIGKILL) {
            // A crash point may have fired just before our signal: the reader decides.
            self.finish_life(status, true)
        } else {
            self.finish_life(status, false)
        };
        Ok(end)
    }

    /// Whether the running life ended on its own (`None` while it runs).
    pub fn poll(&mut self) -> anyhow::Result<Option<End>> {
        let Some(child) = self.child.as_mut() else {
            return Ok(None);
        };
        let Some(status) = child.try_wait()? else {
            return Ok(None);
        };
        self.child = None;
        self.paused_until = None;
        Ok(Some(self.finish_life(status, false)))
    }

    fn finish_life(&mut self, status: ExitStatus, killed_by_us: bool) -> End {
        let life = self.lives.last_mut().expect("a running life");
        if let Some(reader) = life.reader.take() {
            // The child is dead, so the pipe's write end is closed and the reader ends.
            let _ = reader.join();
        }
        let events = life.events.lock().unwrap_or_else(|e| e.into_inner());
        let end = if status.signal() == Some(libc::SIGKILL) {
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
        life.end = Some(end.clone());
        life.ended_at = Some(Instant::now());
        end
    }

    /// SIGSTOPs the running life until `until`.
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

    /// A one-line description of every life, for violation messages.
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
            self.id,
            lives[lives.len().saturating_sub(6)..].join(", ")
        )
    }
}

impl Drop for Member {
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
