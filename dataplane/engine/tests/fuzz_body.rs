//! The fuzz target's body (`dataplane::fuzzing::run`) over a fixed set of
//! seeded inputs, so CI exercises the harness logic and the paths it aims
//! at (both profiles, fragment floods across two attachments) on stable
//! Rust, deterministically and in bounded time. The fuzzer itself
//! (`fuzz/`, nightly) explores far more.

use dataplane::flow::{TCP, UDP};
use dataplane::fuzzing::{self, Stats};
use dataplane::testkit::{self, IpOpts, OUTSIDE_MAC, ROUTER_MAC, SERVER};
use std::net::Ipv4Addr;

/// xorshift64*: the same inputs on every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn byte(&mut self) -> u8 {
        self.next() as u8
    }
}

/// A well-formed frame from environment `env` or from the VPC, which
/// mutations then start from.
fn seed_frame(r: &mut Rng) -> Vec<u8> {
    let env = (r.next() % 8) as u32;
    let big = vec![0x5a; (r.next() % 1400) as usize];
    let data: &[u8] = if r.next().is_multiple_of(3) { &big } else { b"hello" };
    let proto = [TCP, UDP, 1][(r.next() % 3) as usize];
    let (sport, dport) = (1000 + (r.next() % 4) as u16, 53 + (r.next() % 2) as u16);
    if r.next().is_multiple_of(2) {
        let src = testkit::env_ip(env);
        let seg = match proto {
            TCP => testkit::tcp_segment(src, sport, SERVER, dport, 0x02, data),
            UDP => testkit::udp_segment(src, sport, SERVER, dport, data),
            _ => testkit::echo(true, sport, 1, data),
        };
        let port = (env % 2) as u16 + 1;
        testkit::ipv4_frame(
            testkit::inside_mac(port),
            testkit::env_mac(env),
            src,
            SERVER,
            proto,
            IpOpts::default(),
            &seg,
        )
    } else {
        let eni = Ipv4Addr::new(10, 0, 0, 10);
        let port = 1024 + (r.next() % 32) as u16;
        let seg = match proto {
            TCP => testkit::tcp_segment(SERVER, dport, eni, port, 0x12, data),
            UDP => testkit::udp_segment(SERVER, dport, eni, port, data),
            _ => testkit::echo(false, port, 1, data),
        };
        testkit::ipv4_frame(OUTSIDE_MAC, ROUTER_MAC, SERVER, eni, proto, IpOpts::default(), &seg)
    }
}

/// One input: options, then records built from seed frames, some mutated,
/// some turned into fragment floods.
fn input(r: &mut Rng) -> Vec<u8> {
    let mut v = vec![r.byte()];
    for _ in 0..(1 + r.next() % 24) {
        let mut f = seed_frame(r);
        let mutate = r.next() % 4;
        for _ in 0..mutate {
            let i = (r.next() as usize) % f.len();
            f[i] = r.byte();
        }
        let mut control = r.byte();
        match r.next() % 4 {
            0 => control |= 0x0b,                                                 // a fragment flood
            1 => control = (control & !0x0b) | 0x08 | (1 + (r.next() % 2) as u8), // inside, fixed checksums
            _ => {}
        }
        let len = f.len() as u16;
        let (hi, lo) =
            if control & 0x0b == 0x0b { (r.byte(), r.byte()) } else { (len.to_be_bytes()[0], len.to_be_bytes()[1]) };
        // For a flood the length bytes are its parameters: the length
        // taken is then (hi, lo) % 1600 cut to what is left, so the frame
        // goes last to be taken whole.
        v.extend_from_slice(&[control, hi, lo]);
        v.extend_from_slice(&f);
    }
    v
}

#[test]
fn the_fuzz_body_holds_over_seeded_inputs_in_both_profiles_with_fragment_floods() {
    let mut r = Rng(0x6879_7065_7270_6c6e);
    let mut total = Stats::default();
    let mut aws = 0;
    for _ in 0..1500 {
        let data = input(&mut r);
        aws += usize::from(data[0] & 1);
        let s = fuzzing::run(&data);
        total.frames += s.frames;
        total.flood_fragments += s.flood_fragments;
        total.forwarded += s.forwarded;
    }
    // The inputs reach what they aim at.
    assert!(aws > 500 && aws < 1000, "both profiles: {aws} of 1500 aws");
    assert!(total.flood_fragments > 10_000, "{total:?}");
    assert!(total.forwarded > 1000, "{total:?}");
}

#[test]
fn the_fuzz_body_takes_raw_random_bytes_and_edge_cases() {
    let mut r = Rng(7);
    for n in 0..2000 {
        let len = (r.next() % 600) as usize;
        let data: Vec<u8> = (0..len).map(|_| r.byte()).collect();
        let _ = fuzzing::run(&data);
        if n < 8 {
            let _ = fuzzing::run(&data[..n.min(data.len())]);
        }
    }
    // A flood record whose frame is not IPv4, and one with a header
    // length past the frame: nothing to cut, nothing sent.
    let s = fuzzing::run(&[1, 0x0b, 0x3f, 0x01, 0xff, 0xff]);
    assert_eq!(s.flood_fragments, 0);
    let mut f = seed_frame(&mut Rng(3));
    f[14] = 0x4f;
    let mut data = vec![0u8, 0x0b, 5, 7];
    data.extend_from_slice(&f);
    let _ = fuzzing::run(&data);
}
