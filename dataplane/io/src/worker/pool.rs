//! [`Workers`]: starting, calling and stopping the worker threads, and the
//! AF_PACKET reader thread for an outside without a fanout group.

use super::*;

/// A running gateway: its workers and what they share.
pub struct Workers {
    fabric: Arc<Fabric>,
    threads: Vec<JoinHandle<io::Result<()>>>,
    counters: Vec<Arc<Counters>>,
    io: Vec<Arc<IoCounters>>,
    backend: Backend,
    reader: Option<JoinHandle<()>>,
}

/// Pins the calling thread (worker `i`) to `cpu`. A CPU the process may not
/// run on was refused with the config (`gateway.io.cpus`); one that went
/// away since (taken offline) leaves the worker where the scheduler puts
/// it, logged.
fn pin(i: usize, cpu: usize) {
    let mut set = rustix::thread::CpuSet::new();
    let pinned = cpu < rustix::thread::CpuSet::MAX_CPU && {
        set.set(cpu);
        rustix::thread::sched_setaffinity(None, &set).is_ok()
    };
    if pinned {
        tracing::debug!(worker = i, cpu, "worker pinned");
    } else {
        tracing::warn!(worker = i, cpu, "worker not pinned: the kernel refused the CPU");
    }
}

impl Workers {
    /// Starts one thread per spec. `outside_rx`: for an AF_PACKET outside,
    /// the socket the reader thread receives on (it steers every frame to
    /// its owner). `settings`: the I/O path; with [`Backend::Uring`] the
    /// start fails when no ring can be set up, with [`Backend::Auto`] the
    /// workers use syscalls then.
    pub fn start(
        specs: Vec<WorkerSpec>,
        inside: Vec<Option<Arc<Inside>>>,
        shards: Shards,
        outside_rx: Option<PacketReceiver>,
        events: Sender<(usize, Event)>,
        settings: IoSettings,
    ) -> io::Result<Workers> {
        Workers::start_with_probe(specs, inside, shards, outside_rx, events, settings, crate::uring::probe)
    }

    /// [`Workers::start`] with the io_uring probe given (tests inject a
    /// failure with it).
    pub fn start_with_probe(
        specs: Vec<WorkerSpec>,
        inside: Vec<Option<Arc<Inside>>>,
        shards: Shards,
        outside_rx: Option<PacketReceiver>,
        events: Sender<(usize, Event)>,
        mut settings: IoSettings,
        probe: impl FnOnce() -> io::Result<()>,
    ) -> io::Result<Workers> {
        // Decided once here; a worker whose own ring then fails falls back
        // under `Auto` and stops with the error under `Uring`.
        let backend = crate::backend::resolve(settings.backend, probe)?;
        if backend == Backend::Syscalls {
            settings.backend = Backend::Syscalls;
        }
        let n = specs.len();
        let mut inboxes = Vec::with_capacity(n);
        let mut receivers = Vec::with_capacity(n);
        let mut wakers = Vec::with_capacity(n);
        for _ in 0..n {
            let (tx, rx) = crossbeam_channel::bounded(INBOX);
            inboxes.push(tx);
            receivers.push(rx);
            wakers.push(Arc::new(Waker::new()?));
        }
        let fabric = Arc::new(Fabric {
            inside,
            shards,
            inboxes,
            wakers,
            stop: AtomicBool::new(false),
            events,
            epoch: std::time::Instant::now(),
            pool: crossbeam_channel::bounded(SPARE),
            capture: Capture::new(),
        });
        let counters: Vec<Arc<Counters>> = specs.iter().map(|s| s.engine.counters()).collect();
        let io: Vec<Arc<IoCounters>> = (0..n + usize::from(outside_rx.is_some())).map(|_| Arc::default()).collect();
        let mut threads = Vec::with_capacity(n);
        for (i, (spec, rx)) in specs.into_iter().zip(receivers).enumerate() {
            let w = Worker::new(i, spec, Arc::clone(&fabric), rx, Arc::clone(&io[i]), settings);
            let cpu = settings.cpus.for_worker(i);
            let t = std::thread::Builder::new().name(format!("hp-worker-{i}")).spawn(move || {
                if let Some(c) = cpu {
                    pin(i, c);
                }
                let r = w.run();
                if let Err(e) = &r {
                    tracing::error!(worker = i, error = %e, "worker stopped");
                }
                r
            })?;
            threads.push(t);
        }
        let mut counters = counters;
        let reader = match outside_rx {
            Some(rx) => {
                let f = Arc::clone(&fabric);
                // Its own counters: a worker's have a single writer.
                let c = Arc::new(Counters::default());
                counters.push(Arc::clone(&c));
                let r = Arc::clone(&io[n]);
                Some(
                    std::thread::Builder::new()
                        .name("hp-afpacket".into())
                        .spawn(move || af_packet_reader(rx, f, c, r))?,
                )
            }
            None => None,
        };
        Ok(Workers { fabric, threads, counters, io, backend, reader })
    }

    /// System calls of each worker, in worker order, then of the AF_PACKET
    /// reader when there is one.
    pub fn io_counters(&self) -> &[Arc<IoCounters>] {
        &self.io
    }

    /// The I/O path chosen at start ([`Backend::Uring`] or
    /// [`Backend::Syscalls`]; a worker may still have fallen back, see
    /// [`IoCounters::backend`]).
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// The capture tap points every worker shares.
    pub fn capture(&self) -> &Capture {
        &self.fabric.capture
    }

    /// Each worker's counters, then (with an AF_PACKET outside) the reader
    /// thread's own (frames it drops); sum them for the gateway's.
    pub fn counters(&self) -> &[Arc<Counters>] {
        &self.counters
    }

    /// Number of workers.
    pub fn workers(&self) -> usize {
        self.threads.len()
    }

    /// Sends `msg` to worker `i` (control path: waits while its inbox is
    /// full).
    pub fn send(&self, i: usize, msg: Msg) {
        if self.fabric.inboxes[i].send(msg).is_ok() {
            let _ = self.fabric.wakers[i].wake();
        }
    }

    /// Replaces the bindings on every worker.
    pub fn set_bindings(&self, b: &Arc<Bindings>) {
        for i in 0..self.workers() {
            self.send(i, Msg::Bindings(Arc::clone(b)));
        }
    }

    /// Runs `f` on worker `i`'s engine and returns its result (None if the
    /// worker has stopped).
    pub fn call<R: Send + 'static>(&self, i: usize, f: impl FnOnce(&mut Engine) -> R + Send + 'static) -> Option<R> {
        let (tx, rx) = crossbeam_channel::bounded(1);
        self.send(
            i,
            Msg::Call(Box::new(move |e| {
                let _ = tx.send(f(e));
            })),
        );
        rx.recv().ok()
    }

    /// Runs `f` on every worker's engine and collects the results in worker
    /// order.
    pub fn query<R: Send + 'static>(&self, f: impl Fn(&mut Engine) -> R + Send + Sync + 'static) -> Vec<R> {
        let f = Arc::new(f);
        let (tx, rx) = crossbeam_channel::bounded(self.workers());
        for i in 0..self.workers() {
            let (f, tx) = (Arc::clone(&f), tx.clone());
            self.send(
                i,
                Msg::Call(Box::new(move |e| {
                    let _ = tx.send((i, f(e)));
                })),
            );
        }
        drop(tx);
        let mut out: Vec<(usize, R)> = rx.iter().collect();
        out.sort_by_key(|(i, _)| *i);
        out.into_iter().map(|(_, r)| r).collect()
    }

    /// Stops every worker and waits for them; returns the first error a
    /// worker stopped with.
    pub fn stop(mut self) -> io::Result<()> {
        self.shutdown()
    }

    fn shutdown(&mut self) -> io::Result<()> {
        self.fabric.stop.store(true, Ordering::Relaxed);
        for w in &self.fabric.wakers {
            let _ = w.wake();
        }
        let mut first = Ok(());
        for t in self.threads.drain(..) {
            match t.join() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    if first.is_ok() {
                        first = Err(e);
                    }
                }
                Err(_) => {
                    if first.is_ok() {
                        first = Err(io::Error::other("a worker panicked"));
                    }
                }
            }
        }
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
        first
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        let _ = self.shutdown();
    }
}

/// The AF_PACKET reader: receives every frame on the outside interface and
/// hands it to the worker that owns it (ARP to all). A frame is received
/// straight into a pool buffer at [`HDR`], its offload header (when the
/// socket gives one) moved to the start of the buffer, and the buffer goes
/// to the owner: no copy but for ARP's extra copies.
fn af_packet_reader(rx: PacketReceiver, fabric: Arc<Fabric>, counters: Arc<Counters>, io: Arc<IoCounters>) {
    let mut frags = FragSteer::new();
    let mut spare: Option<Vec<u8>> = None;
    let vnet = rx.vnet_hdr();
    let start = if vnet { HDR - PACKET_VNET_LEN } else { HDR };
    let mut drops_read_at = std::time::Instant::now();
    while !fabric.stop.load(Ordering::Relaxed) {
        if drops_read_at.elapsed() >= Duration::from_secs(1) {
            drops_read_at = std::time::Instant::now();
            count_kernel_drops(rx.take_drops(), &counters);
        }
        let mut b = spare.take().unwrap_or_else(|| fabric.take_buf());
        io.recv.inc();
        let n = match rx.recv(&mut b[start..]) {
            Ok(n) => n,
            Err(e) => {
                if e.kind() == io::ErrorKind::InvalidData {
                    counters.count_drop(DropReason::Truncated);
                }
                spare = Some(b);
                continue;
            }
        };
        let len = n.saturating_sub(HDR - start);
        if len == 0 || len > MAX_FRAME {
            counters.count_drop(DropReason::Truncated);
            spare = Some(b);
            continue;
        }
        if vnet {
            // The socket's 10-byte header, where the workers read the
            // TAP's 12-byte one (its last two bytes are ignored).
            b.copy_within(start..HDR, 0);
        }
        b[HDR - 2..HDR].fill(0);
        if !vnet {
            b[..HDR].fill(0);
        }
        fabric.capture.frame(PortId::OUTSIDE, &b[HDR..HDR + len]); // capture: received
        let now = fabric.now();
        let shards = &fabric.shards;
        let frame = &b[HDR..HDR + len];
        let targets: (usize, usize) = match steer::inbound(frame) {
            Steer::Port(p) => (shards.owner(p), shards.owner(p) + 1),
            Steer::FirstFragment(p, id) => {
                frags.record(id, shards.owner(p), now.millis());
                (shards.owner(p), shards.owner(p) + 1)
            }
            Steer::LaterFragment(id) => {
                let o = frags.lookup(&id, now.millis()).unwrap_or(0);
                (o, o + 1)
            }
            Steer::Arp => (0, shards.len()),
            Steer::Local => (0, 1),
        };
        // ARP: worker 0 answers, the others learn from copies.
        for w in (targets.0 + 1..targets.1).rev() {
            let mut c = fabric.take_buf();
            c[..HDR].fill(0);
            c[HDR..HDR + len].copy_from_slice(&b[HDR..HDR + len]);
            io.wake.inc();
            if !fabric.send(w, Msg::Learn { buf: c, len }) {
                counters.count_drop(DropReason::InboxFull);
            }
        }
        io.wake.inc();
        if !fabric.send(targets.0, Msg::Frame { buf: b, len }) {
            counters.count_drop(DropReason::InboxFull);
        }
    }
}
