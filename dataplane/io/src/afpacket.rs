//! The outside reached through an existing interface with an `AF_PACKET`
//! socket (via `pnet_datalink`).
//!
//! This is the slower, portable path: one system call per frame in each
//! direction, no batching, no offloads (the kernel hands over frames after GRO
//! and takes whole frames with complete checksums), a copy into an internal
//! buffer on receive. Use it where the outside is an existing NIC or veth that
//! cannot be replaced by a TAP.
//!
//! Contracts:
//! - the socket is bound to the interface with `ETH_P_ALL` and put into
//!   promiscuous mode, so frames to any MAC arrive, including ones for our
//!   own MAC when the gateway uses a MAC other than the interface's;
//! - frames the host itself transmits on the interface are delivered too
//!   (`ETH_P_ALL` sees outgoing traffic, except this socket's own sends);
//!   the caller filters, e.g. by source MAC;
//! - [`AfPacket::recv`] returns one whole frame of at most
//!   [`AFPACKET_BUF_LEN`] bytes (longer ones are truncated) or, after the
//!   read timeout, an error of kind `TimedOut`;
//! - the timeout is in whole milliseconds (shorter ones poll without waiting).

use super::error::IoError;
use super::ifreq;
use pnet_datalink::{Channel, Config, DataLinkReceiver, DataLinkSender};
use std::io;
use std::time::Duration;

/// The receive buffer size in bytes: a 64 KiB GRO frame plus its Ethernet
/// header fits.
pub const AFPACKET_BUF_LEN: usize = 65_536 + 256;

/// An `AF_PACKET` socket bound to one interface. See the module docs.
pub struct AfPacket {
    tx: Box<dyn DataLinkSender>,
    rx: Box<dyn DataLinkReceiver>,
    mac: [u8; 6],
    name: String,
}

impl AfPacket {
    /// Opens a promiscuous `AF_PACKET` socket on the existing interface
    /// `name`; [`AfPacket::recv`] gives up after `read_timeout`.
    ///
    /// Errors: [`IoError::BadName`], [`IoError::NoSuchInterface`],
    /// [`IoError::NotPermitted`] (needs `CAP_NET_RAW`), [`IoError::Sys`].
    pub fn open(name: &str, read_timeout: Duration) -> Result<AfPacket, IoError> {
        ifreq::validate_name(name)?;
        let iface = pnet_datalink::interfaces()
            .into_iter()
            .find(|i| i.name == name)
            .ok_or_else(|| IoError::NoSuchInterface { name: name.to_owned() })?;
        let mac = match iface.mac {
            Some(m) => m.octets(),
            None => ifreq::hw_addr(name)?,
        };
        let config = Config {
            read_buffer_size: AFPACKET_BUF_LEN,
            write_buffer_size: AFPACKET_BUF_LEN,
            read_timeout: Some(read_timeout),
            promiscuous: true,
            ..Config::default()
        };
        match pnet_datalink::channel(&iface, config) {
            Ok(Channel::Ethernet(tx, rx)) => Ok(AfPacket { tx, rx, mac, name: name.to_owned() }),
            Ok(_) => Err(IoError::Sys {
                op: "AF_PACKET channel",
                source: io::Error::new(io::ErrorKind::Unsupported, "not an Ethernet channel"),
            }),
            Err(e) => Err(match e.raw_os_error() {
                Some(libc::ENODEV) | Some(libc::ENXIO) => IoError::NoSuchInterface { name: name.to_owned() },
                _ => IoError::sys("AF_PACKET socket", e),
            }),
        }
    }

    /// Receives one frame, waiting up to the read timeout (then an error of
    /// kind `TimedOut`). The slice is valid until the next call.
    pub fn recv(&mut self) -> io::Result<&[u8]> {
        self.rx.next()
    }

    /// Sends one whole Ethernet frame (checksums complete, at most MTU + 14
    /// bytes).
    pub fn send(&mut self, frame: &[u8]) -> io::Result<()> {
        match self.tx.send_to(frame, None) {
            Some(r) => r,
            None => Err(io::Error::other("AF_PACKET sender refused the frame")),
        }
    }

    /// The interface's MAC address at open time.
    pub fn mac(&self) -> [u8; 6] {
        self.mac
    }

    /// The interface name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl std::fmt::Debug for AfPacket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AfPacket").field("name", &self.name).field("mac", &self.mac).finish_non_exhaustive()
    }
}
