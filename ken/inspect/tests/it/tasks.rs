//! `ken inspect STORE tasks` and the summary's `tasks_pending`, on a store written through
//! the one test host: pending tasks with their failures and last error, none once their
//! results are consumed.

use std::time::Duration;

use ken::engine::EngineConfig;
use ken::testing::Cluster;
use ken::{Handler, Input, ProcessId, Time, Tuning, Turn};
use ken_inspect::{AppDecoder, Args, View};

/// Starts two tasks in its first turn.
struct Two;

impl Handler for Two {
    const APP: &'static str = "two";
    type State = u32;
    type Message = ();
    type Request = ();
    type Reply = ();
    fn on_turn(&self, done: &mut u32, turn: &mut Turn<'_, ()>, input: Input<()>) {
        match input {
            Input::Start => {
                turn.start_task("fetch", b"abc").unwrap();
                turn.start_task("send", b"").unwrap();
            }
            Input::TaskDone { .. } => *done += 1,
            _ => {}
        }
    }
}

fn show(store: &std::path::Path, view: Option<View>, json: bool) -> String {
    let args = Args {
        store: store.to_path_buf(),
        json,
        view,
    };
    let mut out = Vec::new();
    let report = ken_inspect::run(&args, &AppDecoder::generic(), &mut out, false).unwrap();
    assert_eq!(report.exit_code, 0);
    String::from_utf8(out).unwrap()
}

#[test]
fn the_tasks_view_lists_pending_tasks_with_their_failures() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = Cluster::new(dir, Time::from_millis(1_700_000_000_000), 3);
    let config = EngineConfig {
        id: ProcessId::new("solo").unwrap(),
        peers: Vec::new(),
        tuning: Tuning::default(),
        seed: 1,
    };
    c.add(config, || Two);
    c.start(0);
    let started = c.node(0).tasks_started().to_vec();
    assert_eq!(started.len(), 2);
    c.finish_task(0, started[0].id, 1, Err("connection refused".into()));
    c.run_for(Duration::from_millis(10));
    let store = c.node(0).path().to_path_buf();

    let v: serde_json::Value =
        serde_json::from_str(&show(&store, Some(View::Tasks { limit: 100 }), true)).unwrap();
    let tasks = v["tasks"].as_array().unwrap();
    assert_eq!(tasks.len(), 2, "{v}");
    assert_eq!(tasks[0]["id"], "1.0");
    assert_eq!(tasks[0]["name"], "fetch");
    assert_eq!(tasks[0]["payload_bytes"], 3);
    assert_eq!(tasks[0]["failures"], 1);
    assert_eq!(tasks[0]["last_error"], "connection refused");
    assert_eq!(tasks[1]["id"], "1.1");
    assert_eq!(tasks[1]["failures"], 0);
    assert!(tasks[1]["last_error"].is_null());
    let text = show(&store, Some(View::Tasks { limit: 100 }), false);
    assert!(text.contains("connection refused"), "{text}");
    let s: serde_json::Value = serde_json::from_str(&show(&store, None, true)).unwrap();
    assert_eq!(s["tasks_pending"], 2);
    assert!(show(&store, None, false).contains("tasks         2 pending"));

    // Both results consumed: nothing pending.
    c.run_until(Duration::from_secs(1), |c| {
        c.node(0).tasks_started().len() == 3
    });
    let rest = c.node(0).tasks_started()[1..].to_vec();
    for a in rest {
        c.finish_task(0, a.id, a.attempt, Ok(Vec::new()));
    }
    assert_eq!(*c.state(0), 2);
    assert_eq!(
        show(&store, Some(View::Tasks { limit: 100 }), false),
        "no pending tasks\n"
    );
    let s: serde_json::Value = serde_json::from_str(&show(&store, None, true)).unwrap();
    assert_eq!(s["tasks_pending"], 0);
    assert!(!show(&store, None, false).contains("pending (see the tasks view)"));
}
