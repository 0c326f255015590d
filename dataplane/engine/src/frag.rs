//! Bounded virtual reassembly of IPv4 fragments.
//!
//! The NAT translates a fragmented datagram without reassembling it (as VPP
//! NAT44 and Linux conntrack do). Only the first fragment (offset 0) carries
//! the transport header, so only it can be looked up in the session table; the
//! engine translates it and hands the resulting translation record `T` to
//! [`FragTable::first`]. Every other fragment of the same datagram, identified
//! by its [`FragKey`] as it arrived, is translated with that same `T` (the
//! engine rewrites only addresses, ident and the IP checksum).
//!
//! A fragment that arrives before the first one cannot be translated yet: it is
//! copied into a preallocated frame slot ([`Later::Buffered`]) and handed back
//! by [`FragTable::poll_released`] once the first fragment has been seen, in
//! arrival order, together with its `T` and arrival port.
//!
//! # Units
//! Offsets, lengths and totals are **bytes of IP payload** (the IPv4 fragment
//! offset field times 8). Frames are whole Ethernet frames. Time is
//! [`Instant`] (milliseconds); the timeout is counted from the moment a
//! datagram's record was created (its first seen fragment, whichever that was).
//!
//! # Datagram records
//! A record is in one of three states:
//! - **pending**: fragments seen, but not the first one; later fragments are
//!   buffered;
//! - **active**: the first fragment has been seen; later fragments are
//!   translated at once with its `T`;
//! - **given up**: the datagram lost a fragment here (a limit was hit), so it
//!   can never be delivered whole; its buffered fragments have been dropped and
//!   every further fragment of it is dropped until the record times out.
//!
//! A record is freed when it times out ([`FragTable::expire`]), or, once
//! active, when the bytes seen (offset-0 fragment plus later fragments,
//! duplicates included) reach the datagram's total length, learnt from the
//! fragment with MF = 0. Overlaps and duplicates can only make a record free
//! early, in which case a straggler starts a new pending record that times
//! out; an incomplete datagram is freed by the timeout.
//!
//! # Limits and eviction
//! - At most `max_datagrams` records. When the table is full, a new datagram
//!   **evicts** the oldest given-up record, or failing that the oldest
//!   *pending* record (one that has not seen its first fragment: it is most
//!   likely junk, and its buffered fragments are dropped). If every record is
//!   active, a first fragment ([`FragTable::first`]) evicts the oldest record
//!   (most likely a datagram that lost a fragment; if not, its stragglers
//!   start a pending record that times out), so that one sender opening
//!   records faster than they time out cannot hold the table; a later
//!   fragment is refused ([`Later::Drop`]) and never evicts an active record.
//! - At most `max_buffered_bytes` of buffered frames in total, held in
//!   `max_buffered_bytes / frame_capacity` slots of `frame_capacity` bytes. A
//!   fragment that needs a slot when none is free evicts the oldest pending
//!   record other than its own; if there is none, it is dropped.
//! - A frame longer than `frame_capacity` is never buffered.
//! - At most `max_fragments` fragments (the first one included) per datagram.
//!
//! Whenever a fragment of a known datagram has to be dropped because of a
//! limit, the datagram is given up (see above).
//!
//! # Drop accounting
//! Every fragment passed to [`FragTable::later`] ends in exactly one of:
//! translated ([`Later::Translate`], or returned by
//! [`FragTable::poll_released`]), or dropped: returned as [`Later::Drop`], or
//! counted in the return value of [`FragTable::expire`]. Besides the timed-out
//! ones, `expire` reports the buffered fragments dropped since its last call
//! by eviction, by giving a datagram up, with a record found timed out before
//! `expire` got to it, or because a `poll_released` buffer was too small for
//! the frame; while any such drop is unreported, [`FragTable::poll_timeout`]
//! is due at once. [`FragTable::take_dropped`] reports (and resets) that
//! second kind early, for a caller that wants its counters current. The
//! caller counts every drop as `DropReason::Fragment`.
//!
//! # Memory and complexity
//! Everything is allocated in [`FragTable::new`]: the records, a chained hash
//! index of a power of two ≥ `max_datagrams` buckets (4 bytes each), the slot
//! metadata and `slots × frame_capacity` bytes of frames. Nothing allocates
//! afterwards. All operations are O(1) (expected, for the hash lookup) and
//! amortised over the fragments they drop; `expire` walks the records in age
//! order and stops at the first one not yet due. Time passed in is clamped to
//! be non-decreasing, so the age list stays sorted.

use crate::time::Instant;
use crate::PortId;
use core::hash::BuildHasher;
use core::net::Ipv4Addr;
use std::time::Duration;

/// No entry.
const NIL: u32 = u32::MAX;
/// Total length not known yet (no MF = 0 fragment seen).
const UNKNOWN: u32 = u32::MAX;
/// Largest number of records or frame slots (indexes are `u32`).
const MAX_ENTRIES: usize = 1 << 30;
/// Hash seed used by [`FragTable::new`].
const DEFAULT_SEED: u64 = 0x6672_6167_6d65_6e74;

type Hasher = foldhash::fast::FixedState;

/// Limits of the fragment table.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct FragConfig {
    /// Datagrams tracked at once.
    pub max_datagrams: usize,
    /// Bytes of buffered frames, in total (rounded down to whole slots of
    /// `frame_capacity` bytes).
    pub max_buffered_bytes: usize,
    /// Fragments per datagram, the offset-0 fragment included.
    pub max_fragments: usize,
    /// How long a datagram is tracked, from its first seen fragment.
    pub timeout: Duration,
    /// Longest frame (bytes, Ethernet header included) that is buffered.
    pub frame_capacity: usize,
}

impl Default for FragConfig {
    fn default() -> FragConfig {
        FragConfig {
            max_datagrams: 1024,
            max_buffered_bytes: 1 << 20,
            max_fragments: 64,
            timeout: Duration::from_secs(5),
            frame_capacity: 1518,
        }
    }
}

/// A datagram's identity as it arrived (RFC 791: source, destination,
/// protocol, identification).
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub struct FragKey {
    /// Source address.
    pub src: Ipv4Addr,
    /// Destination address.
    pub dst: Ipv4Addr,
    /// IP protocol number.
    pub protocol: u8,
    /// IP identification.
    pub ident: u16,
}

/// What to do with a fragment that is not the first of its datagram.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Later<T> {
    /// The first fragment has been seen: translate this one with `T` now.
    Translate(T),
    /// Copied; it comes back from [`FragTable::poll_released`] (or is dropped
    /// and counted later, see the module docs).
    Buffered,
    /// A limit was hit or the datagram was given up; the caller counts
    /// `DropReason::Fragment`.
    Drop,
}

#[derive(Copy, Clone, Debug)]
enum State<T> {
    Pending,
    Active(T),
    GivenUp,
}

/// The lists a record can be on. Every record is on `Age`; a pending record
/// is also on `Pending`, a given-up one on `GivenUp`.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum List {
    Age = 0,
    Pending = 1,
    GivenUp = 2,
}

impl List {
    /// Which pair of links in a record the list uses.
    const fn links(self) -> usize {
        match self {
            List::Age => 0,
            List::Pending | List::GivenUp => 1,
        }
    }
}

#[derive(Copy, Clone, Debug)]
struct Datagram<T> {
    key: FragKey,
    state: State<T>,
    created: Instant,
    /// Total payload length, or [`UNKNOWN`].
    total: u32,
    /// Payload bytes seen (saturating).
    seen: u32,
    /// Fragments accepted, the first one included.
    frags: u32,
    /// Where the first fragment arrived (once active): the datagram's
    /// other fragments must come from there too.
    port: PortId,
    /// Buffered frame slots, in arrival order.
    head: u32,
    tail: u32,
    /// Next record in the same hash bucket, or in the free list.
    h_next: u32,
    /// `[prev, next]` on the age list, and on the pending or given-up list.
    links: [[u32; 2]; 2],
}

#[derive(Copy, Clone, Debug)]
struct Slot<T> {
    len: u32,
    port: PortId,
    /// The fragment's offset and payload length (bytes), and MF, to
    /// recount its datagram if it is dropped at release.
    offset: u32,
    plen: u32,
    more: bool,
    /// Next slot of the same datagram, the release queue or the free list.
    next: u32,
    /// Set when released.
    t: Option<T>,
}

/// Datagrams in flight and the fragments buffered for them.
///
/// `T` is the engine's translation record for a datagram, produced by
/// translating its first fragment and reused for the others.
pub struct FragTable<T> {
    config: FragConfig,
    dgrams: Vec<Datagram<T>>,
    free_dgram: u32,
    live: usize,
    buckets: Vec<u32>,
    mask: u64,
    hasher: Hasher,
    /// `(head, tail)` of each [`List`].
    ends: [(u32, u32); 3],
    slots: Vec<Slot<T>>,
    frames: Vec<u8>,
    cap: usize,
    free_slot: u32,
    released: (u32, u32),
    buffered_bytes: usize,
    dropped: usize,
    clock: Instant,
}

impl<T> core::fmt::Debug for FragTable<T> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("FragTable")
            .field("config", &self.config)
            .field("datagrams", &self.live)
            .field("buffered_bytes", &self.buffered_bytes)
            .field("dropped", &self.dropped)
            .finish_non_exhaustive()
    }
}

impl<T: Copy> FragTable<T> {
    /// A table with `config`'s limits, all storage allocated now.
    pub fn new(config: FragConfig) -> FragTable<T> {
        FragTable::with_seed(config, DEFAULT_SEED)
    }

    /// Like [`FragTable::new`], seeding the index hash (pass the engine's
    /// seed so that bucket collisions cannot be predicted).
    pub fn with_seed(config: FragConfig, seed: u64) -> FragTable<T> {
        let n = config.max_datagrams.min(MAX_ENTRIES);
        let nb = n.max(16).next_power_of_two();
        let cap = config.frame_capacity;
        let nslots = config.max_buffered_bytes.checked_div(cap).unwrap_or(0).min(MAX_ENTRIES);
        let blank = Datagram {
            key: FragKey { src: Ipv4Addr::UNSPECIFIED, dst: Ipv4Addr::UNSPECIFIED, protocol: 0, ident: 0 },
            state: State::Pending,
            created: Instant::ZERO,
            total: UNKNOWN,
            seen: 0,
            frags: 0,
            port: PortId(0),
            head: NIL,
            tail: NIL,
            h_next: NIL,
            links: [[NIL; 2]; 2],
        };
        let mut dgrams = vec![blank; n];
        for (i, d) in dgrams.iter_mut().enumerate() {
            d.h_next = if i + 1 < n { (i + 1) as u32 } else { NIL };
        }
        let mut slots =
            vec![Slot { len: 0, port: PortId(0), offset: 0, plen: 0, more: false, next: NIL, t: None }; nslots];
        for (i, s) in slots.iter_mut().enumerate() {
            s.next = if i + 1 < nslots { (i + 1) as u32 } else { NIL };
        }
        FragTable {
            config,
            dgrams,
            free_dgram: if n > 0 { 0 } else { NIL },
            live: 0,
            buckets: vec![NIL; nb],
            mask: nb as u64 - 1,
            hasher: Hasher::with_seed(seed),
            ends: [(NIL, NIL); 3],
            slots,
            frames: vec![0; nslots * cap],
            cap,
            free_slot: if nslots > 0 { 0 } else { NIL },
            released: (NIL, NIL),
            buffered_bytes: 0,
            dropped: 0,
            clock: Instant::ZERO,
        }
    }

    /// The limits in force.
    pub fn config(&self) -> &FragConfig {
        &self.config
    }

    /// The first fragment (offset 0) of `key`, which arrived on `port`, was
    /// translated with `t`; `end` is its payload length in bytes.
    ///
    /// Records `t` for the rest of the datagram and releases its buffered
    /// fragments that arrived on `port`, in arrival order, to
    /// [`FragTable::poll_released`]; the ones that arrived elsewhere are
    /// dropped (forged: reported by [`FragTable::expire`]) and no longer
    /// count towards the datagram. Returns
    /// `false` if no record could be kept (every record is active, the
    /// datagram was given up, or this fragment exceeds `max_fragments`): the
    /// datagram's later fragments will then be dropped (possibly after being
    /// buffered, by eviction or the timeout).
    pub fn first(&mut self, now: Instant, key: FragKey, port: PortId, t: T, end: u32) -> bool {
        let now = self.tick(now);
        let i = self.lookup(now, &key);
        if i == NIL {
            if self.config.max_fragments == 0 {
                return false;
            }
            let Some(i) = self.new_record(key, State::Active(t)) else {
                return false;
            };
            if let Some(d) = self.dgrams.get_mut(i as usize) {
                d.seen = end;
                d.frags = 1;
                d.port = port;
            }
            return true;
        }
        let Some(&d) = self.dgrams.get(i as usize) else {
            return false;
        };
        if matches!(d.state, State::GivenUp) {
            return false;
        }
        if !self.fragment_allowed(&d) {
            self.give_up(i);
            return false;
        }
        if matches!(d.state, State::Pending) {
            self.unlink(List::Pending, i);
            self.release(i, t, port);
        } else if d.port != port {
            // A second offset-0 fragment from elsewhere: forged.
            return false;
        }
        if let Some(d) = self.dgrams.get_mut(i as usize) {
            d.state = State::Active(t);
            d.port = port;
            d.seen = d.seen.saturating_add(end);
            d.frags = d.frags.saturating_add(1);
        }
        self.complete_if_done(i);
        true
    }

    /// A fragment that is not the first of its datagram: `offset` and `len`
    /// in bytes of IP payload, `more` its MF flag, `frame` the whole received
    /// frame and `port` where it arrived.
    // The arguments are the fragment's fields; a struct would only move them.
    #[allow(clippy::too_many_arguments)]
    pub fn later(
        &mut self,
        now: Instant,
        key: FragKey,
        port: PortId,
        frame: &[u8],
        offset: u32,
        len: u32,
        more: bool,
    ) -> Later<T> {
        let now = self.tick(now);
        let i = self.lookup(now, &key);
        if i == NIL {
            if frame.len() > self.cap || self.config.max_fragments == 0 {
                return Later::Drop;
            }
            let Some(i) = self.new_record(key, State::Pending) else {
                return Later::Drop;
            };
            if !self.buffer(i, port, frame, offset, len, more) {
                self.remove(i);
                return Later::Drop;
            }
            self.account(i, offset, len, more);
            return Later::Buffered;
        }
        let Some(&d) = self.dgrams.get(i as usize) else {
            return Later::Drop;
        };
        match d.state {
            State::GivenUp => Later::Drop,
            // Names a datagram whose first fragment came in elsewhere:
            // forged, dropped without touching the datagram.
            State::Active(_) if d.port != port => Later::Drop,
            State::Active(t) => {
                if !self.fragment_allowed(&d) {
                    self.give_up(i);
                    return Later::Drop;
                }
                self.account(i, offset, len, more);
                self.complete_if_done(i);
                Later::Translate(t)
            }
            State::Pending => {
                if !self.fragment_allowed(&d)
                    || frame.len() > self.cap
                    || !self.buffer(i, port, frame, offset, len, more)
                {
                    self.give_up(i);
                    return Later::Drop;
                }
                self.account(i, offset, len, more);
                Later::Buffered
            }
        }
    }

    /// The next released fragment: copies its frame into the front of `buf`
    /// and returns its translation record, arrival port and length. The
    /// caller then translates it with the record.
    ///
    /// A frame longer than `buf` is dropped (reported by
    /// [`FragTable::expire`]) and the next one is tried.
    pub fn poll_released(&mut self, buf: &mut [u8]) -> Option<(T, PortId, usize)> {
        loop {
            let s = self.released.0;
            let slot = *self.slots.get(s as usize)?;
            self.released.0 = slot.next;
            if slot.next == NIL {
                self.released.1 = NIL;
            }
            let len = slot.len as usize;
            let start = (s as usize).saturating_mul(self.cap);
            let frame = self.frames.get(start..start.saturating_add(len));
            let out = match (slot.t, frame, buf.get_mut(..len)) {
                (Some(t), Some(frame), Some(dst)) => {
                    dst.copy_from_slice(frame);
                    Some((t, slot.port, len))
                }
                _ => None,
            };
            self.free_slot(s);
            if out.is_some() {
                return out;
            }
            self.dropped = self.dropped.saturating_add(1);
        }
    }

    /// Whether [`FragTable::poll_released`] has a fragment to return.
    pub fn has_released(&self) -> bool {
        self.released.0 != NIL
    }

    /// Frees the datagrams whose timeout has passed at `now`; returns how many
    /// buffered fragments were dropped with them, plus those dropped otherwise
    /// since the last call and not yet taken by [`FragTable::take_dropped`].
    pub fn expire(&mut self, now: Instant) -> usize {
        let now = self.tick(now);
        let mut n = core::mem::take(&mut self.dropped);
        loop {
            let i = self.ends[List::Age as usize].0;
            match self.dgrams.get(i as usize) {
                Some(d) if d.created + self.config.timeout <= now => {
                    n = n.saturating_add(self.remove(i));
                }
                _ => return n,
            }
        }
    }

    /// When [`FragTable::expire`] next has something to do, if ever: the
    /// oldest record's deadline, or at once (the latest `now` seen) if drops
    /// are waiting to be reported.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.dropped > 0 {
            return Some(self.clock);
        }
        let i = self.ends[List::Age as usize].0;
        self.dgrams.get(i as usize).map(|d| d.created + self.config.timeout)
    }

    /// Buffered fragments dropped other than by timeout since the last call
    /// of this or [`FragTable::expire`] (see the module docs), which
    /// `expire` would otherwise report; resets the count.
    pub fn take_dropped(&mut self) -> usize {
        core::mem::take(&mut self.dropped)
    }

    #[cfg(test)]
    pub(crate) fn bucket_of(&self, key: &FragKey) -> usize {
        self.bucket(key)
    }

    /// Datagrams tracked.
    pub fn datagrams(&self) -> usize {
        self.live
    }

    /// Bytes of frames buffered (pending or released and not yet polled).
    pub fn buffered_bytes(&self) -> usize {
        self.buffered_bytes
    }

    // ---- internals ----

    /// Clamps time to be non-decreasing.
    fn tick(&mut self, now: Instant) -> Instant {
        self.clock = self.clock.max(now);
        self.clock
    }

    fn bucket(&self, key: &FragKey) -> usize {
        let a = (u64::from(u32::from(key.src)) << 32) | u64::from(u32::from(key.dst));
        let b = (u64::from(key.protocol) << 16) | u64::from(key.ident);
        (self.hasher.hash_one((a, b)) & self.mask) as usize
    }

    /// The live record of `key`, or `NIL`. A record found past its timeout is
    /// freed (its buffered fragments counted dropped) and `NIL` returned.
    fn lookup(&mut self, now: Instant, key: &FragKey) -> u32 {
        let mut i = self.buckets.get(self.bucket(key)).copied().unwrap_or(NIL);
        while let Some(d) = self.dgrams.get(i as usize) {
            if d.key == *key {
                if d.created + self.config.timeout <= now {
                    let n = self.remove(i);
                    self.dropped = self.dropped.saturating_add(n);
                    return NIL;
                }
                return i;
            }
            i = d.h_next;
        }
        NIL
    }

    /// Whether one more fragment fits in the datagram's limit.
    fn fragment_allowed(&self, d: &Datagram<T>) -> bool {
        (d.frags as usize) < self.config.max_fragments
    }

    /// Counts a later fragment against its record.
    fn account(&mut self, i: u32, offset: u32, len: u32, more: bool) {
        if let Some(d) = self.dgrams.get_mut(i as usize) {
            d.seen = d.seen.saturating_add(len);
            d.frags = d.frags.saturating_add(1);
            if !more {
                d.total = offset.saturating_add(len).min(UNKNOWN - 1);
            }
        }
    }

    /// Frees an active record once all its bytes have passed.
    fn complete_if_done(&mut self, i: u32) {
        if let Some(d) = self.dgrams.get(i as usize) {
            if matches!(d.state, State::Active(_)) && d.total != UNKNOWN && d.seen >= d.total {
                self.remove(i);
            }
        }
    }

    /// A new record for `key` in `state`, evicting the oldest given-up or
    /// pending record if the table is full.
    fn new_record(&mut self, key: FragKey, state: State<T>) -> Option<u32> {
        if self.free_dgram == NIL {
            let mut victim = self.ends[List::GivenUp as usize].0;
            if victim == NIL {
                victim = self.ends[List::Pending as usize].0;
            }
            if victim == NIL && matches!(state, State::Active(_)) {
                // Every record is active: a first fragment takes the
                // oldest one's place (most likely a datagram that lost a
                // fragment), so nobody holds the table by opening records.
                victim = self.ends[List::Age as usize].0;
            }
            if victim == NIL {
                return None;
            }
            let n = self.remove(victim);
            self.dropped = self.dropped.saturating_add(n);
        }
        let i = self.free_dgram;
        let b = self.bucket(&key);
        let created = self.clock;
        let head = self.buckets.get_mut(b)?;
        let d = self.dgrams.get_mut(i as usize)?;
        self.free_dgram = d.h_next;
        *d = Datagram {
            key,
            state,
            created,
            total: UNKNOWN,
            seen: 0,
            frags: 0,
            port: PortId(0),
            head: NIL,
            tail: NIL,
            h_next: *head,
            links: [[NIL; 2]; 2],
        };
        *head = i;
        self.live += 1;
        self.push_back(List::Age, i);
        if matches!(state, State::Pending) {
            self.push_back(List::Pending, i);
        }
        Some(i)
    }

    /// Frees record `i` and its buffered fragments; returns how many
    /// fragments were freed (the caller counts them dropped).
    fn remove(&mut self, i: u32) -> usize {
        let Some(&d) = self.dgrams.get(i as usize) else {
            return 0;
        };
        let n = self.free_chain(i);
        self.unlink(List::Age, i);
        match d.state {
            State::Pending => self.unlink(List::Pending, i),
            State::GivenUp => self.unlink(List::GivenUp, i),
            State::Active(_) => {}
        }
        // Unhook from the hash chain.
        let b = self.bucket(&d.key);
        let mut prev = NIL;
        let mut j = self.buckets.get(b).copied().unwrap_or(NIL);
        while j != NIL && j != i {
            prev = j;
            j = self.dgrams.get(j as usize).map_or(NIL, |x| x.h_next);
        }
        if j == i {
            if prev == NIL {
                if let Some(h) = self.buckets.get_mut(b) {
                    *h = d.h_next;
                }
            } else if let Some(p) = self.dgrams.get_mut(prev as usize) {
                p.h_next = d.h_next;
            }
        }
        if let Some(x) = self.dgrams.get_mut(i as usize) {
            x.state = State::Pending;
            x.h_next = self.free_dgram;
        }
        self.free_dgram = i;
        self.live = self.live.saturating_sub(1);
        n
    }

    /// Gives datagram `i` up: drops its buffered fragments and drops every
    /// further fragment of it until it times out.
    fn give_up(&mut self, i: u32) {
        let Some(&d) = self.dgrams.get(i as usize) else {
            return;
        };
        match d.state {
            State::GivenUp => return,
            State::Pending => self.unlink(List::Pending, i),
            State::Active(_) => {}
        }
        let n = self.free_chain(i);
        self.dropped = self.dropped.saturating_add(n);
        if let Some(x) = self.dgrams.get_mut(i as usize) {
            x.state = State::GivenUp;
        }
        self.push_back(List::GivenUp, i);
    }

    /// Copies `frame` into a slot appended to record `i`'s chain, evicting
    /// other pending records if no slot is free. False if none could be had.
    fn buffer(&mut self, i: u32, port: PortId, frame: &[u8], offset: u32, plen: u32, more: bool) -> bool {
        let Ok(len) = u32::try_from(frame.len()) else {
            return false;
        };
        if frame.len() > self.cap {
            return false;
        }
        while self.free_slot == NIL {
            let mut victim = self.ends[List::Pending as usize].0;
            if victim == i {
                victim = self.dgrams.get(i as usize).map_or(NIL, |d| d.links[1][1]);
            }
            if victim == NIL {
                return false;
            }
            let n = self.remove(victim);
            self.dropped = self.dropped.saturating_add(n);
        }
        let s = self.free_slot;
        let start = (s as usize).saturating_mul(self.cap);
        let Some(dst) = self.frames.get_mut(start..start.saturating_add(frame.len())) else {
            return false;
        };
        dst.copy_from_slice(frame);
        let Some(slot) = self.slots.get_mut(s as usize) else {
            return false;
        };
        self.free_slot = slot.next;
        *slot = Slot { len, port, offset, plen, more, next: NIL, t: None };
        self.buffered_bytes += frame.len();
        let Some(d) = self.dgrams.get_mut(i as usize) else {
            return false;
        };
        let tail = d.tail;
        d.tail = s;
        if tail == NIL {
            d.head = s;
        } else if let Some(t) = self.slots.get_mut(tail as usize) {
            t.next = s;
        }
        true
    }

    /// Frees record `i`'s buffered slots; returns how many.
    fn free_chain(&mut self, i: u32) -> usize {
        let Some(d) = self.dgrams.get_mut(i as usize) else {
            return 0;
        };
        let mut s = core::mem::replace(&mut d.head, NIL);
        d.tail = NIL;
        let mut n = 0usize;
        while let Some(slot) = self.slots.get(s as usize) {
            let next = slot.next;
            self.free_slot(s);
            n += 1;
            s = next;
        }
        n
    }

    fn free_slot(&mut self, s: u32) {
        if let Some(slot) = self.slots.get_mut(s as usize) {
            self.buffered_bytes = self.buffered_bytes.saturating_sub(slot.len as usize);
            *slot = Slot { len: 0, port: PortId(0), offset: 0, plen: 0, more: false, next: self.free_slot, t: None };
            self.free_slot = s;
        }
    }

    /// Moves record `i`'s buffered fragments to the release queue with `t`.
    fn release(&mut self, i: u32, t: T, port: PortId) {
        let Some(d) = self.dgrams.get_mut(i as usize) else {
            return;
        };
        let mut s = core::mem::replace(&mut d.head, NIL);
        d.tail = NIL;
        // Keep the fragments that came from `port`, recounting the datagram
        // over them alone; free the others.
        let (mut head, mut tail) = (NIL, NIL);
        let (mut seen, mut frags, mut total) = (0u32, 0u32, UNKNOWN);
        while let Some(&slot) = self.slots.get(s as usize) {
            let next = slot.next;
            if slot.port == port {
                seen = seen.saturating_add(slot.plen);
                frags = frags.saturating_add(1);
                if !slot.more {
                    total = slot.offset.saturating_add(slot.plen).min(UNKNOWN - 1);
                }
                if let Some(x) = self.slots.get_mut(s as usize) {
                    x.t = Some(t);
                    x.next = NIL;
                }
                match self.slots.get_mut(tail as usize) {
                    Some(x) => x.next = s,
                    None => head = s,
                }
                tail = s;
            } else {
                self.free_slot(s);
                self.dropped = self.dropped.saturating_add(1);
            }
            s = next;
        }
        if let Some(d) = self.dgrams.get_mut(i as usize) {
            (d.seen, d.frags, d.total) = (seen, frags, total);
        }
        if head == NIL {
            return;
        }
        match self.slots.get_mut(self.released.1 as usize) {
            Some(last) => last.next = head,
            None => self.released.0 = head,
        }
        self.released.1 = tail;
    }

    fn push_back(&mut self, l: List, i: u32) {
        let k = l.links();
        let tail = self.ends[l as usize].1;
        if let Some(d) = self.dgrams.get_mut(i as usize) {
            d.links[k] = [tail, NIL];
        }
        match self.dgrams.get_mut(tail as usize) {
            Some(t) => t.links[k][1] = i,
            None => self.ends[l as usize].0 = i,
        }
        self.ends[l as usize].1 = i;
    }

    fn unlink(&mut self, l: List, i: u32) {
        let k = l.links();
        let Some(d) = self.dgrams.get_mut(i as usize) else {
            return;
        };
        let [prev, next] = core::mem::replace(&mut d.links[k], [NIL, NIL]);
        match self.dgrams.get_mut(prev as usize) {
            Some(p) => p.links[k][1] = next,
            None => self.ends[l as usize].0 = next,
        }
        match self.dgrams.get_mut(next as usize) {
            Some(n) => n.links[k][0] = prev,
            None => self.ends[l as usize].1 = prev,
        }
    }

    /// Checks every internal invariant (tests only).
    #[cfg(test)]
    fn check(&self) {
        // Records: free list + lists + hash agree with `live`.
        let mut free = 0;
        let mut j = self.free_dgram;
        while j != NIL {
            free += 1;
            j = self.dgrams[j as usize].h_next;
        }
        assert_eq!(free + self.live, self.dgrams.len());
        let walk = |l: List| {
            let mut v = Vec::new();
            let (mut j, mut prev) = (self.ends[l as usize].0, NIL);
            while j != NIL {
                assert_eq!(self.dgrams[j as usize].links[l.links()][0], prev);
                v.push(j);
                prev = j;
                j = self.dgrams[j as usize].links[l.links()][1];
            }
            assert_eq!(self.ends[l as usize].1, prev);
            v
        };
        let age = walk(List::Age);
        assert_eq!(age.len(), self.live);
        for w in age.windows(2) {
            assert!(self.dgrams[w[0] as usize].created <= self.dgrams[w[1] as usize].created);
        }
        let pending = walk(List::Pending);
        let given_up = walk(List::GivenUp);
        let mut in_hash = 0;
        for b in 0..self.buckets.len() {
            let mut j = self.buckets[b];
            while j != NIL {
                assert_eq!(self.bucket(&self.dgrams[j as usize].key), b);
                in_hash += 1;
                j = self.dgrams[j as usize].h_next;
            }
        }
        assert_eq!(in_hash, self.live);
        let mut used_slots = 0;
        let mut bytes = 0;
        for &i in &age {
            let d = &self.dgrams[i as usize];
            match d.state {
                State::Pending => assert!(pending.contains(&i)),
                State::GivenUp => assert!(given_up.contains(&i) && d.head == NIL),
                State::Active(_) => assert!(d.head == NIL),
            }
            let mut s = d.head;
            while s != NIL {
                used_slots += 1;
                bytes += self.slots[s as usize].len as usize;
                s = self.slots[s as usize].next;
            }
        }
        let mut s = self.released.0;
        while s != NIL {
            assert!(self.slots[s as usize].t.is_some());
            used_slots += 1;
            bytes += self.slots[s as usize].len as usize;
            s = self.slots[s as usize].next;
        }
        let mut free_slots = 0;
        let mut s = self.free_slot;
        while s != NIL {
            free_slots += 1;
            s = self.slots[s as usize].next;
        }
        assert_eq!(used_slots + free_slots, self.slots.len());
        assert_eq!(bytes, self.buffered_bytes);
        assert!(self.buffered_bytes <= self.config.max_buffered_bytes);
        assert!(self.live <= self.config.max_datagrams);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn key(ident: u16) -> FragKey {
        FragKey { src: Ipv4Addr::new(10, 0, 0, 1), dst: Ipv4Addr::new(10, 0, 0, 2), protocol: 17, ident }
    }

    fn frame(tag: u8, len: usize) -> Vec<u8> {
        (0..len).map(|i| tag.wrapping_add(i as u8)).collect()
    }

    fn small() -> FragConfig {
        FragConfig {
            max_datagrams: 4,
            max_buffered_bytes: 8 * 100,
            max_fragments: 4,
            timeout: Duration::from_secs(5),
            frame_capacity: 100,
        }
    }

    const T0: Instant = Instant::ZERO;

    #[test]
    fn in_order_translates() {
        let mut t = FragTable::<u32>::new(FragConfig::default());
        assert!(t.first(T0, key(1), PortId(1), 7, 1480));
        assert_eq!(t.datagrams(), 1);
        let f = frame(0, 1514);
        assert_eq!(t.later(T0, key(1), PortId(1), &f, 1480, 1480, true), Later::Translate(7));
        assert_eq!(t.later(T0, key(1), PortId(1), &f, 2960, 100, false), Later::Translate(7));
        // All 3060 bytes have passed: the record is gone.
        assert_eq!(t.datagrams(), 0);
        assert_eq!(t.buffered_bytes(), 0);
        assert_eq!(t.poll_timeout(), None);
        t.check();
    }

    #[test]
    fn reverse_order_buffers_and_releases_in_arrival_order() {
        let mut t = FragTable::<u32>::new(FragConfig::default());
        let f3 = frame(30, 120);
        let f2 = frame(20, 1514);
        assert_eq!(t.later(T0, key(9), PortId(3), &f3, 2960, 100, false), Later::Buffered);
        assert_eq!(t.later(T0, key(9), PortId(3), &f2, 1480, 1480, true), Later::Buffered);
        assert_eq!(t.buffered_bytes(), 120 + 1514);
        assert!(!t.has_released());
        let mut buf = [0u8; 2048];
        assert_eq!(t.poll_released(&mut buf), None);
        t.check();

        assert!(t.first(Instant::from_millis(10), key(9), PortId(3), 42, 1480));
        // Complete: the record is freed even though the frames await polling.
        assert_eq!(t.datagrams(), 0);
        assert!(t.has_released());
        assert_eq!(t.poll_released(&mut buf), Some((42, PortId(3), 120)));
        assert_eq!(&buf[..120], &f3[..]);
        assert_eq!(t.poll_released(&mut buf), Some((42, PortId(3), 1514)));
        assert_eq!(&buf[..1514], &f2[..]);
        assert_eq!(t.poll_released(&mut buf), None);
        assert_eq!(t.buffered_bytes(), 0);
        assert_eq!(t.take_dropped(), 0);
        t.check();
    }

    #[test]
    fn middle_first_then_rest_translates() {
        let mut t = FragTable::<u32>::new(small());
        let f = frame(1, 60);
        assert_eq!(t.later(T0, key(1), PortId(1), &f, 16, 8, true), Later::Buffered);
        assert!(t.first(T0, key(1), PortId(1), 5, 16));
        assert_eq!(t.later(T0, key(1), PortId(1), &f, 24, 8, false), Later::Translate(5));
        assert_eq!(t.datagrams(), 0);
        let mut buf = [0u8; 100];
        assert_eq!(t.poll_released(&mut buf), Some((5, PortId(1), 60)));
        t.check();
    }

    #[test]
    fn record_kept_until_all_bytes_pass() {
        let mut t = FragTable::<u32>::new(small());
        let f = frame(0, 50);
        assert!(t.first(T0, key(1), PortId(1), 1, 16));
        // Last fragment first: total known (48), 16 + 8 seen.
        assert_eq!(t.later(T0, key(1), PortId(1), &f, 40, 8, false), Later::Translate(1));
        assert_eq!(t.datagrams(), 1);
        assert_eq!(t.later(T0, key(1), PortId(1), &f, 16, 16, true), Later::Translate(1));
        assert_eq!(t.datagrams(), 1);
        assert_eq!(t.later(T0, key(1), PortId(1), &f, 32, 8, true), Later::Translate(1));
        assert_eq!(t.datagrams(), 0);
        t.check();
    }

    #[test]
    fn timeout_drops_buffered_and_frees_memory() {
        let mut t = FragTable::<u32>::new(FragConfig::default());
        let f = frame(0, 600);
        assert_eq!(t.later(T0, key(1), PortId(1), &f, 8, 8, true), Later::Buffered);
        assert_eq!(t.later(Instant::from_secs(1), key(1), PortId(1), &f, 16, 8, true), Later::Buffered);
        assert_eq!(t.later(Instant::from_secs(2), key(2), PortId(1), &f, 16, 8, true), Later::Buffered);
        assert_eq!(t.poll_timeout(), Some(Instant::from_secs(5)));
        assert_eq!(t.expire(Instant::from_millis(4999)), 0);
        assert_eq!(t.datagrams(), 2);
        assert_eq!(t.expire(Instant::from_secs(5)), 2);
        assert_eq!(t.datagrams(), 1);
        assert_eq!(t.buffered_bytes(), 600);
        assert_eq!(t.poll_timeout(), Some(Instant::from_secs(7)));
        assert_eq!(t.expire(Instant::from_secs(7)), 1);
        assert_eq!(t.datagrams(), 0);
        assert_eq!(t.buffered_bytes(), 0);
        assert_eq!(t.poll_timeout(), None);
        // A late first fragment now starts afresh: nothing to release.
        assert!(t.first(Instant::from_secs(8), key(1), PortId(1), 3, 8));
        assert!(!t.has_released());
        t.check();
    }

    #[test]
    fn stale_record_is_not_reused() {
        let mut t = FragTable::<u32>::new(small());
        let f = frame(0, 50);
        assert!(t.first(T0, key(1), PortId(1), 1, 8));
        // Same key after the timeout, expire not called: a new datagram.
        assert_eq!(t.later(Instant::from_secs(6), key(1), PortId(1), &f, 8, 8, true), Later::Buffered);
        assert_eq!(t.datagrams(), 1);
        assert_eq!(t.take_dropped(), 0);
        assert_eq!(t.later(Instant::from_secs(12), key(1), PortId(1), &f, 8, 8, true), Later::Buffered);
        assert_eq!(t.take_dropped(), 1);
        t.check();
    }

    #[test]
    fn time_going_backwards_is_clamped() {
        let mut t = FragTable::<u32>::new(small());
        assert!(t.first(Instant::from_secs(10), key(1), PortId(1), 1, 8));
        assert!(t.first(Instant::from_secs(3), key(2), PortId(1), 2, 8));
        assert_eq!(t.poll_timeout(), Some(Instant::from_secs(15)));
        assert_eq!(t.expire(Instant::from_secs(9)), 0);
        assert_eq!(t.datagrams(), 2);
        t.check();
    }

    #[test]
    fn flood_is_bounded_and_fresh_datagrams_pass() {
        let cfg = FragConfig::default();
        let mut t = FragTable::<u32>::new(cfg);
        let f = frame(0, 1514);
        let mut now = T0;
        let mut outcomes = [0usize; 3];
        let mut dropped = 0;
        for n in 0..100_000u32 {
            now = Instant::from_millis(u64::from(n / 100)); // 1000 s in all
            let k = FragKey {
                src: Ipv4Addr::from(0x0a00_0000 | n),
                dst: Ipv4Addr::new(10, 1, 0, 1),
                protocol: 17,
                ident: n as u16,
            };
            let o = t.later(now, k, PortId(1), &f, 1480, 1480, true);
            outcomes[match o {
                Later::Translate(_) => 0,
                Later::Buffered => 1,
                Later::Drop => 2,
            }] += 1;
            assert!(t.datagrams() <= cfg.max_datagrams);
            assert!(t.buffered_bytes() <= cfg.max_buffered_bytes);
            if n % 1000 == 0 {
                dropped += t.expire(now);
            }
        }
        assert_eq!(outcomes[0], 0);
        // Eviction keeps buffering fresh fragments instead of refusing them.
        assert_eq!(outcomes[2], 0);
        dropped += t.take_dropped();
        // Every buffered fragment is either still held or counted dropped.
        assert_eq!(dropped + t.buffered_bytes() / 1514, outcomes[1]);
        assert!(dropped > 90_000);
        t.check();

        // In order: first then later.
        assert!(t.first(now, key(1), PortId(1), 11, 1480));
        assert_eq!(t.later(now, key(1), PortId(1), &f, 1480, 100, false), Later::Translate(11));
        // Reverse order: the later fragment is buffered (evicting junk) and
        // released by the first.
        assert_eq!(t.later(now, key(2), PortId(1), &f, 1480, 100, false), Later::Buffered);
        assert!(t.first(now, key(2), PortId(1), 12, 1480));
        let mut buf = [0u8; 1518];
        assert_eq!(t.poll_released(&mut buf), Some((12, PortId(1), 1514)));
        t.check();
    }

    #[test]
    fn full_of_active_a_first_fragment_evicts_the_oldest() {
        let mut t = FragTable::<u32>::new(small());
        for i in 0..4 {
            assert!(t.first(Instant::from_millis(u64::from(i)), key(i), PortId(1), u32::from(i), 8));
        }
        // A later fragment of an unknown datagram never evicts an active one.
        assert_eq!(t.later(T0, key(11), PortId(1), &frame(0, 40), 8, 8, true), Later::Drop);
        // A first fragment takes the oldest record's place (key 0).
        assert!(t.first(Instant::from_millis(5), key(10), PortId(1), 10, 8));
        assert_eq!(t.datagrams(), 4);
        assert_eq!(t.take_dropped(), 0, "an active record holds no buffered fragment");
        assert_eq!(t.later(T0, key(10), PortId(1), &frame(0, 40), 8, 8, true), Later::Translate(10));
        assert_eq!(t.later(T0, key(3), PortId(1), &frame(0, 40), 8, 8, true), Later::Translate(3));
        // Key 0's straggler now starts a pending record (evicting nothing
        // active: no room, refused).
        assert_eq!(t.later(T0, key(0), PortId(1), &frame(0, 40), 8, 8, true), Later::Drop);
        t.check();
    }

    #[test]
    fn fragments_from_another_port_than_the_first_are_dropped() {
        let mut t = FragTable::<u32>::new(FragConfig::default());
        let f = frame(0, 100);
        // Before the first: buffered from ports 1 and 2, the forged MF=0 one
        // from port 2 claiming the datagram ends at 24.
        assert_eq!(t.later(T0, key(1), PortId(1), &f, 8, 8, true), Later::Buffered);
        assert_eq!(t.later(T0, key(1), PortId(2), &f, 16, 8, false), Later::Buffered);
        assert!(t.first(T0, key(1), PortId(1), 1, 8));
        let mut buf = [0u8; 200];
        assert_eq!(t.poll_released(&mut buf), Some((1, PortId(1), 100)));
        assert_eq!(t.poll_released(&mut buf), None, "the forged one is not released");
        assert_eq!(t.take_dropped(), 1);
        // The forged end did not complete the datagram: it is still there.
        assert_eq!(t.datagrams(), 1);
        // After the first: a fragment from port 2 is dropped and changes
        // nothing; the real ones are translated and complete it.
        assert_eq!(t.later(T0, key(1), PortId(2), &f, 16, 8, true), Later::Drop);
        assert!(!t.first(T0, key(1), PortId(2), 9, 8), "a second first fragment from elsewhere");
        assert_eq!(t.later(T0, key(1), PortId(1), &f, 16, 8, false), Later::Translate(1));
        assert_eq!(t.datagrams(), 0, "complete");
        t.check();
    }

    #[test]
    fn expire_reports_other_drops() {
        let mut t = FragTable::<u32>::new(small());
        let f = frame(0, 40);
        for i in 0..5 {
            assert_eq!(t.later(T0, key(i), PortId(1), &f, 8, 8, true), Later::Buffered);
        }
        // key 0 was evicted: expire is due now and reports it once.
        assert_eq!(t.poll_timeout(), Some(T0));
        assert_eq!(t.expire(T0), 1);
        assert_eq!(t.poll_timeout(), Some(Instant::from_secs(5)));
        assert_eq!(t.expire(T0), 0);
        assert_eq!(t.take_dropped(), 0);
        assert_eq!(t.expire(Instant::from_secs(5)), 4);
        assert_eq!(t.poll_timeout(), None);
        t.check();
    }

    #[test]
    fn full_table_evicts_oldest_pending() {
        let mut t = FragTable::<u32>::new(small());
        let f = frame(0, 40);
        assert!(t.first(T0, key(0), PortId(1), 0, 8));
        for i in 1..4 {
            assert_eq!(t.later(Instant::from_millis(u64::from(i)), key(i), PortId(1), &f, 8, 8, true), Later::Buffered);
        }
        // Full: a new first evicts the oldest pending (key 1), not key 0.
        assert!(t.first(Instant::from_millis(5), key(9), PortId(1), 9, 8));
        assert_eq!(t.take_dropped(), 1);
        assert_eq!(t.datagrams(), 4);
        assert_eq!(t.later(T0, key(0), PortId(1), &f, 8, 8, true), Later::Translate(0));
        // key 1 is gone: its fragment starts a new pending record (evicting key 2).
        assert_eq!(t.later(T0, key(1), PortId(1), &f, 16, 8, true), Later::Buffered);
        assert_eq!(t.take_dropped(), 1);
        assert!(t.first(T0, key(3), PortId(1), 3, 8));
        let mut buf = [0u8; 100];
        assert_eq!(t.poll_released(&mut buf), Some((3, PortId(1), 40)));
        t.check();
    }

    #[test]
    fn slot_exhaustion_evicts_other_pending_but_not_own() {
        let cfg = FragConfig { max_fragments: 64, ..small() }; // 8 slots
        let mut t = FragTable::<u32>::new(cfg);
        let f = frame(0, 100);
        for j in 0..5 {
            assert_eq!(t.later(T0, key(1), PortId(1), &f, 8 * (j + 1), 8, true), Later::Buffered);
        }
        for j in 0..3 {
            assert_eq!(t.later(T0, key(2), PortId(1), &f, 8 * (j + 1), 8, true), Later::Buffered);
        }
        assert_eq!(t.buffered_bytes(), 800);
        // key 2 needs a slot: evicts key 1 (5 fragments).
        assert_eq!(t.later(T0, key(2), PortId(1), &f, 32, 8, true), Later::Buffered);
        assert_eq!(t.take_dropped(), 5);
        for j in 5..9 {
            assert_eq!(t.later(T0, key(2), PortId(1), &f, 8 * j, 8, true), Later::Buffered);
        }
        assert_eq!(t.buffered_bytes(), 800);
        // key 2 holds every slot and there is nobody else to evict: given up.
        assert_eq!(t.later(T0, key(2), PortId(1), &f, 80, 8, true), Later::Drop);
        assert_eq!(t.take_dropped(), 8);
        assert_eq!(t.buffered_bytes(), 0);
        assert!(!t.first(T0, key(2), PortId(1), 2, 8));
        assert_eq!(t.later(T0, key(2), PortId(1), &f, 88, 8, false), Later::Drop);
        t.check();
    }

    #[test]
    fn per_datagram_fragment_limit() {
        let mut t = FragTable::<u32>::new(small()); // 4 fragments
        let f = frame(0, 40);
        for j in 1..=3 {
            assert_eq!(t.later(T0, key(1), PortId(1), &f, 8 * j, 8, true), Later::Buffered);
        }
        assert!(t.first(T0, key(1), PortId(1), 1, 8)); // 4th
        assert_eq!(t.later(T0, key(1), PortId(1), &f, 32, 8, true), Later::Drop); // 5th
        assert_eq!(t.later(T0, key(1), PortId(1), &f, 40, 8, false), Later::Drop);
        let mut buf = [0u8; 100];
        for _ in 0..3 {
            assert!(t.poll_released(&mut buf).is_some());
        }
        // Buffered and pending: the limit gives the datagram up.
        for j in 1..=4 {
            assert_eq!(t.later(T0, key(2), PortId(1), &f, 8 * j, 8, true), Later::Buffered);
        }
        assert_eq!(t.later(T0, key(2), PortId(1), &f, 40, 8, true), Later::Drop);
        assert_eq!(t.take_dropped(), 4);
        assert_eq!(t.buffered_bytes(), 0);
        assert!(!t.first(T0, key(2), PortId(1), 2, 8));
        t.check();
    }

    #[test]
    fn oversize_frame_refused() {
        let mut t = FragTable::<u32>::new(small());
        let big = frame(0, 101);
        assert_eq!(t.later(T0, key(1), PortId(1), &big, 8, 8, true), Later::Drop);
        assert_eq!(t.datagrams(), 0);
        // A pending datagram that loses an oversize fragment is given up.
        assert_eq!(t.later(T0, key(2), PortId(1), &frame(0, 100), 8, 8, true), Later::Buffered);
        assert_eq!(t.later(T0, key(2), PortId(1), &big, 16, 8, true), Later::Drop);
        assert_eq!(t.take_dropped(), 1);
        // Once the first has been seen, size does not matter (nothing is copied).
        assert!(t.first(T0, key(3), PortId(1), 3, 8));
        assert_eq!(t.later(T0, key(3), PortId(1), &big, 8, 8, true), Later::Translate(3));
        t.check();
    }

    #[test]
    fn small_poll_buffer_drops_frame() {
        let mut t = FragTable::<u32>::new(small());
        assert_eq!(t.later(T0, key(1), PortId(1), &frame(0, 80), 8, 8, true), Later::Buffered);
        assert_eq!(t.later(T0, key(1), PortId(1), &frame(0, 20), 16, 8, true), Later::Buffered);
        assert!(t.first(T0, key(1), PortId(1), 1, 8));
        let mut buf = [0u8; 50];
        assert_eq!(t.poll_released(&mut buf), Some((1, PortId(1), 20)));
        assert_eq!(t.take_dropped(), 1);
        assert_eq!(t.buffered_bytes(), 0);
        t.check();
    }

    #[test]
    fn degenerate_configs_do_not_panic() {
        for cfg in [
            FragConfig { max_datagrams: 0, ..small() },
            FragConfig { max_buffered_bytes: 0, ..small() },
            FragConfig { frame_capacity: 0, ..small() },
            FragConfig { max_fragments: 0, ..small() },
            FragConfig { max_fragments: 1, ..small() },
        ] {
            let mut t = FragTable::<u32>::new(cfg);
            let _ = t.later(T0, key(1), PortId(1), &frame(0, 40), 8, 8, true);
            let _ = t.first(T0, key(1), PortId(1), 1, 8);
            let _ = t.later(T0, key(1), PortId(1), &[], 16, 8, false);
            let _ = t.later(T0, key(2), PortId(1), &[], u32::MAX, u32::MAX, false);
            let _ = t.first(T0, key(2), PortId(1), 1, u32::MAX);
            let _ = t.poll_released(&mut []);
            let _ = t.expire(Instant::FAR_FUTURE);
            t.check();
            assert_eq!(t.datagrams(), 0);
        }
    }

    /// One fragment event of the interleaving test.
    #[derive(Clone, Debug)]
    enum Op {
        /// Fragment `j` of datagram `d`.
        Frag(usize, usize),
        /// Advance time by this many milliseconds.
        Wait(u64),
        Expire,
        Drain,
        Take,
    }

    /// Datagram `d` has `n` fragments of 8 bytes; fragment 0 is the first.
    fn run(cfg: FragConfig, sizes: &[usize], ops: &[Op]) -> (usize, usize) {
        let mut t = FragTable::<u32>::new(cfg);
        let mut now = T0;
        let mut translated = std::collections::HashSet::new();
        let mut dropped = 0usize;
        let mut buffered = 0usize;
        let mut later_total = 0usize;
        let mut buf = [0u8; 64];
        let mut drain = |t: &mut FragTable<u32>, translated: &mut std::collections::HashSet<(u32, u32)>| {
            while let Some((tr, port, len)) = t.poll_released(&mut buf) {
                // The frame encodes (datagram, fragment) and the port the datagram.
                let (d, j) = (u32::from(buf[0]), u32::from(buf[1]));
                assert_eq!(len, 16 + j as usize);
                assert_eq!(tr, d);
                assert_eq!(port, PortId(d as u16));
                assert!(buf[2..len].iter().all(|&b| b == buf[0] ^ buf[1]));
                assert!(translated.insert((d, j)), "released twice");
            }
        };
        let mut sent = std::collections::HashSet::new();
        for op in ops {
            match *op {
                Op::Frag(d, j) => {
                    let n = sizes[d];
                    let j = j % n;
                    let k = key(d as u16);
                    if !sent.insert((d, j)) {
                        continue; // each fragment once
                    }
                    if j == 0 {
                        t.first(now, k, PortId(d as u16), d as u32, 8);
                        continue;
                    }
                    later_total += 1;
                    let len = 16 + j;
                    let mut f = vec![(d as u8) ^ (j as u8); len];
                    f[0] = d as u8;
                    f[1] = j as u8;
                    match t.later(now, k, PortId(d as u16), &f, 8 * j as u32, 8, j + 1 < n) {
                        Later::Translate(tr) => {
                            assert_eq!(tr, d as u32);
                            assert!(translated.insert((d as u32, j as u32)));
                        }
                        Later::Buffered => buffered += 1,
                        Later::Drop => dropped += 1,
                    }
                }
                Op::Wait(ms) => now = now + Duration::from_millis(ms),
                Op::Expire => dropped += t.expire(now),
                Op::Drain => drain(&mut t, &mut translated),
                Op::Take => dropped += t.take_dropped(),
            }
            t.check();
            assert!(t.datagrams() <= cfg.max_datagrams);
            assert!(t.buffered_bytes() <= cfg.max_buffered_bytes);
        }
        drain(&mut t, &mut translated);
        // expire reports every drop not yet taken.
        dropped += t.expire(Instant::FAR_FUTURE);
        assert_eq!(t.take_dropped(), 0);
        assert_eq!(t.poll_timeout(), None);
        assert_eq!(t.datagrams(), 0);
        assert_eq!(t.buffered_bytes(), 0);
        t.check();
        assert_eq!(translated.len() + dropped, later_total, "buffered {buffered}");
        (translated.len(), dropped)
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            8 => (0usize..6, 0usize..8).prop_map(|(d, j)| Op::Frag(d, j)),
            1 => (0u64..3000).prop_map(Op::Wait),
            1 => Just(Op::Expire),
            2 => Just(Op::Drain),
            1 => Just(Op::Take),
        ]
    }

    proptest! {
        #[test]
        fn interleavings_account_for_every_fragment(
            sizes in proptest::collection::vec(1usize..8, 6),
            ops in proptest::collection::vec(op(), 0..120),
        ) {
            let cfg = FragConfig {
                max_datagrams: 3,
                max_buffered_bytes: 5 * 32,
                max_fragments: 5,
                timeout: Duration::from_secs(5),
                frame_capacity: 32,
            };
            run(cfg, &sizes, &ops);
        }

        #[test]
        fn roomy_table_translates_everything(
            sizes in proptest::collection::vec(1usize..8, 6),
            order in proptest::collection::vec((0usize..6, 0usize..8), 0..200),
        ) {
            // Every fragment of every datagram, in a random interleaving.
            let mut ops: Vec<Op> = order.iter().map(|&(d, j)| Op::Frag(d, j)).collect();
            for (d, &n) in sizes.iter().enumerate() {
                for j in 0..n {
                    ops.push(Op::Frag(d, j));
                }
            }
            let cfg = FragConfig { frame_capacity: 64, ..FragConfig::default() };
            let (translated, dropped) = run(cfg, &sizes, &ops);
            prop_assert_eq!(dropped, 0);
            prop_assert_eq!(translated, sizes.iter().map(|n| n - 1).sum::<usize>());
        }
    }
}
