//! The cross-store audit names the broken pairs: a store replaced by an older copy of itself
//! (which nothing local can tell when its lock file was restored with it) and a store
//! replaced by a new one; a consistent pair, running or not, is never named.

use std::path::Path;

use ken_store::audit::{audit, PairProblem};
use ken_store::{lock_path, wal_path, Batch, PeerRow, Reader, Store};

use crate::common::try_open;

fn counters(store: &mut Store, peer: &str, inc: u64, next_seq: u64, acked: u64, delivered: u64) {
    store
        .commit(&Batch {
            turns: 1,
            peers: vec![PeerRow {
                peer: peer.into(),
                incarnation: inc,
                next_seq,
                acked,
                delivered,
                forgotten: 0,
            }],
            ..Batch::default()
        })
        .unwrap();
}

fn readers(paths: &[&Path]) -> Vec<Reader> {
    paths.iter().map(|p| Reader::open(p).unwrap()).collect()
}

fn copy_all(from: &Path, to: &Path) {
    for (f, t) in [
        (from.to_path_buf(), to.to_path_buf()),
        (wal_path(from), wal_path(to)),
        (lock_path(from), lock_path(to)),
    ] {
        let _ = std::fs::remove_file(&t);
        if f.exists() {
            std::fs::copy(&f, &t).unwrap();
        }
    }
}

#[test]
fn a_store_replaced_by_an_older_copy_of_itself_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let (pa, pb) = (dir.path().join("a.ken"), dir.path().join("b.ken"));
    let (mut a, ra) = try_open(&pa, "a").unwrap();
    let (mut b, rb) = try_open(&pb, "b").unwrap();
    // a sent 10, b consumed 9 and acknowledged 8; b sent 5, a consumed 5, acknowledged 4.
    counters(&mut a, "b", rb.incarnation, 11, 8, 5);
    counters(&mut b, "a", ra.incarnation, 6, 4, 9);
    assert_eq!(audit(&readers(&[&pa, &pb])).unwrap(), vec![]);
    // An older copy of b: it had consumed 3 and sent 2. b then ran on.
    drop(b);
    let old = dir.path().join("b-old.ken");
    let (mut b, _) = try_open(&pb, "b").unwrap();
    counters(&mut b, "a", ra.incarnation, 3, 1, 3);
    drop(b);
    copy_all(&pb, &old);
    let (mut b, _) = try_open(&pb, "b").unwrap();
    counters(&mut b, "a", ra.incarnation, 6, 4, 9);
    drop(b);
    assert_eq!(audit(&readers(&[&pa, &pb])).unwrap(), vec![]);
    // The old copy, lock file and all, put in b's place: consistent alone, named here.
    copy_all(&old, &pb);
    let broken = audit(&readers(&[&pa, &pb])).unwrap();
    assert_eq!(broken.len(), 2, "{broken:?}");
    assert!(broken.iter().all(|p| p.suspect == "b"), "{broken:?}");
    assert!(broken.iter().any(|p| p.sender == "a"
        && p.problem
            == PairProblem::AckedBeyondDelivered {
                acked: 8,
                delivered: 3
            }));
    assert!(broken.iter().any(|p| p.sender == "b"
        && p.problem
            == PairProblem::DeliveredBeyondIssued {
                delivered: 5,
                issued: 2
            }));
    let text = broken[0].to_string();
    assert!(text.contains("b's store lost history"), "{text}");
    drop(a);
}

#[test]
fn a_store_replaced_by_a_new_one_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let (pa, pb) = (dir.path().join("a.ken"), dir.path().join("b.ken"));
    let (a, ra) = try_open(&pa, "a").unwrap();
    let (mut b, _) = try_open(&pb, "b").unwrap();
    counters(&mut b, "a", ra.incarnation, 1, 0, 0);
    drop((a, b));
    for f in [pa.clone(), wal_path(&pa), lock_path(&pa)] {
        let _ = std::fs::remove_file(f);
    }
    let (a, ra2) = try_open(&pa, "a").unwrap();
    drop(a);
    let broken = audit(&readers(&[&pa, &pb])).unwrap();
    assert_eq!(broken.len(), 1, "{broken:?}");
    assert_eq!(broken[0].suspect, "a");
    assert_eq!(
        broken[0].problem,
        PairProblem::IncarnationMismatch {
            known: ra.incarnation,
            actual: ra2.incarnation
        }
    );
}

#[test]
fn a_pair_at_any_point_of_its_run_is_never_named() {
    // Counters only grow, so no point of a run is a false alarm.
    let dir = tempfile::tempdir().unwrap();
    let (pa, pb) = (dir.path().join("a.ken"), dir.path().join("b.ken"));
    let (mut a, ra) = try_open(&pa, "a").unwrap();
    let (mut b, rb) = try_open(&pb, "b").unwrap();
    counters(&mut a, "b", rb.incarnation, 1, 0, 0);
    counters(&mut b, "a", ra.incarnation, 1, 0, 0);
    let rs = readers(&[&pa, &pb]);
    for i in 1..200u64 {
        // a sends i; b consumes it and acknowledges; a learns the ack.
        counters(&mut a, "b", rb.incarnation, i + 1, i - 1, 0);
        counters(&mut b, "a", ra.incarnation, 1, 0, i);
        assert_eq!(audit(&rs).unwrap(), vec![], "round {i}");
        counters(&mut a, "b", rb.incarnation, i + 1, i, 0);
    }
}
