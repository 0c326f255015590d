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
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd};
use std::time::Duration;

/// `SOL_PACKET` option: do not deliver frames this host transmits
/// (`linux/if_packet.h`, Linux 4.20).
const PACKET_IGNORE_OUTGOING: libc::c_int = 23;

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
        Self::open_with(name, read_timeout, None)
    }

    fn open_with(name: &str, read_timeout: Duration, socket_fd: Option<i32>) -> Result<AfPacket, IoError> {
        ifreq::validate_name(name)?;
        // A descriptor handed to pnet is closed by it only once the channel
        // exists: close it on the way out otherwise.
        let guard = socket_fd.map(|fd| {
            // SAFETY: the caller passes a descriptor it owns and gives up.
            unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) }
        });
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
            socket_fd: guard.as_ref().map(|g| g.as_raw_fd()),
            ..Config::default()
        };
        match pnet_datalink::channel(&iface, config) {
            Ok(Channel::Ethernet(tx, rx)) => {
                // pnet owns the descriptor now.
                let _ = guard.map(std::os::fd::IntoRawFd::into_raw_fd);
                Ok(AfPacket { tx, rx, mac, name: name.to_owned() })
            }
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

    /// Like [`AfPacket::open`], for a socket that only receives: it skips
    /// every frame this host transmits on the interface (Linux 4.20's
    /// `PACKET_IGNORE_OUTGOING`), so a reader does not read back what the
    /// gateway's own sockets send. Its [`AfPacket::send`] still works.
    pub fn open_receiver(name: &str, read_timeout: Duration) -> Result<AfPacket, IoError> {
        ifreq::validate_name(name)?;
        // SAFETY: socket(2) with constant arguments; the returned
        // descriptor is checked, and owned below.
        let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, (libc::ETH_P_ALL as u16).to_be() as i32) };
        if fd < 0 {
            return Err(IoError::sys("AF_PACKET socket", io::Error::last_os_error()));
        }
        // SAFETY: `fd` is a descriptor we just created and own nowhere else.
        let owned = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
        let one: libc::c_int = 1;
        // SAFETY: `owned` is a valid socket; the option value is a live
        // `c_int` whose size is passed.
        let r = unsafe {
            libc::setsockopt(
                owned.as_raw_fd(),
                libc::SOL_PACKET,
                PACKET_IGNORE_OUTGOING,
                (&one as *const libc::c_int).cast(),
                core::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if r != 0 {
            return Err(IoError::sys("PACKET_IGNORE_OUTGOING", io::Error::last_os_error()));
        }
        // pnet takes the descriptor over (it closes it when dropped).
        Self::open_with(name, read_timeout, Some(owned.into_raw_fd()))
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

/// A send-only `AF_PACKET` socket bound to one interface: protocol 0, so
/// it receives nothing (no frame is queued to it, unlike [`AfPacket`]'s
/// `ETH_P_ALL` socket). Frames go out with one `write` each
/// ([`PacketSender::send`]) or many per `sendmmsg` ([`PacketSender::send_batch`]);
/// its descriptor may also be written through an io_uring.
///
/// Frames must be whole Ethernet frames with complete checksums, at most
/// MTU + 14 bytes; the kernel refuses longer ones (`EMSGSIZE`).
#[derive(Debug)]
pub struct PacketSender {
    fd: std::os::fd::OwnedFd,
    name: String,
}

/// Frames one [`PacketSender::send_batch`] call passes to `sendmmsg`.
pub const SEND_BATCH: usize = 64;

impl PacketSender {
    /// Opens the socket and binds it to the existing interface `name`.
    ///
    /// Errors: [`IoError::BadName`], [`IoError::NoSuchInterface`],
    /// [`IoError::NotPermitted`] (needs `CAP_NET_RAW`), [`IoError::Sys`].
    pub fn open(name: &str) -> Result<PacketSender, IoError> {
        use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
        let index = ifreq::index(name)?;
        // SAFETY: socket(2) takes no pointers; a non-negative result is a
        // new descriptor that nothing else owns.
        let raw = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
        if raw < 0 {
            return Err(IoError::sys("AF_PACKET socket", io::Error::last_os_error()));
        }
        // SAFETY: `raw` was just returned by socket(2) and is owned by no one else.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // SAFETY: sockaddr_ll is plain old data; all-zero is a valid value.
        let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_protocol = 0;
        sll.sll_ifindex = index as i32;
        // SAFETY: bind(2) reads `size_of::<sockaddr_ll>()` bytes from a valid,
        // initialised `sll` that outlives the call.
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                &sll as *const libc::sockaddr_ll as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        if rc < 0 {
            let e = io::Error::last_os_error();
            return Err(match e.raw_os_error() {
                Some(libc::ENODEV) | Some(libc::ENXIO) => IoError::NoSuchInterface { name: name.to_owned() },
                _ => IoError::sys("AF_PACKET bind", e),
            });
        }
        Ok(PacketSender { fd, name: name.to_owned() })
    }

    /// Sends one frame (one `write`).
    pub fn send(&self, frame: &[u8]) -> io::Result<()> {
        rustix::io::write(&self.fd, frame)?;
        Ok(())
    }

    /// Sends up to [`SEND_BATCH`] frames with one `sendmmsg`; returns how
    /// many the kernel took (they go in order, so the rest start at that
    /// index). An error means the first frame was refused.
    pub fn send_batch(&self, frames: &[&[u8]]) -> io::Result<usize> {
        use std::os::fd::AsRawFd;
        let n = frames.len().min(SEND_BATCH);
        if n == 0 {
            return Ok(0);
        }
        // SAFETY: iovec and mmsghdr are plain old data; all-zero is valid.
        let mut iov: [libc::iovec; SEND_BATCH] = unsafe { std::mem::zeroed() };
        // SAFETY: as above.
        let mut msgs: [libc::mmsghdr; SEND_BATCH] = unsafe { std::mem::zeroed() };
        for i in 0..n {
            iov[i] = libc::iovec { iov_base: frames[i].as_ptr() as *mut libc::c_void, iov_len: frames[i].len() };
            msgs[i].msg_hdr.msg_iov = &mut iov[i];
            msgs[i].msg_hdr.msg_iovlen = 1;
        }
        // SAFETY: `msgs[..n]` are initialised headers whose single iovec each
        // points at a live frame slice; the kernel only reads them (and
        // writes `msg_len`), all within this call.
        let rc = unsafe { libc::sendmmsg(self.fd.as_raw_fd(), msgs.as_mut_ptr(), n as libc::c_uint, 0) };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(rc as usize)
    }

    /// The interface name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl std::os::fd::AsRawFd for PacketSender {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.fd.as_raw_fd()
    }
}
