//! Every fault through real endpoints on 127.0.0.1, determinism, `KEN_FAULTS` and
//! `KEN_FAULTS_FILE`.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use ken_transport::endpoint::MAX_HELD_DATAGRAMS;
use ken_transport::faults::FAULTS_ENV;
use ken_transport::{Endpoint, EndpointOptions, FaultConfig, FaultParseError, FaultsFile, Seq};

use crate::support::{
    assert_marker_is_next, data, endpoint, eventually, localhost, recv, seed, MARKER_SEQ,
};

fn faults(spec: &str) -> FaultConfig {
    spec.parse().expect("valid fault spec")
}

#[tokio::test]
async fn drop_all_delivers_nothing_and_counts() {
    const FRAMES: u64 = 100;
    let a = endpoint(faults("seed=1,drop=1"));
    let b = endpoint(FaultConfig::default());
    for seq in 1..=FRAMES {
        a.send(b.local_addr(), &data(seq))
            .await
            .expect("a dropped frame is not an error");
    }
    let stats = a.stats();
    assert_eq!((stats.faults_dropped, stats.frames_sent), (FRAMES, 0));
    assert_marker_is_next(&a, &b).await;
}

#[tokio::test]
async fn duplicate_all_delivers_each_frame_twice() {
    const FRAMES: u64 = 50;
    let a = endpoint(faults("seed=2,dup=1"));
    let b = endpoint(FaultConfig::default());
    for seq in 1..=FRAMES {
        a.send(b.local_addr(), &data(seq)).await.expect("send");
    }
    let mut copies: BTreeMap<u64, u32> = BTreeMap::new();
    for _ in 0..2 * FRAMES {
        let (frame, _) = recv(&b).await;
        assert_eq!(frame, data(frame.seq.0), "a duplicate is an exact copy");
        *copies.entry(frame.seq.0).or_default() += 1;
    }
    assert_eq!(copies, (1..=FRAMES).map(|seq| (seq, 2)).collect());
    let stats = a.stats();
    assert_eq!(
        (stats.faults_duplicated, stats.frames_sent),
        (FRAMES, 2 * FRAMES)
    );
    assert_marker_is_next(&a, &b).await;
}

#[tokio::test]
async fn reorder_makes_later_frames_overtake() {
    const FRAMES: u64 = 40;
    // Fixed seed: the decisions are the same every run; with these settings about half the
    // frames are held 1 to 300 ms while the others leave at once.
    let a = endpoint(faults("seed=42,reorder=0.5,reorder_ms=300"));
    let b = endpoint(FaultConfig::default());
    for seq in 1..=FRAMES {
        a.send(b.local_addr(), &data(seq)).await.expect("send");
    }
    let mut arrival = Vec::new();
    for _ in 0..FRAMES {
        arrival.push(recv(&b).await.0.seq.0);
    }
    let mut sorted = arrival.clone();
    sorted.sort_unstable();
    assert_eq!(
        sorted,
        (1..=FRAMES).collect::<Vec<_>>(),
        "each frame arrives exactly once"
    );
    assert_ne!(arrival, sorted, "some frame was overtaken");
    let reordered = a.stats().faults_reordered;
    assert!(reordered > 0 && reordered < FRAMES, "reordered {reordered}");
    eventually("held queue drains", || a.held_datagrams() == 0).await;
    assert_marker_is_next(&a, &b).await;
}

#[tokio::test]
async fn delay_holds_frames_back_at_least_the_minimum() {
    const FRAMES: u64 = 5;
    const MIN_DELAY: Duration = Duration::from_millis(30);
    let a = endpoint(faults("seed=3,delay=1,delay_ms=30-60"));
    let b = endpoint(FaultConfig::default());
    let started = tokio::time::Instant::now();
    for seq in 1..=FRAMES {
        a.send(b.local_addr(), &data(seq)).await.expect("send");
    }
    let sent = a.stats().frames_sent;
    if started.elapsed() < MIN_DELAY {
        assert_eq!(sent, 0, "nothing leaves before its delay");
    }
    let mut seqs = Vec::new();
    for _ in 0..FRAMES {
        seqs.push(recv(&b).await.0.seq.0);
        assert!(
            started.elapsed() >= MIN_DELAY,
            "arrived after {:?}",
            started.elapsed()
        );
    }
    seqs.sort_unstable();
    assert_eq!(seqs, (1..=FRAMES).collect::<Vec<_>>());
    assert_eq!(a.stats().faults_delayed, FRAMES);
    eventually("held queue drains", || a.held_datagrams() == 0).await;
    assert_marker_is_next(&a, &b).await;
}

#[tokio::test]
async fn corrupt_all_makes_the_receiver_count_junk() {
    const FRAMES: u64 = 50;
    let a = endpoint(faults("seed=4,corrupt=1"));
    let b = endpoint(FaultConfig::default());
    for seq in 1..=FRAMES {
        a.send(b.local_addr(), &data(seq)).await.expect("send");
    }
    assert_eq!(a.stats().faults_corrupted, FRAMES);
    assert_eq!(
        a.stats().frames_sent,
        FRAMES,
        "corrupted datagrams still leave"
    );
    assert_marker_is_next(&a, &b).await;
    let stats = b.stats();
    assert_eq!((stats.junk_dropped, stats.frames_received), (FRAMES, 1));
}

#[tokio::test]
async fn truncate_all_makes_the_receiver_count_junk() {
    const FRAMES: u64 = 50;
    let a = endpoint(faults("seed=5,truncate=1"));
    let b = endpoint(FaultConfig::default());
    for seq in 1..=FRAMES {
        a.send(b.local_addr(), &data(seq)).await.expect("send");
    }
    assert_eq!(a.stats().faults_truncated, FRAMES);
    assert_marker_is_next(&a, &b).await;
    let stats = b.stats();
    assert_eq!((stats.junk_dropped, stats.frames_received), (FRAMES, 1));
}

#[tokio::test]
async fn partition_cuts_both_directions_until_healed() {
    let a = endpoint(FaultConfig::default());
    let b = endpoint(FaultConfig::default());
    let c = endpoint(FaultConfig::default());
    a.set_faults(
        FaultConfig {
            seed: 6,
            ..FaultConfig::default()
        }
        .with_partitioned(b.local_addr()),
    );

    // Outbound: a's frame to b never leaves.
    a.send(b.local_addr(), &data(1))
        .await
        .expect("send into the partition");
    assert_eq!(
        (a.stats().faults_partitioned, a.stats().frames_sent),
        (1, 0)
    );

    // Inbound: b's frame reaches a's socket and is dropped there, while a is receiving.
    b.send(a.local_addr(), &data(2)).await.expect("send");
    let mut receiving = std::pin::pin!(recv(&a));
    tokio::select! {
        biased;
        (frame, from) = &mut receiving => panic!("received {frame:?} from {from} across the partition"),
        () = eventually("inbound partition drop", || a.stats().faults_partitioned == 2) => {}
    }
    // The same receive then gets the next frame from an address outside the partition.
    c.send(a.local_addr(), &data(3)).await.expect("send");
    let (frame, from) = receiving.await;
    assert_eq!((frame.seq, from), (Seq(3), c.local_addr()));
    assert_eq!(a.stats().faults_partitioned, 2);

    // Heal with an empty partition: traffic flows both ways, and the frame sent into the
    // partition is gone for good.
    a.set_faults(FaultConfig {
        seed: 6,
        ..FaultConfig::default()
    });
    a.send(b.local_addr(), &data(4)).await.expect("send");
    let (frame, _) = recv(&b).await;
    assert_eq!(frame.seq, Seq(4));
    b.send(a.local_addr(), &data(5)).await.expect("send");
    let (frame, from) = recv(&a).await;
    assert_eq!((frame.seq, from), (Seq(5), b.local_addr()));
    assert_eq!(a.stats().faults_partitioned, 2);
}

#[tokio::test]
async fn same_seed_same_faults_through_endpoints() {
    // The fate of each frame depends only on the seed and the order of sends, not on timing.
    let run = |seed: u64| async move {
        let spec = format!("seed={seed},drop=0.3,dup=0.2,corrupt=0.1");
        let a = endpoint(faults(&spec));
        let b = endpoint(FaultConfig::default());
        const FRAMES: u64 = 300;
        for seq in 1..=FRAMES {
            a.send(b.local_addr(), &data(seq)).await.expect("send");
        }
        // The marker tells the receiver that every earlier datagram has been seen.
        a.set_faults(FaultConfig::default());
        a.send(b.local_addr(), &data(MARKER_SEQ))
            .await
            .expect("send marker");
        let mut copies: BTreeMap<u64, u32> = BTreeMap::new();
        loop {
            let (frame, _) = recv(&b).await;
            if frame.seq == Seq(MARKER_SEQ) {
                break;
            }
            *copies.entry(frame.seq.0).or_default() += 1;
        }
        (copies, a.stats(), b.stats().junk_dropped)
    };
    let seed = seed("same_seed_same_faults_through_endpoints");
    let (first, first_stats, first_junk) = run(seed).await;
    let (second, second_stats, second_junk) = run(seed).await;
    assert_eq!(
        first, second,
        "same seed, same frames delivered the same number of times"
    );
    assert_eq!(first_junk, second_junk);
    assert_eq!(first_stats.faults_dropped, second_stats.faults_dropped);
    assert_eq!(
        first_stats.faults_duplicated,
        second_stats.faults_duplicated
    );
    assert_eq!(first_stats.faults_corrupted, second_stats.faults_corrupted);
    assert!(first_stats.faults_dropped > 0 && first_stats.faults_duplicated > 0);
    let (other, _, _) = run(seed.wrapping_add(1)).await;
    assert_ne!(first, other, "another seed, other decisions");
}

#[tokio::test]
async fn held_queue_is_bounded() {
    let a = endpoint(faults("seed=7,delay=1,delay_ms=60000-60000"));
    let b = endpoint(FaultConfig::default());
    let extra = 10u64;
    for seq in 1..=MAX_HELD_DATAGRAMS as u64 + extra {
        a.send(b.local_addr(), &data(seq)).await.expect("send");
    }
    assert_eq!(a.held_datagrams(), MAX_HELD_DATAGRAMS);
    let stats = a.stats();
    assert_eq!(stats.held_overflow_dropped, extra);
    assert_eq!(stats.faults_delayed, MAX_HELD_DATAGRAMS as u64 + extra);
    assert_eq!(stats.frames_sent, 0);
}

#[tokio::test]
async fn set_faults_and_faults_agree() {
    let a = endpoint(FaultConfig::default());
    assert_eq!(a.faults(), FaultConfig::default());
    let config = faults("seed=9,drop=0.25,delay=0.5,delay_ms=2-3,partition=127.0.0.1:9");
    a.set_faults(config.clone());
    assert_eq!(a.faults(), config);
}

#[test]
fn ken_faults_env_parses_and_round_trips() {
    // The only test that touches KEN_FAULTS.
    let check = |value: Option<&str>| {
        match value {
            Some(value) => std::env::set_var(FAULTS_ENV, value),
            None => std::env::remove_var(FAULTS_ENV),
        }
        FaultConfig::from_env()
    };
    assert_eq!(check(None), Ok(None));
    assert_eq!(check(Some("")), Ok(None));
    let spec = "seed=11,drop=0.5,reorder=0.125,reorder_ms=7,partition=[::1]:5+127.0.0.1:6";
    let config = check(Some(spec)).expect("parses").expect("set");
    assert_eq!(config.seed, 11);
    assert_eq!(config.reorder_max_ms, 7);
    assert_eq!(config.partition.len(), 2);
    assert_eq!(
        config.to_string().parse::<FaultConfig>(),
        Ok(config.clone())
    );
    assert_eq!(check(Some(&config.to_string())), Ok(Some(config)));
    let error = check(Some("drop=0.5,reorder=yes")).expect_err("bad value");
    assert!(
        matches!(error, FaultParseError::BadValue { key: "reorder", .. }),
        "{error:?}"
    );
    assert!(error.to_string().contains("reorder") && error.to_string().contains("probability"));
    std::env::remove_var(FAULTS_ENV);
}

/// Replaces the faults file atomically (write then rename), as FAULTS.md recommends.
fn write_faults_file(path: &Path, content: &str) {
    let temp = path.with_extension("tmp");
    std::fs::write(&temp, content).expect("write faults file");
    std::fs::rename(&temp, path).expect("rename faults file");
}

#[tokio::test]
async fn faults_file_reconfigures_a_running_endpoint() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("faults");
    write_faults_file(&path, "seed=5,drop=1\n");
    let options = EndpointOptions {
        faults: FaultConfig::default(),
        faults_file: FaultsFile::Path(path.clone()),
        keys: None,
    };
    let a = Endpoint::bind_with_options(localhost(), options).expect("bind");
    let b = endpoint(FaultConfig::default());
    // The file present at bind time applies before bind returns.
    assert_eq!(a.faults(), faults("seed=5,drop=1"));
    assert_eq!(a.stats().fault_reloads, 1);
    a.send(b.local_addr(), &data(1)).await.expect("send");
    assert_eq!(a.stats().faults_dropped, 1);

    // A change is picked up by the watcher.
    write_faults_file(&path, "seed=6,dup=1");
    eventually("the new faults apply", || {
        a.faults() == faults("seed=6,dup=1")
    })
    .await;
    a.send(b.local_addr(), &data(2)).await.expect("send");
    assert_eq!(recv(&b).await.0.seq, Seq(2));
    assert_eq!(recv(&b).await.0.seq, Seq(2));

    // A bad file is counted and ignored: the previous faults stay.
    write_faults_file(&path, "seed=6,dup=2");
    eventually("the bad file is rejected", || {
        a.stats().fault_reload_errors == 1
    })
    .await;
    assert_eq!(a.faults(), faults("seed=6,dup=1"));

    // An empty file turns faults off; a rewrite in place (no rename) is seen too.
    std::fs::write(&path, "").expect("truncate faults file");
    eventually("faults off", || !a.faults().is_active()).await;
    assert_eq!(a.stats().fault_reloads, 3);
    a.send(b.local_addr(), &data(3)).await.expect("send");
    assert_eq!(recv(&b).await.0.seq, Seq(3));
    assert_marker_is_next(&a, &b).await;
}

/// Set in the child process of [`faults_file_from_env_is_honoured_by_bind`].
const CHILD_ENV: &str = "KEN_TRANSPORT_TEST_CHILD";

#[test]
fn faults_file_from_env_is_honoured_by_bind() {
    // `KEN_FAULTS_FILE` would reach every endpoint of this test binary, so the check runs in
    // a child process: this same test, re-run with the variable set.
    if std::env::var_os(CHILD_ENV).is_some() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(async {
            let a = Endpoint::bind(localhost()).expect("bind");
            assert_eq!(
                a.faults(),
                faults("seed=8,drop=1"),
                "bind read KEN_FAULTS_FILE"
            );
            let b = Endpoint::bind_with_faults(localhost(), faults("seed=9,dup=1")).expect("bind");
            assert_eq!(
                b.faults(),
                faults("seed=8,drop=1"),
                "the file wins over the initial faults"
            );
        });
        return;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("faults");
    write_faults_file(&path, "seed=8,drop=1");
    let output = std::process::Command::new(std::env::current_exe().expect("test binary"))
        .args([
            "--exact",
            "faults::faults_file_from_env_is_honoured_by_bind",
            "--nocapture",
        ])
        .env(CHILD_ENV, "1")
        .env(ken_transport::faults::FAULTS_FILE_ENV, &path)
        .output()
        .expect("run child");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "child failed:\n{stdout}\n{stderr}");
    assert!(
        stdout.contains("1 passed"),
        "the child ran the test:\n{stdout}"
    );
}
