//! The session and mapping tables: preallocated slabs, two hash indexes
//! each, and a timer wheel for expiry.
//!
//! # Sessions
//! A [`Session`] is one flow: (protocol, environment endpoint, remote
//! endpoint) and the ENI endpoint it is translated to. It is found by its
//! inside key `(proto, inside, remote)` when a packet leaves an environment,
//! and by its outside key `(proto, eni, remote)` when a packet comes back.
//! Both indexes are chained hash tables whose links live in the session
//! itself, so a hit costs one bucket read and one session read.
//!
//! # Mappings
//! Under endpoint-independent mapping a [`Mapping`] ties an environment
//! endpoint to an ENI endpoint for every destination; its sessions hang off
//! it in a doubly linked list (used by address-dependent filtering) and it
//! lives as long as it has sessions. Under address-and-port-dependent mapping
//! sessions have no mapping (`mapping == NIL`).
//!
//! # Expiry
//! Every session sits in one slot of a timer wheel of [`WHEEL_SLOTS`]
//! one-second slots. A packet only stores `last_seen` (no list operation on
//! the packet path); when a slot comes due each session in it is checked
//! against its real deadline `last_seen + idle timeout` and either expired or
//! moved to the slot of that deadline. A state change that shortens the
//! timeout re-slots the session at once. Deadlines are therefore honoured to
//! within one second, rounded up: a session is never expired early.
//!
//! # Capacity and memory
//! Everything is allocated in [`SessionTable::new`]; a full table refuses new
//! sessions (the caller counts the drop) and never grows. Memory per session
//! slot: `size_of::<Session>()` (112 bytes) plus 8 bytes of index buckets;
//! per mapping slot `size_of::<Mapping>()` (40 bytes) plus 8 bytes.

use crate::bindings::Mac;
use crate::config::Timeouts;
use crate::flow::{Endpoint, FlowKey, TCP, UDP};
use crate::tcp;
use crate::time::Instant;
use crate::PortId;
use core::hash::BuildHasher;
use std::time::Duration;

/// No entry.
pub const NIL: u32 = u32::MAX;
/// Slots of the timer wheel (seconds it spans).
pub const WHEEL_SLOTS: usize = 8192;

/// One flow.
#[derive(Clone, Copy, Debug)]
pub struct Session {
    /// IP protocol number.
    pub proto: u8,
    /// TCP state (meaningless for UDP and ICMP).
    pub tcp: tcp::State,
    /// Created by a packet from the VPC (endpoint-independent or
    /// address-dependent filtering admitted it).
    pub inbound_origin: bool,
    /// The environment's attachment.
    pub port: PortId,
    /// The environment's MAC.
    pub env_mac: Mac,
    /// The environment's endpoint.
    pub inside: Endpoint,
    /// The remote endpoint.
    pub remote: Endpoint,
    /// The ENI endpoint.
    pub eni: Endpoint,
    /// Last packet that refreshes the session.
    pub last_seen: Instant,
    /// The mapping it belongs to, or [`NIL`].
    pub mapping: u32,
    in_next: u32,
    out_next: u32,
    map_prev: u32,
    map_next: u32,
    wheel_prev: u32,
    wheel_next: u32,
    wheel_slot: u32,
    /// When it was created.
    pub created: Instant,
    /// Packets environment → VPC.
    pub out_packets: u64,
    /// IP bytes environment → VPC.
    pub out_bytes: u64,
    /// Packets VPC → environment.
    pub in_packets: u64,
    /// IP bytes VPC → environment.
    pub in_bytes: u64,
}

impl Session {
    /// A new session; links are filled in by [`SessionTable::insert`].
    pub fn new(
        proto: u8,
        inside: Endpoint,
        remote: Endpoint,
        eni: Endpoint,
        port: PortId,
        env_mac: Mac,
        now: Instant,
    ) -> Session {
        Session {
            proto,
            tcp: tcp::State::SynOut,
            inbound_origin: false,
            port,
            env_mac,
            inside,
            remote,
            eni,
            last_seen: now,
            mapping: NIL,
            in_next: NIL,
            out_next: NIL,
            map_prev: NIL,
            map_next: NIL,
            wheel_prev: NIL,
            wheel_next: NIL,
            wheel_slot: NIL,
            created: now,
            out_packets: 0,
            out_bytes: 0,
            in_packets: 0,
            in_bytes: 0,
        }
    }

    /// The idle timeout that applies now.
    #[inline]
    pub fn idle_timeout(&self, t: &Timeouts) -> Duration {
        match self.proto {
            TCP => self.tcp.timeout(t),
            UDP => t.udp,
            _ => t.icmp,
        }
    }

    /// When it expires if nothing refreshes it.
    #[inline]
    pub fn deadline(&self, t: &Timeouts) -> Instant {
        self.last_seen + self.idle_timeout(t)
    }

    /// The inside key.
    pub fn inside_key(&self) -> FlowKey {
        FlowKey { proto: self.proto, local: self.inside, remote: self.remote }
    }

    /// The outside key.
    pub fn outside_key(&self) -> FlowKey {
        FlowKey { proto: self.proto, local: self.eni, remote: self.remote }
    }
}

/// An endpoint-independent mapping: environment endpoint ↔ ENI endpoint.
#[derive(Clone, Copy, Debug)]
pub struct Mapping {
    /// IP protocol number.
    pub proto: u8,
    /// The environment's attachment.
    pub port: PortId,
    /// The environment's MAC.
    pub env_mac: Mac,
    /// The environment's endpoint.
    pub inside: Endpoint,
    /// The ENI endpoint.
    pub eni: Endpoint,
    /// Live sessions using it.
    pub sessions: u32,
    head: u32,
    in_next: u32,
    out_next: u32,
}

/// A full table.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Full;

type Hasher = foldhash::fast::FixedState;

#[inline]
fn hash3(h: &Hasher, proto: u8, a: Endpoint, b: Endpoint) -> u64 {
    let x = (u64::from(proto) << 48) | (u64::from(u32::from(a.ip)) << 16) | u64::from(a.port);
    let y = (u64::from(u32::from(b.ip)) << 16) | u64::from(b.port);
    h.hash_one((x, y))
}

#[inline]
fn hash2(h: &Hasher, proto: u8, a: Endpoint) -> u64 {
    let x = (u64::from(proto) << 48) | (u64::from(u32::from(a.ip)) << 16) | u64::from(a.port);
    h.hash_one(x)
}

fn buckets_for(capacity: usize) -> usize {
    capacity.max(16).next_power_of_two()
}

/// Sessions, mappings, their indexes and the expiry wheel.
pub struct SessionTable {
    sessions: Vec<Session>,
    free: Vec<u32>,
    in_buckets: Vec<u32>,
    out_buckets: Vec<u32>,
    mask: u64,
    mappings: Vec<Mapping>,
    map_free: Vec<u32>,
    map_in_buckets: Vec<u32>,
    map_out_buckets: Vec<u32>,
    hasher: Hasher,
    wheel: Vec<u32>,
    wheel_now: u64,
    timeouts: Timeouts,
}

impl SessionTable {
    /// A table for `capacity` sessions (and as many mappings).
    pub fn new(capacity: usize, timeouts: Timeouts, seed: u64) -> SessionTable {
        let nb = buckets_for(capacity);
        let blank = Session::new(
            0,
            Endpoint::new(0.into(), 0),
            Endpoint::new(0.into(), 0),
            Endpoint::new(0.into(), 0),
            PortId(0),
            [0; 6],
            Instant::ZERO,
        );
        let blank_map = Mapping {
            proto: 0,
            port: PortId(0),
            env_mac: [0; 6],
            inside: blank.inside,
            eni: blank.eni,
            sessions: 0,
            head: NIL,
            in_next: NIL,
            out_next: NIL,
        };
        let cap = u32::try_from(capacity).unwrap_or(u32::MAX - 1) as usize;
        SessionTable {
            sessions: vec![blank; cap],
            free: (0..cap as u32).rev().collect(),
            in_buckets: vec![NIL; nb],
            out_buckets: vec![NIL; nb],
            mask: nb as u64 - 1,
            mappings: vec![blank_map; cap],
            map_free: (0..cap as u32).rev().collect(),
            map_in_buckets: vec![NIL; nb],
            map_out_buckets: vec![NIL; nb],
            hasher: Hasher::with_seed(seed),
            wheel: vec![NIL; WHEEL_SLOTS],
            wheel_now: 0,
            timeouts,
        }
    }

    /// Changes the idle timeouts; sessions are re-checked when their slot
    /// comes due (a shorter timeout takes effect within the old deadline).
    pub fn set_timeouts(&mut self, t: Timeouts) {
        self.timeouts = t;
    }

    /// The idle timeouts in force.
    pub fn timeouts(&self) -> &Timeouts {
        &self.timeouts
    }

    /// Live sessions.
    pub fn len(&self) -> usize {
        self.sessions.len() - self.free.len()
    }

    /// Whether there are no sessions.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Session capacity.
    pub fn capacity(&self) -> usize {
        self.sessions.len()
    }

    /// Live mappings.
    pub fn mappings_len(&self) -> usize {
        self.mappings.len() - self.map_free.len()
    }

    /// A session by id.
    #[inline]
    pub fn get(&self, id: u32) -> &Session {
        &self.sessions[id as usize]
    }

    /// A session by id, to refresh or count.
    #[inline]
    pub fn get_mut(&mut self, id: u32) -> &mut Session {
        &mut self.sessions[id as usize]
    }

    /// A mapping by id.
    #[inline]
    pub fn mapping(&self, id: u32) -> &Mapping {
        &self.mappings[id as usize]
    }

    /// Finds a session by inside key.
    #[inline]
    pub fn find_inside(&self, k: &FlowKey) -> Option<u32> {
        let b = (hash3(&self.hasher, k.proto, k.local, k.remote) & self.mask) as usize;
        let mut id = self.in_buckets[b];
        while id != NIL {
            let s = &self.sessions[id as usize];
            if s.inside == k.local && s.remote == k.remote && s.proto == k.proto {
                return Some(id);
            }
            id = s.in_next;
        }
        None
    }

    /// Finds a session by outside key.
    #[inline]
    pub fn find_outside(&self, k: &FlowKey) -> Option<u32> {
        let b = (hash3(&self.hasher, k.proto, k.local, k.remote) & self.mask) as usize;
        let mut id = self.out_buckets[b];
        while id != NIL {
            let s = &self.sessions[id as usize];
            if s.eni == k.local && s.remote == k.remote && s.proto == k.proto {
                return Some(id);
            }
            id = s.out_next;
        }
        None
    }

    /// Finds a mapping by (proto, environment endpoint).
    pub fn find_mapping_inside(&self, proto: u8, inside: Endpoint) -> Option<u32> {
        let b = (hash2(&self.hasher, proto, inside) & self.mask) as usize;
        let mut id = self.map_in_buckets[b];
        while id != NIL {
            let m = &self.mappings[id as usize];
            if m.inside == inside && m.proto == proto {
                return Some(id);
            }
            id = m.in_next;
        }
        None
    }

    /// Finds a mapping by (proto, ENI endpoint).
    pub fn find_mapping_outside(&self, proto: u8, eni: Endpoint) -> Option<u32> {
        let b = (hash2(&self.hasher, proto, eni) & self.mask) as usize;
        let mut id = self.map_out_buckets[b];
        while id != NIL {
            let m = &self.mappings[id as usize];
            if m.eni == eni && m.proto == proto {
                return Some(id);
            }
            id = m.out_next;
        }
        None
    }

    /// Whether any session of mapping `m` has sent to `remote` (its address
    /// only when `port_too` is false). Walks the mapping's sessions.
    pub fn mapping_has_remote(&self, m: u32, remote: Endpoint, port_too: bool) -> bool {
        let mut id = self.mappings[m as usize].head;
        while id != NIL {
            let s = &self.sessions[id as usize];
            if s.remote.ip == remote.ip && (!port_too || s.remote.port == remote.port) && !s.inbound_origin {
                return true;
            }
            id = s.map_next;
        }
        false
    }

    /// Creates a mapping with no sessions yet.
    pub fn insert_mapping(
        &mut self,
        proto: u8,
        inside: Endpoint,
        eni: Endpoint,
        port: PortId,
        env_mac: Mac,
    ) -> Result<u32, Full> {
        let id = self.map_free.pop().ok_or(Full)?;
        let bi = (hash2(&self.hasher, proto, inside) & self.mask) as usize;
        let bo = (hash2(&self.hasher, proto, eni) & self.mask) as usize;
        self.mappings[id as usize] = Mapping {
            proto,
            port,
            env_mac,
            inside,
            eni,
            sessions: 0,
            head: NIL,
            in_next: self.map_in_buckets[bi],
            out_next: self.map_out_buckets[bo],
        };
        self.map_in_buckets[bi] = id;
        self.map_out_buckets[bo] = id;
        Ok(id)
    }

    /// Removes a mapping that never got a session (its session could not be
    /// inserted). Does nothing if it has sessions.
    pub fn drop_empty_mapping(&mut self, id: u32) {
        if self.mappings[id as usize].sessions == 0 {
            self.remove_mapping(id);
        }
    }

    fn remove_mapping(&mut self, id: u32) {
        let m = self.mappings[id as usize];
        let bi = (hash2(&self.hasher, m.proto, m.inside) & self.mask) as usize;
        let bo = (hash2(&self.hasher, m.proto, m.eni) & self.mask) as usize;
        unlink(&mut self.map_in_buckets[bi], &mut self.mappings, id, Link::Inside);
        unlink(&mut self.map_out_buckets[bo], &mut self.mappings, id, Link::Outside);
        self.map_free.push(id);
    }

    /// Inserts a session (under `mapping`, or [`NIL`]). The caller has made
    /// sure neither key is present.
    pub fn insert(&mut self, mut s: Session, mapping: u32) -> Result<u32, Full> {
        let id = self.free.pop().ok_or(Full)?;
        let bi = (hash3(&self.hasher, s.proto, s.inside, s.remote) & self.mask) as usize;
        let bo = (hash3(&self.hasher, s.proto, s.eni, s.remote) & self.mask) as usize;
        s.in_next = self.in_buckets[bi];
        s.out_next = self.out_buckets[bo];
        s.mapping = mapping;
        s.map_prev = NIL;
        s.map_next = NIL;
        if mapping != NIL {
            let m = &mut self.mappings[mapping as usize];
            s.map_next = m.head;
            m.head = id;
            m.sessions += 1;
            if s.map_next != NIL {
                self.sessions[s.map_next as usize].map_prev = id;
            }
        }
        self.in_buckets[bi] = id;
        self.out_buckets[bo] = id;
        self.sessions[id as usize] = s;
        let deadline = s.deadline(&self.timeouts);
        self.wheel_insert(id, deadline);
        Ok(id)
    }

    /// Re-slots a session after a state change that may have shortened its
    /// timeout.
    pub fn reschedule(&mut self, id: u32) {
        self.wheel_remove(id);
        let deadline = self.sessions[id as usize].deadline(&self.timeouts);
        self.wheel_insert(id, deadline);
    }

    /// Removes a session. Returns the mapping it left if that mapping now has
    /// no sessions and was removed too (the caller frees its port).
    pub fn remove(&mut self, id: u32) -> Option<Mapping> {
        self.wheel_remove(id);
        let s = self.sessions[id as usize];
        let bi = (hash3(&self.hasher, s.proto, s.inside, s.remote) & self.mask) as usize;
        let bo = (hash3(&self.hasher, s.proto, s.eni, s.remote) & self.mask) as usize;
        unlink(&mut self.in_buckets[bi], &mut self.sessions, id, Link::Inside);
        unlink(&mut self.out_buckets[bo], &mut self.sessions, id, Link::Outside);
        self.free.push(id);
        if s.mapping == NIL {
            return None;
        }
        if s.map_prev != NIL {
            self.sessions[s.map_prev as usize].map_next = s.map_next;
        } else {
            self.mappings[s.mapping as usize].head = s.map_next;
        }
        if s.map_next != NIL {
            self.sessions[s.map_next as usize].map_prev = s.map_prev;
        }
        let m = &mut self.mappings[s.mapping as usize];
        m.sessions -= 1;
        if m.sessions == 0 {
            let gone = *m;
            self.remove_mapping(s.mapping);
            return Some(gone);
        }
        None
    }

    fn wheel_insert(&mut self, id: u32, deadline: Instant) {
        // Round up to the next whole second, and keep within the wheel.
        let due = deadline.millis().div_ceil(1000);
        let due = due.clamp(self.wheel_now + 1, self.wheel_now + WHEEL_SLOTS as u64 - 1);
        let slot = (due as usize) & (WHEEL_SLOTS - 1);
        let head = self.wheel[slot];
        let s = &mut self.sessions[id as usize];
        s.wheel_slot = slot as u32;
        s.wheel_prev = NIL;
        s.wheel_next = head;
        if head != NIL {
            self.sessions[head as usize].wheel_prev = id;
        }
        self.wheel[slot] = id;
    }

    fn wheel_remove(&mut self, id: u32) {
        let s = self.sessions[id as usize];
        if s.wheel_slot == NIL {
            return;
        }
        if s.wheel_prev != NIL {
            self.sessions[s.wheel_prev as usize].wheel_next = s.wheel_next;
        } else {
            self.wheel[s.wheel_slot as usize] = s.wheel_next;
        }
        if s.wheel_next != NIL {
            self.sessions[s.wheel_next as usize].wheel_prev = s.wheel_prev;
        }
        self.sessions[id as usize].wheel_slot = NIL;
    }

    /// When [`SessionTable::expire`] next has work: the next second boundary
    /// while any session lives.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.is_empty() {
            None
        } else {
            Some(Instant::from_secs(self.wheel_now + 1))
        }
    }

    /// Expires every session whose deadline is at or before `now`, calling
    /// `gone(session, mapping_removed)` for each after it left the table.
    /// Returns how many expired.
    pub fn expire(&mut self, now: Instant, mut gone: impl FnMut(&Session, Option<Mapping>)) -> usize {
        let target = now.secs();
        if target <= self.wheel_now {
            return 0;
        }
        let from = if target - self.wheel_now > WHEEL_SLOTS as u64 {
            target - WHEEL_SLOTS as u64 + 1
        } else {
            self.wheel_now + 1
        };
        self.wheel_now = target;
        let mut expired = 0;
        for t in from..=target {
            let slot = (t as usize) & (WHEEL_SLOTS - 1);
            let mut id = std::mem::replace(&mut self.wheel[slot], NIL);
            while id != NIL {
                let s = self.sessions[id as usize];
                let next = s.wheel_next;
                self.sessions[id as usize].wheel_slot = NIL;
                let deadline = s.deadline(&self.timeouts);
                if deadline <= now {
                    let m = self.remove(id);
                    gone(&s, m);
                    expired += 1;
                } else {
                    self.wheel_insert(id, deadline);
                }
                id = next;
            }
        }
        expired
    }

    /// Calls `f` for every live session.
    pub fn for_each(&self, mut f: impl FnMut(u32, &Session)) {
        // Slots on the free list are skipped by marking them first.
        let mut live = vec![true; self.sessions.len()];
        for &i in &self.free {
            live[i as usize] = false;
        }
        for (i, s) in self.sessions.iter().enumerate() {
            if live[i] {
                f(i as u32, s);
            }
        }
    }
}

/// Which hash chain a link belongs to.
#[derive(Copy, Clone)]
enum Link {
    Inside,
    Outside,
}

/// An entry that sits on two hash chains.
trait Chained {
    fn link(&mut self, l: Link) -> &mut u32;
}

impl Chained for Session {
    fn link(&mut self, l: Link) -> &mut u32 {
        match l {
            Link::Inside => &mut self.in_next,
            Link::Outside => &mut self.out_next,
        }
    }
}

impl Chained for Mapping {
    fn link(&mut self, l: Link) -> &mut u32 {
        match l {
            Link::Inside => &mut self.in_next,
            Link::Outside => &mut self.out_next,
        }
    }
}

/// Removes `id` from the chain of `l` links that starts at `head`.
fn unlink<T: Chained>(head: &mut u32, slab: &mut [T], id: u32, l: Link) {
    let after = *slab[id as usize].link(l);
    if *head == id {
        *head = after;
        return;
    }
    let mut cur = *head;
    while cur != NIL {
        let next = slab[cur as usize].link(l);
        if *next == id {
            *next = after;
            return;
        }
        cur = *next;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::net::Ipv4Addr;

    fn ep(a: u8, p: u16) -> Endpoint {
        Endpoint::new(Ipv4Addr::new(10, 0, 0, a), p)
    }

    fn table() -> SessionTable {
        SessionTable::new(8, Timeouts::default(), 7)
    }

    #[test]
    fn memory_per_session_is_as_documented() {
        assert_eq!(core::mem::size_of::<Session>(), 112);
        assert_eq!(core::mem::size_of::<Mapping>(), 40);
    }

    #[test]
    fn insert_find_remove_by_both_keys() {
        let mut t = table();
        let s = Session::new(UDP, ep(2, 1000), ep(100, 53), ep(10, 40000), PortId(1), [0; 6], Instant::ZERO);
        let id = t.insert(s, NIL).unwrap();
        assert_eq!(t.find_inside(&s.inside_key()), Some(id));
        assert_eq!(t.find_outside(&s.outside_key()), Some(id));
        let other = FlowKey { proto: TCP, ..s.inside_key() };
        assert_eq!(t.find_inside(&other), None, "keys include the protocol");
        assert!(t.remove(id).is_none());
        assert_eq!(t.find_inside(&s.inside_key()), None);
        assert_eq!(t.find_outside(&s.outside_key()), None);
        assert!(t.is_empty());
    }

    #[test]
    fn mapping_lives_while_it_has_sessions() {
        let mut t = table();
        let m = t.insert_mapping(UDP, ep(2, 1000), ep(10, 40000), PortId(1), [0; 6]).unwrap();
        let a = t
            .insert(Session::new(UDP, ep(2, 1000), ep(100, 53), ep(10, 40000), PortId(1), [0; 6], Instant::ZERO), m)
            .unwrap();
        let b = t
            .insert(Session::new(UDP, ep(2, 1000), ep(101, 53), ep(10, 40000), PortId(1), [0; 6], Instant::ZERO), m)
            .unwrap();
        assert!(t.mapping_has_remote(m, ep(101, 9), false));
        assert!(!t.mapping_has_remote(m, ep(101, 9), true));
        assert!(t.remove(a).is_none());
        assert_eq!(t.find_mapping_outside(UDP, ep(10, 40000)), Some(m));
        let gone = t.remove(b).expect("last session takes the mapping with it");
        assert_eq!(gone.eni, ep(10, 40000));
        assert_eq!(t.find_mapping_inside(UDP, ep(2, 1000)), None);
        assert_eq!(t.mappings_len(), 0);
    }

    #[test]
    fn full_table_refuses() {
        let mut t = table();
        for i in 0..8 {
            t.insert(Session::new(UDP, ep(2, i), ep(100, 53), ep(10, i), PortId(1), [0; 6], Instant::ZERO), NIL)
                .unwrap();
        }
        let s = Session::new(UDP, ep(2, 99), ep(100, 53), ep(10, 99), PortId(1), [0; 6], Instant::ZERO);
        assert_eq!(t.insert(s, NIL), Err(Full));
    }

    #[test]
    fn wheel_expires_on_the_deadline_rounded_up_and_never_early() {
        let mut t = table();
        let s = Session::new(UDP, ep(2, 1), ep(100, 53), ep(10, 1), PortId(1), [0; 6], Instant::from_millis(500));
        let id = t.insert(s, NIL).unwrap();
        // Deadline 300.5 s: not at 300 s, gone by 301 s.
        assert_eq!(t.expire(Instant::from_millis(300_499), |_, _| {}), 0);
        // A refresh without any wheel operation moves the deadline.
        t.get_mut(id).last_seen = Instant::from_secs(200);
        assert_eq!(t.expire(Instant::from_secs(301), |_, _| {}), 0);
        assert_eq!(t.expire(Instant::from_secs(499), |_, _| {}), 0);
        let mut seen = vec![];
        assert_eq!(t.expire(Instant::from_secs(500), |s, _| seen.push(s.inside)), 1);
        assert_eq!(seen, [ep(2, 1)]);
    }

    #[test]
    fn deadlines_beyond_the_wheel_span_and_big_clock_jumps() {
        let mut t = table();
        let mut s = Session::new(TCP, ep(2, 1), ep(100, 80), ep(10, 1), PortId(1), [0; 6], Instant::ZERO);
        s.tcp = tcp::State::Established;
        t.insert(s, NIL).unwrap();
        // 7440 s fits in the 8192-slot wheel; jump in big steps past it.
        assert_eq!(t.expire(Instant::from_secs(5000), |_, _| {}), 0);
        assert_eq!(t.expire(Instant::from_secs(7439), |_, _| {}), 0);
        assert_eq!(t.expire(Instant::from_secs(100_000), |_, _| {}), 1);
    }

    #[test]
    fn reschedule_shortens_a_deadline() {
        let mut t = table();
        let mut s = Session::new(TCP, ep(2, 1), ep(100, 80), ep(10, 1), PortId(1), [0; 6], Instant::ZERO);
        s.tcp = tcp::State::Established;
        let id = t.insert(s, NIL).unwrap();
        t.get_mut(id).tcp = tcp::State::FinBoth;
        t.reschedule(id);
        assert_eq!(t.expire(Instant::from_secs(241), |_, _| {}), 1);
    }
}
