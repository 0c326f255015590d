//! RunningGateway the dataplane from a [`Plan`]: devices opened and configured,
//! one engine per worker, workers started.
//!
//! Everything that can fail is checked before the first thread starts:
//! privileges, `/dev/net/tun`, every device, every engine's settings. On an
//! error nothing is left behind (the TAPs opened so far close, and the
//! kernel removes the ones it created for us).
//!
//! Sharding: attachment `j` is read by worker `j mod n`, and the plan's
//! port range is split into one slice per worker ([`Shards`]), weighted by
//! the environments behind each worker's attachments plus one share per
//! attachment for environments added later (a worker that reads no
//! attachment owns no port); worker `i`'s engine allocates only from slice `i`, and
//! its high-water mark and session capacity are the plan's in proportion.
//! Offloads (virtio-net header, TSO, checksum offload) apply to every device
//! when on: the TAPs, and an AF_PACKET outside's send sockets
//! (`PACKET_VNET_HDR`, the kernel segments what the interface cannot), so a
//! superframe always has a device that can segment it. An AF_PACKET
//! outside's receiving socket always reads the offload header (the kernel
//! passes partial checksums and superframes on from a veth, bridge or
//! virtio NIC either way). An `af-packet` attachment (an existing
//! interface such as a VMM's TAP, `dataplane_io::Inside::Packet`) is
//! handled the same way: its receiving socket always reads the header, its
//! send socket takes it when offloads are on; the gateway does not
//! configure that interface, it only checks its MTU.

use crate::config::{AttachmentKind, OutsideKind};
use crate::plan::{AttachmentPlan, Plan};
use crossbeam_channel::Receiver;
use dataplane::bindings::Bindings;
use dataplane::config::EngineConfigError;
use dataplane::counters::{Counters, DropReason};
use dataplane::{Engine, Event, PortId};
use dataplane_io::steer::Shards;
use dataplane_io::syscalls::ActiveBackend;
use dataplane_io::vhost_user::VhostUserAttachment;
use dataplane_io::worker::{OutsideTx, WorkerSpec, Workers};
use dataplane_io::{
    check_net_admin, Inside, IoCounters, IoError, PacketPort, PacketReceiver, PacketSender, RingConfig, RingSender,
    RxOptions, RxRing, Tap, TapOptions, OFFLOADS_TCP,
};
use std::sync::Arc;
use std::time::Duration;

/// Why the gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A device could not be opened or configured.
    #[error("{device}: {source}")]
    Device {
        /// Its name.
        device: String,
        /// What went wrong.
        source: IoError,
    },
    /// Privileges or `/dev/net/tun`.
    #[error("{0}")]
    Privileges(IoError),
    /// An engine refused its settings.
    #[error("gateway.{}: {}", .0.field, .0.reason)]
    Engine(EngineConfigError),
    /// A thread, epoll or (with `gateway.io.backend = "uring"`) io_uring
    /// could not be set up.
    #[error("starting workers: {0}")]
    Io(#[from] std::io::Error),
}

/// A running gateway and the devices it holds.
pub struct RunningGateway {
    gateway: Workers,
    /// The inside devices, in attachment order.
    pub inside: Vec<Arc<Inside>>,
    /// The outside TAP's queues (empty for AF_PACKET).
    pub outside: Vec<Arc<Tap>>,
    /// Engine events (high-water marks, exhaustion), tagged with the worker.
    pub events: Receiver<(usize, Event)>,
    /// Whether TAP offloads are on.
    pub offloads: bool,
    /// How the outside is read: `"tap-steered"` (a queue per worker, the
    /// kernel's steering program giving each frame to its port's owner,
    /// see [`dataplane_io::steer_ebpf`]), `"tap"` (a queue per worker by
    /// flow hash, the workers handing over; also a single worker),
    /// `"fanout-steered"` (an AF_PACKET socket per worker, the kernel
    /// steering each frame to its port's owner), `"fanout-hash"` (by flow
    /// hash, the workers handing over), `"reader-thread"` (one thread
    /// reading for all).
    pub outside_rx: &'static str,
    /// Whether the AF_PACKET outside's sockets run on packet rings
    /// (`[outside] ring`; false for a TAP, and where the kernel refused
    /// the rings).
    pub outside_ring: bool,
}

fn dev(name: &str) -> impl FnOnce(IoError) -> StartError + '_ {
    move |source| StartError::Device { device: name.to_string(), source }
}

/// Frames a TAP's kernel side may queue for its worker, per environment
/// behind it (the kernel's default is 500 per device).
pub const TAP_QUEUE_PER_ENV: u32 = 1024;
/// The most any TAP queues (each slot is a pointer in the kernel's ring).
pub const TAP_QUEUE_MAX: u32 = 65536;

/// A TAP's queue for `envs` environments behind it: room for a burst from
/// each of them while a worker is off the CPU.
pub fn tap_queue(envs: usize) -> u32 {
    (envs.max(1) as u32).saturating_mul(TAP_QUEUE_PER_ENV).min(TAP_QUEUE_MAX)
}

/// Opens and configures a TAP: offloads, MTU, queue length, link up.
fn open_tap(name: &str, opts: TapOptions, mtu: u16, offloads: bool, queue: u32) -> Result<Tap, StartError> {
    let tap = Tap::open(name, opts).map_err(dev(name))?;
    if opts.vnet_hdr {
        tap.set_offload(if offloads { OFFLOADS_TCP } else { 0 }).map_err(dev(name))?;
    }
    tap.set_mtu(u32::from(mtu)).map_err(dev(name))?;
    dataplane_io::ifreq::set_tx_queue_len(name, queue).map_err(dev(name))?;
    tap.set_up().map_err(dev(name))?;
    Ok(tap)
}

/// An `af-packet` attachment's ring sizes: with offloads on, slots that
/// hold a superframe (a guest's or a namespace's TCP stream arrives in
/// 64 KiB frames), else 2 KiB slots for MTU-sized frames; `slots` of them
/// where the attachment says (`ring_slots`), else the default for the size.
fn attachment_rings(offloads: bool, slots: Option<usize>) -> RingConfig {
    let cfg = if offloads { RingConfig::superframes() } else { RingConfig::default() };
    RingConfig { rx_frames: slots.unwrap_or(cfg.rx_frames), ..cfg }
}

/// Opens `af-packet` attachment `a` on its existing interface: it must be
/// up and carry frames of the attachment's MTU (the gateway does not
/// configure a device it does not own; a VMM's TAP is the VMM's). With
/// `ring`: on packet rings ([`attachment_rings`]), falling back to plain
/// sockets with a warning where the kernel refuses them.
fn open_packet_attachment(a: &AttachmentPlan, offloads: bool) -> Result<Inside, StartError> {
    let (name, mtu, ring) = (a.name.as_str(), a.mtu, a.ring);
    let rings = if ring {
        PacketPort::open_rings(name, offloads, attachment_rings(offloads, a.ring_slots))
            .inspect_err(|e| tracing::warn!(attachment = %name, error = %e, "no packet rings: plain sockets"))
            .ok()
    } else {
        None
    };
    let port = match rings {
        Some(p) => p,
        None => PacketPort::open(name, offloads).map_err(dev(name))?,
    };
    let have = dataplane_io::ifreq::mtu(name).map_err(dev(name))?;
    if have < u32::from(mtu) {
        return Err(StartError::Device {
            device: name.to_string(),
            source: IoError::Sys {
                op: "attachment MTU",
                source: std::io::Error::other(format!(
                    "the interface's MTU is {have}, below the attachment's mtu = {mtu}: raise it or lower mtu"
                )),
            },
        });
    }
    Ok(Inside::Packet(port))
}

static DROP_CAPABILITIES: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Makes [`start`] drop the calling thread's capabilities to
/// CAP_NET_ADMIN and CAP_NET_RAW once the devices are open, before the
/// workers start (`hyperplane run` does; tests that start several gateways
/// from one thread do not). Capabilities are per thread: the threads
/// started from that one afterwards (workers, control thread, servers)
/// inherit the reduced set.
pub fn drop_capabilities_once_started(on: bool) {
    DROP_CAPABILITIES.store(on, std::sync::atomic::Ordering::Relaxed);
}

/// `n` receiving sockets (`open` makes one from its options) on `name`
/// joined in one new `PACKET_FANOUT` group, one per worker in worker order:
/// steered by `prog` (`PACKET_FANOUT_CBPF`, see `dataplane_io::fanout_bpf`;
/// `set_prog` gives it to the group), or by flow hash without one.
fn fanout_group<T>(
    name: &str,
    n: usize,
    prog: Option<&[libc::sock_filter]>,
    open: &impl Fn(RxOptions) -> Result<T, IoError>,
    set_prog: &impl Fn(&T, &[libc::sock_filter]) -> Result<(), IoError>,
) -> Result<Vec<T>, IoError> {
    static GROUPS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    // Group ids are per network namespace: one another process (or another
    // gateway of this one) holds on another interface is refused
    // (`EINVAL`), so a few ids are tried.
    let mut last = None;
    for _ in 0..8 {
        let k = GROUPS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let group =
            (std::process::id().wrapping_mul(0x9e37_79b9).wrapping_add(k.wrapping_mul(0x85eb_ca6b)) >> 16) as u16;
        let opts = RxOptions { vnet_hdr: true, fanout: Some(group), steer: prog.is_some(), read_timeout: None };
        let joined = (0..n).map(|_| open(opts)).collect::<Result<Vec<_>, _>>();
        match (joined, prog) {
            (Ok(v), Some(p)) => return set_prog(&v[0], p).map(|()| v),
            (Ok(v), None) => return Ok(v),
            (Err(e), _) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| IoError::NoSuchInterface { name: name.to_owned() }))
}

/// The fanout group of `n` members on `name` the kernel steers to each
/// frame's owner where it runs the program, else one by flow hash (the
/// workers handing over); with how it steers (`"fanout-steered"` or
/// `"fanout-hash"`).
fn fanout_members<T>(
    name: &str,
    n: usize,
    shards: &Shards,
    open: impl Fn(RxOptions) -> Result<T, IoError>,
    set_prog: impl Fn(&T, &[libc::sock_filter]) -> Result<(), IoError>,
) -> Result<(Vec<T>, &'static str), IoError> {
    let prog = dataplane_io::fanout_bpf::program(shards);
    match prog.as_deref().map(|p| fanout_group(name, n, Some(p), &open, &set_prog)) {
        Some(Ok(v)) => Ok((v, "fanout-steered")),
        other => {
            if let Some(Err(e)) = other {
                tracing::info!(outside = %name, error = %e, "no PACKET_FANOUT_CBPF: fanout by flow hash");
            }
            fanout_group(name, n, None, &open, &set_prog).map(|v| (v, "fanout-hash"))
        }
    }
}

/// Sets the outside TAP's steering program ([`dataplane_io::steer_ebpf`]):
/// the kernel then gives each frame from the VPC to the queue of the
/// worker owning its ENI port, and stops hashing every frame the workers
/// write. Where the kernel refuses it (no BPF, no privilege for it) the
/// TAP keeps steering by flow hash and the workers hand over, as without
/// it; said once, at warn. Returns how the outside is read: `"tap-steered"`
/// or `"tap"`.
fn steer_tap(tap: &Tap, shards: &Shards) -> &'static str {
    use dataplane_io::steer_ebpf;
    use std::os::fd::AsFd;
    let set = steer_ebpf::program(shards)
        .ok_or(IoError::Sys { op: "steering program", source: std::io::Error::other("more workers than TAP queues") })
        .and_then(|p| steer_ebpf::load(&p))
        .and_then(|prog| tap.set_steering_program(Some(prog.as_fd())));
    match set {
        Ok(()) => "tap-steered",
        Err(e) => {
            tracing::warn!(outside = %tap.name(), error = %e, "no TAP steering program: queues by flow hash, workers hand over");
            "tap"
        }
    }
}

/// One worker's rings on the AF_PACKET outside.
type WorkerRings = (Arc<RxRing>, RingSender);

/// Each worker's rings on the AF_PACKET outside `name`: a receive ring in
/// the fanout group and a transmit ring with its plain socket for frames
/// longer than a slot; with how the group steers.
fn outside_rings(
    name: &str,
    n: usize,
    shards: &Shards,
    offloads: bool,
) -> Result<(Vec<WorkerRings>, &'static str), IoError> {
    let cfg = RingConfig::default();
    let (rx, how) =
        fanout_members(name, n, shards, |o| RxRing::open(name, o, cfg), |r: &RxRing, p| r.set_fanout_program(p))?;
    let mut out = Vec::with_capacity(n);
    for r in rx {
        out.push((Arc::new(r), RingSender::open(name, offloads, cfg)?));
    }
    Ok((out, how))
}

/// Starts the gateway the plan describes.
pub fn start(plan: &Plan) -> Result<RunningGateway, StartError> {
    check_net_admin().map_err(StartError::Privileges)?;
    let n = plan.workers.max(1);
    // Ports go where flows start: each worker's slice is weighted by the
    // environments behind the attachments it reads.
    let attachments: Vec<PortId> = plan.attachments.iter().map(|a| a.port).collect();
    let weights = port_weights(&attachments, plan.bindings.envs().iter().map(|e| e.port), n);
    let shards = Shards::weighted(plan.engine.port_range.clone(), &weights);
    let offloads = plan.offloads;
    let vnet = TapOptions { vnet_hdr: offloads, multi_queue: false };

    let mut outside = Vec::new();
    let mut af_tx = Vec::new();
    let mut af_rx = None;
    let mut af_rings: Vec<Option<WorkerRings>> = Vec::new();
    let mut outside_ring = false;
    let mut outside_rx = "tap";
    match plan.outside.kind {
        OutsideKind::Tap => {
            let opts = TapOptions { vnet_hdr: offloads, multi_queue: n > 1 };
            let queue = tap_queue(plan.bindings.envs().len());
            let first = open_tap(&plan.outside.name, opts, plan.outside.mtu, offloads, queue)?;
            for _ in 1..n {
                outside.push(Arc::new(first.open_queue().map_err(dev(&plan.outside.name))?));
            }
            outside.insert(0, Arc::new(first));
            if n > 1 {
                outside_rx = steer_tap(&outside[0], &shards);
            }
        }
        OutsideKind::AfPacket => {
            let name = &plan.outside.name;
            // Each worker reads its own socket of a fanout group; where
            // the kernel refuses the group, one reader thread reads for
            // all. Receivers skip what the workers' sockets send, and
            // always read the offload header: a veth, bridge or virtio NIC
            // hands over partial checksums and superframes whatever we ask.
            let rings = if plan.outside.fanout && plan.outside.ring {
                match outside_rings(name, n, &shards, offloads) {
                    Ok((r, how)) => {
                        outside_rx = how;
                        outside_ring = true;
                        r
                    }
                    Err(e) => {
                        tracing::warn!(outside = %name, error = %e, "no packet rings: plain sockets");
                        Vec::new()
                    }
                }
            } else {
                Vec::new()
            };
            af_rings = rings.into_iter().map(Some).collect();
            let fanout = if outside_ring {
                Ok(Vec::new())
            } else if plan.outside.fanout {
                fanout_members(name, n, &shards, |o| PacketReceiver::open(name, o), PacketReceiver::set_fanout_program)
                    .map(|(v, how)| {
                        outside_rx = how;
                        v
                    })
            } else {
                Err(IoError::Sys { op: "PACKET_FANOUT", source: std::io::Error::other("outside.fanout = false") })
            };
            let receivers = match fanout {
                Ok(r) => r,
                Err(e) => {
                    if plan.outside.fanout {
                        tracing::warn!(outside = %name, error = %e, "no PACKET_FANOUT group: one reader thread");
                    }
                    outside_rx = "reader-thread";
                    let opts = RxOptions {
                        vnet_hdr: true,
                        fanout: None,
                        steer: false,
                        read_timeout: Some(Duration::from_millis(200)),
                    };
                    af_rx = Some(PacketReceiver::open(name, opts).map_err(dev(name))?);
                    Vec::new()
                }
            };
            let mut receivers = receivers.into_iter();
            for _ in 0..n {
                if outside_ring {
                    break;
                }
                let tx = PacketSender::open_with(name, offloads).map_err(dev(name))?;
                af_tx.push((tx, receivers.next().map(Arc::new)));
            }
        }
    }

    let mut inside = Vec::with_capacity(plan.attachments.len());
    for a in &plan.attachments {
        let envs = plan.bindings.envs().iter().filter(|e| e.port == a.port).count();
        let dev = match a.kind {
            AttachmentKind::Tap => Inside::from(open_tap(&a.name, vnet, a.mtu, offloads, tap_queue(envs))?),
            AttachmentKind::AfPacket => open_packet_attachment(a, offloads)?,
            AttachmentKind::VhostUser => {
                let socket = a.socket.as_deref().unwrap_or(std::path::Path::new(""));
                Inside::VhostUser(VhostUserAttachment::bind(&a.name, socket).map_err(dev(&a.name))?)
            }
        };
        inside.push(Arc::new(dev));
    }

    let bindings = Arc::new(plan.bindings.clone());
    let mut specs = Vec::with_capacity(n);
    let mut af_tx = af_tx.into_iter();
    for i in 0..n {
        let engine = Engine::new(shard_config(plan, &shards, i), Arc::clone(&bindings)).map_err(StartError::Engine)?;
        let mine = plan
            .attachments
            .iter()
            .zip(&inside)
            .enumerate()
            .filter(|(j, _)| j % n == i)
            .map(|(_, (a, t))| (a.port, Arc::clone(t)))
            .collect();
        let out = match (outside.get(i), af_rings.get_mut(i).and_then(Option::take)) {
            (Some(t), _) => OutsideTx::Tap(Arc::clone(t)),
            (None, Some((rx, tx))) => OutsideTx::Ring { rx, tx },
            (None, None) => match af_tx.next() {
                Some((tx, rx)) => OutsideTx::AfPacket(tx, rx),
                None => unreachable!("one AF_PACKET sender per worker"),
            },
        };
        specs.push(WorkerSpec { engine, inside: mine, outside: out });
    }
    let mut by_port: Vec<Option<Arc<Inside>>> = Vec::new();
    for (a, t) in plan.attachments.iter().zip(&inside) {
        let slot = usize::from(a.port.0);
        if by_port.len() <= slot {
            by_port.resize(slot + 1, None);
        }
        by_port[slot] = Some(Arc::clone(t));
    }
    if DROP_CAPABILITIES.load(std::sync::atomic::Ordering::Relaxed) {
        // Every device is open: keep only what the running gateway needs,
        // before the workers (which read what tenants and the VPC send)
        // start, so that they and every thread started later inherit it.
        dataplane_io::keep_only_net_capabilities().map_err(StartError::Io)?;
        tracing::info!("capabilities dropped to CAP_NET_ADMIN and CAP_NET_RAW");
    }
    let (tx, events) = crossbeam_channel::bounded(1024);
    let gateway = Workers::start(specs, by_port, shards, af_rx, tx, plan.io).map_err(StartError::Io)?;
    tracing::info!(
        workers = n,
        attachments = inside.len(),
        outside = %plan.outside.name,
        offloads,
        io = ?gateway.backend(),
        "gateway running"
    );
    Ok(RunningGateway { gateway, inside, outside, events, offloads, outside_rx, outside_ring })
}

/// Each worker's weight in the port split: attachment `j` is read by
/// worker `j mod n`; each environment counts one for the worker that reads
/// its attachment, and each attachment one more, a share held for the
/// environments `apply` may add behind it later (the split is fixed for
/// the gateway's life, so a worker with no environment at start must not
/// be left without ports).
fn port_weights(attachments: &[PortId], envs: impl Iterator<Item = PortId>, n: usize) -> Vec<u32> {
    let n = n.max(1);
    let mut weights = vec![0u32; n];
    for j in 0..attachments.len() {
        weights[j % n] += 1;
    }
    for port in envs {
        if let Some(j) = attachments.iter().position(|&a| a == port) {
            weights[j % n] += 1;
        }
    }
    weights
}

/// Worker `i`'s engine settings: its port slice, its share (by ports) of
/// the high-water mark and of the session table, its own random seed.
fn shard_config(plan: &Plan, shards: &Shards, i: usize) -> dataplane::config::EngineConfig {
    let mut cfg = plan.engine.clone();
    let ports = |r: &std::ops::RangeInclusive<u16>| u64::from(*r.end() - *r.start()) + 1;
    let share = |x: u64| {
        if shards.owns_ports(i) {
            (x * ports(&shards.range(i)) / ports(&plan.engine.port_range)).max(1)
        } else {
            1024.min(x)
        }
    };
    if cfg.seed == dataplane::config::EngineConfig::default().seed {
        // No seed in the config: ports must not be predictable from one
        // start to the next (RFC 6056), so draw one.
        use std::hash::{BuildHasher, Hasher};
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_usize(i);
        cfg.seed = h.finish();
    }
    cfg.port_range = shards.range(i);
    cfg.high_water = share(u64::from(cfg.high_water)) as u32;
    cfg.max_sessions = share(cfg.max_sessions as u64) as usize;
    cfg.seed = cfg.seed.wrapping_add(0x9e37_79b9_7f4a_7c15u64.wrapping_mul(i as u64 + 1));
    cfg
}

/// Counters summed over the workers.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Totals {
    /// Frames received.
    pub rx_frames: u64,
    /// Outbound packets and bytes (environment → VPC).
    pub outbound: (u64, u64),
    /// Inbound packets and bytes (VPC → environment).
    pub inbound: (u64, u64),
    /// Hairpinned packets.
    pub hairpinned: u64,
    /// Sessions in the tables now, by protocol (TCP, UDP, ICMP).
    pub live: [u64; 3],
    /// Ended or unanswered sessions recycled for new flows so far.
    pub recycled: u64,
    /// ARP on the outside so far: requests sent to resolve a next hop, and
    /// requests for an ENI address answered.
    pub arp: (u64, u64),
    /// Drops by reason, only the non-zero ones, in [`DropReason::ALL`] order.
    pub drops: Vec<(DropReason, u64)>,
}

impl Totals {
    /// Sums `counters`.
    pub fn sum(counters: &[Arc<Counters>]) -> Totals {
        let mut t = Totals::default();
        for c in counters {
            t.rx_frames += c.rx_frames.get();
            t.outbound.0 += c.outbound.packets.get();
            t.outbound.1 += c.outbound.bytes.get();
            t.inbound.0 += c.inbound.packets.get();
            t.inbound.1 += c.inbound.bytes.get();
            t.hairpinned += c.hairpinned.get();
            t.recycled += c.sessions_recycled.get();
            t.arp.0 += c.arp_requests.get();
            t.arp.1 += c.arp_replies.get();
            for (i, p) in [
                dataplane::counters::ProtoIndex::Tcp,
                dataplane::counters::ProtoIndex::Udp,
                dataplane::counters::ProtoIndex::Icmp,
            ]
            .into_iter()
            .enumerate()
            {
                t.live[i] += c.live_sessions(p);
            }
        }
        for &r in DropReason::ALL {
            let n: u64 = counters.iter().map(|c| c.dropped(r)).sum();
            if n > 0 {
                t.drops.push((r, n));
            }
        }
        t
    }

    /// Drops for one reason.
    pub fn dropped(&self, r: DropReason) -> u64 {
        self.drops.iter().find(|(d, _)| *d == r).map_or(0, |(_, n)| *n)
    }
}

impl RunningGateway {
    /// Counters summed over the workers.
    pub fn totals(&self) -> Totals {
        Totals::sum(self.gateway.counters())
    }

    /// The workers' capture tap points (`hyperplane capture`).
    pub fn capture(&self) -> &dataplane_io::capture::Capture {
        self.gateway.capture()
    }

    /// Each worker's counters.
    pub fn counters(&self) -> &[Arc<Counters>] {
        self.gateway.counters()
    }

    /// Number of workers.
    pub fn workers(&self) -> usize {
        self.gateway.workers()
    }

    /// System calls of each worker, then of the AF_PACKET reader if any.
    pub fn io_counters(&self) -> &[Arc<IoCounters>] {
        self.gateway.io_counters()
    }

    /// System calls of every I/O thread, by kind ([`dataplane_io::syscalls::KINDS`]).
    pub fn syscalls(&self) -> [u64; 7] {
        let mut t = [0u64; 7];
        for c in self.gateway.io_counters() {
            for (a, b) in t.iter_mut().zip(c.by_kind()) {
                *a += b;
            }
        }
        t
    }

    /// The I/O path the workers run: `"uring"`, `"syscalls"`, or both
    /// joined by `+` when some worker fell back.
    pub fn io_backend(&self) -> String {
        let mut labels: Vec<&str> = self.gateway.io_counters()[..self.workers()]
            .iter()
            .map(|c| c.backend())
            .filter(|b| *b != ActiveBackend::None)
            .map(ActiveBackend::label)
            .collect();
        labels.sort_unstable();
        labels.dedup();
        if labels.is_empty() {
            // Not started yet: what start chose.
            return match self.gateway.backend() {
                dataplane_io::Backend::Syscalls => "syscalls".into(),
                _ => "uring".into(),
            };
        }
        labels.join("+")
    }

    /// Replaces the bindings on every worker (new flows see them at once).
    pub fn set_bindings(&self, b: Bindings) {
        self.gateway.set_bindings(&Arc::new(b));
    }

    /// Runs `f` on worker `i`'s engine.
    pub fn call<R: Send + 'static>(&self, i: usize, f: impl FnOnce(&mut Engine) -> R + Send + 'static) -> Option<R> {
        self.gateway.call(i, f)
    }

    /// Runs `f` on every worker's engine; results in worker order.
    pub fn query<R: Send + 'static>(&self, f: impl Fn(&mut Engine) -> R + Send + Sync + 'static) -> Vec<R> {
        self.gateway.query(f)
    }

    /// The attachment port of TAP `name`.
    pub fn port_of(&self, plan: &Plan, name: &str) -> Option<PortId> {
        plan.attachments.iter().find(|a| a.name == name).map(|a| a.port)
    }

    /// Stops the workers and closes the devices (the kernel removes the
    /// TAPs it created for us when their last descriptor closes).
    pub fn stop(self) -> std::io::Result<()> {
        let r = self.gateway.stop();
        drop(self.inside);
        drop(self.outside);
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dataplane_io::SUPERFRAME_SLOT;

    /// An attachment's receive ring: superframe slots with offloads, 2 KiB
    /// slots without, as many as `ring_slots` says, else the default.
    #[test]
    fn attachment_rings_follow_offloads_and_ring_slots() {
        let with = attachment_rings(true, None);
        assert_eq!((with.rx_frame_size, with.rx_frames), (SUPERFRAME_SLOT, 256));
        let without = attachment_rings(false, None);
        assert_eq!((without.rx_frame_size, without.rx_frames), (2048, 2048));
        assert_eq!(attachment_rings(true, Some(64)).rx_frames, 64);
        assert_eq!(attachment_rings(false, Some(4096)).rx_frames, 4096);
    }

    /// Issue 12 item 3: a worker that reads an attachment with no
    /// environment at start must still own ports of its own, or an
    /// environment `apply` adds there later allocates a port another worker
    /// owns (replies to it are steered away).
    #[test]
    fn every_worker_reading_an_attachment_owns_ports() {
        let attachments = [PortId(1), PortId(2)];
        let envs = [PortId(1), PortId(1), PortId(1)];
        let weights = port_weights(&attachments, envs.into_iter(), 2);
        let shards = Shards::weighted(1024..=65535, &weights);
        for i in 0..2 {
            assert!(shards.owns_ports(i), "worker {i} reads an attachment but owns no port: {weights:?}");
            let r = shards.range(i);
            assert_eq!((shards.owner(*r.start()), shards.owner(*r.end())), (i, i), "worker {i}: {r:?}");
        }
        // A later environment on the second attachment gets a real share:
        // at least a quarter of what one environment on the first gets.
        let per_env_0 = (u32::from(*shards.range(0).end()) - u32::from(*shards.range(0).start()) + 1) / 3;
        let ports_1 = u32::from(*shards.range(1).end()) - u32::from(*shards.range(1).start()) + 1;
        assert!(ports_1 >= per_env_0 / 4, "{ports_1} ports vs {per_env_0} per environment on worker 0");
        // A worker that reads no attachment owns none.
        let weights = port_weights(&attachments, envs.into_iter(), 3);
        assert!(!Shards::weighted(1024..=65535, &weights).owns_ports(2));
    }
}
