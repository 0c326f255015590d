//! The `AF_PACKET` transmit ring ([`TxRing`]), a `TPACKET_V2` ring mapped
//! into the process (sizes from [`RingConfig`], the mapping and setup order
//! as in [`crate::packet_ring`]).
//!
//! Fixed slots of [`RingConfig::tx_frame_size`] bytes (a `struct
//! tpacket2_hdr`, the frame [`TX_DATA`] bytes in). [`TxRing::push`] copies a
//! frame (its virtio-net header first, when the socket takes one) into the
//! next free slot and marks it `TP_STATUS_SEND_REQUEST` (with the header, a
//! frame that is not a superframe gets `hdr_len` = its length, so that the
//! kernel copies it whole into the socket buffer rather than attaching the
//! slot's page: a veth or bridge copies such a page again); [`TxRing::kick`]
//! has the kernel send every marked slot with one `send()` that does not
//! wait (`MSG_DONTWAIT`). A slot is free again once the kernel is done with
//! it (`TP_STATUS_AVAILABLE`); a push that finds the next slot busy, or a
//! frame larger than a slot, returns false and the caller sends the frame
//! another way. `PACKET_LOSS` is set: a malformed frame is skipped by the
//! kernel instead of stopping the ring.

use crate::error::IoError;
use crate::ifreq;
use crate::packet_ring::{
    Mapping, RingConfig, PACKET_LOSS, PACKET_TX_RING, PACKET_VERSION, SLOT_BLOCK, TPACKET_V2, TP_STATUS_SENDING,
    TP_STATUS_SEND_REQUEST, TX_DATA,
};
use crate::packet_rx::{self, PACKET_VNET_LEN};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::atomic::Ordering;

/// A send-only `AF_PACKET` socket with a `TPACKET_V2` transmit ring. See
/// the module docs.
#[derive(Debug)]
pub struct TxRing {
    // Field order: the mapping goes before the socket is closed.
    map: Mapping,
    fd: OwnedFd,
    frame_size: usize,
    frames_per_block: usize,
    block_size: usize,
    frames: usize,
    /// The next slot to fill.
    head: usize,
    /// Slots marked since the last successful kick.
    pending: usize,
    vnet_hdr: bool,
    name: String,
}

const TX_BLOCK: usize = SLOT_BLOCK;

/// Most `send()` calls one [`TxRing::kick`] makes.
pub const KICKS: usize = 4;

/// The socket's send buffer asked for: more than every slot of a default
/// ring in flight at once, so a kick is never refused for want of it.
const SNDBUF: usize = 8 << 20;

impl TxRing {
    /// Opens a send-only socket (it receives nothing) on the existing
    /// interface `name` with a ring of `cfg`'s transmit size; `vnet_hdr`:
    /// every frame pushed starts with a [`PACKET_VNET_LEN`]-byte header
    /// (partial checksums and superframes go out as they are).
    ///
    /// Errors: [`IoError::BadName`], [`IoError::NoSuchInterface`],
    /// [`IoError::NotPermitted`], [`IoError::Sys`] naming the option the
    /// kernel refused.
    pub fn open(name: &str, vnet_hdr: bool, cfg: RingConfig) -> Result<TxRing, IoError> {
        ifreq::validate_name(name)?;
        let bad = |what: &'static str| IoError::sys(what, io::Error::from(io::ErrorKind::InvalidInput));
        let fs = cfg.tx_frame_size;
        if !fs.is_power_of_two() || !(256..=TX_BLOCK).contains(&fs) || cfg.tx_frames == 0 {
            return Err(bad("PACKET_TX_RING (frame size)"));
        }
        let per_block = TX_BLOCK / fs;
        let blocks = cfg.tx_frames.div_ceil(per_block);
        let frames = blocks * per_block;
        let fd = packet_rx::raw_socket(0)?;
        if vnet_hdr {
            packet_rx::enable_vnet_hdr(&fd)?;
        }
        packet_rx::set_opt(&fd, libc::SOL_PACKET, PACKET_VERSION, TPACKET_V2, "PACKET_VERSION (TPACKET_V2)")?;
        packet_rx::set_opt(&fd, libc::SOL_PACKET, PACKET_LOSS, 1 as libc::c_int, "PACKET_LOSS")?;
        let size = SNDBUF as libc::c_int;
        if packet_rx::set_opt(&fd, libc::SOL_SOCKET, libc::SO_SNDBUFFORCE, size, "SO_SNDBUFFORCE").is_err() {
            packet_rx::set_opt(&fd, libc::SOL_SOCKET, libc::SO_SNDBUF, size, "SO_SNDBUF")?;
        }
        let req = libc::tpacket_req {
            tp_block_size: TX_BLOCK as u32,
            tp_block_nr: blocks as u32,
            tp_frame_size: fs as u32,
            tp_frame_nr: frames as u32,
        };
        packet_rx::set_opt(&fd, libc::SOL_PACKET, PACKET_TX_RING, req, "PACKET_TX_RING")?;
        let map = Mapping::new(&fd, blocks * TX_BLOCK)?;
        packet_rx::bind(&fd, name, 0)?;
        Ok(TxRing {
            map,
            fd,
            frame_size: fs,
            frames_per_block: per_block,
            block_size: TX_BLOCK,
            frames,
            head: 0,
            pending: 0,
            vnet_hdr,
            name: name.to_owned(),
        })
    }

    /// The longest frame (with its virtio-net header, when the socket takes
    /// one) a slot holds, bytes.
    pub fn max_frame(&self) -> usize {
        self.frame_size - TX_DATA
    }

    fn slot(&self, i: usize) -> usize {
        (i / self.frames_per_block) * self.block_size + (i % self.frames_per_block) * self.frame_size
    }

    /// Copies `frame` (starting with its virtio-net header when the socket
    /// takes one) into the next free slot and marks it for sending at the
    /// next [`TxRing::kick`]. False, with nothing done, when the frame is
    /// longer than [`TxRing::max_frame`] or empty, or the next slot is still
    /// the kernel's (the ring is full).
    pub fn push(&mut self, frame: &[u8]) -> bool {
        if frame.is_empty() || frame.len() > self.max_frame() {
            return false;
        }
        let at = self.slot(self.head);
        let status = self.map.status(at);
        if status.load(Ordering::Acquire) & (TP_STATUS_SEND_REQUEST | TP_STATUS_SENDING) != 0 {
            return false;
        }
        let slot = self.map.bytes_mut(at + TX_DATA, frame.len());
        slot.copy_from_slice(frame);
        if self.vnet_hdr && slot.len() > PACKET_VNET_LEN && slot[1] == 0 {
            // Not a superframe: `hdr_len` (a hint) made the whole frame, so
            // the kernel copies it into the socket buffer instead of
            // attaching the slot's page, which a veth or bridge would have
            // to copy again (frames it takes from a ring are marked
            // zero-copy). Bounded by the frame, as the kernel checks.
            let whole = (slot.len() - PACKET_VNET_LEN) as u16;
            slot[2..4].copy_from_slice(&whole.to_le_bytes());
        }
        // tpacket2_hdr: tp_status (0), tp_len (4), tp_snaplen (8).
        let hdr = self.map.bytes_mut(at + 4, 8);
        hdr[..4].copy_from_slice(&(frame.len() as u32).to_ne_bytes());
        hdr[4..].copy_from_slice(&(frame.len() as u32).to_ne_bytes());
        status.store(TP_STATUS_SEND_REQUEST, Ordering::Release);
        self.head = (self.head + 1) % self.frames;
        self.pending += 1;
        true
    }

    /// Slots marked and not yet handed to the kernel by a kick.
    pub fn pending(&self) -> usize {
        self.pending
    }

    /// Has the kernel send every marked slot: a `send()` that does not wait
    /// for the frames to leave (none without pending slots); returns the
    /// calls made. The kernel stops at a frame the device dropped
    /// (`ENOBUFS`: a full backlog, the frame is lost as with any send) and
    /// leaves the rest marked: it is kicked again, up to [`KICKS`] calls in
    /// all. Slots still marked after that (or after `EAGAIN`, a full send
    /// buffer) stay pending, for the next kick.
    pub fn kick(&mut self) -> usize {
        let mut calls = 0;
        while self.pending > 0 && calls < KICKS {
            calls += 1;
            // SAFETY: send(2) with no buffer: the kernel reads the frames
            // from the ring mapping it set up; nothing of ours is borrowed.
            let rc = unsafe { libc::send(self.fd.as_raw_fd(), std::ptr::null(), 0, libc::MSG_DONTWAIT) };
            let last = self.slot((self.head + self.frames - 1) % self.frames);
            if self.map.status(last).load(Ordering::Acquire) & TP_STATUS_SEND_REQUEST == 0 {
                // The kernel took every marked slot (they go in order).
                self.pending = 0;
            } else if rc < 0 && io::Error::last_os_error().raw_os_error() == Some(libc::EAGAIN) {
                break;
            }
        }
        calls
    }

    /// Whether frames start with a virtio-net header.
    pub fn vnet_hdr(&self) -> bool {
        self.vnet_hdr
    }

    /// The interface name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl AsRawFd for TxRing {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_sizes_are_refused_before_any_socket() {
        let odd = RingConfig { tx_frame_size: 3000, ..RingConfig::default() };
        let e = TxRing::open("lo", false, odd).unwrap_err();
        assert!(e.to_string().contains("frame size"), "{e}");
    }
}
