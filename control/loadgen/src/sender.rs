//! The saturating raw UDP sender: prebuilt Ethernet + IPv4 + UDP frames, several generator threads (one per CPU
//! given, each pinned to its CPU with `sched_setaffinity`), batched transmission.
//!
//! Two ways out, one driver:
//!
//! - [`send_packet`]: an `AF_PACKET` socket per thread, bound to a link inside a namespace (the environment's side
//!   of a NAT), sending [`BATCH`] frames per `sendmmsg(2)` call. The frames leave through the link's transmit path,
//!   as trafgen's do, so a TAP's reader or a veth's peer receives them.
//! - [`send_tap`]: the user side of a TAP (the load generator's), one `write(2)` per frame (a TAP descriptor takes
//!   no `sendmmsg`), several threads writing the same descriptor.
//!
//! # Frames and flows
//!
//! [`Source::Flows`]: one template ([`FrameSpec`]) and a flow space of `sports × dports` (source ports
//! `spec.sport..spec.sport + sports`, destination ports `spec.dport..spec.dport + dports`). Flow `k` has source port
//! `sport + k % sports` and destination port `dport + k / sports`; thread `t` of `T` sends flows `t, t + T, t + 2T,
//! …` (mod `sports × dports`), so with more than one flow every frame is a flow not seen for `sports × dports`
//! frames ("every packet a new flow" until the space wraps). The ports are rewritten in place in the thread's
//! batch buffers and the UDP checksum adjusted incrementally (RFC 1624); nothing is allocated per frame.
//! [`Source::Fixed`]: a list of whole frames; thread `t` sends frames `t, t + T, …` round-robin.
//!
//! # Bounds and units
//!
//! Every run is bounded by `duration` and, when given, `max_frames` (in all); `rate` (frames/s, in all, split
//! evenly over the threads) paces per batch. "Sent" counts frames the kernel accepted (`sendmmsg`'s count, or a
//! successful `write`), and on a packet socket also those the link dropped because its receiving side's queue was
//! full (`ENOBUFS`: the frame left the generator, as on a wire, and the link's `tx_dropped` counts it); a frame the
//! kernel accepted can still be dropped further on (e.g. a full TAP queue, counted
//! by that link's `tx_dropped`), which is why delivered figures come from a kernel counter on the far side
//! ([`netlab::meter`]), never from here.

use dataplane::testkit::{ipv4_frame, udp_segment, IpOpts};
use dataplane_io::tap::Tap;
use netlab::Netns;
use rustix::net::{sendmmsg, MMsgHdr, SendAncillaryBuffer, SendFlags};
use std::io::IoSlice;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, IntoRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Frames per `sendmmsg` call (and per pacing step).
pub const BATCH: usize = 64;

/// Where the UDP checksum sits in a frame made by [`FrameSpec::build`] (Ethernet 14 + IPv4 20 + 6).
const UDP_CSUM: usize = 40;
/// Where the UDP source port sits (Ethernet 14 + IPv4 20).
const UDP_SPORT: usize = 34;

/// One UDP frame's addresses and size.
#[derive(Clone, Debug)]
pub struct FrameSpec {
    /// Ethernet source.
    pub src_mac: [u8; 6],
    /// Ethernet destination (the NAT's inside MAC).
    pub dst_mac: [u8; 6],
    /// IPv4 source.
    pub src: Ipv4Addr,
    /// IPv4 destination.
    pub dst: Ipv4Addr,
    /// UDP source port (the first of the flow space).
    pub sport: u16,
    /// UDP destination port (the first of the flow space).
    pub dport: u16,
    /// UDP payload bytes (zeros).
    pub payload: usize,
}

impl FrameSpec {
    /// The frame environment `ns` sends out of `link` from `src` to `dst` through the NAT at `gateway` (64 bytes of
    /// payload, ports 40000 → 9000): `link`'s MAC to the MAC `ns` learns for `gateway` with one ping to `dst`.
    pub fn from_link(
        ns: &Netns,
        link: &str,
        src: Ipv4Addr,
        gateway: Ipv4Addr,
        dst: Ipv4Addr,
    ) -> Result<FrameSpec, netlab::LabError> {
        let _ = ns.exec(&["ping", "-c", "1", "-W", "1", &dst.to_string()]);
        let dst_mac = netlab::meter::neigh_mac(ns, gateway)?
            .ok_or_else(|| netlab::LabError::Invalid(format!("{gateway}: no neighbour entry in {}", ns.name())))?;
        let src_mac = netlab::meter::link_mac(ns, link)?;
        Ok(FrameSpec { src_mac, dst_mac, src, dst, sport: 40000, dport: 9000, payload: 64 })
    }

    /// The same frame as a trafgen (netsniff-ng) packet configuration: one flow.
    pub fn trafgen_config(&self) -> String {
        let mac = |m: [u8; 6]| m.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":");
        format!(
            "{{ eth(da={}, sa={}), ipv4(saddr={}, daddr={}, ttl=64), udp(sport={}, dport={}), fill(0x00, {}) }}\n",
            mac(self.dst_mac),
            mac(self.src_mac),
            self.src,
            self.dst,
            self.sport,
            self.dport,
            self.payload
        )
    }

    /// The frame: Ethernet + IPv4 (no options, DF clear, TTL 64) + UDP with complete checksums.
    pub fn build(&self) -> Vec<u8> {
        let data = vec![0u8; self.payload];
        let seg = udp_segment(self.src, self.sport, self.dst, self.dport, &data);
        ipv4_frame(self.dst_mac, self.src_mac, self.src, self.dst, 17, IpOpts::default(), &seg)
    }
}

/// The flow space (see the module doc).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Flows {
    /// Source ports, from the template's.
    pub sports: u16,
    /// Destination ports, from the template's.
    pub dports: u16,
}

impl Flows {
    /// One flow.
    pub const ONE: Flows = Flows { sports: 1, dports: 1 };

    /// Number of distinct flows.
    pub fn count(&self) -> u64 {
        u64::from(self.sports.max(1)) * u64::from(self.dports.max(1))
    }

    /// Flow `k`'s (source port offset, destination port offset).
    pub fn ports(&self, k: u64) -> (u16, u16) {
        let s = u64::from(self.sports.max(1));
        let k = k % self.count();
        ((k % s) as u16, (k / s) as u16)
    }
}

/// What the threads send.
#[derive(Clone, Debug)]
pub enum Source {
    /// A template and a flow space.
    Flows(FrameSpec, Flows),
    /// Whole frames, round-robin.
    Fixed(Arc<Vec<Vec<u8>>>),
}

/// A run's bounds and threads.
#[derive(Clone, Debug)]
pub struct Plan {
    /// What to send.
    pub source: Source,
    /// One generator thread per entry, pinned to that CPU (empty: one unpinned thread).
    pub cpus: Vec<usize>,
    /// Longest the run lasts.
    pub duration: Duration,
    /// Frames/s in all (`None`: as fast as possible).
    pub rate: Option<f64>,
    /// Most frames in all (`None`: no limit but `duration`).
    pub max_frames: Option<u64>,
    /// Frames sent so far, added to after every batch (for reading a rate over a window while the run goes on).
    pub progress: Option<Arc<AtomicU64>>,
}

/// What a run sent.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Sent {
    /// Frames the kernel accepted.
    pub frames: u64,
    /// Their bytes (whole frames, Ethernet header included).
    pub bytes: u64,
    /// Frames refused (errors from `sendmmsg` / `write`).
    pub errors: u64,
    /// From the first thread's start to the last thread's end, seconds.
    pub seconds: f64,
    /// Frames per thread.
    pub per_thread: Vec<u64>,
    /// Whether each thread was pinned to its CPU (false: `sched_setaffinity` failed, e.g. no such CPU).
    pub pinned: Vec<bool>,
}

impl Sent {
    /// Frames per second over the run.
    pub fn pps(&self) -> f64 {
        self.frames as f64 / self.seconds.max(1e-9)
    }
}

/// Why a run could not start.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// The link was not found in the namespace.
    #[error("sender: no link {0:?} in the namespace")]
    NoLink(String),
    /// A system call failed.
    #[error("sender: {what}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// A generator thread panicked.
    #[error("sender: a generator thread panicked")]
    Panicked,
}

/// One thread's result: (frames, bytes, errors, start, end, pinned).
type ThreadSent = (u64, u64, u64, Instant, Instant, bool);

/// Pins the calling thread to `cpu`; whether it worked.
pub fn pin_to(cpu: usize) -> bool {
    let mut set = rustix::thread::CpuSet::new();
    if cpu >= rustix::thread::CpuSet::MAX_CPU {
        return false;
    }
    set.set(cpu);
    rustix::thread::sched_setaffinity(None, &set).is_ok()
}

/// Rewrites a frame made from `base` (ports `(s0, d0)`, UDP checksum `c0`) to ports `(s, d)`, adjusting the UDP
/// checksum incrementally (RFC 1624, eqn. 3). The frame must be at least 42 bytes.
fn set_ports(f: &mut [u8], (s0, d0, c0): (u16, u16, u16), s: u16, d: u16) {
    f[UDP_SPORT..UDP_SPORT + 2].copy_from_slice(&s.to_be_bytes());
    f[UDP_SPORT + 2..UDP_SPORT + 4].copy_from_slice(&d.to_be_bytes());
    let mut sum = u32::from(!c0) + u32::from(!s0) + u32::from(s) + u32::from(!d0) + u32::from(d);
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    let c = match !(sum as u16) {
        0 => 0xffff,
        c => c,
    };
    f[UDP_CSUM..UDP_CSUM + 2].copy_from_slice(&c.to_be_bytes());
}

/// The command line that runs trafgen (netsniff-ng) from `cfg` (a file made from [`FrameSpec::trafgen_config`]) out
/// of `link`: one process pinned to `cpu` (`taskset`), through the qdisc like [`send_packet`], leaving the
/// machine's socket memory settings and IRQ affinities alone, stopping after `count` frames, paced at `pps` when
/// given.
pub fn trafgen_args(link: &str, cfg: &std::path::Path, cpu: usize, count: u64, pps: Option<u64>) -> Vec<String> {
    let mut a: Vec<String> =
        ["taskset", "-c", &cpu.to_string(), "trafgen", "-o", link, "-i", &cfg.display().to_string()]
            .iter()
            .map(|s| s.to_string())
            .collect();
    for s in ["-P", "1", "--no-sock-mem", "--notouch-irq", "--qdisc-path", "--no-cpu-stats", "-n", &count.to_string()] {
        a.push(s.to_string());
    }
    if let Some(r) = pps {
        a.push("-b".into());
        a.push(format!("{r}pps"));
    }
    a
}

/// The per-thread loop: fills batches from `plan.source` and hands them to `send`, which returns how many it sent
/// (an `Err` counts the whole batch as refused).
fn drive(
    t: usize,
    threads: usize,
    plan: &Plan,
    stop: &AtomicBool,
    mut send: impl FnMut(&[Vec<u8>]) -> std::io::Result<usize>,
) -> (u64, u64, u64, Instant, Instant) {
    let t0 = Instant::now();
    let end = t0 + plan.duration;
    let rate = plan.rate.map(|r| r / threads as f64);
    let limit = plan.max_frames.map(|m| m.div_ceil(threads as u64));
    let (mut frames, mut bytes, mut errors, mut offered) = (0u64, 0u64, 0u64, 0u64);
    // The batch buffers: copies of the template (Flows) or this thread's share of the fixed frames.
    let (mut batch, base, flows, fixed): (Vec<Vec<u8>>, _, _, Option<Vec<Vec<u8>>>) = match &plan.source {
        Source::Flows(spec, flows) => {
            let f = spec.build();
            let c0 = u16::from_be_bytes([f[UDP_CSUM], f[UDP_CSUM + 1]]);
            (vec![f; BATCH], Some((spec.sport, spec.dport, c0)), *flows, None)
        }
        Source::Fixed(all) => {
            let mine: Vec<Vec<u8>> = all.iter().skip(t).step_by(threads).cloned().collect();
            (Vec::new(), None, Flows::ONE, Some(if mine.is_empty() { all.to_vec() } else { mine }))
        }
    };
    let many = flows.count() > 1;
    let (mut k, mut next) = (t as u64, 0usize);
    loop {
        let now = Instant::now();
        if now >= end || stop.load(Ordering::Relaxed) || limit.is_some_and(|l| offered >= l) {
            return (frames, bytes, errors, t0, now);
        }
        if let Some(r) = rate {
            let due = (now - t0).as_secs_f64() * r;
            if offered as f64 >= due {
                std::thread::sleep(Duration::from_secs_f64(((offered as f64 - due) / r).min(0.001)));
                continue;
            }
        }
        let n = limit.map_or(BATCH, |l| (l - offered).min(BATCH as u64) as usize);
        let frames_now: &[Vec<u8>] = match (&fixed, base) {
            (Some(mine), _) => {
                // A window of this thread's frames, wrapping: send up to the end, the rest next time.
                let n = n.min(mine.len() - next);
                let w = &mine[next..next + n];
                next = if next + n == mine.len() { 0 } else { next + n };
                w
            }
            (None, Some(b)) => {
                if many {
                    for f in &mut batch[..n] {
                        let (ds, dd) = flows.ports(k);
                        set_ports(f, b, b.0.wrapping_add(ds), b.1.wrapping_add(dd));
                        k += threads as u64;
                    }
                }
                &batch[..n]
            }
            (None, None) => unreachable!("a Flows source has a base"),
        };
        offered += frames_now.len() as u64;
        match send(frames_now) {
            Ok(sent) => {
                frames += sent as u64;
                if let Some(p) = &plan.progress {
                    p.fetch_add(sent as u64, Ordering::Relaxed);
                }
                bytes += frames_now[..sent].iter().map(|f| f.len() as u64).sum::<u64>();
                errors += (frames_now.len() - sent) as u64;
            }
            Err(_) => errors += frames_now.len() as u64,
        }
    }
}

fn gather(results: Vec<ThreadSent>) -> Sent {
    let start = results.iter().map(|r| r.3).min();
    let end = results.iter().map(|r| r.4).max();
    Sent {
        frames: results.iter().map(|r| r.0).sum(),
        bytes: results.iter().map(|r| r.1).sum(),
        errors: results.iter().map(|r| r.2).sum(),
        seconds: match (start, end) {
            (Some(s), Some(e)) => e.saturating_duration_since(s).as_secs_f64(),
            _ => 0.0,
        },
        per_thread: results.iter().map(|r| r.0).collect(),
        pinned: results.iter().map(|r| r.5).collect(),
    }
}

/// An `AF_PACKET` socket bound to `link` (in the calling thread's namespace), blocking, with a 4 MB send buffer.
/// The bind is done by `pnet_datalink` on a duplicate descriptor (same socket), which is closed afterwards.
fn packet_socket(link: &str) -> Result<OwnedFd, SendError> {
    let io = |what| move |source| SendError::Io { what, source };
    let iface = pnet_datalink::interfaces()
        .into_iter()
        .find(|i| i.name == link)
        .ok_or_else(|| SendError::NoLink(link.to_owned()))?;
    let fd = rustix::net::socket(rustix::net::AddressFamily::PACKET, rustix::net::SocketType::RAW, None)
        .map_err(|e| io("socket(AF_PACKET)")(e.into()))?;
    let dup = rustix::io::fcntl_dupfd_cloexec(&fd, 0).map_err(|e| io("dup")(e.into()))?;
    // Protocol 0: the socket receives nothing (no tap on the link's receive path); the kernel takes each frame's
    // protocol from its Ethernet header.
    let cfg = pnet_datalink::Config {
        channel_type: pnet_datalink::ChannelType::Layer3(0),
        promiscuous: false,
        socket_fd: Some(dup.into_raw_fd()),
        ..pnet_datalink::Config::default()
    };
    drop(pnet_datalink::channel(&iface, cfg).map_err(io("bind(AF_PACKET)"))?);
    rustix::io::ioctl_fionbio(&fd, false).map_err(|e| io("FIONBIO")(e.into()))?;
    deep_send_buffer(&fd);
    debug_assert!(fd.as_raw_fd() >= 0);
    Ok(fd)
}

/// Bytes of frames a writer's packet socket may have in flight (see [`deep_send_buffer`]).
pub const SEND_BUFFER: usize = 32 << 20;

/// Gives a packet socket room for [`SEND_BUFFER`] bytes of frames in flight (`SO_SNDBUFFORCE`, root; else
/// `SO_SNDBUF`, capped by `net.core.wmem_max`). A frame sent on a veth keeps its socket's send-buffer charge until
/// the frame is freed, wherever that is (the kernel keeps the socket reference across the veth); with the default
/// (about 200 KB, some 270 frames) a writer whose frames a NAT forwards on another CPU waits on that CPU's queue
/// rather than offering more than it carries.
pub fn deep_send_buffer(fd: impl std::os::fd::AsFd) {
    if rustix::net::sockopt::set_socket_send_buffer_size_force(&fd, SEND_BUFFER).is_err() {
        let _ = rustix::net::sockopt::set_socket_send_buffer_size(&fd, SEND_BUFFER);
    }
}

/// `sendmmsg` of a batch on a bound packet socket: how many left the generator (taken by the kernel, or dropped by
/// the link for want of room on its receiving side).
fn send_batch(fd: impl std::os::fd::AsFd, frames: &[Vec<u8>]) -> std::io::Result<usize> {
    let iovs: Vec<[IoSlice<'_>; 1]> = frames.iter().map(|f| [IoSlice::new(f)]).collect();
    let mut controls: Vec<SendAncillaryBuffer<'_, '_, '_>> =
        (0..frames.len()).map(|_| SendAncillaryBuffer::default()).collect();
    let mut msgs: Vec<MMsgHdr<'_>> = iovs.iter().zip(controls.iter_mut()).map(|(v, c)| MMsgHdr::new(v, c)).collect();
    let mut done = 0;
    while done < msgs.len() {
        match sendmmsg(&fd, &mut msgs[done..], SendFlags::empty()) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(rustix::io::Errno::INTR) => continue,
            // The link took the frame and dropped it: the receiving side's queue was full (a veth whose peer's CPU
            // is behind). It left the generator, as on a wire; the link's transmit drops count it.
            Err(rustix::io::Errno::NOBUFS) => done += 1,
            Err(e) if done == 0 => return Err(e.into()),
            Err(_) => break,
        }
    }
    Ok(done)
}

/// Runs `plan` from `ns` out of `link` through `AF_PACKET` sockets (see the module doc). `stop` ends it early.
pub fn send_packet(ns: &Netns, link: &str, plan: &Plan, stop: &Arc<AtomicBool>) -> Result<Sent, SendError> {
    let cpus: Vec<Option<usize>> =
        if plan.cpus.is_empty() { vec![None] } else { plan.cpus.iter().copied().map(Some).collect() };
    let threads = cpus.len();
    let handles: Vec<_> = cpus
        .into_iter()
        .enumerate()
        .map(|(t, cpu)| {
            let (plan, stop, link) = (plan.clone(), Arc::clone(stop), link.to_owned());
            ns.thread(move || -> Result<ThreadSent, SendError> {
                let pinned = cpu.is_some_and(pin_to);
                let fd = packet_socket(&link)?;
                let (f, b, e, s, end) = drive(t, threads, &plan, &stop, |batch| send_batch(&fd, batch));
                Ok((f, b, e, s, end, pinned))
            })
        })
        .collect();
    let mut results = Vec::with_capacity(threads);
    let mut first_err = None;
    for h in handles {
        match h.join() {
            Ok(Ok(r)) => results.push(r),
            Ok(Err(e)) => {
                stop.store(true, Ordering::Relaxed);
                first_err.get_or_insert(e);
            }
            Err(_) => {
                first_err.get_or_insert(SendError::Panicked);
            }
        }
    }
    match first_err {
        Some(e) => Err(e),
        None => Ok(gather(results)),
    }
}

/// Runs `plan` into the user side of a TAP, one `write` per frame, from one thread per CPU of the plan; thread `t`
/// writes to `taps[t % taps.len()]` (the queues of a multi-queue TAP, or one descriptor for all).
pub fn send_tap(taps: &[Tap], plan: &Plan, stop: &AtomicBool) -> Result<Sent, SendError> {
    send_each(
        taps,
        plan,
        stop,
        || (),
        |_, tap, batch| {
            let mut ok = 0;
            for f in batch {
                if tap.send(f).is_ok() {
                    ok += 1;
                }
            }
            Ok(ok)
        },
    )
}

/// How a writer thread hands a batch to a TAP queue.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum TapWrites {
    /// One `write(2)` per frame.
    Write,
    /// The batch in one `io_uring_enter` ([`dataplane_io::WriteBatch`]); one `write` per frame where the kernel
    /// has no io_uring.
    #[default]
    Uring,
}

impl TapWrites {
    /// Parses `write` or `uring`; the error names `tap_writes`.
    pub fn parse(s: &str) -> Result<TapWrites, crate::LoadError> {
        match s {
            "write" => Ok(TapWrites::Write),
            "uring" => Ok(TapWrites::Uring),
            _ => Err(crate::invalid("tap_writes", format!("{s:?} is not write or uring"))),
        }
    }
}

/// Runs `plan` into the load generator's ports (see [`crate::port`]), from one thread per CPU of the plan; thread
/// `t` sends on `ports[t % ports.len()]`: to a TAP queue as `writes` says, one `sendmmsg` per batch on a packet
/// socket.
pub fn send_ports(ports: &[crate::Port], plan: &Plan, stop: &AtomicBool, writes: TapWrites) -> Result<Sent, SendError> {
    let ring = || match writes {
        TapWrites::Uring => dataplane_io::WriteBatch::new(BATCH).ok(),
        TapWrites::Write => None,
    };
    send_each(ports, plan, stop, ring, |ring, port, batch| match port {
        crate::Port::Tap(tap) => {
            if let Some(w) = ring {
                return w.write(std::os::fd::AsFd::as_fd(tap), batch);
            }
            let mut ok = 0;
            for f in batch {
                if tap.send(f).is_ok() {
                    ok += 1;
                }
            }
            Ok(ok)
        }
        crate::Port::Packet(p) => {
            // The socket does not block (it is also read): a full send buffer refuses the rest of a batch, which
            // is retried after a pause (at most 10 ms in all) rather than counted as refused at once.
            let mut done = 0;
            for _ in 0..200 {
                match send_batch(p, &batch[done..]) {
                    Ok(k) => done += k,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    Err(e) if done == 0 => return Err(e),
                    Err(_) => break,
                }
                if done == batch.len() || stop.load(Ordering::Relaxed) {
                    break;
                }
                std::thread::sleep(Duration::from_micros(50));
            }
            Ok(done)
        }
    })
}

/// One pinned thread per CPU of the plan, thread `t` sending through `send(&mut state, &sinks[t % sinks.len()],
/// batch)` with a `state` of its own made by `make` (on the thread, after pinning).
fn send_each<S: Sync, St>(
    sinks: &[S],
    plan: &Plan,
    stop: &AtomicBool,
    make: impl Fn() -> St + Sync,
    send: impl Fn(&mut St, &S, &[Vec<u8>]) -> std::io::Result<usize> + Sync,
) -> Result<Sent, SendError> {
    if sinks.is_empty() {
        return Err(SendError::NoLink("(no TAP descriptor)".into()));
    }
    let taps = sinks;
    let cpus: Vec<Option<usize>> =
        if plan.cpus.is_empty() { vec![None] } else { plan.cpus.iter().copied().map(Some).collect() };
    let threads = cpus.len();
    let results = std::thread::scope(|s| {
        let handles: Vec<_> = cpus
            .into_iter()
            .enumerate()
            .map(|(t, cpu)| {
                let tap = &taps[t % taps.len()];
                let (send, make) = (&send, &make);
                s.spawn(move || {
                    let pinned = cpu.is_some_and(pin_to);
                    let mut state = make();
                    let (f, b, e, st, end) = drive(t, threads, plan, stop, |batch| send(&mut state, tap, batch));
                    (f, b, e, st, end, pinned)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().map_err(|_| SendError::Panicked)).collect::<Result<Vec<_>, _>>()
    })?;
    Ok(gather(results))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> FrameSpec {
        FrameSpec {
            src_mac: [2, 0, 0, 0, 0, 1],
            dst_mac: [2, 0, 0, 0, 0, 2],
            src: Ipv4Addr::new(172, 16, 0, 2),
            dst: Ipv4Addr::new(10, 1, 0, 2),
            sport: 1024,
            dport: 9000,
            payload: 64,
        }
    }

    #[test]
    fn tap_writes_parse_and_a_bad_one_names_the_field() {
        assert_eq!(TapWrites::parse("uring").ok(), Some(TapWrites::Uring));
        assert_eq!(TapWrites::parse("write").ok(), Some(TapWrites::Write));
        assert!(matches!(TapWrites::parse("mmap"), Err(crate::LoadError::Invalid { param: "tap_writes", .. })));
    }

    #[test]
    fn rewritten_ports_carry_the_checksum_a_fresh_frame_has() {
        let base = spec();
        let f0 = base.build();
        assert_eq!(f0.len(), 14 + 20 + 8 + 64);
        let c0 = u16::from_be_bytes([f0[UDP_CSUM], f0[UDP_CSUM + 1]]);
        for (s, d) in [(1024, 9000), (1025, 9000), (65535, 9063), (40000, 1), (0xffff, 0xffff), (7, 0)] {
            let mut f = f0.clone();
            set_ports(&mut f, (base.sport, base.dport, c0), s, d);
            let fresh = FrameSpec { sport: s, dport: d, ..base.clone() }.build();
            assert_eq!(f, fresh, "ports {s} {d}");
        }
    }

    #[test]
    fn flows_cover_the_space_and_threads_do_not_overlap() {
        let flows = Flows { sports: 10, dports: 3 };
        assert_eq!(flows.count(), 30);
        assert_eq!(flows.ports(0), (0, 0));
        assert_eq!(flows.ports(11), (1, 1));
        assert_eq!(flows.ports(30), (0, 0));
        // Two threads: 0, 2, 4, … and 1, 3, 5, …: disjoint, together every flow.
        let mut seen = std::collections::HashSet::new();
        for t in 0..2u64 {
            for i in 0..15 {
                assert!(seen.insert(flows.ports(t + 2 * i)));
            }
        }
        assert_eq!(seen.len(), 30);
        assert_eq!(Flows::ONE.count(), 1);
    }

    #[test]
    fn drive_honours_max_frames_and_sends_distinct_flows() {
        let plan = Plan {
            source: Source::Flows(spec(), Flows { sports: 100, dports: 2 }),
            cpus: vec![],
            duration: Duration::from_secs(5),
            rate: None,
            max_frames: Some(150),
            progress: Some(Arc::new(AtomicU64::new(0))),
        };
        let stop = AtomicBool::new(false);
        let mut ports = Vec::new();
        let (frames, bytes, errors, _, _) = drive(0, 1, &plan, &stop, |b| {
            ports.extend(b.iter().map(|f| (f[34], f[35], f[36], f[37])));
            Ok(b.len())
        });
        assert_eq!((frames, errors), (150, 0));
        assert_eq!(bytes, 150 * 106);
        assert_eq!(plan.progress.as_ref().map(|p| p.load(Ordering::Relaxed)), Some(150));
        let distinct: std::collections::HashSet<_> = ports.iter().collect();
        assert_eq!(distinct.len(), 150, "every frame a new flow within the space of 200");
        // Refusals count as errors, not as sent.
        let (frames, _, errors, _, _) = drive(0, 1, &plan, &stop, |b| Ok(b.len() / 2));
        assert_eq!(frames + errors, 150);
        assert!(errors > 0);
    }

    #[test]
    fn drive_paces_to_the_rate() {
        let plan = Plan {
            source: Source::Fixed(Arc::new(vec![spec().build(); 3])),
            cpus: vec![],
            duration: Duration::from_millis(300),
            rate: Some(10_000.0),
            max_frames: None,
            progress: None,
        };
        let stop = AtomicBool::new(false);
        let (frames, _, _, s, e) = drive(0, 1, &plan, &stop, |b| Ok(b.len()));
        let secs = (e - s).as_secs_f64();
        let rate = frames as f64 / secs;
        assert!((7_000.0..=13_000.0).contains(&rate), "{frames} frames in {secs} s");
    }
}
