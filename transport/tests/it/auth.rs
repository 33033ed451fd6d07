//! Authenticated endpoints: frames tagged with the cluster key cross; frames from another
//! cluster, untagged frames and altered frames are dropped and counted by reason; a rotation
//! accepts the old key until it is removed.

use std::sync::Arc;

use ken_transport::{
    Auth, ClusterKey, Endpoint, EndpointOptions, EndpointStats, FaultConfig, FaultsFile, Frame,
    Keyring,
};
use tokio::sync::mpsc;

use crate::support::{data, eventually, localhost, recv};

fn keyed(current: &ClusterKey, old: &[ClusterKey], encrypt: bool) -> Endpoint {
    let options = EndpointOptions {
        faults: FaultConfig::default(),
        faults_file: FaultsFile::Disabled,
        keys: Some(Arc::new(
            Keyring::new(current, old, encrypt).expect("keyring"),
        )),
    };
    Endpoint::bind_with_options(localhost(), options).expect("bind")
}

fn sealed(seq: u64) -> Frame {
    Frame {
        auth: Auth::Cluster,
        ..data(seq)
    }
}

/// Receives on `endpoint` in the background: every frame it surfaces goes to the channel.
fn drain(endpoint: Arc<Endpoint>) -> mpsc::UnboundedReceiver<Frame> {
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((frame, _)) = endpoint.recv().await {
            if tx.send(frame).is_err() {
                return;
            }
        }
    });
    rx
}

async fn dropped(endpoint: &Endpoint, what: &str, count: impl Fn(&EndpointStats) -> u64, n: u64) {
    eventually(what, || count(&endpoint.stats()) >= n).await;
    assert_eq!(count(&endpoint.stats()), n, "{what}");
}

#[tokio::test]
async fn same_key_crosses_tagged_and_encrypted() {
    let key = ClusterKey::generate();
    for encrypt in [false, true] {
        let a = keyed(&key, &[], encrypt);
        let b = keyed(&key, &[], false);
        a.send(b.local_addr(), &sealed(1)).await.expect("send");
        let (got, _) = recv(&b).await;
        assert_eq!(got, sealed(1));
        // The datagram grew by exactly the tag (and the nonce, encrypted).
        let trailer = if encrypt {
            ken_transport::frame::AUTH_TRAILER_BYTES
        } else {
            ken_transport::frame::TAG_BYTES
        };
        assert_eq!(
            a.stats().bytes_sent,
            (data(1).encoded_len() + trailer) as u64
        );
    }
}

#[tokio::test]
async fn different_keys_never_exchange_a_frame() {
    let a = keyed(&ClusterKey::generate(), &[], false);
    let b = Arc::new(keyed(&ClusterKey::generate(), &[], false));
    let mut got = drain(Arc::clone(&b));
    for seq in 1..=20 {
        a.send(b.local_addr(), &sealed(seq)).await.expect("send");
    }
    dropped(&b, "unknown key", |s| s.unknown_key_dropped, 20).await;
    assert!(got.try_recv().is_err(), "nothing surfaced");
    assert_eq!(b.stats().frames_received, 0);
}

#[tokio::test]
async fn untagged_peer_frames_are_refused_and_tagged_ones_need_a_key() {
    let key = ClusterKey::generate();
    let keyless = Arc::new(Endpoint::bind(localhost()).expect("bind"));
    let b = Arc::new(keyed(&key, &[], false));
    let mut got_b = drain(Arc::clone(&b));
    let mut got_keyless = drain(Arc::clone(&keyless));
    // Negative control: without keys, an untagged frame is accepted.
    keyless
        .send(keyless.local_addr(), &data(1))
        .await
        .expect("send");
    assert_eq!(got_keyless.recv().await, Some(data(1)));
    // With a key, it is not.
    keyless.send(b.local_addr(), &data(2)).await.expect("send");
    dropped(&b, "untagged", |s| s.untagged_dropped, 1).await;
    // And a keyless endpoint cannot seal, nor open sealed frames.
    assert!(keyless.send(b.local_addr(), &sealed(3)).await.is_err());
    b.send(keyless.local_addr(), &sealed(4))
        .await
        .expect("send");
    dropped(&keyless, "unknown key", |s| s.unknown_key_dropped, 1).await;
    assert!(got_b.try_recv().is_err());
    assert!(got_keyless.try_recv().is_err());
}

#[tokio::test]
async fn altered_frames_are_counted_as_bad_tags() {
    let key = ClusterKey::generate();
    let b = Arc::new(keyed(&key, &[], false));
    let mut got = drain(Arc::clone(&b));
    let raw = tokio::net::UdpSocket::bind(localhost())
        .await
        .expect("bind");
    let good = sealed(1).seal(&key.frame_key(), false).expect("seal");
    let mut altered = good.clone();
    // The payload's last byte, with the CRC fixed as a forger would.
    let at = good.len() - 4 - ken_transport::frame::TAG_BYTES - 1;
    altered[at] ^= 1;
    let n = altered.len() - 4;
    let crc = crc32fast::hash(&altered[..n]);
    altered[n..].copy_from_slice(&crc.to_le_bytes());
    raw.send_to(&altered, b.local_addr()).await.expect("send");
    dropped(&b, "bad tag", |s| s.bad_tag_dropped, 1).await;
    raw.send_to(&good, b.local_addr()).await.expect("send");
    assert_eq!(got.recv().await, Some(sealed(1)));
}

#[tokio::test]
async fn rotation_accepts_the_old_key_until_it_is_removed() {
    let old = ClusterKey::generate();
    let new = ClusterKey::generate();
    let still_old = keyed(&old, &[], false);
    let rotating = Arc::new(keyed(&new, std::slice::from_ref(&old), false));
    let mut got = drain(Arc::clone(&rotating));
    still_old
        .send(rotating.local_addr(), &sealed(1))
        .await
        .expect("send");
    assert_eq!(got.recv().await, Some(sealed(1)));
    assert_eq!(rotating.stats().old_key_frames, 1);
    // The rotating process sends with the new key: a process not yet rotated drops it...
    let old_only = Arc::new(keyed(&old, &[], false));
    let mut got_old = drain(Arc::clone(&old_only));
    rotating
        .send(old_only.local_addr(), &sealed(2))
        .await
        .expect("send");
    dropped(&old_only, "new key unknown", |s| s.unknown_key_dropped, 1).await;
    assert!(got_old.try_recv().is_err());
    // ...and once the old key is dropped everywhere, frames under it are refused.
    let done = Arc::new(keyed(&new, &[], false));
    let mut got_done = drain(Arc::clone(&done));
    still_old
        .send(done.local_addr(), &sealed(3))
        .await
        .expect("send");
    dropped(&done, "old key retired", |s| s.unknown_key_dropped, 1).await;
    assert!(got_done.try_recv().is_err());
}
