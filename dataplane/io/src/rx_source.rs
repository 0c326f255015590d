//! What a worker reads frames from: a TAP queue, its own `AF_PACKET`
//! socket of the outside's fanout group, or a direct attachment's packet
//! socket or ring, and where in a worker buffer a read lands.
//!
//! Invariant (the worker's buffer layout): after [`RxSource::finish`] the
//! frame sits at `buf[HDR..HDR + len]` and `buf[..HDR]` holds a 12-byte
//! virtio-net header ([`crate::VnetHdr`]), all zeros when the source gives
//! none. A read is made into `buf[offset()..]`:
//! - a TAP with `IFF_VNET_HDR` writes its 12-byte header at 0;
//! - a packet socket with `PACKET_VNET_HDR` writes its 10-byte header at
//!   `HDR - 10`, which `finish` moves to 0 (10 bytes; the frame is not
//!   moved);
//! - a source without a header writes the frame at `HDR`.
//!
//! A receive ring ([`RxSource::Ring`]) is not read by `read`: the worker
//! walks its blocks ([`crate::RxRing::drain`]) and copies each frame to
//! `HDR` of a buffer, its header to 0, the same layout.

use crate::packet_ring::RxRing;
use crate::packet_rx::{PacketReceiver, PACKET_VNET_LEN};
use crate::tap::{Tap, VNET_HDR_LEN};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::sync::Arc;

/// Bytes before the frame in a worker buffer.
const HDR: usize = VNET_HDR_LEN;

/// A device a worker reads.
#[derive(Clone, Debug)]
pub enum RxSource {
    /// A TAP queue.
    Tap(Arc<Tap>),
    /// A packet socket (the outside's fanout group member of this worker,
    /// or a direct attachment's).
    Packet(Arc<PacketReceiver>),
    /// A packet socket's receive ring (the outside's fanout group member
    /// of this worker, or a direct attachment's).
    Ring(Arc<RxRing>),
}

impl RxSource {
    /// Where a read into a worker buffer starts.
    pub fn offset(&self) -> usize {
        match self {
            RxSource::Tap(t) if t.vnet_hdr() => 0,
            RxSource::Packet(p) if p.vnet_hdr() => HDR - PACKET_VNET_LEN,
            _ => HDR,
        }
    }

    /// One non-blocking read into `buf[self.offset()..]`; the bytes read.
    /// A ring is not read this way (`Unsupported`).
    pub fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        let at = self.offset();
        match self {
            RxSource::Tap(t) => t.recv(&mut buf[at..]),
            RxSource::Packet(p) => p.recv(&mut buf[at..]),
            RxSource::Ring(_) => Err(io::Error::from(io::ErrorKind::Unsupported)),
        }
    }

    /// After a read of `n` bytes at [`RxSource::offset`]: puts the header
    /// in place (see the module docs) and returns the frame length; `None`
    /// for a read too short to hold a header and a frame.
    pub fn finish(&self, buf: &mut [u8], n: usize) -> Option<usize> {
        let at = self.offset();
        let len = n.checked_sub(HDR - at).filter(|&l| l > 0)?;
        match self {
            RxSource::Tap(t) if t.vnet_hdr() => {}
            RxSource::Packet(p) if p.vnet_hdr() => {
                buf.copy_within(at..HDR, 0);
                buf[PACKET_VNET_LEN..HDR].fill(0);
            }
            _ => buf[..HDR].fill(0),
        }
        Some(len)
    }
}

impl AsFd for RxSource {
    fn as_fd(&self) -> BorrowedFd<'_> {
        match self {
            RxSource::Tap(t) => t.as_fd(),
            RxSource::Packet(p) => p.as_fd(),
            RxSource::Ring(r) => r.as_fd(),
        }
    }
}

impl AsRawFd for RxSource {
    fn as_raw_fd(&self) -> RawFd {
        self.as_fd().as_raw_fd()
    }
}
