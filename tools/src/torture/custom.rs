//! `ken torture --cluster FILE`: any service on Ken, described by a cluster file whose
//! `[[process]]` entries carry a `command` (the format: `ken::cluster`'s rustdoc), tortured
//! like the built-in apps.
//!
//! How a run reaches the user's processes:
//! - **Their own command line.** Each process is started from its entry's `command`, with
//!   `{id}`, `{cluster}` and `{store}` replaced. A relative program is relative to the cluster
//!   file's directory, a bare name is looked up in `PATH`; both are checked before anything
//!   starts.
//! - **The run's cluster file.** Torture writes `DIR/cluster.toml` (`{cluster}`): the same
//!   process ids on loopback ports it picked (bound to port 0, then released: never fixed
//!   ports), a store per process under `DIR/stores`, the run's cluster key, and the user's
//!   `[settings]` (FUSE timing, tuning, encryption) otherwise. It is rewritten if a port has to
//!   change. The processes also get `KEN_TORTURE_ID` and `KEN_TORTURE_CLUSTER`.
//! - **The faults.** Network faults and partitions go through each process's own transport:
//!   torture rewrites the file named by the child's `KEN_FAULTS_FILE` (every Ken endpoint
//!   watches it), and partitions name the peers' loopback addresses. Kills are SIGKILL,
//!   pauses SIGSTOP/SIGCONT, crash points `KEN_CRASH_AT` (read by every Ken process).
//!
//! The checks are the runtime's own ([`super::check`]: every pair exactly-once and FIFO,
//! output validity, acknowledgements, incarnations, `verify` of every store), plus the user's
//! check command ([`run_check`]). This module adds no application check of its own.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::bail;
use ken::cluster::{ClusterFile, Settings};

use super::apps::TortureApp;

/// The name of the run's cluster file in the run's directory.
pub const RUN_FILE: &str = "cluster.toml";

/// Output lines of the check command kept in the violations and the summary.
pub const CHECK_LINES_MAX: usize = 20;

/// A service described by a cluster file.
#[derive(Debug, Clone)]
pub struct Custom {
    /// The user's file, as loaded.
    pub file: ClusterFile,
    /// Each process's program, resolved, and its arguments with placeholders.
    commands: Vec<(PathBuf, Vec<String>)>,
    /// The cluster file this run writes (`{cluster}`): `DIR/cluster.toml`.
    pub run_file: PathBuf,
}

/// Where `program` of the cluster file at `file_dir` is: relative to the file's directory
/// when it has a slash, else looked up in `PATH`. Errors say what to do.
fn resolve_program(program: &str, file_dir: &Path, id: &str) -> anyhow::Result<PathBuf> {
    let executable = |p: &Path| {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if program.contains('/') {
        let p = Path::new(program);
        let p = if p.is_absolute() {
            p.to_path_buf()
        } else {
            file_dir.join(p)
        };
        if !executable(&p) {
            bail!(
                "process `{id}`: its command's program {} {} (a relative program is relative to \
                 the cluster file's directory); build it or fix command",
                p.display(),
                if p.exists() {
                    "is not an executable file"
                } else {
                    "does not exist"
                }
            );
        }
        return Ok(p);
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| d.join(program))
        .find(|p| executable(p))
        .ok_or_else(|| {
            anyhow::anyhow!(
                "process `{id}`: its command's program `{program}` is not in PATH; give its \
                 path (relative to the cluster file's directory, or absolute) in command"
            )
        })
}

impl Custom {
    /// Loads the user's cluster file `path` ([`Custom::run_file`] is set by the caller once
    /// the run's directory exists).
    ///
    /// # Errors
    /// One line each: the file's own errors (unknown keys, bad addresses, ..), a process
    /// without `command`, a program that does not exist or is not executable.
    pub fn load(path: &Path) -> anyhow::Result<Custom> {
        let file = ClusterFile::load(path).map_err(|e| anyhow::anyhow!("--cluster: {e}"))?;
        let file_dir = path.parent().unwrap_or(Path::new("."));
        let missing: Vec<&str> = file
            .processes
            .iter()
            .filter(|p| p.command.is_none())
            .map(|p| p.id.as_str())
            .collect();
        if missing.len() == file.processes.len() {
            bail!(
                "--cluster {}: no [[process]] entry has a command; ken torture starts every \
                 process itself: add command = [\"PROGRAM\", \"--cluster\", \"{{cluster}}\", \
                 \"--id\", \"{{id}}\"] to each entry",
                path.display()
            );
        }
        if let Some(p) = file.processes.iter().find(|p| p.command.is_none()) {
            let others = if missing.len() > 1 {
                format!(" (nor do {})", missing[1..].join(", "))
            } else {
                String::new()
            };
            bail!(
                "--cluster {}:{}: process `{}` has no command{others}; ken torture starts every \
                 process itself: add command = [\"PROGRAM\", \"--cluster\", \"{{cluster}}\", \
                 \"--id\", \"{{id}}\"] to its [[process]] entry",
                path.display(),
                p.line,
                p.id,
            );
        }
        let mut commands = Vec::new();
        for p in &file.processes {
            let c = p.command.as_deref().unwrap_or_default();
            let program = resolve_program(&c[0], file_dir, p.id.as_str())
                .map_err(|e| anyhow::anyhow!("--cluster {}:{}: {e:#}", path.display(), p.line))?;
            commands.push((program, c[1..].to_vec()));
        }
        Ok(Custom {
            file,
            commands,
            run_file: PathBuf::from(RUN_FILE),
        })
    }

    /// The program of process `index`.
    pub fn program(&self, index: usize) -> &Path {
        &self.commands[index].0
    }

    /// Writes the run's cluster file: the processes at `addrs` with their `stores`, keyed
    /// with `key` if given, the user's other settings kept. Read back to check it.
    pub fn write_run_file(
        &self,
        addrs: &[SocketAddr],
        stores: &[PathBuf],
        key: Option<&Path>,
        stats_interval_ms: u64,
    ) -> anyhow::Result<()> {
        let mut t = String::from(
            "# Written by `ken torture --cluster` for this run: the processes of the user's\n\
             # cluster file on the ports and stores of the run. Rewritten if a port changes.\n",
        );
        // Paths in a cluster file are relative to its directory: write them absolute, so a
        // relative `--dir` names the same files for the processes as for this harness.
        let abs = |p: &Path| std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
        for ((p, addr), store) in self.file.processes.iter().zip(addrs).zip(stores) {
            let store = abs(store);
            t.push_str(&format!(
                "\n[[process]]\nid = {}\naddress = {}\nstore = {}\n",
                quote(p.id.as_str()),
                quote(&addr.to_string()),
                quote(&store.display().to_string()),
            ));
        }
        let key = key.map(abs);
        t.push_str(&settings_toml(
            &self.file.settings,
            key.as_deref(),
            stats_interval_ms,
        ));
        super::write_atomic(&self.run_file, &t)?;
        ClusterFile::load(&self.run_file).map_err(|e| {
            anyhow::anyhow!("the run's cluster file does not read back (a ken torture bug): {e}")
        })?;
        Ok(())
    }
}

/// A TOML basic string.
pub(super) fn quote(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// The run's `[settings]`: the user's, with the run's key and stats interval.
pub(super) fn settings_toml(s: &Settings, key: Option<&Path>, stats_interval_ms: u64) -> String {
    let mut t = String::from("\n[settings]\n");
    if let Some(k) = key {
        t.push_str(&format!("key_file = {}\n", quote(&k.display().to_string())));
        if s.encrypt {
            t.push_str("encrypt = true\n");
        }
    }
    if s.admit_replaced_peers {
        t.push_str("admit_replaced_peers = true\n");
    }
    t.push_str(&format!("stats_interval_ms = {stats_interval_ms}\n"));
    let f = &s.fuse;
    let fuse: Vec<String> = [
        ("heartbeat_ms", f.heartbeat),
        ("t_fail_ms", f.t_fail),
        ("create_timeout_ms", f.create_timeout),
    ]
    .into_iter()
    .filter_map(|(k, v)| v.map(|d| format!("{k} = {}\n", d.as_millis())))
    .collect();
    if !fuse.is_empty() {
        t.push_str("\n[settings.fuse]\n");
        t.extend(fuse);
    }
    let u = &s.tuning;
    let tuning: Vec<String> = [
        ("batch_turns_max", u.batch_turns_max.map(u64::from)),
        ("batch_bytes_max", u.batch_bytes_max.map(|v| v as u64)),
        (
            "window_messages_max",
            u.window_messages_max.map(|v| v as u64),
        ),
        ("reorder_buffer_max", u.reorder_buffer_max),
        ("rto_initial_ms", u.rto_initial_ms),
        ("rto_min_ms", u.rto_min_ms),
        ("rto_max_ms", u.rto_max_ms),
    ]
    .into_iter()
    .filter_map(|(k, v)| v.map(|v| format!("{k} = {v}\n")))
    .collect();
    if !tuning.is_empty() {
        t.push_str("\n[settings.tuning]\n");
        t.extend(tuning);
    }
    t
}

impl TortureApp for Custom {
    fn name(&self) -> &'static str {
        "cluster"
    }

    fn app(&self) -> Option<ken_apps::cli::App> {
        None
    }

    fn members(&self) -> Vec<String> {
        self.file
            .processes
            .iter()
            .map(|p| p.id.to_string())
            .collect()
    }

    fn args(
        &self,
        index: usize,
        _listen: SocketAddr,
        store: &Path,
        _peers: &[(String, SocketAddr)],
    ) -> Vec<String> {
        let id = self.file.processes[index].id.as_str();
        let cluster = self.run_file.display().to_string();
        let store = store.display().to_string();
        self.commands[index]
            .1
            .iter()
            .map(|a| {
                a.replace("{id}", id)
                    .replace("{cluster}", &cluster)
                    .replace("{store}", &store)
            })
            .collect()
    }

    fn finishes(&self) -> bool {
        self.file.torture.finishes
    }

    fn check_output(&self, _index: usize, _lines: &[String], _quiesced: bool) -> Vec<String> {
        // The user's processes may print anything; their check command judges.
        Vec::new()
    }

    fn check(&self, _stores: &[PathBuf], _quiesced: bool) -> Vec<String> {
        Vec::new()
    }
}

/// What the check command did.
#[derive(Debug, Clone, Default)]
pub struct CheckRun {
    /// Its exit code (`None`: killed by a signal, or it could not start, or timed out).
    pub exit: Option<i32>,
    pub passed: bool,
    /// Its stdout then stderr lines, at most [`CHECK_LINES_MAX`].
    pub lines: Vec<String>,
    pub ms: u64,
    /// Why it did not run to an exit code, if so.
    pub problem: Option<String>,
}

/// Runs `cmd` with `sh -c` in `dir` (the processes are dead): the environment gets
/// `KEN_TORTURE_STORES` (the store paths, space-separated, in the file's order),
/// `KEN_TORTURE_IDS` (the ids, likewise), `KEN_TORTURE_CLUSTER` (the run's cluster file, if
/// any), `KEN_TORTURE_DIR` and `KEN_TORTURE_QUIESCED` (`1` if the run quiesced: the work
/// must be complete; `0`: check only what holds at any moment). Killed after `timeout`.
pub fn run_check(
    cmd: &str,
    dir: &Path,
    ids: &[String],
    stores: &[PathBuf],
    cluster: Option<&Path>,
    quiesced: bool,
    timeout: Duration,
) -> CheckRun {
    let started = Instant::now();
    let join = |v: Vec<String>| v.join(" ");
    let mut c = std::process::Command::new("sh");
    c.arg("-c")
        .arg(cmd)
        .current_dir(dir)
        .env(
            "KEN_TORTURE_STORES",
            join(stores.iter().map(|s| s.display().to_string()).collect()),
        )
        .env("KEN_TORTURE_IDS", join(ids.to_vec()))
        .env("KEN_TORTURE_DIR", dir)
        .env("KEN_TORTURE_QUIESCED", if quiesced { "1" } else { "0" })
        .env_remove("KEN_CRASH_AT")
        .env_remove("KEN_FAULTS_FILE")
        .stdin(std::process::Stdio::null());
    if let Some(f) = cluster {
        c.env("KEN_TORTURE_CLUSTER", f);
    }
    let out_path = dir.join("check.stdout");
    let err_path = dir.join("check.stderr");
    let mut run = CheckRun::default();
    let spawned = (|| -> std::io::Result<std::process::Child> {
        c.stdout(std::fs::File::create(&out_path)?)
            .stderr(std::fs::File::create(&err_path)?)
            .spawn()
    })();
    let mut child = match spawned {
        Ok(c) => c,
        Err(e) => {
            run.problem = Some(format!("cannot start `sh -c`: {e}"));
            return run;
        }
    };
    let deadline = started + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break Some(s),
            Ok(None) if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                run.problem = Some(format!(
                    "did not finish within {} s (--check-timeout-seconds); killed",
                    timeout.as_secs()
                ));
                break None;
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => {
                run.problem = Some(format!("cannot wait for it: {e}"));
                break None;
            }
        }
    };
    run.ms = started.elapsed().as_millis() as u64;
    if let Some(s) = status {
        use std::os::unix::process::ExitStatusExt;
        run.exit = s.code();
        run.passed = s.success();
        if let Some(sig) = s.signal() {
            run.problem = Some(format!("killed by signal {sig}"));
        }
    }
    for p in [&out_path, &err_path] {
        let text = std::fs::read_to_string(p).unwrap_or_default();
        run.lines.extend(
            text.lines()
                .filter(|l| !l.trim().is_empty())
                .map(str::to_string),
        );
    }
    if run.lines.len() > CHECK_LINES_MAX {
        let more = run.lines.len() - CHECK_LINES_MAX;
        run.lines.truncate(CHECK_LINES_MAX);
        run.lines.push(format!(
            "({more} more lines in {} and {})",
            out_path.display(),
            err_path.display()
        ));
    }
    run
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_survives_a_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let user = dir.path().join("user.toml");
        std::fs::write(
            &user,
            "[[process]]\nid = \"a\"\naddress = \"h:1\"\ncommand = [\"/bin/sh\", \"{id}\"]\n\
             [[process]]\nid = \"b\"\naddress = \"h:2\"\ncommand = [\"sh\", \"-c\", \"x {store}\"]\n\
             [settings]\nencrypt = true\nkey_file = \"k\"\n[settings.fuse]\nt_fail_ms = 900\n\
             [settings.tuning]\nrto_max_ms = 700\n",
        )
        .unwrap();
        let run_dir = dir.path().join("we\"ird\\dir");
        std::fs::create_dir_all(&run_dir).unwrap();
        let mut c = Custom::load(&user).unwrap();
        c.run_file = run_dir.join(RUN_FILE);
        let addrs: Vec<SocketAddr> = vec![
            "127.0.0.1:4001".parse().unwrap(),
            "127.0.0.1:4002".parse().unwrap(),
        ];
        let stores = vec![run_dir.join("a.ken"), run_dir.join("b.ken")];
        let key = run_dir.join("key-0.key");
        ken::ClusterKey::write_new(&key).unwrap();
        c.write_run_file(&addrs, &stores, Some(&key), 500).unwrap();
        let back = ClusterFile::load(&c.run_file).unwrap();
        assert_eq!(
            back.processes[1].store.as_deref(),
            Some(stores[1].as_path())
        );
        assert_eq!(back.processes[0].address.to_string(), "127.0.0.1:4001");
        assert_eq!(back.settings.key_file.as_deref(), Some(key.as_path()));
        assert!(back.settings.encrypt);
        assert_eq!(back.settings.fuse.t_fail, Some(Duration::from_millis(900)));
        assert_eq!(back.settings.tuning.rto_max_ms, Some(700));
        let args = c.args(1, addrs[1], &stores[1], &[]);
        assert_eq!(args, ["-c", &format!("x {}", stores[1].display())]);
        assert!(c.program(1).is_absolute() && c.program(1).ends_with("sh"));
        assert_eq!(c.program(0), Path::new("/bin/sh"));
    }
}
