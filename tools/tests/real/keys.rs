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
