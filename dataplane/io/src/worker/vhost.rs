//! vhost-user attachments on a worker: the guests' transmit queues read
//! once per loop iteration, frames for the guests gathered and written
//! once per iteration (one queue lock per port), and frames for another
//! worker's guest handed to that worker.
//!
//! A port's owner is woken through its own waker (the port's doorbell is
//! forwarded to it), so a guest's kick wakes the worker like a message in
//! its inbox; every iteration then looks at every port it owns (one atomic
//! load and one uncontended lock each when idle).

use super::*;

impl Worker {
    /// The worker owning `port` when it is a vhost-user attachment.
    pub(super) fn vhost_owner(&self, port: PortId) -> Option<usize> {
        match self.fabric.inside.get(usize::from(port.0)).map(Option::as_deref) {
            Some(Some(Inside::VhostUser(v))) => v.owner(),
            _ => None,
        }
    }

    /// Sends `buf[HDR..HDR + len]` (offload state `hdr`) to the guest
    /// behind vhost-user `port`, owned by worker `owner`: queued for
    /// `flush_guests` here, or handed over. The buffer goes with the frame;
    /// `buf` gets a free one.
    pub(super) fn send_to_guest(&mut self, owner: usize, port: PortId, buf: &mut Vec<u8>, len: usize, hdr: VnetHdr) {
        let _ = hdr.write(&mut buf[..HDR]);
        let fresh = self.take_spare();
        let b = std::mem::replace(buf, fresh);
        if owner == self.index {
            self.to_guest.push((port, b, len));
        } else {
            self.push_to(owner, Msg::Guest { port, buf: b, len });
        }
    }

    /// Reads up to [`BATCH`] frames from each owned guest's transmit queue
    /// and accepts them; notes whether frames were left waiting.
    pub(super) fn read_guests(&mut self) {
        self.vhost_more = false;
        for i in 0..self.vhost.len() {
            let mut got = std::mem::take(&mut self.from_guest);
            let Worker { vhost, spare, fabric, .. } = self;
            let (port, p) = &mut vhost[i];
            let port = *port;
            let more = match p.guest_tx() {
                None => false,
                Some(mut tx) => {
                    while got.len() < BATCH {
                        let mut b = spare.pop().unwrap_or_else(|| fabric.take_buf());
                        match tx.recv(&mut b) {
                            Some(len) => got.push((b, len)),
                            None => {
                                if spare.len() < SPARE_LOCAL {
                                    spare.push(b);
                                } else {
                                    fabric.give_buf(b);
                                }
                                break;
                            }
                        }
                    }
                    tx.finish()
                }
            };
            self.vhost_more |= more;
            for (b, len) in got.drain(..) {
                self.accept(port, b, len);
            }
            self.from_guest = got;
        }
    }

    /// Writes the frames gathered for this worker's guests: per port, one
    /// batch (one lock, at most one signal to the guest). A frame the
    /// guest cannot take is dropped (`tx_failed`).
    pub(super) fn flush_guests(&mut self) {
        if self.to_guest.is_empty() {
            return;
        }
        let mut frames = std::mem::take(&mut self.to_guest);
        let mut failed = 0u64;
        let mut sent = 0usize;
        for (vport, p) in self.vhost.iter_mut() {
            let mine = frames.iter().filter(|f| f.0 == *vport).count();
            if mine == 0 {
                continue;
            }
            sent += mine;
            let Some(mut rx) = p.guest_rx() else {
                failed += mine as u64;
                continue;
            };
            for (_, buf, len) in frames.iter_mut().filter(|f| f.0 == *vport) {
                let hdr = VnetHdr::parse(&buf[..HDR]).unwrap_or_default();
                if rx.send(&mut buf[HDR..HDR + *len], hdr).is_err() {
                    failed += 1;
                }
            }
        }
        // Frames for ports this worker does not own (bindings moved on).
        failed += (frames.len() - sent) as u64;
        if failed > 0 {
            self.counters.count_drops(DropReason::TxFailed, failed);
        }
        for (_, buf, _) in frames.drain(..) {
            self.put_spare(buf);
        }
        self.to_guest = frames;
    }
}
