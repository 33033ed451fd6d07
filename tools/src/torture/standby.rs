//! `ken torture --app bank --standby` (issue 18): every bank member ships its batches to a
//! standby replica (`ken standby serve`), and a few times (`--promotions`) the harness
//! destroys a member's disk and promotes its standby, as an operator would.
//!
//! The members are started from a cluster file written for the run ([`Standbys::write_run_file`]):
//! each `[[process]]` has `standby = { ship, address, store }`, so a member ships to its
//! standby (through a relay of the harness, [`Link`], which now and then cuts the connection
//! or alters a bit of it: [`LINK_FAULT_SHARE`] of the network epochs) and knows every other member's standby address (where a peer looks for a
//! promoted member after a quiet period). Standbys are SIGKILLed and restarted, and
//! SIGSTOPped for seconds (the link goes silent with its TCP connection up), now and then
//! like members (the primary waits meanwhile, releasing nothing: masked).
//!
//! A promotion of member `i`: its standby is SIGKILLed [`PRE_KILL`] before the rest (the
//! primary then stalls, releasing nothing its replica lacks; with
//! `--unsafe-release-before-standby` it runs ahead instead, which is what the negative control
//! shows); then `i` is SIGKILLed, every file of its store deleted (a destroyed disk),
//! `ken standby promote` run on the replica, and `i` started on the replica at its standby
//! address with `--no-standby`. From then on the replica is `i`'s store for every check.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use rand::Rng;
use rand_chacha::ChaCha8Rng;

use ken_tools::harness::{End, Process, Spec};

/// How long before destroying a victim its standby is SIGKILLed.
pub const PRE_KILL: Duration = Duration::from_secs(3);

/// Fraction of the harness's kill events aimed at a standby rather than a member.
pub const STANDBY_KILL_SHARE: f64 = 0.3;

/// Fraction of the harness's pause events aimed at a standby rather than a member: a
/// SIGSTOPped standby is a primary-standby link gone silent for seconds (the TCP connection
/// stays up, nothing is acknowledged), and its primary must release nothing meanwhile and
/// carry on when it continues.
pub const STANDBY_PAUSE_SHARE: f64 = 0.3;

/// A promotion under way: the victim's standby is down, its disk is destroyed at `destroy_at`.
#[derive(Debug, Clone, Copy)]
pub struct Pending {
    pub member: usize,
    pub destroy_at: Instant,
}

/// A promoted member whose first committed turn is awaited.
#[derive(Debug, Clone)]
struct Measure {
    member: usize,
    promoted_at: Instant,
    base_turns: u64,
    /// Index into `first_turn_ms`.
    slot: usize,
}

/// The standbys of a `--standby` run and the promotion plan.
pub struct Standbys {
    /// One `ken standby serve` per member.
    pub procs: Vec<Process>,
    /// Each standby's arguments before its keys (`--rotate-key` appends those: [`Self::rekey`]).
    base_args: Vec<Vec<String>>,
    pub restart_at: Vec<Option<Instant>>,
    /// Each member's UDP address once promoted.
    pub address: Vec<SocketAddr>,
    /// Each standby's replica store.
    pub replicas: Vec<PathBuf>,
    pub promoted: Vec<bool>,
    /// The run's cluster file.
    pub run_file: PathBuf,
    /// Promotions still to start, earliest first (offsets into the fault phase, at which the
    /// victim's standby is killed; the destruction follows [`PRE_KILL`] later).
    pub plan: Vec<Duration>,
    pub pending: Option<Pending>,
    measuring: Vec<Measure>,
    /// Per promotion made: promote to the first turn the promoted member committed (ms),
    /// `None` if none was seen before the end of the run.
    pub first_turn_ms: Vec<Option<u64>>,
    pub kills: u64,
    pub restarts: u64,
    /// SIGSTOP pauses of standbys.
    pub pauses: u64,
    /// The relays members ship through (member `i` ships to `links[i].addr`).
    pub links: Vec<Link>,
    /// Link faults: connections cut, and bit flips ordered.
    pub link_cuts: u64,
    pub link_corruptions: u64,
    pub skipped: u64,
}

impl Standbys {
    /// Sets up the standbys of `ids` (not started): ports, replica paths, the plan of
    /// `promotions` spread over the fault phase's middle 80%.
    pub fn new(
        ids: &[String],
        dir: &Path,
        program: &Path,
        seconds: u64,
        promotions: u64,
        rng: &mut ChaCha8Rng,
    ) -> anyhow::Result<Standbys> {
        let standby_dir = dir.join("standby");
        let logs = dir.join("logs");
        std::fs::create_dir_all(&standby_dir)
            .with_context(|| format!("create {}", standby_dir.display()))?;
        let tcp: Vec<std::net::TcpListener> = (0..ids.len())
            .map(|_| std::net::TcpListener::bind("127.0.0.1:0"))
            .collect::<std::io::Result<_>>()
            .context("pick free TCP ports for the standbys")?;
        let ship: Vec<SocketAddr> = tcp
            .iter()
            .map(std::net::TcpListener::local_addr)
            .collect::<std::io::Result<_>>()?;
        drop(tcp);
        let links: Vec<Link> = ship
            .iter()
            .map(|to| Link::start(*to))
            .collect::<anyhow::Result<_>>()?;
        let address = ken_tools::harness::free_addrs(ids.len())
            .context("pick free UDP ports for the promoted members")?;
        let replicas: Vec<PathBuf> = ids
            .iter()
            .map(|id| absolute(&standby_dir.join(format!("{id}.standby.ken"))))
            .collect();
        let run_file = absolute(&dir.join("standby-cluster.toml"));
        let base_args: Vec<Vec<String>> = ids
            .iter()
            .enumerate()
            .map(|(i, id)| {
                vec![
                    "standby".into(),
                    "serve".into(),
                    "--cluster".into(),
                    run_file.display().to_string(),
                    "--id".into(),
                    id.clone(),
                    "--listen".into(),
                    ship[i].to_string(),
                    "--store".into(),
                    replicas[i].display().to_string(),
                ]
            })
            .collect();
        let procs = ids
            .iter()
            .zip(&base_args)
            .map(|(id, args)| {
                let mut spec = Spec::new(format!("standby-{id}"), program, args.clone(), &logs);
                if std::env::var_os("RUST_LOG").is_none() {
                    // Where each batch given back came from is an info line; counted.
                    spec = spec.env("RUST_LOG", "warn,ken::standby=info");
                }
                Process::new(spec)
            })
            .collect();
        let phase_ms = seconds * 1000;
        let n = promotions.max(1);
        let slot = phase_ms * 8 / 10 / n;
        let plan = (0..promotions)
            .map(|k| {
                let first = phase_ms / 10 + k * slot;
                let at = first + slot / 4 + rng.gen_range(0..=slot / 2);
                Duration::from_millis(at)
            })
            .collect();
        Ok(Standbys {
            procs,
            base_args,
            restart_at: vec![None; ids.len()],
            address,
            replicas,
            promoted: vec![false; ids.len()],
            run_file,
            plan,
            pending: None,
            measuring: Vec::new(),
            first_turn_ms: Vec::new(),
            kills: 0,
            restarts: 0,
            pauses: 0,
            links,
            link_cuts: 0,
            link_corruptions: 0,
            skipped: 0,
        })
    }

    /// (Re)writes the run's cluster file: every member at `addrs` with store `stores`; the
    /// members not promoted with their `standby` entry; the run's key and stats interval.
    pub fn write_run_file(
        &self,
        ids: &[String],
        addrs: &[SocketAddr],
        stores: &[PathBuf],
        key: Option<&Path>,
        stats_interval_ms: u64,
    ) -> anyhow::Result<()> {
        use super::custom::quote;
        let mut t = String::from(
            "# Written by `ken torture --standby` for this run: the bank members, each with its\n\
             # standby (promoted members without). Rewritten on a promotion or a port change.\n",
        );
        for (i, id) in ids.iter().enumerate() {
            t.push_str(&format!(
                "\n[[process]]\nid = {}\naddress = {}\nstore = {}\n",
                quote(id),
                quote(&addrs[i].to_string()),
                quote(&absolute(&stores[i]).display().to_string()),
            ));
            if !self.promoted[i] {
                t.push_str(&format!(
                    "standby = {{ ship = {}, address = {}, store = {} }}\n",
                    quote(&self.links[i].addr.to_string()),
                    quote(&self.address[i].to_string()),
                    quote(&self.replicas[i].display().to_string()),
                ));
            }
        }
        let key = key.map(absolute);
        // Keyed, the run encrypts (peer frames and the standby stream): the stream's
        // encryption runs under the same kills, cuts and bit flips.
        t.push_str(&super::custom::settings_toml(
            &ken::cluster::Settings {
                encrypt: key.is_some(),
                ..ken::cluster::Settings::default()
            },
            key.as_deref(),
            stats_interval_ms,
        ));
        super::write_atomic(&self.run_file, &t)?;
        ken::ClusterFile::load(&self.run_file).map_err(|e| {
            anyhow::anyhow!("the run's cluster file does not read back (a ken torture bug): {e}")
        })?;
        Ok(())
    }

    /// A key rotation's step for standby `i` (`--rotate-key`): from now on it starts with
    /// `key_args` (`--key-file` and `--accept-key-file`, which take the place of the cluster
    /// file's key), and it is SIGKILLed and restarted with them at once if it runs in service.
    /// True if it was restarted (one that is down starts with them at its planned restart;
    /// a promoted one is gone).
    pub fn rekey(&mut self, i: usize, key_args: Vec<String>) -> anyhow::Result<bool> {
        let mut args = self.base_args[i].clone();
        args.extend(key_args);
        self.procs[i].set_args(args.into_iter().map(Into::into).collect());
        if !self.in_service(i) || !self.procs[i].is_running() {
            return Ok(false);
        }
        if self.procs[i].paused_until().is_some() {
            self.procs[i].resume();
        }
        self.procs[i].kill()?;
        self.restart_at[i] = None;
        self.procs[i].spawn(None)?;
        self.restarts += 1;
        Ok(true)
    }

    /// Starts every standby (the run's start).
    pub fn start_all(&mut self) -> anyhow::Result<()> {
        for p in &mut self.procs {
            p.spawn(None)?;
        }
        Ok(())
    }

    /// True if member `i`'s standby is still in service (not promoted, not held down for a
    /// promotion under way).
    fn in_service(&self, i: usize) -> bool {
        !self.promoted[i] && self.pending.is_none_or(|p| p.member != i)
    }

    /// A kill event may go to a standby: SIGKILLs a random running standby in service and
    /// plans its restart after `delay`. False if none was eligible.
    pub fn kill_one(&mut self, rng: &mut ChaCha8Rng, delay: Duration) -> anyhow::Result<bool> {
        let running: Vec<usize> = (0..self.procs.len())
            .filter(|i| self.in_service(*i) && self.procs[*i].is_running())
            .collect();
        if running.is_empty() {
            return Ok(false);
        }
        let i = running[rng.gen_range(0..running.len())];
        self.procs[i].kill()?;
        self.kills += 1;
        self.restart_at[i] = Some(Instant::now() + delay);
        Ok(true)
    }

    /// A network epoch may fault a member's link to its standby ([`LINK_FAULT_SHARE`]): cuts
    /// its connection, or alters one bit of the next bytes relayed, on a random member in
    /// service. False if none was eligible.
    pub fn link_fault(&mut self, rng: &mut ChaCha8Rng) -> bool {
        let eligible: Vec<usize> = (0..self.links.len())
            .filter(|i| self.in_service(*i))
            .collect();
        if eligible.is_empty() {
            return false;
        }
        let i = eligible[rng.gen_range(0..eligible.len())];
        if rng.gen_bool(0.5) {
            if self.links[i].cut() {
                self.link_cuts += 1;
            }
        } else {
            self.links[i].corrupt_next(rng.gen());
            self.link_corruptions += 1;
        }
        true
    }

    /// Batches the standbys gave back to a restarted primary from their replica's journal
    /// (a standby killed since: its batches in memory were gone), from their logs.
    pub fn given_back_from_journal(&self) -> u64 {
        self.procs
            .iter()
            .flat_map(|p| p.lives())
            .map(|life| {
                std::fs::read_to_string(&life.stderr_path)
                    .unwrap_or_default()
                    .lines()
                    .filter(|l| l.contains("asks for a batch back") && l.contains("journal"))
                    .count() as u64
            })
            .sum()
    }

    /// Bits the relays altered.
    pub fn link_bit_flips(&self) -> u64 {
        self.links.iter().map(Link::flipped).sum()
    }

    /// A pause event may go to a standby: SIGSTOPs a random running, unpaused standby in
    /// service until `until` (continued by [`Standbys::reap_and_restart`]). False if none was
    /// eligible.
    pub fn pause_one(&mut self, rng: &mut ChaCha8Rng, until: Instant) -> bool {
        let running: Vec<usize> = (0..self.procs.len())
            .filter(|i| {
                self.in_service(*i)
                    && self.procs[*i].is_running()
                    && self.procs[*i].paused_until().is_none()
            })
            .collect();
        if running.is_empty() {
            return false;
        }
        let i = running[rng.gen_range(0..running.len())];
        self.procs[i].pause(until);
        self.pauses += 1;
        true
    }

    /// Reaps standbys that ended on their own (each a violation: a standby runs until
    /// killed), continues the paused ones whose pause is over, and restarts those due
    /// (`healing`: every one in service at once, and every pause ended). Returns the
    /// violations.
    pub fn reap_and_restart(
        &mut self,
        healing: bool,
        delay: Duration,
    ) -> anyhow::Result<Vec<String>> {
        let mut violations = Vec::new();
        let now = Instant::now();
        for i in 0..self.procs.len() {
            if self.procs[i]
                .paused_until()
                .is_some_and(|t| healing || t <= now)
            {
                self.procs[i].resume();
            }
            if let Some(end) = self.procs[i].poll()? {
                if end != End::KilledByUs {
                    violations.push(format!(
                        "{} life {} ended unexpectedly: {end:?}",
                        self.procs[i].name(),
                        self.procs[i].lives().len()
                    ));
                }
                if self.in_service(i) {
                    self.restart_at[i] = Some(now + delay);
                }
            }
            if !self.in_service(i) {
                self.restart_at[i] = None;
                continue;
            }
            if healing && !self.procs[i].is_running() && self.restart_at[i].is_none() {
                self.restart_at[i] = Some(now);
            }
            if self.restart_at[i].is_some_and(|t| healing || t <= now) {
                self.restart_at[i] = None;
                self.procs[i].spawn(None)?;
                self.restarts += 1;
            }
        }
        Ok(violations)
    }

    /// Starts promotion `i`: SIGKILLs its standby, which stays down; the destruction is due
    /// [`PRE_KILL`] later.
    pub fn begin(&mut self, member: usize, now: Instant) -> anyhow::Result<()> {
        if self.procs[member].is_running() {
            self.procs[member].kill()?;
        }
        self.restart_at[member] = None;
        self.pending = Some(Pending {
            member,
            destroy_at: now + PRE_KILL,
        });
        Ok(())
    }

    /// Deletes every file of `store` (the database, its WAL and shared memory, any sibling
    /// named after it): a destroyed disk.
    pub fn destroy(store: &Path) -> anyhow::Result<()> {
        let dir = store.parent().context("a store path without a directory")?;
        let name = store
            .file_name()
            .context("a store path without a file name")?
            .to_string_lossy()
            .into_owned();
        for entry in std::fs::read_dir(dir).with_context(|| format!("read {}", dir.display()))? {
            let p = entry?.path();
            if p.file_name()
                .is_some_and(|f| f.to_string_lossy().starts_with(&name))
            {
                std::fs::remove_file(&p).with_context(|| format!("delete {}", p.display()))?;
            }
        }
        if store.exists() {
            bail!("{} still exists after its deletion", store.display());
        }
        Ok(())
    }

    /// `ken standby promote` on member `i`'s replica (its standby is down). Records the
    /// promotion and starts measuring the time to its first committed turn.
    pub fn promote(&mut self, program: &Path, member: usize) -> anyhow::Result<()> {
        if self.procs[member].is_running() {
            self.procs[member].kill()?;
        }
        let out = std::process::Command::new(program)
            .args(["standby", "promote", "--store"])
            .arg(&self.replicas[member])
            .output()
            .context("run `ken standby promote`")?;
        if !out.status.success() {
            bail!(
                "`ken standby promote --store {}` failed: {}",
                self.replicas[member].display(),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        let base_turns = turns(&self.replicas[member]).unwrap_or(0);
        self.promoted[member] = true;
        self.pending = None;
        self.first_turn_ms.push(None);
        self.measuring.push(Measure {
            member,
            promoted_at: Instant::now(),
            base_turns,
            slot: self.first_turn_ms.len() - 1,
        });
        Ok(())
    }

    /// Records the promoted members whose replica has committed a turn since the promotion.
    pub fn measure(&mut self) {
        let replicas = &self.replicas;
        let first = &mut self.first_turn_ms;
        self.measuring.retain(|m| match turns(&replicas[m.member]) {
            Some(t) if t > m.base_turns => {
                first[m.slot] = Some(m.promoted_at.elapsed().as_millis() as u64);
                false
            }
            _ => true,
        });
    }

    /// SIGKILLs every running standby (the end of a run).
    pub fn stop_all(&mut self) {
        for p in &mut self.procs {
            if p.is_running() {
                let _ = p.kill();
            }
        }
    }
}

/// Turns committed in `store`, if it can be read.
fn turns(store: &Path) -> Option<u64> {
    ken_store::Reader::open(store)
        .ok()?
        .meta()
        .ok()
        .map(|m| m.turns_committed)
}

fn absolute(p: &Path) -> PathBuf {
    std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf())
}

/// Fraction of the network epochs in which one member's link to its standby is faulted:
/// the TCP connection cut (both directions shut down at once), or one bit of the next
/// bytes relayed altered (either direction), half each.
pub const LINK_FAULT_SHARE: f64 = 0.5;

/// A TCP relay between a member and its standby (the member ships to [`Link::addr`]), through
/// which the harness cuts the connection or alters a byte. The standby's checks (the key's
/// tag, or the CRC32 without a key) must refuse an altered message and the primary reconnect
/// and ship again; a cut is a crash of the connection alone. Either is masked: the bank audit
/// over the replicas (and over a promoted one) finds nothing lost or applied twice.
pub struct Link {
    /// Where the member ships (the relay listens here).
    pub addr: SocketAddr,
    shared: std::sync::Arc<LinkShared>,
}

#[derive(Default)]
struct LinkShared {
    /// The connections now relayed (both ends of each), by number, for a cut.
    open: std::sync::Mutex<std::collections::BTreeMap<u64, [std::net::TcpStream; 2]>>,
    next: std::sync::atomic::AtomicU64,
    /// Set by the harness: the next chunk relayed (either direction) gets one bit flipped,
    /// at this seed's position.
    corrupt: std::sync::Mutex<Option<u64>>,
    /// Bits flipped so far (an order is counted when carried out, not when given).
    flipped: std::sync::atomic::AtomicU64,
}

impl Link {
    /// A relay to `to` on a free local port, serving from a thread of its own until the
    /// harness exits.
    pub fn start(to: SocketAddr) -> anyhow::Result<Link> {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")
            .context("bind a TCP port for a standby link relay")?;
        let addr = listener.local_addr()?;
        let shared = std::sync::Arc::new(LinkShared::default());
        let s = std::sync::Arc::clone(&shared);
        std::thread::Builder::new()
            .name(format!("link-{addr}"))
            .spawn(move || {
                for down in listener.incoming() {
                    let Ok(down) = down else { continue };
                    // The standby down (killed, paused past the timeout): the member sees
                    // its connection close, as it would without the relay.
                    let Ok(up) = std::net::TcpStream::connect_timeout(&to, Duration::from_secs(2))
                    else {
                        continue;
                    };
                    let _ = down.set_nodelay(true);
                    let _ = up.set_nodelay(true);
                    relay(&s, down, up);
                }
            })
            .context("spawn a standby link relay")?;
        Ok(Link { addr, shared })
    }

    /// Cuts every connection relayed now. False if there was none.
    pub fn cut(&self) -> bool {
        let open = std::mem::take(&mut *self.shared.open.lock().expect("not poisoned"));
        for s in open.values().flatten() {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
        !open.is_empty()
    }

    /// The next chunk relayed gets one bit altered (where, from `seed`).
    pub fn corrupt_next(&self, seed: u64) {
        *self.shared.corrupt.lock().expect("not poisoned") = Some(seed);
    }

    /// Bits altered so far.
    pub fn flipped(&self) -> u64 {
        self.shared
            .flipped
            .load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// Pumps `down` <-> `up` on two threads until either side ends or is cut.
fn relay(shared: &std::sync::Arc<LinkShared>, down: std::net::TcpStream, up: std::net::TcpStream) {
    let pair = (
        down.try_clone(),
        up.try_clone(),
        down.try_clone(),
        up.try_clone(),
    );
    let (Ok(d2), Ok(u2), Ok(d3), Ok(u3)) = pair else {
        return;
    };
    let id = shared
        .next
        .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    shared
        .open
        .lock()
        .expect("not poisoned")
        .insert(id, [d3, u3]);
    for (from, to) in [(down, u2), (up, d2)] {
        let s = std::sync::Arc::clone(shared);
        let _ = std::thread::Builder::new()
            .name("link-pump".into())
            .spawn(move || {
                pump(&s, from, to);
                s.open.lock().expect("not poisoned").remove(&id);
            });
    }
}

fn pump(shared: &LinkShared, mut from: std::net::TcpStream, mut to: std::net::TcpStream) {
    use std::io::{Read, Write};
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if let Some(seed) = shared.corrupt.lock().expect("not poisoned").take() {
            let bit = (seed % (n as u64 * 8)) as usize;
            buf[bit / 8] ^= 1 << (bit % 8);
            shared
                .flipped
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = to.shutdown(std::net::Shutdown::Both);
    let _ = from.shutdown(std::net::Shutdown::Both);
}
