//! The decoder is total: a million random and mutated datagrams, and proptest round trips.

use std::collections::BTreeMap;
use std::time::Instant;

use ken_transport::frame::{
    AUTH_TRAILER_BYTES, MAX_FRAME_BYTES, MAX_ID_BYTES, MIN_FRAME_BYTES, WIRE_VERSION,
};
use ken_transport::{DecodeError, Frame, FrameKind, Incarnation, ProcessId, Seq};
use proptest::prelude::*;
use rand::{Rng, RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::support::seed;

/// Byte strings fed to the decoder by [`decoder_survives_a_million_datagrams`].
const FUZZ_CASES: usize = 1_000_000;

/// Bytes allowed in a process id.
const ID_ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._:-";

/// Large valid frames kept for mutation near [`MAX_FRAME_BYTES`].
const BIG_FRAMES: usize = 8;

fn random_id(rng: &mut ChaCha8Rng) -> ProcessId {
    let len = if rng.gen_bool(0.8) {
        rng.gen_range(1..=12)
    } else {
        rng.gen_range(1..=MAX_ID_BYTES)
    };
    let text: String = (0..len)
        .map(|_| char::from(ID_ALPHABET[rng.gen_range(0..ID_ALPHABET.len())]))
        .collect();
    ProcessId::new(text).expect("the alphabet only has id bytes")
}

/// Small numbers are common on the wire; sometimes use the whole range.
fn random_u64(rng: &mut ChaCha8Rng) -> u64 {
    match rng.gen_range(0..4) {
        0 => 0,
        1 => rng.gen_range(0..1000),
        2 => u64::MAX - rng.gen_range(0..3),
        _ => rng.gen(),
    }
}

fn random_frame(rng: &mut ChaCha8Rng, payload_len: usize) -> Frame {
    let mut payload = vec![0; payload_len];
    rng.fill_bytes(&mut payload);
    Frame {
        kind: FrameKind::ALL[rng.gen_range(0..FrameKind::ALL.len())],
        auth: ken_transport::Auth::None,
        from: random_id(rng),
        from_incarnation: Incarnation(random_u64(rng)),
        to: random_id(rng),
        to_incarnation: Incarnation(random_u64(rng)),
        seq: Seq(random_u64(rng)),
        ack: Seq(random_u64(rng)),
        acked: Seq(random_u64(rng)),
        payload,
    }
}

fn small_payload_len(rng: &mut ChaCha8Rng) -> usize {
    if rng.gen_bool(0.7) {
        rng.gen_range(0..64)
    } else {
        rng.gen_range(0..1500)
    }
}

/// Encodes a frame, checking the encode→decode round trip.
fn encode_checked(frame: &Frame) -> Vec<u8> {
    let bytes = frame.encode().expect("generated frames fit");
    assert_eq!(bytes.len(), frame.encoded_len());
    assert_eq!(
        Frame::decode(&bytes).as_ref(),
        Ok(frame),
        "encode→decode round trip"
    );
    bytes
}

/// Recomputes the CRC trailer so that the decoder gets past the checksum to the structure.
fn fix_crc(bytes: &mut [u8]) {
    if bytes.len() >= 4 {
        let body = bytes.len() - 4;
        let crc = crc32fast::hash(&bytes[..body]);
        bytes[body..].copy_from_slice(&crc.to_le_bytes());
    }
}

/// Where the length fields of `frame`'s encoding are.
struct Offsets {
    from_len: usize,
    to_len: usize,
    payload_len: usize,
}

fn offsets(frame: &Frame) -> Offsets {
    let from_len = 9;
    let to_len = from_len + 1 + frame.from.len_bytes() + 8;
    let payload_len = to_len + 1 + frame.to.len_bytes() + 8 + 8 + 8;
    Offsets {
        from_len,
        to_len,
        payload_len,
    }
}

fn random_bytes(rng: &mut ChaCha8Rng, len: usize) -> Vec<u8> {
    let mut bytes = vec![0; len];
    rng.fill_bytes(&mut bytes);
    bytes
}

/// Applies one random mutation to an encoding.
fn mutate(rng: &mut ChaCha8Rng, bytes: &mut Vec<u8>, at: &Offsets) {
    let len = bytes.len();
    match rng.gen_range(0..10) {
        0 if len > 0 => {
            let bit = rng.gen_range(0..len * 8);
            bytes[bit / 8] ^= 1 << (bit % 8);
        }
        1 if len > 0 => {
            let index = rng.gen_range(0..len);
            bytes[index] = rng.gen();
        }
        2 => bytes.truncate(rng.gen_range(0..=len)),
        3 => {
            let extra = if rng.gen_bool(0.9) {
                rng.gen_range(1..64)
            } else {
                rng.gen_range(1..70_000)
            };
            bytes.extend(random_bytes(rng, extra));
        }
        4 if at.payload_len + 4 <= len => {
            let old = u32::from_le_bytes(
                bytes[at.payload_len..at.payload_len + 4]
                    .try_into()
                    .expect("4 bytes"),
            );
            let new = match rng.gen_range(0..3) {
                0 => old.wrapping_add(rng.gen_range(1..4)),
                1 => old.wrapping_sub(rng.gen_range(1..4)),
                _ => rng.gen(),
            };
            bytes[at.payload_len..at.payload_len + 4].copy_from_slice(&new.to_le_bytes());
        }
        5 | 6 => {
            let offset = if rng.gen_bool(0.5) {
                at.from_len
            } else {
                at.to_len
            };
            if offset < len {
                bytes[offset] = match rng.gen_range(0..4) {
                    0 => bytes[offset].wrapping_add(1),
                    1 => bytes[offset].wrapping_sub(1),
                    2 => [0, MAX_ID_BYTES as u8, MAX_ID_BYTES as u8 + 1, 255][rng.gen_range(0..4)],
                    _ => rng.gen(),
                };
            }
        }
        7 if len > 0 => {
            let start = rng.gen_range(0..len);
            let end = rng.gen_range(start..=len.min(start + 16));
            bytes.drain(start..end);
        }
        8 => {
            let at = rng.gen_range(0..=len);
            let count = rng.gen_range(1..16);
            let insert = random_bytes(rng, count);
            bytes.splice(at..at, insert);
        }
        _ if len > 3 => {
            // The fixed header: magic, version, kind.
            let index = rng.gen_range(0..4);
            bytes[index] = if rng.gen_bool(0.5) {
                rng.gen_range(0..10)
            } else {
                rng.gen()
            };
        }
        _ => {}
    }
}

fn variant(error: &DecodeError) -> &'static str {
    match error {
        DecodeError::TooShort { .. } => "TooShort",
        DecodeError::TooLong { .. } => "TooLong",
        DecodeError::BadMagic => "BadMagic",
        DecodeError::BadVersion(_) => "BadVersion",
        DecodeError::BadKind(_) => "BadKind",
        DecodeError::BadChecksum => "BadChecksum",
        DecodeError::BadId(_) => "BadId",
        DecodeError::BadLength => "BadLength",
        // A mutated protection byte or key id (the CRC fixed by the mutation): a keyless
        // decoder refuses any tagged frame.
        DecodeError::BadProtection(_) => "BadProtection",
        DecodeError::UnknownKey(_) => "UnknownKey",
        _ => "other",
    }
}

/// Generates one fuzz input.
fn generate(rng: &mut ChaCha8Rng, big_frames: &[(Frame, Vec<u8>)]) -> Vec<u8> {
    let roll = rng.gen_range(0..1000);
    if roll < 100 {
        // Pure noise, mostly short.
        let len = rng.gen_range(0..2000);
        random_bytes(rng, len)
    } else if roll < 200 {
        // Noise behind a valid magic and version, with a valid CRC: reaches the structure.
        let len = rng.gen_range(MIN_FRAME_BYTES - 8..600);
        let mut bytes = random_bytes(rng, len);
        if len >= 4 {
            bytes[..3].copy_from_slice(&[b'K', b'N', WIRE_VERSION]);
            bytes[3] = rng.gen_range(0..9);
        }
        if len > 10 {
            // Untagged, key id 0, a plausible `from_len`.
            bytes[4..9].fill(0);
            bytes[9] = rng.gen_range(0..80);
        }
        fix_crc(&mut bytes);
        bytes
    } else if roll < 210 {
        // Near the datagram limit: a big valid frame, mutated.
        let (frame, encoded) = &big_frames[rng.gen_range(0..big_frames.len())];
        let mut bytes = encoded.clone();
        let at = offsets(frame);
        for _ in 0..rng.gen_range(1..=3) {
            mutate(rng, &mut bytes, &at);
        }
        if rng.gen_bool(0.5) {
            fix_crc(&mut bytes);
        }
        bytes
    } else {
        // A fresh valid frame (round trip checked), then mutated.
        let payload_len = small_payload_len(rng);
        let frame = random_frame(rng, payload_len);
        let mut bytes = encode_checked(&frame);
        let at = offsets(&frame);
        // Leave some valid: they check decode→encode on valid input too.
        let mutations = if rng.gen_bool(0.05) {
            0
        } else {
            rng.gen_range(1..=3)
        };
        for _ in 0..mutations {
            mutate(rng, &mut bytes, &at);
        }
        if rng.gen_bool(0.5) {
            fix_crc(&mut bytes);
        }
        bytes
    }
}

#[test]
fn decoder_survives_a_million_datagrams() {
    let seed = seed("decoder_survives_a_million_datagrams");
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let started = Instant::now();
    let big_frames: Vec<(Frame, Vec<u8>)> = (0..BIG_FRAMES)
        .map(|_| {
            let mut frame = random_frame(&mut rng, 0);
            // Untagged frames may use the tag's bytes too.
            let max = Frame::max_payload(&frame.from, &frame.to) + AUTH_TRAILER_BYTES;
            let slack = rng.gen_range(0..200);
            frame.payload = random_bytes(&mut rng, max - slack);
            let bytes = encode_checked(&frame);
            assert_eq!(bytes.len(), MAX_FRAME_BYTES - slack);
            (frame, bytes)
        })
        .collect();
    let mut outcomes: BTreeMap<&'static str, u64> = BTreeMap::new();
    for _ in 0..FUZZ_CASES {
        let bytes = generate(&mut rng, &big_frames);
        let outcome = match Frame::decode(&bytes) {
            Ok(frame) => {
                let reencoded = frame.encode().expect("a decoded frame re-encodes");
                assert_eq!(
                    reencoded, bytes,
                    "decode→encode must give back the same bytes"
                );
                "valid"
            }
            Err(error) => variant(&error),
        };
        *outcomes.entry(outcome).or_default() += 1;
    }
    let elapsed = started.elapsed();
    eprintln!("{FUZZ_CASES} datagrams decoded in {elapsed:?}: {outcomes:?}");
    // The generator must reach every check of the decoder, or the test proves little.
    for expected in [
        "valid",
        "TooShort",
        "TooLong",
        "BadMagic",
        "BadVersion",
        "BadKind",
        "BadChecksum",
        "BadId",
        "BadLength",
    ] {
        assert!(
            outcomes.get(expected).copied().unwrap_or(0) >= 100,
            "{expected} rarely reached: {outcomes:?}"
        );
    }
    assert_eq!(outcomes.get("other"), None);
}

fn arbitrary_kind() -> impl Strategy<Value = FrameKind> {
    prop::sample::select(FrameKind::ALL.to_vec())
}

fn arbitrary_id() -> impl Strategy<Value = ProcessId> {
    "[A-Za-z0-9._:-]{1,64}".prop_map(|text| ProcessId::new(text).expect("regex yields valid ids"))
}

prop_compose! {
    fn arbitrary_frame()(
        kind in arbitrary_kind(),
        from in arbitrary_id(),
        from_incarnation in any::<u64>(),
        to in arbitrary_id(),
        to_incarnation in any::<u64>(),
        seq in any::<u64>(),
        ack in any::<u64>(),
        acked in any::<u64>(),
        payload in prop::collection::vec(any::<u8>(), 0..2048),
    ) -> Frame {
        Frame {
            kind,
            auth: ken_transport::Auth::None,
            from,
            from_incarnation: Incarnation(from_incarnation),
            to,
            to_incarnation: Incarnation(to_incarnation),
            seq: Seq(seq),
            ack: Seq(ack),
            acked: Seq(acked),
            payload,
        }
    }
}

proptest! {
    #[test]
    fn frames_round_trip(frame in arbitrary_frame()) {
        let bytes = frame.encode().expect("small frames encode");
        prop_assert_eq!(bytes.len(), frame.encoded_len());
        prop_assert_eq!(
            bytes.len(),
            Frame::overhead(&frame.from, &frame.to) - AUTH_TRAILER_BYTES + frame.payload.len()
        );
        let decoded = Frame::decode(&bytes).expect("an encoding decodes");
        prop_assert_eq!(&decoded, &frame);
        prop_assert_eq!(decoded.encode().expect("re-encodes"), bytes);
    }

    #[test]
    fn any_single_bit_flip_is_rejected(frame in arbitrary_frame(), bit in any::<prop::sample::Index>()) {
        let mut bytes = frame.encode().expect("small frames encode");
        let bit = bit.index(bytes.len() * 8);
        bytes[bit / 8] ^= 1 << (bit % 8);
        prop_assert!(Frame::decode(&bytes).is_err(), "flipping bit {} went unnoticed", bit);
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..4096)) {
        if let Ok(frame) = Frame::decode(&bytes) {
            prop_assert_eq!(frame.encode().expect("re-encodes"), bytes);
        }
    }
}
