//! The harnesses move processes to fresh ports when a life cannot bind its own: this checks
//! that such a life is recognised ([`End::BindError`]), and thereby that the runtime still
//! reports it as `cannot bind UDP` with a failing exit. (The harness's own behaviour, death
//! attribution, restarts, stdout per life and deadline waits, is tested in
//! `ken_tools::harness`.)

use std::net::UdpSocket;
use std::time::{Duration, Instant};

use ken_tools::harness::{self, End, Process, Spec};

#[test]
fn a_taken_port_is_recognised_as_a_bind_failure() {
    let dir = tempfile::tempdir().unwrap();
    let taken = UdpSocket::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let [peer_port] = harness::free_ports(1).unwrap()[..] else {
        unreachable!()
    };
    let args: Vec<std::ffi::OsString> = vec![
        "app".into(),
        "pingpong".into(),
        "--id".into(),
        "a".into(),
        "--listen".into(),
        harness::loopback(port).to_string().into(),
        "--store".into(),
        dir.path().join("a.db").into(),
        "--peer".into(),
        format!("b={}", harness::loopback(peer_port)).into(),
        "--count".into(),
        "10".into(),
    ];
    let mut p = Process::start(Spec::new("a", crate::ken(), args, dir.path())).unwrap();
    let end = harness::wait_until(
        Instant::now() + Duration::from_secs(10),
        Duration::from_millis(5),
        || p.poll().expect("poll"),
    )
    .expect("the process ends within 10 s");
    assert_eq!(end, End::BindError, "{}", p.report(1, 20));
    drop(taken);
}
