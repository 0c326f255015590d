//! The load generator: thousands of emulated execution environments in this process, behind one TAP, driving our
//! gateway or the kernel's NAT (nftables masquerade) on the same address plan, with a responder in the server
//! namespace that counts what arrived.
//!
//! # Topology
//!
//! ```text
//!  ours:    loadgen TAP (lg-…) ─┐ bridge ns: br0 ─ gateway attachment TAP ─ hyperplane ─ VPC ns ─ server ns
//!  kernel:  loadgen TAP (lg-…) ── gw ns: 172.16.0.1/16, nft masquerade out of `vpc` ─ VPC ns ─ server ns
//! ```
//!
//! The raw `udp` scenario takes a veth instead of the loadgen TAP (`VethFeed`): its end `feed` in a namespace of
//! the load generator's own (`lgv-…`), written and read through a packet socket as an external NAT's inside link
//! is ([`Port::packet`]); its far end is our gateway's own `af-packet` attachment (direct attach, no bridge), or
//! the kernel NAT's inside link:
//!
//! ```text
//!  udp, ours:   lgv ns: feed (AF_PACKET) ── veth ── af-packet attachment ─ hyperplane ─ VPC ns ─ server ns
//!  udp, kernel: lgv ns: feed (AF_PACKET) ── veth ── gw ns: 172.16.0.1/16, nft masquerade ─ VPC ns ─ server ns
//! ```
//!
//! So the frames leave through a link's transmit path as trafgen's do, and `--trafgen` can send on the same link.
//!
//! Against our gateway the lab runs in shared-attachment mode ([`lab::Options::shared_attachment`]): one attachment,
//! `envs` environments configured on it with addresses [`env_addr`]`(i)`. Against the kernel,
//! [`KernelNat::build_with_tap`] puts the loadgen TAP into the NAT namespace. Environment `i` has MAC
//! `02:4c:47:HH:MM:LL` (`i` in the low 24 bits, see [`env_mac`]) and address [`env_addr`]`(i)`.
//!
//! With `tap_per_env` (at most [`MAX_TAP_ENVS`] environments; not for `udp`) every environment has its own loadgen
//! TAP instead, and the loop reads them all (epoll) and writes each environment's frames to its own TAP:
//!
//! ```text
//!  ours:    loadgen TAP i ── bridge ns: br{i} ── gateway attachment TAP i (one attachment per environment)
//!  kernel:  loadgen TAP i ── gw ns: 172.16.0.1/32, route env_addr(i)/32 (as KernelNat's veth environments)
//! ```
//!
//! Against our gateway the lab then runs in bridged-attachment mode ([`lab::Options::bridged_attachments`]), so
//! each environment only sees its own attachment's ARP replies; against the kernel,
//! [`KernelNat::build_with_taps`].
//!
//! Against any other NAT ([`Target::External`], [`LoadArgs::external`]) nothing is built: the environments use a
//! packet socket on the user's inside link instead of a TAP, the responder binds in the outside link's namespace,
//! and the addresses come from the arguments ([`Addresses`]); see [`external`]:
//!
//! ```text
//!  external: packet socket on --inside ── the user's NAT ── --outside (responder, kernel counter)
//! ```
//!
//! With `udp --cpus`, the veth has one queue per writer. [`offer`] (`--offer-only`) runs the writers into a TAP
//! alone, its kernel side discarding.
//!
//! # Scenarios and units
//!
//! - `udp` ([`raw`]): prebuilt Ethernet+IPv4+UDP frames, `payload` bytes of UDP data (64..=1472), round-robin over
//!   the environments, open loop at `rate` packets/s or as fast as the writers go. Delivered = datagrams the
//!   responder received; unpaced and without `echo`, the VPC counter's count, the datagrams discarded there
//!   ([`LoadReport::delivered_at_vpc_edge`]). `trafgen`: trafgen's one flow on the same link and counter afterwards
//!   ([`trafgen`]).
//! - `tcp-bulk` ([`envs`], smoltcp): each of the environments streams to the responder for `duration`; delivered =
//!   bytes the responder read, in Gbit/s (10^9 bit/s).
//! - `connect` ([`envs`], smoltcp): each environment connects, sends a request line, reads the response line, and
//!   the connection closes (the server closes first); repeatedly, or once per environment with `once` (cold start).
//!   `rate` paces connection starts (connections/s). Setup latency is SYN sent → ESTABLISHED seen, microseconds.
//! - `mixed`: environment `i` does connect (i % 20 < 16), UDP datagrams through smoltcp (100 per second each,
//!   `payload` bytes; i % 20 in 16..19) or tcp-bulk (i % 20 == 19, at most 4 environments).
//!
//! # Bounds, stopping and cleanup
//!
//! `duration` defaults to 5 s and is refused above [`MAX_DURATION`] (24 h: soak tests); after it a grace period of
//! at most `connect_timeout + 1 s` lets connections in flight finish, then everything stops. A stop ([`StopHandle`]
//! in the arguments, or SIGINT/SIGTERM through [`control::signals`]) ends the offered load at once: nothing new
//! starts, connections in flight get at most [`STOP_GRACE`], and the report is made from what was measured, over
//! the time the load actually ran. Memory is bounded whatever the duration (the timeline is sized up front, see
//! [`timeline`]). Traffic goes only into namespaces the run created; the lab / kernel topology, the TAP, the
//! responder and the timeline writer are Drop guards, so a panic, an error or a stop removes everything.
//!
//! # Our gateway's settings
//!
//! `gateway` ([`GatewayTable`], `--config FILE`) carries the `[gateway]` table of a `hyperplane run` config into
//! the lab's generated config (see [`settings`]); `port_range`, `max_eni_addresses` and `workers` given as arguments
//! take precedence. Either way the resulting config is checked by the gateway's own parser before anything is built.
//!
//! # Result
//!
//! [`LoadReport`] (serde JSON, `report.json` in `out_dir` when given) holds: `scenario`, `target`, `envs`,
//! `duration_s` (how long the load ran), `requested_duration_s`, `stopped_early`, `payload`, `rate`, `gateway_config`
//! (the `--config` file, if any); `warnings` (figures that are the generator's: offered no more than delivered);
//! `writers` (`--offer-only` only); `offered` / `delivered` (`packets`, `bytes`, `pps`, `bps`); `loss` (`packets`,
//! `ratio`: offered UDP datagrams not received by the responder); `udp`, `tcp_bulk`, `connect` (per scenario, else
//! null; `connect.latency_us` has `count`, `p50`, `p90`, `p99`, `p999`, `max`, `mean`); `errors` (by kind, counts);
//! `responder`; `eni` (the address the server should see); `gateway` (ours only: live sessions, packets, drops by
//! reason during the run); `timeline_bucket_ms` and `timeline` (per bucket, the whole run); `timeline_csv` and
//! `plots` (files written).
//!
//! With `out_dir` the run writes, into that directory: `timeline.csv` while it runs (one line per second, flushed
//! each second; see [`timeline`]), then `report.json` and the SVG plots (`{scenario}-{target}-throughput.svg`: the
//! scenario's figure, frames offered and failures per second over the whole run; `…-latency.svg`: the connection
//! setup distribution).

mod addresses;
mod args;
pub mod comparison;
pub mod envs;
pub mod external;
mod figures;
pub mod offer;
mod plot;
pub mod port;
pub mod raw;
pub mod responder;
pub mod sender;
pub mod settings;
pub mod timeline;
pub mod trafgen;

pub use addresses::Addresses;
pub(crate) use args::{invalid, io_err};
pub use args::{parse_cpus, LoadArgs, LoadError, Scenario, StopHandle, Target};
pub use comparison::{compare, CompareReport, CompareRow};
pub use external::ExternalNat;
pub(crate) use figures::{assemble, Measured};
pub use figures::{
    BulkFigures, ConnectFigures, GatewayFigures, Latency, LoadReport, Loss, Rate, ResponderReport, TrafgenCheck,
    UdpFigures,
};
pub use port::Port;
pub use settings::{parse_duration, GatewayTable};
pub use timeline::{Bucket, Timeline};

use dataplane_io::tap::{Tap, TapOptions};
use dataplane_io::IoError;
use netlab::lab::{self, Lab};
use netlab::meter::{IngressCounter, Verdict};
use netlab::{self, env_addr, KernelNat, LabError, Netns, SERVER};
use serde::Serialize;
use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Longest run accepted (a soak test).
pub const MAX_DURATION: Duration = Duration::from_secs(24 * 3600);
/// After a stop, the longest connections in flight are given to finish.
pub const STOP_GRACE: Duration = Duration::from_secs(1);
/// Most environments accepted (the address plan's limit is larger; this bounds memory to a few hundred MB).
pub const MAX_ENVS: usize = 50_000;
/// Most environments accepted with `tap_per_env` (two TAPs, a bridge and a gateway attachment each).
pub const MAX_TAP_ENVS: usize = 1000;
/// The responder's UDP port.
pub const UDP_PORT: u16 = 9000;
/// The responder's request/response (connect) TCP port.
pub const CONNECT_PORT: u16 = 9001;
/// The responder's bulk-sink TCP port.
pub const BULK_PORT: u16 = 9002;

/// The MAC of emulated environment `i`: `02:4c:47` then `i`'s low 24 bits.
pub fn env_mac(i: usize) -> [u8; 6] {
    [0x02, 0x4c, 0x47, (i >> 16) as u8, (i >> 8) as u8, i as u8]
}

/// The environment index of a MAC made by [`env_mac`].
pub fn env_of_mac(mac: &[u8]) -> Option<usize> {
    (mac.len() >= 6 && mac[..3] == [0x02, 0x4c, 0x47])
        .then(|| (usize::from(mac[3]) << 16) | (usize::from(mac[4]) << 8) | usize::from(mac[5]))
}

/// The environment index of an address made by [`env_addr`].
pub fn env_of_addr(a: Ipv4Addr) -> Option<usize> {
    let o = a.octets();
    (o[0] == 172 && o[1] == 16 && (2..=251).contains(&o[3])).then(|| usize::from(o[2]) * 250 + usize::from(o[3] - 2))
}

/// The world a run talks to: our lab or the kernel topology, with the loadgen TAP wired in.
enum World {
    Ours(Box<Lab>),
    Kernel(KernelNat),
    /// The user's NAT: the inside and outside namespaces (never deleted), the outside link.
    External {
        inside: Netns,
        outside: Netns,
        outside_link: String,
    },
}

impl World {
    fn server(&self) -> &Netns {
        match self {
            World::Ours(l) => &l.server,
            World::Kernel(k) => k.server_ns(),
            World::External { outside, .. } => outside,
        }
    }

    /// The namespace holding the loadgen TAP's kernel side.
    fn tap_ns(&self) -> Option<&Netns> {
        match self {
            World::Ours(l) => l.bridge.as_ref(),
            World::Kernel(k) => Some(k.gw_ns()),
            World::External { .. } => None,
        }
    }

    /// Queue overflows on the TAPs' kernel sides (frames dropped because a reader was behind): the loadgen TAP's,
    /// and the gateway attachment's (ours).
    fn overflows(&self, taps: &[String]) -> Vec<(&'static str, u64)> {
        let mut v = Vec::new();
        if let Some(ns) = self.tap_ns() {
            let dropped = tx_dropped(ns);
            let sum = |names: &[String]| names.iter().map(|l| dropped.get(l.as_str()).copied().unwrap_or(0)).sum();
            v.push(("loadgen_tap_overflow", sum(taps)));
            if let World::Ours(l) = self {
                v.push(("gateway_attachment_overflow", sum(&l.taps)));
            }
        }
        v
    }
}

/// `stats64.tx.dropped` of every link in `ns` by name (one `ip -s -j link show`); empty if unreadable.
fn tx_dropped(ns: &Netns) -> BTreeMap<String, u64> {
    let Ok(out) = ns.ip(&["-s", "-j", "link", "show"]) else { return BTreeMap::new() };
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    let links = v.as_array().map(Vec::as_slice).unwrap_or_default();
    links
        .iter()
        .filter_map(|l| Some((l["ifname"].as_str()?.to_string(), l["stats64"]["tx"]["dropped"].as_u64().unwrap_or(0))))
        .collect()
}

/// Kernel-side queue length of the loadgen TAP (frames towards the load generator), so bursts of thousands of
/// environments' replies are not dropped before the loop reads them.
pub const TAP_QUEUE_LEN: u32 = 65_536;

/// Runs one scenario against one target. Needs root. Stops early (with a report of what was measured) when
/// `args.stop` is set or SIGINT/SIGTERM arrives.
pub fn run(args: &LoadArgs) -> Result<LoadReport, LoadError> {
    args.validate()?;
    if !netlab::is_root() {
        return Err(LoadError::NotRoot);
    }
    let n = args.env_count();
    if let Some(dir) = &args.out_dir {
        std::fs::create_dir_all(dir).map_err(|e| io_err(format!("create {}", dir.display()), e))?;
    }
    netlab::sweep_stale("lg");
    let external = args.target == Target::External;
    // The raw UDP writers get a queue each (`--cpus`).
    let queues = if args.scenario == Scenario::Udp { args.cpus.len().max(1) } else { 1 };
    // Raw UDP reaches a built-in target through a veth, as it reaches any other NAT (and as trafgen sends); the
    // emulated environments' TCP/IP stacks through a TAP. Declared before the world: it drops after it.
    let feed = match (args.scenario, external || args.tap_per_env) {
        (Scenario::Udp, false) => Some(VethFeed::create(queues, args.spread_receive)?),
        _ => None,
    };
    let ntaps = match (external || feed.is_some(), args.tap_per_env) {
        (true, _) => 0,
        (false, true) => n,
        (false, false) => 1,
    };
    let tap_names: Vec<String> = (0..ntaps).map(|_| netlab::unique("lg")).collect();
    let taps = TapSet::open(&tap_names, queues)?;
    // The link the world takes in (moves into its namespace): the loadgen TAP, or the veth's far end.
    let inside_links: Vec<String> = feed.as_ref().map_or_else(|| tap_names.clone(), |f| vec![f.peer.clone()]);
    let tap_name = inside_links.first().map_or("", String::as_str);
    let addrs = args.external.as_ref().map_or(Addresses::lab(), |x| x.addrs);
    // Field order of this function's locals: the world (namespaces) drops after the responder and the TAPs.
    let world = match args.target {
        Target::External => {
            let x = args.external.as_ref().ok_or_else(|| invalid("target", "external without --inside".into()))?;
            let (inside, outside) = x.open()?;
            World::External { inside, outside, outside_link: x.outside.clone() }
        }
        Target::Ours => {
            let gw = gateway_plan(args)?;
            let opts = lab::Options {
                // The veth's far end is the gateway's own attachment (direct attach, `af-packet`), as it is the
                // kernel NAT's inside link; the loadgen TAP goes through a bridge to an attachment TAP.
                direct: feed.as_ref().map(|f| vec![f.peer.clone()]),
                shared_attachment: (!args.tap_per_env).then_some(n),
                bridged_attachments: args.tap_per_env.then_some(n),
                workers: gw.workers,
                offloads: gw.offloads,
                gateway_extra: gw.extra,
                ..lab::Options::default()
            };
            let lab = Lab::build(&opts)?;
            if args.tap_per_env {
                lab.attach_to_bridges(&inside_links, TAP_QUEUE_LEN)?;
            } else if feed.is_none() {
                lab.attach_to_bridge(tap_name)?;
            }
            World::Ours(Box::new(lab))
        }
        Target::Kernel if args.tap_per_env => {
            let k = KernelNat::build_with_taps("lgk", &inside_links, TAP_QUEUE_LEN)?;
            if n > 512 {
                // Permanent entries do not count against gc_thresh3 (see below).
                let lines: Vec<String> = inside_links.iter().enumerate().map(|(i, t)| neigh_line(i, t)).collect();
                k.gw_ns().ip_batch(&lines)?;
            }
            World::Kernel(k)
        }
        Target::Kernel => {
            let k = KernelNat::build_with_tap("lgk", tap_name)?;
            if n > 512 {
                // The kernel's neighbour table holds gc_thresh3 (1024) learned entries; permanent ones do not
                // count against it, so thousands of environments stay reachable.
                let lines: Vec<String> = (0..n).map(|i| neigh_line(i, tap_name)).collect();
                k.gw_ns().ip_batch(&lines)?;
            }
            World::Kernel(k)
        }
    };
    // The namespace of the link the world took in: the veth's far end stays in this one for our direct attach.
    let link_ns = match (&world, &feed) {
        (World::Ours(_), Some(f)) => Some(&f.here),
        _ => world.tap_ns(),
    };
    if let (Some(ns), false) = (link_ns, args.tap_per_env) {
        ns.ip_batch(&[format!("link set {tap_name} txqueuelen {TAP_QUEUE_LEN}")])?;
    }
    // With --spread-receive, the link's receive path (the kernel's NAT, or our attachment) on the other CPUs.
    let spread = match (link_ns, args.scenario, args.spread_receive) {
        (Some(ns), Scenario::Udp, true) => spread_receive(ns, tap_name, queues, &args.cpus)?,
        _ => false,
    };
    let backlog_before = spread.then(backlog_drops);
    let eni = match &world {
        World::Ours(l) => Some(l.eni),
        World::Kernel(k) => Some(k.eni_addr()),
        World::External { .. } => None,
    };
    let before = match &world {
        World::Ours(l) => Some(l.gateway().totals()),
        _ => None,
    };
    let ports: Vec<Port> = match &world {
        World::External { inside, .. } => {
            let link = &args.external.as_ref().map_or("", |x| x.inside.as_str());
            vec![Port::packet(inside, link).map_err(|e| invalid("inside", format!("{link}: {e}")))?]
        }
        _ => match &feed {
            Some(f) => vec![Port::packet(&f.ns, &f.link)?],
            None => taps.taps.into_iter().map(Port::Tap).collect(),
        },
    };

    // Raw UDP needs the gateway's MAC before the clock starts.
    let gw_mac = if args.scenario == Scenario::Udp {
        Some(raw::resolve_gateway(&ports[0], &addrs, Duration::from_secs(3))?)
    } else {
        None
    };
    if args.stop.is_stopped() {
        return Err(LoadError::Stopped);
    }
    // The kernel's own count of what reached the VPC side. Unpaced raw UDP (a capacity measurement) is counted and
    // discarded there, so no CPU goes to carrying it on to the responder (on a small machine that work would be
    // charged to whichever CPU runs the NAT or the writer); paced, echoed or mixed, it goes on to the responder.
    let verdict = match (args.scenario, args.echo, args.rate) {
        (Scenario::Udp, false, None) => Verdict::Drop,
        _ => Verdict::Accept,
    };
    let counter = match (&world, args.scenario) {
        (_, Scenario::TcpBulk | Scenario::Connect) => None,
        (World::Ours(l), _) => Some(IngressCounter::install(&l.vpc, &l.outside, SERVER, verdict)?),
        (World::Kernel(k), _) => Some(IngressCounter::install(k.vpc_ns(), "gw", SERVER, verdict)?),
        (World::External { outside, outside_link, .. }, _) => {
            Some(IngressCounter::install(outside, outside_link, addrs.server, verdict)?)
        }
    };
    let grace = args.connect_timeout + Duration::from_secs(1);
    // Room for the grace period, the drain below and the raw reader's limit.
    let tl = Arc::new(Timeline::new(args.duration, grace + Duration::from_secs(6)));
    let responder = responder::Responder::start(
        world.server(),
        responder::Config {
            addr: addrs.server,
            tune_backlog: !external,
            echo: args.echo,
            udp_port: UDP_PORT,
            connect_port: CONNECT_PORT,
            bulk_port: BULK_PORT,
        },
        Arc::clone(&tl),
    )?;
    let csv_path = args.out_dir.as_ref().map(|d| d.join("timeline.csv"));
    let csv = match &csv_path {
        Some(p) => {
            let counters = match &world {
                World::Ours(l) => Some(l.gateway().counters().to_vec()),
                _ => None,
            };
            Some(timeline::CsvWriter::start(p, Arc::clone(&tl), counters)?)
        }
        None => None,
    };
    let bar = progress_bar(args);
    let measured = match gw_mac {
        Some(mac) => raw::run(&ports, &addrs, mac, n, args, &tl, bar.as_ref())?,
        None => envs::run(&ports, &addrs, n, args, grace, &tl, bar.as_ref())?,
    };
    if let Some(b) = &bar {
        b.finish_and_clear();
    }
    // Let the last datagrams land, then stop the responder.
    std::thread::sleep(Duration::from_millis(200));
    let seen = responder.stop();
    let span = tl.started().map_or(Duration::ZERO, |t0| t0.elapsed());
    if let Some(c) = csv {
        c.finish()?;
    }
    let gateway = match (&world, before) {
        (World::Ours(l), Some(b)) => Some(gateway_delta(&b, &l.gateway().totals())),
        _ => None,
    };
    let mut measured = measured;
    for (k, v) in world.overflows(&tap_names).into_iter().chain(feed.as_ref().map(VethFeed::overflow)) {
        if v > 0 {
            measured.errors.insert(k.into(), v);
        }
    }
    if let Some(b) = backlog_before {
        // Frames the receiving CPUs could not take (machine-wide: other traffic's drops count too).
        let d = backlog_drops().saturating_sub(b);
        if d > 0 {
            measured.errors.insert("receive_backlog_overflow".into(), d);
        }
    }
    let hist = measured.latency.clone();
    let load_secs = measured.load.as_secs_f64().max(1e-3);
    let mut report = assemble(args, n, eni, measured, seen, gateway, &tl, span);
    if let Some(c) = &counter {
        let (packets, bytes) = c.read()?;
        report.vpc_counted =
            Some(Rate { packets, bytes, pps: packets as f64 / load_secs, bps: bytes as f64 * 8.0 / load_secs });
        if verdict == Verdict::Drop {
            report.delivered_at_vpc();
        }
    }
    report.warnings = comparison::saturation_warnings(&report);
    if let (true, Some(c), Some(mac)) = (args.trafgen, &counter, gw_mac) {
        // The same link, frame layout and counter; environment 0's flow.
        let (ns, link, counted) = match (&feed, &world, &args.external) {
            (Some(f), _, _) => (&f.ns, f.link.as_str(), f.counted()),
            (None, World::External { inside, .. }, Some(x)) => (inside, x.inside.as_str(), x.inside.as_str()),
            _ => return Err(invalid("trafgen", "needs the udp scenario's packet-socket link".into())),
        };
        let spec = sender::FrameSpec {
            src_mac: env_mac(0),
            dst_mac: mac,
            src: addrs.env(0),
            dst: addrs.server,
            sport: raw::RAW_SPORT,
            dport: UDP_PORT,
            payload: args.payload,
        };
        let cpu = args.cpus.first().copied().unwrap_or(0);
        let rates = trafgen::one_flow(ns, link, counted, &spec, cpu, args.duration.as_secs_f64(), c)
            .ok_or_else(|| invalid("trafgen", "trafgen (netsniff-ng) is not installed or did not start".into()))?;
        let apart = (rates.delivered_pps > 0.0)
            .then(|| (report.delivered.pps - rates.delivered_pps).abs() / rates.delivered_pps);
        report.trafgen = Some(TrafgenCheck { rates, apart });
    }
    drop(counter);
    report.timeline_csv = csv_path.map(|p| p.display().to_string());
    if let Some(dir) = &args.out_dir {
        let stem = format!("{}-{}", report.scenario, report.target);
        report.plots = plot::write_all(dir, &stem, &report, hist.as_ref());
        let json = serde_json::to_string_pretty(&report).unwrap_or_default();
        let path = dir.join("report.json");
        std::fs::write(&path, json).map_err(|e| io_err(format!("write {}", path.display()), e))?;
    }
    drop(ports);
    drop(world);
    Ok(report)
}

/// The raw UDP scenario's link into a built-in target: a veth pair, `link` in a namespace of the load generator's
/// own (its packet socket sends and reads there), `peer` created in this namespace with as many queues as there
/// are writers: our gateway's direct (`af-packet`) attachment, or moved in as the kernel NAT's inside link.
/// Dropping it deletes the namespace, and with it the pair.
///
/// Decoupled (`--spread-receive`): the generator's `link` is one end of a veth pair of its own (the other end,
/// `stub`, carries nothing), and a tc redirect hands every frame sent on it to a second pair, `hop` ↔ `peer`, and
/// every frame `hop` receives back to `link` as received there. With the target's receive path on other CPUs, a
/// frame their backlog refuses is dropped at `hop` (its transmit drops) after the sender's system call has
/// returned: senders (the load generator's writers, trafgen) keep offering instead of failing, and what left is
/// `hop`'s transmitted and dropped frames ([`VethFeed::counted`]).
struct VethFeed {
    ns: Netns,
    link: String,
    peer: String,
    /// The namespace the load generator runs in, where `peer` is made (never deleted).
    here: Netns,
    /// Decoupled: the end of the second pair, in `ns` (see above).
    hop: Option<String>,
}

impl VethFeed {
    /// The generator's end of the pair, in its namespace.
    const LINK: &'static str = "feed";
    /// Decoupled: the far end of the generator's own pair, and the second pair's end in the generator's namespace.
    const STUB: &'static str = "stub";
    const HOP: &'static str = "hop";

    fn create(queues: usize, decoupled: bool) -> Result<VethFeed, LoadError> {
        let ns = Netns::new(netlab::unique("lgv"))?;
        let peer = netlab::unique("lg");
        let q = format!("numtxqueues {queues} numrxqueues {queues}");
        let (link, hop, stub, n) = (Self::LINK, Self::HOP, Self::STUB, ns.name());
        // The pairs, and the ends in the generator's namespace to bring up.
        let (pairs, ends) = if decoupled {
            let own = format!("link add {link} netns {n} {q} type veth peer name {stub} netns {n}");
            (vec![own, format!("link add {hop} netns {n} {q} type veth peer name {peer} {q}")], vec![link, stub, hop])
        } else {
            (vec![format!("link add {link} netns {n} {q} type veth peer name {peer} {q}")], vec![link])
        };
        netlab::ip_batch(None, &[pairs, vec![format!("link set {peer} up")]].concat())?;
        let up = std::iter::once("lo").chain(ends).map(|e| format!("link set {e} up")).collect::<Vec<_>>();
        ns.ip_batch(&up)?;
        let feed = VethFeed {
            ns,
            link: link.to_string(),
            peer,
            here: Netns::current(),
            hop: decoupled.then(|| hop.to_string()),
        };
        if !decoupled {
            return Ok(feed);
        }
        // Every frame, whatever its protocol (`u32 match u32 0 0`: the first word masked to nothing).
        let all = ["protocol", "all", "u32", "match", "u32", "0", "0", "action", "mirred"];
        let tc = |args: &[&str]| feed.ns.exec(&[&["tc"][..], args].concat()).map(drop);
        tc(&["qdisc", "add", "dev", link, "clsact"])?;
        tc(&[&["filter", "add", "dev", link, "egress"][..], &all, &["egress", "redirect", "dev", hop]].concat())?;
        tc(&["qdisc", "add", "dev", hop, "clsact"])?;
        tc(&[&["filter", "add", "dev", hop, "ingress"][..], &all, &["ingress", "redirect", "dev", link]].concat())?;
        Ok(feed)
    }

    /// The link whose transmit counters (sent and dropped) show the frames that left the generator: `hop` when
    /// decoupled, else `link`.
    fn counted(&self) -> &str {
        self.hop.as_deref().unwrap_or(&self.link)
    }

    /// Frames the generator's side could not hand to the far end (transmit drops: the receiving CPU's backlog was
    /// full).
    fn overflow(&self) -> (&'static str, u64) {
        ("loadgen_veth_overflow", netlab::meter::link_stats(&self.ns, self.counted()).map_or(0, |s| s[3]))
    }
}

impl Drop for VethFeed {
    /// Deletes the pairs at once (a deleted namespace's links go later, when the kernel gets to it).
    fn drop(&mut self) {
        let mut lines = vec![format!("link del {}", self.link)];
        lines.extend(self.hop.iter().map(|h| format!("link del {h}")));
        let _ = self.ns.ip_batch(&lines);
    }
}

/// The loadgen's TAPs (closing a TAP's last descriptor deletes the device, so dropping this removes them).
use std::os::fd::AsFd;

struct TapSet {
    taps: Vec<Tap>,
    /// The multi-queue TAP's steering program (see [`TapSet::open`]).
    _steering: Option<std::os::fd::OwnedFd>,
}

impl TapSet {
    /// One TAP per name; with `queues > 1` (one name) a multi-queue TAP with that many queues, in order.
    fn open(names: &[String], queues: usize) -> Result<TapSet, LoadError> {
        if let ([name], true) = (names, queues > 1) {
            let first = Tap::open(name, TapOptions { multi_queue: true, ..TapOptions::default() })?;
            let mut taps = Vec::with_capacity(queues);
            for _ in 1..queues {
                taps.push(first.open_queue()?);
            }
            // Frames towards the TAP all go to the first queue, which the
            // reader reads; and with a steering program set the kernel no
            // longer hashes every frame the writers write into its flow table.
            let steering = dataplane_io::steer_ebpf::load(&dataplane_io::steer_ebpf::constant(0))
                .and_then(|fd| first.set_steering_program(Some(fd.as_fd())).map(|()| fd))
                .inspect_err(|e| {
                    tracing::warn!("loadgen TAP {name}: no steering program ({e}); the kernel hashes each write")
                })
                .ok();
            taps.insert(0, first);
            return Ok(TapSet { taps, _steering: steering });
        }
        let taps = names.iter().map(|t| Tap::open(t, TapOptions::default())).collect::<Result<Vec<_>, _>>()?;
        Ok(TapSet { taps, _steering: None })
    }
}

/// What our gateway in the lab runs with: the lab's workers and offloads, and the extra `[gateway]` lines.
#[derive(Debug)]
struct GatewayPlan {
    workers: usize,
    offloads: bool,
    extra: String,
}

/// Our gateway's settings from `args` (the `--config` file's `[gateway]` table, then the arguments over it; see
/// [`settings`]), checked by the gateway's own parser in the lab's generated config.
fn gateway_plan(args: &LoadArgs) -> Result<GatewayPlan, LoadError> {
    let mut t = args.gateway.as_ref().map(GatewayTable::table).unwrap_or_default();
    let mut from_args = Vec::new();
    if let Some(n) = args.max_eni_addresses {
        t.insert("max_eni_addresses".into(), toml::Value::Integer(i64::from(n)));
        from_args.push("gateway.max_eni_addresses");
    }
    if let Some(p) = &args.port_range {
        t.insert("port_range".into(), toml::Value::String(p.clone()));
        from_args.push("gateway.port_range");
    }
    if args.workers != 0 || !t.contains_key("workers") {
        t.insert("workers".into(), toml::Value::Integer(args.workers as i64));
        from_args.push("gateway.workers");
    }
    // The lab's config (one environment is enough to check the settings), with its [gateway] table replaced.
    let probe = lab::Options { shared_attachment: Some(1), ..lab::Options::default() };
    let mut doc: toml::Table =
        lab::config_text(&probe, "lgcheck0", &["lgcheck1".to_string()]).parse().map_err(|e: toml::de::Error| {
            invalid("config", format!("the lab's own config does not parse: {}", e.message()))
        })?;
    let mut gw = match doc.remove("gateway") {
        Some(toml::Value::Table(g)) => g,
        _ => toml::Table::new(),
    };
    gw.extend(t.clone());
    doc.insert("gateway".into(), toml::Value::Table(gw));
    let text = toml::to_string(&doc).map_err(|e| invalid("config", format!("cannot write the lab's config: {e}")))?;
    let cfg = control::config::parse(&text).map_err(|e| {
        match (from_args.iter().find(|&&f| f == e.field), &args.gateway) {
            (Some(f), _) => invalid(f.trim_start_matches("gateway."), e.reason),
            (None, Some(g)) => g.error(&e.field, e.reason),
            (None, None) => invalid("config", e.to_string()),
        }
    })?;
    t.remove("workers");
    t.remove("offloads");
    Ok(GatewayPlan { workers: cfg.gateway.workers, offloads: cfg.gateway.offloads, extra: settings::gateway_lines(&t) })
}

/// With raw writers pinned to `cpus` and CPUs left over, steers the receive path of every queue of `tap` (in `ns`)
/// to the CPUs not writing (receive packet steering, `rps_cpus`): without it a frame written to a TAP goes through
/// the kernel's receive path (the kernel's NAT itself, or the bridge towards ours) inside the writer's own system
/// call, so the writer's rate is the NAT's and the offer can never exceed what the target carries. Whether it did.
fn spread_receive(ns: &Netns, tap: &str, queues: usize, cpus: &[usize]) -> Result<bool, LoadError> {
    let ncpu = std::thread::available_parallelism().map_or(1, |n| n.get()).min(64);
    let mask = (0..ncpu).filter(|c| !cpus.contains(c)).fold(0u64, |m, c| m | 1 << c);
    if cpus.is_empty() || mask == 0 {
        return Ok(false);
    }
    let script: String =
        (0..queues).map(|q| format!("echo {mask:x} > /sys/class/net/{tap}/queues/rx-{q}/rps_cpus;")).collect();
    ns.exec(&["sh", "-c", &script])?;
    Ok(true)
}

/// Frames dropped for want of room in the CPUs' receive backlogs, all CPUs together ([`softnet`] column 1); 0 if
/// unreadable.
fn backlog_drops() -> u64 {
    softnet(1).values().sum()
}

/// One column of `/proc/net/softnet_stat` (hexadecimal; 0: frames taken from the CPU's receive backlogs, 1: frames
/// dropped for want of room in them) by CPU: the CPU from the line's 13th column where the kernel prints it, else
/// the line's position. Empty if unreadable.
pub fn softnet(column: usize) -> BTreeMap<usize, u64> {
    let text = std::fs::read_to_string("/proc/net/softnet_stat").unwrap_or_default();
    let hex = |v: &str| u64::from_str_radix(v, 16).ok();
    text.lines()
        .enumerate()
        .filter_map(|(i, l)| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let cpu = f.get(12).and_then(|v| hex(v)).map_or(i, |c| c as usize);
            Some((cpu, hex(f.get(column)?)?))
        })
        .collect()
}

/// A permanent neighbour entry for environment `i` on `dev` (an `ip -batch` line).
fn neigh_line(i: usize, dev: &str) -> String {
    format!("neigh replace {} lladdr {} dev {dev} nud permanent", env_addr(i), control::config::format_mac(&env_mac(i)))
}

fn progress_bar(args: &LoadArgs) -> Option<indicatif::ProgressBar> {
    if args.json || !args.progress || !std::io::stderr().is_terminal() {
        return None;
    }
    let b = indicatif::ProgressBar::new(args.duration.as_millis() as u64);
    let style = indicatif::ProgressStyle::with_template("{spinner} {elapsed:>4} [{bar:30}] {msg}")
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar());
    b.set_style(style);
    Some(b)
}

fn gateway_delta(b: &control::gateway::Totals, a: &control::gateway::Totals) -> GatewayFigures {
    let drops =
        a.drops.iter().map(|&(r, n)| (r.label().to_string(), n - b.dropped(r))).filter(|(_, n)| *n > 0).collect();
    GatewayFigures {
        live_sessions: a.live,
        outbound_packets: a.outbound.0 - b.outbound.0,
        inbound_packets: a.inbound.0 - b.inbound.0,
        drops,
        sessions_recycled: a.recycled - b.recycled,
        arp_requests: a.arp.0 - b.arp.0,
        arp_replies: a.arp.1 - b.arp.1,
    }
}

/// The server the environments talk to.
pub const fn server() -> Ipv4Addr {
    SERVER
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_lists_parse_and_bad_ones_name_the_field() {
        assert_eq!(parse_cpus("0,1").ok(), Some(vec![0, 1]));
        assert_eq!(parse_cpus("0-2,5").ok(), Some(vec![0, 1, 2, 5]));
        for bad in ["", "a", "2-1", "0,,1", "1-"] {
            match parse_cpus(bad) {
                Err(LoadError::Invalid { param: "cpus", .. }) => {}
                other => panic!("{bad:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn cpus_must_exist_and_spread_receive_is_for_udp() {
        let udp = LoadArgs { cpus: vec![0], target: Target::Kernel, ..LoadArgs::default() };
        assert!(udp.validate().is_ok());
        let connect = LoadArgs { scenario: Scenario::Connect, ..udp.clone() };
        assert!(connect.validate().is_ok(), "environment threads");
        let spread = LoadArgs { spread_receive: true, ..connect };
        assert!(matches!(spread.validate(), Err(LoadError::Invalid { param: "spread_receive", .. })));
        let missing = LoadArgs { cpus: vec![100_000], ..udp.clone() };
        assert!(matches!(missing.validate(), Err(LoadError::Invalid { param: "cpus", .. })));
        // Writers on every CPU leave none for the receive path to be spread to.
        let ncpu = std::thread::available_parallelism().map_or(1, |n| n.get());
        let every = LoadArgs { cpus: (0..ncpu).collect(), spread_receive: true, ..udp };
        match every.validate() {
            Err(LoadError::Invalid { param: "spread_receive", reason }) => {
                assert!(reason.contains("every CPU"), "{reason}")
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_trafgen_check_is_for_unpaced_udp() {
        let udp = LoadArgs { trafgen: true, ..LoadArgs::default() };
        assert!(udp.validate().is_ok());
        // With the receive path on the other CPUs too: trafgen sends through the decoupled feed.
        if std::thread::available_parallelism().map_or(1, |n| n.get()) > 1 {
            assert!(LoadArgs { cpus: vec![0], spread_receive: true, ..udp.clone() }.validate().is_ok());
        }
        for bad in [
            LoadArgs { scenario: Scenario::Connect, ..udp.clone() },
            LoadArgs { scenario: Scenario::Mixed, ..udp.clone() },
            LoadArgs { rate: Some(1000.0), ..udp.clone() },
        ] {
            assert!(matches!(bad.validate(), Err(LoadError::Invalid { param: "trafgen", .. })), "{bad:?}");
        }
    }

    #[test]
    fn delivered_at_the_vpc_edge_takes_the_counter_and_the_loss_from_it() {
        let mut r = LoadReport {
            scenario: "udp".into(),
            duration_s: 2.0,
            payload: 64,
            udp: Some(UdpFigures { sent: 1000, echoed: 0, lost_by_echo: None }),
            vpc_counted: Some(Rate { packets: 600, bytes: 600 * 92, pps: 300.0, bps: 300.0 * 92.0 * 8.0 }),
            ..LoadReport::default()
        };
        r.delivered_at_vpc();
        assert!(r.delivered_at_vpc_edge);
        assert_eq!((r.delivered.packets, r.delivered.bytes, r.delivered.pps), (600, 600 * 64, 300.0));
        assert_eq!(r.loss.packets, 400);
        assert!((r.loss.ratio - 0.4).abs() < 1e-12);
        assert!(r.table().contains("counted and discarded at the VPC edge"), "{}", r.table());
        // The comparison's delivered datagrams are the counter's.
        let c = comparison::CompareReport::new(r.clone(), Some(r));
        let row = c.rows.iter().find(|x| x.figure == "delivered datagrams/s").expect("row");
        assert_eq!((row.ours, row.kernel), (300.0, 300.0));
    }
}
