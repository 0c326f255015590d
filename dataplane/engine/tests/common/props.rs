//! What the property tests share: proptest settings, extra on-link hosts,
//! destinations, IP options, a harness that knows them, segment builders
//! and the byte-range comparisons of a translated frame.

use super::*;
use dataplane::config::EngineConfig;
use dataplane::flow::{Endpoint, TCP, UDP};
use dataplane::testkit::{self, Topology, ROUTER_MAC, SERVER, SERVER2};
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use std::net::Ipv4Addr;

/// Proptest settings: `cases` cases (or `PROPTEST_CASES` when set, for a
/// longer run), no regression files written into the source tree (a
/// failure is reported with its minimal input).
pub fn config(cases: u32) -> ProptestConfig {
    let d = ProptestConfig::default();
    let cases = if std::env::var_os("PROPTEST_CASES").is_some() { d.cases } else { cases };
    ProptestConfig { cases, failure_persistence: None, ..d }
}

/// Extra on-link VPC hosts the engine learns at start, with their MACs.
pub const HOST_A: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 20);
pub const HOST_A_MAC: [u8; 6] = [0x02, 0x00, 0x00, 0x00, 0x00, 0x14];
pub const HOST_B: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 254);
pub const HOST_B_MAC: [u8; 6] = [0x02, 0x00, 0x00, 0x00, 0x00, 0xfd];

/// Destinations: on-link (their own MAC) and off-link (the router's MAC).
pub const DESTS: [(Ipv4Addr, [u8; 6]); 6] = [
    (SERVER, SERVER_MAC),
    (HOST_A, HOST_A_MAC),
    (HOST_B, HOST_B_MAC),
    (SERVER2, ROUTER_MAC),
    (Ipv4Addr::new(10, 1, 2, 3), ROUTER_MAC),
    (Ipv4Addr::new(192, 168, 7, 7), ROUTER_MAC),
];

/// IP option blocks (each a multiple of 4 bytes).
pub const OPTIONS: [&[u8]; 5] = [
    &[],
    &[1, 1, 1, 1],
    // Router alert (copied).
    &[0x94, 4, 0, 0],
    // Record route with two empty slots, then end of list.
    &[7, 11, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0],
    // Forty bytes of NOPs ending with end of list.
    &[
        1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
        1, 1, 0,
    ],
];

pub fn small_config() -> EngineConfig {
    EngineConfig { max_sessions: 1024, ..EngineConfig::default() }
}

/// A harness whose engine also knows the extra on-link hosts.
pub fn harness(cfg: EngineConfig, topo: Topology) -> Harness {
    let mut h = Harness::new(cfg, topo);
    h.learn(HOST_A, HOST_A_MAC);
    h.learn(HOST_B, HOST_B_MAC);
    h
}

/// A transport segment from `src` to `dst`: TCP (with `flags`), UDP, or
/// ICMP echo (request when `request`, with the source port as identifier;
/// else a reply with the destination port as identifier).
pub fn segment(proto: u8, src: Endpoint, dst: Endpoint, flags: u8, request: bool, data: &[u8]) -> Vec<u8> {
    match proto {
        TCP => testkit::tcp_segment(src.ip, src.port, dst.ip, dst.port, flags, data),
        UDP => testkit::udp_segment(src.ip, src.port, dst.ip, dst.port, data),
        _ => testkit::echo(request, if request { src.port } else { dst.port }, 7, data),
    }
}

/// Header length of a transport protocol as the builders write it.
pub fn l4_header_len(proto: u8) -> usize {
    match proto {
        TCP => 20,
        _ => 8,
    }
}

/// Byte ranges of the frame a translation may change: MACs, TTL, IP
/// checksum, the rewritten address, the rewritten port (or echo
/// identifier) and the transport checksum.
pub fn mutable_ranges(frame: &[u8], proto: u8, outbound: bool) -> Vec<std::ops::Range<usize>> {
    let ip = wire::parse_ipv4(frame, ETH_LEN).expect("valid frame");
    let (o, l) = (ip.off(), ip.l4());
    let addr = if outbound { o + 12..o + 16 } else { o + 16..o + 20 };
    let (port, csum) = match proto {
        TCP => (if outbound { 0 } else { 2 }, 16),
        UDP => (if outbound { 0 } else { 2 }, 6),
        _ => (4, 2),
    };
    vec![0..12, o + 8..o + 9, o + 10..o + 12, addr, l + port..l + port + 2, l + csum..l + csum + 2]
}

/// Asserts `after` equals `before` outside `ranges`.
pub fn same_except(before: &[u8], after: &[u8], ranges: &[std::ops::Range<usize>]) -> Result<(), TestCaseError> {
    prop_assert_eq!(before.len(), after.len(), "frame length changed");
    for (i, (a, b)) in before.iter().zip(after).enumerate() {
        if !ranges.iter().any(|r| r.contains(&i)) {
            prop_assert_eq!(a, b, "byte {} changed", i);
        }
    }
    Ok(())
}
