//! Where the environments' frames go in and out: the user side of the load generator's TAP (our lab, the kernel
//! topology), or an `AF_PACKET` socket on an existing link (a NAT someone else runs, `--inside`).
//!
//! Both are non-blocking: [`Port::recv`] gives one whole Ethernet frame or `WouldBlock`; [`Port::send`] takes one
//! whole frame. The packet socket is promiscuous (the environments' MACs are not the link's), skips what this host
//! transmits (so the load generator never reads its own frames back), and lives in the namespace it was opened in
//! whichever thread uses it.

use dataplane_io::tap::Tap;
use dataplane_io::{PacketReceiver, RxOptions};
use std::io;
use std::os::fd::{AsFd, BorrowedFd};

/// A TAP queue or a packet socket on a link.
#[derive(Debug)]
pub enum Port {
    /// The load generator's TAP.
    Tap(Tap),
    /// A packet socket bound to an existing link.
    Packet(PacketReceiver),
}

impl Port {
    /// A packet socket on `link` in `ns` (see the module doc), with a deep send buffer
    /// ([`crate::sender::deep_send_buffer`]).
    pub fn packet(ns: &netlab::Netns, link: &str) -> Result<Port, dataplane_io::IoError> {
        let link = link.to_owned();
        let p =
            ns.run(move || PacketReceiver::open(&link, RxOptions { read_timeout: None, ..RxOptions::default() }))?;
        crate::sender::deep_send_buffer(&p);
        Ok(Port::Packet(p))
    }

    /// Sends one frame; the bytes taken.
    pub fn send(&self, frame: &[u8]) -> io::Result<usize> {
        match self {
            Port::Tap(t) => t.send(frame),
            Port::Packet(p) => Ok(rustix::net::send(p, frame, rustix::net::SendFlags::empty())?),
        }
    }

    /// Receives one frame into `buf`; its length, or `WouldBlock`.
    pub fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Port::Tap(t) => t.recv(buf),
            Port::Packet(p) => p.recv(buf),
        }
    }

    /// The link's name.
    pub fn name(&self) -> &str {
        match self {
            Port::Tap(t) => t.name(),
            Port::Packet(p) => p.name(),
        }
    }
}

impl AsFd for Port {
    fn as_fd(&self) -> BorrowedFd<'_> {
        match self {
            Port::Tap(t) => t.as_fd(),
            Port::Packet(p) => p.as_fd(),
        }
    }
}
