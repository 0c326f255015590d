//! Criterion benchmarks of the dataplane engine.
//!
//! - `established/{1k,100k,1M}/{outbound,inbound}`: packets of established
//!   UDP sessions, with 1,000 / 100,000 / 1,000,000 live sessions in the
//!   table, through `Engine::process_batch` in vectors of 64 (as a worker
//!   reads them); the figure is per packet. The packets follow a stream laid
//!   out in a random permutation of all the sessions, so successive packets
//!   hit random places of the whole table (as real traffic does) while the
//!   stream itself is read sequentially. Each packet is copied from its
//!   template into its receive buffer first (the engine rewrites in place
//!   and decrements TTL); that copy of a 74-byte frame is part of the
//!   figure. A worker finds its frames in cache (the kernel has just copied
//!   them into its buffers), but a stream of 100,000 packets (7.6 MB) is not
//!   (1,000 packets are): read cold, the copy waited for memory on every
//!   packet, 4–5 ns a packet at 100,000 sessions that grew with the table
//!   and was not the engine's (rough A/B, `BENCH_CLOCK=cpu`). So the next
//!   vector's packets are prefetched while a vector is processed;
//!   `BENCH_STREAM=cold` reads the stream as before, for comparison with
//!   older figures.
//! - `established/{..}/{outbound,inbound}_single`: the same streams through
//!   `Engine::process`, one frame at a time.
//! - `established/{..}/hashbrown`: the same-run baseline: a `hashbrown`
//!   map from the outbound stream's flow keys to session ids, looked up in
//!   the same random order (what a plain hash table costs at that size on
//!   this machine at this moment). The table build also prints the bytes
//!   per session of the session slab and its indexes.
//!
//! `BENCH_CLOCK=cpu` times the `established` and `new_flow` groups by the thread's time on
//! a CPU (`/proc/thread-self/schedstat`, updated at least every scheduler
//! tick) instead of the wall clock: on a machine shared with other work the
//! time the bench thread waits for a CPU is left out (what other work does
//! to the caches is not). Samples are long enough (a few milliseconds at
//! least) for the tick granularity to matter little.
//! - `new_flow/{udp,tcp_syn}`: the first packet of a new flow: environment
//!   lookup, a 20-rule security group whose matching rule is near the end,
//!   quota checks, port allocation, mapping and session insert, rewrite.
//!   Each engine takes `NEW_FLOWS_PER_ENGINE` fresh (env, sport) pairs and
//!   is then replaced (outside the timed part), so the table never fills.
//!   `udp` and `tcp_syn` hand the first packets over in vectors of 64
//!   (`Engine::process_batch`, as a worker does); `udp_single` and
//!   `tcp_syn_single` one by one (`Engine::process`).
//! - `expire/100k`: `Engine::expire` removing 100,000 idle UDP sessions
//!   (created over 100 s of virtual time) once the clock passed their 300 s
//!   timeout; each iteration builds its engine outside the timed part.
//!
//! # How the tables are built
//! Endpoint-independent mapping and filtering (the default config). Every
//! session is its own (environment, source port) towards one of 64 remote
//! servers behind the VPC router, UDP port 443, so every session also holds
//! its own mapping and external port: the worst case for ports and the
//! largest mapping table. One ENI address holds 64,512 ports per protocol, so
//! the ENI gets `n / 60,000 + 1` addresses (17 for 1M) and
//! `high_water = 60,000`: an environment keeps its "paired" address while it
//! has free ports, the next environment takes the first address below the
//! high-water mark. 1,000 sessions per environment (100 for 1k), spread over
//! 8 attachments. Only established-path costs are timed; building the 1M
//! table (1M first packets plus frame templates) takes a few seconds and is
//! done once per table size.

use criterion::{criterion_group, criterion_main, Criterion, SamplingMode, Throughput};
use dataplane::arp;
use dataplane::config::EngineConfig;
use dataplane::flow::{Endpoint, FlowKey, TCP, UDP};
use dataplane::testkit::{
    self, bench_remote as remote, bench_security_group as security_group, flags, IpOpts, Rng, Topology, OUTSIDE_MAC,
    ROUTER, ROUTER_MAC,
};
use dataplane::time::Instant;
use dataplane::wire::{get16, get_ip, ETH_LEN};
use dataplane::{Action, BatchFrame, Engine, PortId};
use std::hint::black_box;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

/// UDP payload of the benchmark packets.
const PAYLOAD: &[u8] = &[0x5a; 32];
/// Ethernet + IPv4 + UDP + payload.
const FRAME_LEN: usize = ETH_LEN + 20 + 8 + PAYLOAD.len();
/// TCP SYN frame: Ethernet + IPv4 + TCP, no options.
const SYN_LEN: usize = ETH_LEN + 20 + 20;
/// Receive buffer: room for a full ICMP error, as the engine asks.
const BUF_LEN: usize = 2048;
/// Attachments (inside ports).
const ATTACHMENTS: u16 = 8;
/// Remote servers the sessions talk to (off-link, through the router).
const REMOTES: u32 = 64;
/// Remote port.
const REMOTE_PORT: u16 = 443;
/// First source port of an environment's sessions.
const SPORT_BASE: u16 = 10_000;
/// High-water mark: below one address's 64,512 ports (see the module doc).
/// With the default (65,000, above an address's capacity) `pick_addr` keeps
/// choosing a full first address and new flows fail with `PortsExhausted`
/// while the other addresses are idle.
const HIGH_WATER: u32 = 60_000;
/// Frames per `process_batch` call.
const VECTOR: usize = 64;
/// Fresh flows each engine takes in `new_flow`.
const NEW_FLOWS_PER_ENGINE: u32 = 32_768;

/// A packet to replay: ingress port and frame.
#[derive(Clone, Copy)]
struct Packet {
    port: PortId,
    frame: [u8; FRAME_LEN],
}

fn eni_addr(i: u32) -> Ipv4Addr {
    Ipv4Addr::new(10, 0, 0, 10 + i as u8)
}

/// Bindings: `addrs` ENI addresses, `envs` environments, 20-rule SG.
fn topology(envs: u32, addrs: u32) -> Topology {
    let mut topo = Topology::new(ATTACHMENTS, envs);
    topo.enis[0].addrs = (0..addrs).map(eni_addr).collect();
    topo.enis[0].egress = Arc::new(security_group());
    topo
}

fn config(max_sessions: usize) -> EngineConfig {
    EngineConfig { max_sessions, high_water: HIGH_WATER, ..EngineConfig::default() }
}

/// A fresh engine that knows the router's MAC, its own frames drained.
fn engine(cfg: EngineConfig, topo: &Topology, now: Instant) -> Engine {
    let mut e = Engine::new(cfg, topo.bindings()).expect("valid config");
    let mut buf = [0u8; BUF_LEN];
    let n = arp::write_request(&mut buf, ROUTER_MAC, ROUTER, eni_addr(0));
    let a = e.process(now, PortId::OUTSIDE, &mut buf, n);
    assert!(matches!(a, Action::Reply { .. }), "ENI answers the router's ARP: {a:?}");
    while e.poll_transmit(now, &mut buf).is_some() {}
    while e.poll_event().is_some() {}
    e
}

/// A UDP frame from environment `env` to remote `r`.
fn udp_out(topo: &Topology, env: u32, sport: u16, r: u32) -> Packet {
    let src = testkit::env_ip(env);
    let port = topo.envs[env as usize].port;
    let seg = testkit::udp_segment(src, sport, remote(r), REMOTE_PORT, PAYLOAD);
    let f = testkit::ipv4_frame(
        testkit::inside_mac(port.0),
        testkit::env_mac(env),
        src,
        remote(r),
        UDP,
        IpOpts::default(),
        &seg,
    );
    Packet { port, frame: f.try_into().expect("frame length") }
}

/// The reply to a session translated to `eni:eport`.
fn udp_in(r: u32, eni: Ipv4Addr, eport: u16) -> Packet {
    let seg = testkit::udp_segment(remote(r), REMOTE_PORT, eni, eport, PAYLOAD);
    let f = testkit::ipv4_frame(OUTSIDE_MAC, ROUTER_MAC, remote(r), eni, UDP, IpOpts::default(), &seg);
    Packet { port: PortId::OUTSIDE, frame: f.try_into().expect("frame length") }
}

/// Environments and sessions per environment for `n` sessions.
fn shape(n: u32) -> (u32, u32) {
    let per_env = if n >= 100_000 { 1000 } else { 100 };
    assert_eq!(n % per_env, 0);
    (n / per_env, per_env)
}

/// The outbound packets that create `n` sessions, in creation order.
fn first_packets(topo: &Topology, n: u32) -> Vec<Packet> {
    let (envs, per_env) = shape(n);
    let mut v = Vec::with_capacity(n as usize);
    for env in 0..envs {
        for k in 0..per_env {
            v.push(udp_out(topo, env, SPORT_BASE + k as u16, (env * per_env + k) % REMOTES));
        }
    }
    v
}

/// `engine.process` on a copy of `p` in `buf`.
#[inline(always)]
fn run(engine: &mut Engine, now: Instant, buf: &mut [u8; BUF_LEN], p: &Packet) -> Action {
    buf[..FRAME_LEN].copy_from_slice(&p.frame);
    engine.process(now, p.port, buf, FRAME_LEN)
}

/// An engine holding `n` established UDP sessions, and the outbound and
/// inbound packet streams (each a random permutation of all sessions).
struct Established {
    engine: Engine,
    now: Instant,
    out: Vec<Packet>,
    inb: Vec<Packet>,
}

impl Established {
    fn build(n: u32) -> Established {
        let (envs, _) = shape(n);
        let topo = topology(envs, n / HIGH_WATER + 1);
        let t0 = Instant::from_secs(1);
        let mut engine = engine(config((n as usize * 5 / 4).max(4096)), &topo, t0);
        let mut out = first_packets(&topo, n);
        let mut inb = Vec::with_capacity(out.len());
        let mut buf = [0u8; BUF_LEN];
        for (i, p) in out.iter().enumerate() {
            match run(&mut engine, t0, &mut buf, p) {
                Action::Forward { port: PortId::OUTSIDE, .. } => {}
                a => panic!("first packet {i} not forwarded: {a:?}"),
            }
            let (eni, eport) = (get_ip(&buf, ETH_LEN + 12), get16(&buf, ETH_LEN + 20));
            inb.push(udp_in(i as u32 % REMOTES, eni, eport));
        }
        assert_eq!(engine.sessions().len(), n as usize);
        while engine.poll_event().is_some() {}
        let mut rng = Rng(0x5eed ^ u64::from(n));
        rng.shuffle(&mut out);
        rng.shuffle(&mut inb);
        let now = Instant::from_secs(2);
        let mut fx = Established { engine, now, out, inb };
        // One pass of each stream: every packet is translated (and caches and
        // branch predictors see the real workload before timing).
        for (name, v) in [("outbound", &fx.out), ("inbound", &fx.inb)] {
            for p in v {
                let a = run(&mut fx.engine, now, &mut buf, p);
                assert!(matches!(a, Action::Forward { .. }), "{name} packet not forwarded: {a:?}");
            }
        }
        assert_eq!(fx.engine.sessions().len(), n as usize, "no session was created");
        fx
    }
}

/// The inside key of an outbound stream packet.
fn inside_key(p: &Packet) -> FlowKey {
    let f = &p.frame;
    let (src, dst) = (get_ip(f, ETH_LEN + 12), get_ip(f, ETH_LEN + 16));
    let (sport, dport) = (get16(f, ETH_LEN + 20), get16(f, ETH_LEN + 22));
    FlowKey { proto: f[ETH_LEN + 9], local: Endpoint::new(src, sport), remote: Endpoint::new(dst, dport) }
}

/// A clock for the `established` and `new_flow` groups: the wall clock, or with
/// `BENCH_CLOCK=cpu` the thread's time on a CPU (see the module doc).
#[derive(Copy, Clone)]
enum Clock {
    Wall(std::time::Instant),
    Cpu(u64),
}

impl Clock {
    fn start() -> Clock {
        if std::env::var("BENCH_CLOCK").is_ok_and(|v| v == "cpu") {
            Clock::Cpu(thread_cpu_ns())
        } else {
            Clock::Wall(std::time::Instant::now())
        }
    }

    fn elapsed(self) -> Duration {
        match self {
            Clock::Wall(t) => t.elapsed(),
            Clock::Cpu(ns) => Duration::from_nanos(thread_cpu_ns().saturating_sub(ns)),
        }
    }
}

/// Nanoseconds this thread has run on a CPU.
fn thread_cpu_ns() -> u64 {
    let s = std::fs::read_to_string("/proc/thread-self/schedstat").expect("/proc/thread-self/schedstat");
    s.split_whitespace().next().and_then(|v| v.parse().ok()).expect("schedstat's first field")
}

/// Runs `iters` packets of `stream` from `*i` on through `process_batch` in
/// vectors of `VECTOR` frames (the last one shorter), each copied into its
/// buffer first; returns the time taken.
fn run_batches(
    engine: &mut Engine,
    now: Instant,
    frames: &mut [BatchFrame<'_>],
    stream: &[Packet],
    i: &mut usize,
    iters: u64,
) -> Duration {
    let warm = std::env::var("BENCH_STREAM").map_or(true, |v| v != "cold");
    let t = Clock::start();
    let mut left = iters as usize;
    while left > 0 {
        let n = left.min(frames.len());
        for f in frames[..n].iter_mut() {
            let p = &stream[*i];
            *i += 1;
            if *i == stream.len() {
                *i = 0;
            }
            f.buf[..FRAME_LEN].copy_from_slice(&p.frame);
            f.port = p.port;
            f.len = FRAME_LEN;
        }
        if warm {
            // The next vector's packets, fetched while this one is
            // processed (see the module doc).
            let next = left.saturating_sub(n).min(frames.len());
            for k in 0..next {
                let j = *i + k;
                let p = &stream[if j >= stream.len() { j - stream.len() } else { j }];
                dataplane::index::prefetch(&p.frame[0]);
                dataplane::index::prefetch(&p.frame[FRAME_LEN - 1]);
            }
        }
        engine.process_batch(now, black_box(&mut frames[..n]));
        black_box(&frames[..n]);
        left -= n;
    }
    t.elapsed()
}

/// Whether the command line's filter (criterion takes it as a regular
/// expression) may select a benchmark whose id starts with `prefix`: no
/// filter, a filter that looks like a regular expression, or a plain
/// filter that matches a prefix of it or of which it is a prefix.
fn may_run(prefix: &str) -> bool {
    let mut args = std::env::args().skip(1);
    let mut filters = vec![];
    while let Some(a) = args.next() {
        if a == "--profile-time" || a == "--save-baseline" || a == "--baseline" || a == "--sample-size" {
            args.next();
        } else if !a.starts_with('-') {
            filters.push(a);
        }
    }
    filters.is_empty()
        || filters.iter().any(|f| {
            f.contains(|c: char| "^$|.*+?()[]{}\\".contains(c)) || prefix.contains(f.as_str()) || f.starts_with(prefix)
        })
}

fn established(c: &mut Criterion) {
    let mut g = c.benchmark_group("established");
    g.throughput(Throughput::Elements(1));
    g.sample_size(30);
    g.warm_up_time(Duration::from_millis(1000));
    g.measurement_time(Duration::from_secs(3));
    for (label, n) in [("1k", 1_000), ("100k", 100_000), ("1M", 1_000_000)] {
        // Built before its benchmarks (a build inside the first one would
        // eat criterion's warm-up and leave it one cold iteration per
        // sample), but only when some of them may run: a filtered run
        // (`cargo bench -- new_flow`) does not build tables it does not
        // measure.
        let mut fx: Option<Established> = None;
        let get = |fx: &mut Option<Established>| {
            if fx.is_none() {
                let built = std::time::Instant::now();
                let f = Established::build(n);
                eprintln!(
                    "established/{label}: built {n} sessions in {:.2?}; {:.1} bytes per session slot \
                     (slab and both indexes, {} slots)",
                    built.elapsed(),
                    f.engine.sessions().bytes_per_session(),
                    f.engine.sessions().capacity(),
                );
                *fx = Some(f);
            }
        };
        if may_run(&format!("established/{label}/")) {
            get(&mut fx);
        }
        // One cache line more than the buffer, so the 64 frames' headers
        // do not all fall in the same few cache sets (a 2 KiB stride would).
        let mut bufs = vec![[0u8; BUF_LEN + 64]; VECTOR];
        let mut frames: Vec<BatchFrame> =
            bufs.iter_mut().map(|b| BatchFrame::new(PortId::OUTSIDE, b, FRAME_LEN)).collect();
        for dir in ["outbound", "inbound"] {
            let mut i = 0;
            g.bench_function(format!("{label}/{dir}"), |b| {
                get(&mut fx);
                let Established { engine, now, out, inb } = fx.as_mut().expect("built");
                let stream = if dir == "outbound" { &*out } else { &*inb };
                b.iter_custom(|iters| run_batches(engine, *now, &mut frames, stream, &mut i, iters))
            });
        }
        let mut buf = [0u8; BUF_LEN];
        for dir in ["outbound", "inbound"] {
            let mut i = 0;
            g.bench_function(format!("{label}/{dir}_single"), |b| {
                get(&mut fx);
                let Established { engine, now, out, inb } = fx.as_mut().expect("built");
                let stream = if dir == "outbound" { &*out } else { &*inb };
                b.iter_custom(|iters| {
                    let t = Clock::start();
                    for _ in 0..iters {
                        let p = &stream[i];
                        i += 1;
                        if i == stream.len() {
                            i = 0;
                        }
                        black_box(run(engine, *now, &mut buf, black_box(p)));
                    }
                    t.elapsed()
                })
            });
        }
        // The baseline: the same keys, in the same order, in a hashbrown map.
        let mut keys: Option<(hashbrown::HashMap<FlowKey, u32>, Vec<FlowKey>)> = None;
        let mut i = 0;
        g.bench_function(format!("{label}/hashbrown"), |b| {
            get(&mut fx);
            let (map, order) = keys.get_or_insert_with(|| {
                let out = &fx.as_ref().expect("built").out;
                let order: Vec<FlowKey> = out.iter().map(inside_key).collect();
                let mut sorted = order.clone();
                sorted.sort_by_key(|k| (k.local, k.remote));
                let mut map = hashbrown::HashMap::with_capacity(order.len());
                for (id, k) in sorted.into_iter().enumerate() {
                    map.insert(k, id as u32);
                }
                (map, order)
            });
            b.iter_custom(|iters| {
                let t = Clock::start();
                for _ in 0..iters {
                    let k = &order[i];
                    i += 1;
                    if i == order.len() {
                        i = 0;
                    }
                    black_box(map.get(black_box(k)).copied());
                }
                t.elapsed()
            })
        });
        if let Some(fx) = fx {
            let created = fx.engine.counters().sessions_created[1].get();
            assert_eq!(created, u64::from(n), "only the setup created sessions");
        }
    }
    g.finish();
}

fn new_flow(c: &mut Criterion) {
    let mut g = c.benchmark_group("new_flow");
    g.throughput(Throughput::Elements(1));
    g.sample_size(30);
    g.warm_up_time(Duration::from_millis(1000));
    g.measurement_time(Duration::from_secs(3));
    // 256 environments × 128 source ports, one ENI address (32,768 of its
    // 64,512 ports used when an engine is retired).
    let envs = 256;
    let per_env = NEW_FLOWS_PER_ENGINE / envs;
    let topo = topology(envs, 1);
    let cfg = config(NEW_FLOWS_PER_ENGINE as usize * 2);
    let now = Instant::from_secs(1);
    let mut udp: Vec<Packet> = (0..envs)
        .flat_map(|env| (0..per_env).map(move |k| (env, k)))
        .map(|(env, k)| udp_out(&topo, env, SPORT_BASE + k as u16, (env * per_env + k) % REMOTES))
        .collect();
    Rng(7).shuffle(&mut udp);
    let mut syn: Vec<(PortId, [u8; SYN_LEN])> = udp
        .iter()
        .map(|p| {
            let (src, dst) = (get_ip(&p.frame, ETH_LEN + 12), get_ip(&p.frame, ETH_LEN + 16));
            let sport = get16(&p.frame, ETH_LEN + 20);
            let seg = testkit::tcp_segment(src, sport, dst, REMOTE_PORT, flags::SYN, &[]);
            let dst_mac: [u8; 6] = p.frame[0..6].try_into().expect("mac");
            let src_mac: [u8; 6] = p.frame[6..12].try_into().expect("mac");
            let f = testkit::ipv4_frame(dst_mac, src_mac, src, dst, TCP, IpOpts::default(), &seg);
            (p.port, f.try_into().expect("frame length"))
        })
        .collect();
    Rng(8).shuffle(&mut syn);

    let fresh = || engine(cfg.clone(), &topo, now);
    // Vectors of `VECTOR` first packets through `process_batch`, as a
    // worker reads them (the figure the goals are about), then one by one.
    let mut bufs = vec![[0u8; BUF_LEN + 64]; VECTOR];
    let mut frames: Vec<BatchFrame> = bufs.iter_mut().map(|b| BatchFrame::new(PortId::OUTSIDE, b, FRAME_LEN)).collect();
    g.bench_function("udp", |b| {
        b.iter_custom(|iters| {
            time_new_flow_batches(iters, now, fresh, &mut frames, |f, i| {
                let p = &udp[i];
                f.buf[..FRAME_LEN].copy_from_slice(&p.frame);
                (f.port, f.len) = (p.port, FRAME_LEN);
            })
        })
    });
    g.bench_function("tcp_syn", |b| {
        b.iter_custom(|iters| {
            time_new_flow_batches(iters, now, fresh, &mut frames, |f, i| {
                let (port, s) = &syn[i];
                f.buf[..SYN_LEN].copy_from_slice(s);
                (f.port, f.len) = (*port, SYN_LEN);
            })
        })
    });
    g.bench_function("udp_single", |b| {
        b.iter_custom(|iters| {
            time_new_flows(iters, fresh, |e, buf, i| {
                black_box(run(e, now, buf, black_box(&udp[i])));
            })
        })
    });
    g.bench_function("tcp_syn_single", |b| {
        b.iter_custom(|iters| {
            time_new_flows(iters, fresh, |e, buf, i| {
                let (port, f) = &syn[i];
                buf[..SYN_LEN].copy_from_slice(f);
                black_box(e.process(now, *port, buf, SYN_LEN));
            })
        })
    });
    g.finish();
}

/// Times `iters` new flows: `run(engine, k)` gives a fresh engine (from
/// `fresh`, not timed) its first `k` first packets, at most
/// `NEW_FLOWS_PER_ENGINE` an engine.
fn time_per_engine(iters: u64, fresh: impl Fn() -> Engine, mut run: impl FnMut(&mut Engine, usize)) -> Duration {
    let mut total = Duration::ZERO;
    let mut left = iters;
    while left > 0 {
        let mut e = fresh();
        let k = left.min(u64::from(NEW_FLOWS_PER_ENGINE)) as usize;
        let t = Clock::start();
        run(&mut e, k);
        total += t.elapsed();
        assert_eq!(e.sessions().len(), k, "every first packet created a session");
        left -= k as u64;
    }
    total
}

/// Times `iters` new flows one by one, `step(engine, buf, i)` each (see
/// [`time_per_engine`]).
fn time_new_flows(
    iters: u64,
    fresh: impl Fn() -> Engine,
    mut step: impl FnMut(&mut Engine, &mut [u8; BUF_LEN], usize),
) -> Duration {
    let mut buf = [0u8; BUF_LEN];
    time_per_engine(iters, fresh, |e, k| {
        for i in 0..k {
            step(e, &mut buf, i);
        }
    })
}

/// Times `iters` new flows through `process_batch` in vectors of
/// `frames.len()`, `fill(frame, i)` putting first packet `i` in a frame
/// (timed, as `run_batches` copies each packet; see [`time_per_engine`]).
fn time_new_flow_batches(
    iters: u64,
    now: Instant,
    fresh: impl Fn() -> Engine,
    frames: &mut [BatchFrame<'_>],
    mut fill: impl FnMut(&mut BatchFrame<'_>, usize),
) -> Duration {
    time_per_engine(iters, fresh, |e, k| {
        let mut i = 0;
        while i < k {
            let n = (k - i).min(frames.len());
            for (j, f) in frames[..n].iter_mut().enumerate() {
                fill(f, i + j);
            }
            e.process_batch(now, black_box(&mut frames[..n]));
            black_box(&frames[..n]);
            i += n;
        }
    })
}

fn expire(c: &mut Criterion) {
    const N: u32 = 100_000;
    let mut g = c.benchmark_group("expire");
    g.throughput(Throughput::Elements(u64::from(N)));
    g.sampling_mode(SamplingMode::Flat);
    g.sample_size(10);
    g.warm_up_time(Duration::from_millis(1));
    g.measurement_time(Duration::from_secs(1));
    let (envs, _) = shape(N);
    let topo = topology(envs, N / HIGH_WATER + 1);
    let cfg = config(N as usize * 5 / 4);
    let packets = first_packets(&topo, N);
    g.bench_function("100k", |b| {
        b.iter_custom(|iters| {
            let mut buf = [0u8; BUF_LEN];
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                // 1,000 new sessions per virtual second over 100 s.
                let mut e = engine(cfg.clone(), &topo, Instant::from_secs(1));
                for (i, p) in packets.iter().enumerate() {
                    let now = Instant::from_secs(1 + i as u64 / 1000);
                    black_box(run(&mut e, now, &mut buf, p));
                }
                assert_eq!(e.sessions().len(), N as usize);
                // Past every session's 300 s UDP timeout.
                let now = Instant::from_secs(1 + u64::from(N) / 1000 + 301);
                let t = std::time::Instant::now();
                e.expire(black_box(now));
                total += t.elapsed();
                assert_eq!(e.sessions().len(), 0, "every session expired");
            }
            total
        })
    });
    g.finish();
}

criterion_group!(benches, established, new_flow, expire);
criterion_main!(benches);
