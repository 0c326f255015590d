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
//! With `udp --cpus`, the loadgen TAP is multi-queue, one queue per writer. [`offer`] (`--offer-only`) runs the
//! writers into a TAP alone, its kernel side discarding.
//!
//! # Scenarios and units
//!
//! - `udp` ([`raw`]): prebuilt Ethernet+IPv4+UDP frames, `payload` bytes of UDP data (64..=1472), round-robin over
//!   the environments, open loop at `rate` packets/s or as fast as one writer thread can go. Delivered = datagrams
//!   the responder received.
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

pub use addresses::Addresses;
pub use comparison::{compare, CompareReport, CompareRow};
pub use external::ExternalNat;
pub(crate) use figures::{assemble, Measured};
pub use figures::{
    BulkFigures, ConnectFigures, GatewayFigures, Latency, LoadReport, Loss, Rate, ResponderReport, UdpFigures,
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

/// What to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Scenario {
    /// Raw UDP frames, packets/s.
    Udp,
    /// TCP streams, Gbit/s.
    TcpBulk,
    /// Connect, request, response, close; connections/s and setup latency.
    Connect,
    /// A share of each.
    Mixed,
}

impl Scenario {
    /// Parses `udp`, `tcp-bulk`, `connect`, `mixed`.
    pub fn parse(s: &str) -> Result<Scenario, LoadError> {
        Ok(match s {
            "udp" => Scenario::Udp,
            "tcp-bulk" | "bulk" => Scenario::TcpBulk,
            "connect" => Scenario::Connect,
            "mixed" => Scenario::Mixed,
            _ => return Err(invalid("scenario", format!("{s:?} is not udp, tcp-bulk, connect or mixed"))),
        })
    }

    /// The name `parse` accepts.
    pub fn name(self) -> &'static str {
        match self {
            Scenario::Udp => "udp",
            Scenario::TcpBulk => "tcp-bulk",
            Scenario::Connect => "connect",
            Scenario::Mixed => "mixed",
        }
    }
}

/// Which NAT the load goes through.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Target {
    /// Our gateway (in-process, shared attachment).
    Ours,
    /// The kernel's nftables masquerade.
    Kernel,
    /// A NAT someone else runs between two links ([`LoadArgs::external`], [`external`]).
    External,
}

impl Target {
    /// `ours`, `kernel` or `external`.
    pub fn name(self) -> &'static str {
        match self {
            Target::Ours => "ours",
            Target::Kernel => "kernel",
            Target::External => "external",
        }
    }
}

/// Stops a run early (see the module doc); clones share the flag. SIGINT and SIGTERM, once [`control::signals`] is
/// installed (the `hyperplane` binary does), count as a stop too.
#[derive(Clone, Debug, Default)]
pub struct StopHandle(Arc<AtomicBool>);

impl StopHandle {
    /// A handle not stopped yet.
    pub fn new() -> StopHandle {
        StopHandle::default()
    }

    /// Asks the run to stop: the offered load ends at once and the report covers what was measured.
    pub fn stop(&self) {
        self.0.store(true, Ordering::Relaxed);
    }

    /// Whether a stop was asked for (by [`StopHandle::stop`] or a signal).
    pub fn is_stopped(&self) -> bool {
        self.0.load(Ordering::Relaxed) || control::signals::stopped()
    }
}

/// The load generator's arguments. See the module doc for units.
#[derive(Clone, Debug)]
pub struct LoadArgs {
    /// The scenario.
    pub scenario: Scenario,
    /// Environments; `None`: 1000 (udp, connect, mixed) or 16 (tcp-bulk).
    pub envs: Option<usize>,
    /// Length of the offered load (default 5 s, at most [`MAX_DURATION`]).
    pub duration: Duration,
    /// Open-loop rate: packets/s (udp) or connection starts/s (connect, mixed); `None`: as fast as possible.
    pub rate: Option<f64>,
    /// UDP payload bytes, 64..=1472 (udp, mixed).
    pub payload: usize,
    /// Environments appear evenly over this time, each starting at once.
    pub ramp: Duration,
    /// Our gateway or the kernel.
    pub target: Target,
    /// JSON wanted (suppresses the progress bar).
    pub json: bool,
    /// Where to write `report.json` and the SVG plots (`None`: nothing written).
    pub out_dir: Option<PathBuf>,
    /// Our gateway's `port_range` (e.g. `"2000-2049"`); `None`: the default.
    pub port_range: Option<String>,
    /// Our gateway's `max_eni_addresses` (1: the ENI never grows, so a
    /// small port range runs out); `None`: the default.
    pub max_eni_addresses: Option<u32>,
    /// Our gateway's worker threads (0: one per core).
    pub workers: usize,
    /// connect: each environment connects once (cold start) instead of repeatedly.
    pub once: bool,
    /// udp / mixed: the responder echoes every datagram and the environments count the echoes.
    pub echo: bool,
    /// A connection not established within this time is aborted (timeout); also bounds the other phases.
    pub connect_timeout: Duration,
    /// Show a progress bar (only if stderr is a terminal and `json` is off).
    pub progress: bool,
    /// One loadgen TAP per environment (and, against ours, one gateway attachment per environment) instead of one
    /// shared TAP; at most [`MAX_TAP_ENVS`] environments; tcp-bulk, connect and mixed only.
    pub tap_per_env: bool,
    /// Our gateway's `[gateway]` settings from a config file (`--config`; target ours only).
    pub gateway: Option<GatewayTable>,
    /// Stops the run early (also SIGINT/SIGTERM).
    pub stop: StopHandle,
    /// udp: one writer thread per CPU listed, pinned to it ([`sender`]); empty: one unpinned writer.
    pub cpus: Vec<usize>,
    /// The NAT under test when `target` is [`Target::External`] (`--inside`, `--outside`, ...; see [`external`]).
    pub external: Option<ExternalNat>,
    /// udp: how the writers hand a batch to a TAP queue (`--tap-writes`).
    pub tap_writes: sender::TapWrites,
    /// udp with `cpus`: the loadgen TAP's receive path on the CPUs not writing (`--spread-receive`; receive packet
    /// steering, `rps_cpus`); off, it runs inside the writers' own system calls, as a sender's does through a veth.
    /// Frames the receiving CPUs' backlogs cannot take are counted as `receive_backlog_overflow` (machine-wide).
    pub spread_receive: bool,
}

impl Default for LoadArgs {
    fn default() -> LoadArgs {
        LoadArgs {
            scenario: Scenario::Udp,
            envs: None,
            duration: Duration::from_secs(5),
            rate: None,
            payload: 64,
            ramp: Duration::ZERO,
            target: Target::Ours,
            json: false,
            out_dir: None,
            port_range: None,
            max_eni_addresses: None,
            workers: 0,
            once: false,
            echo: false,
            connect_timeout: Duration::from_secs(3),
            progress: true,
            tap_per_env: false,
            gateway: None,
            stop: StopHandle::new(),
            cpus: Vec::new(),
            external: None,
            tap_writes: sender::TapWrites::default(),
            spread_receive: false,
        }
    }
}

impl LoadArgs {
    /// The number of environments this run uses.
    pub fn env_count(&self) -> usize {
        self.envs.unwrap_or(if self.scenario == Scenario::TcpBulk { 16 } else { 1000 })
    }

    /// Checks every argument; the error names the parameter.
    pub fn validate(&self) -> Result<(), LoadError> {
        let n = self.env_count();
        if n == 0 || n > MAX_ENVS {
            return Err(invalid("envs", format!("{n} is not in 1..={MAX_ENVS}")));
        }
        if self.tap_per_env && n > MAX_TAP_ENVS {
            return Err(invalid("envs", format!("{n} is above {MAX_TAP_ENVS}, the most with tap_per_env")));
        }
        if self.tap_per_env && self.scenario == Scenario::Udp {
            return Err(invalid("tap_per_env", "the raw udp scenario uses one TAP; use mixed for UDP".into()));
        }
        if self.duration.is_zero() {
            return Err(invalid("duration", "must be longer than 0".into()));
        }
        if self.duration > MAX_DURATION {
            return Err(invalid(
                "duration",
                format!(
                    "{} is longer than the longest run, {}",
                    settings::human_duration(self.duration),
                    settings::human_duration(MAX_DURATION)
                ),
            ));
        }
        if self.spread_receive && (self.cpus.is_empty() || self.target == Target::External) {
            return Err(invalid("spread_receive", "needs pinned writers (--cpus) into the loadgen's TAP".into()));
        }
        if !self.cpus.is_empty() && self.scenario != Scenario::Udp {
            return Err(invalid("cpus", "writer threads per CPU are for the udp scenario".into()));
        }
        let ncpu = std::thread::available_parallelism().map_or(1, |n| n.get());
        if let Some(c) = self.cpus.iter().find(|&&c| c >= ncpu) {
            return Err(invalid("cpus", format!("CPU {c} is not one of this machine's {ncpu} (0..{ncpu})")));
        }
        if self.cpus.len() > 64 {
            return Err(invalid("cpus", format!("{} threads; at most 64", self.cpus.len())));
        }
        if self.ramp > self.duration {
            return Err(invalid("ramp", format!("{:?} is longer than the duration", self.ramp)));
        }
        if let Some(r) = self.rate {
            if !(r.is_finite() && r > 0.0 && r <= 1e9) {
                return Err(invalid("rate", format!("{r} is not in (0, 1e9]")));
            }
        }
        if !(64..=1472).contains(&self.payload) {
            return Err(invalid("payload", format!("{} bytes is not in 64..=1472", self.payload)));
        }
        if self.connect_timeout < Duration::from_millis(100) || self.connect_timeout > Duration::from_secs(30) {
            return Err(invalid("connect_timeout", format!("{:?} is not in 100 ms..=30 s", self.connect_timeout)));
        }
        if let Some(p) = &self.port_range {
            if !p.bytes().all(|b| b.is_ascii_digit() || b == b'-') {
                return Err(invalid("port_range", format!("{p:?} is not LO-HI")));
            }
        }
        if self.gateway.is_some() && self.target == Target::Kernel {
            return Err(invalid(
                "config",
                "the [gateway] settings are our gateway's: use target ours or compare".into(),
            ));
        }
        match (self.target, &self.external) {
            (Target::External, None) => {
                return Err(invalid("target", "external needs the NAT's links (--inside, --outside)".into()))
            }
            (Target::External, Some(x)) => {
                x.validate()?;
                if n > x.addrs.capacity() {
                    return Err(invalid(
                        "envs",
                        format!("{n} environments do not fit the environments' network ({})", x.addrs.capacity()),
                    ));
                }
                let ours_only = [
                    ("config", self.gateway.is_some()),
                    ("port_range", self.port_range.is_some()),
                    ("max_eni_addresses", self.max_eni_addresses.is_some()),
                    ("workers", self.workers != 0),
                    ("tap_per_env", self.tap_per_env),
                ];
                if let Some((param, _)) = ours_only.iter().find(|(_, set)| *set) {
                    return Err(invalid(param, "is for our gateway in the lab; the external NAT is the user's".into()));
                }
            }
            (_, Some(_)) => {
                return Err(invalid(
                    "inside",
                    "--inside/--outside measure an external NAT: not with ours or kernel".into(),
                ))
            }
            (Target::Ours, None) => {
                gateway_plan(self)?;
            }
            (Target::Kernel, None) => {}
        }
        Ok(())
    }
}

/// Why a load run failed.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// An argument that can never work.
    #[error("invalid {param}: {reason}")]
    Invalid {
        /// The parameter.
        param: &'static str,
        /// Why.
        reason: String,
    },
    /// Not root.
    #[error("the load generator needs root (network namespaces, TAP devices)")]
    NotRoot,
    /// Our lab did not build.
    #[error("lab: {0}")]
    Lab(#[from] lab::LabBuildError),
    /// A namespace or link operation failed.
    #[error("netlab: {0}")]
    Netlab(#[from] LabError),
    /// The TAP could not be opened.
    #[error("loadgen TAP: {0}")]
    Tap(#[from] IoError),
    /// A system call failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The NAT's inside address never answered ARP.
    #[error("the gateway {0} did not answer ARP within {1:?}")]
    GatewayUnresolved(Ipv4Addr, Duration),
    /// The `--config` file, or the gateway config made from it, was refused.
    #[error("config {file}: {field}: {reason}{}", line.map(|l| format!(" (line {l})")).unwrap_or_default())]
    Config {
        /// The file.
        file: String,
        /// The field (`gateway.timeouts.udp`; `toml` for a document that is not TOML).
        field: String,
        /// Why.
        reason: String,
        /// Its line in the file, when found.
        line: Option<usize>,
    },
    /// Stopped (signal or [`StopHandle`]) before the load began: nothing was measured.
    #[error("stopped before the load began; nothing was measured")]
    Stopped,
}

pub(crate) fn invalid(param: &'static str, reason: String) -> LoadError {
    LoadError::Invalid { param, reason }
}

pub(crate) fn io_err(what: impl Into<String>, source: std::io::Error) -> LoadError {
    LoadError::Io { what: what.into(), source }
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
    let ntaps = if external {
        0
    } else if args.tap_per_env {
        n
    } else {
        1
    };
    let tap_names: Vec<String> = (0..ntaps).map(|_| netlab::unique("lg")).collect();
    // The raw UDP writers get a TAP queue each (`--cpus`).
    let queues = if args.scenario == Scenario::Udp { args.cpus.len().max(1) } else { 1 };
    let taps = TapSet::open(&tap_names, queues)?;
    let tap_name = tap_names.first().map_or("", String::as_str);
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
                shared_attachment: (!args.tap_per_env).then_some(n),
                bridged_attachments: args.tap_per_env.then_some(n),
                workers: gw.workers,
                offloads: gw.offloads,
                gateway_extra: gw.extra,
                ..lab::Options::default()
            };
            let lab = Lab::build(&opts)?;
            if args.tap_per_env {
                lab.attach_to_bridges(&tap_names, TAP_QUEUE_LEN)?;
            } else {
                lab.attach_to_bridge(tap_name)?;
            }
            World::Ours(Box::new(lab))
        }
        Target::Kernel if args.tap_per_env => {
            let k = KernelNat::build_with_taps("lgk", &tap_names, TAP_QUEUE_LEN)?;
            if n > 512 {
                // Permanent entries do not count against gc_thresh3 (see below).
                let lines: Vec<String> = tap_names.iter().enumerate().map(|(i, t)| neigh_line(i, t)).collect();
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
    if let (Some(ns), false) = (world.tap_ns(), args.tap_per_env) {
        ns.ip_batch(&[format!("link set {tap_name} txqueuelen {TAP_QUEUE_LEN}")])?;
    }
    // With --spread-receive, the TAP's receive path (the kernel's NAT, or the bridge to ours) on the other CPUs.
    let spread = match (world.tap_ns(), args.scenario, args.spread_receive) {
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
        _ => taps.taps.into_iter().map(Port::Tap).collect(),
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
    // The kernel's own count of what reached the VPC side (accepted on to the responder).
    let counter = match (&world, args.scenario) {
        (_, Scenario::TcpBulk | Scenario::Connect) => None,
        (World::Ours(l), _) => Some(IngressCounter::install(&l.vpc, &l.outside, SERVER, Verdict::Accept)?),
        (World::Kernel(k), _) => Some(IngressCounter::install(k.vpc_ns(), "gw", SERVER, Verdict::Accept)?),
        (World::External { outside, outside_link, .. }, _) => {
            Some(IngressCounter::install(outside, outside_link, addrs.server, Verdict::Accept)?)
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
    for (k, v) in world.overflows(&tap_names) {
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
    report.warnings = comparison::saturation_warnings(&report);
    if let Some(c) = &counter {
        let (packets, bytes) = c.read()?;
        report.vpc_counted =
            Some(Rate { packets, bytes, pps: packets as f64 / load_secs, bps: bytes as f64 * 8.0 / load_secs });
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

/// The loadgen's TAPs (closing a TAP's last descriptor deletes the device, so dropping this removes them).
struct TapSet {
    taps: Vec<Tap>,
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
            taps.insert(0, first);
            return Ok(TapSet { taps });
        }
        let taps = names.iter().map(|t| Tap::open(t, TapOptions::default())).collect::<Result<Vec<_>, _>>()?;
        Ok(TapSet { taps })
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

/// Frames dropped for want of room in the CPUs' receive backlogs, all CPUs together (`/proc/net/softnet_stat`, the
/// second column, hexadecimal); 0 if unreadable.
fn backlog_drops() -> u64 {
    let text = std::fs::read_to_string("/proc/net/softnet_stat").unwrap_or_default();
    text.lines().filter_map(|l| u64::from_str_radix(l.split_whitespace().nth(1)?, 16).ok()).sum()
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
    }
}

/// Parses a CPU list, `0,1` or `0-3` or a mix (`--cpus`); the error names `cpus`.
pub fn parse_cpus(s: &str) -> Result<Vec<usize>, LoadError> {
    let bad = || invalid("cpus", format!("{s:?} is not a list of CPUs such as 0,1 or 0-3"));
    let mut v = Vec::new();
    for part in s.split(',').map(str::trim) {
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b): (usize, usize) = (a.parse().map_err(|_| bad())?, b.parse().map_err(|_| bad())?);
                if a > b || b - a > 1024 {
                    return Err(bad());
                }
                v.extend(a..=b);
            }
            None => v.push(part.parse().map_err(|_| bad())?),
        }
    }
    Ok(v)
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
    fn cpus_are_for_udp_and_must_exist() {
        let udp = LoadArgs { cpus: vec![0], target: Target::Kernel, ..LoadArgs::default() };
        assert!(udp.validate().is_ok());
        let connect = LoadArgs { scenario: Scenario::Connect, ..udp.clone() };
        assert!(matches!(connect.validate(), Err(LoadError::Invalid { param: "cpus", .. })));
        let missing = LoadArgs { cpus: vec![100_000], ..udp };
        assert!(matches!(missing.validate(), Err(LoadError::Invalid { param: "cpus", .. })));
    }
}
