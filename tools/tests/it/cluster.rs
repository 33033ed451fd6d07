//! `ken torture --cluster FILE`: any service, described by a cluster file whose processes
//! carry their own command lines, tortured like the built-in apps (issue 15).
//!
//! - The bank as a user service: `ken app bank --cluster {cluster} --id {id}` command lines,
//!   no `--app`; the runtime's checks and a check command (`ken audit` over the stores).
//! - A task-worker service that is no built-in app: a queue and two workers (this test
//!   binary re-run as children); each job runs a shell command in a task
//!   (`Turn::start_task`); the check command (this binary again) verifies from the queue's
//!   store that every job's result was applied exactly once, with the right value, and from
//!   the attempt log that every attempt of a job carried one idempotency key.
//! - Negative controls: a failing check command is a violation and a non-zero exit; a
//!   service whose runtime releases outputs before their commit
//!   (`--unsafe-release-before-commit`) is caught by the runtime's own checks through the
//!   `--cluster` path.
//! - Bad descriptions are refused in one line saying what to do, before anything starts.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use ken::store::{codec, Reader};
use ken::{Config, Handler, Input, ProcessId, TaskContext, Turn};
use serde::{Deserialize, Serialize};

use super::torture::{n, torture_env as torture, RELEASE_BEFORE_COMMIT_RUN};

const KEN: &str = env!("CARGO_BIN_EXE_ken");

/// A TOML string.
fn q(s: &str) -> String {
    format!("{s:?}")
}

/// A cluster file of `procs` bank members started as `ken app bank` from their command
/// lines (ports in the file are placeholders: the run picks its own).
fn bank_file(dir: &Path, procs: usize, transfers: u64) -> PathBuf {
    let mut t = String::new();
    for i in 0..procs {
        t.push_str(&format!(
            "[[process]]\nid = \"m{i}\"\naddress = \"127.0.0.1:{}\"\ncommand = [{}, \"app\", \"bank\", \
             \"--cluster\", \"{{cluster}}\", \"--id\", \"{{id}}\", \"--accounts\", \"8\", \
             \"--interval-ms\", \"5\", \"--transfers\", \"{transfers}\"]\n\n",
            7001 + i,
            q(KEN)
        ));
    }
    let path = dir.join("bank.toml");
    std::fs::write(&path, t).unwrap();
    path
}

/// The bank, described by a cluster file and tortured through the generic path: kills,
/// crash points, pauses and network faults happen, nothing is violated, and the check
/// command ran (and saw the stores).
#[test]
fn the_bank_as_a_user_service_passes() {
    let dir = tempfile::tempdir().unwrap();
    let file = bank_file(dir.path(), 3, 600);
    let marker = dir.path().join("checked");
    let check = format!(
        "{} audit $KEN_TORTURE_STORES && echo \"$KEN_TORTURE_IDS $KEN_TORTURE_QUIESCED\" > {}",
        q(KEN),
        q(&marker.display().to_string())
    );
    let (ok, stdout, stderr, s) = torture(
        dir.path(),
        &[
            "--cluster",
            file.to_str().unwrap(),
            "--check",
            &check,
            "--seconds",
            "15",
            "--seed",
            "5",
        ],
        &[],
    );
    assert!(ok && n(&s, "violations") == 0, "{stdout}\nstderr: {stderr}");
    assert_eq!(s["app"], "cluster", "{s}");
    assert_eq!(n(&s, "processes"), 3);
    assert!(n(&s, "kills") > 0, "{s}");
    assert!(n(&s, "restarts") >= n(&s, "kills"), "{s}");
    assert!(n(&s, "net_epochs") > 0, "{s}");
    assert!(n(&s, "messages") > 0, "{s}");
    assert!(s["quiesce_ms"].is_u64(), "{s}");
    assert_eq!(s["check"]["passed"], true, "{s}");
    assert_eq!(s["check"]["exit"], 0, "{s}");
    assert_eq!(s["keyed"], true, "{s}");
    assert_eq!(
        std::fs::read_to_string(&marker).unwrap().trim(),
        "m0 m1 m2 1",
        "the check command did not see the ids and quiescence"
    );
    // The run's own cluster file: the same ids, the run's stores.
    let run = ken::cluster::ClusterFile::load(&dir.path().join("run/cluster.toml")).unwrap();
    assert_eq!(run.processes.len(), 3);
    assert!(run.processes.iter().all(|p| p
        .store
        .as_ref()
        .is_some_and(|s| s.starts_with(dir.path().join("run/stores")))));
    assert!(run.settings.key_file.is_some());
}

/// Pingpong as a user service that finishes (`[torture] finishes = true`): both processes
/// exit 0 once the volley is done, a process that left with messages unacknowledged is
/// started again, and the check named in the file (not on the command line) runs.
#[test]
fn pingpong_as_a_finishing_user_service_passes() {
    let dir = tempfile::tempdir().unwrap();
    let mut t = String::new();
    for (i, (id, serve)) in [("b", ", \"--serve\""), ("a", "")].iter().enumerate() {
        t.push_str(&format!(
            "[[process]]\nid = \"{id}\"\naddress = \"127.0.0.1:{}\"\ncommand = [{}, \"app\", \
             \"pingpong\", \"--cluster\", \"{{cluster}}\", \"--id\", \"{{id}}\", \"--count\", \
             \"600\"{serve}]\n\n",
            7001 + i,
            q(KEN)
        ));
    }
    t.push_str(&format!(
        "[torture]\nfinishes = true\ncheck = {}\n",
        q(&format!("{KEN:?} audit $KEN_TORTURE_STORES"))
    ));
    let file = dir.path().join("pingpong.toml");
    std::fs::write(&file, t).unwrap();
    let (ok, stdout, stderr, s) = torture(
        dir.path(),
        &[
            "--cluster",
            file.to_str().unwrap(),
            "--seconds",
            "8",
            "--seed",
            "3",
        ],
        &[],
    );
    assert!(ok && n(&s, "violations") == 0, "{stdout}\nstderr: {stderr}");
    assert!(n(&s, "kills") > 0, "{s}");
    // 600 values volleyed: 599 messages at least.
    assert!(n(&s, "messages") >= 599, "{s}");
    assert_eq!(s["check"]["passed"], true, "{s}");
    assert!(
        s["check"]["command"].as_str().unwrap().contains("audit"),
        "{s}"
    );
}

/// A check command that fails is a violation quoting its output, and a non-zero exit.
#[test]
fn a_failing_check_command_is_a_violation() {
    let dir = tempfile::tempdir().unwrap();
    let file = bank_file(dir.path(), 2, 40);
    let (ok, stdout, _, s) = torture(
        dir.path(),
        &[
            "--cluster",
            file.to_str().unwrap(),
            "--check",
            "echo 'invariant broken: 3 jobs lost'; exit 3",
            "--seconds",
            "3",
            "--seed",
            "1",
        ],
        &[],
    );
    assert!(!ok, "exit 0 with a failing check: {stdout}");
    assert!(n(&s, "violations") >= 1, "{s}");
    assert_eq!(s["check"]["passed"], false, "{s}");
    assert_eq!(s["check"]["exit"], 3, "{s}");
    assert!(
        stdout.contains("violation: check command") && stdout.contains("exited 3"),
        "{stdout}"
    );
    assert!(
        stdout.contains("violation: check: invariant broken: 3 jobs lost"),
        "{stdout}"
    );
}

/// The negative control of the runtime's own checks through `--cluster`: the bank's
/// processes, started from their command lines with outputs released before their commit,
/// make a peer consume messages of rolled-back turns; torture must name it.
#[test]
fn release_before_commit_is_caught_through_the_cluster_path() {
    let dir = tempfile::tempdir().unwrap();
    let file = bank_file(dir.path(), 3, 2000);
    let mut args = vec![
        "--cluster",
        file.to_str().unwrap(),
        "--crash-point-p",
        "0.05",
    ];
    args.extend(RELEASE_BEFORE_COMMIT_RUN);
    let (ok, stdout, _, s) = torture(dir.path(), &args, &[]);
    assert!(!ok, "exit 0 with outputs released before commit: {stdout}");
    assert!(n(&s, "violations") > 0, "{s}");
    assert!(
        stdout.contains("output validity violated") || stdout.contains("acknowledged and lost"),
        "no safety violation named: {stdout}"
    );
}

/// Bad descriptions: refused before anything starts, in one line saying what to do.
#[test]
fn bad_cluster_files_are_refused_in_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p
    };
    let cases = [
        (
            write(
                "nocommand.toml",
                "[[process]]\nid = \"a\"\naddress = \"127.0.0.1:7001\"\n",
            ),
            "no [[process]] entry has a command",
        ),
        (
            write(
                "onemissing.toml",
                "[[process]]\nid = \"a\"\naddress = \"127.0.0.1:7001\"\ncommand = [\"/bin/true\"]\n\
                 [[process]]\nid = \"b\"\naddress = \"127.0.0.1:7002\"\n",
            ),
            "onemissing.toml:6: process `b` has no command;",
        ),
        (
            write(
                "typo.toml",
                "[[process]]\nid = \"a\"\naddress = \"127.0.0.1:7001\"\ncomand = [\"/bin/true\"]\n",
            ),
            "typo.toml:4",
        ),
        (
            write(
                "missing.toml",
                "[[process]]\nid = \"a\"\naddress = \"127.0.0.1:7001\"\ncommand = [\"bin/no-such-service\"]\n",
            ),
            "does not exist",
        ),
        (
            write(
                "notinpath.toml",
                "[[process]]\nid = \"a\"\naddress = \"127.0.0.1:7001\"\ncommand = [\"no-such-service-xyz\"]\n",
            ),
            "is not in PATH",
        ),
    ];
    for (file, says) in &cases {
        let run = dir.path().join("run");
        let out = Command::new(KEN)
            .args(["torture", "--cluster"])
            .arg(file)
            .arg("--dir")
            .arg(&run)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{}: accepted", file.display());
        assert!(stderr.contains(says), "{}: {stderr}", file.display());
        assert_eq!(stderr.trim().lines().count(), 1, "not one line: {stderr}");
        assert!(
            !run.exists(),
            "{}: a run directory was made before the refusal",
            file.display()
        );
        assert!(
            out.stdout.is_empty(),
            "{}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
}

/// A command that starts but cannot run (here: a program that exits 2 at once, like a
/// service given flags it does not know) stops the run at once with what it said.
#[test]
fn a_command_that_fails_at_start_stops_the_run_with_its_stderr() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.toml");
    std::fs::write(
        &file,
        "[[process]]\nid = \"a\"\naddress = \"127.0.0.1:7001\"\n\
         command = [\"sh\", \"-c\", \"echo 'unknown flag --clutser' >&2; exit 2\"]\n\
         [[process]]\nid = \"b\"\naddress = \"127.0.0.1:7002\"\ncommand = [\"sleep\", \"600\"]\n",
    )
    .unwrap();
    let started = std::time::Instant::now();
    let (ok, stdout, _, s) = torture(
        dir.path(),
        &["--cluster", file.to_str().unwrap(), "--seconds", "30"],
        &[],
    );
    assert!(!ok, "{stdout}");
    assert!(n(&s, "violations") >= 1, "{s}");
    assert!(
        stdout.contains("process `a` failed at its first start")
            && stdout.contains("unknown flag --clutser"),
        "{stdout}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "the run went on for {:?}",
        started.elapsed()
    );
}

// The task-worker service: a queue `q` hands jobs to `w1` and `w2`; a worker runs each job
// as a shell command in a task and sends the result back. Its processes are this test
// binary, re-run by `ken torture` with `--exact cluster::task_service_child`.

/// Jobs the queue hands out.
const JOBS: u64 = 80;

#[derive(Debug, Clone, Serialize, Deserialize)]
enum Msg {
    Job(u64),
    Done { job: u64, value: u64 },
}

struct Queue;

#[derive(Default, Serialize, Deserialize)]
struct QueueState {
    next: u64,
    /// Job -> (results applied, the last value).
    done: BTreeMap<u64, (u32, u64)>,
}

impl Handler for Queue {
    const APP: &'static str = "tasksvc-queue";
    type State = QueueState;
    type Message = Msg;
    type Request = ();
    type Reply = ();
    fn on_turn(&self, s: &mut QueueState, turn: &mut Turn<'_, Msg>, input: Input<Msg>) {
        match input {
            Input::Start => turn.set_timer("issue", Duration::from_millis(20)),
            Input::Timer { .. } => {
                let to = if s.next.is_multiple_of(2) { "w1" } else { "w2" };
                turn.send(&ProcessId::new(to).unwrap(), &Msg::Job(s.next))
                    .unwrap();
                s.next += 1;
                if s.next < JOBS {
                    turn.set_timer("issue", Duration::from_millis(100));
                }
            }
            Input::Message {
                message: Msg::Done { job, value },
                ..
            } => {
                let e = s.done.entry(job).or_default();
                e.0 += 1;
                e.1 = value;
            }
            _ => {}
        }
    }
}

struct Worker {
    /// The negative control's bug: every tenth job's result is sent twice.
    double: bool,
}

impl Handler for Worker {
    const APP: &'static str = "tasksvc-worker";
    type State = ();
    type Message = Msg;
    type Request = ();
    type Reply = ();
    fn on_turn(&self, _: &mut (), turn: &mut Turn<'_, Msg>, input: Input<Msg>) {
        match input {
            Input::Message {
                message: Msg::Job(job),
                ..
            } => {
                turn.start_task("sh", &codec::encode(&job)).unwrap();
            }
            Input::TaskDone { result, .. } => {
                let (job, value): (u64, u64) = codec::decode(&result).unwrap();
                let q = ProcessId::new("q").unwrap();
                turn.send(&q, &Msg::Done { job, value }).unwrap();
                if self.double && job.is_multiple_of(10) {
                    turn.send(&q, &Msg::Done { job, value }).unwrap();
                }
            }
            _ => {}
        }
    }
}

/// Child mode: one process of the task service, configured from the run's cluster file
/// (`KEN_TORTURE_CLUSTER`, `KEN_TORTURE_ID`, set by `ken torture`).
#[test]
fn task_service_child() {
    let (Ok(cluster), Ok(id), Ok(log)) = (
        std::env::var("KEN_TORTURE_CLUSTER"),
        std::env::var("KEN_TORTURE_ID"),
        std::env::var("KEN_TEST_TASKSVC_LOG"),
    ) else {
        return;
    };
    let id = ProcessId::new(&id).unwrap();
    let mut config = Config::from_cluster_file(Path::new(&cluster), &id)
        .unwrap()
        .with_env_switches();
    config.tuning.task_backoff_initial = Duration::from_millis(10);
    config.tuning.task_backoff_max = Duration::from_millis(200);
    config.task("sh", move |cx: TaskContext, payload: Vec<u8>| {
        let log = log.clone();
        async move {
            let job: u64 = codec::decode(&payload).map_err(|e| e.to_string())?;
            {
                let mut f = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&log)
                    .map_err(|e| e.to_string())?;
                // One write per line: O_APPEND keeps lines whole across processes.
                f.write_all(format!("{} {job}\n", cx.key).as_bytes())
                    .map_err(|e| e.to_string())?;
            }
            let out = tokio::process::Command::new("sh")
                .arg("-c")
                .arg(format!(
                    "sleep 0.$(( 1 + {job} % 3 )); echo $(( {job} * 3 ))"
                ))
                .output()
                .await
                .map_err(|e| e.to_string())?;
            if !out.status.success() {
                return Err(format!("job {job}: sh exited {}", out.status));
            }
            let value: u64 = String::from_utf8_lossy(&out.stdout)
                .trim()
                .parse()
                .map_err(|e| format!("job {job}: output: {e}"))?;
            Ok(codec::encode(&(job, value)))
        }
    });
    let result = match id.as_str() {
        "q" => ken::run(config, Queue),
        _ => ken::run(
            config,
            Worker {
                double: std::env::var("KEN_TEST_TASKSVC_DOUBLE").is_ok_and(|v| v == "1"),
            },
        ),
    };
    panic!("{id} stopped: {result:?}");
}

/// Check mode (the `--check` command): every job's result applied exactly once with the
/// right value (complete only if the run quiesced), and one idempotency key per job.
#[test]
fn task_service_check() {
    let (Ok(cluster), Ok(log), Ok(quiesced)) = (
        std::env::var("KEN_TORTURE_CLUSTER"),
        std::env::var("KEN_TEST_TASKSVC_LOG"),
        std::env::var("KEN_TORTURE_QUIESCED"),
    ) else {
        return;
    };
    let file = ken::cluster::ClusterFile::load(Path::new(&cluster)).unwrap();
    let q = file.process(&ProcessId::new("q").unwrap()).unwrap();
    let reader = Reader::open(q.store.as_ref().unwrap()).unwrap();
    let state: QueueState = reader
        .root()
        .unwrap()
        .map(|b| codec::decode(&b).unwrap())
        .unwrap_or_default();
    let mut problems = Vec::new();
    for (job, (count, value)) in &state.done {
        if *count != 1 || *value != 3 * job {
            problems.push(format!("job {job}: applied {count} times, value {value}"));
        }
    }
    if quiesced == "1" && (state.done.len() as u64 != JOBS || state.next != JOBS) {
        problems.push(format!(
            "{} of {JOBS} results applied, {} jobs issued",
            state.done.len(),
            state.next
        ));
    }
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    let mut keys: BTreeMap<u64, BTreeSet<String>> = BTreeMap::new();
    for line in text.lines() {
        let (key, job) = line.split_once(' ').expect("a torn attempt line");
        keys.entry(job.parse().unwrap())
            .or_default()
            .insert(key.to_string());
    }
    for (job, k) in &keys {
        if k.len() != 1 {
            problems.push(format!("job {job}: attempts with {} keys: {k:?}", k.len()));
        }
    }
    let attempts = text.lines().count();
    println!(
        "checked {} results, {attempts} attempts of {} jobs",
        state.done.len(),
        keys.len()
    );
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// Runs the task service under `ken torture --cluster` for `seconds` with `envs` added;
/// returns (success, stdout, summary, attempts logged).
fn torture_task_service(
    seconds: &str,
    envs: &[(&str, &str)],
) -> (bool, String, serde_json::Value, u64) {
    let dir = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    let child = format!(
        "[{}, \"--exact\", \"cluster::task_service_child\", \"--nocapture\", \"--test-threads=1\"]",
        q(&exe.display().to_string())
    );
    let mut t = String::new();
    for (i, id) in ["q", "w1", "w2"].iter().enumerate() {
        t.push_str(&format!(
            "[[process]]\nid = \"{id}\"\naddress = \"127.0.0.1:{}\"\ncommand = {child}\n\n",
            7001 + i
        ));
    }
    let file = dir.path().join("tasks.toml");
    std::fs::write(&file, t).unwrap();
    let log = dir.path().join("attempts.log");
    let check = format!(
        "{} --exact cluster::task_service_check --nocapture --test-threads=1",
        q(&exe.display().to_string())
    );
    let mut all = vec![("KEN_TEST_TASKSVC_LOG", log.to_str().unwrap())];
    all.extend_from_slice(envs);
    let (ok, stdout, stderr, s) = torture(
        dir.path(),
        &[
            "--cluster",
            file.to_str().unwrap(),
            "--check",
            &check,
            "--seconds",
            seconds,
            "--kill-rate",
            "1",
            "--seed",
            "7",
        ],
        &all,
    );
    let attempts = std::fs::read_to_string(&log)
        .unwrap_or_default()
        .lines()
        .count() as u64;
    (ok, format!("{stdout}\nstderr: {stderr}"), s, attempts)
}

/// The task-worker service under torture: processes of the user's own binary (no built-in
/// app), jobs run as shell commands in tasks, SIGKILLs cutting some attempts short, and the
/// check command proves every result applied exactly once.
#[test]
fn a_task_worker_service_passes() {
    let (ok, out, s, attempts) = torture_task_service("12", &[]);
    assert!(ok && n(&s, "violations") == 0, "{out}");
    assert!(n(&s, "kills") > 0, "{s}");
    assert_eq!(s["check"]["passed"], true, "{s}");
    let said = s["check"]["output"].to_string();
    assert!(
        said.contains(&format!("checked {JOBS} results")),
        "the check did not see every result: {said}"
    );
    // Some attempt was cut short by a kill and run again: a duplicate was possible.
    assert!(attempts > JOBS, "{attempts} attempts for {JOBS} jobs: {s}");
    println!("task service: {attempts} attempts for {JOBS} jobs; {s}");
}

/// Negative control of the check command: workers that send every tenth result twice (a
/// bug of the service, not of the runtime) make the check fail, and torture exit non-zero.
#[test]
fn a_task_worker_applying_results_twice_is_caught_by_its_check() {
    let (ok, out, s, _) = torture_task_service("4", &[("KEN_TEST_TASKSVC_DOUBLE", "1")]);
    assert!(!ok, "exit 0 with results applied twice: {out}");
    assert_eq!(s["check"]["passed"], false, "{s}");
    assert!(out.contains("job 0: applied 2 times"), "{out}");
}
