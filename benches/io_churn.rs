//! Connection churn through the gateway on each I/O path, with the system
//! calls the workers made per forwarded packet.
//!
//! For each round, for each path (`syscalls`, then `uring`, then `uring`
//! with a busy-poll when `--busy-poll-us` is given, then `uring` with the
//! workers pinned when `--pin 0,1` names CPUs: `io.cpus`), a fresh lab (`--envs`
//! environment namespaces, one TAP each, default worker count) carries a
//! closed-loop connect + RST churn (`--threads` per environment) for
//! `--secs` seconds; with `--kernel`, the kernel's masquerade carries the
//! same load once per round for the ratio. Prints connections/s and the
//! gateway's system calls per packet, by kind, and the CPU time its worker
//! threads used per packet (time on a CPU, from `/proc/self/task/*/schedstat`).
//!
//! Run as root: `cargo bench --bench io_churn -- --secs 10
//! --rounds 2 --kernel` (`--only syscalls|uring` for one path; `--envs`,
//! `--threads`, `--busy-poll-us`, `--pin`). Every load is bounded in time and stays between
//! namespaces this program made. Figures on a shared machine are noisy:
//! compare paths within one run.

use netlab::churn::{self, ClientConfig, CloseMode};
use netlab::lab::{Lab, Options};
use netlab::{KernelNat, Netns};

fn arg(name: &str) -> Option<u64> {
    std::env::args().skip_while(|a| a != name).nth(1).and_then(|v| v.parse().ok())
}

/// CPU time of this process's worker threads (`hp-worker-*`), in
/// nanoseconds (`/proc/self/task/*/schedstat`: time on a CPU, user and
/// system).
fn worker_cpu_ns() -> u64 {
    let mut sum = 0;
    for t in std::fs::read_dir("/proc/self/task").into_iter().flatten().flatten() {
        let p = t.path();
        let comm = std::fs::read_to_string(p.join("comm")).unwrap_or_default();
        if !comm.starts_with("hp-worker") {
            continue;
        }
        let stat = std::fs::read_to_string(p.join("schedstat")).unwrap_or_default();
        sum += stat.split_whitespace().next().and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    }
    sum
}

struct Run {
    label: String,
    rate: f64,
    failed: u64,
    syscalls: Option<([u64; 7], u64)>,
    /// Worker CPU time per forwarded packet, microseconds.
    cpu_us_per_packet: f64,
}

fn ours(label: &str, extra: String, envs: usize, cfg: &ClientConfig) -> Run {
    let lab = Lab::build(&Options { envs, gateway_extra: extra, ..Options::default() }).expect("our lab");
    let nss: Vec<&Netns> = lab.envs.iter().collect();
    let before = lab.gateway().syscalls();
    let t0 = lab.gateway().totals();
    let cpu0 = worker_cpu_ns();
    let (r, _) = churn::run(&lab.server, &nss, cfg).expect("churn against ours");
    let cpu = worker_cpu_ns() - cpu0;
    let after = lab.gateway().syscalls();
    let t1 = lab.gateway().totals();
    let mut calls = [0u64; 7];
    for (c, (a, b)) in calls.iter_mut().zip(after.iter().zip(before)) {
        *c = a - b;
    }
    let packets = (t1.outbound.0 + t1.inbound.0) - (t0.outbound.0 + t0.inbound.0);
    eprintln!(
        "  {label} ({}, {} workers): {:.0} conn/s, {} failed; drops {:?}",
        lab.gateway().io_backend(),
        lab.gateway().workers(),
        r.rate,
        r.failed,
        t1.drops
    );
    let cpu_us_per_packet = if packets == 0 { 0.0 } else { cpu as f64 / 1e3 / packets as f64 };
    Run { label: label.into(), rate: r.rate, failed: r.failed, syscalls: Some((calls, packets)), cpu_us_per_packet }
}

fn kernel(envs: usize, cfg: &ClientConfig) -> Run {
    let k = KernelNat::build("hpio", envs, true).expect("kernel lab");
    let nss: Vec<&Netns> = (0..envs).map(|i| k.env_ns(i)).collect();
    let (r, _) = churn::run(k.server_ns(), &nss, cfg).expect("churn against the kernel");
    eprintln!("  kernel: {:.0} conn/s, {} failed", r.rate, r.failed);
    Run { label: "kernel".into(), rate: r.rate, failed: r.failed, syscalls: None, cpu_us_per_packet: 0.0 }
}

fn main() {
    if !netlab::is_root() {
        eprintln!("io_churn: needs root (namespaces, TAPs); skipping");
        return;
    }
    let secs = arg("--secs").unwrap_or(10) as u32;
    let envs = arg("--envs").unwrap_or(2) as usize;
    let threads = arg("--threads").unwrap_or(4) as usize;
    let rounds = arg("--rounds").unwrap_or(1).max(1);
    let busy = arg("--busy-poll-us");
    let with_kernel = std::env::args().any(|a| a == "--kernel");
    let pin = std::env::args().skip_while(|a| a != "--pin").nth(1);
    let only = std::env::args().skip_while(|a| a != "--only").nth(1);
    let run = |path: &str| only.as_deref().is_none_or(|o| o == path);
    let cfg = ClientConfig {
        threads_per_env: threads,
        mode: CloseMode::Rst,
        secs,
        window_secs: (secs / 2).max(1),
        ..ClientConfig::default()
    };
    let mut runs = Vec::new();
    for round in 1..=rounds {
        eprintln!("round {round}: {envs} environments x {threads} threads, connect + RST, {secs} s, closed loop");
        if run("syscalls") {
            runs.push(ours("syscalls", "io.backend = \"syscalls\"".into(), envs, &cfg));
        }
        if run("uring") {
            runs.push(ours("uring", "io.backend = \"uring\"".into(), envs, &cfg));
        }
        if let Some(us) = busy {
            let extra = format!("io.backend = \"uring\"\nio.busy_poll_us = {us}");
            runs.push(ours(&format!("uring+busy{us}us"), extra, envs, &cfg));
        }
        if let Some(cpus) = &pin {
            let extra = format!("io.backend = \"uring\"\nio.cpus = [{cpus}]");
            runs.push(ours(&format!("uring+pin{}", cpus.replace(',', "-")), extra, envs, &cfg));
        }
        if with_kernel {
            runs.push(kernel(envs, &cfg));
        }
    }
    let kernel_rate = {
        let k: Vec<f64> = runs.iter().filter(|r| r.label == "kernel").map(|r| r.rate).collect();
        (!k.is_empty()).then(|| k.iter().sum::<f64>() / k.len() as f64)
    };
    println!(
        "{:<16} {:>9} {:>7} {:>8} {:>9} {:>10}  syscalls by kind (read write epoll_wait io_uring_enter send recv wake)",
        "path", "conn/s", "failed", "/kernel", "sc/packet", "cpu us/pkt"
    );
    for r in &runs {
        let ratio = kernel_rate.map_or("-".into(), |k| format!("{:.2}", r.rate / k));
        match &r.syscalls {
            Some((calls, packets)) => {
                let total: u64 = calls.iter().sum();
                let per = if *packets == 0 { 0.0 } else { total as f64 / *packets as f64 };
                println!(
                    "{:<16} {:>9.0} {:>7} {:>8} {:>9.2} {:>10.2}  {calls:?}",
                    r.label, r.rate, r.failed, ratio, per, r.cpu_us_per_packet
                );
            }
            None => println!("{:<16} {:>9.0} {:>7} {:>8} {:>9}", r.label, r.rate, r.failed, ratio, "-"),
        }
    }
}
