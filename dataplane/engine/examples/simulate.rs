//! An in-memory run of the NAT: many execution environments reach one VPC
//! server through a single shared ENI address.
//!
//! Every environment opens a TCP connection (handshake, request, response,
//! close), sends a UDP query and pings the server. The "server" is this
//! program answering each translated frame; it records the source address
//! and port every packet arrived from. Time is virtual; only the summary's
//! throughput figure reads the wall clock.
//!
//! `cargo run --release -p dataplane --example simulate -- [ENVS]`

use dataplane::arp;
use dataplane::config::EngineConfig;
use dataplane::flow::{ICMP, TCP, UDP};
use dataplane::testkit::{self, flags::*, IpOpts, Topology, OUTSIDE_MAC, ROUTER, ROUTER_MAC, SERVER};
use dataplane::time::Instant;
use dataplane::wire::{get16, parse_ipv4, ETH_LEN};
use dataplane::{Action, Engine, PortId};
use std::collections::{HashMap, HashSet};
use std::net::Ipv4Addr;

const SERVER_MAC: [u8; 6] = [2, 0, 0, 0, 0, 0x64];

struct Sim {
    engine: Engine,
    now: Instant,
    buf: Vec<u8>,
    frames: u64,
    seen: HashMap<Ipv4Addr, HashSet<(u8, u16)>>,
}

impl Sim {
    /// Sends a frame into `port`; returns the frame as it left, if forwarded.
    fn send(&mut self, port: PortId, frame: &[u8]) -> Option<(PortId, Vec<u8>)> {
        self.buf[..frame.len()].copy_from_slice(frame);
        self.frames += 1;
        match self.engine.process(self.now, port, &mut self.buf, frame.len()) {
            Action::Forward { port, len } => Some((port, self.buf[..len].to_vec())),
            Action::Reply { len } => Some((port, self.buf[..len].to_vec())),
            Action::Consumed | Action::Drop(_) | Action::Redirect { .. } => None,
        }
    }

    /// The server answers a translated frame: swap the endpoints.
    fn server_reply(&mut self, f: &[u8], tcp_flags: u8, data: &[u8]) -> Vec<u8> {
        let ip = parse_ipv4(f, ETH_LEN).expect("translated frame is valid");
        let (sport, dport) = (get16(f, ip.l4()), get16(f, ip.l4() + 2));
        let key = if ip.proto == ICMP { get16(f, ip.l4() + 4) } else { sport };
        self.seen.entry(ip.src).or_default().insert((ip.proto, key));
        let seg = match ip.proto {
            TCP => testkit::tcp_segment(ip.dst, dport, ip.src, sport, tcp_flags, data),
            UDP => testkit::udp_segment(ip.dst, dport, ip.src, sport, data),
            _ => testkit::echo(false, key, 1, data),
        };
        testkit::ipv4_frame(OUTSIDE_MAC, SERVER_MAC, ip.dst, ip.src, ip.proto, IpOpts::default(), &seg)
    }
}

fn main() {
    let envs: u32 = std::env::args().nth(1).and_then(|s| s.parse().ok()).unwrap_or(1000);
    let attachments = 16u16;
    let topo = Topology::new(attachments, envs);
    let engine = Engine::new(EngineConfig::default(), topo.bindings()).expect("default config is valid");
    let mut sim = Sim { engine, now: Instant::from_secs(1), buf: vec![0; 2048], frames: 0, seen: HashMap::new() };
    let mut scratch = vec![0u8; 2048];
    while sim.engine.poll_transmit(sim.now, &mut scratch).is_some() {}
    for (ip, mac) in [(ROUTER, ROUTER_MAC), (SERVER, SERVER_MAC)] {
        let mut f = [0u8; 64];
        let n = arp::write_request(&mut f, mac, ip, Ipv4Addr::new(10, 0, 0, 10));
        sim.send(PortId::OUTSIDE, &f[..n]);
    }

    let started = std::time::Instant::now();
    let mut delivered = 0u64;
    let mut expected = 0u64;
    for i in 0..envs {
        let env = testkit::env_ip(i);
        let port = topo.envs[i as usize].port;
        let mac = testkit::env_mac(i);
        let gw_mac = testkit::inside_mac(port.0);
        let from_env = |proto: u8, fl: u8, data: &[u8]| {
            let seg = match proto {
                TCP => testkit::tcp_segment(env, 40000, SERVER, 443, fl, data),
                UDP => testkit::udp_segment(env, 40001, SERVER, 53, data),
                _ => testkit::echo(true, 7, 1, data),
            };
            testkit::ipv4_frame(gw_mac, mac, env, SERVER, proto, IpOpts::default(), &seg)
        };
        // TCP: SYN / SYN-ACK / ACK+request / response / FIN both ways.
        let steps: [(u8, u8, &[u8]); 4] = [
            (SYN, SYN | ACK, b""),
            (ACK | 0x08, ACK | 0x08, b"GET / HTTP/1.1\r\n\r\n"),
            (FIN | ACK, FIN | ACK, b""),
            (ACK, 0, b""),
        ];
        for (out_flags, reply_flags, data) in steps {
            expected += 1;
            if let Some((_, f)) = sim.send(port, &from_env(TCP, out_flags, data)) {
                if reply_flags != 0 {
                    let r = sim.server_reply(&f, reply_flags, b"HTTP/1.1 200 OK\r\n\r\n");
                    expected += 1;
                    if sim.send(PortId::OUTSIDE, &r).is_some_and(|(p, _)| p == port) {
                        delivered += 1;
                    }
                }
                delivered += 1;
            }
        }
        for proto in [UDP, ICMP] {
            expected += 2;
            if let Some((_, f)) = sim.send(port, &from_env(proto, 0, b"query")) {
                delivered += 1;
                let r = sim.server_reply(&f, 0, b"answer");
                if sim.send(PortId::OUTSIDE, &r).is_some_and(|(p, _)| p == port) {
                    delivered += 1;
                }
            }
        }
    }
    let elapsed = started.elapsed();
    let c = sim.engine.counters();
    let sources: Vec<_> = sim.seen.keys().collect();
    let endpoints: usize = sim.seen.values().map(HashSet::len).sum();
    println!("hyperplane dataplane simulation");
    println!("  execution environments     {envs} on {attachments} attachments");
    println!("  shared ENI addresses used  {} ({:?})", sources.len(), sources);
    println!("  distinct ENI endpoints     {endpoints} (TCP, UDP and ICMP per environment)");
    println!("  packets delivered          {delivered} of {expected}");
    println!(
        "  sessions                   {} live ({} TCP, {} UDP, {} ICMP created)",
        sim.engine.sessions().len(),
        c.sessions_created[0].get(),
        c.sessions_created[1].get(),
        c.sessions_created[2].get()
    );
    println!("  drops                      {}", c.dropped_total());
    println!(
        "  wall time                  {:.1} ms for {} frames ({:.0} ns/frame, including building them)",
        elapsed.as_secs_f64() * 1e3,
        sim.frames,
        elapsed.as_nanos() as f64 / sim.frames as f64
    );
    if sources.len() != 1 || delivered != expected {
        std::process::exit(1);
    }
}
