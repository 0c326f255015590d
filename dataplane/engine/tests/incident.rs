//! What the control plane asks of an engine during an incident, on the
//! virtual clock: chunked walks of the session table, removal of the
//! sessions an operator names, the environments with live sessions.

mod common;

use common::Harness;
use dataplane::config::EngineConfig;
use dataplane::counters::ProtoIndex;
use dataplane::flow::{TCP, UDP};
use dataplane::testkit::{self, SERVER, SERVER2};
use std::collections::BTreeSet;

const SYN: u8 = 0x02;

/// Environments 0..4 open `n` UDP flows each to SERVER and one TCP flow
/// each to SERVER2.
fn populate(h: &mut Harness, n: u16) {
    for env in 0..4 {
        for i in 0..n {
            h.out_ok(env, UDP, 1000 + i, SERVER, 53, 0);
        }
        h.out_ok(env, TCP, 5000, SERVER2, 443, SYN);
    }
}

fn count(h: &Harness, pick: impl Fn(&dataplane::session::Session) -> bool) -> usize {
    let mut n = 0;
    h.engine.sessions().for_each(|_, s| n += usize::from(pick(s)));
    n
}

#[test]
fn a_chunked_walk_visits_every_session_once_and_looks_at_most_at_its_chunk() {
    let mut h = Harness::with(EngineConfig { max_sessions: 1000, ..EngineConfig::default() });
    populate(&mut h, 20);
    let total = count(&h, |_| true);
    assert_eq!(total, 84);
    let mut seen = BTreeSet::new();
    let mut cursor = Some(0);
    let mut chunks = 0;
    while let Some(start) = cursor {
        let w = h.engine.walk_sessions(start, 64, |_, s| {
            assert!(seen.insert((s.inside, s.remote, s.proto)), "visited twice");
        });
        assert!(w.matched <= 64);
        cursor = w.next;
        chunks += 1;
    }
    assert_eq!(seen.len(), total);
    assert_eq!(chunks, 1000usize.div_ceil(64), "one chunk per 64 slots of the table");
}

#[test]
fn removing_sessions_by_filter_releases_what_expiry_releases_and_counts_them() {
    let mut h = Harness::with(EngineConfig { max_sessions: 1000, ..EngineConfig::default() });
    populate(&mut h, 10);
    let c = h.engine.counters();
    let udp_before = c.live_sessions(ProtoIndex::Udp);
    assert_eq!(udp_before, 40);
    let env1 = testkit::env_ip(1);
    // Environment 1's UDP sessions, in chunks of 100 slots.
    let (mut cursor, mut removed) = (Some(0), 0);
    while let Some(start) = cursor {
        let w = h.engine.remove_sessions(h.now, start, 100, |s| s.inside.ip == env1 && s.proto == UDP);
        removed += w.matched;
        cursor = w.next;
    }
    assert_eq!(removed, 10);
    assert_eq!(c.sessions_flushed.get(), 10);
    assert_eq!(count(&h, |s| s.inside.ip == env1 && s.proto == UDP), 0, "all of them went");
    assert_eq!(count(&h, |s| s.inside.ip == env1), 1, "its TCP flow stays");
    assert_eq!(count(&h, |_| true), 34, "other environments' sessions stay");
    assert_eq!(c.live_sessions(ProtoIndex::Udp), udp_before - 10, "gauges follow");
    // The flow comes back as a new session (its old one is gone).
    let created = c.sessions_created[ProtoIndex::Udp as usize].get();
    h.out_ok(1, UDP, 1000, SERVER, 53, 0);
    assert_eq!(c.sessions_created[ProtoIndex::Udp as usize].get(), created + 1);
    // Everything else, in one call.
    let w = h.engine.remove_sessions(h.now, 0, usize::MAX, |_| true);
    assert_eq!((w.matched, w.next), (35, None));
    assert_eq!(count(&h, |_| true), 0);
    assert_eq!(c.sessions_flushed.get(), 45);
    let mut active = vec![];
    h.engine.active_envs(|ip| active.push(ip));
    assert!(active.is_empty(), "no environment holds live sessions after a flush: {active:?}");
}

#[test]
fn active_environments_are_those_with_live_sessions() {
    let mut h = Harness::with(EngineConfig { max_sessions: 1000, ..EngineConfig::default() });
    h.out_ok(2, UDP, 1000, SERVER, 53, 0);
    h.out_ok(5, TCP, 1000, SERVER, 80, SYN);
    let mut active = BTreeSet::new();
    h.engine.active_envs(|ip| {
        active.insert(ip);
    });
    assert_eq!(active, BTreeSet::from([testkit::env_ip(2), testkit::env_ip(5)]));
    // Once they expire, none.
    h.advance(std::time::Duration::from_secs(7500));
    let mut n = 0;
    h.engine.active_envs(|_| n += 1);
    assert_eq!(n, 0);
}
