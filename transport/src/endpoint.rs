//! Async UDP endpoint (implemented by the transport work).

use std::net::SocketAddr;

/// Counters of an endpoint, monotonic over its life.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EndpointStats {
    pub frames_sent: u64,
    pub frames_received: u64,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    /// Datagrams that did not decode (bad CRC, truncated, foreign): dropped.
    pub junk_dropped: u64,
    pub send_errors: u64,
    pub faults_dropped: u64,
    pub faults_duplicated: u64,
    pub faults_delayed: u64,
    pub faults_corrupted: u64,
    pub faults_truncated: u64,
    pub faults_partitioned: u64,
}

/// A bound UDP socket that speaks frames.
#[derive(Debug)]
pub struct Endpoint {
    _addr: SocketAddr,
}
