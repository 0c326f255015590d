//! The body of the engine fuzz target (`fuzz/fuzz_targets/engine.rs`),
//! here so that ordinary tests run it too (over seeded inputs, see
//! `tests/fuzz_body.rs`) and the harness logic is checked on stable Rust.
//!
//! Input: a first byte of options, then records
//! `[control, len_hi, len_lo, frame...]`.
//! - options `& 0x01`: the `aws` profile (address-and-port-dependent
//!   mapping and filtering, silent refusals) instead of the RFC defaults;
//! - `control & 0x03` picks the port: outside, attachment 1, attachment 2
//!   (MTU 576) or an attachment that does not exist;
//! - `control & 0x04` calls `expire` after the frame;
//! - `control & 0x08` recomputes the frame's IPv4 header checksum and its
//!   TCP, UDP or ICMP checksum first (so mutations reach past validation);
//! - `control >> 4` advances the clock by one of 16 steps (0 s to 2 h);
//! - a record on the fourth port with checksums fixed (`control & 0x0b ==
//!   0x0b`) is a fragment flood instead: the frame is cut into fragments
//!   of at most 68 + `len_lo % 512` bytes, and `len_hi % 64 + 1` copies
//!   (each its own IP identification) go alternately to attachments 1 and
//!   2; with `len_lo` odd only their first fragments, with bit 1 of
//!   `len_lo` set only the later ones.
//!
//! The length is taken modulo 1600 and cut to the bytes left. Every frame
//! the engine hands back (in place or through `poll_transmit`) must fit its
//! buffer, and must have valid checksums when every input so far had; the
//! counters must account for every frame.

use crate::config::EngineConfig;
use crate::testkit::{self, Topology, ROUTER, ROUTER_MAC, SERVER};
use crate::time::Instant;
use crate::wire::{self, get16, put16, ETH_LEN};
use crate::{Action, Engine, PortId};
use core::net::Ipv4Addr;
use std::time::Duration;

const ENI: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 10);
const SERVER_MAC: [u8; 6] = [0x02, 0x00, 0x00, 0x00, 0x00, 0x64];
const PORTS: [PortId; 4] = [PortId::OUTSIDE, PortId(1), PortId(2), PortId(9)];
const STEPS: [u64; 16] = [0, 0, 0, 1, 1, 2, 5, 10, 30, 61, 121, 241, 301, 351, 900, 7500];
/// At least the 590 bytes the engine asks for, room for any input frame.
pub const BUF: usize = 2048;

/// The small engine every input starts from: two attachments (the second
/// with MTU 576), eight environments, one ENI address, 32 ports, 64
/// sessions.
pub fn engine(aws: bool) -> Engine {
    let mut topo = Topology::new(2, 8);
    topo.inside[1].mtu = 576;
    let base = if aws { EngineConfig::aws() } else { EngineConfig::default() };
    let cfg = EngineConfig { max_sessions: 64, port_range: 1024..=1055, ..base };
    let mut e = Engine::new(cfg, topo.bindings()).expect("valid config");
    // The router and a server announce themselves (ARP requests for the ENI
    // address), so forwarding does not always wait for ARP.
    let mut buf = [0u8; BUF];
    for (ip, mac) in [(ROUTER, ROUTER_MAC), (SERVER, SERVER_MAC)] {
        let n = crate::arp::write_request(&mut buf, mac, ip, ENI);
        e.process(Instant::ZERO, PortId::OUTSIDE, &mut buf, n);
    }
    while e.poll_transmit(Instant::ZERO, &mut buf).is_some() {}
    e
}

fn is_ipv4(frame: &[u8]) -> bool {
    frame.len() >= ETH_LEN && wire::ethertype(frame) == wire::ETHERTYPE_IPV4
}

/// The fragments of the IPv4 datagram in `frame` at `mtu`, if it is one
/// that [`testkit::fragment`] can cut (a sane header and length).
fn fragments(frame: &[u8], mtu: usize) -> Option<Vec<Vec<u8>>> {
    if !is_ipv4(frame) || frame.len() < ETH_LEN + 20 {
        return None;
    }
    let hlen = usize::from(frame[ETH_LEN] & 0x0f) * 4;
    let total = usize::from(get16(frame, ETH_LEN + 2));
    if hlen < 20 || total <= hlen || ETH_LEN + total > frame.len() || mtu < hlen + 8 {
        return None;
    }
    Some(testkit::fragment(frame, mtu))
}

/// What one input did (for tests that check the inputs reach the paths
/// they aim at).
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Frames handed to the engine.
    pub frames: u64,
    /// Of those, fragments of floods.
    pub flood_fragments: u64,
    /// Frames forwarded or replied to.
    pub forwarded: u64,
}

/// Runs one input (see the module doc); panics when a check fails.
pub fn run(data: &[u8]) -> Stats {
    let Some((&options, mut rest)) = data.split_first() else {
        return Stats::default();
    };
    let mut e = engine(options & 0x01 != 0);
    let counters = e.counters();
    let mut stats = Stats::default();
    let mut now = Instant::from_secs(1);
    let mut buf = vec![0u8; BUF];
    let mut out = vec![0u8; BUF];
    let mut all_valid = true;
    let mut ident: u16 = 0x4000;
    while rest.len() >= 3 {
        let control = rest[0];
        let (len_hi, len_lo) = (rest[1], rest[2]);
        let len = (usize::from(u16::from_be_bytes([len_hi, len_lo])) % 1600).min(rest.len() - 3);
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

        let mut inputs: Vec<(PortId, Vec<u8>)> = Vec::new();
        if control & 0x0b == 0x0b {
            let mtu = 68 + usize::from(len_lo) % 512;
            let copies = usize::from(len_hi) % 64 + 1;
            for c in 0..copies {
                let mut datagram = buf[..len].to_vec();
                if datagram.len() >= ETH_LEN + 20 {
                    ident = ident.wrapping_add(1);
                    put16(&mut datagram[ETH_LEN..], 4, ident);
                    testkit::fix_checksums(&mut datagram);
                }
                let Some(frags) = fragments(&datagram, mtu) else { break };
                let port = PORTS[1 + c % 2];
                for (i, f) in frags.into_iter().enumerate() {
                    let first = i == 0;
                    if (len_lo & 1 == 1 && !first) || (len_lo & 2 == 2 && first) {
                        continue;
                    }
                    inputs.push((port, f));
                }
            }
            stats.flood_fragments += inputs.len() as u64;
        } else {
            inputs.push((PORTS[usize::from(control & 0x03)], buf[..len].to_vec()));
        }

        for (port, frame) in inputs {
            let n_in = frame.len();
            buf.fill(0);
            buf[..n_in].copy_from_slice(&frame);
            let valid = testkit::checksums_ok(&buf[..n_in]);
            let rx = counters.rx_frames.get();
            let dropped = counters.drops.iter().map(|d| d.get()).sum::<u64>();
            let action = e.process(now, port, &mut buf, n_in);
            stats.frames += 1;
            assert_eq!(counters.rx_frames.get(), rx + 1, "every frame is counted");
            if let Action::Drop(r) = action {
                let after = counters.drops.iter().map(|d| d.get()).sum::<u64>();
                assert!(after > dropped, "a drop ({r:?}) is counted");
            }
            if let Action::Forward { len: n, .. } | Action::Reply { len: n } | Action::Redirect { len: n } = action {
                stats.forwarded += 1;
                assert!((ETH_LEN..=BUF).contains(&n), "{action:?}");
                if valid && is_ipv4(&buf[..n]) {
                    assert!(testkit::checksums_ok(&buf[..n]), "{action:?} with bad checksums: {:02x?}", &buf[..n]);
                }
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
    stats
}
