//! Feeds arbitrary frames to one engine, on the outside port and on inside
//! attachments, with an advancing virtual clock.
//!
//! Input: a sequence of records `[control, len_hi, len_lo, frame...]`:
//! - `control & 0x03` picks the port: outside, attachment 1, attachment 2
//!   (MTU 576) or an attachment that does not exist;
//! - `control & 0x04` calls `expire` after the frame;
//! - `control & 0x08` recomputes the frame's IPv4 header checksum and its
//!   TCP, UDP or ICMP checksum first (so mutations reach past validation);
//! - `control >> 4` advances the clock by one of 16 steps (0 s to 2 h).
//!
//! The length is taken modulo 1600 and cut to the bytes left. Every frame
//! the engine hands back (in place or through `poll_transmit`) must fit its
//! buffer, and must have valid checksums when every input so far had.
#![no_main]

use dataplane::config::EngineConfig;
use dataplane::testkit::{self, Topology, ROUTER, ROUTER_MAC, SERVER};
use dataplane::time::Instant;
use dataplane::wire::{self, ETH_LEN};
use dataplane::{Action, Engine, PortId};
use libfuzzer_sys::fuzz_target;
use std::net::Ipv4Addr;
use std::time::Duration;

const ENI: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 10);
const SERVER_MAC: [u8; 6] = [0x02, 0x00, 0x00, 0x00, 0x00, 0x64];
const PORTS: [PortId; 4] = [PortId::OUTSIDE, PortId(1), PortId(2), PortId(9)];
const STEPS: [u64; 16] = [0, 0, 0, 1, 1, 2, 5, 10, 30, 61, 121, 241, 301, 351, 900, 7500];
/// At least the 590 bytes the engine asks for, room for any input frame.
const BUF: usize = 2048;

fn engine() -> Engine {
    let mut topo = Topology::new(2, 8);
    topo.inside[1].mtu = 576;
    let cfg = EngineConfig { max_sessions: 64, port_range: 1024..=1055, ..EngineConfig::default() };
    let mut e = Engine::new(cfg, topo.bindings()).expect("valid config");
    // The router and a server announce themselves (ARP requests for the ENI
    // address), so forwarding does not always wait for ARP.
    let mut buf = [0u8; BUF];
    for (ip, mac) in [(ROUTER, ROUTER_MAC), (SERVER, SERVER_MAC)] {
        let n = dataplane::arp::write_request(&mut buf, mac, ip, ENI);
        e.process(Instant::ZERO, PortId::OUTSIDE, &mut buf, n);
    }
    while e.poll_transmit(Instant::ZERO, &mut buf).is_some() {}
    e
}

fn is_ipv4(frame: &[u8]) -> bool {
    frame.len() >= ETH_LEN && wire::ethertype(frame) == wire::ETHERTYPE_IPV4
}

fuzz_target!(|data: &[u8]| {
    let mut e = engine();
    let mut now = Instant::from_secs(1);
    let mut buf = vec![0u8; BUF];
    let mut out = vec![0u8; BUF];
    let mut all_valid = true;
    let mut rest = data;
    while rest.len() >= 3 {
        let control = rest[0];
        let len = (usize::from(u16::from_be_bytes([rest[1], rest[2]])) % 1600).min(rest.len() - 3);
        let frame = &rest[3..3 + len];
        rest = &rest[3 + len..];

        now = now + Duration::from_secs(STEPS[usize::from(control >> 4)]);
        buf.fill(0);
        buf[..len].copy_from_slice(frame);
        if control & 0x08 != 0 {
            testkit::fix_checksums(&mut buf[..len]);
        }
        let valid = testkit::checksums_ok(&buf[..len]);
        all_valid &= valid || !is_ipv4(&buf[..len]);

        let action = e.process(now, PORTS[usize::from(control & 0x03)], &mut buf, len);
        if let Action::Forward { len: n, .. } | Action::Reply { len: n } | Action::Redirect { len: n } = action {
            assert!((ETH_LEN..=BUF).contains(&n), "{action:?}");
            if valid && is_ipv4(&buf[..n]) {
                assert!(testkit::checksums_ok(&buf[..n]), "{action:?} with bad checksums: {:02x?}", &buf[..n]);
            }
        }
        if control & 0x04 != 0 {
            e.expire(now);
        }
        while let Some((_, n)) = e.poll_transmit(now, &mut out) {
            assert!(n <= BUF);
            if all_valid && is_ipv4(&out[..n]) {
                assert!(testkit::checksums_ok(&out[..n]), "transmitted frame with bad checksums: {:02x?}", &out[..n]);
            }
        }
        while e.poll_event().is_some() {}
    }
    let _ = e.poll_timeout();
    let _ = e.port_use();
});
