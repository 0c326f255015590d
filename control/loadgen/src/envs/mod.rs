//! Emulated execution environments: one smoltcp [`Interface`] (medium Ethernet, MAC [`env_mac`]`(i)`, the plan's
//! address `i` ([`Addresses::env`]) with the plan's prefix, default route via the plan's gateway, ARP answered for
//! its address) and its own socket per environment, all behind one port (the TAP, or a packet socket on an external
//! NAT's inside link; with `tap_per_env`, environment `i` behind TAP `i`), driven by one poll loop on the calling
//! thread, or with `cpus` by one loop per shard: `cpus.len()` threads, each pinned to its CPU and holding
//! environments `i ≡ t (mod shards)`, and a reader thread (the calling one) that reads the ports, demultiplexes as
//! in step 1 below and hands each frame to its shard's channel; a shard's loop takes its frames from that channel
//! instead of the ports and waits on it. Results (counts, latency histograms, frames written) are added up at the
//! end; the timeline is shared. Frames from a packet socket may carry a checksum the sender's kernel left to offload (a veth passes them
//! on so), so there received checksums are not verified; from a TAP they are.
//!
//! # The loop
//!
//! 1. Read up to [`RX_BATCH`] frames from each readable TAP (non-blocking; with several TAPs, the readable ones are
//!    those a zero-timeout `epoll_wait` reports) and demultiplex: by destination MAC (a MAC made by
//!    [`env_mac`]), broadcast ARP by its target address; the frame goes to that environment's inbox and the
//!    environment joins the ready list. Other frames are ignored.
//! 2. Pop due timers from a binary heap of (wake time µs, environment) into the ready list. Each environment keeps
//!    its one current wake time; heap entries that no longer match it are stale and skipped, so rescheduling is a
//!    push, never a search.
//! 3. Poll each ready environment: `Interface::poll` consumes its inbox and writes what it sends straight to the
//!    environment's TAP (one `write(2)` per frame); then the scenario's step; then the next wake =
//!    min(`Interface::poll_at`, the scenario's own deadline). Nothing else is polled, so 10,000 idle environments
//!    cost nothing.
//! 4. With nothing read and nothing ready, wait for a TAP to become readable (at most 1 ms; epoll with several).
//!
//! Environment `i` appears at `ramp * i / n` and starts its scenario then. After `duration` no new work starts
//! (bulk streams close); the loop ends when every environment is done or `grace` later. A stop (`args.stop`) ends
//! the offered load at once, the same way, and leaves at most [`STOP_GRACE`](super::STOP_GRACE) for what is in
//! flight. Frames written, completed and failed connections go onto the timeline as they happen (frames every
//! 10 ms).
//!
//! Memory per environment is about 2 KB plus socket buffers: [`CONNECT_BUF`] for connect and UDP,
//! [`bulk_tx_buf`]`(bulk streams)` (1 MB for up to 64 streams, 64 MB shared out beyond, at least 64 KB) for bulk
//! senders, which refill their whole free send space in place (no copy) after each poll.

use super::{env_mac, Addresses, Port, Scenario, Timeline, BULK_PORT, CONNECT_PORT, UDP_PORT};
use hdrhistogram::Histogram;
use smoltcp::iface::{Config, Interface, SocketHandle, SocketSet};
use smoltcp::phy::{self, Checksum, Device, DeviceCapabilities, Medium};
use smoltcp::socket::{tcp, udp};
use smoltcp::time::Instant as SInstant;
use smoltcp::wire::{EthernetAddress, HardwareAddress, IpAddress, IpCidr, IpEndpoint};
use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Frames read per loop iteration, at most.
pub const RX_BATCH: usize = 256;
/// Socket buffer (each way) of connect and UDP environments, bytes.
pub const CONNECT_BUF: usize = 4096;
/// Largest send buffer of a bulk environment, bytes (window scaling is negotiated, so the server's window is no
/// limit). Fewer, larger writes into the ring and more data in flight per stream.
pub const BULK_TX_BUF: usize = 1024 * 1024;
/// Smallest send buffer of a bulk environment, bytes.
pub const BULK_TX_BUF_MIN: usize = 64 * 1024;
/// The bulk environments' send buffers together, at most, bytes (so thousands of bulk streams stay bounded).
pub const BULK_TX_TOTAL: usize = 64 * 1024 * 1024;

/// The send buffer of each of `streams` bulk environments: [`BULK_TX_TOTAL`] shared out, within
/// [`BULK_TX_BUF_MIN`]..=[`BULK_TX_BUF`] bytes.
pub fn bulk_tx_buf(streams: usize) -> usize {
    (BULK_TX_TOTAL / streams.max(1)).clamp(BULK_TX_BUF_MIN, BULK_TX_BUF)
}
/// UDP send interval per environment in `mixed`.
pub const MIXED_UDP_INTERVAL: Duration = Duration::from_millis(10);
const REQUEST: &[u8] = b"GET / hyperplane-loadgen\n";

/// What an environment does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Connect, request, response, close.
    Connect,
    /// Stream to the bulk port.
    Bulk,
    /// UDP datagrams every [`MIXED_UDP_INTERVAL`].
    Udp,
}

/// The kinds of `n` environments for a scenario (see the parent module doc for `mixed`).
pub fn kinds(scenario: Scenario, n: usize) -> Vec<Kind> {
    let mut bulk = 0;
    (0..n)
        .map(|i| match scenario {
            Scenario::TcpBulk => Kind::Bulk,
            Scenario::Udp => Kind::Udp,
            Scenario::Connect => Kind::Connect,
            Scenario::Mixed => match i % 20 {
                19 if bulk < 4 => {
                    bulk += 1;
                    Kind::Bulk
                }
                16..=19 => Kind::Udp,
                _ => Kind::Connect,
            },
        })
        .collect()
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Not appeared yet.
    Waiting,
    /// Waiting for the pacer.
    Idle,
    /// SYN sent at `since`.
    Syn,
    /// Request sent, waiting for the response.
    Request,
    /// Response read, closing.
    Closing,
    /// Bulk: streaming.
    Streaming,
    /// UDP: sending.
    Sending,
    /// Finished.
    Done,
}

struct Env {
    iface: Interface,
    sockets: SocketSet<'static>,
    handle: SocketHandle,
    kind: Kind,
    phase: Phase,
    /// When the current phase's deadline started (µs since t0).
    since: i64,
    /// When the last SYN went out (µs since t0).
    syn_at: i64,
    /// The scenario's own next deadline (µs), if any.
    app_at: Option<i64>,
    /// The wake time of this environment's live heap entry.
    wake: Option<i64>,
    inbox: VecDeque<Vec<u8>>,
    ready: bool,
    seq: u32,
}

/// The TAP as a smoltcp device for one environment's poll: frames from its inbox, frames out to the TAP.
struct Wire<'a> {
    tap: &'a Port,
    inbox: &'a mut VecDeque<Vec<u8>>,
    tx: &'a mut TxCount,
}

#[derive(Default)]
struct TxCount {
    frames: u64,
    bytes: u64,
    errors: u64,
}

struct RxTok(Vec<u8>);
struct TxTok<'a> {
    tap: &'a Port,
    tx: &'a mut TxCount,
}

impl phy::RxToken for RxTok {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(&self.0)
    }
}

impl phy::TxToken for TxTok<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mut buf = [0u8; 1514];
        let len = len.min(buf.len());
        let r = f(&mut buf[..len]);
        match self.tap.send(&buf[..len]) {
            Ok(_) => {
                self.tx.frames += 1;
                self.tx.bytes += len as u64;
            }
            Err(_) => self.tx.errors += 1,
        }
        r
    }
}

impl Device for Wire<'_> {
    type RxToken<'b>
        = RxTok
    where
        Self: 'b;
    type TxToken<'b>
        = TxTok<'b>
    where
        Self: 'b;

    fn receive(&mut self, _: SInstant) -> Option<(RxTok, TxTok<'_>)> {
        let f = self.inbox.pop_front()?;
        Some((RxTok(f), TxTok { tap: self.tap, tx: self.tx }))
    }

    fn transmit(&mut self, _: SInstant) -> Option<TxTok<'_>> {
        Some(TxTok { tap: self.tap, tx: self.tx })
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut c = DeviceCapabilities::default();
        c.medium = Medium::Ethernet;
        c.max_transmission_unit = 1514;
        if matches!(self.tap, Port::Packet(_)) {
            // Computed on transmit, not verified on receive (see the module doc).
            c.checksum.ipv4 = Checksum::Tx;
            c.checksum.tcp = Checksum::Tx;
            c.checksum.udp = Checksum::Tx;
            c.checksum.icmpv4 = Checksum::Tx;
        }
        c
    }
}

/// Counters the loop keeps.
#[derive(Clone, Default)]
struct Stats {
    attempted: u64,
    established: u64,
    completed: u64,
    refused: u64,
    timeout: u64,
    reset: u64,
    bulk_streams: u64,
    bulk_clean: u64,
    bulk_sent: u64,
    udp_sent: u64,
    udp_echoed: u64,
    udp_errors: u64,
    unclaimed: u64,
    rx_errors: u64,
    /// Frames the reader dropped because their environment's thread was a whole queue behind (`shard`).
    behind: u64,
}

impl Stats {
    /// Adds another shard's counts.
    fn add(&mut self, o: &Stats) {
        self.attempted += o.attempted;
        self.established += o.established;
        self.completed += o.completed;
        self.refused += o.refused;
        self.timeout += o.timeout;
        self.reset += o.reset;
        self.bulk_streams += o.bulk_streams;
        self.bulk_clean += o.bulk_clean;
        self.bulk_sent += o.bulk_sent;
        self.udp_sent += o.udp_sent;
        self.udp_echoed += o.udp_echoed;
        self.udp_errors += o.udp_errors;
        self.unclaimed += o.unclaimed;
        self.rx_errors += o.rx_errors;
        self.behind += o.behind;
    }
}

struct Ctx<'a> {
    server: std::net::Ipv4Addr,
    t0: Instant,
    end_us: i64,
    timeout_us: i64,
    repeat: bool,
    payload: usize,
    pacer: bool,
    tl: &'a Timeline,
    hist: Histogram<u64>,
    stats: Stats,
    idle: VecDeque<u32>,
}

impl Ctx<'_> {
    /// Puts a failed connection (or bulk stream) on the timeline.
    fn failed(&self, now_us: i64) {
        self.tl.add(&self.tl.failures, self.t0 + Duration::from_micros(now_us.max(0) as u64), 1);
    }
}

fn new_env(addrs: &Addresses, i: usize, kind: Kind, bulk_buf: usize, tap: &Port, tx: &mut TxCount) -> Env {
    let mut inbox = VecDeque::new();
    let mut dev = Wire { tap, inbox: &mut inbox, tx };
    let mut cfg = Config::new(HardwareAddress::Ethernet(EthernetAddress(env_mac(i))));
    cfg.random_seed = i as u64 ^ 0x6c67_6c67;
    let mut iface = Interface::new(cfg, &mut dev, SInstant::from_micros(0));
    iface.update_ip_addrs(|a| {
        let _ = a.push(IpCidr::new(IpAddress::Ipv4(addrs.env(i)), addrs.prefix()));
    });
    let _ = iface.routes_mut().add_default_ipv4_route(addrs.gateway);
    let mut sockets = SocketSet::new(Vec::with_capacity(1));
    let handle = match kind {
        Kind::Udp => {
            let meta = || vec![udp::PacketMetadata::EMPTY; 4];
            let s = udp::Socket::new(
                udp::PacketBuffer::new(meta(), vec![0u8; CONNECT_BUF]),
                udp::PacketBuffer::new(meta(), vec![0u8; CONNECT_BUF]),
            );
            sockets.add(s)
        }
        Kind::Connect | Kind::Bulk => {
            let tx = if kind == Kind::Bulk { bulk_buf } else { CONNECT_BUF };
            let mut s =
                tcp::Socket::new(tcp::SocketBuffer::new(vec![0u8; CONNECT_BUF]), tcp::SocketBuffer::new(vec![0u8; tx]));
            s.set_nagle_enabled(false);
            s.set_ack_delay(None);
            sockets.add(s)
        }
    };
    Env {
        iface,
        sockets,
        handle,
        kind,
        phase: Phase::Waiting,
        since: 0,
        syn_at: 0,
        app_at: None,
        wake: None,
        inbox,
        ready: false,
        seq: 0,
    }
}

mod feed;
mod shard;

pub(crate) use shard::run;

fn start_connect(e: &mut Env, now_us: i64, cx: &mut Ctx) {
    e.seq = e.seq.wrapping_add(1);
    let local = 10_000 + (e.seq % 50_000) as u16;
    let port = if e.kind == Kind::Bulk { BULK_PORT } else { CONNECT_PORT };
    let s = e.sockets.get_mut::<tcp::Socket>(e.handle);
    if s.connect(e.iface.context(), IpEndpoint::new(IpAddress::Ipv4(cx.server), port), local).is_ok() {
        cx.stats.attempted += u64::from(e.kind == Kind::Connect);
        e.phase = Phase::Syn;
        e.since = now_us;
        e.syn_at = now_us;
        e.app_at = Some(now_us + cx.timeout_us);
    } else {
        e.phase = Phase::Done;
        e.app_at = None;
    }
}

/// A connection ended (well or not): next one, or done.
fn finish_connect(e: &mut Env, now_us: i64, closed_out: bool, cx: &mut Ctx, i: u32) {
    e.app_at = None;
    if e.kind == Kind::Connect && cx.repeat && !closed_out {
        if cx.pacer {
            e.phase = Phase::Idle;
            cx.idle.push_back(i);
        } else {
            start_connect(e, now_us, cx);
        }
    } else {
        e.phase = Phase::Done;
    }
}

/// Polls one environment and advances its scenario.
fn step(e: &mut Env, i: u32, now_us: i64, closed_out: bool, tap: &Port, tx: &mut TxCount, cx: &mut Ctx) {
    let ts = SInstant::from_micros(now_us);
    if e.phase == Phase::Waiting && !closed_out {
        match e.kind {
            Kind::Udp => {
                let s = e.sockets.get_mut::<udp::Socket>(e.handle);
                let _ = s.bind(super::raw::RAW_SPORT);
                e.phase = Phase::Sending;
                e.app_at = Some(now_us);
            }
            Kind::Connect if cx.pacer => {
                e.phase = Phase::Idle;
                cx.idle.push_back(i);
            }
            Kind::Connect | Kind::Bulk => start_connect(e, now_us, cx),
        }
    }
    for _ in 0..4 {
        let mut dev = Wire { tap, inbox: &mut e.inbox, tx };
        e.iface.poll(ts, &mut dev, &mut e.sockets);
        if !advance(e, i, now_us, closed_out, cx) {
            break;
        }
    }
}

/// The scenario's step after a poll; true if it queued something to send (poll again).
fn advance(e: &mut Env, i: u32, now_us: i64, closed_out: bool, cx: &mut Ctx) -> bool {
    match e.kind {
        Kind::Udp => {
            let s = e.sockets.get_mut::<udp::Socket>(e.handle);
            let mut acted = false;
            while let Ok((_, _)) = s.recv() {
                cx.stats.udp_echoed += 1;
            }
            if e.phase == Phase::Sending && e.app_at.is_some_and(|t| t <= now_us) {
                let dst = IpEndpoint::new(IpAddress::Ipv4(cx.server), UDP_PORT);
                match s.send(cx.payload, dst) {
                    Ok(b) => {
                        b.fill(0x75);
                        cx.stats.udp_sent += 1;
                        acted = true;
                    }
                    Err(_) => cx.stats.udp_errors += 1,
                }
                e.app_at = Some(now_us + MIXED_UDP_INTERVAL.as_micros() as i64);
            }
            if e.phase == Phase::Done {
                e.app_at = None;
            }
            acted
        }
        Kind::Connect | Kind::Bulk => {
            let s = e.sockets.get_mut::<tcp::Socket>(e.handle);
            let st = s.state();
            match e.phase {
                Phase::Syn => match st {
                    tcp::State::Established => {
                        let lat = (now_us - e.syn_at).max(1) as u64;
                        if e.kind == Kind::Connect {
                            cx.stats.established += 1;
                            let _ = cx.hist.record(lat);
                            let _ = s.send_slice(REQUEST);
                            e.phase = Phase::Request;
                        } else {
                            cx.stats.bulk_streams += 1;
                            e.phase = Phase::Streaming;
                            e.app_at = None;
                            return fill(s, cx);
                        }
                        e.since = now_us;
                        e.app_at = Some(now_us + cx.timeout_us);
                        true
                    }
                    tcp::State::Closed => {
                        cx.stats.refused += 1;
                        cx.failed(now_us);
                        finish_connect(e, now_us, closed_out, cx, i);
                        true
                    }
                    _ if now_us - e.since >= cx.timeout_us => {
                        s.abort();
                        cx.stats.timeout += 1;
                        cx.failed(now_us);
                        finish_connect(e, now_us, closed_out, cx, i);
                        true
                    }
                    _ => false,
                },
                Phase::Request => {
                    let mut got_line = false;
                    while s.can_recv() {
                        let mut b = [0u8; 256];
                        match s.recv_slice(&mut b) {
                            Ok(k) if k > 0 => got_line |= b[..k].contains(&b'\n'),
                            _ => break,
                        }
                    }
                    if got_line {
                        s.close();
                        e.phase = Phase::Closing;
                        e.since = now_us;
                        e.app_at = Some(now_us + cx.timeout_us);
                        true
                    } else if matches!(st, tcp::State::Closed | tcp::State::TimeWait) {
                        cx.stats.reset += 1;
                        cx.failed(now_us);
                        s.abort();
                        finish_connect(e, now_us, closed_out, cx, i);
                        true
                    } else if now_us - e.since >= cx.timeout_us {
                        s.abort();
                        cx.stats.timeout += 1;
                        cx.failed(now_us);
                        finish_connect(e, now_us, closed_out, cx, i);
                        true
                    } else {
                        false
                    }
                }
                Phase::Streaming => {
                    if st == tcp::State::Established || st == tcp::State::CloseWait {
                        fill(s, cx)
                    } else {
                        cx.stats.reset += 1;
                        cx.failed(now_us);
                        e.phase = Phase::Done;
                        false
                    }
                }
                Phase::Closing => {
                    while s.can_recv() {
                        let mut b = [0u8; 256];
                        if s.recv_slice(&mut b).is_err() {
                            break;
                        }
                    }
                    if matches!(st, tcp::State::Closed | tcp::State::TimeWait) {
                        if e.kind == Kind::Connect {
                            cx.stats.completed += 1;
                            cx.tl.add(&cx.tl.connects, cx.t0 + Duration::from_micros(now_us as u64), 1);
                        }
                        cx.stats.bulk_clean += u64::from(e.kind == Kind::Bulk);
                        if st == tcp::State::TimeWait {
                            s.abort();
                        }
                        finish_connect(e, now_us, closed_out, cx, i);
                        true
                    } else if now_us - e.since >= cx.timeout_us {
                        s.abort();
                        if e.kind == Kind::Connect {
                            // The response arrived; only the close stalled.
                            cx.stats.completed += 1;
                            cx.tl.add(&cx.tl.connects, cx.t0 + Duration::from_micros(now_us as u64), 1);
                        }
                        finish_connect(e, now_us, closed_out, cx, i);
                        true
                    } else {
                        false
                    }
                }
                Phase::Waiting | Phase::Idle | Phase::Sending | Phase::Done => false,
            }
        }
    }
}

/// Keeps a bulk sender's buffer full; true if something was queued.
fn fill(s: &mut tcp::Socket, cx: &mut Ctx) -> bool {
    let mut queued = false;
    // Enqueue the whole free space in place (at most two calls: the ring may wrap), without copying: the stream's
    // bytes are whatever the ring held (zeros at first), the responder only counts them.
    while s.can_send() {
        match s.send(|free| (free.len(), free.len())) {
            Ok(0) | Err(_) => break,
            Ok(k) => {
                cx.stats.bulk_sent += k as u64;
                queued = true;
            }
        }
    }
    queued
}
