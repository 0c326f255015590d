//! End to end: a shortened connection-churn soak through the gateway.
//!
//! 8 environment namespaces (one TAP each) × 2 threads connect to 16 ports of a server in the VPC namespace and close
//! every connection at once, for 25 s, closed loop, once closing with an RST (`SO_LINGER` 0) and once with an orderly
//! close (the client's FIN first). The gateway is given small resources so that the soak runs dry within seconds if
//! closed connections keep what they held: one ENI address (`max_eni_addresses = 1`) with 2,000 TCP ports
//! (`port_range = "20000-21999"`), the rest at the defaults (among them `tcp_transitory` and `tcp_reset` 240 s,
//! `port_quarantine_secs` 120).
//!
//! What a NAT has to do to pass: keep opening connections at the rate it started with (the rate over the last 5 s at
//! least 0.8 × the rate over the first 5 s), fail at most 0.1% of them, and show every one to the server from the ENI
//! address. At the rates these tests reach (thousands of connections per second) 2,000 ports last well under a
//! second unless the ports of closed and reset sessions are handed out again as the new SYNs need them, so a
//! gateway that recycles closed/reset sessions (and their ports) under pressure passes with room to spare, and one
//! that holds each closed session for 240 s and each freed port for another 120 s collapses to zero almost at once.
//!
//! The two tests take turns (a lock), so they do not share the machine's cores. Each takes about 27 s. They need
//! root; without it they say so and return.

use control::lab::{Lab, Options};
use control::netlab::churn::{self, ChurnReport, ClientConfig, CloseMode, ServerReport};
use control::netlab::{self, Netns};
use std::sync::Mutex;
use std::time::Duration;

/// Environments (namespaces, one TAP each).
const ENVS: usize = 8;
/// Client threads per environment.
const THREADS: usize = 2;
/// Length of each soak, seconds.
const SECS: u32 = 25;
/// First and last windows compared, seconds.
const WINDOW: u32 = 5;
/// The gateway's resources: one ENI address, 2,000 ports.
const GATEWAY_EXTRA: &str = "port_range = \"20000-21999\"\nmax_eni_addresses = 1";

/// One soak at a time: both tests load every core.
static SERIAL: Mutex<()> = Mutex::new(());

fn root() -> bool {
    if netlab::is_root() {
        true
    } else {
        eprintln!("skipping: needs root (network namespaces and TAP devices)");
        false
    }
}

fn soak(mode: CloseMode) {
    let _turn = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let lab = Lab::build(&Options { envs: ENVS, gateway_extra: GATEWAY_EXTRA.into(), ..Options::default() })
        .expect("lab builds");
    let envs: Vec<&Netns> = lab.envs.iter().collect();
    let cfg = ClientConfig {
        threads_per_env: THREADS,
        mode,
        secs: SECS,
        window_secs: WINDOW,
        connect_timeout: Duration::from_secs(2),
        ..ClientConfig::default()
    };
    let (r, seen) = churn::run(&lab.server, &envs, &cfg).expect("churn runs");
    let totals = lab.gateway().totals();
    eprintln!("{}", summary(&r, &seen, &lab));
    eprintln!("  gateway: sessions live {:?} (tcp, udp, icmp); drops {:?}", totals.live, totals.drops);
    let context = format!("{}\n  gateway drops: {:?}", summary(&r, &seen, &lab), totals.drops);

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
    assert_eq!(seen.not_from(lab.eni), 0, "{mode:?}: connections arrived from other addresses than the ENI\n{context}");
}

fn summary(r: &ChurnReport, seen: &ServerReport, lab: &Lab) -> String {
    format!(
        "churn {} ({} envs x {} threads, {} s): {} completed, {} failed {:?}\n  \
         rate first {} s {:.0}/s, last {} s {:.0}/s, last/first {:.2}; failures {:.3}% of completed\n  \
         per second: {:?}\n  server: {} accepted, {} fin, {} reset, {} abandoned, peers {:?} (ENI {})",
        r.mode.label(),
        r.envs,
        r.threads_per_env,
        r.secs,
        r.completed,
        r.failed,
        r.failures,
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
        lab.eni,
    )
}

#[test]
fn churn_with_rst_close_keeps_its_rate() {
    if !root() {
        return;
    }
    soak(CloseMode::Rst);
}

#[test]
fn churn_with_fin_close_keeps_its_rate() {
    if !root() {
        return;
    }
    soak(CloseMode::Fin);
}
