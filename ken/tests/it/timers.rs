//! Timers with a payload (issue 15, API edges): the bytes given to `Turn::set_timer_with`
//! are stored with the timer, survive a crash, and come back in `Input::Timer`; setting a
//! timer again replaces its payload; an oversized payload is refused with nothing recorded.

use std::time::Duration;

use ken::engine::EngineConfig;
use ken::limits::TIMER_PAYLOAD_BYTES_MAX;
use ken::store::Reader;
use ken::testing::Cluster;
use ken::{Handler, Input, ProcessId, SendError, Time, Turn};
use serde::{Deserialize, Serialize};

const T0: u64 = 1_700_000_000_000;

/// At start sets `lease` (payload: a lease number), `plain` (no payload), and `reset` (set
/// with a payload, then again without); tries an oversized payload on `big`. Records every
/// timer it hears, with its payload.
struct Timers;

#[derive(Default, Serialize, Deserialize)]
struct Heard {
    fired: Vec<(String, Vec<u8>)>,
    refused: Option<(usize, usize)>,
}

impl Handler for Timers {
    const APP: &'static str = "timers";
    type State = Heard;
    type Message = ();
    type Request = ();
    type Reply = ();
    fn on_turn(&self, s: &mut Heard, turn: &mut Turn<'_, ()>, input: Input<()>) {
        match input {
            Input::Start => {
                let after = Duration::from_secs(10);
                turn.set_timer_with("lease", after, &123u64.to_be_bytes())
                    .unwrap();
                turn.set_timer("plain", after);
                turn.set_timer_with("reset", after, b"old").unwrap();
                turn.set_timer("reset", after);
                let big = vec![7u8; TIMER_PAYLOAD_BYTES_MAX + 1];
                match turn.set_timer_with("big", after, &big) {
                    Err(SendError::TooLarge { bytes, max_bytes }) => {
                        s.refused = Some((bytes, max_bytes))
                    }
                    other => panic!("an oversized payload was not refused: {other:?}"),
                }
                // The largest allowed payload is accepted.
                let max = vec![9u8; TIMER_PAYLOAD_BYTES_MAX];
                turn.set_timer_with("max", after, &max).unwrap();
            }
            Input::Timer { name, payload } => s.fired.push((name, payload)),
            _ => {}
        }
    }
}

#[test]
fn a_timer_payload_survives_a_crash_and_comes_back_when_it_fires() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = Cluster::new(dir, Time::from_millis(T0), 5);
    let config = EngineConfig {
        id: ProcessId::new("solo").unwrap(),
        peers: Vec::new(),
        tuning: ken::Tuning::default(),
        seed: 1,
    };
    c.add(config, || Timers);
    c.start(0);
    c.run_for(Duration::from_secs(1));
    assert!(c.state(0).fired.is_empty(), "fired early");
    assert_eq!(
        c.state(0).refused,
        Some((TIMER_PAYLOAD_BYTES_MAX + 1, TIMER_PAYLOAD_BYTES_MAX))
    );
    // On disk: the payloads, nothing for the refused one.
    let reader = Reader::open(c.node(0).path()).unwrap();
    let mut stored: Vec<(String, Vec<u8>)> = reader
        .timers()
        .unwrap()
        .into_iter()
        .map(|t| (t.name, t.payload))
        .collect();
    stored.sort();
    let expected = vec![
        ("lease".to_string(), 123u64.to_be_bytes().to_vec()),
        ("max".to_string(), vec![9u8; TIMER_PAYLOAD_BYTES_MAX]),
        ("plain".to_string(), Vec::new()),
        ("reset".to_string(), Vec::new()),
    ];
    assert_eq!(stored, expected);
    drop(reader);

    // A crash before they are due: the restarted engine reads them back from the store.
    c.crash(0);
    c.advance(Duration::from_secs(3));
    c.start(0);
    c.run_for(Duration::from_secs(10));
    let mut fired = c.state(0).fired.clone();
    fired.sort();
    assert_eq!(fired, expected, "fired after the restart");
    let reader = Reader::open(c.node(0).path()).unwrap();
    assert_eq!(
        reader.timers().unwrap().len(),
        0,
        "fired timers are deleted"
    );
}
