//! Cluster keys on the app binaries, from a cluster file: a keyed pingpong pair finishes,
//! a pair whose keys differ exchanges nothing (the negative control: the same pair, the same
//! file, one key changed), and a keyed kv server serves a client with a credential and
//! refuses one without.

use std::ffi::OsString;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use ken_tools::harness::{self, End, Process, Spec};

/// A two-process cluster file for `a` and `b` on fresh loopback ports, keyed with `key`.
fn cluster_file(dir: &Path, name: &str, key: &str) -> std::path::PathBuf {
    let ports = harness::free_ports(2).unwrap();
    let path = dir.join(name);
    std::fs::write(
        &path,
        format!(
            "[[process]]\nid = \"a\"\naddress = \"127.0.0.1:{}\"\nstore = \"{name}.a.db\"\n\
             [[process]]\nid = \"b\"\naddress = \"localhost:{}\"\nstore = \"{name}.b.db\"\n\
             [settings]\nkey_file = \"{key}\"\n",
            ports[0], ports[1]
        ),
    )
    .unwrap();
    path
}

fn pingpong(dir: &Path, file: &Path, id: &str, key_file: Option<&Path>) -> Process {
    let mut args: Vec<OsString> = vec![
        "app".into(),
        "pingpong".into(),
        "--cluster".into(),
        file.into(),
        "--id".into(),
        id.into(),
        "--count".into(),
        "40".into(),
    ];
    if id == "b" {
        args.push("--serve".into());
    }
    if let Some(k) = key_file {
        args.extend(["--key-file".into(), k.into()]);
    }
    Process::start(Spec::new(id, crate::ken(), args, dir)).unwrap()
}

fn keygen(path: &Path) {
    let out = Command::new(crate::ken())
        .arg("keygen")
        .arg(path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_keyed_pair_finishes_and_a_pair_with_different_keys_exchanges_nothing() {
    let dir = tempfile::tempdir().unwrap();
    keygen(&dir.path().join("k1.key"));
    keygen(&dir.path().join("k2.key"));
    let file = cluster_file(dir.path(), "same.toml", "k1.key");
    let mut a = pingpong(dir.path(), &file, "a", None);
    let mut b = pingpong(dir.path(), &file, "b", None);
    for p in [&mut a, &mut b] {
        let end = harness::wait_until(
            Instant::now() + Duration::from_secs(30),
            Duration::from_millis(10),
            || p.poll().expect("poll"),
        )
        .unwrap_or_else(|_| panic!("{} finishes within 30 s", p.name()));
        assert!(end.is_success(), "{end:?}: {}", p.report(1, 20));
    }
    let stderr = a.lives()[0].stderr_tail(50);
    assert!(
        stderr.contains("ready: a listening on") && stderr.contains("frames authenticated"),
        "{stderr}"
    );

    // Negative control: b runs with another key (the flag overrides the file's).
    let file = cluster_file(dir.path(), "differ.toml", "k1.key");
    let mut a = pingpong(dir.path(), &file, "a", None);
    let mut b = pingpong(dir.path(), &file, "b", Some(&dir.path().join("k2.key")));
    let deadline = Instant::now() + Duration::from_secs(8);
    while Instant::now() < deadline {
        assert_eq!(
            a.poll().unwrap(),
            None,
            "a finished with a peer of another key"
        );
        assert_eq!(
            b.poll().unwrap(),
            None,
            "b finished with a peer of another key"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let stderr = a.lives()[0].stderr_tail(50);
    assert!(
        stderr.contains("peer b at") && stderr.contains("has acknowledged nothing for"),
        "the quiet peer is named: {stderr}"
    );
    for p in [&mut a, &mut b] {
        assert_eq!(p.kill().unwrap(), End::KilledByUs);
    }
}

#[test]
fn a_keyed_kv_server_serves_a_credentialed_client_only() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("k.key");
    keygen(&key);
    let cred = dir.path().join("c.cred");
    let out = Command::new(crate::ken())
        .args(["client-credential", "--key-file"])
        .arg(&key)
        .arg("--out")
        .arg(&cred)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let addr = harness::free_addrs(1).unwrap()[0];
    let args: Vec<OsString> = vec![
        "app".into(),
        "kv".into(),
        "serve".into(),
        "--id".into(),
        "kv".into(),
        "--listen".into(),
        addr.to_string().into(),
        "--store".into(),
        dir.path().join("kv.db").into(),
        "--key-file".into(),
        key.clone().into(),
    ];
    let mut server = Process::start(Spec::new("kv", crate::ken(), args, dir.path())).unwrap();
    let kv = |args: &[&str], credential: bool| {
        let mut c = Command::new(crate::ken());
        c.args(["app", "kv"])
            .args(args)
            .args(["--server", &addr.to_string()]);
        if credential {
            c.arg("--credential").arg(&cred);
        }
        c.args(["--deadline-ms", "5000"]);
        let out = c.output().unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).trim().to_string(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, _, err) = kv(&["put", "k", "v1"], true);
    assert_eq!(code, Some(0), "{err}");
    // A second call of the same credential (a later request number) is applied too.
    let (code, _, err) = kv(&["put", "k", "v2"], true);
    assert_eq!(code, Some(0), "{err}");
    let (code, out, err) = kv(&["get", "k"], true);
    assert_eq!((code, out.as_str()), (Some(0), "v2"), "{err}");
    // Without a credential: refused, not applied (exit 1), and the value is unchanged.
    let (code, _, err) = kv(&["put", "k", "anonymous"], false);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("credential"), "{err}");
    let (_, out, _) = kv(&["get", "k"], true);
    assert_eq!(out, "v2");
    assert_eq!(server.poll().unwrap(), None, "{}", server.report(1, 20));
    assert_eq!(server.kill().unwrap(), End::KilledByUs);
}

/// A pingpong player of cluster file `file` volleying towards a count it never reaches, with
/// stats lines every 100 ms; `extra` flags override the file's key.
fn endless_player(dir: &Path, file: &Path, id: &str) -> Process {
    let mut args: Vec<OsString> = vec![
        "app".into(),
        "pingpong".into(),
        "--cluster".into(),
        file.into(),
        "--id".into(),
        id.into(),
        "--count".into(),
        "100000000".into(),
    ];
    if id == "b" {
        args.push("--serve".into());
    }
    let spec = Spec::new(id, crate::ken(), args, dir)
        .env("KEN_STATS_INTERVAL_MS", "100")
        .env("KEN_ANNOUNCE", "1");
    Process::start(spec).unwrap()
}

/// Restarts `p` (SIGKILL, then its next life) with the key flags `keys` added to its command.
fn restart_with(p: &mut Process, base: &[OsString], keys: &[&Path], accept: &[&Path]) {
    assert_eq!(p.kill().unwrap(), End::KilledByUs, "{}", p.report(1, 20));
    let mut args = base.to_vec();
    for k in keys {
        args.extend(["--key-file".into(), k.as_os_str().to_owned()]);
    }
    for k in accept {
        args.extend(["--accept-key-file".into(), k.as_os_str().to_owned()]);
    }
    p.set_args(args);
    p.spawn(None).unwrap();
}

/// The newest stats line of `p`'s current life, once its counters satisfy `ok` (10 s).
fn stats_until(p: &Process, what: &str, ok: impl Fn(&harness::Stats) -> bool) -> harness::Stats {
    harness::wait_until(
        Instant::now() + Duration::from_secs(10),
        Duration::from_millis(20),
        || p.current_life().and_then(|l| l.stats()).filter(|s| ok(s)),
    )
    .unwrap_or_else(|_| {
        panic!(
            "{}: {what} within 10 s (last stats {:?}): {}",
            p.name(),
            p.current_life().and_then(|l| l.stats()),
            p.report(1, 20)
        )
    })
}

/// The negative control of `ken torture --rotate-key` (tests/it/torture.rs): a process
/// restarted with ONLY the new key while its peer holds only the old one exchanges no
/// message, each side dropping the other's frames as `unknown_key_dropped`; restarted with
/// the new key and the old one accepted (the rotation's window), it hears its peer at once,
/// and once the peer holds the same pair of keys the volley resumes.
#[test]
fn a_restart_with_only_the_new_key_hears_nothing_and_the_accept_window_restores_the_pair() {
    let dir = tempfile::tempdir().unwrap();
    let (old, new) = (dir.path().join("old.key"), dir.path().join("new.key"));
    keygen(&old);
    keygen(&new);
    let file = cluster_file(dir.path(), "rotate.toml", "old.key");
    let mut a = endless_player(dir.path(), &file, "a");
    let mut b = endless_player(dir.path(), &file, "b");
    let (a_args, b_args) = (a.spec().args.clone(), b.spec().args.clone());
    stats_until(&a, "volleys under the old key", |s| s.turns >= 50);

    // b restarted with the new key alone: a's frames are refused by b, b's by a.
    restart_with(&mut b, &b_args, &[&new], &[]);
    stats_until(&b, "drops a's frames", |s| s.unknown_key_dropped >= 5);
    let a_turns = stats_until(&a, "drops b's frames", |s| s.unknown_key_dropped >= 3).turns;
    let quiet_since = Instant::now();
    while quiet_since.elapsed() < Duration::from_millis(1500) {
        std::thread::sleep(Duration::from_millis(50));
    }
    let (sa, sb) = (
        a.current_life().and_then(|l| l.stats()).unwrap(),
        b.current_life().and_then(|l| l.stats()).unwrap(),
    );
    assert_eq!(sb.frames_in, 0, "b took a frame of a: {sb:?}");
    assert_eq!(
        sa.turns, a_turns,
        "a ran a turn with its only peer cut off: {sa:?}"
    );
    assert!(
        sb.unknown_key_dropped > 5 && sa.unknown_key_dropped > 3,
        "{sa:?} {sb:?}"
    );

    // The window: b sends with the new key and accepts the old one: it hears a at once
    // (a still refuses b's frames: it does not hold the new key yet).
    restart_with(&mut b, &b_args, &[&new], &[&old]);
    let sb = stats_until(&b, "takes a's frames", |s| {
        s.frames_in > 0 && s.old_key_frames > 0
    });
    assert_eq!(sb.unknown_key_dropped, 0, "{sb:?}");
    // a too: the volley resumes.
    restart_with(&mut a, &a_args, &[&new], &[&old]);
    stats_until(&a, "volleys under the new key", |s| s.turns >= 50);
    for p in [&mut a, &mut b] {
        assert_eq!(p.poll().unwrap(), None, "{}", p.report(1, 20));
        assert_eq!(p.kill().unwrap(), End::KilledByUs);
    }
}
