//! The receiving side of an `AF_PACKET` outside: a raw socket on an
//! existing interface that hands over each frame with the offload state the
//! kernel knows about it.
//!
//! Contracts:
//! - the socket is bound to the interface with `ETH_P_ALL`, the interface is
//!   put into promiscuous mode for as long as the socket is open
//!   (`PACKET_MR_PROMISC`: frames to the ENI MACs arrive even when they are
//!   not the interface's), and frames this host transmits on the interface
//!   are skipped (`PACKET_IGNORE_OUTGOING`, Linux 4.20);
//! - with [`RxOptions::vnet_hdr`] (`PACKET_VNET_HDR`) every frame is
//!   preceded by a [`PACKET_VNET_LEN`]-byte `struct virtio_net_hdr` in host
//!   byte order (little-endian on every platform this runs on) describing a
//!   partial checksum (`CHECKSUM_PARTIAL`, as a veth, bridge or virtio NIC
//!   passes on locally generated packets) or a GSO superframe: the same
//!   header a TAP with `IFF_VNET_HDR` gives, less its last two bytes
//!   (`num_buffers`);
//! - with [`RxOptions::fanout`] the socket joins a `PACKET_FANOUT` group
//!   (`PACKET_FANOUT_HASH`: the frames of one flow always reach the same
//!   socket of the group, every fragment of a datagram too, and each frame
//!   only one of them), which skips this host's transmissions too
//!   (`PACKET_FANOUT_FLAG_IGNORE_OUTGOING`, Linux 6.9: a member's own
//!   `PACKET_IGNORE_OUTGOING` no longer applies once it joins; an older
//!   kernel refuses the flag, and the join fails);
//! - [`PacketReceiver::recv`] returns one frame, or `WouldBlock`/`TimedOut`
//!   after the read timeout (`None`: it does not block); a frame longer than
//!   the buffer is reported as `InvalidData` (its length is known from
//!   `MSG_TRUNC`), never returned cut short.

use super::error::IoError;
use super::ifreq;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

/// `SOL_PACKET` option: prefix each frame with a `virtio_net_hdr`.
const PACKET_VNET_HDR: libc::c_int = 15;
/// `SOL_PACKET` option: join a fanout group.
const PACKET_FANOUT: libc::c_int = 18;
/// `SOL_PACKET` option: skip frames this host transmits (Linux 4.20).
const PACKET_IGNORE_OUTGOING: libc::c_int = 23;
/// Fanout mode: by the flow hash of the frame.
const PACKET_FANOUT_HASH: u32 = 0;
/// Fanout mode: by a classic BPF program's answer.
const PACKET_FANOUT_CBPF: u32 = 6;
/// `SOL_PACKET` option: the fanout group's program.
const PACKET_FANOUT_DATA: libc::c_int = 22;
/// Fanout flag: the group skips frames this host transmits (a member's
/// own `PACKET_IGNORE_OUTGOING` stops applying once it joins; Linux 6.9).
const PACKET_FANOUT_FLAG_IGNORE_OUTGOING: u32 = 0x4000;

/// Receive buffer asked for each socket, bytes: a burst of a few thousand
/// frames waits in it while the reading worker is busy (the kernel's
/// default, about 200 KiB, holds some 150 and drops the rest uncounted by
/// us). `SO_RCVBUFFORCE` (with `CAP_NET_ADMIN`), else `SO_RCVBUF` up to
/// `net.core.rmem_max`.
pub const RCVBUF: usize = 8 << 20;

/// Bytes of the `virtio_net_hdr` `PACKET_VNET_HDR` puts before (and expects
/// before) each frame: the 12-byte TAP header without `num_buffers`.
pub const PACKET_VNET_LEN: usize = 10;

/// How to open a [`PacketReceiver`].
#[derive(Clone, Copy, Debug, Default)]
pub struct RxOptions {
    /// Prefix each frame with its offload header (`PACKET_VNET_HDR`).
    pub vnet_hdr: bool,
    /// Join this `PACKET_FANOUT` group (an id unique to the gateway; every
    /// socket of one group must be opened with the same options).
    pub fanout: Option<u16>,
    /// Join the group in `PACKET_FANOUT_CBPF` mode instead of by flow hash:
    /// a program ([`PacketReceiver::set_fanout_program`]) picks the member.
    pub steer: bool,
    /// Block at most this long in [`PacketReceiver::recv`]; `None`: never
    /// block (a socket a poller watches).
    pub read_timeout: Option<Duration>,
}

/// A receiving `AF_PACKET` socket. See the module docs.
#[derive(Debug)]
pub struct PacketReceiver {
    fd: OwnedFd,
    name: String,
    vnet_hdr: bool,
}

/// `setsockopt(fd, level, opt, &value)` for a plain-data `value`; the error
/// names `op`.
pub(crate) fn set_opt<T: Copy>(
    fd: &OwnedFd,
    level: libc::c_int,
    opt: libc::c_int,
    value: T,
    op: &'static str,
) -> Result<(), IoError> {
    // SAFETY: `fd` is a valid socket; the option value is a live `T` whose
    // size is passed, and the kernel only reads it during the call.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            opt,
            (&value as *const T).cast(),
            std::mem::size_of::<T>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(IoError::sys(op, io::Error::last_os_error()));
    }
    Ok(())
}

/// A new `AF_PACKET` raw socket for `protocol` (host order), bound to
/// interface `name`.
pub(crate) fn bound_socket(name: &str, protocol: u16) -> Result<OwnedFd, IoError> {
    let fd = raw_socket(0)?;
    bind(&fd, name, protocol)?;
    Ok(fd)
}

/// A new, unbound `AF_PACKET` raw socket for `protocol` (host order; 0
/// receives nothing until bound with another protocol).
pub(crate) fn raw_socket(protocol: u16) -> Result<OwnedFd, IoError> {
    let proto_be = protocol.to_be();
    // SAFETY: socket(2) takes no pointers; a non-negative result is a new
    // descriptor that nothing else owns.
    let raw = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, i32::from(proto_be)) };
    if raw < 0 {
        return Err(IoError::sys("AF_PACKET socket", io::Error::last_os_error()));
    }
    // SAFETY: `raw` was just returned by socket(2) and is owned by no one else.
    Ok(unsafe { OwnedFd::from_raw_fd(raw) })
}

/// Binds `fd` to interface `name` for `protocol` (host order): frames of
/// that protocol start to arrive (`ETH_P_ALL`: every frame).
pub(crate) fn bind(fd: &OwnedFd, name: &str, protocol: u16) -> Result<(), IoError> {
    let index = ifreq::index(name)?;
    let proto_be = protocol.to_be();
    // SAFETY: sockaddr_ll is plain old data; all-zero is a valid value.
    let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    sll.sll_family = libc::AF_PACKET as u16;
    sll.sll_protocol = proto_be;
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
    Ok(())
}

/// Asks for `PACKET_VNET_HDR` on `fd` (before any frame is sent or
/// received on it).
pub(crate) fn enable_vnet_hdr(fd: &OwnedFd) -> Result<(), IoError> {
    set_opt(fd, libc::SOL_PACKET, PACKET_VNET_HDR, 1 as libc::c_int, "PACKET_VNET_HDR")
}

/// The options a receiving socket needs before it is bound (and before a
/// ring is set up on it): `PACKET_IGNORE_OUTGOING`, `PACKET_VNET_HDR`.
pub(crate) fn before_bind(fd: &OwnedFd, opts: RxOptions) -> Result<(), IoError> {
    set_opt(fd, libc::SOL_PACKET, PACKET_IGNORE_OUTGOING, 1 as libc::c_int, "PACKET_IGNORE_OUTGOING")?;
    if opts.vnet_hdr {
        enable_vnet_hdr(fd)?;
    }
    Ok(())
}

/// What a receiving socket bound to `name` needs then: promiscuous mode,
/// the read timeout (or non-blocking), its receive buffer, and the fanout
/// group (which only a bound socket may join).
pub(crate) fn after_bind(fd: &OwnedFd, name: &str, opts: RxOptions) -> Result<(), IoError> {
    let index = ifreq::index(name)?;
    // SAFETY: packet_mreq is plain old data; all-zero is a valid value.
    let mut mr: libc::packet_mreq = unsafe { std::mem::zeroed() };
    mr.mr_ifindex = index as i32;
    mr.mr_type = libc::PACKET_MR_PROMISC as u16;
    set_opt(fd, libc::SOL_PACKET, libc::PACKET_ADD_MEMBERSHIP, mr, "PACKET_ADD_MEMBERSHIP (promiscuous)")?;
    match opts.read_timeout {
        Some(t) => {
            let t = t.max(Duration::from_millis(1));
            let tv = libc::timeval { tv_sec: t.as_secs() as libc::time_t, tv_usec: t.subsec_micros() as _ };
            set_opt(fd, libc::SOL_SOCKET, libc::SO_RCVTIMEO, tv, "SO_RCVTIMEO")?;
        }
        None => rustix::io::ioctl_fionbio(fd, true).map_err(|e| IoError::sys("FIONBIO", e.into()))?,
    }
    let size = RCVBUF as libc::c_int;
    if set_opt(fd, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, size, "SO_RCVBUFFORCE").is_err() {
        set_opt(fd, libc::SOL_SOCKET, libc::SO_RCVBUF, size, "SO_RCVBUF")?;
    }
    if let Some(group) = opts.fanout {
        // No defragmentation flag: the flow hash of a fragment covers
        // the addresses and protocol only (ports are not parsed), so
        // every fragment of a datagram reaches the same socket anyway.
        let mode = if opts.steer { PACKET_FANOUT_CBPF } else { PACKET_FANOUT_HASH };
        let arg: u32 = u32::from(group) | ((mode | PACKET_FANOUT_FLAG_IGNORE_OUTGOING) << 16);
        set_opt(fd, libc::SOL_PACKET, PACKET_FANOUT, arg, "PACKET_FANOUT")?;
    }
    Ok(())
}

/// Sets the program of `fd`'s `PACKET_FANOUT_CBPF` group.
pub(crate) fn set_fanout_program(fd: &OwnedFd, prog: &[libc::sock_filter]) -> Result<(), IoError> {
    let len = u16::try_from(prog.len())
        .map_err(|_| IoError::sys("PACKET_FANOUT_DATA", io::Error::from(io::ErrorKind::InvalidInput)))?;
    let fprog = libc::sock_fprog { len, filter: prog.as_ptr() as *mut libc::sock_filter };
    // The kernel copies the program during the call; `prog` outlives it.
    set_opt(fd, libc::SOL_PACKET, PACKET_FANOUT_DATA, fprog, "PACKET_FANOUT_DATA")
}

/// Frames the kernel dropped at `fd` since the last call
/// (`PACKET_STATISTICS`, which resets on read; with a ring, frames that
/// found no room in it).
pub(crate) fn take_drops(fd: &OwnedFd) -> io::Result<u64> {
    // SAFETY: tpacket_stats is plain old data; all-zero is valid.
    let mut st: libc::tpacket_stats = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::tpacket_stats>() as libc::socklen_t;
    // SAFETY: getsockopt(2) writes at most `len` bytes into `st`, a live
    // exclusive value of that size, and updates `len` (a `TPACKET_V3`
    // socket's statistics are longer; the kernel copies the first `len`
    // bytes, which have the same layout).
    let rc = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_PACKET,
            libc::PACKET_STATISTICS,
            (&mut st as *mut libc::tpacket_stats).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(u64::from(st.tp_drops))
}

impl PacketReceiver {
    /// Opens the socket on the existing interface `name` (see the module
    /// docs for what each option does).
    ///
    /// Errors: [`IoError::BadName`], [`IoError::NoSuchInterface`],
    /// [`IoError::NotPermitted`] (needs `CAP_NET_RAW`), [`IoError::Sys`]
    /// naming the option the kernel refused (`PACKET_IGNORE_OUTGOING` before
    /// Linux 4.20, `PACKET_FANOUT`, ...).
    pub fn open(name: &str, opts: RxOptions) -> Result<PacketReceiver, IoError> {
        ifreq::validate_name(name)?;
        let fd = raw_socket(0)?;
        before_bind(&fd, opts)?;
        bind(&fd, name, libc::ETH_P_ALL as u16)?;
        after_bind(&fd, name, opts)?;
        Ok(PacketReceiver { fd, name: name.to_owned(), vnet_hdr: opts.vnet_hdr })
    }

    /// Receives one frame into `buf` (preceded by its
    /// [`PACKET_VNET_LEN`]-byte header with [`RxOptions::vnet_hdr`]);
    /// returns the bytes written. Errors: `WouldBlock`/`TimedOut` when
    /// nothing came, `InvalidData` for a frame longer than `buf` (dropped).
    pub fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        // SAFETY: recv(2) writes at most `buf.len()` bytes into `buf`, a
        // live exclusive slice; MSG_TRUNC only changes the returned length.
        let n = unsafe { libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), libc::MSG_TRUNC) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let n = n as usize;
        if n > buf.len() {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "frame longer than the buffer"));
        }
        Ok(n)
    }

    /// Sets the program of this socket's `PACKET_FANOUT_CBPF` group (see
    /// [`crate::fanout_bpf`]): it returns the member's index (in join order,
    /// taken modulo the group size). Errors name `PACKET_FANOUT_DATA`.
    pub fn set_fanout_program(&self, prog: &[libc::sock_filter]) -> Result<(), IoError> {
        set_fanout_program(&self.fd, prog)
    }

    /// Frames the kernel dropped for want of room in this socket's buffer
    /// since the last call (`PACKET_STATISTICS`, which resets on read).
    pub fn take_drops(&self) -> io::Result<u64> {
        take_drops(&self.fd)
    }

    /// Whether frames come with a [`PACKET_VNET_LEN`]-byte header.
    pub fn vnet_hdr(&self) -> bool {
        self.vnet_hdr
    }

    /// The interface name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl AsFd for PacketReceiver {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl AsRawFd for PacketReceiver {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}
