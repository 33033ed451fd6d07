//! The process helpers the kill-and-restart harnesses rely on: death attribution, stdout
//! capture, restart, bind-failure detection, deadline waits.

use std::net::UdpSocket;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::time::{Duration, Instant};

use ken_tests::procs::{self, AppSpec, LifeEnd, Proc};

fn sh(name: &str, script: &str, dir: &Path) -> AppSpec {
    AppSpec {
        name: name.to_string(),
        program: "/bin/sh".into(),
        args: vec!["-c".into(), script.into()],
        envs: Vec::new(),
        log_dir: dir.to_path_buf(),
    }
}

fn wait_end(p: &mut Proc) -> LifeEnd {
    procs::wait_until(
        Instant::now() + Duration::from_secs(10),
        Duration::from_millis(5),
        || p.poll().expect("poll"),
    )
    .expect("the process ends within 10 s")
}

#[test]
fn our_sigkill_is_attributed_to_us_and_a_foreign_one_is_not() {
    let dir = tempfile::tempdir().unwrap();
    let mut p = Proc::start(sh("sleeper", "echo up; exec sleep 30", dir.path())).unwrap();
    procs::wait_until(
        Instant::now() + Duration::from_secs(10),
        Duration::from_millis(5),
        || (!p.current_life().stdout_lines().is_empty()).then_some(()),
    )
    .expect("the sleeper says it is up");
    assert_eq!(p.kill().unwrap(), LifeEnd::KilledByUs);
    assert_eq!(p.kills(), 1);
    assert!(!p.is_running());

    // A process that dies of a SIGKILL someone else sent (here: itself) is not our kill.
    let mut p = Proc::start(sh("suicide", "kill -9 $$", dir.path())).unwrap();
    match wait_end(&mut p) {
        LifeEnd::Exited(status) => assert_eq!(status.signal(), Some(9)),
        other => panic!("expected a foreign SIGKILL, got {other:?}"),
    }
    assert_eq!(p.kills(), 0);
}

#[test]
fn restart_runs_the_same_command_and_keeps_each_lifes_output() {
    let dir = tempfile::tempdir().unwrap();
    let mut p = Proc::start(sh("echo", "echo out; echo err >&2; exit 3", dir.path())).unwrap();
    let end = wait_end(&mut p);
    assert!(
        matches!(end, LifeEnd::Exited(s) if s.code() == Some(3)),
        "{end:?}"
    );
    assert!(!end.is_success());
    p.restart().unwrap();
    wait_end(&mut p);
    assert_eq!(p.lives().len(), 2);
    assert_eq!(
        p.stdout_lines(),
        vec![(1, "out".to_string()), (2, "out".to_string())]
    );
    assert_eq!(p.current_life().stderr_tail(5), "err");
}

#[test]
fn wait_until_gives_up_at_its_deadline() {
    let started = Instant::now();
    let r: Result<(), _> = procs::wait_until(
        started + Duration::from_millis(50),
        Duration::from_millis(5),
        || None,
    );
    assert_eq!(r, Err(procs::TimedOut));
    assert!(started.elapsed() >= Duration::from_millis(50));
}

/// The harness moves both processes to fresh ports when a life cannot bind its own: this
/// checks that such a life is recognised (and thereby that the runtime still reports it as
/// `cannot bind UDP` with exit code 1).
#[test]
fn a_taken_port_is_recognised_as_a_bind_failure() {
    let dir = tempfile::tempdir().unwrap();
    let taken = UdpSocket::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let [peer_port] = procs::free_udp_ports(1)[..] else {
        unreachable!()
    };
    let spec = AppSpec {
        name: "a".to_string(),
        program: procs::app_binary("ken-apps", "ken-pingpong"),
        args: vec![
            "--id".into(),
            "a".into(),
            "--listen".into(),
            procs::loopback(port).to_string().into(),
            "--store".into(),
            dir.path().join("a.db").into(),
            "--peer".into(),
            format!("b={}", procs::loopback(peer_port)).into(),
            "--count".into(),
            "10".into(),
        ],
        envs: Vec::new(),
        log_dir: dir.path().to_path_buf(),
    };
    let mut p = Proc::start(spec).unwrap();
    let end = wait_end(&mut p);
    assert!(
        procs::exited_with_bind_error(p.current_life()),
        "{end:?}\n{}",
        p.describe(1, 20)
    );
    drop(taken);
}
