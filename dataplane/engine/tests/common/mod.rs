//! A harness that drives one engine with byte buffers and a virtual clock.
#![allow(dead_code, clippy::too_many_arguments)]

pub mod props;

use dataplane::arp;
use dataplane::bindings::Mac;
use dataplane::config::EngineConfig;
use dataplane::counters::DropReason;
use dataplane::flow::{TCP, UDP};
use dataplane::testkit::{self, IpOpts, Topology, GATEWAY, OUTSIDE_MAC, ROUTER, ROUTER_MAC, SERVER};
use dataplane::time::Instant;
use dataplane::wire::{self, get16, ETH_LEN};
use dataplane::{Action, Engine, PortId};
use std::net::Ipv4Addr;
use std::time::Duration;

pub const ENI: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 10);
pub const SERVER_MAC: Mac = [0x02, 0x00, 0x00, 0x00, 0x00, 0x64];

/// A frame after the engine handled it.
#[derive(Debug)]
pub struct Out {
    pub action: Action,
    pub frame: Vec<u8>,
}

impl Out {
    pub fn forwarded(&self) -> Option<PortId> {
        match self.action {
            Action::Forward { port, .. } => Some(port),
            _ => None,
        }
    }

    pub fn ip(&self) -> wire::Ipv4 {
        wire::parse_ipv4(&self.frame, ETH_LEN).expect("output frame has a valid IPv4 header")
    }

    pub fn src(&self) -> (Ipv4Addr, u16) {
        let ip = self.ip();
        (ip.src, get16(&self.frame, ip.l4()))
    }

    pub fn dst(&self) -> (Ipv4Addr, u16) {
        let ip = self.ip();
        (ip.dst, get16(&self.frame, ip.l4() + 2))
    }

    /// ICMP echo identifier.
    pub fn echo_id(&self) -> u16 {
        let ip = self.ip();
        get16(&self.frame, ip.l4() + 4)
    }

    pub fn dst_mac(&self) -> Mac {
        self.frame[0..6].try_into().unwrap()
    }
}

pub struct Harness {
    pub engine: Engine,
    pub now: Instant,
    pub topo: Topology,
}

impl Harness {
    pub fn new(cfg: EngineConfig, topo: Topology) -> Harness {
        let engine = Engine::new(cfg, topo.bindings()).expect("valid config");
        let mut h = Harness { engine, now: Instant::from_secs(1), topo };
        h.drain();
        // The router and the on-link server announce themselves.
        h.learn(ROUTER, ROUTER_MAC);
        h.learn(SERVER, SERVER_MAC);
        h
    }

    pub fn default() -> Harness {
        Harness::new(EngineConfig::default(), Topology::new(2, 8))
    }

    pub fn with(cfg: EngineConfig) -> Harness {
        Harness::new(cfg, Topology::new(2, 8))
    }

    /// A VPC host asks who has the ENI address (so the engine learns it).
    pub fn learn(&mut self, ip: Ipv4Addr, mac: Mac) {
        let mut f = vec![0u8; 64];
        let n = arp::write_request(&mut f, mac, ip, ENI);
        f.truncate(n);
        let out = self.send(PortId::OUTSIDE, f);
        assert!(matches!(out.action, Action::Reply { .. }), "ENI address answers ARP: {:?}", out.action);
    }

    pub fn advance(&mut self, d: Duration) {
        self.now = self.now + d;
        self.engine.expire(self.now);
    }

    /// Hands a frame to the engine. A frame queued for ARP towards the
    /// router or the server is resolved the way the network would (they
    /// answer the request) and returned as forwarded.
    pub fn send(&mut self, port: PortId, frame: Vec<u8>) -> Out {
        let out = self.send_raw(port, frame);
        if out.action != Action::Consumed || !port.is_inside() {
            return out;
        }
        let mut released = vec![];
        for (p, f) in self.drain() {
            match arp::parse(&f) {
                Some(req) if req.target_ip == ROUTER || req.target_ip == SERVER => {
                    let mac = if req.target_ip == ROUTER { ROUTER_MAC } else { SERVER_MAC };
                    let mut r = vec![0u8; 64];
                    let n = arp::write_request(&mut r, mac, req.target_ip, req.sender_ip);
                    r.truncate(n);
                    self.send_raw(PortId::OUTSIDE, r);
                    released.extend(self.drain());
                }
                Some(_) => {}
                None => released.push((p, f)),
            }
        }
        match released.pop() {
            Some((p, f)) if released.is_empty() => Out { action: Action::Forward { port: p, len: f.len() }, frame: f },
            _ => out,
        }
    }

    /// Hands a frame to the engine and returns what it did, as it is.
    pub fn send_raw(&mut self, port: PortId, frame: Vec<u8>) -> Out {
        let mut buf = frame.clone();
        let len = buf.len();
        buf.resize(2048, 0);
        let action = self.engine.process(self.now, port, &mut buf, len);
        let n = match action {
            Action::Forward { len, .. } | Action::Reply { len } => len,
            _ => len,
        };
        buf.truncate(n);
        Out { action, frame: buf }
    }

    /// Frames the engine generated since.
    pub fn drain(&mut self) -> Vec<(PortId, Vec<u8>)> {
        let mut v = vec![];
        let mut buf = vec![0u8; 2048];
        while let Some((p, n)) = self.engine.poll_transmit(self.now, &mut buf) {
            v.push((p, buf[..n].to_vec()));
        }
        v
    }

    pub fn env_port(&self, env: u32) -> PortId {
        self.topo.envs[env as usize].port
    }

    /// A frame from environment `env` on its attachment.
    pub fn env_frame(
        &self,
        env: u32,
        proto: u8,
        sport: u16,
        dst: Ipv4Addr,
        dport: u16,
        flags: u8,
        data: &[u8],
    ) -> Vec<u8> {
        self.env_frame_opts(env, proto, sport, dst, dport, flags, data, IpOpts::default())
    }

    #[allow(clippy::too_many_arguments)]
    pub fn env_frame_opts(
        &self,
        env: u32,
        proto: u8,
        sport: u16,
        dst: Ipv4Addr,
        dport: u16,
        flags: u8,
        data: &[u8],
        o: IpOpts,
    ) -> Vec<u8> {
        let src = testkit::env_ip(env);
        let seg = match proto {
            TCP => testkit::tcp_segment(src, sport, dst, dport, flags, data),
            UDP => testkit::udp_segment(src, sport, dst, dport, data),
            _ => testkit::echo(true, sport, 1, data),
        };
        let port = self.env_port(env);
        testkit::ipv4_frame(testkit::inside_mac(port.0), testkit::env_mac(env), src, dst, proto, o, &seg)
    }

    /// A frame from the VPC host `src` to `dst`, through the router's MAC.
    #[allow(clippy::too_many_arguments)]
    pub fn vpc_frame(
        &self,
        src: Ipv4Addr,
        sport: u16,
        dst: Ipv4Addr,
        dport: u16,
        proto: u8,
        flags: u8,
        data: &[u8],
    ) -> Vec<u8> {
        let seg = match proto {
            TCP => testkit::tcp_segment(src, sport, dst, dport, flags, data),
            UDP => testkit::udp_segment(src, sport, dst, dport, data),
            _ => testkit::echo(false, dport, 1, data),
        };
        testkit::ipv4_frame(OUTSIDE_MAC, ROUTER_MAC, src, dst, proto, IpOpts::default(), &seg)
    }

    /// Sends from an environment and expects it forwarded outside with
    /// valid checksums; returns the translated frame.
    pub fn out_ok(&mut self, env: u32, proto: u8, sport: u16, dst: Ipv4Addr, dport: u16, flags: u8) -> Out {
        let f = self.env_frame(env, proto, sport, dst, dport, flags, b"hello");
        let out = self.send(self.env_port(env), f);
        assert_eq!(out.forwarded(), Some(PortId::OUTSIDE), "forwarded outside: {:?}", out.action);
        assert!(testkit::checksums_ok(&out.frame), "checksums after outbound rewrite");
        out
    }

    pub fn dropped(&self, r: DropReason) -> u64 {
        self.engine.counters().dropped(r)
    }

    pub fn gateway(&self) -> Ipv4Addr {
        GATEWAY
    }
}
