//! `--only churn` and `--only churn1k`: sustained connection churn, ours against the kernel (see the
//! crate doc in `main.rs`).

use super::*;

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
pub(super) fn churn_main(which: &str) {
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
