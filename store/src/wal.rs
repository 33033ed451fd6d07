//! Reading SQLite's write-ahead log ourselves, to tell a torn tail from lost history.
//!
//! SQLite reads a WAL from its 32-byte header frame by frame and stops at the first frame
//! whose salts or cumulative checksum do not match
//! (<https://www.sqlite.org/fileformat2.html#walformat>); the log ends at the last commit
//! frame before that point. After a power cut that is right: the last transaction may be
//! torn (partly written, never acknowledged, since its fsync did not return). But a damaged
//! frame in the middle of the log (a flipped bit, a zeroed page, a damaged header) makes
//! SQLite silently drop every later commit, acknowledged ones included.
//!
//! [`scan`] walks the log as SQLite does and then keeps going: every frame's checksum is
//! also checked against its predecessor's *stored* checksum (a "link"), which proves that the
//! two frames were written one after the other in the current generation (same salts) even
//! when the chain from the header is broken further up. The log is **damaged** (history
//! lost) when, after the first frame SQLite rejects, there is a linked commit frame *and*
//! after it a linked frame of the same generation: that later frame belongs to a later
//! transaction, which SQLite writes only after the earlier one's commit returned (its fsync
//! done, `synchronous=FULL`), so the rejected frame belonged to a durable transaction and
//! its loss is not a torn tail. A torn last transaction never produces that shape: the
//! frames after it belong to older generations (other salts) or are the zeros the
//! `ken-wal` shim preallocates.
//!
//! Two shapes the rule does not prove and [`scan`] therefore accepts: damage to the last
//! durable transaction (indistinguishable from a torn tail here; the owner lock file's
//! commit witness and the peers catch it), and damage to the commit frame of the last but
//! one transaction (the single transaction after it could be the damaged one's own tail).
//!
//! Invariants: [`scan`] never panics on any input and reads only the bytes it is given;
//! `last_commit_frame` is exactly the end of the log SQLite recovers; `damage` is `Some` only
//! on the proof above (false alarms need a 64-bit checksum collision).

/// The WAL header's magic, little-endian checksums; `| 1` for big-endian ones.
const WAL_MAGIC: u32 = 0x377f_0682;
/// The only WAL format version SQLite writes.
const WAL_VERSION: u32 = 3_007_000;
/// Bytes of the WAL header.
pub const WAL_HEADER_BYTES: usize = 32;
/// Bytes of a frame header.
pub const FRAME_HEADER_BYTES: usize = 24;

/// What a scan of a WAL file found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WalState {
    /// Size of the file (0 when there is none).
    pub bytes: u64,
    /// False when the file does not exist.
    pub exists: bool,
    /// The header: valid (with its generation), or why not.
    pub header: WalHeader,
    /// Page size used to lay out frames (the header's, else the database's).
    pub page_size: u32,
    /// Whole frames the file has room for.
    pub frame_slots: u64,
    /// Frames SQLite reads: the unbroken chain from the header.
    pub frames_valid: u64,
    /// Commit frames among them (transactions SQLite recovers from this log).
    pub commits: u64,
    /// 1-based index of the last commit frame SQLite recovers (its `mxFrame`), 0 if none.
    pub last_commit_frame: u64,
    /// Frames of the current generation after `last_commit_frame` that SQLite ignores: a
    /// torn or unfinished last transaction, or, with `damage`, lost ones.
    pub frames_past_commit: u64,
    /// True if a frame SQLite recovers (up to `last_commit_frame`) holds page 1, so the
    /// database file's header is not the current one.
    pub page_one_logged: bool,
    /// Proof of lost history, if any.
    pub damage: Option<WalDamage>,
}

/// The WAL header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WalHeader {
    /// No file, an empty one, or fewer than 32 bytes, or zeros (the `ken-wal` shim
    /// preallocates WALs with zeros): no log.
    Empty,
    /// A valid header: the current generation.
    Valid {
        /// SQLite's checkpoint sequence number (counts WAL restarts).
        checkpoint_seq: u32,
        salt1: u32,
        salt2: u32,
    },
    /// Not a valid header (SQLite reads the log as empty): why.
    Invalid(String),
}

/// Committed history SQLite would silently drop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WalDamage {
    /// 1-based index of the first frame SQLite rejects (0: the header itself).
    pub frame: u64,
    /// Byte offset of that frame (0 for the header).
    pub offset: u64,
    /// 1-based index of a later frame of the same generation that proves it (see the module
    /// docs).
    pub proof_frame: u64,
    /// Linked commit frames after the damage: committed transactions SQLite would drop.
    pub commits_lost: u64,
    /// What is wrong with the rejected frame.
    pub detail: String,
}

impl WalState {
    /// The state of a missing WAL.
    fn absent(page_size: u32) -> WalState {
        WalState {
            bytes: 0,
            exists: false,
            header: WalHeader::Empty,
            page_size,
            frame_slots: 0,
            frames_valid: 0,
            commits: 0,
            last_commit_frame: 0,
            frames_past_commit: 0,
            page_one_logged: false,
            damage: None,
        }
    }
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// SQLite's WAL checksum (`walChecksumBytes`): over 32-bit words, in pairs, continuing from
/// `seed`. `big` reads the words big-endian (the magic's low bit).
fn checksum(big: bool, seed: (u32, u32), data: &[u8]) -> (u32, u32) {
    let (mut s1, mut s2) = seed;
    for pair in data.chunks_exact(8) {
        let (a, b) = if big {
            (be32(pair, 0), be32(pair, 4))
        } else {
            (
                u32::from_le_bytes([pair[0], pair[1], pair[2], pair[3]]),
                u32::from_le_bytes([pair[4], pair[5], pair[6], pair[7]]),
            )
        };
        s1 = s1.wrapping_add(a).wrapping_add(s2);
        s2 = s2.wrapping_add(b).wrapping_add(s1);
    }
    (s1, s2)
}

/// A frame's header fields.
#[derive(Debug, Clone, Copy)]
struct FrameHeader {
    page: u32,
    commit_size: u32,
    salts: (u32, u32),
    stored: (u32, u32),
}

fn frame_header(f: &[u8]) -> FrameHeader {
    FrameHeader {
        page: be32(f, 0),
        commit_size: be32(f, 4),
        salts: (be32(f, 8), be32(f, 12)),
        stored: (be32(f, 16), be32(f, 20)),
    }
}

/// True if `page_size` is one SQLite uses.
fn valid_page_size(page_size: u32) -> bool {
    (512..=65536).contains(&page_size) && page_size.is_power_of_two()
}

/// Scans WAL bytes (`None`: no file). `db_page_size` lays out the frames when the header is
/// not valid (the database file's page size; 4096 if unknown).
pub fn scan(bytes: Option<&[u8]>, db_page_size: u32) -> WalState {
    let Some(bytes) = bytes else {
        return WalState::absent(fallback_page_size(db_page_size));
    };
    let mut scanner = Scanner::new(
        &bytes[..bytes.len().min(WAL_HEADER_BYTES)],
        bytes.len() as u64,
        db_page_size,
    );
    if let Some(frame_bytes) = scanner.frame_bytes() {
        for f in bytes[WAL_HEADER_BYTES.min(bytes.len())..].chunks_exact(frame_bytes) {
            scanner.feed(f);
        }
    }
    scanner.finish()
}

/// Frames [`scan_file`] reads per system call.
const SCAN_FRAMES_PER_READ: usize = 64;

/// [`scan`] of the file at `path`, read in chunks of [`SCAN_FRAMES_PER_READ`] frames (no copy
/// of the whole file: a WAL is preallocated to several MiB). `Ok` of an absent state if there
/// is no file.
pub fn scan_file(path: &std::path::Path, db_page_size: u32) -> std::io::Result<WalState> {
    use std::io::Read;
    let mut file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Ok(WalState::absent(fallback_page_size(db_page_size)))
        }
        Err(e) => return Err(e),
    };
    let len = file.metadata()?.len();
    let mut header = Vec::with_capacity(WAL_HEADER_BYTES);
    (&mut file)
        .take(WAL_HEADER_BYTES as u64)
        .read_to_end(&mut header)?;
    let mut scanner = Scanner::new(&header, len, db_page_size);
    let Some(frame_bytes) = scanner.frame_bytes() else {
        return Ok(scanner.finish());
    };
    let mut buffer = vec![0u8; frame_bytes * SCAN_FRAMES_PER_READ];
    loop {
        // Fill the buffer (short reads are possible), then feed whole frames.
        let mut filled = 0;
        while filled < buffer.len() {
            match file.read(&mut buffer[filled..])? {
                0 => break,
                n => filled += n,
            }
        }
        for f in buffer[..filled].chunks_exact(frame_bytes) {
            scanner.feed(f);
        }
        if filled < buffer.len() {
            return Ok(scanner.finish());
        }
    }
}

fn fallback_page_size(db_page_size: u32) -> u32 {
    if valid_page_size(db_page_size) {
        db_page_size
    } else {
        4096
    }
}

/// The single forward pass of a scan: the header, then every whole frame in order.
struct Scanner {
    state: WalState,
    big: bool,
    /// Why the header is not valid (`None`: valid).
    header_problem: Option<String>,
    header_seed: (u32, u32),
    header_salts: (u32, u32),
    /// Frames fed so far.
    index: usize,
    /// Still on SQLite's chain from the header.
    on_chain: bool,
    running: (u32, u32),
    page_one_at: Option<usize>,
    /// After the chain broke: the generation's salts, once known.
    salts: Option<(u32, u32)>,
    prev: Option<FrameHeader>,
    first_bad: Option<usize>,
    first_bad_header: Option<FrameHeader>,
    linked_commits: Vec<usize>,
    last_linked: Option<usize>,
    proof: Option<usize>,
    past: u64,
}

impl Scanner {
    /// `header`: the file's first (up to) 32 bytes; `len`: the file's size.
    fn new(header: &[u8], len: u64, db_page_size: u32) -> Scanner {
        let mut state = WalState::absent(fallback_page_size(db_page_size));
        state.exists = true;
        state.bytes = len;
        let mut scanner = Scanner {
            state,
            big: false,
            header_problem: Some("no header".into()),
            header_seed: (0, 0),
            header_salts: (0, 0),
            index: 0,
            on_chain: false,
            running: (0, 0),
            page_one_at: None,
            salts: None,
            prev: None,
            first_bad: None,
            first_bad_header: None,
            linked_commits: Vec::new(),
            last_linked: None,
            proof: None,
            past: 0,
        };
        if header.len() < WAL_HEADER_BYTES {
            return scanner;
        }
        let h = header;
        let zero_header = h.iter().all(|&b| b == 0);
        let magic = be32(h, 0);
        let big = magic & 1 == 1;
        let header_page = be32(h, 8);
        let problem = if zero_header {
            Some("the header is zeros".to_string())
        } else if magic & !1 != WAL_MAGIC {
            Some(format!("bad magic {magic:#010x}"))
        } else if be32(h, 4) != WAL_VERSION {
            Some(format!("unknown WAL version {}", be32(h, 4)))
        } else if !valid_page_size(header_page) {
            Some(format!("bad page size {header_page}"))
        } else if checksum(big, (0, 0), &h[..24]) != (be32(h, 24), be32(h, 28)) {
            Some("header checksum mismatch".to_string())
        } else {
            None
        };
        scanner.big = big;
        scanner.header_seed = (be32(h, 24), be32(h, 28));
        scanner.header_salts = (be32(h, 16), be32(h, 20));
        match &problem {
            None => {
                scanner.state.page_size = header_page;
                scanner.state.header = WalHeader::Valid {
                    checkpoint_seq: be32(h, 12),
                    salt1: scanner.header_salts.0,
                    salt2: scanner.header_salts.1,
                };
                scanner.on_chain = true;
                scanner.running = scanner.header_seed;
                scanner.salts = Some(scanner.header_salts);
            }
            Some(why) if !zero_header => scanner.state.header = WalHeader::Invalid(why.clone()),
            Some(_) => {}
        }
        if problem.is_some() {
            // SQLite reads no frame: the "break" is at the header.
            scanner.first_bad = Some(0);
        }
        scanner.header_problem = problem;
        let frame_bytes = FRAME_HEADER_BYTES + scanner.state.page_size as usize;
        scanner.state.frame_slots =
            len.saturating_sub(WAL_HEADER_BYTES as u64) / frame_bytes as u64;
        scanner
    }

    /// Bytes of a frame, or `None` when the file has no header to lay frames after.
    fn frame_bytes(&self) -> Option<usize> {
        (self.state.bytes >= WAL_HEADER_BYTES as u64)
            .then(|| FRAME_HEADER_BYTES + self.state.page_size as usize)
    }

    /// Checksum of frame `f` from a seed: its first 8 bytes, then its page.
    fn sum(&self, seed: (u32, u32), f: &[u8]) -> (u32, u32) {
        let s = checksum(self.big, seed, &f[..8]);
        checksum(self.big, s, &f[FRAME_HEADER_BYTES..])
    }

    fn feed(&mut self, f: &[u8]) {
        let i = self.index;
        self.index += 1;
        let fh = frame_header(f);
        if self.on_chain {
            if fh.salts == self.header_salts
                && fh.page != 0
                && self.sum(self.running, f) == fh.stored
            {
                self.running = fh.stored;
                let valid = i + 1;
                self.state.frames_valid = valid as u64;
                if fh.page == 1 && self.page_one_at.is_none() {
                    self.page_one_at = Some(valid);
                }
                if fh.commit_size != 0 {
                    self.state.commits += 1;
                    self.state.last_commit_frame = valid as u64;
                }
                self.prev = Some(fh);
                return;
            }
            self.on_chain = false;
            self.first_bad = Some(i);
            self.first_bad_header = Some(fh);
            self.prev = Some(fh);
            return;
        }
        // After the first rejected frame (or a bad header): is this frame linked to its
        // predecessor in one generation? (Frame 0 only to the header's stored checksum.)
        let seed = match (i, self.prev) {
            (0, _) => (fh.salts == self.header_salts).then_some(self.header_seed),
            (_, Some(prev)) => (prev.salts == fh.salts).then_some(prev.stored),
            (_, None) => None,
        };
        self.prev = Some(fh);
        let linked = fh.page != 0
            && self.salts.is_none_or(|s| s == fh.salts)
            && seed.is_some_and(|seed| self.sum(seed, f) == fh.stored)
            && self.first_bad.is_some_and(|b| i > b);
        if !linked {
            return;
        }
        if self.salts.is_none() {
            // A bad header: the generation is that of the first linked frames.
            self.salts = Some(fh.salts);
        }
        self.past += 1;
        if !self.linked_commits.is_empty() && self.proof.is_none() {
            self.proof = Some(i);
        }
        self.last_linked = Some(i);
        if fh.commit_size != 0 {
            self.linked_commits.push(i);
        }
    }

    fn finish(mut self) -> WalState {
        let last_commit = self.state.last_commit_frame as usize;
        let valid = self.state.frames_valid as usize;
        self.state.page_one_logged = self.page_one_at.is_some_and(|at| at <= last_commit);
        // Frames after the last commit that continue the chain (an unfinished transaction),
        // and the linked ones after the break.
        self.state.frames_past_commit = (valid - last_commit) as u64 + self.past;
        if let (Some(p), Some(last), Some(first_bad)) =
            (self.proof, self.last_linked, self.first_bad)
        {
            // The commits proven durable: every linked commit frame with a linked frame after it.
            let lost = self.linked_commits.iter().filter(|&&c| c < last).count() as u64;
            let frame_bytes = FRAME_HEADER_BYTES + self.state.page_size as usize;
            let (frame_no, offset, detail) = match (&self.header_problem, self.first_bad_header) {
                (Some(why), _) => (
                    0,
                    0,
                    format!("the WAL header is damaged ({why}), so SQLite reads no frame"),
                ),
                (None, Some(fh)) => {
                    let why = if fh.salts != self.header_salts {
                        "its salts are not the header's"
                    } else if fh.page == 0 {
                        "its page number is 0"
                    } else {
                        "its checksum does not continue the chain"
                    };
                    (
                        first_bad as u64 + 1,
                        (WAL_HEADER_BYTES + first_bad * frame_bytes) as u64,
                        format!("frame {} is damaged: {why}", first_bad + 1),
                    )
                }
                (None, None) => unreachable!("a break on the chain records its frame"),
            };
            self.state.damage = Some(WalDamage {
                frame: frame_no,
                offset,
                proof_frame: p as u64 + 1,
                commits_lost: lost,
                detail,
            });
        }
        self.state
    }
}

/// The page size in a database file's header (bytes 16..18, big-endian; 1 means 65536), if
/// the bytes look like one.
pub fn db_page_size(header: &[u8]) -> Option<u32> {
    if header.len() < 18 || &header[..16] != b"SQLite format 3\0" {
        return None;
    }
    let raw = u16::from_be_bytes([header[16], header[17]]);
    let size = if raw == 1 { 65536 } else { u32::from(raw) };
    valid_page_size(size).then_some(size)
}

#[cfg(test)]
mod tests {
    use super::*;

    const PAGE: u32 = 512;

    /// Builds a WAL as SQLite writes it: `txs` transactions of the given page counts.
    fn wal(txs: &[u32], salts: (u32, u32)) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&WAL_MAGIC.to_be_bytes());
        out.extend_from_slice(&WAL_VERSION.to_be_bytes());
        out.extend_from_slice(&PAGE.to_be_bytes());
        out.extend_from_slice(&7u32.to_be_bytes());
        out.extend_from_slice(&salts.0.to_be_bytes());
        out.extend_from_slice(&salts.1.to_be_bytes());
        let mut s = checksum(false, (0, 0), &out[..24]);
        out.extend_from_slice(&s.0.to_be_bytes());
        out.extend_from_slice(&s.1.to_be_bytes());
        let mut page = 1u32;
        for (t, &n) in txs.iter().enumerate() {
            for k in 0..n {
                let mut f = Vec::new();
                f.extend_from_slice(&page.to_be_bytes());
                let commit = if k + 1 == n { 10 + t as u32 } else { 0 };
                f.extend_from_slice(&commit.to_be_bytes());
                f.extend_from_slice(&salts.0.to_be_bytes());
                f.extend_from_slice(&salts.1.to_be_bytes());
                let data: Vec<u8> = (0..PAGE)
                    .map(|i| (i as u8) ^ (page as u8) ^ t as u8)
                    .collect();
                s = checksum(false, s, &f[..8]);
                s = checksum(false, s, &data);
                f.extend_from_slice(&s.0.to_be_bytes());
                f.extend_from_slice(&s.1.to_be_bytes());
                f.extend_from_slice(&data);
                out.extend_from_slice(&f);
                page += 1;
            }
        }
        out
    }

    fn frame_at(i: usize) -> usize {
        WAL_HEADER_BYTES + i * (FRAME_HEADER_BYTES + PAGE as usize)
    }

    #[test]
    fn an_intact_log_is_read_to_its_last_commit() {
        let w = wal(&[2, 3, 1], (1, 2));
        let s = scan(Some(&w), 4096);
        assert_eq!(s.page_size, PAGE);
        assert_eq!((s.frames_valid, s.commits, s.last_commit_frame), (6, 3, 6));
        assert_eq!(s.frames_past_commit, 0);
        assert_eq!(s.damage, None);
        assert!(matches!(
            s.header,
            WalHeader::Valid {
                salt1: 1,
                salt2: 2,
                ..
            }
        ));
    }

    #[test]
    fn absent_empty_short_and_zero_logs_are_empty() {
        assert_eq!(scan(None, 4096).header, WalHeader::Empty);
        for w in [vec![], vec![7u8; 10], vec![0u8; 100_000]] {
            let s = scan(Some(&w), 4096);
            assert_eq!(s.header, WalHeader::Empty);
            assert_eq!((s.commits, s.damage.clone()), (0, None));
        }
    }

    #[test]
    fn a_torn_last_transaction_is_a_tail_not_damage() {
        let w = wal(&[2, 3, 4], (1, 2));
        // Any frame of the last transaction damaged, even with the commit frame intact.
        for f in 5..9 {
            let mut bad = w.clone();
            bad[frame_at(f) + 100] ^= 1;
            let s = scan(Some(&bad), 4096);
            assert_eq!(s.damage, None, "frame {f}");
            assert_eq!(s.last_commit_frame, 5);
            assert_eq!(s.commits, 2);
        }
        // Cut short, with zeros after (the shim's preallocation).
        let mut cut = w[..frame_at(7)].to_vec();
        cut.extend(vec![0u8; 50_000]);
        let s = scan(Some(&cut), 4096);
        assert_eq!(
            (s.damage, s.last_commit_frame, s.frames_past_commit),
            (None, 5, 2)
        );
    }

    #[test]
    fn damage_before_two_later_transactions_is_proven() {
        let w = wal(&[2, 3, 4], (1, 2));
        // Frame 1 (first transaction) damaged: transactions 2 and 3 follow.
        let mut bad = w.clone();
        bad[frame_at(0) + 300] ^= 0x80;
        let s = scan(Some(&bad), 4096);
        let d = s.damage.expect("damage");
        assert_eq!((d.frame, s.last_commit_frame, s.commits), (1, 0, 0));
        assert_eq!(d.offset, frame_at(0) as u64);
        // Frame 2 commits the damaged transaction, frame 3 begins the next one.
        assert_eq!((d.proof_frame, d.commits_lost), (3, 2), "{d:?}");
        // Frame 3 (second transaction): the third proves the second durable.
        let mut bad = w.clone();
        bad[frame_at(2) + 40] ^= 1;
        let s = scan(Some(&bad), 4096);
        assert_eq!(s.damage.expect("damage").frame, 3);
        assert_eq!(s.last_commit_frame, 2);
        // A zeroed 4 KiB stretch across frames 2 and 3.
        let mut zeroed = w.clone();
        zeroed[frame_at(1)..frame_at(1) + 600].fill(0);
        assert!(scan(Some(&zeroed), 4096).damage.is_some());
    }

    #[test]
    fn a_damaged_header_with_committed_frames_after_it_is_proven() {
        let w = wal(&[1, 1, 1], (5, 6));
        let mut bad = w.clone();
        bad[17] ^= 4; // a salt
        let s = scan(Some(&bad), PAGE);
        assert!(matches!(s.header, WalHeader::Invalid(_)));
        assert_eq!(s.commits, 0);
        assert_eq!(s.damage.expect("damage").frame, 0);
        // Zeroed header: the page size comes from the database.
        let mut z = w.clone();
        z[..WAL_HEADER_BYTES].fill(0);
        assert!(scan(Some(&z), PAGE).damage.is_some());
    }

    #[test]
    fn frames_of_an_older_generation_after_the_log_are_not_damage() {
        let old = wal(&[3, 3, 3], (1, 2));
        let new = wal(&[1, 1], (2, 99));
        let mut w = old.clone();
        w[..new.len()].copy_from_slice(&new);
        let s = scan(Some(&w), 4096);
        assert_eq!((s.damage, s.commits, s.last_commit_frame), (None, 2, 2));
    }

    #[test]
    fn scanning_a_file_in_chunks_finds_what_scanning_its_bytes_finds() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x-wal");
        let w = wal(&[2, 3, 4, 70, 5], (1, 2));
        let mut cases = vec![
            w.clone(),
            w[..frame_at(75) + 100].to_vec(),
            vec![],
            w[..20].to_vec(),
        ];
        for at in [frame_at(0) + 50, frame_at(3) + 200, frame_at(80) + 9, 17] {
            let mut bad = w.clone();
            bad[at] ^= 2;
            cases.push(bad);
        }
        for bytes in cases {
            std::fs::write(&path, &bytes).unwrap();
            assert_eq!(scan_file(&path, 4096).unwrap(), scan(Some(&bytes), 4096));
        }
        std::fs::remove_file(&path).unwrap();
        assert_eq!(scan_file(&path, 4096).unwrap(), scan(None, 4096));
    }

    #[test]
    fn scanning_garbage_never_panics() {
        let mut x = 0x1234_5678u64;
        for len in [0usize, 31, 32, 33, 600, 5000] {
            for _ in 0..50 {
                let w: Vec<u8> = (0..len)
                    .map(|_| {
                        x ^= x << 13;
                        x ^= x >> 7;
                        x ^= x << 17;
                        x as u8
                    })
                    .collect();
                let _ = scan(Some(&w), 512);
            }
        }
    }
}
