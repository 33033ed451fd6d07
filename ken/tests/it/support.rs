//! Builders the integration tests share.

use ken::engine::EngineConfig;
use ken::testing::Cluster;
use ken::{Handler, ProcessId, Time, Tuning};

/// A cluster of `n` nodes called `a`, `b`, ..., each with every other as a peer, default
/// tuning, engine seed = its index, stores on tmpfs when there is one (these runs commit a
/// lot and model crashes themselves), the clock at `start_ms`; `seed` seeds the network's
/// random faults. `make(ids)` builds a node's handler, given every node's id. The nodes are
/// added, not started.
pub fn lettered<H: Handler>(
    n: usize,
    start_ms: u64,
    seed: u64,
    make: impl Fn(&[ProcessId]) -> H + Clone + 'static,
) -> Cluster<H> {
    let dir = tempfile::tempdir_in("/dev/shm").unwrap_or_else(|_| tempfile::tempdir().unwrap());
    let mut c = Cluster::new(dir, Time::from_millis(start_ms), seed);
    let ids: Vec<ProcessId> = (0..n)
        .map(|i| ProcessId::new(((b'a' + i as u8) as char).to_string()).unwrap())
        .collect();
    for (i, id) in ids.iter().enumerate() {
        let config = EngineConfig {
            id: id.clone(),
            peers: ids.iter().filter(|p| *p != id).cloned().collect(),
            tuning: Tuning::default(),
            seed: i as u64,
        };
        let (all, make) = (ids.clone(), make.clone());
        c.add(config, move || make(&all));
    }
    c
}
