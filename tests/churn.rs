//! End to end: a shortened connection-churn soak through the gateway.
//!
//! 8 environment namespaces (one TAP each) × 2 threads connect to 16 ports of a server in the VPC namespace and close
//! every connection at once, for 25 s, open loop at 1,000 new connections/s per environment (8,000/s in all, about
//! half of what the gateway carries on a 2-core machine, so a gateway that keeps up shows a flat rate whatever else
//! the machine does), once closing with an RST (`SO_LINGER` 0) and once with an orderly close (the client's FIN
//! first). The gateway is given small resources so that the soak runs dry at once if closed connections keep what
//! they held: one ENI address (`max_eni_addresses = 1`) with 2,000 TCP ports (`port_range = "20000-21999"`), the
//! rest at the defaults (among them `tcp_transitory` and `tcp_reset` 240 s, `port_quarantine_secs` 120).
//!
//! What a NAT has to do to pass: keep opening connections at the rate it started with (the rate over the last 5 s at
//! least 0.8 × the rate over the first 5 s), fail at most 0.1% of them, and show every one to the server from the ENI
//! address. At 8,000 connections/s, 2,000 ports last a quarter of a second unless the ports of closed and reset
//! sessions are handed out again as new SYNs need them (each port is then reused four times a second), so a gateway
//! that recycles closed/reset sessions and their ports under pressure passes with room to spare, and one that holds
//! each closed session for 240 s and each freed port for another 120 s collapses after the first 2,000.
//!
//! The two tests take turns (a lock), so they do not share the machine's cores. Each takes about 27 s. They need
//! root; without it they say so and return. An ignored third test runs the RST soak against the kernel's
//! masquerade, to show that the criteria hold for a NAT that recycles closed connections.

use netlab::churn::{self, ChurnReport, ClientConfig, CloseMode, ServerReport};
use netlab::lab::{Lab, Options};
use netlab::{KernelNat, Netns};
use std::net::Ipv4Addr;
use std::sync::Mutex;
use std::time::Duration;

/// Environments (namespaces, one TAP each).
const ENVS: usize = 8;
/// Client threads per environment.
const THREADS: usize = 2;
/// New connections per second offered by each environment (open loop).
const RATE_PER_ENV: f64 = 1000.0;
/// Length of each soak, seconds.
const SECS: u32 = 25;
/// First and last windows compared, seconds.
const WINDOW: u32 = 5;
/// The gateway's resources: one ENI address, 2,000 ports.
const GATEWAY_EXTRA: &str = "port_range = \"20000-21999\"\nmax_eni_addresses = 1";

/// One soak at a time: both tests load every core.
static SERIAL: Mutex<()> = Mutex::new(());

fn config(mode: CloseMode) -> ClientConfig {
    ClientConfig {
        threads_per_env: THREADS,
        mode,
        secs: SECS,
        rate_per_env: Some(RATE_PER_ENV),
        window_secs: WINDOW,
        connect_timeout: Duration::from_secs(2),
        ..ClientConfig::default()
    }
}

fn soak(mode: CloseMode) {
    let _turn = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let lab = Lab::build(&Options { envs: ENVS, gateway_extra: GATEWAY_EXTRA.into(), ..Options::default() })
        .expect("lab builds");
    let envs: Vec<&Netns> = lab.envs.iter().collect();
    let (r, seen) = churn::run(&lab.server, &envs, &config(mode)).expect("churn runs");
    let totals = lab.gateway().totals();
    eprintln!("{}", summary(&r, &seen, lab.eni));
    eprintln!("  gateway: sessions live {:?} (tcp, udp, icmp); drops {:?}", totals.live, totals.drops);
    let context = format!("{}\n  gateway drops: {:?}", summary(&r, &seen, lab.eni), totals.drops);
    check(mode, &r, &seen, lab.eni, &context);
}

/// The soak's pass criteria.
fn check(mode: CloseMode, r: &ChurnReport, seen: &ServerReport, outside: Ipv4Addr, context: &str) {
    assert!(r.rate_first > 0.0, "nothing completed in the first {WINDOW} s\n{context}");
    assert!(
        r.rate_last >= 0.8 * r.rate_first,
        "{mode:?}: the rate fell from {:.0}/s (first {WINDOW} s) to {:.0}/s (last {WINDOW} s), {:.2}x < 0.8x\n{context}",
        r.rate_first,
        r.rate_last,
        r.last_over_first,
    );
    assert!(
        r.failure_fraction <= 0.001,
        "{mode:?}: {} failures for {} completed ({:.3}% > 0.1%): {:?}\n{context}",
        r.failed,
        r.completed,
        100.0 * r.failure_fraction,
        r.failures,
    );
    assert!(seen.accepted > 0, "{mode:?}: the server accepted nothing\n{context}");
    assert_eq!(
        seen.not_from(outside),
        0,
        "{mode:?}: connections arrived from other addresses than {outside}\n{context}"
    );
}

fn summary(r: &ChurnReport, seen: &ServerReport, outside: Ipv4Addr) -> String {
    format!(
        "churn {} ({} envs x {} threads, {} s, {}): {} completed, {} failed {:?}, {} missed\n  \
         rate first {} s {:.0}/s, last {} s {:.0}/s, last/first {:.2}; failures {:.3}% of completed\n  \
         per second: {:?}\n  server: {} accepted, {} fin, {} reset, {} abandoned, peers {:?} (outside address {})",
        r.mode.label(),
        r.envs,
        r.threads_per_env,
        r.secs,
        match r.rate_per_env {
            Some(rate) => format!("open loop {rate:.0}/s per env"),
            None => "closed loop".into(),
        },
        r.completed,
        r.failed,
        r.failures,
        r.missed,
        r.window_secs,
        r.rate_first,
        r.window_secs,
        r.rate_last,
        r.last_over_first,
        100.0 * r.failure_fraction,
        r.completed_series(),
        seen.accepted,
        seen.fin,
        seen.reset,
        seen.abandoned,
        seen.peers,
        outside,
    )
}

#[test]
#[cfg_attr(not(root_tests), ignore = "needs root: network namespaces and TAP devices")]
fn churn_with_rst_close_keeps_its_rate() {
    netlab::require_root();
    soak(CloseMode::Rst);
}

#[test]
#[cfg_attr(not(root_tests), ignore = "needs root: network namespaces and TAP devices")]
fn churn_with_fin_close_keeps_its_rate() {
    netlab::require_root();
    soak(CloseMode::Fin);
}

/// The positive control (not run by default: `cargo test --release --test churn -- --ignored`): the RST soak
/// against the kernel's nftables masquerade on the same address plan (its conntrack drops a reset connection's entry
/// after 10 s), which passes these criteria on this machine. The FIN soak is left out: there the kernel keeps every
/// closed connection in TIME_WAIT for 120 s, and once the host's `nf_conntrack_max` (262,144 here) entries are taken
/// (after about 33 s at 8,000/s, so just after this soak's end; after 13 s closed loop) it drops new SYNs itself.
#[test]
#[ignore = "positive control of the pass criteria against the kernel NAT; about 27 s"]
fn kernel_nat_passes_the_rst_soak() {
    netlab::require_root();
    let _turn = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let k = KernelNat::build("hpct", ENVS, true).expect("kernel lab builds");
    let envs: Vec<&Netns> = (0..ENVS).map(|i| k.env_ns(i)).collect();
    let (r, seen) = churn::run(k.server_ns(), &envs, &config(CloseMode::Rst)).expect("churn runs");
    let context = summary(&r, &seen, k.eni_addr());
    eprintln!("kernel: {context}");
    check(CloseMode::Rst, &r, &seen, k.eni_addr(), &context);
}
