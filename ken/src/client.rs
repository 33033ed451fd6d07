//! Clients outside Ken: exactly-once requests for any program that retries.
//!
//! A client picks a random 128-bit [`ClientId`] (and may persist it with its next request
//! number) and numbers its requests 1, 2, 3, ... A request travels in a `ClientRequest`
//! frame (`from` = the client id as `c-` + 32 hex digits, `seq` = the request number). The
//! process runs it as a turn ([`crate::Input::Request`]); the handler answers through
//! [`crate::Turn::reply`]; the reply is cached durably with the turn and sent only after the
//! turn commits. A retried request whose number was already applied is not run again: the
//! cached reply is resent. A request older than the last one the cache remembers for that
//! client gets [`ClientError::TooOld`], never a second application.
//!
//! **Credentials.** In a cluster with a key, a client proves which client it is with a
//! [`ClientCredential`] issued from the cluster key (`ken client-credential`, or
//! [`ken_transport::ClusterKey::credential`]): its id and a token derived from the key and the
//! id. The client tags and encrypts every request with its token; the process recomputes the
//! token from the id, so it keeps no table of secrets, and tags and encrypts the reply with
//! it. Nobody without the credential can apply a request as that client, nor read its replies
//! (cached or not). A process with a key refuses requests without a credential
//! ([`ClientError::Unauthorized`]); a process without a key serves every client anonymously:
//! the 128-bit random id is then the only thing that tells clients apart (SECURITY.md).
//!
//! **The retry window.** A request carries the moment the client first sent it
//! ([`RequestEnvelope::sent_ms`], the client's wall clock); retries carry the same moment. A
//! process applies a request only if that moment is within
//! [`crate::limits::CLIENT_RETRY_WINDOW`] (60 s) of its own clock, give or take
//! [`crate::limits::CLIENT_CLOCK_SKEW_MAX`] (30 s); an older one is answered
//! [`ClientError::Expired`], never applied. So **a client retries a request for at most
//! `CLIENT_RETRY_WINDOW`**, and clocks must agree within `CLIENT_CLOCK_SKEW_MAX`.
//!
//! **The reply cache** keeps, per client, the last request and its reply, for at most
//! [`crate::limits::CLIENTS_MAX`] clients. When it is full, the least recently used client
//! idle for [`crate::limits::CLIENT_IDLE_EVICT`] (121 s) is evicted; only if every client
//! was active more recently is a new client refused ([`ClientError::Refused`], retry later).
//! Eviction never causes a double application: a request applied at time `t_a` was first
//! sent at most `t_a + skew`; the client is evicted no earlier than `t_a + CLIENT_IDLE_EVICT`,
//! and after that every copy of the request is older than `window + skew`, so it is
//! `Expired`. A forgotten client's next fresh request is therefore new, whatever its number.
//!
//! **No amplification.** A reply to a request without a credential is at most
//! [`crate::limits::AMPLIFICATION_MAX`] times the request's datagram. A larger one is
//! answered `Pad`; the [`Client`] then resends the request padded to the size asked, at once,
//! and gets its reply from the cache.
//!
//! [`Client`] is the async client (tokio); [`BlockingClient`] wraps it for plain threads.

use std::fmt;
use std::marker::PhantomData;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

pub use ken_transport::ClientCredential;
use ken_transport::{Auth, Frame, FrameKind, Incarnation, ProcessId, Seq};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::limits;

/// A client's identity: 128 random bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ClientId(pub [u8; 16]);

impl ClientId {
    /// A fresh random id.
    pub fn random() -> ClientId {
        ClientId(rand::random())
    }

    /// The id as it travels in frames: `c-` followed by 32 lowercase hex digits.
    pub fn to_process_id(self) -> ProcessId {
        ProcessId::new(self.to_string()).expect("c- + hex is a valid process id")
    }

    /// Parses the frame form; `None` if `id` is not a client id.
    pub fn from_process_id(id: &ProcessId) -> Option<ClientId> {
        let hex = id.as_str().strip_prefix("c-")?;
        if hex.len() != 32 {
            return None;
        }
        let mut out = [0u8; 16];
        for (i, byte) in out.iter_mut().enumerate() {
            *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
        }
        Some(ClientId(out))
    }
}

impl fmt::Display for ClientId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("c-")?;
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

/// The payload of a `ClientRequest` frame.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestEnvelope {
    /// When the client first sent this request (its wall clock, ms since the Unix epoch);
    /// every retry carries the same value. See the module docs: the retry window.
    pub sent_ms: u64,
    /// The request, encoded (the handler's [`crate::Handler::Request`]).
    pub request: Vec<u8>,
    /// Zeros that make the datagram as large as a `Pad` answer asked.
    pub padding: Vec<u8>,
}

/// The payload of a `ClientReply` frame.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ReplyBody {
    /// The handler's reply to the request (applied exactly once).
    Ok(Vec<u8>),
    /// The request number is older than the last one applied for this client (`last`).
    TooOld { last: u64 },
    /// The process will not take the request (the reason says why and what to do).
    Refused(String),
    /// The request did not decode as the process's request type: not applied. (Appended
    /// last: the variant index is the wire tag.)
    BadRequest(String),
    /// The reply is ready (the request was applied, or refused with a long reason) but larger
    /// than [`crate::limits::AMPLIFICATION_MAX`] times the request: resend the request with
    /// the same number in a datagram of at least this many bytes.
    Pad { datagram_bytes: u32 },
    /// The request was first sent longer ago than the retry window (or stamped in the
    /// future): not applied now. If an earlier copy was applied, its reply is gone.
    Expired { sent_ms: u64, now_ms: u64 },
    /// This process requires a client credential: not applied.
    Unauthorized(String),
    /// The handler panicked on this request (the panic's message): not applied, recorded in
    /// the server's poison table; a retry gets the same answer until the server restarts
    /// (with a fixed binary). Appended last: the variant index is the wire tag.
    Panicked(String),
}

/// Why a call failed. Says whether the request may have been applied.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// No reply before the deadline. The request may or may not have been applied: retry
    /// it with the same request number ([`Client::retry_last`]) to find out, exactly once.
    #[error("no reply from {server} within {after:?} (the request may have been applied; retry it with the same number)")]
    Timeout { server: SocketAddr, after: Duration },
    /// Refused by the process; not applied.
    #[error("refused by the server: {0}")]
    Refused(String),
    /// The process could not decode the request as its request type (a client of another
    /// application, or of a newer version); not applied.
    #[error("the server cannot read this request (not applied): {0}")]
    BadRequest(String),
    /// Larger than one datagram; not sent.
    #[error("request of {bytes} bytes exceeds the {max_bytes}-byte limit of one datagram")]
    TooLarge { bytes: usize, max_bytes: usize },
    /// The server already applied a later request of this client; this one was not applied
    /// again.
    #[error("request {request_no} is older than the last one the server applied for this client ({last})")]
    TooOld { request_no: u64, last: u64 },
    /// The reply did not decode as the client's reply type. The request was applied.
    #[error("undecodable reply (the request was applied): {0}")]
    Decode(String),
    /// The server's store was replaced since this client last talked to it.
    #[error("the server at {0} is a new incarnation (its store was replaced); earlier requests are unknown to it")]
    ServerReplaced(SocketAddr),
    /// [`Client::retry_last`] before any request was sent.
    #[error("no request to retry: this client has not sent one yet")]
    NothingToRetry,
    /// The request was first sent longer ago than the server's retry window allows (or the
    /// clocks disagree by more than the allowed skew): not applied now; if an earlier copy
    /// was applied, its reply is lost. Send a new request.
    #[error("request {request_no} expired: first sent at {sent_ms} ms, the server's clock says {now_ms} ms (retry window {window:?}, clock skew at most {skew:?})")]
    Expired {
        request_no: u64,
        sent_ms: u64,
        now_ms: u64,
        window: Duration,
        skew: Duration,
    },
    /// The server's handler panicked on this request; not applied (recorded in the server's
    /// poison table, for its operator).
    #[error("the server's handler panicked on this request (not applied): {0}")]
    Panicked(String),
    /// The server requires a client credential (its cluster has a key); not applied.
    #[error("the server requires a client credential: {0}")]
    Unauthorized(String),
    /// Nothing listened at the server's address for [`ClientOptions::refused_grace`]: its
    /// host refused every retransmission (no process bound to that port: the server is
    /// stopped, or the address is wrong). The request may have been applied if the server
    /// was up when an earlier copy arrived.
    #[error("nothing listens at {server}: its host refused every retransmission for {after:?} (is the server running, and is this its address? the request may have been applied if it was up earlier)")]
    NotListening { server: SocketAddr, after: Duration },
    #[error("client socket error: {0}")]
    Io(#[from] std::io::Error),
}

/// What one wait for a reply saw.
enum Awaited {
    Reply(ReplyBody),
    /// Nothing before the round's timer.
    Nothing,
    /// The server's host said nothing listens there (ICMP port unreachable).
    Refused,
}

/// Retry policy of a [`Client`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientOptions {
    /// First retransmission timeout; doubled after each retry up to `retry_max`.
    pub retry_initial: Duration,
    pub retry_max: Duration,
    /// Give up after this long (the request may have been applied).
    pub deadline: Duration,
    /// Give up sooner, with [`ClientError::NotListening`], when the server's host answered
    /// every retransmission for this long that nothing listens on the port (ICMP port
    /// unreachable: no process bound there). Shorter than `deadline`, longer than a
    /// crash-restart (about 50 ms for Ken, 100 ms of systemd's default `RestartSec`), so a
    /// restarting server is waited for and a stopped one is reported within about this long.
    pub refused_grace: Duration,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            retry_initial: Duration::from_millis(50),
            retry_max: Duration::from_secs(1),
            deadline: Duration::from_secs(10),
            refused_grace: Duration::from_secs(1),
        }
    }
}

/// An async exactly-once client of a process whose handler takes requests of type `Q` and
/// answers with `R` (its [`crate::Handler::Request`] and [`crate::Handler::Reply`]).
///
/// ```no_run
/// # async fn example() -> Result<(), ken::ClientError> {
/// // A client of a process whose handler has `type Request = String; type Reply = u64;`.
/// let mut client: ken::Client<String, u64> = ken::Client::new().await?;
/// let server = "127.0.0.1:7000".parse().unwrap();
/// let n = client.call(server, &"count me".to_string()).await?;
/// # let _ = n;
/// # Ok(())
/// # }
/// ```
pub struct Client<Q, R> {
    id: ClientId,
    pid: ProcessId,
    /// Tags and encrypts requests, opens replies; `None`: anonymous (a cluster without a key).
    credential: Option<(ClientCredential, ken_transport::FrameKey)>,
    socket: tokio::net::UdpSocket,
    /// The number of the next new request.
    next_request: u64,
    /// The last new request, encoded, and when it was first sent: what
    /// [`Client::retry_last`] sends again.
    last: Option<(u64, Vec<u8>, u64)>,
    /// The server incarnation learned from replies, per server address.
    incarnations: std::collections::HashMap<SocketAddr, Incarnation>,
    options: ClientOptions,
    buf: Vec<u8>,
    _types: PhantomData<fn(&Q) -> R>,
}

impl<Q, R> fmt::Debug for Client<Q, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("id", &self.id)
            .field("next_request", &self.next_request)
            .finish_non_exhaustive()
    }
}

impl<Q: Serialize, R: DeserializeOwned> Client<Q, R> {
    /// A client with a fresh random id, bound to an ephemeral port.
    pub async fn new() -> Result<Self, ClientError> {
        Self::with_id(ClientId::random(), 1, ClientOptions::default()).await
    }

    /// A client resuming a persisted identity: `next_request` is the number its next new
    /// request gets. Anonymous: for processes without a cluster key.
    ///
    /// # Panics
    /// If `next_request` is 0 (request numbers start at 1).
    pub async fn with_id(
        id: ClientId,
        next_request: u64,
        options: ClientOptions,
    ) -> Result<Self, ClientError> {
        Self::build(id, None, next_request, options).await
    }

    /// A client speaking as the client of `credential` (issued from the cluster key): its
    /// requests are tagged and encrypted with the credential's token, and only replies
    /// tagged with it are believed. `next_request` as in [`Client::with_id`].
    ///
    /// # Panics
    /// If `next_request` is 0.
    pub async fn with_credential(
        credential: ClientCredential,
        next_request: u64,
        options: ClientOptions,
    ) -> Result<Self, ClientError> {
        let id = ClientId(credential.id);
        let key = credential.frame_key();
        Self::build(id, Some((credential, key)), next_request, options).await
    }

    async fn build(
        id: ClientId,
        credential: Option<(ClientCredential, ken_transport::FrameKey)>,
        next_request: u64,
        options: ClientOptions,
    ) -> Result<Self, ClientError> {
        assert!(next_request >= 1, "request numbers start at 1");
        let socket = tokio::net::UdpSocket::bind("0.0.0.0:0").await?;
        Ok(Client {
            id,
            pid: id.to_process_id(),
            credential,
            socket,
            next_request,
            last: None,
            incarnations: Default::default(),
            options,
            buf: vec![0u8; ken_transport::frame::MAX_FRAME_BYTES + 1],
            _types: PhantomData,
        })
    }

    pub fn id(&self) -> ClientId {
        self.id
    }

    /// The number the next new request gets.
    pub fn next_request(&self) -> u64 {
        self.next_request
    }

    /// Sends a new request and waits for its reply, retrying under the policy.
    pub async fn call(&mut self, server: SocketAddr, request: &Q) -> Result<R, ClientError> {
        let bytes = encode_request(request)?;
        let n = self.next_request;
        self.next_request += 1;
        let sent_ms = now_ms();
        self.last = Some((n, bytes.clone(), sent_ms));
        self.exchange(server, n, &bytes, sent_ms).await
    }

    /// Numbers and encodes `request` as the next new request and makes it the last one,
    /// without sending it: for a caller that persists it first
    /// ([`crate::app::DurableClient`]), then sends it with [`Client::retry_last`].
    pub fn prepare(&mut self, request: &Q) -> Result<PendingRequest, ClientError> {
        let bytes = encode_request(request)?;
        let n = self.next_request;
        self.next_request += 1;
        let sent_ms = now_ms();
        self.last = Some((n, bytes.clone(), sent_ms));
        Ok(PendingRequest {
            request_no: n,
            request: bytes,
            sent_ms,
        })
    }

    /// Makes `pending` (prepared and persisted by an earlier life of this client) the last
    /// request, to be sent again with [`Client::retry_last`] (same number, same first-sent
    /// time: applied at most once in all). Later requests are numbered after it.
    pub fn restore(&mut self, pending: PendingRequest) {
        self.next_request = self.next_request.max(pending.request_no + 1);
        self.last = Some((pending.request_no, pending.request, pending.sent_ms));
    }

    /// Sends the last request again with its number (after a [`ClientError::Timeout`]): it
    /// is applied at most once in all, and the answer is its reply.
    pub async fn retry_last(&mut self, server: SocketAddr) -> Result<R, ClientError> {
        let (n, bytes, sent_ms) = self.last.clone().ok_or(ClientError::NothingToRetry)?;
        self.exchange(server, n, &bytes, sent_ms).await
    }

    /// Calls `request`, then retries it with the same number after each timeout until it is
    /// answered or fails otherwise, at most `attempts_max` attempts in all. Returns the reply
    /// or the last error, and the number of timeouts seen.
    ///
    /// # Panics
    /// If `attempts_max` is 0.
    pub async fn call_until_answered(
        &mut self,
        server: SocketAddr,
        request: &Q,
        attempts_max: u32,
    ) -> (Result<R, ClientError>, u32) {
        assert!(attempts_max >= 1, "at least one attempt");
        let mut result = self.call(server, request).await;
        let mut timeouts = 0;
        while matches!(result, Err(ClientError::Timeout { .. })) {
            timeouts += 1;
            if timeouts >= attempts_max {
                break;
            }
            result = self.retry_last(server).await;
        }
        (result, timeouts)
    }

    /// Sends request number `n` until answered or the deadline passes. For clients that
    /// persist their own numbering; [`Client::call`] numbers requests itself.
    pub async fn call_numbered(
        &mut self,
        server: SocketAddr,
        n: u64,
        request: &Q,
    ) -> Result<R, ClientError> {
        let bytes = encode_request(request)?;
        self.exchange(server, n, &bytes, now_ms()).await
    }

    /// Sends request `n` (encoded, first sent at `sent_ms`) until answered or the deadline
    /// passes, padding it when the server asks.
    async fn exchange(
        &mut self,
        server: SocketAddr,
        n: u64,
        request: &[u8],
        sent_ms: u64,
    ) -> Result<R, ClientError> {
        let started = Instant::now();
        let mut timeout = self.options.retry_initial;
        // Connected to the server, the socket hears its host's "port unreachable".
        self.socket.connect(server).await?;
        let mut refused_since: Option<Instant> = None;
        let mut envelope = RequestEnvelope {
            sent_ms,
            request: request.to_vec(),
            padding: Vec::new(),
        };
        loop {
            let frame = Frame {
                kind: FrameKind::ClientRequest,
                auth: Auth::None,
                from: self.pid.clone(),
                from_incarnation: Incarnation(0),
                // The server's name is not known to the client; the server checks only the
                // incarnation (0 = any).
                to: ProcessId::new("server").expect("valid id"),
                to_incarnation: self.incarnations.get(&server).copied().unwrap_or_default(),
                seq: Seq(n),
                ack: Seq(0),
                acked: Seq(0),
                payload: ken_store::codec::encode(&envelope),
            };
            let sealed = match &self.credential {
                Some((_, key)) => frame.seal(key, true),
                None => frame.encode(),
            };
            let bytes = sealed.map_err(|_| ClientError::TooLarge {
                bytes: request.len(),
                max_bytes: limits::REQUEST_BYTES_MAX,
            })?;
            // On the connected socket, a "port unreachable" for an earlier copy may be
            // reported by this send instead (and this copy not sent): a refusal like any other.
            let refused_on_send = match self.socket.send_to(&bytes, server).await {
                Ok(_) => false,
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => true,
                Err(e) => return Err(e.into()),
            };
            let remaining = self.options.deadline.saturating_sub(started.elapsed());
            if remaining.is_zero() {
                return Err(ClientError::Timeout {
                    server,
                    after: self.options.deadline,
                });
            }
            let until = tokio::time::Instant::now() + timeout.min(remaining);
            let awaited = if refused_on_send {
                Awaited::Refused
            } else {
                self.await_reply(server, n, until).await?
            };
            let body = match awaited {
                Awaited::Reply(body) => Some(body),
                Awaited::Nothing => {
                    refused_since = None;
                    None
                }
                Awaited::Refused => {
                    let since = *refused_since.get_or_insert_with(Instant::now);
                    if since.elapsed() >= self.options.refused_grace {
                        return Err(ClientError::NotListening {
                            server,
                            after: since.elapsed(),
                        });
                    }
                    // Retransmit on the usual schedule, not at once.
                    tokio::time::sleep_until(until).await;
                    None
                }
            };
            if let Some(body) = body {
                if let ReplyBody::Pad { datagram_bytes } = body {
                    // Resend at once, padded to the size asked (the reply waits in the cache).
                    let want = usize::try_from(datagram_bytes).unwrap_or(usize::MAX);
                    let more = want.saturating_sub(bytes.len()).max(1);
                    let padded = envelope.padding.len().saturating_add(more);
                    if padded > limits::MESSAGE_BYTES_MAX {
                        return Err(ClientError::Refused(format!(
                            "the server asks for a request of {datagram_bytes} bytes, more than a datagram"
                        )));
                    }
                    envelope.padding = vec![0; padded];
                    continue;
                }
                return match body {
                    ReplyBody::Ok(bytes) => ken_store::codec::decode(&bytes)
                        .map_err(|e| ClientError::Decode(e.to_string())),
                    ReplyBody::TooOld { last } => Err(ClientError::TooOld {
                        request_no: n,
                        last,
                    }),
                    ReplyBody::Refused(why) => Err(ClientError::Refused(why)),
                    ReplyBody::BadRequest(why) => Err(ClientError::BadRequest(why)),
                    ReplyBody::Expired { sent_ms, now_ms } => Err(ClientError::Expired {
                        request_no: n,
                        sent_ms,
                        now_ms,
                        window: limits::CLIENT_RETRY_WINDOW,
                        skew: limits::CLIENT_CLOCK_SKEW_MAX,
                    }),
                    ReplyBody::Unauthorized(why) => Err(ClientError::Unauthorized(why)),
                    ReplyBody::Panicked(why) => Err(ClientError::Panicked(why)),
                    ReplyBody::Pad { .. } => unreachable!("handled above"),
                };
            }
            timeout = (timeout * 2).min(self.options.retry_max);
        }
    }

    /// Waits until `until` for the reply to request `n` from `server` (the socket is
    /// connected to it).
    async fn await_reply(
        &mut self,
        server: SocketAddr,
        n: u64,
        until: tokio::time::Instant,
    ) -> Result<Awaited, ClientError> {
        loop {
            let recv = tokio::time::timeout_at(until, self.socket.recv_from(&mut self.buf)).await;
            let Ok(recv) = recv else {
                return Ok(Awaited::Nothing);
            };
            let (len, from) = match recv {
                Ok(got) => got,
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                    return Ok(Awaited::Refused);
                }
                Err(e) => return Err(e.into()),
            };
            if from != server {
                continue;
            }
            let opened = match &self.credential {
                Some((credential, _)) => Frame::open(&self.buf[..len], credential),
                None => Frame::decode(&self.buf[..len]),
            };
            let Ok(reply) = opened else {
                continue;
            };
            if reply.to != self.pid || reply.seq.0 != n {
                continue;
            }
            match reply.kind {
                FrameKind::ClientReply => {}
                FrameKind::Reject => return Err(ClientError::ServerReplaced(server)),
                _ => continue,
            }
            self.incarnations.insert(server, reply.from_incarnation);
            let body: ReplyBody = ken_store::codec::decode(&reply.payload)
                .map_err(|e| ClientError::Decode(e.to_string()))?;
            return Ok(Awaited::Reply(body));
        }
    }
}

/// The wall clock in ms since the Unix epoch (what requests are stamped with).
fn now_ms() -> u64 {
    crate::Time::now_wall().as_millis()
}

/// Encodes a request, refusing one that cannot fit a datagram.
fn encode_request<Q: Serialize>(request: &Q) -> Result<Vec<u8>, ClientError> {
    let bytes = ken_store::codec::encode(request);
    let max_bytes = limits::REQUEST_BYTES_MAX;
    if bytes.len() > max_bytes {
        return Err(ClientError::TooLarge {
            bytes: bytes.len(),
            max_bytes,
        });
    }
    Ok(bytes)
}

/// A request numbered and encoded but not necessarily answered ([`Client::prepare`]): what
/// a client persists to resume it after its own crash.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PendingRequest {
    pub request_no: u64,
    /// The encoded request.
    pub request: Vec<u8>,
    /// When it was first sent (Unix ms): the server's retry window counts from here.
    pub sent_ms: u64,
}

/// A [`Client`] for code without an async runtime: each call blocks the thread.
pub struct BlockingClient<Q, R> {
    rt: tokio::runtime::Runtime,
    inner: Client<Q, R>,
}

impl<Q, R> fmt::Debug for BlockingClient<Q, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BlockingClient")
            .field("inner", &self.inner)
            .finish()
    }
}

impl<Q: Serialize, R: DeserializeOwned> BlockingClient<Q, R> {
    /// A client with a fresh random id.
    pub fn new() -> Result<Self, ClientError> {
        Self::with_id(ClientId::random(), 1, ClientOptions::default())
    }

    /// See [`Client::with_id`].
    pub fn with_id(
        id: ClientId,
        next_request: u64,
        options: ClientOptions,
    ) -> Result<Self, ClientError> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let inner = rt.block_on(Client::with_id(id, next_request, options))?;
        Ok(BlockingClient { rt, inner })
    }

    /// See [`Client::with_credential`].
    pub fn with_credential(
        credential: ClientCredential,
        next_request: u64,
        options: ClientOptions,
    ) -> Result<Self, ClientError> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let inner = rt.block_on(Client::with_credential(credential, next_request, options))?;
        Ok(BlockingClient { rt, inner })
    }

    pub fn client(&self) -> &Client<Q, R> {
        &self.inner
    }

    /// See [`Client::prepare`].
    pub fn prepare(&mut self, request: &Q) -> Result<PendingRequest, ClientError> {
        self.inner.prepare(request)
    }

    /// See [`Client::restore`].
    pub fn restore(&mut self, pending: PendingRequest) {
        self.inner.restore(pending)
    }

    /// See [`Client::call`].
    pub fn call(&mut self, server: SocketAddr, request: &Q) -> Result<R, ClientError> {
        self.rt.block_on(self.inner.call(server, request))
    }

    /// See [`Client::retry_last`].
    pub fn retry_last(&mut self, server: SocketAddr) -> Result<R, ClientError> {
        self.rt.block_on(self.inner.retry_last(server))
    }

    /// See [`Client::call_until_answered`].
    pub fn call_until_answered(
        &mut self,
        server: SocketAddr,
        request: &Q,
        attempts_max: u32,
    ) -> (Result<R, ClientError>, u32) {
        self.rt.block_on(
            self.inner
                .call_until_answered(server, request, attempts_max),
        )
    }

    /// See [`Client::call_numbered`].
    pub fn call_numbered(
        &mut self,
        server: SocketAddr,
        n: u64,
        request: &Q,
    ) -> Result<R, ClientError> {
        self.rt
            .block_on(self.inner.call_numbered(server, n, request))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_ids_round_trip_through_process_ids() {
        for _ in 0..100 {
            let id = ClientId::random();
            let pid = id.to_process_id();
            assert_eq!(pid.as_str().len(), 34);
            assert_eq!(ClientId::from_process_id(&pid), Some(id));
        }
        for not in ["a", "c-", "c-zz000000000000000000000000000000", "c-00"] {
            assert_eq!(
                ClientId::from_process_id(&ProcessId::new(not).unwrap()),
                None,
                "{not}"
            );
        }
    }
}
