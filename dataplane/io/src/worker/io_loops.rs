//! The workers' two I/O loops: read/write + epoll, and io_uring (reads
//! kept posted, writes queued, one `io_uring_enter` per iteration, and a
//! busy queue's backlog read at once with plain `read`s). Both hand what
//! they read to [`Worker::accept`].

use super::tx::read;
use super::*;

impl Worker {
    /// The read/write + epoll path.
    pub(super) fn run_syscalls(&mut self) -> io::Result<()> {
        self.io.set_backend(ActiveBackend::Syscalls);
        let poller = Poller::new()?;
        poller.add(self.waker.as_fd(), TOKEN_WAKER)?;
        if let Some(src) = &self.outside_rx {
            poller.add(src.as_fd(), TOKEN_OUTSIDE)?;
        }
        for (i, (_, dev)) in self.inside.iter().enumerate() {
            if let Some(src) = dev.rx_source() {
                poller.add(src.as_fd(), i as u64)?;
            }
        }
        let mut events = Events::with_capacity(256);
        let mut ready: Vec<u64> = Vec::with_capacity(256);
        self.flush();
        let busy = self.settings.busy_poll();
        while !self.fabric.stop.load(Ordering::Relaxed) {
            let mut n = 0;
            if !busy.is_zero() {
                let end = std::time::Instant::now() + busy;
                loop {
                    self.io.epoll_wait.inc();
                    n = poller.wait(&mut events, Some(Duration::ZERO))?;
                    if n > 0 || !self.inbox.is_empty() || std::time::Instant::now() >= end {
                        break;
                    }
                    std::hint::spin_loop();
                }
            }
            if n == 0 && self.inbox.is_empty() {
                self.io.epoll_wait.inc();
                // A guest's queue left with frames waiting: only a look.
                let timeout = if self.vhost_more { Some(Duration::ZERO) } else { self.timeout() };
                poller.wait(&mut events, timeout)?;
            }
            ready.clear();
            ready.extend(events.tokens());
            for &token in &ready {
                match token {
                    TOKEN_WAKER => {
                        self.io.read.inc();
                        let _ = self.waker.reset();
                    }
                    TOKEN_OUTSIDE => {
                        if let Some(src) = self.outside_rx.clone() {
                            self.read_batch(PortId::OUTSIDE, &src);
                        }
                    }
                    i => {
                        if let Some((port, Some(src))) = self.inside.get(i as usize).map(|(p, d)| (*p, d.rx_source())) {
                            self.read_batch(port, &src);
                        }
                    }
                }
            }
            self.finish_iteration();
        }
        Ok(())
    }

    /// Reads up to [`BATCH`] frames from `src` (one `read` or `recv` each;
    /// a ring: its handed-over blocks, see [`Worker::read_ring`]).
    pub(super) fn read_batch(&mut self, port: PortId, src: &RxSource) {
        for _ in 0..BATCH {
            let mut buf = self.take_spare();
            match src {
                RxSource::Tap(_) => self.io.read.inc(),
                RxSource::Packet(_) => self.io.recv.inc(),
                RxSource::Ring(r) => {
                    self.put_spare(buf);
                    self.read_ring(port, r);
                    return;
                }
            }
            let Some(len) = read(src, &mut buf) else {
                self.put_spare(buf);
                break;
            };
            self.accept(port, buf, len);
        }
    }

    /// Takes the frames of up to [`RING_BLOCKS`] blocks a receive ring (of
    /// the outside, or of attachment `port`) has handed over: each is
    /// copied to `HDR` of a buffer, its offload header before it (the
    /// worker's buffer layout, see
    /// [`RxSource`]), and accepted; one the ring queued whole on its socket
    /// (a superframe) is received straight into the buffer instead. A frame
    /// the ring holds only part of, or longer than [`MAX_FRAME`], is
    /// dropped (`truncated`). Returns the frames walked.
    pub(super) fn read_ring(&mut self, port: PortId, ring: &RxRing) -> usize {
        ring.drain(RING_BLOCKS, |f| {
            let mut buf = self.take_spare();
            let len = if f.copied {
                let start = if ring.vnet_hdr() { HDR - PACKET_VNET_LEN } else { HDR };
                self.io.recv.inc();
                match ring.recv_copied(&mut buf[start..]) {
                    Ok(n) if n > HDR - start => {
                        if ring.vnet_hdr() {
                            buf.copy_within(start..HDR, 0);
                            buf[PACKET_VNET_LEN..HDR].fill(0);
                        } else {
                            buf[..HDR].fill(0);
                        }
                        n - (HDR - start)
                    }
                    _ => 0,
                }
            } else if f.truncated() || f.frame.len() > MAX_FRAME {
                0
            } else {
                let len = f.frame.len();
                buf[..HDR].copy_from_slice(&f.vnet.unwrap_or_default().to_bytes());
                buf[HDR..HDR + len].copy_from_slice(f.frame);
                len
            };
            if len == 0 || len > MAX_FRAME {
                self.counters.count_drop(DropReason::Truncated);
                self.put_spare(buf);
                return;
            }
            self.accept(port, buf, len);
        })
    }

    /// Takes a frame just read: steers a frame from the outside to its
    /// owner, queues the others for the engine.
    pub(super) fn accept(&mut self, port: PortId, buf: Vec<u8>, len: usize) {
        self.fabric.capture.frame(port, &buf[HDR..HDR + len]); // capture: received
        if port == PortId::OUTSIDE {
            let now = self.fabric.now();
            if let Some(owner) = self.steer(now, &buf[HDR..HDR + len]) {
                self.hand_over(owner, buf, len);
                return;
            }
        }
        self.rx.push(RxFrame { port, buf, len, learn: false });
        if self.rx.len() >= BATCH {
            self.process_rx();
        }
    }

    /// The io_uring path: reads kept posted on every TAP queue and on the
    /// eventfd; completions reaped, frames processed, writes queued; one
    /// `io_uring_enter` per iteration submits the writes and new reads and
    /// waits.
    pub(super) fn run_uring(&mut self, ring: Ring) -> io::Result<()> {
        self.io.set_backend(ActiveBackend::Uring);
        self.ring = Some(ring);
        // A receive ring is not read by posted reads: it is walked in
        // place, and a readiness poll posted on it wakes the worker.
        let mut rx_rings: Vec<(PortId, Arc<RxRing>)> = Vec::new();
        let sources = self.outside_rx.iter().map(|s| (PortId::OUTSIDE, s.clone()));
        let sources: Vec<(PortId, RxSource)> =
            sources.chain(self.inside.iter().filter_map(|(p, d)| d.rx_source().map(|s| (*p, s)))).collect();
        for (port, src) in sources {
            match src {
                RxSource::Ring(r) => rx_rings.push((port, r)),
                src => self.ring_fds.push(RingFd { port, src, posted: 0, filled: 0, retry_at: None }),
            }
        }
        self.ring_rx_polled = vec![false; rx_rings.len()];
        let rx_ready = |r: &[(PortId, Arc<RxRing>)]| r.iter().any(|(_, r)| r.ready());
        let mut done: Vec<Done> = Vec::with_capacity(self.ring.as_ref().map_or(0, Ring::slots));
        self.refill_reads()?;
        self.flush();
        let busy = self.settings.busy_poll();
        while !self.fabric.stop.load(Ordering::Relaxed) {
            let ready = self.ring.as_mut().is_some_and(Ring::has_completions)
                || !self.inbox.is_empty()
                || self.vhost_more
                || rx_ready(&rx_rings);
            let timeout = if ready { None } else { self.uring_timeout() };
            let Some(ring) = self.ring.as_mut() else { break };
            if ready {
                ring.submit(&self.io)?;
            } else {
                let mut got = false;
                if !busy.is_zero() {
                    ring.submit(&self.io)?;
                    let end = std::time::Instant::now() + busy;
                    while std::time::Instant::now() < end {
                        if ring.has_completions() || !self.inbox.is_empty() || rx_ready(&rx_rings) {
                            got = true;
                            break;
                        }
                        std::hint::spin_loop();
                    }
                }
                if !got {
                    ring.wait(timeout, &self.io)?;
                }
            }
            ring.reap(&mut done);
            for d in done.drain(..) {
                match d {
                    Done::Read { fd, buf, res } => self.read_done(fd as usize, buf, res),
                    Done::Write { buf, res } => {
                        if res < 0 {
                            self.counters.count_drop(DropReason::TxFailed);
                        }
                        self.put_spare(buf);
                    }
                    Done::Wake => {}
                    Done::Ready { fd } => {
                        if let Some(p) = self.ring_rx_polled.get_mut((RING_RX_POLL - fd) as usize) {
                            *p = false;
                        }
                    }
                }
            }
            self.drain_busy_queues();
            for (port, r) in &rx_rings {
                self.read_ring(*port, r);
            }
            self.finish_iteration();
            self.refill_reads()?;
            if let Some(ring) = self.ring.as_mut() {
                for (k, (_, r)) in rx_rings.iter().enumerate() {
                    if !self.ring_rx_polled[k] && !r.ready() {
                        self.ring_rx_polled[k] = ring.post_poll(RING_RX_POLL - k as u32, r.as_raw_fd(), &self.io);
                    }
                }
            }
        }
        // Dropping the ring cancels the reads still posted.
        self.ring = None;
        Ok(())
    }

    /// The ring's wait: the engine's next timer, or the next retry of a
    /// queue whose read failed (or of the receive ring when no poll could
    /// be posted on it).
    pub(super) fn uring_timeout(&self) -> Option<Duration> {
        let now = std::time::Instant::now();
        let mut retry = self.ring_fds.iter().filter_map(|f| f.retry_at).map(|t| t.saturating_duration_since(now)).min();
        if self.ring_rx_polled.iter().any(|p| !p) {
            // No poll could be posted on a receive ring (every slot
            // taken): look at it again soon rather than sleep past it.
            retry = Some(retry.map_or(RING_RX_RETRY, |r| r.min(RING_RX_RETRY)));
        }
        match (self.timeout(), retry) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// A read on ring queue `fd` completed with `res` bytes (or `-errno`).
    pub(super) fn read_done(&mut self, fd: usize, buf: Vec<u8>, res: i32) {
        let Some(f) = self.ring_fds.get_mut(fd) else {
            self.put_spare(buf);
            return;
        };
        f.posted = f.posted.saturating_sub(1);
        let port = f.port;
        let mut buf = buf;
        let len = match usize::try_from(res) {
            Ok(0) => {
                // End of file: the device is going away; do not spin on it.
                f.retry_at = Some(std::time::Instant::now() + READ_RETRY);
                None
            }
            Ok(n) => f.src.finish(&mut buf, n).filter(|&l| l <= MAX_FRAME),
            Err(_) => {
                if res != -libc::EAGAIN && res != -libc::ECANCELED {
                    f.retry_at = Some(std::time::Instant::now() + READ_RETRY);
                }
                None
            }
        };
        match len {
            Some(len) => {
                f.filled += 1;
                self.accept(port, buf, len);
            }
            None => self.put_spare(buf),
        }
    }

    /// Reads the rest of the backlog of every ring queue whose posted reads
    /// all brought a frame in this iteration (see `READS_PER_FD`), with
    /// plain `read`s: none of its reads is posted now, so the frames stay
    /// in order.
    pub(super) fn drain_busy_queues(&mut self) {
        for i in 0..self.ring_fds.len() {
            let f = &mut self.ring_fds[i];
            let busy = f.filled >= self.reads_per_fd && f.posted == 0;
            f.filled = 0;
            if busy {
                let (port, src) = (f.port, f.src.clone());
                self.read_batch(port, &src);
            }
        }
    }

    /// Posts reads until every ring queue has its share posted, and the
    /// eventfd read.
    pub(super) fn refill_reads(&mut self) -> io::Result<()> {
        let Some(mut ring) = self.ring.take() else {
            return Ok(());
        };
        let now = std::time::Instant::now();
        let r = ring.post_wake(self.waker.as_raw_fd(), &self.io);
        for i in 0..self.ring_fds.len() {
            let f = &mut self.ring_fds[i];
            if f.retry_at.is_some_and(|t| t > now) {
                continue;
            }
            f.retry_at = None;
            while self.ring_fds[i].posted < self.reads_per_fd && ring.has_room() {
                let buf = self.take_spare();
                let f = &mut self.ring_fds[i];
                match ring.post_read(i as u32, f.src.as_raw_fd(), buf, f.src.offset(), &self.io) {
                    Ok(()) => f.posted += 1,
                    Err(buf) => {
                        self.put_spare(buf);
                        break;
                    }
                }
            }
        }
        self.ring = Some(ring);
        r
    }
}
