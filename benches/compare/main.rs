//! Our gateway against the Linux kernel's NAT (nftables masquerade), side by
//! side in one run, on the same namespace address plan (ours: the gateway
//! between per-environment TAPs and a TAP to the VPC router namespace; the
//! kernel: a NAT namespace between veths):
//!
//! - TCP bulk, Gbit/s (iperf3, 5 s, one stream), offloads on;
//! - UDP, 64 bytes of payload, one flow: a saturating raw sender
//!   (`loadgen::sender`: prebuilt frames, `sendmmsg` of 64 frames on an
//!   `AF_PACKET` socket on environment 0's link, one thread pinned to each CPU
//!   of `--cpus`, default CPU 0), counted at the VPC side by the kernel: an
//!   nftables netdev ingress counter on the VPC router's link from the NAT
//!   (`netlab::meter`), which also drops what it counts, so the VPC side
//!   discards and only the NAT's forwarding is measured. Offered (the
//!   sender's running count) and delivered (the counter) are read over the
//!   same window, from 0.2 s after the counter first moves to 0.3 s before
//!   the end; a warning says when the offer did not exceed what was carried;
//! - the same with every packet a new flow (64,000 source ports × 16
//!   destination ports, no flow repeats within 1,024,000 frames; our
//!   per-environment quotas are opened up for it, see `OPEN_QUOTAS`);
//! - with `--trafgen`, trafgen (netsniff-ng, pinned to the first CPU of
//!   `--cpus`, through the qdisc like our sender) sending the same one-flow
//!   frame, counted the same way, and how far our sender's delivered figure
//!   is from it;
//! - new TCP connections per second (connect, close at once, from two
//!   environments, four threads each in a closed loop, to 16 server ports
//!   served by non-blocking threads: `netlab::churn`, the client and server
//!   of `cargo bench --bench io_churn`), once closing with an RST
//!   (`SO_LINGER` 0) and once with an orderly close (the client's FIN first),
//!   with the failed connects (not established within 3 s) of each. Each
//!   phase runs `--conn-secs` (default 20 s; 4 with `--quick`) and its figure
//!   is the sustained rate, over the phase's second half: a NAT's capacity
//!   for new connections is a steady state, and the first seconds flatter a
//!   NAT whose table fills (the kernel's connection tracking holds 262,144
//!   entries here, each kept 10 s after an RST and 120 s in TIME_WAIT, so at
//!   tens of thousands of connections a second it is full within 5 s). The
//!   rate over the first half is printed and kept in the JSON beside it;
//! - the machine's steal time over each round (`/proc/stat`), so that a
//!   noisy round can be recognised.
//!
//! Run as root: `cargo bench --bench compare` (`-- --quick` for 2-second
//! loads and 4-second connection phases; `--conn-secs N`; `--rounds N`, default 3, alternating ours and the kernel, medians
//! reported; `--workers N` for our gateway; `--only tcp|udp|conn`; `--work tcp,conn,udp` to run only those
//! measurements, in any mode;
//! `--cpus 0,1` for the sender; `--trafgen`; `--cc NAME` for the TCP bulk sender's congestion control, iperf3's
//! `-C`, default the machine's `net.ipv4.tcp_congestion_control`). Needs iperf3 (for TCP), nft, ip,
//! sysctl, ping; trafgen for `--trafgen`. Prints each figure for both and the
//! ratio (ours / kernel) where one means something, and writes
//! `target/compare.json` (medians and every round). Every load is bounded in
//! time and runs only between namespaces this program made.
//!
//! `--veths`: our gateway on the kernel's own link kinds instead of TAPs: each environment namespace's veth
//! attached directly (`af-packet` attachments on packet rings) and the outside on AF_PACKET on the veth to the VPC
//! router (rings), so both targets sit between the same kinds of links.
//!
//! `--only sessions` (ours only): a lab whose gateway is first filled with
//! ~1k and then, in a new lab, ~1M live UDP sessions (environment 0, source
//! ports 2000.. × destination ports 10000..10063, paced at 100,000 frames/s,
//! up to three passes until 97% are live; `max_sessions` 4,194,304 and the
//! quotas opened), then one established flow's delivered rate as above;
//! prints both and 1M / 1k, writes `target/compare-sessions.json`.
//!
//! `--only outside`: the same measurements with our gateway's outside on a
//! TAP and on a veth read through AF_PACKET (offloads as Linux sets them,
//! a fanout group across the workers) on packet rings and on plain sockets
//! (`ring = false`), against the kernel, in alternating rounds; prints
//! AF_PACKET (rings) / TAP, / kernel and / plain sockets, and how many
//! workers took frames from the VPC side; `--outside-variants tap,rings,plain,kernel` runs only those.
//!
//! `--only attach`: how an environment reaches our gateway, TCP bulk and
//! the 64-byte UDP figures (one flow, new flows) from an environment
//! namespace whose link is a veth: through a bridge joining its host-side
//! end to a gateway TAP attachment, against a direct attach (an
//! `af-packet` attachment on that host-side end) on packet rings and on
//! plain sockets (`ring = false`), in alternating rounds; prints all three,
//! direct / bridged and rings / plain. Per round it also prints the TCP
//! stream's retransmits, mean RTT and CPU shares (iperf3's), and the
//! gateway's frames, bytes per frame and system calls by kind.
//! `--tcp-only` runs only the TCP bulk, `--attach-variants
//! bridged,rings,plain` (any of them) only those paths, `--io
//! uring|syscalls` sets the gateway's I/O path (`[gateway.io] backend`), and with
//! `HP_ATTACH_DIAG=1` each round ends with the kernel's nonzero drop,
//! retransmit and reordering counters of every namespace (`nstat`) and
//! every link's statistics (`ip -s -s link`).
//!
//! `--only offer`: what the TAP writers of `loadgen udp --cpus` can offer,
//! into a TAP whose kernel side sits alone in a namespace and discards (one
//! writer; one per CPU on one queue; one per CPU on a queue each of a
//! multi-queue TAP).
//!
//! Connection churn (only on request, never in the default run; needs no
//! iperf3), with `netlab::churn`:
//!
//! - `--only churn`: 16 environments × 2 threads connect to 16 server ports
//!   and close at once, closed loop, for `--churn-secs S` (default 150),
//!   closing with an RST (`SO_LINGER` 0) and with an orderly close (the
//!   client's FIN first), against our gateway (`Lab`, 16 environments, one
//!   TAP each, defaults otherwise) and the kernel (`KernelNat`, 16
//!   environments), interleaved: ours rst, kernel rst, ours fin, kernel fin.
//!   Prints completed, failures, the rate over the first and the last 30 s
//!   (half the run when shorter), last/first, the rate every 5 s, our
//!   gateway's drops, and ours/kernel on the sustained (last-window) rate.
//! - `--only churn1k`: one environment alone opening 1,000 connections/s
//!   (open loop, 4 threads, RST close) for `--churn-secs S` (default 600),
//!   against ours and then the kernel: failures and the rate per minute.
//!
//! `--churn-target ours|kernel` runs one target only (default both),
//! `--churn-port-range "LO HI"` sets the environments' ephemeral ports, and
//! `--churn-close rst|fin|both` overrides the close modes (defaults: both
//! for `churn`, rst for `churn1k`). Both write `target/churn.json` (the
//! reports with their per-second timelines), after every run.

use loadgen::sender::{self, Flows, FrameSpec, Plan, Source};
use loadgen::trafgen;
use netlab::churn::{self, ChurnReport, ClientConfig, CloseMode, ServerReport};
use netlab::lab::{Lab, Options};
use netlab::meter::{self, IngressCounter, Steal, Verdict};
use netlab::{env_addr, KernelNat, Netns, INSIDE_GATEWAY, SERVER};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

mod churn_runs;
mod variants;
use churn_runs::churn_main;
use variants::{attach_main, offer_main, outside_main, sessions_main};

/// Our gateway's per-environment quotas opened up to what one environment sends here (the kernel's masquerade has
/// none; its conntrack table holds 262,144 entries by default): the new-flow variant sends up to 1,024,000 distinct
/// flows from one environment.
const OPEN_QUOTAS: &str = "env_session_quota = 2000000\nenv_port_quota = 65000\n";

/// One target's topology, as the measurements see it.
struct Topo<'a> {
    server: &'a Netns,
    envs: Vec<&'a Netns>,
    /// The VPC router's namespace and its link from the NAT (where delivered UDP is counted).
    vpc: &'a Netns,
    vpc_link: String,
    /// Environment 0's link towards the NAT (where the raw sender transmits).
    env_link: String,
}

impl<'a> Topo<'a> {
    /// Our lab as the bench sees it: its environments, the VPC router's
    /// link from the gateway, environment 0's link.
    fn of(lab: &'a Lab) -> Topo<'a> {
        Topo {
            server: &lab.server,
            envs: lab.envs.iter().collect(),
            vpc: &lab.vpc,
            vpc_link: lab.vpc_link().to_string(),
            env_link: lab.env_link(0).to_string(),
        }
    }
}

#[derive(Clone, Copy, Debug, Default)]
struct Figures {
    tcp_gbps: f64,
    /// One UDP flow, 64-byte payloads: frames the sender got out per second, and packets per second the VPC
    /// side's kernel counter saw.
    udp_offered_pps: f64,
    udp_pps: f64,
    /// Every packet a new flow.
    new_offered_pps: f64,
    new_pps: f64,
    /// trafgen (one flow, pinned), counted the same way (`--trafgen` only).
    trafgen_pps: f64,
    /// What trafgen got out of the environment's link, frames/s (`--trafgen` only).
    trafgen_offered_pps: f64,
    /// Connections/s over the second half of the RST-close phase (the sustained rate).
    conn_rst_per_s: f64,
    /// Over its first half.
    conn_rst_first_per_s: f64,
    conn_rst_failed: f64,
    /// Connections/s over the second half of the FIN-close phase (the sustained rate).
    conn_fin_per_s: f64,
    /// Over its first half.
    conn_fin_first_per_s: f64,
    conn_fin_failed: f64,
    /// The machine's steal share over the round, %.
    steal_pct: f64,
    /// The 1-minute load average at the round's end (other work on this machine's cores).
    load1: f64,
}

impl Figures {
    /// Each figure's median over `all`.
    fn median(all: &[Figures]) -> Figures {
        let med = |get: fn(&Figures) -> f64| {
            let mut v: Vec<f64> = all.iter().map(get).collect();
            v.sort_by(f64::total_cmp);
            v.get(v.len() / 2).copied().unwrap_or(0.0)
        };
        Figures {
            tcp_gbps: med(|f| f.tcp_gbps),
            udp_offered_pps: med(|f| f.udp_offered_pps),
            udp_pps: med(|f| f.udp_pps),
            new_offered_pps: med(|f| f.new_offered_pps),
            new_pps: med(|f| f.new_pps),
            trafgen_pps: med(|f| f.trafgen_pps),
            trafgen_offered_pps: med(|f| f.trafgen_offered_pps),
            conn_rst_per_s: med(|f| f.conn_rst_per_s),
            conn_rst_first_per_s: med(|f| f.conn_rst_first_per_s),
            conn_rst_failed: med(|f| f.conn_rst_failed),
            conn_fin_per_s: med(|f| f.conn_fin_per_s),
            conn_fin_first_per_s: med(|f| f.conn_fin_first_per_s),
            conn_fin_failed: med(|f| f.conn_fin_failed),
            steal_pct: med(|f| f.steal_pct),
            load1: med(|f| f.load1),
        }
    }

    fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "tcp_gbps": self.tcp_gbps,
            "udp_one_flow": { "offered_pps": self.udp_offered_pps, "delivered_pps": self.udp_pps },
            "udp_new_flows": { "offered_pps": self.new_offered_pps, "delivered_pps": self.new_pps },
            "trafgen_one_flow_delivered_pps": self.trafgen_pps,
            "trafgen_one_flow_offered_pps": self.trafgen_offered_pps,
            "conn_rst": {
                "per_s": self.conn_rst_per_s,
                "first_half_per_s": self.conn_rst_first_per_s,
                "failed": self.conn_rst_failed,
            },
            "conn_fin": {
                "per_s": self.conn_fin_per_s,
                "first_half_per_s": self.conn_fin_first_per_s,
                "failed": self.conn_fin_failed,
            },
            "steal_pct": self.steal_pct,
            "load_average_1m": self.load1,
        })
    }
}

fn iperf(t: &Topo, args: &[&str], secs: u32) -> serde_json::Value {
    let mut server = t.server.spawn(&["iperf3", "-s", "-1", "-p", "5201"]).expect("iperf3 server");
    std::thread::sleep(Duration::from_millis(300));
    let secs = secs.to_string();
    let mut cmd = vec!["iperf3", "-c", "10.1.0.2", "-p", "5201", "-J", "-t", &secs];
    cmd.extend_from_slice(args);
    // `--cc NAME`: the sender's congestion control (iperf3 `-C`); default the machine's.
    let cc = arg_str("--cc");
    if let Some(cc) = &cc {
        cmd.extend(["-C", cc.as_str()]);
    }
    let out = t.envs[0].exec(&cmd);
    let _ = server.kill();
    let _ = server.wait();
    let out = out.expect("iperf3 client");
    serde_json::from_slice(&out.stdout).expect("iperf3 JSON")
}

/// A connect not established within this is a failure (the load generator's default; a SYN lost once and
/// retransmitted a second later is a slow connect, not a failed one).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// Length of each connection phase (RST close, FIN close), seconds (`--conn-secs`; 4 with `--quick`).
const CONNECT_SECS: u32 = 20;

/// A connection phase's rates: over its first and its second half (the sustained rate), connections/s; its failed
/// connects.
#[derive(Clone, Copy, Debug, Default)]
struct ConnRates {
    first: f64,
    sustained: f64,
    failed: u64,
}

/// Connections per second completed over each half of `secs` seconds, and failed connects: the churn client of
/// `netlab::churn` (the one `cargo bench --bench io_churn` and `hyperplane loadgen churn` use), 4 threads per
/// environment in a closed loop, each connecting to one of 16 server ports in turn on the churn server's
/// non-blocking threads, then closing (`rst`: with an RST, `SO_LINGER` 0; else an orderly close, the client's FIN
/// first, the server's FIN awaited).
fn connect_rate(t: &Topo, secs: u32, rst: bool) -> ConnRates {
    let cfg = ClientConfig {
        threads_per_env: 4,
        mode: if rst { CloseMode::Rst } else { CloseMode::Fin },
        secs,
        window_secs: (secs / 2).max(1),
        connect_timeout: CONNECT_TIMEOUT,
        ..ClientConfig::default()
    };
    match churn::run(t.server, &t.envs, &cfg) {
        Ok((r, _)) => {
            eprintln!(
                "  connections, {} close: {:.0}/s over the first {} s, {:.0}/s over the last {} s (sustained)",
                if rst { "rst" } else { "fin" },
                r.rate_first,
                r.window_secs,
                r.rate_last,
                r.window_secs
            );
            if r.failed > 0 {
                eprintln!("    {} connects failed: {:?}", r.failed, r.failures);
            }
            ConnRates { first: r.rate_first, sustained: r.rate_last, failed: r.failed }
        }
        Err(e) => {
            eprintln!("    connection churn did not run: {e}");
            ConnRates::default()
        }
    }
}

/// Length of each connection phase, seconds: `--conn-secs N`, else [`CONNECT_SECS`] (4 with `--quick`).
fn conn_secs() -> u32 {
    let quick = std::env::args().any(|a| a == "--quick");
    arg_str("--conn-secs").and_then(|v| v.parse().ok()).unwrap_or(if quick { 4 } else { CONNECT_SECS }).max(2)
}

/// Which measurements to run (`--only tcp|udp|conn`; all by default, and
/// all for `--only outside`); `--work tcp,conn,udp` narrows any of them.
fn wanted(what: &str) -> bool {
    let args: Vec<String> = std::env::args().collect();
    if let Some(list) = arg_str("--work") {
        if !list.split(',').any(|w| w.trim() == what) {
            return false;
        }
    }
    if args.iter().any(|a| a == "--tcp-only") {
        return what == "tcp";
    }
    match args.iter().position(|a| a == "--only") {
        Some(i) => args.get(i + 1).is_some_and(|w| w == what || w == "outside" || (w == "attach" && what != "conn")),
        None => true,
    }
}

/// Whether `--only what` was given (the churn workloads run only then).
fn only(what: &str) -> bool {
    let args: Vec<String> = std::env::args().collect();
    args.iter().position(|a| a == "--only").and_then(|i| args.get(i + 1)).is_some_and(|w| w == what)
}

/// The value after `--name`, if any.
fn arg_str(name: &str) -> Option<String> {
    std::env::args().skip_while(|a| a != name).nth(1)
}

/// The raw sender's frame template from environment 0 of `t` (its link's MAC, the NAT's MAC it learned with a
/// ping), 64 bytes of UDP payload to the server, port 40000 → 9000.
fn template(t: &Topo) -> FrameSpec {
    FrameSpec::from_link(t.envs[0], &t.env_link, env_addr(0), INSIDE_GATEWAY, SERVER).expect("the frame template")
}

/// The CPUs the sender runs on (`--cpus 0,1`; default CPU 0).
fn sender_cpus() -> Vec<usize> {
    arg_str("--cpus").map(|v| v.split(',').filter_map(|c| c.trim().parse().ok()).collect()).unwrap_or_else(|| vec![0])
}

/// Our sender for `secs` with `flows`: (offered frames/s, delivered packets/s at the VPC side), over the same
/// window; the environment link's transmit drops (frames the sender got out that the NAT's side never took) are
/// printed.
fn udp_raw(t: &Topo, spec: &FrameSpec, counter: &IngressCounter, flows: Flows, secs: f64) -> (f64, f64) {
    let progress = Arc::new(AtomicU64::new(0));
    let plan = Plan {
        source: Source::Flows(spec.clone(), flows),
        cpus: sender_cpus(),
        duration: Duration::from_secs_f64(secs),
        rate: None,
        max_frames: None,
        progress: Some(Arc::clone(&progress)),
    };
    let stop = Arc::new(AtomicBool::new(false));
    let before = meter::link_stats(t.envs[0], &t.env_link).unwrap_or_default();
    let (offered, delivered, sent) = meter::window_rates(counter, Some(&progress), trafgen::window(secs), || {
        sender::send_packet(t.envs[0], &t.env_link, &plan, &stop).expect("raw sender")
    });
    let after = meter::link_stats(t.envs[0], &t.env_link).unwrap_or_default();
    eprintln!(
        "    sender: {} frames in {:.2} s on CPUs {:?} (pinned {:?}), {} refused; {} dropped on the environment link",
        sent.frames,
        sent.seconds,
        plan.cpus,
        sent.pinned,
        sent.errors,
        after[3].saturating_sub(before[3])
    );
    (offered, delivered)
}

fn measure(t: &Topo, secs: u32) -> Figures {
    measure_parts(t, secs, &["tcp", "conn", "udp"])
}

/// [`measure`], of `parts` only (of what `--only` and `--work` left).
fn measure_parts(t: &Topo, secs: u32, parts: &[&str]) -> Figures {
    let wanted = |w: &str| wanted(w) && parts.contains(&w);
    let steal0 = Steal::now();
    let mut f = Figures::default();
    if wanted("tcp") {
        let tcp = iperf(t, &[], secs);
        f.tcp_gbps = tcp["end"]["sum_received"]["bits_per_second"].as_f64().unwrap_or(0.0) / 1e9;
        let sender = &tcp["end"]["streams"][0]["sender"];
        eprintln!(
            "  tcp bulk: {:.2} Gbit/s ({}), {} retransmits, mean RTT {} us, sender CPU {:.0}%, receiver CPU {:.0}%",
            f.tcp_gbps,
            tcp["end"]["sender_tcp_congestion"].as_str().unwrap_or("?"),
            tcp["end"]["sum_sent"]["retransmits"],
            sender["mean_rtt"],
            tcp["end"]["cpu_utilization_percent"]["host_total"].as_f64().unwrap_or(0.0),
            tcp["end"]["cpu_utilization_percent"]["remote_total"].as_f64().unwrap_or(0.0),
        );
    }
    // Connections before the UDP floods: the new-flow flood leaves the kernel's
    // connection tracking full (262,144 entries here, unreplied UDP kept 30 s),
    // and a SYN that finds it full is dropped ("nf_conntrack: table full"), so
    // measured after it the kernel's connection rate was the flood's leftover.
    // (The connection phases leave it full too: `measure_kernel` runs them in
    // a NAT namespace of their own.)
    if wanted("conn") {
        let secs = conn_secs();
        let r = connect_rate(t, secs, true);
        (f.conn_rst_per_s, f.conn_rst_first_per_s, f.conn_rst_failed) = (r.sustained, r.first, r.failed as f64);
        let r = connect_rate(t, secs, false);
        (f.conn_fin_per_s, f.conn_fin_first_per_s, f.conn_fin_failed) = (r.sustained, r.first, r.failed as f64);
    }
    if wanted("udp") {
        let spec = template(t);
        let counter = IngressCounter::install(t.vpc, &t.vpc_link, SERVER, Verdict::Drop).expect("VPC counter");
        let s = f64::from(secs);
        (f.udp_offered_pps, f.udp_pps) = udp_raw(t, &spec, &counter, Flows::ONE, s);
        eprintln!("  udp one flow: offered {:.0}/s, delivered {:.0}/s", f.udp_offered_pps, f.udp_pps);
        // 64,000 source ports × 16 destination ports: no flow repeats within 1,024,000 frames.
        (f.new_offered_pps, f.new_pps) = udp_raw(t, &spec, &counter, Flows { sports: 64_000, dports: 16 }, s);
        eprintln!("  udp new flows: offered {:.0}/s, delivered {:.0}/s", f.new_offered_pps, f.new_pps);
        if std::env::args().any(|a| a == "--trafgen") {
            let cpu = sender_cpus().first().copied().unwrap_or(0);
            let r = trafgen::one_flow(t.envs[0], &t.env_link, &t.env_link, &spec, cpu, s, &counter).unwrap_or_default();
            let (offered, delivered) = (r.offered_pps, r.delivered_pps);
            (f.trafgen_offered_pps, f.trafgen_pps) = (offered, delivered);
            eprintln!("  trafgen one flow: offered {offered:.0}/s, delivered {delivered:.0}/s");
        }
    }
    f.steal_pct = steal0.share_until(&Steal::now()) * 100.0;
    f.load1 = meter::load_average().unwrap_or(0.0);
    f
}

/// The kernel lab's topology, as the measurements see it.
fn kernel_topo(k: &KernelNat) -> Topo<'_> {
    Topo {
        server: k.server_ns(),
        envs: (0..2).map(|i| k.env_ns(i)).collect(),
        vpc: k.vpc_ns(),
        vpc_link: "gw".into(),
        env_link: netlab::ENV_LINK.into(),
    }
}

/// One round of [`measure`] against the kernel's masquerade (two
/// environments; fresh labs, see below).
fn measure_kernel(round: usize, secs: u32) -> Figures {
    let lab = || KernelNat::build("hpkb", 2, true).expect("kernel lab");
    // The connection phases leave the kernel's connection tracking full (an entry is kept 120 s in TIME_WAIT), and
    // a new flow that finds it full is dropped: the UDP phases would measure that. They run first, in a NAT
    // namespace of their own; the connection phases get a fresh one (an empty table, as ours' lab starts).
    let k = lab();
    let mut f = measure_parts(&kernel_topo(&k), secs, &["tcp", "udp"]);
    drop(k);
    let k = lab();
    let c = measure_parts(&kernel_topo(&k), secs, &["conn"]);
    (f.conn_rst_per_s, f.conn_rst_first_per_s, f.conn_rst_failed) =
        (c.conn_rst_per_s, c.conn_rst_first_per_s, c.conn_rst_failed);
    (f.conn_fin_per_s, f.conn_fin_first_per_s, f.conn_fin_failed) =
        (c.conn_fin_per_s, c.conn_fin_first_per_s, c.conn_fin_failed);
    (f.steal_pct, f.load1) = (f.steal_pct.max(c.steal_pct), c.load1);
    eprintln!("round {round}: kernel: {f:?}");
    eprintln!("round {round}: steal {:.1}%, load average {:.1} (kernel)", f.steal_pct, f.load1);
    f
}

/// `--io uring|syscalls|auto`: our workers' I/O path (`[gateway.io] backend`; default auto), as config lines.
fn io_extra() -> String {
    arg_str("--io").map(|b| format!("\n[gateway.io]\nbackend = \"{b}\"\n")).unwrap_or_default()
}

/// `a / b` as `1.23x`; `>100x` past a hundred (a target that nearly stopped: the figure, not the ratio, says how
/// far), `—` when `b` is zero.
fn ratio(a: f64, b: f64) -> String {
    match a / b {
        _ if b <= 0.0 => "—".into(),
        r if r > 100.0 => ">100x".into(),
        r => format!("{r:.2}x"),
    }
}

fn main() {
    if !netlab::is_root() {
        eprintln!("compare: needs root (namespaces, TAPs, nftables); skipping");
        return;
    }
    for which in ["churn", "churn1k"] {
        if only(which) {
            churn_main(which);
            return;
        }
    }
    let quick = std::env::args().any(|a| a == "--quick");
    let secs = if quick { 2 } else { 5 };
    let arg = |name: &str| std::env::args().skip_while(|a| a != name).nth(1).and_then(|v| v.parse::<usize>().ok());
    let workers = arg("--workers").unwrap_or(0);
    let rounds = arg("--rounds").unwrap_or(3).max(1);
    if only("offer") {
        offer_main(secs);
        return;
    }
    if only("sessions") {
        sessions_main(secs, rounds);
        return;
    }
    if only("outside") {
        outside_main(secs, rounds, workers);
        return;
    }
    if only("attach") {
        attach_main(secs, rounds, workers);
        return;
    }
    if wanted("tcp") && netlab::find_tool("iperf3").is_err() {
        eprintln!("compare: TCP bulk needs iperf3 (apt-get install iperf3); skipping");
        return;
    }
    // Rounds alternate between the two, so drift on a shared machine hits
    // both alike; each figure is the median over the rounds.
    let (mut ours_all, mut kernel_all) = (vec![], vec![]);
    for round in 1..=rounds {
        {
            let veths = std::env::args().any(|a| a == "--veths");
            let opts = Options {
                envs: 2,
                workers,
                gateway_extra: format!("{OPEN_QUOTAS}{}", io_extra()),
                direct_veth: veths,
                af_packet: veths,
                ..Options::default()
            };
            let lab = Lab::build(&opts).expect("our lab");
            let t = Topo::of(&lab);
            let f = measure(&t, secs);
            let totals = lab.gateway().totals();
            eprintln!("round {round}: hyperplane ({} workers): {f:?}", lab.gateway().workers());
            eprintln!(
                "  gateway: {} packets out, {} in; drops {:?}",
                totals.outbound.0, totals.inbound.0, totals.drops
            );
            eprintln!("round {round}: steal {:.1}%, load average {:.1} (hyperplane)", f.steal_pct, f.load1);
            ours_all.push(f);
        }
        kernel_all.push(measure_kernel(round, secs));
    }
    let (ours, kernel) = (Figures::median(&ours_all), Figures::median(&kernel_all));
    println!(
        "{:<44} {:>12} {:>12} {:>7}",
        "work (same run, same machine, medians)", "hyperplane", "kernel NAT", "ratio"
    );
    // Each row with the measurement it comes from ("" for every run): rows of a measurement
    // `--only` or `--work` left out are not printed.
    let trafgen = std::env::args().any(|a| a == "--trafgen");
    let rows: [(&str, &str, f64, f64, bool); 16] = [
        ("tcp", "TCP bulk, Gbit/s (offloads on)", ours.tcp_gbps, kernel.tcp_gbps, true),
        ("udp", "UDP 64-byte one flow: offered pkt/s", ours.udp_offered_pps, kernel.udp_offered_pps, false),
        ("udp", "UDP 64-byte one flow: delivered pkt/s", ours.udp_pps, kernel.udp_pps, true),
        ("udp", "UDP new flow per packet: offered pkt/s", ours.new_offered_pps, kernel.new_offered_pps, false),
        ("udp", "UDP new flow per packet: delivered pkt/s", ours.new_pps, kernel.new_pps, true),
        ("trafgen", "trafgen one flow: offered pkt/s", ours.trafgen_offered_pps, kernel.trafgen_offered_pps, false),
        ("trafgen", "trafgen one flow: delivered pkt/s", ours.trafgen_pps, kernel.trafgen_pps, true),
        ("conn", "TCP connections/s, RST close, sustained", ours.conn_rst_per_s, kernel.conn_rst_per_s, true),
        ("conn", "  the phase's first half", ours.conn_rst_first_per_s, kernel.conn_rst_first_per_s, true),
        ("conn", "  failed connects, RST close", ours.conn_rst_failed, kernel.conn_rst_failed, false),
        ("conn", "TCP connections/s, FIN close, sustained", ours.conn_fin_per_s, kernel.conn_fin_per_s, true),
        ("conn", "  the phase's first half", ours.conn_fin_first_per_s, kernel.conn_fin_first_per_s, true),
        ("conn", "  failed connects, FIN close", ours.conn_fin_failed, kernel.conn_fin_failed, false),
        ("", "steal time over the round, %", ours.steal_pct, kernel.steal_pct, false),
        ("", "1-minute load average after the round", ours.load1, kernel.load1, false),
        ("udp", "sender CPUs", sender_cpus().len() as f64, sender_cpus().len() as f64, false),
    ];
    let ran = |w: &str| match w {
        "" => true,
        "trafgen" => trafgen && wanted("udp"),
        w => wanted(w),
    };
    for (_, name, a, b, with_ratio) in rows.into_iter().filter(|r| ran(r.0)) {
        let r = if with_ratio { ratio(a, b) } else { "—".into() };
        println!("{name:<44} {a:>12.2} {b:>12.2} {r:>7}");
    }
    for (who, f) in [("hyperplane", &ours), ("kernel", &kernel)] {
        for (what, o, d) in [("one flow", f.udp_offered_pps, f.udp_pps), ("new flows", f.new_offered_pps, f.new_pps)] {
            if o > 0.0 && o <= d * 1.05 {
                println!("warning: {who}: UDP {what}: offered {o:.0}/s did not exceed delivered {d:.0}/s: the sender's figure");
            }
        }
        if f.trafgen_pps > 0.0 {
            let dev = (f.udp_pps - f.trafgen_pps).abs() / f.trafgen_pps;
            println!("{who}: our sender vs trafgen (one flow, delivered): {:.1}% apart", dev * 100.0);
        }
    }
    let json = serde_json::json!({
        "seconds": secs,
        "rounds": rounds,
        "sender_cpus": sender_cpus(),
        "hyperplane": ours.json(),
        "kernel": kernel.json(),
        "rounds_hyperplane": ours_all.iter().map(Figures::json).collect::<Vec<_>>(),
        "rounds_kernel": kernel_all.iter().map(Figures::json).collect::<Vec<_>>(),
    });
    let _ = std::fs::create_dir_all("target");
    let _ = std::fs::write("target/compare.json", serde_json::to_string_pretty(&json).unwrap_or_default());
}
