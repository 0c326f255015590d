//! Our gateway against the Linux kernel's NAT (nftables masquerade), side by
//! side in one run, on the same namespace address plan:
//!
//! - TCP bulk, Gbit/s (iperf3, 5 s, one stream), offloads on;
//! - UDP 64-byte datagrams per second delivered, flooding (iperf3 `-u -l 64
//!   -b 0`), and the highest paced rate delivered with at most 1% loss
//!   (a binary search, one second per trial); both ends use 4 MB socket
//!   buffers (`-w 4M`), so the receiving socket is not what overflows;
//! - new TCP connections per second (connect, the client closes, from two
//!   environments, four threads each, 2 s; `--rst` closes with RST).
//!
//! Run as root: `cargo bench --bench compare` (`-- --quick` for 2-second
//! iperf3 runs; `--rounds N`, default 3, alternating ours and the kernel,
//! medians reported; `--workers N` for our gateway; `--only tcp|udp|conn`).
//! Needs iperf3, nft, ip, sysctl. Prints each figure for both and the ratio
//! (ours / kernel), and writes `target/compare.json`. Every load is bounded
//! in time and runs only between namespaces this program made.
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
//! `--churn-close rst|fin|both` overrides the close modes (defaults: both
//! for `churn`, rst for `churn1k`). Both write `target/churn.json` (the
//! reports with their per-second timelines), after every run.

use netlab::churn::{self, ChurnReport, ClientConfig, CloseMode, ServerReport};
use netlab::lab::{Lab, Options};
use netlab::{KernelNat, Netns, SERVER};
use std::net::{SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

struct Topo<'a> {
    server: &'a Netns,
    envs: Vec<&'a Netns>,
}

#[derive(Clone, Copy, Debug, Default)]
struct Figures {
    tcp_gbps: f64,
    udp_pps: f64,
    udp_lossless_pps: f64,
    conn_per_s: f64,
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
            udp_pps: med(|f| f.udp_pps),
            udp_lossless_pps: med(|f| f.udp_lossless_pps),
            conn_per_s: med(|f| f.conn_per_s),
        }
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

fn connect_rate(t: &Topo, secs: f64) -> f64 {
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
    let deadline = Instant::now() + Duration::from_secs_f64(secs);
    let mut clients = vec![];
    let rst = std::env::args().any(|a| a == "--rst");
    for ns in &t.envs {
        for _ in 0..4 {
            let done = Arc::clone(&done);
            clients.push(ns.thread(move || {
                let dst = SocketAddr::from(SocketAddrV4::new(SERVER, 7600));
                while Instant::now() < deadline {
                    if let Ok(c) = TcpStream::connect_timeout(&dst, Duration::from_millis(500)) {
                        if rst {
                            linger_zero(&c);
                        }
                        done.fetch_add(1, Ordering::Relaxed);
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
    done.load(Ordering::Relaxed) as f64 / el
}

/// SO_LINGER 0: close sends an RST and leaves no TIME_WAIT.
fn linger_zero(c: &TcpStream) {
    let _ = churn::set_linger_zero(c);
}

/// Which measurements to run (`--only tcp|udp|conn`; all by default).
fn wanted(what: &str) -> bool {
    let args: Vec<String> = std::env::args().collect();
    match args.iter().position(|a| a == "--only") {
        Some(i) => args.get(i + 1).is_some_and(|w| w == what),
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
    let (report, server) = churn::run(&lab.server, &nss, cfg).expect("churn against ours");
    let totals = lab.gateway().totals();
    eprintln!(
        "  gateway: {} packets out, {} in; sessions live {:?} (tcp, udp, icmp); drops {:?}",
        totals.outbound.0, totals.inbound.0, totals.live, totals.drops
    );
    let drops = totals.drops.iter().map(|(r, n)| (r.label().to_owned(), *n)).collect();
    ChurnRun { target: "hyperplane", report, server, outside: lab.eni, drops }
}

/// Churn against the kernel's masquerade, `envs` environments.
fn churn_kernel(envs: usize, cfg: &ClientConfig) -> ChurnRun {
    let k = KernelNat::build("hpkc", envs, true).expect("kernel lab");
    let nss: Vec<&Netns> = (0..envs).map(|i| k.env_ns(i)).collect();
    eprintln!("churn: kernel, {} close, {} s ...", cfg.mode.label(), cfg.secs);
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
        for target in ["hyperplane", "kernel"] {
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

fn measure(t: &Topo, secs: u32) -> Figures {
    let mut f = Figures::default();
    if wanted("tcp") {
        let tcp = iperf(t, &[], secs);
        f.tcp_gbps = tcp["end"]["sum_received"]["bits_per_second"].as_f64().unwrap_or(0.0) / 1e9;
    }
    if wanted("udp") {
        let udp = iperf(t, &["-u", "-l", "64", "-b", "0", "-w", "4M"], secs);
        let sum = &udp["end"]["sum"];
        let packets = sum["packets"].as_f64().unwrap_or(0.0);
        let lost = sum["lost_packets"].as_f64().unwrap_or(0.0);
        let seconds = sum["seconds"].as_f64().unwrap_or(1.0).max(0.001);
        f.udp_pps = (packets - lost).max(0.0) / seconds;
        eprintln!("  udp: {packets} sent, {lost} lost in {seconds:.1} s");
    }
    if wanted("udp") {
        f.udp_lossless_pps = udp_lossless(t);
    }
    if wanted("conn") {
        f.conn_per_s = connect_rate(t, 2.0);
    }
    f
}

/// One paced iperf3 UDP run of 64-byte datagrams at `pps` for a second:
/// (packets per second sent, fraction lost).
fn udp_at(t: &Topo, pps: f64) -> (f64, f64) {
    let bps = format!("{}", (pps * 64.0 * 8.0) as u64);
    let udp = iperf(t, &["-u", "-l", "64", "-b", &bps, "-w", "4M"], 1);
    let sum = &udp["end"]["sum"];
    let packets = sum["packets"].as_f64().unwrap_or(0.0);
    let lost = sum["lost_packets"].as_f64().unwrap_or(packets);
    let seconds = sum["seconds"].as_f64().unwrap_or(1.0).max(0.001);
    (packets / seconds, if packets > 0.0 { lost / packets } else { 1.0 })
}

/// The highest 64-byte UDP rate delivered with at most 1% loss (RFC 2544's
/// throughput, with a loss allowance for a shared machine): a binary
/// search over the offered rate, one second per trial.
fn udp_lossless(t: &Topo) -> f64 {
    let (mut lo, mut hi) = (10_000.0f64, 800_000.0f64);
    let mut best = 0.0f64;
    for _ in 0..7 {
        let rate = (lo * hi).sqrt();
        let (sent, loss) = udp_at(t, rate);
        eprintln!("  udp at {rate:.0} pps: {sent:.0} sent/s, {:.2}% lost", loss * 100.0);
        if loss <= 0.01 {
            best = best.max(sent * (1.0 - loss));
            lo = rate;
        } else {
            hi = rate;
        }
    }
    best
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
    if netlab::find_tool("iperf3").is_err() {
        eprintln!("compare: needs iperf3 (apt-get install iperf3); skipping");
        return;
    }
    let quick = std::env::args().any(|a| a == "--quick");
    let secs = if quick { 2 } else { 5 };

    let arg = |name: &str| std::env::args().skip_while(|a| a != name).nth(1).and_then(|v| v.parse::<usize>().ok());
    let workers = arg("--workers").unwrap_or(0);
    let rounds = arg("--rounds").unwrap_or(3).max(1);
    // Rounds alternate between the two, so drift on a shared machine hits
    // both alike; each figure is the median over the rounds.
    let (mut ours_all, mut kernel_all) = (vec![], vec![]);
    for round in 1..=rounds {
        {
            let lab = Lab::build(&Options { envs: 2, workers, ..Options::default() }).expect("our lab");
            let t = Topo { server: &lab.server, envs: lab.envs.iter().collect() };
            let f = measure(&t, secs);
            let totals = lab.gateway().totals();
            eprintln!("round {round}: hyperplane ({} workers): {f:?}", lab.gateway().workers());
            eprintln!(
                "  gateway: {} packets out, {} in; drops {:?}",
                totals.outbound.0, totals.inbound.0, totals.drops
            );
            ours_all.push(f);
        }
        {
            let k = KernelNat::build("hpkb", 2, true).expect("kernel lab");
            let t = Topo { server: k.server_ns(), envs: (0..2).map(|i| k.env_ns(i)).collect() };
            let f = measure(&t, secs);
            eprintln!("round {round}: kernel: {f:?}");
            kernel_all.push(f);
        }
    }
    let (ours, kernel) = (Figures::median(&ours_all), Figures::median(&kernel_all));
    println!("{:<34} {:>12} {:>12} {:>7}", "work (same run, same machine)", "hyperplane", "kernel NAT", "ratio");
    let rows = [
        ("TCP bulk, Gbit/s (offloads on)", ours.tcp_gbps, kernel.tcp_gbps),
        ("UDP 64-byte flood, delivered pkt/s", ours.udp_pps, kernel.udp_pps),
        ("UDP 64-byte, pkt/s at <=1% loss", ours.udp_lossless_pps, kernel.udp_lossless_pps),
        ("TCP connections/s", ours.conn_per_s, kernel.conn_per_s),
    ];
    for (name, a, b) in rows {
        println!("{name:<34} {a:>12.2} {b:>12.2} {:>6.2}x", if b > 0.0 { a / b } else { 0.0 });
    }
    let json = serde_json::json!({
        "seconds": secs,
        "rounds": rounds,
        "hyperplane": { "tcp_gbps": ours.tcp_gbps, "udp_pps": ours.udp_pps,
            "udp_lossless_pps": ours.udp_lossless_pps, "conn_per_s": ours.conn_per_s },
        "kernel": { "tcp_gbps": kernel.tcp_gbps, "udp_pps": kernel.udp_pps,
            "udp_lossless_pps": kernel.udp_lossless_pps, "conn_per_s": kernel.conn_per_s },
    });
    let _ = std::fs::create_dir_all("target");
    let _ = std::fs::write("target/compare.json", serde_json::to_string_pretty(&json).unwrap_or_default());
}
