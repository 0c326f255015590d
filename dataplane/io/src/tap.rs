//! TAP devices: Ethernet frames to and from the kernel through `/dev/net/tun`.
//!
//! A [`Tap`] is one queue (one file descriptor) of a TAP device opened with
//! `IFF_TAP | IFF_NO_PI`: every `read` returns exactly one whole Ethernet
//! frame (destination MAC first, no FCS, no padding to 60 bytes) and every
//! `write` must carry exactly one, with no 4-byte packet-information prefix.
//!
//! # Virtio-net header
//!
//! With [`TapOptions::vnet_hdr`] the device is opened with `IFF_VNET_HDR` and
//! every frame in both directions is preceded by a [`VNET_HDR_LEN`]-byte
//! virtio-net header ([`super::vnet::VnetHdr`]). We set the header size to 12
//! bytes (`struct virtio_net_hdr_v1`, i.e. the `mrg_rxbuf` layout ending with
//! `num_buffers`) rather than the legacy 10: it is the only header virtio 1.0
//! devices use, so buffers and parsing can be shared with virtio/vhost style
//! tooling, at a cost of 2 bytes per frame. (Alignment is not a reason either
//! way: all parsing in the crate is byte-wise.) We write
//! `num_buffers` as 0 and ignore it on receive (the kernel only writes the
//! first 10 bytes on older kernels and zeroes the rest on newer ones). We also
//! set `TUNSETVNETLE`, so the header's 16-bit fields are little-endian on
//! every host, matching [`super::vnet::VnetHdr`]'s wire format.
//!
//! `IFF_VNET_HDR` is a device-wide flag: the last queue attached decides it
//! for all queues. [`Tap::open_queue`] reuses this queue's options.
//!
//! # Offloads
//!
//! [`Tap::set_offload`] (`TUNSETOFFLOAD`) tells the kernel what *we* can take
//! on receive: with [`TUN_F_CSUM`] it may hand us frames whose transport
//! checksum is only partially computed (`F_NEEDS_CSUM` in the header, see
//! [`super::vnet::complete_checksum`]); with the TSO flags it may hand us TCP
//! super-frames of up to 64 KiB to be segmented by `gso_size`. TSO flags
//! (and [`TUN_F_UFO`]) require `TUN_F_CSUM`, without it they fail with
//! `EINVAL`, as do unknown flags. Offloads need `IFF_VNET_HDR`: the header is
//! the only place the kernel can say a checksum is partial or a frame is a
//! super-frame, so `set_offload` with non-zero flags on a queue without it is
//! refused (`InvalidInput`) rather than silently corrupting frames.
//! Frames we *send* may carry `F_NEEDS_CSUM`/GSO metadata regardless.
//!
//! # Lifetime
//!
//! [`Tap::open`] creates the device if no interface has that name, or attaches
//! to an existing TAP device of that name. The device is not made persistent:
//! dropping a [`Tap`] closes its descriptor, and when the last queue of a
//! device we created closes, the kernel deletes the device (a device made
//! persistent elsewhere, e.g. by `ip tuntap add`, stays). "Closes" means the
//! last reference to the open file goes: a child forked by another thread
//! holds a copy until it execs (close-on-exec), which can delay the deletion
//! briefly. The descriptor keeps working if the device is moved to another
//! network namespace; deleting that namespace deletes the device, after which
//! reads and writes fail.
//!
//! All descriptors are non-blocking and close-on-exec: [`Tap::recv`] returns
//! `WouldBlock` when no frame is queued; wait with [`super::poll::Poller`].

use super::error::IoError;
use super::ifreq;
use std::fs::OpenOptions;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;

/// Size in bytes of the virtio-net header before every frame when
/// [`TapOptions::vnet_hdr`] is set (`struct virtio_net_hdr_v1`).
pub const VNET_HDR_LEN: usize = 12;

/// We can take frames whose transport checksum is partial.
pub const TUN_F_CSUM: u32 = 0x01;
/// We can take IPv4 TCP super-frames (needs [`TUN_F_CSUM`]).
pub const TUN_F_TSO4: u32 = 0x02;
/// We can take IPv6 TCP super-frames (needs [`TUN_F_CSUM`]).
pub const TUN_F_TSO6: u32 = 0x04;
/// We can take TCP super-frames with ECN (CWR set) (needs a TSO flag).
pub const TUN_F_TSO_ECN: u32 = 0x08;
/// UDP fragmentation offload: obsolete; accepted only together with
/// [`TUN_F_CSUM`] (as on Linux 6.18). Do not rely on UDP super-frames.
pub const TUN_F_UFO: u32 = 0x10;
/// Checksum and TCP segmentation offloads, the useful set for a NAT.
pub const OFFLOADS_TCP: u32 = TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6 | TUN_F_TSO_ECN;

/// How to open a TAP queue.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TapOptions {
    /// Prefix every frame with a [`VNET_HDR_LEN`]-byte virtio-net header
    /// (`IFF_VNET_HDR`).
    pub vnet_hdr: bool,
    /// Open the device as multi-queue (`IFF_MULTI_QUEUE`), so that
    /// [`Tap::open_queue`] can attach more queues (up to 256).
    pub multi_queue: bool,
}

/// One queue of a TAP device. See the module docs.
#[derive(Debug)]
pub struct Tap {
    fd: OwnedFd,
    name: String,
    vnet_hdr: bool,
    multi_queue: bool,
}

impl Tap {
    /// Opens a queue of the TAP device `name`, creating the device if no
    /// interface has that name.
    ///
    /// Errors: [`IoError::BadName`], [`IoError::NoTunDevice`],
    /// [`IoError::NotPermitted`], [`IoError::NotTap`] (the name belongs to a
    /// non-TAP interface, the multi-queue setting differs, or a single-queue
    /// device is already open), [`IoError::Sys`].
    pub fn open(name: &str, opts: TapOptions) -> Result<Tap, IoError> {
        let mut req = ifreq::ifreq_for(name)?;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK) // std adds O_CLOEXEC itself
            .open("/dev/net/tun")
            .map_err(|e| match e.raw_os_error() {
                Some(libc::ENOENT) | Some(libc::ENODEV) | Some(libc::ENXIO) => IoError::NoTunDevice,
                _ => IoError::sys("open /dev/net/tun", e),
            })?;
        let fd = OwnedFd::from(file);

        let mut flags = libc::IFF_TAP | libc::IFF_NO_PI;
        if opts.vnet_hdr {
            flags |= libc::IFF_VNET_HDR;
        }
        if opts.multi_queue {
            flags |= libc::IFF_MULTI_QUEUE;
        }
        req.ifr_ifru.ifru_flags = flags as libc::c_short;
        // SAFETY: TUNSETIFF reads and writes one `ifreq`; `req` is valid,
        // exclusively borrowed, NUL-terminated and outlives the call.
        let rc = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNSETIFF as _, &mut req as *mut libc::ifreq) };
        if rc < 0 {
            let err = io::Error::last_os_error();
            let not_tap = |reason| IoError::NotTap { name: name.to_owned(), reason };
            return Err(match err.raw_os_error() {
                Some(libc::EINVAL) if ifreq::index(name).is_ok() => {
                    not_tap("the interface exists but is not a TAP device, or its multi-queue setting differs")
                }
                Some(libc::EBUSY) => not_tap("the device is busy (a single-queue TAP whose queue is already open)"),
                _ => IoError::sys("TUNSETIFF", err),
            });
        }

        if opts.vnet_hdr {
            let size = VNET_HDR_LEN as libc::c_int;
            // SAFETY: TUNSETVNETHDRSZ reads one `int` through the pointer;
            // `size` is valid and outlives the call.
            let rc = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNSETVNETHDRSZ as _, &size as *const libc::c_int) };
            if rc < 0 {
                return Err(IoError::sys("TUNSETVNETHDRSZ", io::Error::last_os_error()));
            }
            let le: libc::c_int = 1;
            // SAFETY: TUNSETVNETLE reads one `int` through the pointer; `le`
            // is valid and outlives the call.
            let rc = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNSETVNETLE as _, &le as *const libc::c_int) };
            if rc < 0 {
                return Err(IoError::sys("TUNSETVNETLE", io::Error::last_os_error()));
            }
        }

        Ok(Tap { fd, name: name.to_owned(), vnet_hdr: opts.vnet_hdr, multi_queue: opts.multi_queue })
    }

    /// Opens another queue of this (multi-queue) device, with the same
    /// options. Queues are independent descriptors; the kernel spreads
    /// frames it transmits over them by flow hash, or as the device's
    /// steering program says ([`Tap::set_steering_program`]).
    pub fn open_queue(&self) -> Result<Tap, IoError> {
        if !self.multi_queue {
            return Err(IoError::NotTap { name: self.name.clone(), reason: "not opened with multi_queue" });
        }
        Tap::open(&self.name, TapOptions { vnet_hdr: self.vnet_hdr, multi_queue: true })
    }

    /// Sets the receive offloads (`TUNSETOFFLOAD`): a combination of the
    /// `TUN_F_*` flags, e.g. [`OFFLOADS_TCP`]; 0 turns them all off.
    /// Non-zero flags need [`TapOptions::vnet_hdr`] (see the module docs).
    pub fn set_offload(&self, flags: u32) -> Result<(), IoError> {
        if flags != 0 && !self.vnet_hdr {
            return Err(IoError::Sys {
                op: "TUNSETOFFLOAD",
                source: io::Error::new(io::ErrorKind::InvalidInput, "offloads need a virtio-net header (vnet_hdr)"),
            });
        }
        // SAFETY: TUNSETOFFLOAD takes its argument by value; no memory is
        // accessed.
        let rc = unsafe { libc::ioctl(self.fd.as_raw_fd(), libc::TUNSETOFFLOAD as _, libc::c_ulong::from(flags)) };
        if rc < 0 {
            return Err(IoError::sys("TUNSETOFFLOAD", io::Error::last_os_error()));
        }
        Ok(())
    }

    /// Sets the device's steering program (`TUNSETSTEERINGEBPF`), a loaded
    /// socket filter program (see [`crate::steer_ebpf`]), or removes it
    /// (`None`). The program is the device's, whichever queue sets it: it
    /// picks the queue of every frame the kernel transmits to the device
    /// (its return value modulo the number of queues), and with it set the
    /// kernel no longer hashes frames written to a multi-queue device. The
    /// device holds its own reference: `prog` may be closed afterwards.
    pub fn set_steering_program(&self, prog: Option<BorrowedFd<'_>>) -> Result<(), IoError> {
        /// `_IOR('T', 224, int)`.
        const TUNSETSTEERINGEBPF: libc::c_ulong = 0x8004_54e0;
        let fd: libc::c_int = prog.map_or(-1, |p| p.as_raw_fd());
        // SAFETY: TUNSETSTEERINGEBPF reads one `int` (a program descriptor,
        // or -1) through the pointer; `fd` is valid and outlives the call.
        let rc = unsafe { libc::ioctl(self.fd.as_raw_fd(), TUNSETSTEERINGEBPF as _, &fd as *const libc::c_int) };
        if rc < 0 {
            return Err(IoError::sys("TUNSETSTEERINGEBPF", io::Error::last_os_error()));
        }
        Ok(())
    }

    /// Sets the device MTU in bytes; see [`ifreq::set_mtu`].
    pub fn set_mtu(&self, mtu: u32) -> Result<(), IoError> {
        ifreq::set_mtu(&self.name, mtu)
    }

    /// The device MTU in bytes; see [`ifreq::mtu`].
    pub fn mtu(&self) -> Result<u32, IoError> {
        ifreq::mtu(&self.name)
    }

    /// Brings the device up; see [`ifreq::set_up`].
    pub fn set_up(&self) -> Result<(), IoError> {
        ifreq::set_up(&self.name)
    }

    /// The device MAC address (the kernel side's); see [`ifreq::hw_addr`].
    pub fn hw_addr(&self) -> Result<[u8; 6], IoError> {
        ifreq::hw_addr(&self.name)
    }

    /// Sets the device MAC address; see [`ifreq::set_hw_addr`].
    pub fn set_hw_addr(&self, mac: [u8; 6]) -> Result<(), IoError> {
        ifreq::set_hw_addr(&self.name, mac)
    }

    /// Reads one frame (with its virtio-net header first if
    /// [`Tap::vnet_hdr`]) into `buf` and returns its length in bytes.
    ///
    /// One `read(2)`: `WouldBlock` when nothing is queued, other errors as
    /// the kernel gives them. A frame longer than `buf` is truncated, so size
    /// `buf` for MTU + 14 (+ [`VNET_HDR_LEN`]), or 64 KiB + header with TSO
    /// offloads. With a virtio-net header a `buf` shorter than the header
    /// fails with `EINVAL`.
    pub fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        Ok(rustix::io::read(&self.fd, buf)?)
    }

    /// Writes one frame (with its virtio-net header first if
    /// [`Tap::vnet_hdr`]); returns the bytes written (all of them on
    /// success). The kernel drops malformed frames with `EINVAL`.
    pub fn send(&self, buf: &[u8]) -> io::Result<usize> {
        Ok(rustix::io::write(&self.fd, buf)?)
    }

    /// Writes one frame given as `hdr` followed by `frame` (`writev(2)`), so a
    /// virtio-net header can be prepended without copying the frame. `hdr`
    /// may be empty. Returns the bytes written (both parts).
    pub fn send_vectored(&self, hdr: &[u8], frame: &[u8]) -> io::Result<usize> {
        Ok(rustix::io::writev(&self.fd, &[io::IoSlice::new(hdr), io::IoSlice::new(frame)])?)
    }

    /// The interface name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether frames carry a [`VNET_HDR_LEN`]-byte virtio-net header.
    pub fn vnet_hdr(&self) -> bool {
        self.vnet_hdr
    }

    /// Whether the device was opened multi-queue.
    pub fn multi_queue(&self) -> bool {
        self.multi_queue
    }
}

impl AsRawFd for Tap {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

impl AsFd for Tap {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}
