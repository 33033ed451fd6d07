//! `ken inspect STORE [VIEW] [--json]`: look inside a process's checkpoint store, live or
//! dead, the way `sqlite3` or `etcdctl` look inside theirs.
//!
//! Views: the summary (default), `outbox`, `peers`, `timers`, `tables`, `table NAME`,
//! `turns`, `groups`, `clients`, `state`, `verify`, `watch`. Each prints a readable table, or
//! with `--json` one JSON document (for `watch`, one per line) whose field names are stable
//! and documented on the types of [`output`] and in `ken/inspect/INSPECT.md`.
//!
//! The same views serve every app binary: [`main`] takes an [`AppDecoder`] that knows the
//! app's types (root state, messages, table keys and values), so `ken-bank inspect STORE
//! state` prints decoded values as JSON where `ken inspect STORE state` can only show sizes
//! and previews. The app binaries add the subcommand with [`Args`] and call [`main`].
//!
//! Where it sits: a crate of its own under `ken/` (ken-inspect), depending only on `ken`
//! (the FUSE group record type, in [`fuse`]), `ken-store` and a few light crates, so that
//! the apps (ken-apps) and the `ken` command (ken-tools, which depends on the apps) share it
//! while the dependency graph stays one way: `ken` <- ken-inspect <- ken-apps <- ken-tools.
//!
//! Invariants:
//! - The store is read through a [`Reader`] only: read-only, no owner lock, one query per
//!   call, so inspecting never blocks or delays the running owner and never changes a byte
//!   of the store.
//! - Bad input never panics: a missing file, a foreign file, a newer format, a corrupt record
//!   or a damaged file each end the command with a one-line message on stderr that says what
//!   is wrong, and a non-zero exit status ([`EXIT_DAMAGED`] or [`EXIT_ERROR`]).
//! - A corrupt record spoils only what needs it: the other views, and the other parts of the
//!   summary and state views, are still shown.

pub mod audit;
pub mod collect;
pub mod decode;
pub mod fuse;
pub mod output;
mod text;

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ken_store::{OpenError, ReadError, Reader};
use serde::Serialize;

use collect::{Damage, VIEW_ROWS_MAX};
pub use decode::{keys, AppDecoder};

/// Exit status: the view was printed and nothing wrong was found.
pub const EXIT_CLEAN: u8 = 0;
/// Exit status: the store is damaged: `verify` found problems, or a view met a corrupt
/// record (what could be read was printed).
pub const EXIT_DAMAGED: u8 = 1;
/// Exit status: the store could not be inspected: no file, not a Ken store, a newer format,
/// an I/O or SQLite error, or bad arguments (clap's usage errors exit with 2 too).
pub const EXIT_ERROR: u8 = 2;

/// Shortest and longest `watch --interval-ms`.
const WATCH_INTERVAL_MS_MIN: u64 = 10;
const WATCH_INTERVAL_MS_MAX: u64 = 3_600_000;

/// Look inside a Ken checkpoint store (safe while its process runs).
#[derive(Debug, Clone, clap::Args)]
#[command(after_help = "\
Exit status: 0 when nothing is wrong, 1 when the store is damaged (verify found problems, \
or a view met a corrupt record), 2 when the store cannot be inspected (no file, not a Ken \
store, newer format, I/O error) or the arguments are wrong.

JSON field names: ken/inspect/INSPECT.md.")]
pub struct Args {
    /// The store file (as given to the process with --store).
    pub store: PathBuf,
    /// Print one JSON document (watch: one per line) instead of a table.
    #[arg(long, global = true)]
    pub json: bool,
    /// What to show; the summary if omitted.
    #[command(subcommand)]
    pub view: Option<View>,
}

/// A view of the store.
#[derive(Debug, Clone, PartialEq, Eq, clap::Subcommand)]
pub enum View {
    /// Process, counters, root size, tables, peers and outboxes, timers, groups, clients,
    /// file sizes (the default).
    Summary,
    /// Unacknowledged messages, in (peer, seq) order.
    Outbox {
        /// Only messages to this peer.
        #[arg(long)]
        peer: Option<String>,
        /// Show at most this many messages.
        #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(0..=i64::from(VIEW_ROWS_MAX)))]
        limit: u32,
    },
    /// Per-peer counters (next_seq, acked, delivered) and outbox depth.
    Peers,
    /// Durable timers and when they are due.
    Timers,
    /// Peer messages that did not decode, kept by the runtime (`ken.dead_letters`).
    DeadLetters {
        /// Show at most this many.
        #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(0..=i64::from(VIEW_ROWS_MAX)))]
        limit: u32,
    },
    /// Dead letters an operator queued for replay at the process's next start
    /// (`ken.replay`, `ken dead-letters STORE replay PEER SEQ`).
    Replay {
        /// Show at most this many.
        #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(0..=i64::from(VIEW_ROWS_MAX)))]
        limit: u32,
    },
    /// Inputs whose turn panicked, with the panic's message (`ken.poison`).
    Poison {
        /// Show at most this many.
        #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(0..=i64::from(VIEW_ROWS_MAX)))]
        limit: u32,
    },
    /// Pending tasks (`ken.tasks`): started by committed turns, result not yet consumed;
    /// with their failed attempts and last error.
    Tasks {
        /// Show at most this many.
        #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(0..=i64::from(VIEW_ROWS_MAX)))]
        limit: u32,
    },
    /// Application tables: rows and bytes.
    Tables,
    /// Rows of one application table, in key order.
    Table {
        /// The table name.
        name: String,
        /// Only keys starting with this: text, or 0x followed by hex digits for bytes.
        #[arg(long)]
        prefix: Option<String>,
        /// Show at most this many rows.
        #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(0..=i64::from(VIEW_ROWS_MAX)))]
        limit: u32,
    },
    /// The turn log: input kind and source, messages sent, outputs, bytes written.
    Turns {
        /// The newest N turns.
        #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=i64::from(VIEW_ROWS_MAX)))]
        last: u32,
    },
    /// FUSE groups this process belongs to: state, creator, members, notified, created.
    Groups,
    /// The client reply cache.
    Clients,
    /// The root state and the first rows of every table (decoded by an app's own `inspect`).
    State {
        /// Show at most this many rows per table.
        #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(0..=i64::from(VIEW_ROWS_MAX)))]
        limit: u32,
    },
    /// Check every record's CRC and the store's invariants; exit 0 only when clean.
    Verify,
    /// Refresh the summary every interval, with turns/s, commits/s and outbox growth.
    Watch {
        /// Stop after this many refreshes (default: until interrupted).
        #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
        count: Option<u64>,
        /// Time between refreshes.
        #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(WATCH_INTERVAL_MS_MIN..=WATCH_INTERVAL_MS_MAX))]
        interval_ms: u64,
    },
}

/// Why an inspection could not be done.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum InspectError {
    /// The store could not be opened: no file, not a Ken store, a newer format, a corrupt
    /// `meta`, an I/O or SQLite error. Nothing was printed.
    #[error(transparent)]
    Open(#[from] OpenError),
    /// A read the view needs failed (a corrupt record names its table and key). Nothing of
    /// this view was printed.
    #[error(transparent)]
    Read(#[from] ReadError),
    /// Writing to standard output failed (a closed pipe, for example).
    #[error("cannot write the output: {0}")]
    Output(#[from] std::io::Error),
}

impl InspectError {
    /// [`EXIT_DAMAGED`] for a corrupt record, [`EXIT_ERROR`] for everything else.
    pub fn exit_code(&self) -> u8 {
        match self {
            InspectError::Open(OpenError::Corrupted(_)) => EXIT_DAMAGED,
            InspectError::Read(e) => read_exit_code(e),
            _ => EXIT_ERROR,
        }
    }
}

/// [`EXIT_DAMAGED`] for a corrupt record, [`EXIT_ERROR`] for a read that failed otherwise.
fn read_exit_code(e: &ReadError) -> u8 {
    match e {
        ReadError::Corrupted(_) => EXIT_DAMAGED,
        _ => EXIT_ERROR,
    }
}

/// How a view went: its exit status and the parts it could not read (already shown in the
/// view; [`main`] also prints each on stderr).
#[derive(Debug)]
pub struct Report {
    pub exit_code: u8,
    pub damage: Vec<Damage>,
}

impl Report {
    fn from_damage(damage: Vec<Damage>) -> Report {
        let exit_code = damage
            .iter()
            .map(|d| read_exit_code(&d.error))
            .max()
            .unwrap_or(EXIT_CLEAN);
        Report { exit_code, damage }
    }
}

/// Runs one `inspect` command: prints the view on stdout and every problem as one line
/// `<command>: <what is wrong>` on stderr, and returns the exit status. This is all an app
/// binary's `inspect` subcommand needs to call.
pub fn main(args: &Args, app: &AppDecoder) -> ExitCode {
    let stdout = std::io::stdout();
    let terminal = stdout.is_terminal();
    let mut out = stdout.lock();
    match run(args, app, &mut out, terminal) {
        Ok(report) => {
            for d in &report.damage {
                eprintln!("{}: {}: {}", app.command(), d.section, d.error);
            }
            ExitCode::from(report.exit_code)
        }
        // The reader of our output went away (`| head`): not worth a message.
        Err(InspectError::Output(e)) if e.kind() == std::io::ErrorKind::BrokenPipe => {
            ExitCode::from(EXIT_CLEAN)
        }
        Err(e) => {
            eprintln!("{}: {e}", app.command());
            ExitCode::from(e.exit_code())
        }
    }
}

/// Runs one `inspect` command, writing the view to `out`. `terminal`: `out` is a terminal
/// (`watch` then redraws the screen instead of appending).
pub fn run(
    args: &Args,
    app: &AppDecoder,
    out: &mut dyn Write,
    terminal: bool,
) -> Result<Report, InspectError> {
    let reader = Reader::open(&args.store)?;
    let json = args.json;
    let now = now_ms();
    let view = args.view.clone().unwrap_or(View::Summary);
    let damage = match view {
        View::Summary => {
            let (s, damage) = collect::summary(&reader, now)?;
            emit(out, json, &s, text::summary)?;
            damage
        }
        View::Outbox { peer, limit } => {
            let v = collect::outbox(&reader, app, now, peer.as_deref(), limit)?;
            emit(out, json, &v, text::outbox)?;
            Vec::new()
        }
        View::Peers => {
            emit(out, json, &collect::peers(&reader, now)?, text::peers)?;
            Vec::new()
        }
        View::Timers => {
            emit(out, json, &collect::timers(&reader, now)?, text::timers)?;
            Vec::new()
        }
        View::DeadLetters { limit } => {
            emit(
                out,
                json,
                &collect::dead_letters(&reader, limit)?,
                text::dead_letters,
            )?;
            Vec::new()
        }
        View::Replay { limit } => {
            emit(out, json, &collect::replay(&reader, limit)?, text::replay)?;
            Vec::new()
        }
        View::Poison { limit } => {
            emit(out, json, &collect::poison(&reader, limit)?, text::poison)?;
            Vec::new()
        }
        View::Tasks { limit } => {
            emit(out, json, &collect::tasks(&reader, limit)?, text::tasks)?;
            Vec::new()
        }
        View::Tables => {
            emit(out, json, &collect::tables(&reader)?, text::tables)?;
            Vec::new()
        }
        View::Table {
            name,
            prefix,
            limit,
        } => {
            let prefix = prefix.as_deref().map(decode::parse_key_arg);
            let (v, damage) =
                collect::table(&reader, app, &name, prefix.as_deref().unwrap_or(&[]), limit)?;
            emit(out, json, &v, text::table)?;
            damage
        }
        View::Turns { last } => {
            emit(out, json, &collect::turns(&reader, last)?, text::turns)?;
            Vec::new()
        }
        View::Groups => {
            let (v, damage) = collect::groups(&reader, now)?;
            emit(out, json, &v, text::groups)?;
            damage
        }
        View::Clients => {
            emit(
                out,
                json,
                &collect::clients(&reader, app, now)?,
                text::clients,
            )?;
            Vec::new()
        }
        View::State { limit } => {
            let (v, damage) = collect::state(&reader, app, limit)?;
            emit(out, json, &v, text::state)?;
            damage
        }
        View::Verify => {
            let v = collect::verify(&reader)?;
            emit(out, json, &v, text::verify)?;
            if !v.clean {
                return Ok(Report {
                    exit_code: EXIT_DAMAGED,
                    damage: Vec::new(),
                });
            }
            Vec::new()
        }
        View::Watch { count, interval_ms } => {
            return watch(
                &reader,
                out,
                json,
                terminal,
                count,
                Duration::from_millis(interval_ms),
            );
        }
    };
    Ok(Report::from_damage(damage))
}

/// Milliseconds since the Unix epoch on this machine's clock (0 if the clock is before it).
fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Writes `doc` as pretty JSON or as its text form.
fn emit<T: Serialize>(
    out: &mut dyn Write,
    json: bool,
    doc: &T,
    text: impl Fn(&T) -> String,
) -> Result<(), InspectError> {
    if json {
        let s = serde_json::to_string_pretty(doc).map_err(std::io::Error::other)?;
        writeln!(out, "{s}")?;
    } else {
        out.write_all(text(doc).as_bytes())?;
    }
    out.flush()?;
    Ok(())
}

/// `watch`: the summary every `interval`, with rates over the last interval.
fn watch(
    reader: &Reader,
    out: &mut dyn Write,
    json: bool,
    terminal: bool,
    count: Option<u64>,
    interval: Duration,
) -> Result<Report, InspectError> {
    let mut previous: Option<(Instant, output::Summary)> = None;
    let mut next = Instant::now();
    let mut exit_code = EXIT_CLEAN;
    for refresh in 1u64.. {
        let (summary, damage) = collect::summary(reader, now_ms())?;
        let at = Instant::now();
        exit_code = exit_code.max(Report::from_damage(damage).exit_code);
        let tick = match &previous {
            None => output::WatchTick {
                refresh,
                elapsed_ms: None,
                turns_per_sec: None,
                commits_per_sec: None,
                outbox_growth_per_sec: None,
                summary,
            },
            Some((then, before)) => {
                let secs = at.duration_since(*then).as_secs_f64().max(1e-6);
                let per_sec = |now: u64, before: u64| (now as f64 - before as f64) / secs;
                output::WatchTick {
                    refresh,
                    elapsed_ms: Some(
                        u64::try_from(at.duration_since(*then).as_millis()).unwrap_or(u64::MAX),
                    ),
                    turns_per_sec: Some(per_sec(summary.turns_committed, before.turns_committed)),
                    commits_per_sec: Some(per_sec(summary.commits, before.commits)),
                    outbox_growth_per_sec: Some(per_sec(summary.outbox_depth, before.outbox_depth)),
                    summary,
                }
            }
        };
        if json {
            let s = serde_json::to_string(&tick).map_err(std::io::Error::other)?;
            writeln!(out, "{s}")?;
        } else {
            if terminal {
                // Clear the screen and go home, so the summary redraws in place.
                out.write_all(b"\x1b[2J\x1b[H")?;
            } else if refresh > 1 {
                out.write_all(b"\n")?;
            }
            out.write_all(text::watch(&tick).as_bytes())?;
        }
        out.flush()?;
        if count == Some(refresh) {
            break;
        }
        previous = Some((at, tick.summary));
        next += interval;
        let now = Instant::now();
        if next > now {
            std::thread::sleep(next - now);
        } else {
            // A refresh took longer than the interval: start the next one now.
            next = now;
        }
    }
    Ok(Report {
        exit_code,
        damage: Vec::new(),
    })
}
