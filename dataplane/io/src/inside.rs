//! Inside devices: what an attachment is on the host side, as a worker
//! reads and writes it.
//!
//! - [`Inside::Tap`]: a TAP queue whose descriptor the gateway holds; the
//!   environments sit on the kernel side (a network namespace, or a bridge
//!   the VMM's TAP is joined to).
//! - [`Inside::Packet`]: an existing interface the gateway does not own
//!   (the host side of a VMM's TAP, a veth), read with a [`PacketReceiver`]
//!   (promiscuous, this host's transmissions skipped, always with the
//!   offload header) and written with a [`PacketSender`] (with the offload
//!   header when the gateway's offloads are on, so partial checksums and
//!   superframes go out as they are and the kernel finishes them for the
//!   device; without, the worker completes checksums in software and drops
//!   superframes).
//! - [`Inside::VhostUser`]: a vhost-user-net device on a Unix socket (the
//!   VMM's network device; [`crate::vhost_user`]): no descriptor to read,
//!   the owning worker takes the port and polls its queues when woken.
//!
//! Invariants: a device is read by exactly one worker (the one its
//! attachment is assigned to); a TAP or packet device is written by any
//! worker (frames for its port), a vhost-user one only by its owner (the
//! others hand frames over). A TAP's or packet device's reading side is
//! one descriptor a poller or ring can wait on ([`Inside::rx_source`]),
//! its frames landing in a worker buffer as [`RxSource`] describes.

use crate::afpacket::PacketSender;
use crate::error::IoError;
use crate::packet_rx::{PacketReceiver, RxOptions};
use crate::rx_source::RxSource;
use crate::tap::Tap;
use crate::vhost_user::VhostUserAttachment;
use std::sync::Arc;

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

/// The two `AF_PACKET` sockets of an [`Inside::Packet`] attachment.
#[derive(Debug)]
pub struct PacketPort {
    /// Receives what the environments send (promiscuous, offload header,
    /// this host's transmissions skipped; non-blocking).
    pub rx: Arc<PacketReceiver>,
    /// Sends to the environments (send-only: receives nothing).
    pub tx: PacketSender,
}

impl PacketPort {
    /// Opens both sockets on the existing interface `name`; `vnet_hdr`:
    /// frames sent carry the offload header (the gateway's offloads are
    /// on).
    ///
    /// Errors: [`IoError::BadName`], [`IoError::NoSuchInterface`],
    /// [`IoError::NotPermitted`] (needs `CAP_NET_RAW`), [`IoError::Sys`].
    pub fn open(name: &str, vnet_hdr: bool) -> Result<PacketPort, IoError> {
        let opts = RxOptions { vnet_hdr: true, fanout: None, steer: false, read_timeout: None };
        let rx = Arc::new(PacketReceiver::open(name, opts)?);
        let tx = PacketSender::open_with(name, vnet_hdr)?;
        Ok(PacketPort { rx, tx })
    }
}

impl Inside {
    /// What its worker reads; `None` for a vhost-user device (its owner
    /// polls the port itself).
    pub fn rx_source(&self) -> Option<RxSource> {
        match self {
            Inside::Tap(t) => Some(RxSource::Tap(Arc::clone(t))),
            Inside::Packet(p) => Some(RxSource::Packet(Arc::clone(&p.rx))),
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
