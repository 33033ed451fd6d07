//! Cluster keys for the processes the tools start: `ken demo` and `ken torture` run their
//! clusters keyed by default (a fresh key in their working directory, the same code as
//! `ken keygen`), and `ken torture --rotate-key` rotates it mid-run.
//!
//! A [`KeyRing`] is the tool's view of the key files of one run: generation 0 is the key
//! the cluster starts with, each rotation adds one. A process's [`Held`] says which
//! generation it sends with and which older or newer ones it also accepts; [`Held::args`]
//! turns that into the app binaries' `--key-file` / `--accept-key-file` flags.
//!
//! The rotation ([`RotationStep`]) is SECURITY.md's procedure, three passes over the
//! processes, one restart at a time: (1) send with OLD, accept NEW; (2) send with NEW,
//! accept OLD; (3) NEW alone. At every moment every process accepts what every other sends,
//! so no frame is refused (`unknown_key_dropped` stays 0) and nothing waits.

use std::path::{Path, PathBuf};

use anyhow::Context;

/// What `ken demo` and `ken torture` print when run without a key (`--no-key`).
pub const NO_KEY_WARNING: &str = "WARNING: --no-key: the processes run WITHOUT a cluster key: \
anyone who can send them a datagram can forge messages, acknowledgements and client requests \
(SECURITY.md, unauthenticated mode)";

/// The key files of one run, oldest first, all in one directory.
#[derive(Debug, Clone)]
pub struct KeyRing {
    dir: PathBuf,
    files: Vec<PathBuf>,
}

/// The keys one process is started with: it sends with generation `send` and also accepts
/// the generations in `accept`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Held {
    pub send: usize,
    pub accept: Vec<usize>,
}

impl Held {
    /// Only generation `g`.
    pub fn only(g: usize) -> Held {
        Held {
            send: g,
            accept: Vec::new(),
        }
    }

    /// The app binaries' flags for these keys, from `ring`'s files.
    pub fn args(&self, ring: &KeyRing) -> Vec<String> {
        let mut a = vec![
            "--key-file".to_string(),
            ring.file(self.send).display().to_string(),
        ];
        for g in &self.accept {
            a.push("--accept-key-file".into());
            a.push(ring.file(*g).display().to_string());
        }
        a
    }
}

impl KeyRing {
    /// Writes a fresh key (generation 0) to `dir/key-0.key` (mode 0600), creating `dir`.
    pub fn create(dir: &Path) -> anyhow::Result<KeyRing> {
        std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
        let mut ring = KeyRing {
            dir: dir.to_path_buf(),
            files: Vec::new(),
        };
        ring.generate()?;
        Ok(ring)
    }

    /// Writes the next generation's key; returns its generation.
    pub fn generate(&mut self) -> anyhow::Result<usize> {
        let g = self.files.len();
        let path = self.dir.join(format!("key-{g}.key"));
        ken::ClusterKey::write_new(&path)?;
        self.files.push(path);
        Ok(g)
    }

    /// The newest generation.
    pub fn newest(&self) -> usize {
        self.files.len() - 1
    }

    /// The file of generation `g`.
    pub fn file(&self, g: usize) -> &Path {
        &self.files[g]
    }

    /// The key of generation `g`, read back from its file.
    pub fn key(&self, g: usize) -> anyhow::Result<ken::ClusterKey> {
        Ok(ken::ClusterKey::load(self.file(g))?)
    }
}

/// One restart of a key rotation from generation `old` to `new`: process `member` is
/// restarted holding `held`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RotationStep {
    pub member: usize,
    pub held: Held,
}

/// The restarts of one rotation of `members` processes from `old` to `new`, in order: three
/// passes (accept NEW; send NEW and accept OLD; NEW alone).
pub fn rotation_plan(members: usize, old: usize, new: usize) -> Vec<RotationStep> {
    let passes = [
        Held {
            send: old,
            accept: vec![new],
        },
        Held {
            send: new,
            accept: vec![old],
        },
        Held::only(new),
    ];
    passes
        .iter()
        .flat_map(|held| {
            (0..members).map(move |member| RotationStep {
                member,
                held: held.clone(),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rotation_plan_never_leaves_two_processes_unable_to_hear_each_other() {
        let n = 4;
        let mut held = vec![Held::only(0); n];
        let hears = |a: &Held, b: &Held| a.send == b.send || b.accept.contains(&a.send);
        for step in rotation_plan(n, 0, 1) {
            held[step.member] = step.held;
            for a in &held {
                for b in &held {
                    assert!(hears(a, b), "{a:?} -> {b:?} in {held:?}");
                }
            }
        }
        assert!(held.iter().all(|h| *h == Held::only(1)), "{held:?}");
    }

    #[test]
    fn key_files_are_fresh_and_private() {
        let dir = tempfile::tempdir().unwrap();
        let mut ring = KeyRing::create(&dir.path().join("keys")).unwrap();
        let g = ring.generate().unwrap();
        assert_eq!((g, ring.newest()), (1, 1));
        assert_ne!(ring.key(0).unwrap().id(), ring.key(1).unwrap().id());
        assert_eq!(ken::transport::auth::loose_permissions(ring.file(1)), None);
        let args = Held {
            send: 1,
            accept: vec![0],
        }
        .args(&ring);
        assert_eq!(args[0], "--key-file");
        assert!(args[1].ends_with("key-1.key") && args[3].ends_with("key-0.key"));
    }
}
