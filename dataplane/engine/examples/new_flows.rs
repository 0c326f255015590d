//! A fixed number of new flows through one engine, for instruction counts
//! that do not depend on how long a bench ran: the setup of `cargo bench
//! --bench engine`'s `new_flow` group (256 environments on 8 attachments,
//! one ENI address, a 20-rule security group, 128 source ports each towards
//! 64 remote servers, in the bench's shuffled order), each engine taking all
//! 32,768 first packets, the first 256 of them from environments new to it.
//!
//! ```text
//! cargo build --release -p dataplane --example new_flows
//! valgrind --tool=callgrind --toggle-collect='*Engine*process_offload*' \
//!     target/release/examples/new_flows udp     # or tcp (SYNs); then engines (default 1)
//! valgrind --tool=callgrind --toggle-collect='*Engine*process_batch*' \
//!     target/release/examples/new_flows udp 1 batch   # vectors of 64, as a worker reads
//!     # (a fourth argument sets the vector's length, 1..=64)
//! ```
//! Instructions per new flow: the total over the toggled calls divided by
//! 32,768 (one more `process` call per engine: the router's ARP, outside
//! the batch toggle). Toggle one function only: nested toggles cancel.

use dataplane::arp;
use dataplane::config::EngineConfig;
use dataplane::flow::{TCP, UDP};
use dataplane::testkit::{
    self, bench_remote as remote, bench_security_group as security_group, flags, IpOpts, Rng, Topology, ROUTER,
    ROUTER_MAC,
};
use dataplane::time::Instant;
use dataplane::{Action, BatchFrame, Engine, PortId};
use std::hint::black_box;
use std::net::Ipv4Addr;
use std::sync::Arc;

/// Flows each engine takes (the bench's `NEW_FLOWS_PER_ENGINE`).
const FLOWS: u32 = 32_768;
/// Environments they come from.
const ENVS: u32 = 256;
/// The one ENI address (the bench's first).
const ENI: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 10);
/// Frames per `process_batch` call in `batch` mode (a worker's read).
const BATCH: usize = 64;

fn main() {
    let syn = std::env::args().nth(1).is_some_and(|a| a == "tcp");
    let engines: usize = std::env::args().nth(2).and_then(|a| a.parse().ok()).unwrap_or(1);
    let batch = std::env::args().nth(3).is_some_and(|a| a == "batch");
    // Frames per `process_batch` call (a worker woken for one or two
    // frames hands over vectors that short).
    let size: usize = std::env::args().nth(4).and_then(|a| a.parse().ok()).unwrap_or(BATCH).clamp(1, BATCH);
    let mut topo = Topology::new(8, ENVS);
    topo.enis[0].addrs = vec![ENI];
    topo.enis[0].egress = Arc::new(security_group());
    let cfg = EngineConfig { max_sessions: FLOWS as usize * 2, high_water: 60_000, ..EngineConfig::default() };
    let now = Instant::from_secs(1);
    let per_env = FLOWS / ENVS;
    let mut firsts: Vec<(PortId, Vec<u8>)> = (0..ENVS)
        .flat_map(|env| (0..per_env).map(move |k| (env, k)))
        .map(|(env, k)| {
            let (src, dst, sport) = (testkit::env_ip(env), remote((env * per_env + k) % 64), 10_000 + k as u16);
            let port = topo.envs[env as usize].port;
            let (proto, seg) = if syn {
                (TCP, testkit::tcp_segment(src, sport, dst, 443, flags::SYN, &[]))
            } else {
                (UDP, testkit::udp_segment(src, sport, dst, 443, &[0x5a; 32]))
            };
            let mac = (testkit::inside_mac(port.0), testkit::env_mac(env));
            (port, testkit::ipv4_frame(mac.0, mac.1, src, dst, proto, IpOpts::default(), &seg))
        })
        .collect();
    Rng(if syn { 8 } else { 7 }).shuffle(&mut firsts);
    let mut buf = [0u8; 2048];
    let mut bufs = vec![[0u8; 2048 + 64]; BATCH];
    for _ in 0..engines {
        let mut e = Engine::new(cfg.clone(), topo.bindings()).expect("valid config");
        let n = arp::write_request(&mut buf, ROUTER_MAC, ROUTER, ENI);
        assert!(matches!(e.process(now, PortId::OUTSIDE, &mut buf, n), Action::Reply { .. }));
        while e.poll_transmit(now, &mut buf).is_some() {}
        if batch {
            for chunk in firsts.chunks(size) {
                let mut frames: Vec<BatchFrame> = bufs
                    .iter_mut()
                    .zip(chunk)
                    .map(|(b, (port, f))| {
                        b[..f.len()].copy_from_slice(f);
                        BatchFrame::new(*port, b, f.len())
                    })
                    .collect();
                e.process_batch(now, black_box(&mut frames));
            }
        } else {
            for (port, f) in &firsts {
                buf[..f.len()].copy_from_slice(f);
                black_box(e.process(now, *port, &mut buf, f.len()));
            }
        }
        assert_eq!(e.sessions().len(), firsts.len(), "every first packet made a session");
    }
}
