//! Seeded fault injection under the endpoint.
//!
//! A [`FaultConfig`] says which faults to inject; a [`FaultInjector`] turns it and a
//! ChaCha8 generator seeded from [`FaultConfig::seed`] into a decision per outbound datagram
//! ([`FaultInjector::decide`]). The decisions depend only on the seed and the sequence of
//! datagrams handed in, never on the clock, so a run replays from its seed.
//!
//! Faults on the send path, decided in this order for each datagram:
//!
//! 1. **partition**: the destination is in [`FaultConfig::partition`]: dropped (the endpoint
//!    also drops datagrams *from* partitioned addresses on receive).
//! 2. **drop** with probability [`FaultConfig::drop`].
//! 3. **duplicate** with probability [`FaultConfig::duplicate`]: two copies leave, and the
//!    steps below are decided for each copy independently.
//! 4. **corrupt** with probability [`FaultConfig::corrupt`]: 1 to 3 distinct random bits flip.
//! 5. **truncate** with probability [`FaultConfig::truncate`]: cut to a random shorter length.
//! 6. **reorder** with probability [`FaultConfig::reorder`]: held back 1 to
//!    [`FaultConfig::reorder_max_ms`] ms, so later datagrams overtake it.
//! 7. **delay** with probability [`FaultConfig::delay`]: held back a random time in
//!    [`FaultConfig::delay_min_ms`, `delay_max_ms`] ms (added to a reorder delay).
//!
//! # Syntax (`KEN_FAULTS`, `KEN_FAULTS_FILE`, [`FromStr`], [`Display`](fmt::Display))
//!
//! Comma-separated `key=value` entries; whitespace around entries, keys and values is
//! ignored; each key at most once; the empty string means no faults.
//!
//! | key | value | default | meaning |
//! | --- | --- | --- | --- |
//! | `seed` | integer `0..=u64::MAX` | 0 | seed of the fault decisions |
//! | `drop` | probability `0..=1` | 0 | drop the datagram |
//! | `dup` | probability | 0 | send it twice |
//! | `reorder` | probability | 0 | hold it back so later ones overtake it |
//! | `reorder_ms` | integer ms `1..=60000` | 20 | longest reorder hold |
//! | `delay` | probability | 0 | hold it back |
//! | `delay_ms` | `MIN-MAX` ms, `0..=60000`, MIN <= MAX | `1-50` | delay range |
//! | `corrupt` | probability | 0 | flip 1 to 3 bits |
//! | `truncate` | probability | 0 | cut it short |
//! | `partition` | `ADDR+ADDR+...` socket addresses (or empty) | empty | drop all traffic to and from them |
//!
//! Example: `seed=7,drop=0.1,dup=0.05,reorder=0.2,reorder_ms=30,delay=0.1,delay_ms=5-40,corrupt=0.01,truncate=0.01,partition=127.0.0.1:4001+[::1]:4002`.
//!
//! [`Display`](fmt::Display) writes the same syntax and parses back to an equal config.
//!
//! Invariants: every fault applied increments its counter in
//! [`EndpointStats`](crate::EndpointStats); a probability outside `0..=1` set directly on
//! the struct behaves as its clamp (never panics); delays are capped at
//! [`MAX_FAULT_DELAY_MS`].

use std::collections::BTreeSet;
use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;
use std::time::Duration;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Environment variable holding the initial fault configuration of a process.
pub const FAULTS_ENV: &str = "KEN_FAULTS";

/// Environment variable naming a file whose content (same syntax) replaces the fault
/// configuration whenever the file changes.
pub const FAULTS_FILE_ENV: &str = "KEN_FAULTS_FILE";

/// Longest delay any fault may add, in milliseconds.
pub const MAX_FAULT_DELAY_MS: u64 = 60_000;

/// Most addresses in a partition.
pub const MAX_PARTITION_ADDRS: usize = 1024;

/// Longest configuration text accepted (environment variable or file), in bytes.
pub const MAX_FAULT_SPEC_BYTES: usize = 64 * 1024;

/// Longest reorder hold when `reorder_ms` is not given.
pub const DEFAULT_REORDER_MAX_MS: u64 = 20;

/// Delay range when `delay_ms` is not given.
pub const DEFAULT_DELAY_MIN_MS: u64 = 1;
/// See [`DEFAULT_DELAY_MIN_MS`].
pub const DEFAULT_DELAY_MAX_MS: u64 = 50;

/// Most bits a corruption flips.
pub const MAX_CORRUPT_BITS: usize = 3;

const _: () = assert!(DEFAULT_DELAY_MIN_MS <= DEFAULT_DELAY_MAX_MS);
const _: () = assert!(DEFAULT_DELAY_MAX_MS <= MAX_FAULT_DELAY_MS);
const _: () = assert!(DEFAULT_REORDER_MAX_MS >= 1 && DEFAULT_REORDER_MAX_MS <= MAX_FAULT_DELAY_MS);

/// Fault probabilities and switches. [`Default`] injects nothing.
#[derive(Debug, Clone, PartialEq)]
pub struct FaultConfig {
    /// Seed of the fault decisions (`seed=`).
    pub seed: u64,
    /// Probability of dropping a datagram (`drop=`).
    pub drop: f64,
    /// Probability of sending a datagram twice (`dup=`).
    pub duplicate: f64,
    /// Probability of holding a datagram back up to `reorder_max_ms` (`reorder=`).
    pub reorder: f64,
    /// Longest reorder hold (`reorder_ms=`).
    pub reorder_max_ms: u64,
    /// Probability of delaying a datagram (`delay=`).
    pub delay: f64,
    /// Shortest delay (`delay_ms=MIN-MAX`).
    pub delay_min_ms: u64,
    /// Longest delay (`delay_ms=MIN-MAX`).
    pub delay_max_ms: u64,
    /// Probability of flipping 1 to 3 bits (`corrupt=`).
    pub corrupt: f64,
    /// Probability of cutting a datagram short (`truncate=`).
    pub truncate: f64,
    /// Addresses cut off in both directions (`partition=A+B`).
    pub partition: BTreeSet<SocketAddr>,
}

impl Default for FaultConfig {
    fn default() -> FaultConfig {
        FaultConfig {
            seed: 0,
            drop: 0.0,
            duplicate: 0.0,
            reorder: 0.0,
            reorder_max_ms: DEFAULT_REORDER_MAX_MS,
            delay: 0.0,
            delay_min_ms: DEFAULT_DELAY_MIN_MS,
            delay_max_ms: DEFAULT_DELAY_MAX_MS,
            corrupt: 0.0,
            truncate: 0.0,
            partition: BTreeSet::new(),
        }
    }
}

/// Why a fault specification does not parse. Nothing was applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FaultParseError {
    #[error("fault entry `{entry}` is not key=value (expected e.g. `drop=0.1`)")]
    NotKeyValue { entry: String },
    #[error(
        "unknown fault key `{key}` (expected one of seed, drop, dup, reorder, reorder_ms, \
         delay, delay_ms, corrupt, truncate, partition)"
    )]
    UnknownKey { key: String },
    #[error("fault key `{key}` is given more than once")]
    DuplicateKey { key: &'static str },
    #[error("fault key `{key}`: expected {expected}, got `{value}`")]
    BadValue {
        key: &'static str,
        value: String,
        expected: &'static str,
    },
    #[error("fault specification of {len} bytes exceeds the {MAX_FAULT_SPEC_BYTES}-byte limit")]
    TooLong { len: usize },
    #[error("environment variable {var} is not valid Unicode")]
    NotUnicode { var: &'static str },
}

const EXPECT_PROBABILITY: &str = "a probability between 0 and 1";
const EXPECT_SEED: &str = "an unsigned 64-bit integer";
const EXPECT_REORDER_MS: &str = "an integer number of milliseconds in 1..=60000";
const EXPECT_DELAY_MS: &str = "MIN-MAX milliseconds with 0 <= MIN <= MAX <= 60000";
const EXPECT_PARTITION: &str = "socket addresses joined by `+` (at most 1024), e.g. \
                                127.0.0.1:4001+[::1]:4002";

/// The keys, in the order [`Display`](fmt::Display) writes them.
const KEYS: [&str; 10] = [
    "seed",
    "drop",
    "dup",
    "reorder",
    "reorder_ms",
    "delay",
    "delay_ms",
    "corrupt",
    "truncate",
    "partition",
];

fn parse_probability(key: &'static str, value: &str) -> Result<f64, FaultParseError> {
    match value.parse::<f64>() {
        Ok(p) if (0.0..=1.0).contains(&p) => Ok(p),
        _ => Err(FaultParseError::BadValue {
            key,
            value: value.to_owned(),
            expected: EXPECT_PROBABILITY,
        }),
    }
}

fn parse_delay_range(value: &str) -> Option<(u64, u64)> {
    let (min, max) = value.split_once('-')?;
    let min = min.trim().parse::<u64>().ok()?;
    let max = max.trim().parse::<u64>().ok()?;
    (min <= max && max <= MAX_FAULT_DELAY_MS).then_some((min, max))
}

fn parse_partition(value: &str) -> Option<BTreeSet<SocketAddr>> {
    if value.is_empty() {
        return Some(BTreeSet::new());
    }
    let mut set = BTreeSet::new();
    for part in value.split('+') {
        if set.len() >= MAX_PARTITION_ADDRS {
            return None;
        }
        set.insert(part.trim().parse::<SocketAddr>().ok()?);
    }
    Some(set)
}

impl FromStr for FaultConfig {
    type Err = FaultParseError;

    fn from_str(spec: &str) -> Result<FaultConfig, FaultParseError> {
        if spec.len() > MAX_FAULT_SPEC_BYTES {
            return Err(FaultParseError::TooLong { len: spec.len() });
        }
        let mut config = FaultConfig::default();
        let mut seen = [false; KEYS.len()];
        for entry in spec.split(',').map(str::trim) {
            if entry.is_empty() {
                continue;
            }
            let Some((key, value)) = entry.split_once('=') else {
                return Err(FaultParseError::NotKeyValue {
                    entry: entry.to_owned(),
                });
            };
            let (key, value) = (key.trim(), value.trim());
            let Some(index) = KEYS.iter().position(|known| *known == key) else {
                return Err(FaultParseError::UnknownKey {
                    key: key.to_owned(),
                });
            };
            let key = KEYS[index];
            if std::mem::replace(&mut seen[index], true) {
                return Err(FaultParseError::DuplicateKey { key });
            }
            let bad = |expected| FaultParseError::BadValue {
                key,
                value: value.to_owned(),
                expected,
            };
            match key {
                "seed" => config.seed = value.parse().map_err(|_| bad(EXPECT_SEED))?,
                "drop" => config.drop = parse_probability(key, value)?,
                "dup" => config.duplicate = parse_probability(key, value)?,
                "reorder" => config.reorder = parse_probability(key, value)?,
                "reorder_ms" => {
                    config.reorder_max_ms = value
                        .parse()
                        .ok()
                        .filter(|ms| (1..=MAX_FAULT_DELAY_MS).contains(ms))
                        .ok_or_else(|| bad(EXPECT_REORDER_MS))?;
                }
                "delay" => config.delay = parse_probability(key, value)?,
                "delay_ms" => {
                    let (min, max) =
                        parse_delay_range(value).ok_or_else(|| bad(EXPECT_DELAY_MS))?;
                    config.delay_min_ms = min;
                    config.delay_max_ms = max;
                }
                "corrupt" => config.corrupt = parse_probability(key, value)?,
                "truncate" => config.truncate = parse_probability(key, value)?,
                "partition" => {
                    config.partition =
                        parse_partition(value).ok_or_else(|| bad(EXPECT_PARTITION))?;
                }
                _ => unreachable!("every key in KEYS has an arm"),
            }
        }
        Ok(config)
    }
}

impl fmt::Display for FaultConfig {
    /// Writes the `KEN_FAULTS` syntax: `seed` and every key whose value differs from the
    /// default; the empty string for the default config. Parses back to an equal config.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let default = FaultConfig::default();
        if *self == default {
            return Ok(());
        }
        write!(f, "seed={}", self.seed)?;
        let probabilities = [
            ("drop", self.drop),
            ("dup", self.duplicate),
            ("reorder", self.reorder),
        ];
        for (key, p) in probabilities {
            if p != 0.0 {
                write!(f, ",{key}={p}")?;
            }
        }
        if self.reorder_max_ms != default.reorder_max_ms {
            write!(f, ",reorder_ms={}", self.reorder_max_ms)?;
        }
        if self.delay != 0.0 {
            write!(f, ",delay={}", self.delay)?;
        }
        if (self.delay_min_ms, self.delay_max_ms) != (default.delay_min_ms, default.delay_max_ms) {
            write!(f, ",delay_ms={}-{}", self.delay_min_ms, self.delay_max_ms)?;
        }
        for (key, p) in [("corrupt", self.corrupt), ("truncate", self.truncate)] {
            if p != 0.0 {
                write!(f, ",{key}={p}")?;
            }
        }
        if !self.partition.is_empty() {
            f.write_str(",partition=")?;
            for (i, addr) in self.partition.iter().enumerate() {
                if i > 0 {
                    f.write_str("+")?;
                }
                write!(f, "{addr}")?;
            }
        }
        Ok(())
    }
}

impl FaultConfig {
    /// The configuration in `KEN_FAULTS`: `Ok(None)` if it is unset or blank (no faults).
    pub fn from_env() -> Result<Option<FaultConfig>, FaultParseError> {
        match std::env::var(FAULTS_ENV) {
            Err(std::env::VarError::NotPresent) => Ok(None),
            Err(std::env::VarError::NotUnicode(_)) => {
                Err(FaultParseError::NotUnicode { var: FAULTS_ENV })
            }
            Ok(spec) if spec.trim().is_empty() => Ok(None),
            Ok(spec) => spec.parse().map(Some),
        }
    }

    /// True if this config can change any datagram (some probability above 0 or a
    /// non-empty partition). An inactive config costs the endpoint nothing.
    pub fn is_active(&self) -> bool {
        [
            self.drop,
            self.duplicate,
            self.reorder,
            self.delay,
            self.corrupt,
            self.truncate,
        ]
        .iter()
        .any(|&p| p > 0.0)
            || !self.partition.is_empty()
    }

    /// A copy with `addr` added to the partition.
    pub fn with_partitioned(mut self, addr: SocketAddr) -> FaultConfig {
        self.partition.insert(addr);
        self
    }
}

/// What to do with one copy of a datagram that is sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmission {
    /// The bytes to put on the wire (possibly corrupted or truncated).
    pub bytes: Vec<u8>,
    /// How long to hold the copy back before sending; zero means send now.
    pub hold: Duration,
    /// Bits were flipped.
    pub corrupted: bool,
    /// The copy was cut short.
    pub truncated: bool,
    /// The copy is held back by the reorder fault.
    pub reordered: bool,
    /// The copy is held back by the delay fault.
    pub delayed: bool,
}

/// The fault layer's decision for one outbound datagram.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The destination is partitioned: nothing leaves.
    Partitioned,
    /// Dropped by the `drop` fault: nothing leaves.
    Dropped,
    /// These copies leave (two when `duplicated`).
    Send {
        copies: Vec<Transmission>,
        duplicated: bool,
    },
}

/// A fault configuration and its seeded generator: decides the fate of each datagram.
///
/// Decisions depend only on the seed and the sequence of `decide` calls (datagram lengths
/// and destinations), so two injectors with the same config make the same decisions.
#[derive(Debug, Clone)]
pub struct FaultInjector {
    config: FaultConfig,
    rng: ChaCha8Rng,
}

/// True with probability `p` (above 1 is certain; NaN and `p <= 0` never). Draws nothing when
/// `p <= 0`, so a fault that is off consumes no randomness.
fn chance(rng: &mut ChaCha8Rng, p: f64) -> bool {
    p > 0.0 && rng.gen::<f64>() < p
}

/// A uniform duration in `min_ms..=max_ms` (bounds capped, swapped if reversed).
fn uniform_ms(rng: &mut ChaCha8Rng, min_ms: u64, max_ms: u64) -> Duration {
    let (min_ms, max_ms) = (
        min_ms.min(MAX_FAULT_DELAY_MS),
        max_ms.min(MAX_FAULT_DELAY_MS),
    );
    let (low, high) = (min_ms.min(max_ms), min_ms.max(max_ms));
    Duration::from_millis(rng.gen_range(low..=high))
}

impl FaultInjector {
    /// An injector whose generator starts from `config.seed`.
    pub fn new(config: FaultConfig) -> FaultInjector {
        let rng = ChaCha8Rng::seed_from_u64(config.seed);
        FaultInjector { config, rng }
    }

    pub fn config(&self) -> &FaultConfig {
        &self.config
    }

    /// True if traffic to or from `addr` is cut.
    pub fn is_partitioned(&self, addr: &SocketAddr) -> bool {
        self.config.partition.contains(addr)
    }

    /// Decides what happens to `datagram`, addressed to `to`. See the module doc for the
    /// order of the faults.
    pub fn decide(&mut self, to: SocketAddr, datagram: Vec<u8>) -> Verdict {
        if self.is_partitioned(&to) {
            return Verdict::Partitioned;
        }
        if chance(&mut self.rng, self.config.drop) {
            return Verdict::Dropped;
        }
        let duplicated = chance(&mut self.rng, self.config.duplicate);
        let copies = if duplicated {
            let first = self.shape(datagram.clone());
            vec![first, self.shape(datagram)]
        } else {
            vec![self.shape(datagram)]
        };
        Verdict::Send { copies, duplicated }
    }

    /// Decides corruption, truncation, reorder and delay for one copy.
    fn shape(&mut self, mut bytes: Vec<u8>) -> Transmission {
        let config = &self.config;
        let rng = &mut self.rng;
        let mut corrupted = false;
        if chance(rng, config.corrupt) && !bytes.is_empty() {
            let total_bits = bytes.len() * 8;
            let flips = rng.gen_range(1..=MAX_CORRUPT_BITS.min(total_bits));
            let mut chosen: Vec<usize> = Vec::with_capacity(flips);
            while chosen.len() < flips {
                let bit = rng.gen_range(0..total_bits);
                if !chosen.contains(&bit) {
                    chosen.push(bit);
                }
            }
            for bit in chosen {
                bytes[bit / 8] ^= 1 << (bit % 8);
            }
            corrupted = true;
        }
        let mut truncated = false;
        if chance(rng, config.truncate) && !bytes.is_empty() {
            let len = rng.gen_range(0..bytes.len());
            bytes.truncate(len);
            truncated = true;
        }
        let mut hold = Duration::ZERO;
        let reordered = chance(rng, config.reorder);
        if reordered {
            hold += uniform_ms(rng, 1, config.reorder_max_ms.max(1));
        }
        let delayed = chance(rng, config.delay);
        if delayed {
            hold += uniform_ms(rng, config.delay_min_ms, config.delay_max_ms);
        }
        Transmission {
            bytes,
            hold,
            corrupted,
            truncated,
            reordered,
            delayed,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn empty_spec_is_default_and_inactive() {
        for spec in ["", " ", ",", " , ,"] {
            let config: FaultConfig = spec.parse().unwrap();
            assert_eq!(config, FaultConfig::default());
            assert!(!config.is_active());
        }
        assert_eq!(FaultConfig::default().to_string(), "");
    }

    #[test]
    fn parses_every_key() {
        let spec = "seed=7, drop=0.1,dup=0.05,reorder=0.2,reorder_ms=30,delay=0.1,\
                    delay_ms=5-40,corrupt=0.01,truncate=0.02,partition=127.0.0.1:4001+[::1]:4002";
        let config: FaultConfig = spec.parse().unwrap();
        let expected = FaultConfig {
            seed: 7,
            drop: 0.1,
            duplicate: 0.05,
            reorder: 0.2,
            reorder_max_ms: 30,
            delay: 0.1,
            delay_min_ms: 5,
            delay_max_ms: 40,
            corrupt: 0.01,
            truncate: 0.02,
            partition: [addr("127.0.0.1:4001"), addr("[::1]:4002")]
                .into_iter()
                .collect(),
        };
        assert_eq!(config, expected);
        assert!(config.is_active());
        let text = config.to_string();
        assert_eq!(
            text,
            "seed=7,drop=0.1,dup=0.05,reorder=0.2,reorder_ms=30,delay=0.1,delay_ms=5-40,\
             corrupt=0.01,truncate=0.02,partition=127.0.0.1:4001+[::1]:4002"
        );
        assert_eq!(text.parse::<FaultConfig>(), Ok(config));
    }

    #[test]
    fn display_round_trips() {
        let configs = [
            FaultConfig {
                seed: 3,
                ..FaultConfig::default()
            },
            FaultConfig {
                drop: 1.0,
                ..FaultConfig::default()
            },
            FaultConfig {
                delay_min_ms: 0,
                delay_max_ms: 0,
                ..FaultConfig::default()
            },
            FaultConfig {
                seed: u64::MAX,
                corrupt: 1e-9,
                ..FaultConfig::default()
            },
            FaultConfig::default().with_partitioned(addr("10.0.0.1:1")),
        ];
        for config in configs {
            let text = config.to_string();
            assert_eq!(text.parse::<FaultConfig>().as_ref(), Ok(&config), "{text}");
        }
    }

    #[test]
    fn parse_errors_name_the_key() {
        let cases: [(&str, FaultParseError); 11] = [
            (
                "drop",
                FaultParseError::NotKeyValue {
                    entry: "drop".into(),
                },
            ),
            (
                "lose=0.1",
                FaultParseError::UnknownKey { key: "lose".into() },
            ),
            (
                "drop=0.1,drop=0.2",
                FaultParseError::DuplicateKey { key: "drop" },
            ),
            (
                "drop=1.5",
                FaultParseError::BadValue {
                    key: "drop",
                    value: "1.5".into(),
                    expected: EXPECT_PROBABILITY,
                },
            ),
            (
                "dup=-0.1",
                FaultParseError::BadValue {
                    key: "dup",
                    value: "-0.1".into(),
                    expected: EXPECT_PROBABILITY,
                },
            ),
            (
                "corrupt=NaN",
                FaultParseError::BadValue {
                    key: "corrupt",
                    value: "NaN".into(),
                    expected: EXPECT_PROBABILITY,
                },
            ),
            (
                "seed=-1",
                FaultParseError::BadValue {
                    key: "seed",
                    value: "-1".into(),
                    expected: EXPECT_SEED,
                },
            ),
            (
                "reorder_ms=0",
                FaultParseError::BadValue {
                    key: "reorder_ms",
                    value: "0".into(),
                    expected: EXPECT_REORDER_MS,
                },
            ),
            (
                "delay_ms=50-10",
                FaultParseError::BadValue {
                    key: "delay_ms",
                    value: "50-10".into(),
                    expected: EXPECT_DELAY_MS,
                },
            ),
            (
                "delay_ms=10-60001",
                FaultParseError::BadValue {
                    key: "delay_ms",
                    value: "10-60001".into(),
                    expected: EXPECT_DELAY_MS,
                },
            ),
            (
                "partition=localhost:80",
                FaultParseError::BadValue {
                    key: "partition",
                    value: "localhost:80".into(),
                    expected: EXPECT_PARTITION,
                },
            ),
        ];
        for (spec, expected) in cases {
            let error = spec.parse::<FaultConfig>().unwrap_err();
            assert_eq!(error, expected, "{spec}");
            let message = error.to_string();
            if let Some(key) = spec.split('=').next().filter(|_| spec.contains('=')) {
                assert!(message.contains(key), "{message:?} names {key}");
            }
        }
        let long = "seed=1,".repeat(MAX_FAULT_SPEC_BYTES);
        assert!(matches!(
            long.parse::<FaultConfig>(),
            Err(FaultParseError::TooLong { .. })
        ));
        let many = (0..=MAX_PARTITION_ADDRS)
            .map(|port| format!("127.0.0.1:{}", port + 1))
            .collect::<Vec<_>>()
            .join("+");
        assert!(format!("partition={many}").parse::<FaultConfig>().is_err());
    }

    #[test]
    fn empty_partition_value_heals() {
        let config: FaultConfig = "drop=0.5,partition=".parse().unwrap();
        assert!(config.partition.is_empty());
    }

    #[test]
    fn inactive_config_passes_datagrams_untouched() {
        let mut injector = FaultInjector::new(FaultConfig {
            seed: 9,
            ..FaultConfig::default()
        });
        for n in 0..100u8 {
            let verdict = injector.decide(addr("127.0.0.1:9"), vec![n; 10]);
            let expected = Transmission {
                bytes: vec![n; 10],
                hold: Duration::ZERO,
                corrupted: false,
                truncated: false,
                reordered: false,
                delayed: false,
            };
            assert_eq!(
                verdict,
                Verdict::Send {
                    copies: vec![expected],
                    duplicated: false
                }
            );
        }
    }

    #[test]
    fn certain_faults_always_apply() {
        let to = addr("127.0.0.1:9");
        let mut drop = FaultInjector::new(FaultConfig {
            drop: 1.0,
            ..FaultConfig::default()
        });
        assert_eq!(drop.decide(to, vec![1; 50]), Verdict::Dropped);
        let mut cut = FaultInjector::new(FaultConfig::default().with_partitioned(to));
        assert_eq!(cut.decide(to, vec![1; 50]), Verdict::Partitioned);
        assert!(cut.is_partitioned(&to));
        let config = FaultConfig {
            duplicate: 1.0,
            corrupt: 1.0,
            truncate: 1.0,
            delay: 1.0,
            delay_min_ms: 5,
            delay_max_ms: 9,
            ..FaultConfig::default()
        };
        let mut all = FaultInjector::new(config);
        for _ in 0..1000 {
            let Verdict::Send { copies, duplicated } = all.decide(to, vec![0; 50]) else {
                panic!("nothing is dropped");
            };
            assert!(duplicated);
            assert_eq!(copies.len(), 2);
            for copy in copies {
                assert!(copy.corrupted && copy.truncated && copy.delayed && !copy.reordered);
                assert!(copy.bytes.len() < 50);
                assert!((5..=9).contains(&copy.hold.as_millis()), "{:?}", copy.hold);
            }
        }
    }

    #[test]
    fn corruption_flips_one_to_three_distinct_bits() {
        let config = FaultConfig {
            corrupt: 1.0,
            seed: 11,
            ..FaultConfig::default()
        };
        let mut injector = FaultInjector::new(config);
        let mut seen = [false; MAX_CORRUPT_BITS + 1];
        for len in [1usize, 2, 7, 100] {
            for _ in 0..500 {
                let Verdict::Send { copies, .. } =
                    injector.decide(addr("127.0.0.1:1"), vec![0; len])
                else {
                    panic!("not dropped");
                };
                let flipped: u32 = copies[0].bytes.iter().map(|b| b.count_ones()).sum();
                assert!(
                    (1..=MAX_CORRUPT_BITS as u32).contains(&flipped),
                    "{flipped}"
                );
                seen[flipped as usize] = true;
            }
        }
        assert_eq!(seen, [false, true, true, true]);
    }

    #[test]
    fn same_seed_same_decisions() {
        let config: FaultConfig =
            "seed=12345,drop=0.2,dup=0.2,reorder=0.3,reorder_ms=40,delay=0.3,delay_ms=2-30,\
             corrupt=0.2,truncate=0.2"
                .parse()
                .unwrap();
        let run = |config: FaultConfig| {
            let mut injector = FaultInjector::new(config);
            (0..2000u32)
                .map(|n| {
                    let datagram = n.to_le_bytes().repeat(1 + (n % 17) as usize);
                    injector.decide(addr("127.0.0.1:7"), datagram)
                })
                .collect::<Vec<_>>()
        };
        let first = run(config.clone());
        assert_eq!(first, run(config.clone()));
        assert_ne!(
            first,
            run(FaultConfig {
                seed: 12346,
                ..config
            })
        );
        // Every kind of decision occurs, so the comparison covers them all.
        let sent: Vec<&Transmission> = first
            .iter()
            .flat_map(|v| match v {
                Verdict::Send { copies, .. } => copies.iter().collect(),
                _ => Vec::new(),
            })
            .collect();
        assert!(first.contains(&Verdict::Dropped));
        assert!(first.iter().any(|v| matches!(
            v,
            Verdict::Send {
                duplicated: true,
                ..
            }
        )));
        assert!(sent.iter().any(|t| t.corrupted));
        assert!(sent.iter().any(|t| t.truncated));
        assert!(sent.iter().any(|t| t.reordered));
        assert!(sent.iter().any(|t| t.delayed));
    }
}
