//! The session and mapping tables: preallocated slabs, two hash indexes
//! each, and a timer wheel for expiry.
//!
//! # Sessions
//! A [`Session`] is one flow: (protocol, environment endpoint, remote
//! endpoint) and the ENI endpoint it is translated to. It is found by its
//! inside key `(proto, inside, remote)` when a packet leaves an environment,
//! and by its outside key `(proto, eni, remote)` when a packet comes back.
//! Both indexes are [`FlowIndex`]es: 64-byte buckets of ten slot ids and
//! their 16-bit hash tags, open addressing over buckets, so a hit costs one
//! bucket line and the session's hot lines, and a miss one bucket line. The
//! key's hash ([`SessionTable::hash`]) can be computed once and passed to
//! the `*_hashed` lookups, and buckets and sessions prefetched before them
//! (the engine's batch path does). A new flow likewise passes the hashes
//! it computed to [`SessionTable::insert_hashed`] and the mapping calls
//! ([`SessionTable::mapping_hash`]), so no key is hashed twice.
//!
//! A slot is split hot and cold: everything an established packet touches
//! (key, translation, attachment, MAC, recyclable list, `last_seen`, the
//! counters) is its [`Session`], one 64-byte line; the wheel, list and
//! mapping links that only creating, expiring and recycling touch are its
//! [`Links`], in a slab beside the sessions. An established packet costs
//! one bucket line and one session line.
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
//! # Recyclable sessions
//! A session whose connection has ended (TCP after both FINs or an RST) or
//! that the VPC opened and the environment never answered holds nothing a
//! user is waiting for: it only waits out its timer. The engine marks such
//! sessions recyclable with [`SessionTable::set_recyclable`], which puts them
//! at the tail of one of up to [`LISTS`] FIFO lists (one per ENI address,
//! chosen by the engine); a new flow that finds the table, a port pool or a
//! mapping slot full takes the head of a list (the session that became
//! recyclable first) instead of failing. A session is on at most one list;
//! removing it takes it off. Established sessions are never on a list.
//!
//! # Capacity and memory
//! Everything is allocated in [`SessionTable::new`]; a full table refuses new
//! sessions (the caller counts the drop or recycles) and never grows.
//!
//! Memory per session slot, indexes included: a [`Session`] (64 bytes, one
//! aligned cache line: 32 bytes of one-, two- and six-byte fields, 3
//! eight-byte and 2 four-byte fields) and its [`Links`] (48 bytes) plus two
//! indexes of `ceil(capacity / 9)` 64-byte buckets each, 64 / 9 = 7.1 bytes
//! per slot per index: 64 + 48 + 14.2 = 126.2 bytes (at most 128 for 64
//! slots or more; [`SessionTable::bytes_per_session`] gives the exact
//! figure). An established packet reads its bucket and its session's one
//! line, which [`SessionTable::prefetch_session`] prefetches: at a million
//! sessions that is 87 ns a packet where the earlier layout (a 112-byte
//! slot, its 72 hot bytes over two lines) took 115 (`cargo bench --bench
//! engine`, same machine).

//! Per mapping slot (as many as session slots): `size_of::<Mapping>()` (44
//! bytes) plus 8 bytes of its two chained indexes. Mappings are only read
//! by new flows and by inbound packets without a session.

use crate::bindings::Mac;
use crate::config::Timeouts;
use crate::flow::{Endpoint, FlowKey, TCP, UDP};
use crate::index::{prefetch, FlowIndex};
use crate::tcp;
use crate::time::Instant;
use crate::PortId;
use core::hash::BuildHasher;
use std::time::Duration;

/// No entry.
pub const NIL: u32 = u32::MAX;
/// [`SessionTable::prefetch_candidates`]: no candidate in the home bucket,
/// but an entry may have been placed further (not a slot id: capacities
/// stay below it).
pub const MAYBE: u32 = u32::MAX - 1;
/// Slots of the timer wheel (seconds it spans).
pub const WHEEL_SLOTS: usize = 8192;
/// Recyclable lists a table keeps.
pub const LISTS: usize = 1024;
/// Not on any list, or not in the wheel.
const NIL16: u16 = u16::MAX;

/// One flow: everything an established packet reads or writes, in one
/// 64-byte cache line (`repr(C, align(64))`, so a slot never straddles two
/// lines): key, translation, attachment, MAC, its recyclable list,
/// `last_seen` and the counters. The links that only creating, expiring
/// and recycling touch, and the high parts of the packet counts, are the
/// table's ([`Links`], a slab beside this one).
///
/// Packet counts: a session counts packets each way as `hi × (2³² − 1) +
/// lo`, `lo` here and `hi` in its [`Links`]: `lo` runs from 1 to
/// `u32::MAX` and starts again at 1 (adding one to `hi`), so `lo` is 0
/// exactly when nothing was counted ([`Session::no_out`], read on the
/// established path without the links' line).
#[derive(Clone, Copy, Debug)]
#[repr(C, align(64))]
pub struct Session {
    /// IP protocol number.
    pub proto: u8,
    /// TCP state (meaningless for UDP and ICMP).
    pub tcp: tcp::State,
    /// Created by a packet from the VPC (endpoint-independent or
    /// address-dependent filtering admitted it).
    pub inbound_origin: bool,
    /// The VPC side sent its FIN first: after the close it holds TIME_WAIT
    /// for this 5-tuple, so the ENI port must not carry a new connection
    /// to the same remote endpoint for a while.
    pub remote_closed_first: bool,
    /// The environment's attachment.
    pub port: PortId,
    /// The environment's endpoint.
    pub inside: Endpoint,
    /// The remote endpoint.
    pub remote: Endpoint,
    /// The ENI endpoint.
    pub eni: Endpoint,
    /// The environment's MAC.
    pub env_mac: Mac,
    /// The recyclable list it is on, or `NIL16`.
    list: u16,
    /// Last packet that refreshes the session.
    pub last_seen: Instant,
    /// IP bytes environment → VPC.
    pub out_bytes: u64,
    /// IP bytes VPC → environment.
    pub in_bytes: u64,
    /// Packets environment → VPC, low part (see the type's doc).
    out_lo: u32,
    /// Packets VPC → environment, low part.
    in_lo: u32,
}

/// What a session slot holds besides its [`Session`]: its place in the
/// mapping's, the wheel's and a recyclable list's chains, its creation
/// time and the high parts of its packet counts. Read and written when a
/// session is created, expired, recycled or re-slotted, never by an
/// established packet (but once every 2³² − 1 packets of one direction).
#[derive(Clone, Copy, Debug)]
#[repr(C)]
pub struct Links {
    /// When the session was created.
    created: Instant,
    /// The mapping it belongs to, or [`NIL`].
    mapping: u32,
    map_prev: u32,
    map_next: u32,
    wheel_prev: u32,
    wheel_next: u32,
    list_prev: u32,
    list_next: u32,
    wheel_slot: u16,
    out_hi: u32,
    in_hi: u32,
}

const BLANK_LINKS: Links = Links {
    created: Instant::ZERO,
    mapping: NIL,
    map_prev: NIL,
    map_next: NIL,
    wheel_prev: NIL,
    wheel_next: NIL,
    list_prev: NIL,
    list_next: NIL,
    wheel_slot: NIL16,
    out_hi: 0,
    in_hi: 0,
};

/// Adds one packet to a count kept as `hi × (2³² − 1) + lo` (see
/// [`Session`]).
#[inline]
fn count(lo: &mut u32, hi: impl FnOnce()) {
    if *lo == u32::MAX {
        *lo = 1;
        hi();
    } else {
        *lo += 1;
    }
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
            remote_closed_first: false,
            port,
            env_mac,
            inside,
            remote,
            eni,
            last_seen: now,
            list: NIL16,
            out_bytes: 0,
            in_bytes: 0,
            out_lo: 0,
            in_lo: 0,
        }
    }

    /// Counts the packet of `bytes` that creates the session, sent out
    /// (`out`) or in.
    pub fn count_first(&mut self, out: bool, bytes: usize) {
        if out {
            (self.out_lo, self.out_bytes) = (1, bytes as u64);
        } else {
            (self.in_lo, self.in_bytes) = (1, bytes as u64);
        }
    }

    /// No packet was counted environment → VPC.
    #[inline]
    pub fn no_out(&self) -> bool {
        self.out_lo == 0
    }

    /// No packet was counted VPC → environment.
    #[inline]
    pub fn no_in(&self) -> bool {
        self.in_lo == 0
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

    /// The recyclable list it is on, if any.
    pub fn on_list(&self) -> Option<u16> {
        (self.list != NIL16).then_some(self.list)
    }

    /// Whether it is on a recyclable list.
    pub fn recyclable(&self) -> bool {
        self.list != NIL16
    }
}

/// A full table.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Full;

/// What removing a session released besides its slot.
#[derive(Copy, Clone, Debug)]
pub struct Removed {
    /// Its mapping, if the session was the mapping's last and the mapping
    /// went with it (the caller frees the mapping's port).
    pub mapping: Option<Mapping>,
    /// The session was live (not recyclable) and no live session holds its
    /// port any more: under endpoint-independent mapping its mapping's last
    /// live session, under address-and-port-dependent mapping always.
    pub port_left_live: bool,
}

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
    /// Each slot's [`Links`], by slot id.
    links: Vec<Links>,
    free: Vec<u32>,
    in_index: FlowIndex,
    out_index: FlowIndex,
    /// Buckets of the mapping indexes, less one.
    mask: u64,
    mappings: Vec<Mapping>,
    map_free: Vec<u32>,
    map_in_buckets: Vec<u32>,
    map_out_buckets: Vec<u32>,
    hasher: Hasher,
    wheel: Vec<u32>,
    wheel_now: u64,
    timeouts: Timeouts,
    /// Recyclable lists: (head, tail, length).
    lists: Vec<(u32, u32, u32)>,
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
            live: 0,
            head: NIL,
            in_next: NIL,
            out_next: NIL,
        };
        let cap = u32::try_from(capacity).unwrap_or(u32::MAX - 1) as usize;
        SessionTable {
            sessions: vec![blank; cap],
            links: vec![BLANK_LINKS; cap],
            free: (0..cap as u32).rev().collect(),
            in_index: FlowIndex::new(cap),
            out_index: FlowIndex::new(cap),
            mask: nb as u64 - 1,
            mappings: vec![blank_map; cap],
            map_free: (0..cap as u32).rev().collect(),
            map_in_buckets: vec![NIL; nb],
            map_out_buckets: vec![NIL; nb],
            hasher: Hasher::with_seed(seed),
            wheel: vec![NIL; WHEEL_SLOTS],
            wheel_now: 0,
            timeouts,
            lists: vec![(NIL, NIL, 0); LISTS],
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

    /// Counts a packet of `bytes` environment → VPC on session `id`.
    #[inline]
    pub fn count_out(&mut self, id: u32, bytes: usize) {
        let s = &mut self.sessions[id as usize];
        s.out_bytes += bytes as u64;
        count(&mut s.out_lo, || self.links[id as usize].out_hi += 1);
    }

    /// Counts a packet of `bytes` VPC → environment on session `id`.
    #[inline]
    pub fn count_in(&mut self, id: u32, bytes: usize) {
        let s = &mut self.sessions[id as usize];
        s.in_bytes += bytes as u64;
        count(&mut s.in_lo, || self.links[id as usize].in_hi += 1);
    }

    /// Packets session `id` counted environment → VPC.
    pub fn out_packets(&self, id: u32) -> u64 {
        let (lo, hi) = (self.sessions[id as usize].out_lo, self.links[id as usize].out_hi);
        u64::from(hi) * u64::from(u32::MAX) + u64::from(lo)
    }

    /// Packets session `id` counted VPC → environment.
    pub fn in_packets(&self, id: u32) -> u64 {
        let (lo, hi) = (self.sessions[id as usize].in_lo, self.links[id as usize].in_hi);
        u64::from(hi) * u64::from(u32::MAX) + u64::from(lo)
    }

    /// Starts session `id` over as a new connection on the same 5-tuple
    /// (a SYN after the old one ended): created now, its first packet of
    /// `bytes` counted out, nothing counted in, no FIN from the VPC seen.
    pub fn reopen(&mut self, id: u32, now: Instant, bytes: usize) {
        let s = &mut self.sessions[id as usize];
        s.remote_closed_first = false;
        (s.in_lo, s.in_bytes) = (0, 0);
        s.count_first(true, bytes);
        let l = &mut self.links[id as usize];
        (l.created, l.out_hi, l.in_hi) = (now, 0, 0);
    }

    /// When session `id` was created (or reopened).
    pub fn created(&self, id: u32) -> Instant {
        self.links[id as usize].created
    }

    /// The mapping session `id` belongs to, or [`NIL`].
    pub fn mapping_of(&self, id: u32) -> u32 {
        self.links[id as usize].mapping
    }

    /// A mapping by id.
    #[inline]
    pub fn mapping(&self, id: u32) -> &Mapping {
        &self.mappings[id as usize]
    }

    /// The hash of a flow key, as both session indexes use it (an inside
    /// key in the inside index, an outside key in the outside index).
    #[inline]
    pub fn hash(&self, k: &FlowKey) -> u64 {
        hash3(&self.hasher, k.proto, k.local, k.remote)
    }

    /// Finds a session by inside key.
    #[inline]
    pub fn find_inside(&self, k: &FlowKey) -> Option<u32> {
        self.find_inside_hashed(k, self.hash(k))
    }

    /// Finds a session by inside key whose [`SessionTable::hash`] is `h`.
    #[inline]
    pub fn find_inside_hashed(&self, k: &FlowKey, h: u64) -> Option<u32> {
        let sessions = &self.sessions;
        self.in_index.find(h, |id| {
            let s = &sessions[id as usize];
            s.inside == k.local && s.remote == k.remote && s.proto == k.proto
        })
    }

    /// Finds a session by outside key.
    #[inline]
    pub fn find_outside(&self, k: &FlowKey) -> Option<u32> {
        self.find_outside_hashed(k, self.hash(k))
    }

    /// Finds a session by outside key whose [`SessionTable::hash`] is `h`.
    #[inline]
    pub fn find_outside_hashed(&self, k: &FlowKey, h: u64) -> Option<u32> {
        let sessions = &self.sessions;
        self.out_index.find(h, |id| {
            let s = &sessions[id as usize];
            s.eni == k.local && s.remote == k.remote && s.proto == k.proto
        })
    }

    /// Prefetches the index bucket of an inside (`outside` false) or outside
    /// key hash: a hint, no effect on results.
    #[inline]
    pub fn prefetch_bucket(&self, h: u64, outside: bool) {
        if outside {
            self.out_index.prefetch(h);
        } else {
            self.in_index.prefetch(h);
        }
    }

    /// Prefetches the sessions that the home bucket of hash `h` holds under
    /// its tag, in the inside (`outside` false) or outside index: a hint,
    /// no effect on results. Returns the first of them, or [`NIL`] (the
    /// likely hit, for the caller to check against its key: a free slot
    /// has protocol 0, so a slot whose key equals a key of a real protocol
    /// is that key's live session). [`NIL`] when the index proves that no
    /// session is stored under `h`, and [`MAYBE`] when it holds none under
    /// `h` in the home bucket but may hold one further (a lookup decides).
    #[inline]
    pub fn prefetch_candidates(&self, h: u64, outside: bool) -> u32 {
        let index = if outside { &self.out_index } else { &self.in_index };
        let mut first = NIL;
        let complete = index.candidates(h, |id| {
            if first == NIL {
                first = id;
            }
            self.prefetch_session(id);
        });
        if first == NIL && !complete {
            MAYBE
        } else {
            first
        }
    }

    /// Prefetches the cache line of session `id` (all an established
    /// packet touches): a hint, no effect on results.
    #[inline]
    pub fn prefetch_session(&self, id: u32) {
        if let Some(s) = self.sessions.get(id as usize) {
            prefetch(s);
        }
    }

    /// Bytes the session slab and both session indexes take, per session
    /// slot (see the module doc).
    pub fn bytes_per_session(&self) -> f64 {
        let slab = self.sessions.len() * (core::mem::size_of::<Session>() + core::mem::size_of::<Links>());
        let total = slab + self.in_index.bytes() + self.out_index.bytes();
        total as f64 / self.sessions.len().max(1) as f64
    }

    /// Inserts a session (under `mapping`, or [`NIL`]). The caller has made
    /// sure neither key is present.
    pub fn insert(&mut self, s: Session, mapping: u32) -> Result<u32, Full> {
        let hi = hash3(&self.hasher, s.proto, s.inside, s.remote);
        let ho = hash3(&self.hasher, s.proto, s.eni, s.remote);
        self.insert_hashed(&s, mapping, hi, ho)
    }

    /// [`SessionTable::insert`] with the [`SessionTable::hash`] of its
    /// inside (`hi`) and outside (`ho`) keys. The session is copied into
    /// its slot once, and its links (mapping chain, wheel slot) are written
    /// once, whole.
    #[inline(always)]
    pub fn insert_hashed(&mut self, s: &Session, mapping: u32, hi: u64, ho: u64) -> Result<u32, Full> {
        let id = self.free.pop().ok_or(Full)?;
        // Each index is sized for every slot: an insert always finds room.
        if !self.in_index.insert(hi, id) {
            self.free.push(id);
            return Err(Full);
        }
        if !self.out_index.insert(ho, id) {
            self.in_index.remove(hi, id);
            self.free.push(id);
            return Err(Full);
        }
        let mut map_next = NIL;
        if mapping != NIL {
            let m = &mut self.mappings[mapping as usize];
            map_next = m.head;
            m.head = id;
            m.sessions += 1;
            m.live += 1;
            if map_next != NIL {
                self.links[map_next as usize].map_prev = id;
            }
        }
        let slot = self.wheel_slot(s.deadline(&self.timeouts));
        let wheel_next = self.wheel[slot];
        if wheel_next != NIL {
            self.links[wheel_next as usize].wheel_prev = id;
        }
        self.wheel[slot] = id;
        self.links[id as usize] =
            Links { created: s.last_seen, mapping, map_next, wheel_next, wheel_slot: slot as u16, ..BLANK_LINKS };
        let d = &mut self.sessions[id as usize];
        *d = *s;
        d.list = NIL16;
        Ok(id)
    }

    /// Removes a session; see [`Removed`] for what else it released.
    pub fn remove(&mut self, id: u32) -> Removed {
        self.wheel_remove(id);
        let was_recyclable = self.sessions[id as usize].recyclable();
        self.list_remove(id);
        let s = self.sessions[id as usize];
        let l = self.links[id as usize];
        self.in_index.remove(hash3(&self.hasher, s.proto, s.inside, s.remote), id);
        self.out_index.remove(hash3(&self.hasher, s.proto, s.eni, s.remote), id);
        self.free.push(id);
        // A free slot has protocol 0 (no live session has).
        self.sessions[id as usize].proto = 0;
        if l.mapping == NIL {
            return Removed { mapping: None, port_left_live: !was_recyclable };
        }
        if l.map_prev != NIL {
            self.links[l.map_prev as usize].map_next = l.map_next;
        } else {
            self.mappings[l.mapping as usize].head = l.map_next;
        }
        if l.map_next != NIL {
            self.links[l.map_next as usize].map_prev = l.map_prev;
        }
        let m = &mut self.mappings[l.mapping as usize];
        m.sessions -= 1;
        if !was_recyclable {
            m.live -= 1;
        }
        let port_left_live = !was_recyclable && m.live == 0;
        if m.sessions == 0 {
            let gone = *m;
            self.remove_mapping(l.mapping);
            return Removed { mapping: Some(gone), port_left_live };
        }
        Removed { mapping: None, port_left_live }
    }

    /// Calls `f` for every session in the table (free slots have protocol
    /// 0 and are skipped). Allocates nothing.
    pub fn for_each(&self, mut f: impl FnMut(u32, &Session)) {
        for (i, s) in self.sessions.iter().enumerate() {
            if s.proto != 0 {
                f(i as u32, s);
            }
        }
    }

    /// Calls `f` for every session in slots `start..start + slots` (free
    /// slots skipped), for walks spread over several calls: returns the
    /// slot to start the next call at, or `None` when the walk reached the
    /// end of the table. Allocates nothing; costs `slots`, not the table.
    pub fn for_each_from(&self, start: u32, slots: usize, mut f: impl FnMut(u32, &Session)) -> Option<u32> {
        let start = (start as usize).min(self.sessions.len());
        let end = start.saturating_add(slots).min(self.sessions.len());
        for (i, s) in self.sessions[start..end].iter().enumerate() {
            if s.proto != 0 {
                f((start + i) as u32, s);
            }
        }
        (end < self.sessions.len()).then_some(end as u32)
    }
}

mod lists;
mod mappings;
mod wheel;

pub use mappings::Mapping;

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
        // A session is one cache line, aligned to one; its links are the
        // rest of the slot.
        assert_eq!(core::mem::size_of::<Session>(), 64);
        assert_eq!(core::mem::align_of::<Session>(), 64);
        assert_eq!(core::mem::size_of::<Links>(), 48);
        assert_eq!(core::mem::size_of::<Mapping>(), 44);
        // Session slab and both indexes: at most 128 bytes per session.
        for cap in [64, 1000, 100_000, 1_250_000] {
            let t = SessionTable::new(cap, Timeouts::default(), 7);
            let b = t.bytes_per_session();
            assert!(b <= 128.0, "{cap} slots: {b} bytes per session");
            assert!(b >= 126.0, "{cap} slots: {b}: the arithmetic in the module doc is stale");
        }
    }

    /// Packet counts go on past 2³² in each direction, and a session counts
    /// as having sent nothing only before its first packet.
    #[test]
    fn packet_counts_carry_past_the_low_part() {
        let mut t = table();
        let mut s = Session::new(UDP, ep(1, 1000), ep(9, 53), ep(200, 5000), PortId(1), [2; 6], Instant::ZERO);
        assert!(s.no_out() && s.no_in());
        s.count_first(true, 100);
        let id = t.insert(s, NIL).unwrap();
        assert_eq!((t.out_packets(id), t.in_packets(id)), (1, 0));
        assert!(!t.get(id).no_out() && t.get(id).no_in());
        // Just below the low part's end: the next three packets cross it.
        t.sessions[id as usize].out_lo = u32::MAX - 1;
        let before = t.out_packets(id);
        for _ in 0..3 {
            t.count_out(id, 10);
            assert!(!t.get(id).no_out(), "a session that sent never counts as silent again");
        }
        assert_eq!(t.out_packets(id), before + 3);
        assert_eq!(t.out_packets(id), u64::from(u32::MAX) + 2);
        assert_eq!(t.get(id).out_bytes, 130);
        t.sessions[id as usize].in_lo = u32::MAX;
        let before = t.in_packets(id);
        t.count_in(id, 1);
        assert_eq!(t.in_packets(id), before + 1);
        // Reopened, it starts over: one packet out, none in.
        t.reopen(id, Instant::from_secs(5), 60);
        assert_eq!((t.out_packets(id), t.in_packets(id)), (1, 0));
        assert_eq!((t.get(id).out_bytes, t.get(id).in_bytes), (60, 0));
        assert!(t.get(id).no_in());
        assert_eq!(t.created(id), Instant::from_secs(5));
    }

    /// Lookups find exactly the sessions present while thousands come and
    /// go in a table filled to capacity (index buckets overflowing into
    /// their neighbours and draining again).
    #[test]
    fn full_table_churn_keeps_both_indexes_exact() {
        let cap = 2000;
        let mut t = SessionTable::new(cap, Timeouts::default(), 11);
        let s = |i: u32| {
            let inside = Endpoint::new(Ipv4Addr::new(10, 0, (i >> 8) as u8, i as u8), 1000 + (i % 7) as u16);
            let eni = Endpoint::new(Ipv4Addr::new(10, 9, 0, 1), 20_000 + i as u16);
            Session::new(UDP, inside, ep(100, 53), eni, PortId(1), [0; 6], Instant::ZERO)
        };
        let mut ids: Vec<Option<u32>> = vec![None; 3 * cap];
        let mut x = 1u64;
        for step in 0..20_000 {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            let i = ((x >> 33) as usize) % ids.len();
            match ids[i] {
                Some(id) => {
                    t.remove(id);
                    ids[i] = None;
                }
                None if t.len() < cap => ids[i] = Some(t.insert(s(i as u32), NIL).unwrap()),
                None => assert_eq!(t.insert(s(i as u32), NIL), Err(Full)),
            }
            if step % 997 == 0 {
                for (j, id) in ids.iter().enumerate() {
                    let k = s(j as u32);
                    assert_eq!(t.find_inside(&k.inside_key()), *id);
                    assert_eq!(t.find_outside(&k.outside_key()), *id);
                }
            }
        }
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
        assert!(t.remove(id).mapping.is_none());
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
        assert!(t.remove(a).mapping.is_none());
        assert_eq!(t.find_mapping_outside(UDP, ep(10, 40000)), Some(m));
        let gone = t.remove(b).mapping.expect("last session takes the mapping with it");
        assert_eq!(gone.eni, ep(10, 40000));
        assert_eq!(t.find_mapping_inside(UDP, ep(2, 1000)), None);
        assert_eq!(t.mappings_len(), 0);
    }

    #[test]
    fn recyclable_lists_are_fifo_and_track_live_sessions() {
        let mut t = table();
        let m = t.insert_mapping(TCP, ep(2, 1000), ep(10, 40000), PortId(1), [0; 6]).unwrap();
        let a = t
            .insert(Session::new(TCP, ep(2, 1000), ep(100, 80), ep(10, 40000), PortId(1), [0; 6], Instant::ZERO), m)
            .unwrap();
        let b = t
            .insert(Session::new(TCP, ep(2, 1000), ep(101, 80), ep(10, 40000), PortId(1), [0; 6], Instant::ZERO), m)
            .unwrap();
        assert_eq!(t.mapping(m).live, 2);
        assert!(!t.set_recyclable(a, Some(3)), "b still holds the port live");
        assert!(t.set_recyclable(b, Some(3)), "the port is now held by recyclable sessions only");
        assert_eq!((t.list_head(3), t.list_len(3), t.recyclable_len()), (Some(a), 2, 2));
        assert_eq!(t.list_next(a), Some(b));
        assert_eq!(t.mapping(m).live, 0);
        assert!(t.set_recyclable(a, None), "a is live again");
        assert_eq!((t.list_head(3), t.list_len(3)), (Some(b), 1));
        let r = t.remove(b);
        assert!(!r.port_left_live && r.mapping.is_none());
        assert_eq!(t.list_head(3), None);
        let r = t.remove(a);
        assert!(r.port_left_live && r.mapping.is_some());
        let mut n = 0;
        t.for_each(|_, _| n += 1);
        assert_eq!(n, 0, "free slots are skipped");
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
