//! Async UDP endpoint: sends and receives [`Frame`]s over one `tokio` socket, through the
//! fault layer of [`crate::faults`].
//!
//! An [`Endpoint`] is used through `&self` from any number of tasks (share it in an `Arc`).
//! [`Endpoint::send`] encodes a frame, asks the [`FaultInjector`] what to do with it, and
//! puts zero, one or two datagrams on the wire, now or later through the held-datagram queue.
//! [`Endpoint::recv`] returns the next datagram that decodes; anything else (junk, truncated,
//! corrupted, foreign traffic, or a datagram from a partitioned address) is dropped and
//! counted in [`EndpointStats`], never surfaced.
//!
//! With a [`Keyring`] ([`EndpointOptions::keys`]), every frame is opened with it
//! ([`Frame::open`]): untagged peer frames, frames tagged with a key it does not hold, and
//! frames whose tag fails are dropped and counted by reason before anything else of them is
//! parsed; frames to send are sealed as their [`Frame::auth`] asks ([`Keyring::seal_key`]).
//!
//! Invariants:
//! - Every datagram received or fault applied is counted; counters only grow.
//! - Held (delayed or reordered) datagrams live in one queue bounded by
//!   [`MAX_HELD_DATAGRAMS`] and [`MAX_HELD_BYTES`], drained by one task; beyond the bounds
//!   a datagram is dropped and counted in [`EndpointStats::held_overflow_dropped`].
//! - The endpoint owns at most two background tasks (the held-datagram drainer, and the
//!   `KEN_FAULTS_FILE` watcher if enabled); both are aborted when the endpoint is dropped,
//!   and held datagrams still pending are then lost, like datagrams in a crashed host.
//! - No lock is held across an `.await`.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime};

use tokio::net::UdpSocket;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::auth::{FrameKeys, Keyring, NoKeys};
use crate::faults::{
    FaultConfig, FaultInjector, Transmission, Verdict, FAULTS_FILE_ENV, MAX_FAULT_SPEC_BYTES,
};
use crate::frame::{Auth, DecodeError, EncodeError, Frame, MAX_FRAME_BYTES};

/// Most datagrams held back by the delay and reorder faults at once.
pub const MAX_HELD_DATAGRAMS: usize = 10_000;

/// Most bytes held back by the delay and reorder faults at once.
pub const MAX_HELD_BYTES: usize = 64 << 20;

/// Socket send and receive buffer size requested (the kernel may cap it, e.g. Linux at
/// `net.core.rmem_max`), so a busy receiver does not drop bursts.
pub const SOCKET_BUFFER_BYTES: usize = 8 << 20;

/// How often the `KEN_FAULTS_FILE` watcher looks at the file.
pub const FAULTS_FILE_POLL_INTERVAL: Duration = Duration::from_millis(100);

/// Receive buffer: one more byte than the largest frame, so an oversize datagram is seen as
/// [`DecodeError::TooLong`](crate::DecodeError::TooLong) rather than silently cut.
const RECV_BUFFER_BYTES: usize = MAX_FRAME_BYTES + 1;

/// Receive buffers kept for reuse by concurrent `recv` calls.
const MAX_POOLED_BUFFERS: usize = 8;

/// Counters of an endpoint, monotonic over its life.
///
/// `frames_sent`/`bytes_sent` count datagrams the socket accepted (duplicates, corrupted and
/// held copies included, each when it actually leaves); `frames_received`/`bytes_received`
/// count datagrams that decoded and were returned by [`Endpoint::recv`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EndpointStats {
    pub frames_sent: u64,
    pub frames_received: u64,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    /// Datagrams that did not decode (bad CRC, truncated, foreign): dropped.
    pub junk_dropped: u64,
    /// Untagged frames of a kind this endpoint takes only tagged (it has a key): dropped.
    pub untagged_dropped: u64,
    /// Frames tagged with a key this endpoint does not hold (another cluster's, a retired
    /// one, or any key when it has none): dropped.
    pub unknown_key_dropped: u64,
    /// Frames whose tag did not check out (forged or altered): dropped.
    pub bad_tag_dropped: u64,
    /// Frames accepted under an older key of the keyring (a rotation in progress: once this
    /// stops growing everywhere, the old key can go).
    pub old_key_frames: u64,
    pub send_errors: u64,
    pub faults_dropped: u64,
    pub faults_duplicated: u64,
    pub faults_delayed: u64,
    pub faults_corrupted: u64,
    pub faults_truncated: u64,
    /// Datagrams dropped by a partition, outbound and inbound.
    pub faults_partitioned: u64,
    /// Datagrams held back by the reorder fault.
    pub faults_reordered: u64,
    /// Held datagrams dropped because the held queue was full.
    pub held_overflow_dropped: u64,
    /// Transient receive errors skipped (e.g. an ICMP "port unreachable" on some platforms).
    pub recv_errors: u64,
    /// Fault configurations applied from `KEN_FAULTS_FILE`.
    pub fault_reloads: u64,
    /// `KEN_FAULTS_FILE` contents rejected (unreadable, too long, or not parsing).
    pub fault_reload_errors: u64,
}

/// Why a frame was not sent.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SendError {
    /// The frame does not encode (too large). Nothing was sent.
    #[error("cannot encode frame: {0}")]
    Encode(#[from] EncodeError),
    /// The socket refused a datagram. Counted in `send_errors`; that copy was not sent (with
    /// the duplicate fault, the other copy may have been).
    #[error("cannot send datagram: {0}")]
    Io(#[from] io::Error),
}

/// Where an endpoint takes run-time fault reconfiguration from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum FaultsFile {
    /// The file named by `KEN_FAULTS_FILE`, if that variable is set and not empty.
    #[default]
    FromEnv,
    /// This file.
    Path(PathBuf),
    /// No file: faults change only through [`Endpoint::set_faults`].
    Disabled,
}

/// How to bind an endpoint. [`Default`]: no faults, `KEN_FAULTS_FILE` honoured.
#[derive(Debug, Clone, Default)]
pub struct EndpointOptions {
    /// The initial fault configuration.
    pub faults: FaultConfig,
    /// The file watched for new fault configurations.
    pub faults_file: FaultsFile,
    /// The cluster's keys: `None` is unauthenticated mode (untagged frames only).
    pub keys: Option<Arc<Keyring>>,
}

/// A bound UDP socket that speaks frames.
#[derive(Debug)]
pub struct Endpoint {
    inner: Arc<Inner>,
    local_addr: SocketAddr,
    tasks: Vec<JoinHandle<()>>,
}

#[derive(Debug)]
struct Inner {
    socket: UdpSocket,
    stats: AtomicStats,
    /// Mirrors `injector.config().is_active()`: lets the fault-free path skip the lock.
    faults_active: AtomicBool,
    injector: Mutex<FaultInjector>,
    held: Mutex<HeldQueue>,
    /// Wakes the drainer when a datagram is held.
    held_added: Notify,
    buffers: Mutex<Vec<Vec<u8>>>,
    keys: Option<Arc<Keyring>>,
}

/// A datagram waiting for its time.
#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Held {
    due: Instant,
    /// Insertion order: datagrams due at the same instant leave in the order they were held.
    order: u64,
    to: SocketAddr,
    bytes: Vec<u8>,
}

#[derive(Debug, Default)]
struct HeldQueue {
    heap: BinaryHeap<Reverse<Held>>,
    bytes: usize,
    next_order: u64,
}

/// Takes a lock, ignoring poisoning: every critical section leaves its data consistent.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Endpoint {
    /// Binds `addr` (port 0 picks a free port) with no faults. If `KEN_FAULTS_FILE` is set,
    /// the faults in that file apply and follow its changes (see [`FaultsFile::FromEnv`]).
    ///
    /// Must be called inside a tokio runtime (an error otherwise).
    pub fn bind(addr: SocketAddr) -> io::Result<Endpoint> {
        Endpoint::bind_with_options(addr, EndpointOptions::default())
    }

    /// Binds `addr` with an initial fault configuration (`KEN_FAULTS_FILE` honoured too).
    pub fn bind_with_faults(addr: SocketAddr, faults: FaultConfig) -> io::Result<Endpoint> {
        Endpoint::bind_with_options(
            addr,
            EndpointOptions {
                faults,
                ..EndpointOptions::default()
            },
        )
    }

    /// Binds `addr` with explicit options.
    ///
    /// If a faults file is configured and exists, its content (when it parses) replaces
    /// `options.faults` before this returns, and is re-read every
    /// [`FAULTS_FILE_POLL_INTERVAL`] when its modification time, length or inode changes.
    pub fn bind_with_options(addr: SocketAddr, options: EndpointOptions) -> io::Result<Endpoint> {
        let runtime = tokio::runtime::Handle::try_current().map_err(io::Error::other)?;
        let socket = bind_socket(addr)?;
        let local_addr = socket.local_addr()?;
        let inner = Arc::new(Inner {
            socket,
            stats: AtomicStats::default(),
            faults_active: AtomicBool::new(false),
            injector: Mutex::new(FaultInjector::new(FaultConfig::default())),
            held: Mutex::new(HeldQueue::default()),
            held_added: Notify::new(),
            buffers: Mutex::new(Vec::new()),
            keys: options.keys,
        });
        inner.set_faults(local_addr, options.faults);
        let mut tasks = vec![runtime.spawn(drain_held(Arc::clone(&inner)))];
        let faults_file = match options.faults_file {
            FaultsFile::FromEnv => std::env::var_os(FAULTS_FILE_ENV)
                .filter(|path| !path.is_empty())
                .map(PathBuf::from),
            FaultsFile::Path(path) => Some(path),
            FaultsFile::Disabled => None,
        };
        if let Some(path) = faults_file {
            let mut watcher = FaultsFileWatcher { path, stamp: None };
            watcher.poll(&inner, local_addr);
            tasks.push(runtime.spawn(watch_faults_file(Arc::clone(&inner), watcher, local_addr)));
        }
        Ok(Endpoint {
            inner,
            local_addr,
            tasks,
        })
    }

    /// The bound address (with the port chosen when binding port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Encodes `frame` and sends it to `to` through the fault layer.
    ///
    /// `Ok` means the datagram was handed to the socket, or dropped, or held by an injected
    /// fault (all counted). Cancel-safe in the sense that cancelling may lose the frame,
    /// which UDP may do anyway.
    pub async fn send(&self, to: SocketAddr, frame: &Frame) -> Result<(), SendError> {
        let bytes = self.inner.seal(frame)?;
        if !self.inner.faults_active.load(Ordering::Acquire) {
            return Ok(self.inner.transmit(to, &bytes).await?);
        }
        let verdict = lock(&self.inner.injector).decide(to, bytes);
        let stats = &self.inner.stats;
        match verdict {
            Verdict::Partitioned => {
                AtomicStats::bump(&stats.faults_partitioned);
                tracing::trace!(%to, "fault: datagram to partitioned address dropped");
                Ok(())
            }
            Verdict::Dropped => {
                AtomicStats::bump(&stats.faults_dropped);
                tracing::trace!(%to, "fault: datagram dropped");
                Ok(())
            }
            Verdict::Send { copies, duplicated } => {
                if duplicated {
                    AtomicStats::bump(&stats.faults_duplicated);
                }
                let mut result = Ok(());
                for copy in copies {
                    if let Err(error) = self.inner.apply(to, copy).await {
                        result = Err(SendError::Io(error));
                    }
                }
                result
            }
        }
    }

    /// Receives the next frame and its source address. Datagrams that do not decode, or that
    /// come from a partitioned address, are dropped and counted, never returned.
    ///
    /// Cancel-safe: if the future is dropped, no decoded frame is lost. Errors only on a
    /// socket error that is not transient.
    pub async fn recv(&self) -> io::Result<(Frame, SocketAddr)> {
        let mut buffer = BufferGuard::take(&self.inner.buffers);
        let stats = &self.inner.stats;
        loop {
            let (len, from) = match self.inner.socket.recv_from(&mut buffer.0).await {
                Ok(received) => received,
                Err(error) if is_transient(&error) => {
                    AtomicStats::bump(&stats.recv_errors);
                    tracing::debug!(%error, "transient receive error skipped");
                    continue;
                }
                Err(error) => return Err(error),
            };
            if self.inner.faults_active.load(Ordering::Acquire)
                && lock(&self.inner.injector).is_partitioned(&from)
            {
                AtomicStats::bump(&stats.faults_partitioned);
                tracing::trace!(%from, "fault: datagram from partitioned address dropped");
                continue;
            }
            let datagram = buffer.0.get(..len).unwrap_or(&[]);
            if let Some(frame) = self.inner.open(datagram, from) {
                return Ok((frame, from));
            }
        }
    }

    /// Buffers for [`Endpoint::recv_many`]: [`RECV_BATCH_MAX`](crate::RECV_BATCH_MAX)
    /// datagrams of the largest frame size (about 1 MiB), allocated once per receiver.
    pub fn recv_buffers(&self) -> crate::RecvBuffers {
        crate::RecvBuffers::new(crate::RECV_BATCH_MAX, RECV_BUFFER_BYTES)
    }

    /// Like [`Endpoint::recv`], but takes every datagram waiting (up to
    /// [`RECV_BATCH_MAX`](crate::RECV_BATCH_MAX), in one `recvmmsg` on Linux) and appends the
    /// frames that decode to `out`, in arrival order. Returns once at least one frame was
    /// appended.
    ///
    /// Cancel-safe: a cancelled call has taken no datagram off the socket.
    pub async fn recv_many(
        &self,
        buffers: &mut crate::RecvBuffers,
        out: &mut Vec<(Frame, SocketAddr)>,
    ) -> io::Result<()> {
        let stats = &self.inner.stats;
        loop {
            self.inner.socket.readable().await?;
            let socket = &self.inner.socket;
            match socket.try_io(tokio::io::Interest::READABLE, || {
                crate::mmsg::recv_batch(socket, buffers)
            }) {
                Ok(()) => {}
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => continue,
                Err(error) if is_transient(&error) => {
                    AtomicStats::bump(&stats.recv_errors);
                    tracing::debug!(%error, "transient receive error skipped");
                    continue;
                }
                Err(error) => return Err(error),
            }
            let before = out.len();
            let faults = self.inner.faults_active.load(Ordering::Acquire);
            for (i, &(len, from)) in buffers.got.iter().enumerate() {
                if faults && lock(&self.inner.injector).is_partitioned(&from) {
                    AtomicStats::bump(&stats.faults_partitioned);
                    tracing::trace!(%from, "fault: datagram from partitioned address dropped");
                    continue;
                }
                let datagram = buffers.bufs[i].get(..len).unwrap_or(&[]);
                if let Some(frame) = self.inner.open(datagram, from) {
                    out.push((frame, from));
                }
            }
            if out.len() > before {
                return Ok(());
            }
        }
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> EndpointStats {
        self.inner.stats.snapshot()
    }

    /// Replaces the fault configuration. The decision sequence restarts from `faults.seed`;
    /// datagrams already held keep their schedule.
    pub fn set_faults(&self, faults: FaultConfig) {
        self.inner.set_faults(self.local_addr, faults);
    }

    /// The current fault configuration.
    pub fn faults(&self) -> FaultConfig {
        lock(&self.inner.injector).config().clone()
    }

    /// Datagrams currently held back by the delay and reorder faults.
    pub fn held_datagrams(&self) -> usize {
        lock(&self.inner.held).heap.len()
    }
}

impl Drop for Endpoint {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl Inner {
    /// Encodes `frame`, sealed as its `auth` asks.
    fn seal(&self, frame: &Frame) -> Result<Vec<u8>, EncodeError> {
        match &self.keys {
            Some(keys) => keys.seal(frame),
            None => frame.encode(),
        }
    }

    /// Opens one datagram, counting it: the frame, or `None` if it was dropped.
    fn open(&self, datagram: &[u8], from: SocketAddr) -> Option<Frame> {
        let stats = &self.stats;
        let keys: &dyn FrameKeys = match &self.keys {
            Some(keys) => keys.as_ref(),
            None => &NoKeys,
        };
        match Frame::open(datagram, keys) {
            Ok(frame) => {
                AtomicStats::bump(&stats.frames_received);
                AtomicStats::add(&stats.bytes_received, datagram.len());
                if let (Some(keys), Some(id)) = (&self.keys, crate::frame::key_id_of(datagram)) {
                    if frame.auth != Auth::None && id != keys.current() {
                        AtomicStats::bump(&stats.old_key_frames);
                    }
                }
                Some(frame)
            }
            Err(error) => {
                let counter = match error {
                    DecodeError::Untagged => &stats.untagged_dropped,
                    DecodeError::UnknownKey(_) => &stats.unknown_key_dropped,
                    DecodeError::BadTag => &stats.bad_tag_dropped,
                    _ => &stats.junk_dropped,
                };
                AtomicStats::bump(counter);
                if error.is_auth() {
                    tracing::debug!(%from, len = datagram.len(), %error, "unauthenticated datagram dropped");
                } else {
                    tracing::debug!(%from, len = datagram.len(), %error, "junk datagram dropped");
                }
                None
            }
        }
    }

    fn set_faults(&self, local_addr: SocketAddr, faults: FaultConfig) {
        let active = faults.is_active();
        if active {
            tracing::info!(%local_addr, seed = faults.seed, faults = %faults, "fault injection on");
        }
        let mut injector = lock(&self.injector);
        *injector = FaultInjector::new(faults);
        self.faults_active.store(active, Ordering::Release);
    }

    /// Puts one datagram on the wire now, counting it.
    async fn transmit(&self, to: SocketAddr, bytes: &[u8]) -> io::Result<()> {
        match self.socket.send_to(bytes, to).await {
            Ok(sent) => {
                AtomicStats::bump(&self.stats.frames_sent);
                AtomicStats::add(&self.stats.bytes_sent, sent);
                Ok(())
            }
            Err(error) => {
                AtomicStats::bump(&self.stats.send_errors);
                tracing::debug!(%to, %error, "send failed");
                Err(error)
            }
        }
    }

    /// Counts the faults applied to one copy, then sends it now or holds it.
    async fn apply(&self, to: SocketAddr, copy: Transmission) -> io::Result<()> {
        let stats = &self.stats;
        if copy.corrupted {
            AtomicStats::bump(&stats.faults_corrupted);
        }
        if copy.truncated {
            AtomicStats::bump(&stats.faults_truncated);
        }
        if copy.reordered {
            AtomicStats::bump(&stats.faults_reordered);
        }
        if copy.delayed {
            AtomicStats::bump(&stats.faults_delayed);
        }
        if copy.hold.is_zero() {
            return self.transmit(to, &copy.bytes).await;
        }
        self.hold(to, copy.bytes, copy.hold);
        Ok(())
    }

    /// Queues a datagram for the drainer, or drops it (counted) if the queue is full.
    fn hold(&self, to: SocketAddr, bytes: Vec<u8>, hold: Duration) {
        let due = Instant::now() + hold;
        {
            let mut queue = lock(&self.held);
            if queue.heap.len() >= MAX_HELD_DATAGRAMS
                || queue.bytes.saturating_add(bytes.len()) > MAX_HELD_BYTES
            {
                drop(queue);
                AtomicStats::bump(&self.stats.held_overflow_dropped);
                tracing::debug!(%to, "held-datagram queue full: datagram dropped");
                return;
            }
            let order = queue.next_order;
            queue.next_order += 1;
            queue.bytes += bytes.len();
            queue.heap.push(Reverse(Held {
                due,
                order,
                to,
                bytes,
            }));
        }
        self.held_added.notify_one();
    }

    /// Removes the held datagrams due at `now`, and says when the next one is due.
    fn take_due(&self, now: Instant) -> (Vec<Held>, Option<Instant>) {
        let mut queue = lock(&self.held);
        let mut due = Vec::new();
        while queue
            .heap
            .peek()
            .is_some_and(|Reverse(held)| held.due <= now)
        {
            if let Some(Reverse(held)) = queue.heap.pop() {
                queue.bytes -= held.bytes.len();
                due.push(held);
            }
        }
        let next = queue.heap.peek().map(|Reverse(held)| held.due);
        (due, next)
    }
}

/// The drainer: sends held datagrams when they are due.
async fn drain_held(inner: Arc<Inner>) {
    loop {
        let (due, next) = inner.take_due(Instant::now());
        for held in due {
            // Errors are counted and logged by `transmit`; a late datagram has no caller.
            let _ = inner.transmit(held.to, &held.bytes).await;
        }
        match next {
            Some(deadline) => {
                tokio::select! {
                    () = tokio::time::sleep_until(deadline) => {}
                    () = inner.held_added.notified() => {}
                }
            }
            None => inner.held_added.notified().await,
        }
    }
}

/// What identifies a version of the faults file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileStamp {
    modified: Option<SystemTime>,
    len: u64,
    inode: u64,
}

impl FileStamp {
    fn of(metadata: &std::fs::Metadata) -> FileStamp {
        #[cfg(unix)]
        let inode = std::os::unix::fs::MetadataExt::ino(metadata);
        #[cfg(not(unix))]
        let inode = 0;
        FileStamp {
            modified: metadata.modified().ok(),
            len: metadata.len(),
            inode,
        }
    }
}

#[derive(Debug)]
struct FaultsFileWatcher {
    path: PathBuf,
    /// The version last applied or rejected; `None` while the file is missing.
    stamp: Option<FileStamp>,
}

impl FaultsFileWatcher {
    /// Applies the file if it changed since the last poll. A file that cannot be read or
    /// parsed is logged and counted, and the current configuration is kept. A missing file
    /// keeps the current configuration.
    ///
    /// Reads with blocking `std::fs` calls: one `stat` per poll of a small local file.
    fn poll(&mut self, inner: &Inner, local_addr: SocketAddr) {
        let metadata = match std::fs::metadata(&self.path) {
            Ok(metadata) => metadata,
            Err(error) => {
                if self.stamp.take().is_some() {
                    tracing::debug!(path = %self.path.display(), %error, "faults file gone; keeping faults");
                }
                return;
            }
        };
        let stamp = FileStamp::of(&metadata);
        if self.stamp == Some(stamp) {
            return;
        }
        self.stamp = Some(stamp);
        match read_faults_file(&self.path, stamp.len) {
            Ok(faults) => {
                AtomicStats::bump(&inner.stats.fault_reloads);
                tracing::info!(path = %self.path.display(), faults = %faults, "faults file applied");
                inner.set_faults(local_addr, faults);
            }
            Err(error) => {
                AtomicStats::bump(&inner.stats.fault_reload_errors);
                tracing::warn!(
                    path = %self.path.display(),
                    %error,
                    "faults file ignored; keeping the previous faults"
                );
            }
        }
    }
}

/// Why the faults file was not applied.
#[derive(Debug, thiserror::Error)]
enum FaultsFileError {
    #[error("cannot read: {0}")]
    Io(#[from] io::Error),
    #[error("file of {len} bytes exceeds the {MAX_FAULT_SPEC_BYTES}-byte limit")]
    TooLong { len: u64 },
    #[error(transparent)]
    Parse(#[from] crate::faults::FaultParseError),
}

fn read_faults_file(path: &Path, len: u64) -> Result<FaultConfig, FaultsFileError> {
    if len > MAX_FAULT_SPEC_BYTES as u64 {
        return Err(FaultsFileError::TooLong { len });
    }
    let text = std::fs::read_to_string(path)?;
    Ok(text.parse::<FaultConfig>()?)
}

/// The watcher task: polls the faults file until the endpoint is dropped.
async fn watch_faults_file(
    inner: Arc<Inner>,
    mut watcher: FaultsFileWatcher,
    local_addr: SocketAddr,
) {
    let mut interval = tokio::time::interval(FAULTS_FILE_POLL_INTERVAL);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        watcher.poll(&inner, local_addr);
    }
}

/// Creates the socket with large buffers and registers it with tokio.
fn bind_socket(addr: SocketAddr) -> io::Result<UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    // Best effort: the kernel caps the sizes, and a smaller buffer still works.
    if let Err(error) = socket.set_recv_buffer_size(SOCKET_BUFFER_BYTES) {
        tracing::debug!(%error, "cannot raise SO_RCVBUF");
    }
    if let Err(error) = socket.set_send_buffer_size(SOCKET_BUFFER_BYTES) {
        tracing::debug!(%error, "cannot raise SO_SNDBUF");
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    tracing::debug!(
        %addr,
        recv_buffer_bytes = socket.recv_buffer_size().unwrap_or(0),
        send_buffer_bytes = socket.send_buffer_size().unwrap_or(0),
        "endpoint bound"
    );
    UdpSocket::from_std(socket.into())
}

/// Receive errors that concern one earlier datagram, not the socket (ICMP feedback).
fn is_transient(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionRefused
            | io::ErrorKind::Interrupted
    )
}

/// A receive buffer borrowed from the pool, returned when dropped (also on cancellation).
struct BufferGuard<'a>(Vec<u8>, &'a Mutex<Vec<Vec<u8>>>);

impl<'a> BufferGuard<'a> {
    fn take(pool: &'a Mutex<Vec<Vec<u8>>>) -> BufferGuard<'a> {
        let buffer = lock(pool)
            .pop()
            .unwrap_or_else(|| vec![0; RECV_BUFFER_BYTES]);
        assert_eq!(buffer.len(), RECV_BUFFER_BYTES);
        BufferGuard(buffer, pool)
    }
}

impl Drop for BufferGuard<'_> {
    fn drop(&mut self) {
        let mut pool = lock(self.1);
        if pool.len() < MAX_POOLED_BUFFERS {
            pool.push(std::mem::take(&mut self.0));
        }
    }
}

/// The live counters behind [`EndpointStats`].
#[derive(Debug, Default)]
struct AtomicStats {
    frames_sent: AtomicU64,
    frames_received: AtomicU64,
    bytes_sent: AtomicU64,
    bytes_received: AtomicU64,
    junk_dropped: AtomicU64,
    untagged_dropped: AtomicU64,
    unknown_key_dropped: AtomicU64,
    bad_tag_dropped: AtomicU64,
    old_key_frames: AtomicU64,
    send_errors: AtomicU64,
    faults_dropped: AtomicU64,
    faults_duplicated: AtomicU64,
    faults_delayed: AtomicU64,
    faults_corrupted: AtomicU64,
    faults_truncated: AtomicU64,
    faults_partitioned: AtomicU64,
    faults_reordered: AtomicU64,
    held_overflow_dropped: AtomicU64,
    recv_errors: AtomicU64,
    fault_reloads: AtomicU64,
    fault_reload_errors: AtomicU64,
}

impl AtomicStats {
    fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    fn add(counter: &AtomicU64, bytes: usize) {
        counter.fetch_add(u64::try_from(bytes).unwrap_or(u64::MAX), Ordering::Relaxed);
    }

    fn snapshot(&self) -> EndpointStats {
        let get = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        EndpointStats {
            frames_sent: get(&self.frames_sent),
            frames_received: get(&self.frames_received),
            bytes_sent: get(&self.bytes_sent),
            bytes_received: get(&self.bytes_received),
            junk_dropped: get(&self.junk_dropped),
            untagged_dropped: get(&self.untagged_dropped),
            unknown_key_dropped: get(&self.unknown_key_dropped),
            bad_tag_dropped: get(&self.bad_tag_dropped),
            old_key_frames: get(&self.old_key_frames),
            send_errors: get(&self.send_errors),
            faults_dropped: get(&self.faults_dropped),
            faults_duplicated: get(&self.faults_duplicated),
            faults_delayed: get(&self.faults_delayed),
            faults_corrupted: get(&self.faults_corrupted),
            faults_truncated: get(&self.faults_truncated),
            faults_partitioned: get(&self.faults_partitioned),
            faults_reordered: get(&self.faults_reordered),
            held_overflow_dropped: get(&self.held_overflow_dropped),
            recv_errors: get(&self.recv_errors),
            fault_reloads: get(&self.fault_reloads),
            fault_reload_errors: get(&self.fault_reload_errors),
        }
    }
}
