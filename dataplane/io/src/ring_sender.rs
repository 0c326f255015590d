//! A transmit ring with its way out for what the ring cannot take: what a
//! worker writes an interface through, the `AF_PACKET` outside and a
//! direct (`af-packet`) attachment alike.
//!
//! A [`RingSender`] is a [`TxRing`] plus a plain [`PacketSender`] on the
//! same interface, with the same offload header setting: a frame longer
//! than a transmit slot (a superframe), or one that finds the ring full,
//! goes out on the plain socket after the ring was kicked, so frames keep
//! their order. Frames pushed during a worker's wake-up go out with one
//! `send()` at its end ([`RingSender::kick`]), or earlier once
//! [`RING_KICK`] have gathered.
//!
//! A worker with an io_uring queues such a frame as a write on the plain
//! socket ([`RingSender::divert`]) instead of sending it at once: the
//! write goes with the wake-up's other writes in its one
//! `io_uring_enter`, and the worker goes on with its frames meanwhile (a
//! 64 KB superframe sent at once has the worker run the receiver's side
//! of a veth inside its `send`). Until the wake-up's kick, every later
//! frame of the wake-up is diverted too ([`RingSender::takes_plain`]): the
//! kick comes before the queued writes are submitted, and a frame kicked
//! from the ring would overtake them. (An io_uring with no free slot
//! left sends the frame the usual way, which may overtake writes already
//! queued: the worker's ring is sized so that a wake-up rarely fills it.)
//!
//! Invariant: one owner (the worker that writes through it; `&mut self`
//! for every frame), so no lock per frame.

use crate::afpacket::PacketSender;
use crate::error::IoError;
use crate::packet_ring::RingConfig;
use crate::syscalls::IoCounters;
use crate::tx_ring::TxRing;

/// Frames a transmit ring collects before it is kicked in the middle of a
/// wake-up (a long burst streams out instead of waiting for the end of the
/// iteration).
pub const RING_KICK: usize = 256;

/// A transmit ring and its plain socket for frames the ring cannot take.
/// See the module docs.
#[derive(Debug)]
pub struct RingSender {
    ring: TxRing,
    big: PacketSender,
    /// A frame went to the plain socket's queued writes since the last
    /// [`RingSender::kick`] (see the module docs).
    diverted: bool,
}

impl RingSender {
    /// Opens both on the existing interface `name`; `vnet_hdr`: every frame
    /// starts with its [`crate::PACKET_VNET_LEN`]-byte offload header.
    ///
    /// Errors: those of [`TxRing::open`] and [`PacketSender::open_with`].
    pub fn open(name: &str, vnet_hdr: bool, cfg: RingConfig) -> Result<RingSender, IoError> {
        let ring = TxRing::open(name, vnet_hdr, cfg)?;
        let big = PacketSender::open_with(name, vnet_hdr)?;
        Ok(RingSender { ring, big, diverted: false })
    }

    /// Whether frames start with their offload header.
    pub fn vnet_hdr(&self) -> bool {
        self.ring.vnet_hdr()
    }

    /// Sends `frame` (its offload header first when [`RingSender::vnet_hdr`]):
    /// into the ring, kicked when [`RING_KICK`] frames wait; a frame the
    /// ring cannot take goes out on the plain socket right after a kick.
    /// System calls are counted in `io` (`send`). False when the kernel
    /// refused the frame.
    pub fn send(&mut self, frame: &[u8], io: &IoCounters) -> bool {
        if self.ring.push(frame) {
            if self.ring.pending() >= RING_KICK {
                io.send.add(self.ring.kick() as u64);
            }
            return true;
        }
        io.send.add(self.ring.kick() as u64);
        io.send.inc();
        self.big.send(frame).is_ok()
    }

    /// Whether `frame` must go the plain socket's way: it does not fit a
    /// slot, or frames of this wake-up already went that way as queued
    /// writes ([`RingSender::divert`]).
    pub fn takes_plain(&self, frame: &[u8]) -> bool {
        self.diverted || frame.is_empty() || frame.len() > self.ring.max_frame()
    }

    /// Readies a frame for the plain socket as a write the caller queues
    /// (on its io_uring): the ring is kicked first, so the frames pushed
    /// before it go first; every later frame of the wake-up takes the same
    /// way, until [`RingSender::kick`]. Returns the plain socket's
    /// descriptor, to write the frame to.
    pub fn divert(&mut self, io: &IoCounters) -> std::os::fd::RawFd {
        use std::os::fd::AsRawFd;
        if !self.diverted {
            io.send.add(self.ring.kick() as u64);
            self.diverted = true;
        }
        self.big.as_raw_fd()
    }

    /// Has the kernel send what the ring holds (see [`TxRing::kick`]); the
    /// system calls made, counted in `io` too. Ends a wake-up: frames after
    /// it use the ring again (the writes diverted before it are submitted
    /// before any frame of the next wake-up is pushed).
    pub fn kick(&mut self, io: &IoCounters) -> usize {
        self.diverted = false;
        let n = self.ring.kick();
        io.send.add(n as u64);
        n
    }

    /// Frames pushed and not yet handed to the kernel (a refused kick
    /// leaves them for the next).
    pub fn pending(&self) -> usize {
        self.ring.pending()
    }

    /// The interface name.
    pub fn name(&self) -> &str {
        self.ring.name()
    }
}
