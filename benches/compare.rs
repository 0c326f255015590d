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
//!   environments, four threads each, 2 s), once closing with an RST
//!   (`SO_LINGER` 0) and once with an orderly close (the client's FIN first),
//!   with the failed connects (not established within 3 s) of each;
//! - the machine's steal time over each round (`/proc/stat`), so that a
//!   noisy round can be recognised.
//!
//! Run as root: `cargo bench --bench compare` (`-- --quick` for 2-second
//! runs; `--rounds N`, default 3, alternating ours and the kernel, medians
//! reported; `--workers N` for our gateway; `--only tcp|udp|conn`;
//! `--cpus 0,1` for the sender; `--trafgen`). Needs iperf3 (for TCP), nft, ip,
//! sysctl, ping; trafgen for `--trafgen`. Prints each figure for both and the
//! ratio (ours / kernel) where one means something, and writes
//! `target/compare.json` (medians and every round). Every load is bounded in
//! time and runs only between namespaces this program made.
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
//! workers took frames from the VPC side.
//!
//! `--only attach`: how an environment reaches our gateway, TCP bulk and
//! the 64-byte UDP figures (one flow, new flows) from an environment
//! namespace whose link is a veth: through a bridge joining its host-side
//! end to a gateway TAP attachment, against a direct attach (an
//! `af-packet` attachment on that host-side end) on packet rings and on
//! plain sockets (`ring = false`), in alternating rounds; prints all three,
//! direct / bridged and rings / plain.
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
use netlab::churn::{self, ChurnReport, ClientConfig, CloseMode, ServerReport};
use netlab::lab::{Lab, Options};
use netlab::meter::{self, IngressCounter, Steal, Verdict};
use netlab::{env_addr, KernelNat, Netns, INSIDE_GATEWAY, SERVER};
use std::net::{SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

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
    conn_rst_per_s: f64,
    conn_rst_failed: f64,
    conn_fin_per_s: f64,
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
            conn_rst_per_s: med(|f| f.conn_rst_per_s),
            conn_rst_failed: med(|f| f.conn_rst_failed),
            conn_fin_per_s: med(|f| f.conn_fin_per_s),
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
            "conn_rst": { "per_s": self.conn_rst_per_s, "failed": self.conn_rst_failed },
            "conn_fin": { "per_s": self.conn_fin_per_s, "failed": self.conn_fin_failed },
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
    let out = t.envs[0].exec(&cmd);
    let _ = server.kill();
    let _ = server.wait();
    let out = out.expect("iperf3 client");
    serde_json::from_slice(&out.stdout).expect("iperf3 JSON")
}

/// A connect not established within this is a failure (the load generator's default; a SYN lost once and
/// retransmitted a second later is a slow connect, not a failed one).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// Connections per second completed, and failed connects: 4 client threads per environment, connect then close at
/// once (`rst`: with an RST, `SO_LINGER` 0; else an orderly close, the client's FIN first).
fn connect_rate(t: &Topo, secs: f64, rst: bool) -> (f64, u64) {
    use std::io::Read;
    let l = Arc::new(t.server.run(|| TcpListener::bind(SocketAddrV4::new(SERVER, 7600)).expect("bind")));
    let stop = Arc::new(AtomicBool::new(false));
    // Four blocking acceptors; each is released at the end by one local
    // connection made after the stop flag is set.
    let acceptors: Vec<_> = (0..4)
        .map(|_| {
            let (l, stop) = (Arc::clone(&l), Arc::clone(&stop));
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    if let Ok((mut c, _)) = l.accept() {
                        // The client closes first (it keeps the TIME_WAIT,
                        // as an HTTP client would): wait for its FIN.
                        let _ = c.set_read_timeout(Some(Duration::from_secs(1)));
                        let _ = c.read(&mut [0u8; 16]);
                    }
                }
            })
        })
        .collect();
    let done = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs_f64(secs);
    let mut clients = vec![];
    for ns in &t.envs {
        for _ in 0..4 {
            let (done, failed) = (Arc::clone(&done), Arc::clone(&failed));
            clients.push(ns.thread(move || {
                let dst = SocketAddr::from(SocketAddrV4::new(SERVER, 7600));
                while Instant::now() < deadline {
                    match TcpStream::connect_timeout(&dst, CONNECT_TIMEOUT) {
                        Ok(c) => {
                            if rst {
                                linger_zero(&c);
                            }
                            done.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) => {
                            if failed.fetch_add(1, Ordering::Relaxed) < 3 {
                                eprintln!("    connect failed ({:?}): {e}", churn::FailureKind::of_connect(&e));
                            }
                        }
                    }
                }
            }));
        }
    }
    let t0 = Instant::now();
    for c in clients {
        let _ = c.join();
    }
    let el = t0.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    t.server.run(|| {
        for _ in 0..4 {
            let _ =
                TcpStream::connect_timeout(&SocketAddr::from(SocketAddrV4::new(SERVER, 7600)), Duration::from_secs(1));
        }
    });
    for a in acceptors {
        let _ = a.join();
    }
    (done.load(Ordering::Relaxed) as f64 / el, failed.load(Ordering::Relaxed))
}

/// SO_LINGER 0: close sends an RST and leaves no TIME_WAIT.
fn linger_zero(c: &TcpStream) {
    let _ = churn::set_linger_zero(c);
}

/// Which measurements to run (`--only tcp|udp|conn`; all by default, and
/// all for `--only outside`).
fn wanted(what: &str) -> bool {
    let args: Vec<String> = std::env::args().collect();
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

/// One churn run's result, for the table and the JSON.
struct ChurnRun {
    target: &'static str,
    report: ChurnReport,
    server: ServerReport,
    /// The (first) outside address: our ENI's, the kernel's masquerade address.
    outside: std::net::Ipv4Addr,
    /// Our gateway's drops by reason (empty for the kernel).
    drops: Vec<(String, u64)>,
}

impl ChurnRun {
    fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "target": self.target,
            "report": self.report,
            "server": self.server,
            "outside_address": self.outside.to_string(),
            "gateway_drops": self.drops.iter().cloned().collect::<std::collections::BTreeMap<String, u64>>(),
        })
    }
}

/// Churn against ours: a lab of `envs` environments at the defaults (`--workers` honoured).
fn churn_ours(envs: usize, cfg: &ClientConfig) -> ChurnRun {
    let workers = arg_str("--workers").and_then(|v| v.parse().ok()).unwrap_or(0);
    let lab = Lab::build(&Options { envs, workers, ..Options::default() }).expect("our lab");
    let nss: Vec<&Netns> = lab.envs.iter().collect();
    eprintln!(
        "churn: hyperplane ({} workers), {} close, {} s ...",
        lab.gateway().workers(),
        cfg.mode.label(),
        cfg.secs
    );
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (counters, stop) = (lab.gateway().counters().to_vec(), Arc::clone(&stop));
        std::thread::spawn(move || sample_gateway(&counters, &stop))
    };
    churn_port_range(&nss);
    let (report, server) = churn::run(&lab.server, &nss, cfg).expect("churn against ours");
    stop.store(true, Ordering::Relaxed);
    let _ = sampler.join();
    let totals = lab.gateway().totals();
    eprintln!(
        "  gateway: {} packets out, {} in; sessions live {:?} (tcp, udp, icmp); drops {:?}",
        totals.outbound.0, totals.inbound.0, totals.live, totals.drops
    );
    let drops = totals.drops.iter().map(|(r, n)| (r.label().to_owned(), *n)).collect();
    ChurnRun { target: "hyperplane", report, server, outside: lab.eni, drops }
}

/// Every 5 s until `stop`: the gateway's live TCP sessions, recycled sessions, drops and its workers' CPU time
/// (from `/proc/self/task/*/stat`, threads named `hp-worker-*`), so a rate that falls can be put beside what the
/// gateway was doing.
fn sample_gateway(counters: &[Arc<dataplane::counters::Counters>], stop: &AtomicBool) {
    fn worker_ticks() -> u64 {
        let Ok(dir) = std::fs::read_dir("/proc/self/task") else { return 0 };
        dir.flatten()
            .filter(|t| std::fs::read_to_string(t.path().join("comm")).is_ok_and(|c| c.starts_with("hp-worker")))
            .filter_map(|t| std::fs::read_to_string(t.path().join("stat")).ok())
            .map(|st| {
                let f: Vec<&str> = st.rsplit(')').next().unwrap_or("").split_whitespace().collect();
                f.get(11).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
                    + f.get(12).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
            })
            .sum()
    }
    let start = Instant::now();
    let (mut last_rx, mut last_ticks) = (0u64, worker_ticks());
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_secs(5));
        let t = control::gateway::Totals::sum(counters);
        let ticks = worker_ticks();
        eprintln!(
            "  [{:>4.0} s] gateway: tcp live {} recycled {} rx {}/s workers cpu {}% drops {:?}",
            start.elapsed().as_secs_f64(),
            t.live[0],
            t.recycled,
            (t.rx_frames - last_rx) / 5,
            (ticks - last_ticks) * 100 / 500,
            t.drops
        );
        (last_rx, last_ticks) = (t.rx_frames, ticks);
    }
}

/// `--churn-port-range "LO HI"`: the environments' ephemeral ports (`net.ipv4.ip_local_port_range`), to tell a
/// client's own port reuse (TIME_WAIT in its namespace) from the NAT's.
fn churn_port_range(nss: &[&Netns]) {
    if let Some(r) = arg_str("--churn-port-range") {
        for ns in nss {
            ns.sysctl("net.ipv4.ip_local_port_range", &r).expect("--churn-port-range: LO HI");
        }
    }
}

/// Churn against the kernel's masquerade, `envs` environments.
fn churn_kernel(envs: usize, cfg: &ClientConfig) -> ChurnRun {
    let k = KernelNat::build("hpkc", envs, true).expect("kernel lab");
    let nss: Vec<&Netns> = (0..envs).map(|i| k.env_ns(i)).collect();
    eprintln!("churn: kernel, {} close, {} s ...", cfg.mode.label(), cfg.secs);
    churn_port_range(&nss);
    let (report, server) = churn::run(k.server_ns(), &nss, cfg).expect("churn against the kernel");
    ChurnRun { target: "kernel", report, server, outside: k.eni_addr(), drops: Vec::new() }
}

fn churn_line(r: &ChurnRun) {
    let c = &r.report;
    let f = &c.failures;
    println!(
        "{:<11} {:<5} {:>10} {:>8} {:>12.0} {:>12.0} {:>10.2}   timeout {} refused {} unreachable {} local {} close {} other {}",
        r.target,
        c.mode.label(),
        c.completed,
        c.failed,
        c.rate_first,
        c.rate_last,
        c.last_over_first,
        f.timeout,
        f.refused,
        f.unreachable,
        f.local,
        f.close,
        f.other,
    );
}

fn write_churn_json(which: &str, runs: &[ChurnRun]) {
    let json = serde_json::json!({
        "workload": which,
        "runs": runs.iter().map(ChurnRun::json).collect::<Vec<_>>(),
    });
    let _ = std::fs::create_dir_all("target");
    let _ = std::fs::write("target/churn.json", serde_json::to_string_pretty(&json).unwrap_or_default());
}

/// `--only churn` / `--only churn1k` (see the module doc).
fn churn_main(which: &str) {
    let big = which == "churn";
    let secs = arg_str("--churn-secs").and_then(|v| v.parse::<u32>().ok()).unwrap_or(if big { 150 } else { 600 });
    let modes: Vec<CloseMode> = match arg_str("--churn-close").as_deref() {
        Some("rst") => vec![CloseMode::Rst],
        Some("fin") => vec![CloseMode::Fin],
        Some("both") => CloseMode::ALL.to_vec(),
        Some(other) => panic!("--churn-close {other}: expected rst, fin or both"),
        None if big => CloseMode::ALL.to_vec(),
        None => vec![CloseMode::Rst],
    };
    let (envs, base) = if big {
        (16, ClientConfig { threads_per_env: 2, secs, window_secs: 30, ..ClientConfig::default() })
    } else {
        let rate = Some(1000.0);
        (1, ClientConfig { threads_per_env: 4, secs, rate_per_env: rate, window_secs: 60, ..ClientConfig::default() })
    };
    let mut runs: Vec<ChurnRun> = Vec::new();
    for mode in modes {
        let cfg = ClientConfig { mode, ..base };
        let targets: &[&str] = match arg_str("--churn-target").as_deref() {
            Some("ours") => &["hyperplane"],
            Some("kernel") => &["kernel"],
            _ => &["hyperplane", "kernel"],
        };
        for &target in targets {
            let run = if target == "hyperplane" { churn_ours(envs, &cfg) } else { churn_kernel(envs, &cfg) };
            let c = &run.report;
            eprintln!(
                "  {target} {}: {} completed, {} failed, first {:.0}/s, last {:.0}/s; server accepted {} from {:?} \
                 ({} fin, {} reset, {} abandoned)",
                mode.label(),
                c.completed,
                c.failed,
                c.rate_first,
                c.rate_last,
                run.server.accepted,
                run.server.peers,
                run.server.fin,
                run.server.reset,
                run.server.abandoned,
            );
            runs.push(run);
            write_churn_json(which, &runs);
        }
    }
    let w = runs.first().map(|r| r.report.window_secs).unwrap_or(30);
    println!();
    if big {
        println!(
            "churn: {envs} environments x {} threads, connect + close, {} server ports, {secs} s, closed loop",
            base.threads_per_env, base.ports
        );
    } else {
        println!(
            "churn1k: 1 environment, {} connections/s open loop ({} threads), {secs} s",
            1000, base.threads_per_env
        );
    }
    println!(
        "{:<11} {:<5} {:>10} {:>8} {:>12} {:>12} {:>10}   failures by kind",
        "target",
        "close",
        "completed",
        "failed",
        format!("first {w}s /s"),
        format!("last {w}s /s"),
        "last/first"
    );
    for r in &runs {
        churn_line(r);
    }
    println!();
    for r in &runs {
        let c = &r.report;
        if big {
            let per5: Vec<String> =
                (0..c.timeline.len()).step_by(5).map(|s| format!("{:.0}", c.rate_between(s, s + 5))).collect();
            println!("{} {} per 5 s (conn/s): {}", r.target, c.mode.label(), per5.join(" "));
        } else {
            let pm: Vec<String> = c.per_minute().iter().map(|v| format!("{v:.0}")).collect();
            println!(
                "{} {} per minute (conn/s): {}; missed (open-loop slots skipped) {}",
                r.target,
                c.mode.label(),
                pm.join(" "),
                c.missed
            );
        }
    }
    for mode in CloseMode::ALL {
        let get = |t: &str| runs.iter().find(|r| r.target == t && r.report.mode == mode).map(|r| r.report.rate_last);
        if let (Some(ours), Some(kernel)) = (get("hyperplane"), get("kernel")) {
            let ratio = if kernel > 0.0 { ours / kernel } else { 0.0 };
            println!(
                "sustained (last {w} s), {} close: hyperplane {ours:.0}/s, kernel {kernel:.0}/s, ours/kernel {ratio:.2}x",
                mode.label()
            );
        }
    }
    println!("(JSON with the per-second timelines: target/churn.json)");
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

/// A window's rates: (offered frames/s, delivered packets/s), both over the same window.
///
/// Runs `load` on another thread; the window opens 0.2 s after the VPC counter first moves (at most 3 s after the
/// start: senders such as trafgen take a moment to set up) and lasts `window` seconds. Offered comes from
/// `progress` (the sender's running count; None: not known, 0).
fn counted<R: Send>(
    counter: &IngressCounter,
    progress: Option<&AtomicU64>,
    window: f64,
    load: impl FnOnce() -> R + Send,
) -> (f64, f64, R) {
    let read = || counter.read().expect("read the VPC counter").0;
    let sent = || progress.map_or(0, |p| p.load(Ordering::Relaxed));
    std::thread::scope(|s| {
        let h = s.spawn(load);
        let (start, c0) = (Instant::now(), read());
        while read() == c0 && start.elapsed() < Duration::from_secs(3) {
            std::thread::sleep(Duration::from_millis(20));
        }
        std::thread::sleep(Duration::from_millis(200));
        let (c1, o1, t1) = (read(), sent(), Instant::now());
        std::thread::sleep(Duration::from_secs_f64(window));
        let (c2, o2, t2) = (read(), sent(), Instant::now());
        let r = h.join().expect("the load thread");
        let el = (t2 - t1).as_secs_f64();
        (o2.saturating_sub(o1) as f64 / el, c2.saturating_sub(c1) as f64 / el, r)
    })
}

/// The measurement window for a load of `secs`.
fn window(secs: f64) -> f64 {
    (secs - 0.6).max(0.4)
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
    let (offered, delivered, sent) = counted(counter, Some(&progress), window(secs), || {
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

/// trafgen (netsniff-ng) sending `spec`'s frame (one flow) from environment 0 for `secs`, pinned to the first of
/// `--cpus`, through the qdisc like our sender; delivered packets/s counted at the VPC side. None without trafgen.
fn udp_trafgen(t: &Topo, spec: &FrameSpec, counter: &IngressCounter, secs: f64) -> Option<f64> {
    netlab::find_tool("trafgen").ok()?;
    let cfg = spec.trafgen_config();
    let path = std::env::temp_dir().join(format!("hp-trafgen-{}.cfg", std::process::id()));
    std::fs::write(&path, cfg).ok()?;
    let cpu = sender_cpus().first().copied().unwrap_or(0);
    let args = sender::trafgen_args(&t.env_link, &path, cpu, (secs * 5e6) as u64, None);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut child = t.envs[0].spawn(&args).ok()?;
    let (_, pps, ()) = counted(counter, None, window(secs), || std::thread::sleep(Duration::from_secs_f64(secs + 1.0)));
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_file(&path);
    Some(pps)
}

fn measure(t: &Topo, secs: u32) -> Figures {
    let steal0 = Steal::now();
    let mut f = Figures::default();
    if wanted("tcp") {
        let tcp = iperf(t, &[], secs);
        f.tcp_gbps = tcp["end"]["sum_received"]["bits_per_second"].as_f64().unwrap_or(0.0) / 1e9;
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
            f.trafgen_pps = udp_trafgen(t, &spec, &counter, s).unwrap_or(0.0);
            eprintln!("  trafgen one flow: delivered {:.0}/s", f.trafgen_pps);
        }
    }
    if wanted("conn") {
        let (r, n) = connect_rate(t, 2.0, true);
        (f.conn_rst_per_s, f.conn_rst_failed) = (r, n as f64);
        let (r, n) = connect_rate(t, 2.0, false);
        (f.conn_fin_per_s, f.conn_fin_failed) = (r, n as f64);
    }
    f.steal_pct = steal0.share_until(&Steal::now()) * 100.0;
    f.load1 = meter::load_average().unwrap_or(0.0);
    f
}

/// `--only sessions`: our gateway with `n` live UDP sessions made first (environment 0, source ports 2000.. ×
/// destination ports 10000.., paced), then one established flow's delivered rate. Returns (live UDP sessions
/// before the measurement, offered/s, delivered/s).
fn sessions_round(n: u64, secs: f64) -> (u64, f64, f64) {
    let extra = format!("max_sessions = 4194304\n{OPEN_QUOTAS}");
    let workers = arg_str("--workers").and_then(|v| v.parse().ok()).unwrap_or(0);
    let lab = Lab::build(&Options { envs: 1, workers, gateway_extra: extra, ..Options::default() }).expect("our lab");
    let t = Topo {
        server: &lab.server,
        envs: lab.envs.iter().collect(),
        vpc: &lab.vpc,
        vpc_link: lab.outside.clone(),
        env_link: lab.taps[0].clone(),
    };
    let spec = template(&t);
    let counter = IngressCounter::install(t.vpc, &t.vpc_link, SERVER, Verdict::Drop).expect("VPC counter");
    let dports = 64u16;
    let sports = n.div_ceil(u64::from(dports)).clamp(1, 60_000) as u16;
    let fill = Plan {
        source: Source::Flows(FrameSpec { sport: 2000, dport: 10000, ..spec.clone() }, Flows { sports, dports }),
        cpus: sender_cpus(),
        duration: Duration::from_secs(60),
        rate: Some(100_000.0),
        max_frames: Some(u64::from(sports) * u64::from(dports)),
        progress: None,
    };
    // A deep queue on the environment's TAP while filling, so that few fill frames are lost; passes over the whole
    // space (existing sessions are only refreshed) until nearly all of them are live, at most three.
    let qlen = t.envs[0].ip(&["-j", "link", "show", "dev", &t.env_link]).ok().and_then(|o| {
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).ok()?;
        v[0]["txqlen"].as_u64()
    });
    let _ = t.envs[0].ip(&["link", "set", "dev", &t.env_link, "txqueuelen", "65536"]);
    let stop = Arc::new(AtomicBool::new(false));
    let want = u64::from(sports) * u64::from(dports);
    let mut live = 0;
    for pass in 1..=3 {
        let sent = sender::send_packet(t.envs[0], &t.env_link, &fill, &stop).expect("fill");
        std::thread::sleep(Duration::from_millis(500));
        live = lab.gateway().totals().live[1];
        eprintln!(
            "  sessions: pass {pass}: {} fill frames sent in {:.1} s; {live} live UDP sessions",
            sent.frames, sent.seconds
        );
        if live * 100 >= want * 97 {
            break;
        }
    }
    // Back to the TAP's own queue for the measurement.
    let qlen = qlen.unwrap_or(1000).to_string();
    let _ = t.envs[0].ip(&["link", "set", "dev", &t.env_link, "txqueuelen", &qlen]);
    // The established flow: a first frame, then the measurement.
    let (offered, delivered) = udp_raw(&t, &spec, &counter, Flows::ONE, secs);
    (live, offered, delivered)
}

fn sessions_main(secs: u32, rounds: usize) {
    let (mut small, mut big) = (Vec::new(), Vec::new());
    for round in 1..=rounds {
        for (n, all) in [(1_000u64, &mut small), (1_000_000, &mut big)] {
            let s0 = Steal::now();
            let (live, offered, delivered) = sessions_round(n, f64::from(secs));
            let steal = s0.share_until(&Steal::now()) * 100.0;
            eprintln!(
                "round {round}: {live} live: one flow offered {offered:.0}/s, delivered {delivered:.0}/s; steal {steal:.1}%"
            );
            all.push((live as f64, offered, delivered));
        }
    }
    let med = |v: &[(f64, f64, f64)], k: usize| {
        let mut x: Vec<f64> = v.iter().map(|t| [t.0, t.1, t.2][k]).collect();
        x.sort_by(f64::total_cmp);
        x[x.len() / 2]
    };
    println!(
        "{:<44} {:>12} {:>12} {:>12}",
        "one established UDP flow, 64-byte (ours)", "live", "offered/s", "delivered/s"
    );
    for (name, v) in [("with ~1k live sessions", &small), ("with ~1M live sessions", &big)] {
        println!("{name:<44} {:>12.0} {:>12.0} {:>12.0}", med(v, 0), med(v, 1), med(v, 2));
    }
    let ratio = med(&big, 2) / med(&small, 2).max(1.0);
    println!("1M / 1k delivered: {ratio:.2} (done when >= 0.80)");
    let json = serde_json::json!({ "seconds": secs, "rounds": rounds,
        "small": { "live": med(&small, 0), "offered_pps": med(&small, 1), "delivered_pps": med(&small, 2) },
        "big": { "live": med(&big, 0), "offered_pps": med(&big, 1), "delivered_pps": med(&big, 2) },
        "ratio": ratio });
    let _ = std::fs::create_dir_all("target");
    let _ = std::fs::write("target/compare-sessions.json", serde_json::to_string_pretty(&json).unwrap_or_default());
}

/// `--only offer`: what the load generator's TAP writers (`loadgen udp --cpus`) can offer: 64-byte-payload frames
/// written into a TAP whose kernel side sits alone in a fresh namespace, where they are discarded (addressed to
/// another host). Prints frames/s for one pinned writer and for one per CPU of `--cpus` (default: all CPUs).
fn offer_main(secs: u32) {
    use dataplane_io::tap::{Tap, TapOptions};
    let ns = Netns::new(netlab::unique("hpof")).expect("namespace");
    let name = netlab::unique("hpof");
    let tap = Tap::open(&name, TapOptions::default()).expect("TAP");
    netlab::ip_batch(None, &[format!("link set {name} netns {}", ns.name())]).expect("move the TAP");
    ns.ip(&["link", "set", "dev", &name, "up"]).expect("TAP up");
    // A multi-queue TAP too: one queue per writer.
    let mq_name = netlab::unique("hpof");
    let mq = Tap::open(&mq_name, TapOptions { multi_queue: true, ..TapOptions::default() }).expect("multi-queue TAP");
    let mut queues = vec![];
    for _ in 1..std::thread::available_parallelism().map_or(1, |n| n.get()) {
        queues.push(mq.open_queue().expect("another queue"));
    }
    queues.insert(0, mq);
    netlab::ip_batch(None, &[format!("link set {mq_name} netns {}", ns.name())]).expect("move the TAP");
    ns.ip(&["link", "set", "dev", &mq_name, "up"]).expect("TAP up");
    let spec = FrameSpec {
        src_mac: [2, 0x4c, 0x47, 0, 0, 1],
        dst_mac: [2, 0x4c, 0x47, 0, 0, 2],
        src: env_addr(0),
        dst: SERVER,
        sport: 40000,
        dport: 9000,
        payload: 64,
    };
    let all: Vec<usize> = (0..std::thread::available_parallelism().map_or(1, |n| n.get())).collect();
    let many = arg_str("--cpus").map(|_| sender_cpus()).unwrap_or(all);
    println!("{:<40} {:>14} {:>10}", "TAP writers (64-byte payload, discarded)", "frames/s", "steal %");
    for (cpus, taps, what) in [
        (vec![many[0]], std::slice::from_ref(&tap), "one queue"),
        (many.clone(), std::slice::from_ref(&tap), "one queue"),
        (many.clone(), &queues[..], "a queue each"),
    ] {
        let plan = Plan {
            source: Source::Flows(spec.clone(), Flows::ONE),
            cpus: cpus.clone(),
            duration: Duration::from_secs(u64::from(secs)),
            rate: None,
            max_frames: None,
            progress: None,
        };
        let s0 = Steal::now();
        let sent = sender::send_tap(taps, &plan, &AtomicBool::new(false)).expect("send");
        let steal = s0.share_until(&Steal::now()) * 100.0;
        println!("{:<40} {:>14.0} {:>10.1}", format!("CPUs {cpus:?}, {what}"), sent.pps(), steal);
    }
}

fn ratio(a: f64, b: f64) -> String {
    if b > 0.0 {
        format!("{:.2}x", a / b)
    } else {
        "—".into()
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
            let opts = Options { envs: 2, workers, gateway_extra: OPEN_QUOTAS.into(), ..Options::default() };
            let lab = Lab::build(&opts).expect("our lab");
            let t = Topo {
                server: &lab.server,
                envs: lab.envs.iter().collect(),
                vpc: &lab.vpc,
                vpc_link: lab.outside.clone(),
                env_link: lab.taps[0].clone(),
            };
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
    let rows: [(&str, f64, f64, bool); 13] = [
        ("TCP bulk, Gbit/s (offloads on)", ours.tcp_gbps, kernel.tcp_gbps, true),
        ("UDP 64-byte one flow: offered pkt/s", ours.udp_offered_pps, kernel.udp_offered_pps, false),
        ("UDP 64-byte one flow: delivered pkt/s", ours.udp_pps, kernel.udp_pps, true),
        ("UDP new flow per packet: offered pkt/s", ours.new_offered_pps, kernel.new_offered_pps, false),
        ("UDP new flow per packet: delivered pkt/s", ours.new_pps, kernel.new_pps, true),
        ("trafgen one flow: delivered pkt/s", ours.trafgen_pps, kernel.trafgen_pps, true),
        ("TCP connections/s, RST close", ours.conn_rst_per_s, kernel.conn_rst_per_s, true),
        ("  failed connects, RST close", ours.conn_rst_failed, kernel.conn_rst_failed, false),
        ("TCP connections/s, FIN close", ours.conn_fin_per_s, kernel.conn_fin_per_s, true),
        ("  failed connects, FIN close", ours.conn_fin_failed, kernel.conn_fin_failed, false),
        ("steal time over the round, %", ours.steal_pct, kernel.steal_pct, false),
        ("1-minute load average after the round", ours.load1, kernel.load1, false),
        ("sender CPUs", sender_cpus().len() as f64, sender_cpus().len() as f64, false),
    ];
    for (name, a, b, with_ratio) in rows {
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

/// `--only outside`: our gateway with its outside on a TAP and on a veth
/// through AF_PACKET (offloads as Linux sets them; on rings and on plain
/// sockets), and the kernel, in alternating rounds; medians, and how many
/// workers took frames from the VPC side on the AF_PACKET outside.
fn outside_main(secs: u32, rounds: usize, workers: usize) {
    let (mut tap_all, mut af_all, mut plain_all, mut kernel_all) = (vec![], vec![], vec![], vec![]);
    let mut busy_workers = vec![];
    for round in 1..=rounds {
        // The TAP outside, AF_PACKET on rings (the default), AF_PACKET on
        // plain sockets (`ring = false`).
        for (af_packet, ring) in [(false, false), (true, true), (true, false)] {
            let outside_extra = if af_packet && !ring { "ring = false".into() } else { String::new() };
            let opts = Options {
                envs: 2,
                workers,
                af_packet,
                outside_extra,
                gateway_extra: OPEN_QUOTAS.into(),
                ..Options::default()
            };
            let lab = Lab::build(&opts).expect("our lab");
            let vpc_link = if af_packet { "hplvo".to_string() } else { lab.outside.clone() };
            let t = Topo {
                server: &lab.server,
                envs: lab.envs.iter().collect(),
                vpc: &lab.vpc,
                vpc_link,
                env_link: lab.taps[0].clone(),
            };
            let f = measure(&t, secs);
            let name = match (af_packet, lab.gateway().outside_ring) {
                (false, _) => "tap",
                (true, true) => "af-packet on rings",
                (true, false) => "af-packet on plain sockets",
            };
            let inbound: Vec<u64> = lab.gateway().counters().iter().map(|c| c.inbound.packets.get()).collect();
            eprintln!(
                "round {round}: hyperplane, {name} outside ({} workers, {}): {f:?}; inbound frames per worker {inbound:?}",
                lab.gateway().workers(),
                lab.gateway().outside_rx
            );
            match (af_packet, ring) {
                (false, _) => tap_all.push(f),
                (true, true) => {
                    busy_workers.push(inbound.iter().filter(|&&n| n > 0).count() as f64);
                    af_all.push(f);
                }
                (true, false) => plain_all.push(f),
            }
        }
        kernel_all.push(measure_kernel(round, secs));
    }
    let tap = Figures::median(&tap_all);
    let (af, plain, kernel) = (Figures::median(&af_all), Figures::median(&plain_all), Figures::median(&kernel_all));
    println!(
        "{:<40} {:>12} {:>12} {:>12} {:>12} {:>9} {:>9} {:>11}",
        "work (same run, medians)",
        "TAP outside",
        "AF rings",
        "AF plain",
        "kernel NAT",
        "AF/TAP",
        "AF/kernel",
        "rings/plain"
    );
    type Row = (&'static str, fn(&Figures) -> f64);
    let rows: [Row; 5] = [
        ("TCP bulk, Gbit/s", |f| f.tcp_gbps),
        ("UDP 64-byte one flow, delivered pkt/s", |f| f.udp_pps),
        ("UDP new flow per packet, delivered pkt/s", |f| f.new_pps),
        ("TCP connections/s, RST close", |f| f.conn_rst_per_s),
        ("TCP connections/s, FIN close", |f| f.conn_fin_per_s),
    ];
    for (name, get) in rows {
        let (a, b, p, c) = (get(&tap), get(&af), get(&plain), get(&kernel));
        println!(
            "{name:<40} {a:>12.2} {b:>12.2} {p:>12.2} {c:>12.2} {:>9} {:>9} {:>11}",
            ratio(b, a),
            ratio(b, c),
            ratio(b, p)
        );
    }
    busy_workers.sort_by(f64::total_cmp);
    println!(
        "workers that took frames from the VPC on the AF_PACKET outside on rings (fewest over the rounds): {}",
        busy_workers.first().copied().unwrap_or(0.0)
    );
}

/// One round of [`measure`] against the kernel's masquerade (two
/// environments, a fresh lab).
fn measure_kernel(round: usize, secs: u32) -> Figures {
    let k = KernelNat::build("hpkb", 2, true).expect("kernel lab");
    let t = Topo {
        server: k.server_ns(),
        envs: (0..2).map(|i| k.env_ns(i)).collect(),
        vpc: k.vpc_ns(),
        vpc_link: "gw".into(),
        env_link: netlab::ENV_LINK.into(),
    };
    let f = measure(&t, secs);
    eprintln!("round {round}: kernel: {f:?}");
    eprintln!("round {round}: steal {:.1}%, load average {:.1} (kernel)", f.steal_pct, f.load1);
    f
}

/// `--only attach`: one environment namespace (veth `e0`, its host-side
/// end `peer`) reaching our gateway through a bridge to a TAP attachment,
/// and by a direct `af-packet` attachment on `peer`, in alternating rounds;
/// TCP bulk and UDP medians, direct / bridged.
fn attach_main(secs: u32, rounds: usize, workers: usize) {
    if netlab::find_tool("iperf3").is_err() {
        eprintln!("compare: TCP bulk needs iperf3 (apt-get install iperf3); skipping");
        return;
    }
    // Bridged TAP, direct on packet rings (the default), direct on plain
    // sockets (`ring = false`).
    const NAMES: [&str; 3] = ["bridged TAP", "direct af-packet", "direct, ring = false"];
    let mut all: [Vec<Figures>; 3] = [vec![], vec![], vec![]];
    for round in 1..=rounds {
        for (k, name) in NAMES.iter().enumerate() {
            let direct = k > 0;
            let env = Netns::new(format!("{}e", netlab::unique("hpl"))).expect("environment namespace");
            let peer = netlab::unique("hpl");
            netlab::veth("e0", Some(&env), &peer, None).expect("environment veth");
            env.ip_batch(&[
                "link set e0 up".to_string(),
                format!("addr add {}/32 dev e0", env_addr(0)),
                format!("route add {INSIDE_GATEWAY} dev e0"),
                format!("route add default via {INSIDE_GATEWAY}"),
            ])
            .expect("environment address");
            let base = Options { workers, gateway_extra: OPEN_QUOTAS.into(), ..Options::default() };
            let lab = if direct {
                netlab::ip_batch(None, &[format!("link set {peer} up")]).expect("peer up");
                let attachment_extra = if k == 2 { "ring = false".to_string() } else { String::new() };
                let lab = Lab::build(&Options { direct: Some(vec![peer.clone()]), attachment_extra, ..base })
                    .expect("direct lab");
                assert_eq!(lab.gateway().inside[0].on_rings(), k == 1, "{name}");
                lab
            } else {
                let lab = Lab::build(&Options { bridged_attachments: Some(1), ..base }).expect("bridged lab");
                lab.attach_to_bridges(std::slice::from_ref(&peer), 1000).expect("bridge port");
                lab
            };
            let t = Topo {
                server: &lab.server,
                envs: vec![&env],
                vpc: &lab.vpc,
                vpc_link: lab.outside.clone(),
                env_link: "e0".into(),
            };
            let f = measure(&t, secs);
            let totals = lab.gateway().totals();
            eprintln!("round {round}: {name} ({} workers): {f:?}; drops {:?}", lab.gateway().workers(), totals.drops);
            all[k].push(f);
            drop(lab);
            drop(env);
        }
    }
    let [bridged, direct, plain] = [0, 1, 2].map(|k| Figures::median(&all[k]));
    println!(
        "{:<44} {:>12} {:>12} {:>12} {:>9} {:>9}",
        "work (same run, medians)", "bridged TAP", "direct", "direct plain", "direct/br", "ring/plain"
    );
    type Row = (&'static str, fn(&Figures) -> f64);
    let rows: [Row; 5] = [
        ("TCP bulk, Gbit/s", |f| f.tcp_gbps),
        ("UDP 64-byte one flow, offered pkt/s", |f| f.udp_offered_pps),
        ("UDP 64-byte one flow, delivered pkt/s", |f| f.udp_pps),
        ("UDP new flow per packet, delivered pkt/s", |f| f.new_pps),
        ("steal time over the round, %", |f| f.steal_pct),
    ];
    for (name, get) in rows {
        let (a, b, c) = (get(&bridged), get(&direct), get(&plain));
        println!("{name:<44} {a:>12.2} {b:>12.2} {c:>12.2} {:>9} {:>9}", ratio(b, a), ratio(b, c));
    }
    let json = serde_json::json!({
        "seconds": secs,
        "rounds": rounds,
        "bridged_tap": bridged.json(),
        "direct_af_packet": direct.json(),
        "direct_af_packet_plain": plain.json(),
        "rounds_bridged_tap": all[0].iter().map(Figures::json).collect::<Vec<_>>(),
        "rounds_direct_af_packet": all[1].iter().map(Figures::json).collect::<Vec<_>>(),
        "rounds_direct_af_packet_plain": all[2].iter().map(Figures::json).collect::<Vec<_>>(),
    });
    let _ = std::fs::create_dir_all("target");
    let _ = std::fs::write("target/compare-attach.json", serde_json::to_string_pretty(&json).unwrap_or_default());
}
