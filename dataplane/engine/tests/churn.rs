//! Sustained connection churn on the virtual clock: the session lifecycle
//! and resource rules that keep new connections opening when closed ones
//! would otherwise hold the table, the ports and the quotas.
//!
//! - a SYN on the 5-tuple of a closing or reset session reopens it;
//! - closed and reset sessions are recycled, oldest first, when a new flow
//!   needs their table slot or their port, and an established one never is;
//! - the port of a TCP mapping that ended by FIN or RST skips the
//!   quarantine (its closing timer was the quarantine);
//! - quotas count what an environment holds live;
//! - sessions opened from the VPC that the environment never answered have
//!   their own budget and never crowd out outbound flows;
//! - the VPC router's ARP entry is refreshed before it ages out.

mod common;

use common::{Harness, ENI};
use dataplane::config::EngineConfig;
use dataplane::counters::DropReason;
use dataplane::flow::{TCP, UDP};
use dataplane::testkit::{self, Topology, ROUTER, ROUTER_MAC, SERVER};
use dataplane::time::Instant;
use dataplane::{arp, Action, Event, PortId};
use std::net::Ipv4Addr;
use std::time::Duration;

const SYN: u8 = 0x02;
const SYNACK: u8 = 0x12;
const ACK: u8 = 0x10;
const FIN: u8 = 0x11;
const RST: u8 = 0x04;

/// A whole connection from environment `env` source port `sport` to the
/// server's port 80: handshake, then closed by `close` ("rst", "fin" or
/// "open" to leave it established). Returns the ENI endpoint it used.
fn connection(h: &mut Harness, env: u32, sport: u16, close: &str) -> (Ipv4Addr, u16) {
    let out = h.out_ok(env, TCP, sport, SERVER, 80, SYN);
    let eni = out.src();
    let back = h.vpc_frame(SERVER, 80, eni.0, eni.1, TCP, SYNACK, b"");
    assert!(h.send(PortId::OUTSIDE, back).forwarded().is_some(), "SYN/ACK delivered");
    h.out_ok(env, TCP, sport, SERVER, 80, ACK);
    match close {
        "rst" => {
            h.out_ok(env, TCP, sport, SERVER, 80, RST);
        }
        "fin" => {
            h.out_ok(env, TCP, sport, SERVER, 80, FIN);
            let fin = h.vpc_frame(SERVER, 80, eni.0, eni.1, TCP, FIN, b"");
            assert!(h.send(PortId::OUTSIDE, fin).forwarded().is_some(), "FIN delivered");
            h.out_ok(env, TCP, sport, SERVER, 80, ACK);
        }
        "server-fin" => {
            // The server closes first (it keeps TIME_WAIT afterwards).
            let fin = h.vpc_frame(SERVER, 80, eni.0, eni.1, TCP, FIN, b"");
            assert!(h.send(PortId::OUTSIDE, fin).forwarded().is_some(), "FIN delivered");
            h.out_ok(env, TCP, sport, SERVER, 80, FIN);
            let ack = h.vpc_frame(SERVER, 80, eni.0, eni.1, TCP, ACK, b"");
            assert!(h.send(PortId::OUTSIDE, ack).forwarded().is_some(), "last ACK delivered");
        }
        _ => {}
    }
    eni
}

fn session_state(h: &Harness, env: u32, sport: u16) -> Option<&'static str> {
    let mut found = None;
    h.engine.sessions().for_each(|_, s| {
        if s.inside.ip == testkit::env_ip(env) && s.inside.port == sport {
            found = Some(s.tcp.name());
        }
    });
    found
}

#[test]
fn a_syn_on_a_reset_session_reopens_it_with_its_mapping() {
    let mut h = Harness::default();
    let eni = connection(&mut h, 0, 40000, "rst");
    assert_eq!(session_state(&h, 0, 40000), Some("CLOSE"));
    h.advance(Duration::from_secs(5));
    // The client reuses its port: the same 5-tuple, the same ENI endpoint,
    // and the session starts over as a new connection.
    let again = h.out_ok(0, TCP, 40000, SERVER, 80, SYN);
    assert_eq!(again.src(), eni);
    assert_eq!(session_state(&h, 0, 40000), Some("SYN_SENT"));
    assert_eq!(h.engine.counters().sessions_reopened.get(), 1);
    assert_eq!(h.engine.sessions().len(), 1);
}

#[test]
fn a_syn_on_a_closed_session_reopens_it_and_it_lives_as_established() {
    let mut h = Harness::default();
    let eni = connection(&mut h, 0, 40000, "fin");
    assert_eq!(session_state(&h, 0, 40000), Some("TIME_WAIT"));
    let again = connection(&mut h, 0, 40000, "open");
    assert_eq!(again, eni);
    assert_eq!(session_state(&h, 0, 40000), Some("ESTABLISHED"));
    // Established, not transitory: still there past the 240 s closing timer.
    h.advance(Duration::from_secs(600));
    assert_eq!(session_state(&h, 0, 40000), Some("ESTABLISHED"));
    h.out_ok(0, TCP, 40000, SERVER, 80, ACK);
}

#[test]
fn closed_sessions_are_recycled_oldest_first_when_the_table_is_full() {
    for close in ["rst", "fin"] {
        let cfg = EngineConfig { max_sessions: 32, ..EngineConfig::default() };
        let mut h = Harness::with(cfg);
        for i in 0..32 {
            connection(&mut h, i % 8, 10000 + i as u16, close);
            h.advance(Duration::from_millis(100));
        }
        assert_eq!(h.engine.sessions().len(), 32);
        // A table full of closing sessions still opens new connections, at
        // once and for as long as the churn goes on.
        for i in 0..200u16 {
            connection(&mut h, u32::from(i % 8), 20000 + i, close);
        }
        assert_eq!(h.dropped(DropReason::TableFull), 0, "{close}");
        assert_eq!(h.engine.counters().sessions_recycled.get(), 200, "{close}");
        // Oldest first: the first connections are gone, the newest are there.
        assert_eq!(session_state(&h, 0, 10000), None, "{close}");
        assert!(session_state(&h, 7, 20199).is_some(), "{close}");
    }
}

#[test]
fn established_sessions_are_never_recycled() {
    let cfg = EngineConfig { max_sessions: 16, ..EngineConfig::default() };
    let mut h = Harness::with(cfg);
    for i in 0..16 {
        connection(&mut h, i % 8, 10000 + i as u16, "open");
    }
    let f = h.env_frame(0, TCP, 30000, SERVER, 80, SYN, b"");
    let out = h.send(h.env_port(0), f);
    // Refused at once and said so (ICMP administratively prohibited), not
    // left to time out.
    assert!(matches!(out.action, Action::Reply { .. }), "{:?}", out.action);
    assert_eq!(h.dropped(DropReason::TableFull), 1);
    assert_eq!(h.engine.counters().sessions_recycled.get(), 0);
    for i in 0..16 {
        assert_eq!(session_state(&h, i % 8, 10000 + i as u16), Some("ESTABLISHED"));
    }
}

/// A flood of outbound flows nobody answers (a UDP scan, new 5-tuples to a
/// black hole) fills the table; as Linux's conntrack drops unreplied
/// entries early, a full table then gives the slot of the longest-waiting
/// unanswered one (sent more than [`dataplane::UNANSWERED_GRACE`] ago) to a
/// new flow, so connections keep opening after the flood. Answered flows,
/// established connections and unanswered flows younger than the grace are
/// never taken.
#[test]
fn a_table_full_of_unanswered_flows_still_opens_connections() {
    let cfg = EngineConfig { max_sessions: 64, ..EngineConfig::default() };
    let mut h = Harness::with(cfg);
    // 8 flows answered by the server and 8 established connections: kept.
    for i in 0..8u16 {
        let out = h.out_ok(u32::from(i), UDP, 5000 + i, SERVER, 53, 0);
        let eni = out.src();
        let back = h.vpc_frame(SERVER, 53, eni.0, eni.1, UDP, 0, b"answer");
        assert!(h.send(PortId::OUTSIDE, back).forwarded().is_some());
        connection(&mut h, u32::from(i), 6000 + i, "open");
    }
    // 48 UDP flows to ports nobody listens on.
    for i in 0..48u16 {
        h.out_ok(u32::from(i % 8), UDP, 7000 + i, SERVER, 9000 + i, 0);
    }
    assert_eq!(h.engine.sessions().len(), 64);
    // Within the grace a new flow is refused: those flows may yet be answered.
    let f = h.env_frame(0, TCP, 30000, SERVER, 80, SYN, b"");
    h.send(h.env_port(0), f);
    assert_eq!(h.dropped(DropReason::TableFull), 1);
    h.advance(dataplane::UNANSWERED_GRACE + Duration::from_millis(10));
    // After it, every new connection takes an unanswered flow's slot.
    for i in 0..40u16 {
        connection(&mut h, u32::from(i % 8), 20000 + i, "open");
    }
    assert_eq!(h.dropped(DropReason::TableFull), 1);
    assert_eq!(h.engine.counters().sessions_evicted.get(), 40);
    for i in 0..8u16 {
        assert_eq!(session_state(&h, u32::from(i), 6000 + i), Some("ESTABLISHED"), "established kept");
        let again = h.out_ok(u32::from(i), UDP, 5000 + i, SERVER, 53, 0);
        assert_eq!(h.engine.counters().sessions_evicted.get(), 40, "answered flow {i} kept: {again:?}");
    }
    // With only established connections and answered flows (and the 8
    // unanswered flows left, now answered too), the table is full again.
    for i in 40..48u16 {
        let mut eni = None;
        h.engine.sessions().for_each(|_, s| {
            if s.inside.port == 7000 + i {
                eni = Some(s.eni);
            }
        });
        let eni = eni.expect("left");
        let back = h.vpc_frame(SERVER, 9000 + i, eni.ip, eni.port, UDP, 0, b"late");
        assert!(h.send(PortId::OUTSIDE, back).forwarded().is_some());
    }
    h.advance(dataplane::UNANSWERED_GRACE);
    let f = h.env_frame(0, TCP, 31000, SERVER, 80, SYN, b"");
    h.send(h.env_port(0), f);
    assert_eq!(h.dropped(DropReason::TableFull), 2, "nothing left to take");
}

#[test]
fn closed_sessions_give_their_ports_back_when_the_pool_runs_out() {
    for close in ["rst", "fin"] {
        let cfg = EngineConfig { port_range: 30000..=30015, ..EngineConfig::default() };
        let mut h = Harness::with(cfg);
        for i in 0..16 {
            connection(&mut h, i % 8, 10000 + i as u16, close);
        }
        // 16 ports, all held by closing sessions: churn goes on.
        for i in 0..500u16 {
            let (addr, port) = connection(&mut h, u32::from(i % 8), 20000 + i, close);
            assert_eq!(addr, ENI);
            assert!((30000..=30015).contains(&port));
        }
        assert_eq!(h.dropped(DropReason::PortsExhausted), 0, "{close}");
        assert!(h.engine.counters().sessions_recycled.get() >= 500, "{close}");
    }
}

#[test]
fn a_port_whose_remote_closed_first_waits_out_its_time_wait_for_that_remote() {
    let cfg = EngineConfig { port_range: 30000..=30000, ..EngineConfig::default() };
    let mut h = Harness::with(cfg);
    let (_, port) = connection(&mut h, 0, 10000, "server-fin");
    assert_eq!(port, 30000);
    // The server holds TIME_WAIT for ENI:30000 -> SERVER:80: a new
    // connection to it must not get that port (its SYN would be lost).
    let f = h.env_frame(1, TCP, 10001, SERVER, 80, SYN, b"");
    assert!(h.send(h.env_port(1), f).forwarded().is_none());
    assert_eq!(h.dropped(DropReason::PortsExhausted), 1);
    // Towards another port of the server, the port is fine at once.
    assert_eq!(h.out_ok(1, TCP, 10002, SERVER, 81, SYN).src().1, 30000);
    let rst = h.vpc_frame(SERVER, 81, ENI, 30000, TCP, RST, b"");
    assert!(h.send(PortId::OUTSIDE, rst).forwarded().is_some());
    // And towards the first remote once its TIME_WAIT is over.
    h.advance(dataplane::engine::REMOTE_TIME_WAIT);
    assert_eq!(h.out_ok(2, TCP, 10003, SERVER, 80, SYN).src().1, 30000);
}

/// A Linux server holds TIME_WAIT for 60 s (`TCP_TIMEWAIT_LEN`) but its
/// timer wheel fires a 60 s timer up to an eighth late (the 10-minute
/// `loadgen connect` soak lost bursts of SYNs every 60 s, 64-68 s after
/// the first connections, when ports went back to the same server after
/// exactly 60 s): the port waits out 67.5 s for that remote.
#[test]
fn a_port_waits_out_a_linux_time_wait_that_ends_late() {
    let cfg = EngineConfig { port_range: 30000..=30000, ..EngineConfig::default() };
    let mut h = Harness::with(cfg);
    connection(&mut h, 0, 10000, "server-fin");
    h.advance(Duration::from_millis(67_500));
    let f = h.env_frame(1, TCP, 10001, SERVER, 80, SYN, b"");
    assert!(h.send(h.env_port(1), f).forwarded().is_none(), "67.5 s after the server's close");
    assert_eq!(h.dropped(DropReason::PortsExhausted), 1);
    h.advance(dataplane::engine::REMOTE_TIME_WAIT - Duration::from_millis(67_500));
    assert_eq!(h.out_ok(2, TCP, 10003, SERVER, 80, SYN).src().1, 30000);
}

#[test]
fn ports_whose_remote_closed_first_count_towards_the_high_water_mark() {
    let cfg = EngineConfig { port_range: 30000..=30063, high_water: 40, ..EngineConfig::default() };
    let mut h = Harness::with(cfg);
    for i in 0..39u16 {
        connection(&mut h, u32::from(i % 8), 10000 + i, "server-fin");
    }
    assert_eq!(h.engine.poll_event(), None);
    connection(&mut h, 0, 10039, "server-fin");
    assert!(matches!(h.engine.poll_event(), Some(Event::HighWater { addr: ENI, proto: TCP, in_use: 40 })));
}

#[test]
fn ports_cooling_in_their_remotes_time_wait_count_until_it_ends() {
    let cfg = EngineConfig { port_range: 30000..=30007, ..EngineConfig::default() };
    let mut h = Harness::with(cfg);
    for i in 0..8u16 {
        connection(&mut h, u32::from(i % 8), 10000 + i, "server-fin");
    }
    // The mark (7 of 8 ports) fired once while the ports filled: every
    // port waits in the server's TIME_WAIT.
    assert!(matches!(h.engine.poll_event(), Some(Event::HighWater { .. })));
    assert_eq!(h.engine.poll_event(), None);
    let closing = |h: &Harness| h.engine.port_use()[0].closing[0];
    assert_eq!(closing(&h), 8);
    // All eight are cooling, in the engine's port use and in the gauge
    // other threads read (what `hyperplane status` and the metrics show).
    let cooling = |h: &Harness| (h.engine.port_use()[0].cooling[0], h.engine.counters().port_gauges()[0].1.cooling[0]);
    assert_eq!(cooling(&h), (8, 8));
    // Once the server's TIME_WAIT is surely over, the next timer tick
    // counts them as plain recyclable ports; new connections to it take
    // those ports, and the mark fires again only once seven of them are
    // cooling again.
    h.advance(dataplane::engine::REMOTE_TIME_WAIT + Duration::from_secs(1));
    assert_eq!(cooling(&h), (0, 0), "the server's TIME_WAIT is over");
    assert_eq!(closing(&h), 8);
    for i in 0..6u16 {
        connection(&mut h, u32::from(i % 8), 20000 + i, "server-fin");
    }
    assert_eq!(h.engine.poll_event(), None, "six cooling ports are below the mark");
    connection(&mut h, 6, 20006, "server-fin");
    assert!(matches!(h.engine.poll_event(), Some(Event::HighWater { addr: ENI, proto: TCP, .. })));
    assert_eq!(h.dropped(DropReason::PortsExhausted), 0);
    // With an RST close nothing waits in the remote's TIME_WAIT: no event.
    let cfg = EngineConfig { port_range: 30000..=30007, ..EngineConfig::default() };
    let mut h = Harness::with(cfg);
    for i in 0..20u16 {
        connection(&mut h, u32::from(i % 8), 10000 + i, "rst");
    }
    assert_eq!(h.engine.poll_event(), None);
}

#[test]
fn live_flows_are_never_evicted_for_ports() {
    let cfg = EngineConfig { port_range: 30000..=30015, ..EngineConfig::default() };
    let mut h = Harness::with(cfg);
    for i in 0..16 {
        connection(&mut h, i % 8, 10000 + i as u16, "open");
    }
    let f = h.env_frame(0, TCP, 30000, SERVER, 80, SYN, b"");
    let out = h.send(h.env_port(0), f);
    assert!(matches!(out.action, Action::Reply { .. }), "ICMP 3/13: {:?}", out.action);
    assert_eq!(h.dropped(DropReason::PortsExhausted), 1);
}

#[test]
fn a_tcp_port_that_ended_in_a_close_skips_the_quarantine() {
    for close in ["rst", "fin"] {
        let cfg = EngineConfig { port_range: 30000..=30000, ..EngineConfig::default() };
        let mut h = Harness::with(cfg);
        connection(&mut h, 0, 10000, close);
        // The closing timer runs out (240 s): the port comes back at once.
        h.advance(Duration::from_secs(241));
        assert!(h.engine.sessions().is_empty());
        let out = h.out_ok(1, TCP, 10001, SERVER, 80, SYN);
        assert_eq!(out.src(), (ENI, 30000), "{close}");
    }
    // An idle UDP mapping's port still waits out the quarantine.
    let cfg = EngineConfig { port_range: 30000..=30000, ..EngineConfig::default() };
    let mut h = Harness::with(cfg);
    h.out_ok(0, UDP, 10000, SERVER, 53, 0);
    h.advance(Duration::from_secs(301));
    let f = h.env_frame(1, UDP, 10001, SERVER, 53, 0, b"x");
    assert!(h.send(h.env_port(1), f).forwarded().is_none(), "quarantined");
    h.advance(Duration::from_secs(120));
    h.out_ok(1, UDP, 10001, SERVER, 53, 0);
}

#[test]
fn quotas_count_what_an_environment_holds_live() {
    let cfg = EngineConfig { env_port_quota: 4, env_session_quota: 6, ..EngineConfig::default() };
    let mut h = Harness::with(cfg);
    // A function that calls a service without keep-alive: far more
    // connections than its quotas, each one closed.
    for i in 0..100u16 {
        connection(&mut h, 0, 10000 + i, if i % 2 == 0 { "rst" } else { "fin" });
    }
    assert_eq!(h.dropped(DropReason::QuotaExceeded), 0);
    // What it holds open is still bounded.
    for i in 0..4u16 {
        connection(&mut h, 0, 20000 + i, "open");
    }
    let f = h.env_frame(0, TCP, 20004, SERVER, 80, SYN, b"");
    assert!(h.send(h.env_port(0), f).forwarded().is_none());
    assert_eq!(h.dropped(DropReason::QuotaExceeded), 1);
}

/// An environment's quota counts follow it by address through bindings
/// changes: reordered, dropped while its sessions live on, and bound
/// again, it is held to what it holds; once its sessions expire it has its
/// whole quota back, and no other environment was charged for it.
#[test]
fn quotas_follow_an_environment_through_bindings_changes() {
    let cfg = EngineConfig { env_session_quota: 3, ..EngineConfig::default() };
    let mut h = Harness::with(cfg);
    let refused = |h: &mut Harness, env: u32, sport: u16| {
        let f = h.env_frame(env, UDP, sport, SERVER, 53, 0, b"x");
        h.send(h.env_port(env), f).forwarded().is_none()
    };
    let active = |h: &Harness| {
        let mut v = vec![];
        h.engine.active_envs(|ip| v.push(ip));
        v.sort();
        v
    };
    for p in 0..3 {
        h.out_ok(1, UDP, 1000 + p, SERVER, 53, 0);
    }
    h.out_ok(2, UDP, 1000, SERVER, 53, 0);
    // Reordered: environment 1 is still full, environment 2 has two left.
    let mut topo = h.topo.clone();
    topo.envs.reverse();
    h.engine.set_bindings(topo.bindings());
    assert!(refused(&mut h, 1, 2000));
    assert_eq!(h.dropped(DropReason::QuotaExceeded), 1);
    h.out_ok(2, UDP, 1001, SERVER, 53, 0);
    h.out_ok(2, UDP, 1002, SERVER, 53, 0);
    assert!(refused(&mut h, 2, 2000));
    assert_eq!(h.dropped(DropReason::QuotaExceeded), 2);
    // Dropped from the bindings, its sessions live on and it stays active.
    let ip1 = testkit::env_ip(1);
    topo.envs.retain(|e| e.ip != ip1);
    h.engine.set_bindings(topo.bindings());
    assert!(active(&h).contains(&ip1));
    assert!(refused(&mut h, 1, 2001), "no longer bound");
    assert_eq!(h.dropped(DropReason::Spoofed), 1);
    // Bound again (at another index): still full.
    topo.envs.push(h.topo.envs[1].clone());
    h.engine.set_bindings(topo.bindings());
    assert!(refused(&mut h, 1, 2002));
    assert_eq!(h.dropped(DropReason::QuotaExceeded), 3);
    // Dropped again; its sessions expire while it is unbound.
    topo.envs.retain(|e| e.ip != ip1);
    h.engine.set_bindings(topo.bindings());
    h.advance(Duration::from_secs(301));
    assert!(h.engine.sessions().is_empty());
    assert!(active(&h).is_empty());
    // Bound again, and everyone has the whole quota.
    h.engine.set_bindings(h.topo.bindings());
    for env in [1, 2] {
        for p in 0..3 {
            h.out_ok(env, UDP, 3000 + p, SERVER, 53, 0);
        }
        assert!(refused(&mut h, env, 4000));
    }
    assert_eq!(h.dropped(DropReason::QuotaExceeded), 5);
}

#[test]
fn aws_profile_port_quota_comes_back_when_flows_expire() {
    let cfg = EngineConfig { env_port_quota: 3, ..EngineConfig::aws() };
    let mut h = Harness::with(cfg);
    for p in 0..3 {
        h.out_ok(0, UDP, 10000 + p, SERVER, 53, 0);
    }
    h.advance(Duration::from_secs(400));
    assert!(h.engine.sessions().is_empty());
    h.out_ok(0, UDP, 10003, SERVER, 53, 0);
    assert_eq!(h.dropped(DropReason::QuotaExceeded), 0);
}

#[test]
fn inbound_sessions_from_the_vpc_never_crowd_out_outbound_ones() {
    // A table that holds the budget, and one the spray alone could fill.
    for max_sessions in [4096, 512] {
        let cfg = EngineConfig { max_sessions, ..EngineConfig::default() };
        let mut h = Harness::with(cfg);
        // Environment 0 keeps one UDP mapping; a VPC host sprays it from
        // 5,000 source ports (endpoint-independent filtering admits each).
        let (addr, port) = h.out_ok(0, UDP, 5000, SERVER, 53, 0).src();
        let host = Ipv4Addr::new(10, 0, 0, 77);
        h.learn(host, [0x02, 0, 0, 0, 0, 0x77]);
        for sport in 1000..6000u16 {
            let f = h.vpc_frame(host, sport, addr, port, UDP, 0, b"spray");
            h.send(PortId::OUTSIDE, f);
        }
        let unanswered = || {
            let mut n = 0;
            h.engine.sessions().for_each(|_, s| n += usize::from(s.inbound_origin && s.no_out()));
            n
        };
        let quota = h.engine.config().env_inbound_quota as usize;
        assert!(unanswered() <= quota, "{}", unanswered());
        if max_sessions > quota {
            assert_eq!(h.dropped(DropReason::InboundQuota), 5000 - quota as u64);
        }
        // It and its neighbours still open every new connection.
        let full_before = h.dropped(DropReason::TableFull);
        for env in 0..8 {
            for i in 0..50u16 {
                connection(&mut h, env, 20000 + i, "open");
            }
        }
        assert_eq!(h.dropped(DropReason::QuotaExceeded), 0, "{max_sessions}");
        assert_eq!(h.dropped(DropReason::TableFull), full_before, "{max_sessions}");
        // The environment's own mapping is live and untouched.
        let f = h.vpc_frame(SERVER, 53, addr, port, UDP, 0, b"answer");
        assert!(h.send(PortId::OUTSIDE, f).forwarded().is_some());
        h.out_ok(0, UDP, 5000, SERVER, 53, 0);
    }
}

#[test]
fn closing_sessions_do_not_raise_the_high_water_mark() {
    let cfg = EngineConfig { port_range: 30000..=30063, high_water: 40, ..EngineConfig::default() };
    let mut h = Harness::with(cfg);
    for i in 0..60u16 {
        connection(&mut h, u32::from(i % 8), 10000 + i, "rst");
    }
    // Ports held only by closing sessions are recyclable: no address needed.
    assert_eq!(h.engine.poll_event(), None);
    for i in 0..40u16 {
        connection(&mut h, u32::from(i % 8), 20000 + i, "open");
    }
    assert!(matches!(h.engine.poll_event(), Some(Event::HighWater { addr: ENI, proto: TCP, .. })));
    let u = h.engine.port_use();
    assert_eq!(u[0].in_use[0], 40, "live ports");
}

#[test]
fn an_address_whose_free_ports_are_all_quarantined_is_not_chosen() {
    let mut topo = Topology::new(2, 8);
    topo.enis[0].addrs.push(Ipv4Addr::new(10, 0, 0, 12));
    let cfg = EngineConfig { port_range: 30000..=30003, ..EngineConfig::default() };
    let mut h = Harness::new(cfg, topo);
    // Environment 0 takes every port of the first address, and lets them
    // go: they rest in quarantine.
    for p in 0..4 {
        assert_eq!(h.out_ok(0, UDP, 10000 + p, SERVER, 53, 0).src().0, ENI);
    }
    h.advance(Duration::from_secs(301));
    // Its next mappings go to the address that has ports to give.
    for p in 0..4 {
        assert_eq!(h.out_ok(0, UDP, 11000 + p, SERVER, 53, 0).src().0, Ipv4Addr::new(10, 0, 0, 12));
    }
    assert_eq!(h.dropped(DropReason::PortsExhausted), 0);
}

/// Answers the engine's ARP requests for the router; returns how many.
fn answer_arp(h: &mut Harness) -> usize {
    let mut n = 0;
    for (_, f) in h.drain() {
        if let Some(req) = arp::parse(&f) {
            if req.target_ip == ROUTER {
                let mut r = vec![0u8; 64];
                let len = arp::write_request(&mut r, ROUTER_MAC, ROUTER, req.sender_ip);
                r.truncate(len);
                h.send_raw(PortId::OUTSIDE, r);
                n += 1;
            }
        }
    }
    n
}

#[test]
fn the_router_stays_resolved_so_no_frame_waits_for_arp() {
    let mut h = Harness::default();
    // Traffic to a host beyond the router, every 10 s for 20 minutes: every
    // frame leaves at once (none is held for ARP), because the entry is
    // refreshed before it ages out.
    let far = Ipv4Addr::new(10, 9, 0, 1);
    let mut refreshed = 0;
    for i in 0..120 {
        let f = h.env_frame(0, UDP, 10000, far, 53, 0, b"q");
        let out = h.send_raw(h.env_port(0), f);
        assert!(matches!(out.action, Action::Forward { .. }), "at {} s: {:?}", i * 10, out.action);
        assert_eq!(out.dst_mac(), ROUTER_MAC);
        h.advance(Duration::from_secs(10));
        refreshed += answer_arp(&mut h);
    }
    assert!(refreshed >= 3, "refreshed {refreshed} times");
    assert_eq!(h.dropped(DropReason::ArpUnresolved), 0);
}

#[test]
fn a_burst_of_first_syns_waits_for_the_router_without_loss() {
    // A fresh engine that has not heard from the router: 200 environments'
    // first SYNs arrive before its ARP reply.
    let topo = Topology::new(4, 200);
    let mut h = Harness::new(EngineConfig::default(), topo);
    let far = Ipv4Addr::new(10, 9, 0, 1);
    let mut fresh = dataplane::Engine::new(EngineConfig::default(), h.topo.bindings()).unwrap();
    std::mem::swap(&mut h.engine, &mut fresh);
    let _ = h.drain();
    let mut held = 0;
    for env in 0..200 {
        let f = h.env_frame(env, TCP, 40000, far, 443, SYN, b"");
        if h.send_raw(h.env_port(env), f).action == Action::Consumed {
            held += 1;
        }
    }
    assert_eq!(held, 200);
    assert_eq!(h.dropped(DropReason::ArpUnresolved), 0);
    // The reply releases every one of them.
    let mut r = vec![0u8; 64];
    let len = arp::write_request(&mut r, ROUTER_MAC, ROUTER, ENI);
    r.truncate(len);
    h.send_raw(PortId::OUTSIDE, r);
    let released = h.drain().iter().filter(|(_, f)| arp::parse(f).is_none()).count();
    assert_eq!(released, 200);
}

/// The control plane's side of growth, as the runtime does it: an event
/// for the ENI's newest address (or any exhaustion) starts a probe of the
/// next address, which joins the ENI `PROBE` later; one probe at a time.
struct Growth {
    probing: Option<Instant>,
    added: u32,
}

const PROBE: Duration = Duration::from_millis(300);

impl Growth {
    fn step(&mut self, h: &mut Harness) {
        while let Some(e) = h.engine.poll_event() {
            let last = *h.topo.enis[0].addrs.last().expect("an address");
            let want = match e {
                Event::HighWater { addr, .. } => addr == last,
                Event::Exhausted { .. } => true,
                Event::NoEni { .. } => false,
            };
            if want && self.probing.is_none() {
                self.probing = Some(h.now + PROBE);
            }
        }
        if self.probing.is_some_and(|t| t <= h.now) {
            self.probing = None;
            self.added += 1;
            let next = Ipv4Addr::new(10, 0, 0, 10 + self.added as u8);
            h.topo.enis[0].addrs.push(next);
            h.engine.set_bindings(h.topo.bindings());
        }
    }
}

/// Sustained churn whose server closes first (so every port it used waits
/// out the server's TIME_WAIT before it may carry a connection to it again)
/// for 70% of connections, at 200 connections a second, on addresses of 512
/// ports: the ENI must grow to about 17 addresses, grows ahead of need (the
/// high-water mark counts the ports still in the server's TIME_WAIT, and
/// no more), and so no first SYN is ever refused.
#[test]
fn churn_towards_one_server_grows_the_eni_before_any_syn_is_refused() {
    let cfg = EngineConfig { port_range: 20000..=20511, ..EngineConfig::default() };
    let mut h = Harness::new(cfg, Topology::new(2, 64));
    let mut g = Growth { probing: None, added: 0 };
    let mut refused = 0u32;
    let mut opened = 0u32;
    for n in 0..36_000u32 {
        h.advance(Duration::from_millis(5));
        g.step(&mut h);
        let env = n % 64;
        let sport = 10_000 + (n / 64) as u16;
        let syn = h.env_frame(env, TCP, sport, SERVER, 80, SYN, b"");
        let out = h.send(h.env_port(env), syn);
        if out.forwarded() != Some(PortId::OUTSIDE) {
            refused += 1;
            continue;
        }
        opened += 1;
        let eni = out.src();
        // Who closes first is a race in real servers: mostly the server.
        let server_first = (n.wrapping_mul(2_654_435_761) >> 16) % 10 < 7;
        let close = if server_first {
            [(true, SYNACK), (false, ACK), (true, FIN), (false, FIN), (true, ACK)]
        } else {
            [(true, SYNACK), (false, ACK), (false, FIN), (true, FIN), (false, ACK)]
        };
        for (from_vpc, flags) in close {
            if from_vpc {
                let f = h.vpc_frame(SERVER, 80, eni.0, eni.1, TCP, flags, b"");
                assert!(h.send(PortId::OUTSIDE, f).forwarded().is_some());
            } else {
                h.out_ok(env, TCP, sport, SERVER, 80, flags);
            }
        }
    }
    assert_eq!(refused, 0, "{opened} opened; ENI grew by {} addresses", g.added);
    // A minute of cooling ports: 200/s × 70% × 60 s = 8,400 ports, about 17
    // addresses of 448 (their marks); growth stops there.
    assert!((14..=24).contains(&g.added), "the ENI grew to carry a minute of ports: {}", g.added);
}

/// Issue 12 item 9: an engine publishes port use for at most
/// `ADDR_GAUGES` addresses; one past that must not look empty to the
/// control plane (which would delete a draining ENI that still holds
/// flows). The engine counts the addresses it tracks without a gauge, and a
/// gauge freed by a removed address goes to one of them.
#[test]
fn addresses_past_the_gauges_are_counted_and_gauged_when_a_slot_frees() {
    use dataplane::counters::ADDR_GAUGES;
    let n = ADDR_GAUGES + 10;
    let mut addrs: Vec<Ipv4Addr> =
        (1..n as u32).map(|i| Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 0, 8, 0)) + i)).collect();
    addrs.insert(0, ENI);
    let mut topo = Topology::new(1, 2);
    topo.enis[0].addrs = addrs.clone();
    let mut h = Harness::new(EngineConfig::default(), topo.clone());
    let c = h.engine.counters();
    assert_eq!(c.addrs_ungauged.get(), 10);
    let gauged: std::collections::HashSet<Ipv4Addr> = c.port_gauges().into_iter().map(|(a, _)| a).collect();
    assert_eq!(gauged.len(), ADDR_GAUGES);
    // Drop ten gauged addresses (they hold nothing): the ten others get
    // their slots.
    let keep: Vec<Ipv4Addr> =
        addrs.iter().enumerate().filter(|(i, _)| !(1..=10).contains(i)).map(|(_, &a)| a).collect();
    topo.enis[0].addrs = keep.clone();
    h.engine.set_bindings(topo.bindings());
    assert_eq!(c.addrs_ungauged.get(), 0);
    let gauged: std::collections::HashSet<Ipv4Addr> = c.port_gauges().into_iter().map(|(a, _)| a).collect();
    assert_eq!(gauged, keep.into_iter().collect());
}

/// Issue 12 item 9: a gratuitous ARP for a new address that does not fit
/// the transmit queue (300 addresses bound at once, 256 frames of room) is
/// sent later, not skipped.
#[test]
fn every_new_address_is_announced_even_past_the_transmit_queue() {
    let mut topo = Topology::new(1, 2);
    let mut h = Harness::new(EngineConfig::default(), topo.clone());
    let extra: Vec<Ipv4Addr> =
        (1..=300u32).map(|i| Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 0, 16, 0)) + i)).collect();
    topo.enis[0].addrs.extend(&extra);
    h.engine.set_bindings(topo.bindings());
    let announced: std::collections::HashSet<Ipv4Addr> = h
        .drain()
        .iter()
        .filter_map(|(_, f)| arp::parse(f))
        .filter(|m| m.sender_ip == m.target_ip)
        .map(|m| m.sender_ip)
        .collect();
    assert_eq!(announced.len(), 300, "{} of 300 announced", announced.len());
    assert_eq!(announced, extra.iter().copied().collect());
    assert_eq!(h.engine.counters().arp_gratuitous_deferred.get(), 300 - 256);
    assert_eq!(h.engine.counters().arp_gratuitous.get(), 301, "the first address's at start, and 300");
}
