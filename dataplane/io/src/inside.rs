//! Inside devices: what an attachment is on the host side, as a worker
//! reads and writes it.
//!
//! - [`Inside::Tap`]: a TAP queue whose descriptor the gateway holds; the
//!   environments sit on the kernel side (a network namespace, or a bridge
//!   the VMM's TAP is joined to).
//! - [`Inside::Packet`]: an existing interface the gateway does not own
//!   (the host side of a VMM's TAP, a veth), read (promiscuous, this
//!   host's transmissions skipped, always with the offload header) and
//!   written (with the offload header when the gateway's offloads are on,
//!   so partial checksums and superframes go out as they are and the kernel
//!   finishes them for the device; without, the worker completes checksums
//!   in software and drops superframes). On packet rings by default
//!   ([`PacketPort::open_rings`]: an [`RxRing`] read in place and a
//!   [`RingSender`] kicked once per wake-up, the outside's own machinery),
//!   else on plain sockets ([`PacketPort::open`]: a [`PacketReceiver`], one
//!   `recv` per frame, and a [`PacketSender`]).
//! - [`Inside::VhostUser`]: a vhost-user-net device on a Unix socket (the
//!   VMM's network device; [`crate::vhost_user`]): no descriptor to read,
//!   the owning worker takes the port and polls its queues when woken.
//!
//! Invariants: a device is read by exactly one worker (the one its
//! attachment is assigned to); a TAP or packet device is written by any
//! worker (frames for its port), a vhost-user one only by its owner (the
//! others hand frames over). A packet device's transmit ring is taken by
//! its owner ([`PacketPort::take_ring_tx`]) and written by it only; the
//! other workers (rarely any: a flow's frames come back to the worker
//! that owns its port) write its plain socket. A TAP's or packet device's reading side is
//! one descriptor a poller or ring can wait on ([`Inside::rx_source`]),
//! its frames landing in a worker buffer as [`RxSource`] describes.

use crate::afpacket::PacketSender;
use crate::error::IoError;
use crate::packet_ring::{RingConfig, RxRing};
use crate::packet_rx::{PacketReceiver, RxOptions};
use crate::ring_sender::RingSender;
use crate::rx_source::RxSource;
use crate::tap::Tap;
use crate::vhost_user::VhostUserAttachment;
use std::io;
use std::sync::{Arc, Mutex};

/// An attachment's device. See the module docs.
#[derive(Debug)]
pub enum Inside {
    /// A TAP queue.
    Tap(Arc<Tap>),
    /// Packet sockets on an existing interface.
    Packet(PacketPort),
    /// A vhost-user-net device.
    VhostUser(VhostUserAttachment),
}

/// The `AF_PACKET` sockets of an [`Inside::Packet`] attachment.
#[derive(Debug)]
pub struct PacketPort {
    /// Receives what the environments send (promiscuous, offload header,
    /// this host's transmissions skipped; non-blocking).
    pub rx: PacketRx,
    /// Sends to the environments (send-only: receives nothing): every
    /// frame without rings, else those of workers other than the ring's
    /// owner.
    pub tx: PacketSender,
    /// The transmit ring, until its owner takes it.
    ring_tx: Mutex<Option<RingSender>>,
    rings: bool,
}

/// How an [`Inside::Packet`] attachment is read.
#[derive(Debug)]
pub enum PacketRx {
    /// A plain socket: one `recv` per frame.
    Socket(Arc<PacketReceiver>),
    /// A receive ring, walked in place.
    Ring(Arc<RxRing>),
}

/// The receiving options of an attachment: promiscuous, always with the
/// offload header, no fanout.
const RX: RxOptions = RxOptions { vnet_hdr: true, fanout: None, steer: false, read_timeout: None };

impl PacketPort {
    /// Opens plain sockets on the existing interface `name`; `vnet_hdr`:
    /// frames sent carry the offload header (the gateway's offloads are
    /// on).
    ///
    /// Errors: [`IoError::BadName`], [`IoError::NoSuchInterface`],
    /// [`IoError::NotPermitted`] (needs `CAP_NET_RAW`), [`IoError::Sys`].
    pub fn open(name: &str, vnet_hdr: bool) -> Result<PacketPort, IoError> {
        let rx = PacketRx::Socket(Arc::new(PacketReceiver::open(name, RX)?));
        let tx = PacketSender::open_with(name, vnet_hdr)?;
        Ok(PacketPort { rx, tx, ring_tx: Mutex::new(None), rings: false })
    }

    /// Opens it on packet rings of `cfg`'s size (the outside's: an
    /// [`RxRing`] and a [`RingSender`]), plus the plain sender.
    ///
    /// Errors: those of [`PacketPort::open`], and [`IoError::Sys`] naming
    /// the ring option the kernel refused (the caller may fall back to
    /// [`PacketPort::open`]).
    pub fn open_rings(name: &str, vnet_hdr: bool, cfg: RingConfig) -> Result<PacketPort, IoError> {
        let rx = PacketRx::Ring(Arc::new(RxRing::open(name, RX, cfg)?));
        let ring = RingSender::open(name, vnet_hdr, cfg)?;
        let tx = PacketSender::open_with(name, vnet_hdr)?;
        Ok(PacketPort { rx, tx, ring_tx: Mutex::new(Some(ring)), rings: true })
    }

    /// Whether it was opened on packet rings.
    pub fn on_rings(&self) -> bool {
        self.rings
    }

    /// The transmit ring, for the worker that owns the attachment (once:
    /// `None` afterwards, and without rings).
    pub fn take_ring_tx(&self) -> Option<RingSender> {
        self.ring_tx.lock().ok().and_then(|mut r| r.take())
    }

    /// Frames the kernel dropped at the receiving socket since the last
    /// call.
    pub fn take_drops(&self) -> io::Result<u64> {
        match &self.rx {
            PacketRx::Socket(s) => s.take_drops(),
            PacketRx::Ring(r) => r.take_drops(),
        }
    }
}

impl Inside {
    /// What its worker reads; `None` for a vhost-user device (its owner
    /// polls the port itself).
    pub fn rx_source(&self) -> Option<RxSource> {
        match self {
            Inside::Tap(t) => Some(RxSource::Tap(Arc::clone(t))),
            Inside::Packet(p) => Some(match &p.rx {
                PacketRx::Socket(s) => RxSource::Packet(Arc::clone(s)),
                PacketRx::Ring(r) => RxSource::Ring(Arc::clone(r)),
            }),
            Inside::VhostUser(_) => None,
        }
    }

    /// The interface name.
    pub fn name(&self) -> &str {
        match self {
            Inside::Tap(t) => t.name(),
            Inside::Packet(p) => p.tx.name(),
            Inside::VhostUser(v) => v.name(),
        }
    }

    /// The attachment kind as the config spells it.
    pub fn kind(&self) -> &'static str {
        match self {
            Inside::Tap(_) => "tap",
            Inside::Packet(_) => "af-packet",
            Inside::VhostUser(_) => "vhost-user",
        }
    }

    /// Whether it is read and written through packet rings (a direct
    /// attachment opened with [`PacketPort::open_rings`]).
    pub fn on_rings(&self) -> bool {
        matches!(self, Inside::Packet(p) if p.on_rings())
    }

    /// The TAP, for a TAP attachment.
    pub fn as_tap(&self) -> Option<&Arc<Tap>> {
        match self {
            Inside::Tap(t) => Some(t),
            Inside::Packet(_) | Inside::VhostUser(_) => None,
        }
    }
}

impl From<Tap> for Inside {
    fn from(t: Tap) -> Inside {
        Inside::Tap(Arc::new(t))
    }
}
