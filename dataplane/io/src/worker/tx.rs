//! Transmission: frames out of a TAP (or its io_uring), into a transmit
//! ring (the AF_PACKET outside's, a direct attachment's), gathered frames
//! to an AF_PACKET outside on plain sockets, and the checks a frame needs
//! before it leaves.

use super::*;

impl Worker {
    /// Sends the frames queued for the AF_PACKET outside: one `sendmmsg`
    /// per [`SEND_BATCH`] frames. A frame the kernel refuses is dropped
    /// (`tx_failed`) and the rest go on.
    pub(super) fn flush_packets(&mut self) {
        let OutsideTx::AfPacket(sender, _) = &self.outside else {
            return;
        };
        let mut done = 0;
        while done < self.packets.len() {
            let mut frames: [&[u8]; SEND_BATCH] = [&[]; SEND_BATCH];
            let n = (self.packets.len() - done).min(SEND_BATCH);
            let start = packet_start(sender);
            for (f, (buf, len)) in frames.iter_mut().zip(&self.packets[done..done + n]) {
                *f = &buf[start..HDR + len];
            }
            self.io.send.inc();
            match sender.send_batch(&frames[..n]) {
                Ok(0) | Err(_) => {
                    self.counters.count_drop(DropReason::TxFailed);
                    done += 1;
                }
                Ok(k) => done += k,
            }
        }
        let mut packets = std::mem::take(&mut self.packets);
        for (buf, _) in packets.drain(..) {
            self.put_spare(buf);
        }
        self.packets = packets;
    }

    /// Has the kernel send what the transmit rings hold, the outside's and
    /// those of the attachments this worker owns (a `send` each, counted,
    /// or a few when the device drops a frame; none for a ring that holds
    /// nothing). Slots a refused kick left marked go at the next one (the
    /// worker then sleeps at most 1 ms).
    pub(super) fn kick_ring(&mut self) {
        if let OutsideTx::Ring { tx, .. } = &mut self.outside {
            tx.kick(&self.io);
        }
        for (_, r) in &mut self.inside_tx {
            r.kick(&self.io);
        }
    }

    /// Sends `buf[HDR..HDR + len]` out of `port` with offload header `hdr`.
    pub(super) fn emit(&mut self, port: PortId, buf: &mut Vec<u8>, len: usize, hdr: VnetHdr) {
        self.fabric.capture.frame(port, &buf[HDR..HDR + len]); // capture: sent
        if let Some(owner) = self.vhost_owner(port) {
            self.send_to_guest(owner, port, buf, len, hdr);
            return;
        }
        let Worker { outside, fabric, ring, spare, io, packets, inside_tx, inside_tx_at, .. } = self;
        let mut tx = Tx { ring, spare, fabric, io };
        let ok = if port == PortId::OUTSIDE {
            match outside {
                OutsideTx::Tap(t) => tx.tap(t, buf, len, hdr),
                OutsideTx::Ring { tx: txr, .. } => tx.ring(txr, buf, len, hdr),
                OutsideTx::AfPacket(s, _) => {
                    let start = packet_start(s);
                    if !prepare_packet(s, buf, len, hdr) {
                        false
                    } else if tx.ring_write(s.as_raw_fd(), buf, start..HDR + len) {
                        true
                    } else {
                        let fresh = tx.spare.pop().unwrap_or_else(|| tx.fabric.take_buf());
                        packets.push((std::mem::replace(buf, fresh), len));
                        if packets.len() >= SEND_BATCH {
                            self.flush_packets();
                        }
                        true
                    }
                }
            }
        } else {
            match fabric.inside.get(usize::from(port.0)).map(Option::as_deref) {
                Some(Some(Inside::Tap(t))) => tx.tap(t, buf, len, hdr),
                Some(Some(Inside::Packet(p))) => {
                    let mine = inside_tx_at.get(usize::from(port.0)).and_then(|&k| inside_tx.get_mut(k as usize));
                    match mine {
                        Some((_, r)) => tx.ring(r, buf, len, hdr),
                        None => tx.packet(&p.tx, buf, len, hdr),
                    }
                }
                // No worker took it (cannot happen once workers run).
                Some(Some(Inside::VhostUser(_))) | Some(None) | None => false,
            }
        };
        if !ok {
            self.counters.count_drop(DropReason::TxFailed);
        }
    }
}

/// What a transmission needs from the worker (borrowed apart from the
/// engine).
pub(super) struct Tx<'a> {
    ring: &'a mut Option<Ring>,
    spare: &'a mut Vec<Vec<u8>>,
    fabric: &'a Fabric,
    io: &'a IoCounters,
}

impl Tx<'_> {
    /// Writes a frame to a TAP: with its offload header when the TAP has
    /// one, otherwise with checksums completed in software. On the ring the
    /// write is queued (submitted at the next `io_uring_enter`) and the
    /// buffer goes with it, `buf` getting a free one; a ring out of slots,
    /// and the syscalls path, write at once.
    pub(super) fn tap(&mut self, tap: &Tap, buf: &mut Vec<u8>, len: usize, hdr: VnetHdr) -> bool {
        let start = if tap.vnet_hdr() {
            let _ = hdr.write(&mut buf[..HDR]);
            0
        } else {
            if !finish_in_software(buf, len, hdr) {
                return false;
            }
            HDR
        };
        if self.ring_write(tap.as_raw_fd(), buf, start..HDR + len) {
            return true;
        }
        self.io.write.inc();
        tap.send(&buf[start..HDR + len]).is_ok()
    }

    /// Sends a frame out of a packet socket (an inside `af-packet`
    /// attachment): with its offload header when the socket takes one,
    /// otherwise with checksums completed in software. Queued on the ring
    /// like [`Tx::tap`], else one `write`.
    pub(super) fn packet(&mut self, s: &PacketSender, buf: &mut Vec<u8>, len: usize, hdr: VnetHdr) -> bool {
        if !prepare_packet(s, buf, len, hdr) {
            return false;
        }
        let start = packet_start(s);
        if self.ring_write(s.as_raw_fd(), buf, start..HDR + len) {
            return true;
        }
        self.io.send.inc();
        s.send(&buf[start..HDR + len]).is_ok()
    }

    /// Sends a frame through a transmit ring (the outside's, or an
    /// attachment's this worker owns): with its offload header when the
    /// ring takes one, otherwise with checksums completed in software; sent
    /// at the iteration's kick (or earlier, see [`RingSender::send`]). A
    /// frame the ring cannot take (a superframe) is queued as a write on
    /// the ring sender's plain socket when the worker has an io_uring
    /// ([`RingSender::divert`]), else sent on it at once.
    pub(super) fn ring(&mut self, r: &mut RingSender, buf: &mut Vec<u8>, len: usize, hdr: VnetHdr) -> bool {
        let start = if r.vnet_hdr() {
            buf[HDR - PACKET_VNET_LEN..HDR].copy_from_slice(&hdr.to_bytes()[..PACKET_VNET_LEN]);
            HDR - PACKET_VNET_LEN
        } else if finish_in_software(buf, len, hdr) {
            HDR
        } else {
            return false;
        };
        let queued = self.ring.as_ref().is_some_and(Ring::has_room);
        if queued && r.takes_plain(&buf[start..HDR + len]) {
            let fd = r.divert(self.io);
            if self.ring_write(fd, buf, start..HDR + len) {
                return true;
            }
        }
        r.send(&buf[start..HDR + len], self.io)
    }

    /// Queues a write of `buf[range]` to `fd` on the ring, the buffer going
    /// with it and `buf` getting a free one; false (nothing done) without a
    /// ring or with every slot taken.
    pub(super) fn ring_write(
        &mut self,
        fd: std::os::fd::RawFd,
        buf: &mut Vec<u8>,
        range: std::ops::Range<usize>,
    ) -> bool {
        let Some(ring) = self.ring.as_mut().filter(|r| r.has_room()) else {
            return false;
        };
        let fresh = self.spare.pop().unwrap_or_else(|| self.fabric.take_buf());
        let frame = std::mem::replace(buf, fresh);
        match ring.post_write(fd, frame, range, self.io) {
            Ok(()) => true,
            Err(frame) => {
                let fresh = std::mem::replace(buf, frame);
                self.spare.push(fresh);
                false
            }
        }
    }
}

/// One non-blocking read into `buf`, the frame landing at `HDR` (its
/// header before it, see [`RxSource`]). None when nothing is waiting (or on
/// error, which the next wake-up retries).
pub(super) fn read(src: &RxSource, buf: &mut [u8]) -> Option<usize> {
    let n = src.read(buf).ok()?;
    src.finish(buf, n).filter(|&l| l <= MAX_FRAME)
}

/// Adds the frames the kernel dropped at a receiving socket since the last
/// read (`drops`, from its `take_drops`) to `counters` (`rx_overflow`).
pub(super) fn count_kernel_drops(drops: io::Result<u64>, counters: &Counters) {
    if let Ok(n) = drops {
        counters.count_drops(DropReason::RxOverflow, n);
    }
}

/// Where a frame for `s` starts in its buffer: at its virtio-net header
/// when the socket takes one (the [`PACKET_VNET_LEN`] bytes before
/// [`HDR`]), else at the frame.
pub(super) fn packet_start(s: &PacketSender) -> usize {
    if s.vnet_hdr() {
        HDR - PACKET_VNET_LEN
    } else {
        HDR
    }
}

/// Readies `buf[HDR..HDR + len]` for packet socket `s`: its offload
/// header written before it when the socket takes one (the TAP's header
/// less its last two bytes: it ends where the frame starts), else its
/// checksum completed in software; false when it cannot go (a superframe
/// to a socket without the header).
pub(super) fn prepare_packet(s: &PacketSender, buf: &mut [u8], len: usize, hdr: VnetHdr) -> bool {
    if s.vnet_hdr() {
        buf[HDR - PACKET_VNET_LEN..HDR].copy_from_slice(&hdr.to_bytes()[..PACKET_VNET_LEN]);
        true
    } else {
        finish_in_software(buf, len, hdr)
    }
}

/// Completes a partial checksum for a device without offloads; false for a
/// GSO superframe, which such a device cannot take.
pub(super) fn finish_in_software(buf: &mut [u8], len: usize, hdr: VnetHdr) -> bool {
    if hdr.is_gso() {
        return false;
    }
    if hdr.needs_csum() {
        return complete_checksum(&mut buf[HDR..HDR + len], usize::from(hdr.csum_start), usize::from(hdr.csum_offset));
    }
    true
}
