//! ARP on the outside port: the neighbour resolver, and (in `frames`) the
//! frame helpers: [`parse`] and the writers of requests, replies,
//! announcements and probes for Ethernet/IPv4 (RFC 826), always
//! [`FRAME_LEN`] (42) bytes. They never panic: a buffer that is too short
//! yields `None` or a length of 0.
//!
//! [`ArpTable`] maps next-hop IPv4 addresses on the VPC side to MAC addresses
//! and holds the frames that wait for a resolution.
//!
//! # Units
//!
//! Times are [`Instant`]s (milliseconds since the driver's epoch) and
//! [`Duration`]s, rounded down to whole milliseconds. Lengths are bytes.
//!
//! # Invariants
//!
//! * Everything is allocated in [`ArpTable::new`]: the entry map (its
//!   capacity is reserved at twice `max_entries`, so inserting after removals
//!   rehashes in place instead of growing), `queue_frames` frame slots of
//!   `frame_capacity` bytes each, and the resolution and request bookkeeping.
//!   No method allocates afterwards.
//! * At most `max_entries` entries exist; at most `queue_frames` frames are
//!   held in total (waiting or released), and at most `queue_per_ip` wait for
//!   any one next hop.
//! * An entry confirmed at `t` answers [`ArpTable::lookup`] for
//!   `t <= now < t + reachable` (and for any `now` before `t`); it is
//!   forgotten by the first [`ArpTable::expire`] after that.
//! * An entry that [`ArpTable::lookup`] returned since its last refresh is
//!   refreshed before it ages out: from `t + reachable * 3/4` each
//!   [`ArpTable::expire`] sends a request for it (at most one per `retry`),
//!   while the entry goes on being used, so traffic to a busy next hop such
//!   as the VPC router never waits for a resolution.
//! * A next hop being resolved ("pending") always has at least one waiting
//!   frame. Its first request is scheduled when its first frame is queued;
//!   every later one `retry` after the previous, up to `max_requests` in all.
//!   `retry` after the last one it is given up and its frames are dropped.
//! * Frames for one next hop are released in the order they were queued;
//!   scheduled ARP requests leave before released frames.

use crate::bindings::Mac;
use crate::time::Instant;
use crate::PortId;
use core::net::Ipv4Addr;
use std::collections::HashMap;
use std::time::Duration;

use foldhash::fast::RandomState;
use smoltcp::wire::{EthernetAddress, EthernetFrame, ETHERNET_HEADER_LEN};

mod frames;
pub use frames::{
    parse, write_announcement, write_probe, write_reply, write_request, ArpMessage, ArpOp, ARP_LEN, FRAME_LEN,
};

/// Marks the end of an index list.
const NIL: u32 = u32::MAX;

/// Limits and timers of an [`ArpTable`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ArpConfig {
    /// Most entries held; when full, the least recently confirmed one is
    /// evicted. Default 1024.
    pub max_entries: usize,
    /// How long an entry is used after it was last confirmed. Default 300 s.
    pub reachable: Duration,
    /// Time between two requests for the same address. Default 1 s.
    pub retry: Duration,
    /// Requests sent for an address before giving up on it and dropping its
    /// waiting frames. Default 3.
    pub max_requests: u8,
    /// Frames waiting or released, in total. Default 1024.
    pub queue_frames: usize,
    /// Frames waiting for one address. Default 512: a burst of first
    /// packets from every environment before the VPC router answers.
    pub queue_per_ip: usize,
    /// Bytes per queued frame; longer frames are refused. Default 1518.
    pub frame_capacity: usize,
}

impl Default for ArpConfig {
    fn default() -> ArpConfig {
        ArpConfig {
            max_entries: 1024,
            reachable: Duration::from_secs(300),
            retry: Duration::from_secs(1),
            max_requests: 3,
            queue_frames: 1024,
            queue_per_ip: 512,
            frame_capacity: 1518,
        }
    }
}

/// What [`ArpTable::queue`] did with a frame.
#[must_use]
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Queued {
    /// A copy is held until its next hop resolves (or, if the next hop was
    /// already resolved, it is ready for [`ArpTable::poll_transmit`]).
    Waiting,
    /// Refused; nothing was kept. The caller counts the drop.
    Full,
}

/// A resolved neighbour.
#[derive(Copy, Clone, Debug)]
struct Entry {
    mac: Mac,
    /// Last time an ARP message from this neighbour was seen.
    confirmed: Instant,
    /// Returned by a lookup since the last refresh request.
    used: bool,
    /// When the last refresh request was sent.
    refreshed: Instant,
}

/// A next hop being resolved.
#[derive(Copy, Clone, Debug)]
struct Pending {
    /// Whether this slot is in use.
    active: bool,
    /// Whether this slot's index is in the request ring. Survives the slot
    /// being freed, so an index is in the ring at most once.
    scheduled: bool,
    ip: Ipv4Addr,
    /// The address requests are sent from.
    sender_ip: Ipv4Addr,
    /// Requests sent (or scheduled) so far.
    requests: u8,
    /// When the last request was scheduled.
    last_request: Instant,
    /// Waiting frames, oldest first (indices into the frame slots).
    head: u32,
    tail: u32,
    count: usize,
}

impl Pending {
    const FREE: Pending = Pending {
        active: false,
        scheduled: false,
        ip: Ipv4Addr::UNSPECIFIED,
        sender_ip: Ipv4Addr::UNSPECIFIED,
        requests: 0,
        last_request: Instant::ZERO,
        head: NIL,
        tail: NIL,
        count: 0,
    };
}

/// Bookkeeping of one frame slot; the bytes live in `ArpTable::storage`.
#[derive(Copy, Clone, Debug)]
struct Slot {
    len: usize,
    port: PortId,
    /// Destination MAC, set when the frame is released.
    dst: Mac,
    /// Next slot in whichever list this one is on (free, waiting or ready).
    next: u32,
}

/// A FIFO list threaded through `Slot::next`.
#[derive(Copy, Clone, Debug)]
struct List {
    head: u32,
    tail: u32,
}

impl List {
    const EMPTY: List = List { head: NIL, tail: NIL };
}

/// The outside port's ARP cache and its queue of frames waiting for
/// resolution. See the [module documentation](self) for the invariants.
#[derive(Debug)]
pub struct ArpTable {
    config: ArpConfig,
    our_mac: Mac,
    entries: HashMap<Ipv4Addr, Entry, RandomState>,
    /// The last fresh hit of [`ArpTable::lookup`]: its address, MAC and the
    /// end of its entry's reachable time. Valid while the entries are as
    /// they were then (the entry marked used): [`ArpTable::learn`] and
    /// [`ArpTable::expire`], the only other writers of `entries`, clear it.
    memo: Option<(Ipv4Addr, Mac, Instant)>,
    /// Next hop to its index in `pending`.
    pending_index: HashMap<Ipv4Addr, u32, RandomState>,
    pending: Vec<Pending>,
    /// Indices of free `pending` slots (a stack; never longer than `pending`).
    pending_free: Vec<u32>,
    /// Ring of `pending` indices whose request is due; each index at most once.
    requests: Vec<u32>,
    requests_head: usize,
    requests_len: usize,
    /// `slots.len() * frame_capacity` bytes of frame storage.
    storage: Vec<u8>,
    slots: Vec<Slot>,
    free: List,
    ready: List,
    /// Frames held (waiting or ready).
    held: usize,
    /// Next hops whose refresh request is due (at most `max_entries`).
    refresh: Vec<Ipv4Addr>,
    /// The address refresh requests are sent from.
    sender: Ipv4Addr,
}

impl ArpTable {
    /// A table with everything preallocated: the entry map, `queue_frames`
    /// slots of `frame_capacity` bytes, and room for `queue_frames` pending
    /// addresses and scheduled requests. `queue_frames` is capped at
    /// `u32::MAX - 1`.
    pub fn new(config: ArpConfig, our_mac: Mac) -> ArpTable {
        let n = config.queue_frames.min(NIL as usize - 1);
        let config = ArpConfig { queue_frames: n, ..config };
        let storage_len = n.saturating_mul(config.frame_capacity);
        let slots = (0..n)
            .map(|i| Slot {
                len: 0,
                port: PortId::OUTSIDE,
                dst: [0; 6],
                next: if i + 1 < n { i as u32 + 1 } else { NIL },
            })
            .collect();
        let free = if n == 0 { List::EMPTY } else { List { head: 0, tail: n as u32 - 1 } };
        let max_entries = config.max_entries;
        ArpTable {
            config,
            our_mac,
            entries: HashMap::with_capacity_and_hasher(max_entries.saturating_mul(2), RandomState::default()),
            memo: None,
            pending_index: HashMap::with_capacity_and_hasher(n.saturating_mul(2), RandomState::default()),
            pending: vec![Pending::FREE; n],
            pending_free: (0..n as u32).rev().collect(),
            requests: vec![NIL; n],
            requests_head: 0,
            requests_len: 0,
            storage: vec![0; storage_len],
            slots,
            free,
            ready: List::EMPTY,
            held: 0,
            refresh: Vec::with_capacity(max_entries),
            sender: Ipv4Addr::UNSPECIFIED,
        }
    }

    /// The address refresh requests are sent from (one of ours on the
    /// link); none are sent while it is unspecified.
    pub fn set_sender(&mut self, ip: Ipv4Addr) {
        self.sender = ip;
    }

    /// The configuration in force (`queue_frames` as capped by [`new`]).
    ///
    /// [`new`]: ArpTable::new
    pub fn config(&self) -> &ArpConfig {
        &self.config
    }

    /// The MAC this table writes as the source of requests and released
    /// frames.
    pub fn our_mac(&self) -> Mac {
        self.our_mac
    }

    /// Hot path: the MAC for `ip` if known and confirmed less than
    /// `reachable` ago, marking the entry used (so it is refreshed before
    /// it ages out). One hash lookup, none when asked for the same next hop
    /// as last time (the memo); no allocation.
    #[inline]
    pub fn lookup(&mut self, now: Instant, ip: Ipv4Addr) -> Option<Mac> {
        if let Some((m_ip, mac, until)) = self.memo {
            if m_ip == ip && now < until {
                return Some(mac);
            }
        }
        let reachable = self.config.reachable;
        let e = self.entries.get_mut(&ip)?;
        e.used = true;
        let until = e.confirmed + reachable;
        let fresh = now < until;
        self.memo = fresh.then_some((ip, e.mac, until));
        fresh.then_some(e.mac)
    }

    /// Whether `ip` is resolved at `now` (without marking it used).
    pub fn is_resolved(&self, now: Instant, ip: Ipv4Addr) -> bool {
        self.entries.get(&ip).is_some_and(|e| self.fresh(now, e))
    }

    #[inline]
    fn fresh(&self, now: Instant, e: &Entry) -> bool {
        now < e.confirmed + self.config.reachable
    }

    /// A sender's (`ip`, `mac`) seen in an ARP message at `now`.
    ///
    /// Updates an existing entry (MAC and confirmation time). Creates one only
    /// if `create` is true (RFC 826: we were the target) or frames are
    /// waiting for `ip`; when the table is full, the least recently confirmed
    /// entry is evicted first. Frames waiting for `ip` are released, in the
    /// order they were queued, for [`poll_transmit`] with destination MAC `mac`
    /// and source MAC our MAC.
    ///
    /// Ignored when `ip` is unspecified, broadcast or multicast, or `mac` is
    /// not a unicast address or all zeros: such senders (e.g. RFC 5227
    /// probes) cannot be next hops.
    ///
    /// [`poll_transmit`]: ArpTable::poll_transmit
    pub fn learn(&mut self, now: Instant, ip: Ipv4Addr, mac: Mac, create: bool) {
        self.memo = None;
        if ip.is_unspecified()
            || ip.is_broadcast()
            || ip.is_multicast()
            || !EthernetAddress(mac).is_unicast()
            || mac == [0; 6]
        {
            return;
        }
        let waiting = self.pending_index.get(&ip).copied();
        if let Some(e) = self.entries.get_mut(&ip) {
            e.mac = mac;
            e.confirmed = now;
        } else if (create || waiting.is_some()) && self.config.max_entries > 0 {
            if self.entries.len() >= self.config.max_entries {
                self.evict_oldest();
            }
            self.entries.insert(ip, Entry { mac, confirmed: now, used: false, refreshed: Instant::ZERO });
        }
        if let Some(p) = waiting {
            self.release(p, mac);
        }
    }

    /// Removes the least recently confirmed entry.
    fn evict_oldest(&mut self) {
        let oldest = self.entries.iter().min_by_key(|(_, e)| e.confirmed).map(|(ip, _)| *ip);
        if let Some(ip) = oldest {
            self.entries.remove(&ip);
        }
    }

    /// Moves pending `p`'s frames to the ready list with destination `mac`
    /// and frees `p`.
    fn release(&mut self, p: u32, mac: Mac) {
        let Some(pend) = self.pending.get(p as usize).copied() else {
            return;
        };
        let mut i = pend.head;
        while let Some(slot) = self.slots.get_mut(i as usize) {
            slot.dst = mac;
            i = slot.next;
        }
        self.append_ready(List { head: pend.head, tail: pend.tail });
        self.free_pending(p);
    }

    /// Appends a whole list to the ready list.
    fn append_ready(&mut self, list: List) {
        if list.head == NIL {
            return;
        }
        match self.slots.get_mut(self.ready.tail as usize) {
            Some(tail) => tail.next = list.head,
            None => self.ready.head = list.head,
        }
        self.ready.tail = list.tail;
    }

    /// Frees pending slot `p` (its frames must already be on another list).
    fn free_pending(&mut self, p: u32) {
        if let Some(pend) = self.pending.get_mut(p as usize) {
            if pend.active {
                self.pending_index.remove(&pend.ip);
                *pend = Pending { scheduled: pend.scheduled, ..Pending::FREE };
                self.pending_free.push(p);
            }
        }
    }

    /// Puts pending `p` in the request ring unless it is there already.
    fn schedule(&mut self, p: u32) {
        let cap = self.requests.len();
        let Some(pend) = self.pending.get_mut(p as usize) else {
            return;
        };
        if pend.scheduled || cap == 0 {
            return;
        }
        // Each index is in the ring at most once, so the ring (one place per
        // pending slot) never overflows.
        let at = (self.requests_head + self.requests_len) % cap;
        if let Some(place) = self.requests.get_mut(at) {
            *place = p;
            pend.scheduled = true;
            self.requests_len += 1;
        }
    }

    /// Takes a free frame slot off the free list.
    fn alloc_slot(&mut self) -> Option<u32> {
        let i = self.free.head;
        let slot = self.slots.get_mut(i as usize)?;
        self.free.head = slot.next;
        if self.free.head == NIL {
            self.free.tail = NIL;
        }
        slot.next = NIL;
        Some(i)
    }

    /// Returns slot `i` to the free list.
    fn free_slot(&mut self, i: u32) {
        let Some(slot) = self.slots.get_mut(i as usize) else {
            return;
        };
        slot.next = NIL;
        slot.len = 0;
        match self.slots.get_mut(self.free.tail as usize) {
            Some(tail) => tail.next = i,
            None => self.free.head = i,
        }
        self.free.tail = i;
    }

    /// Queues a copy of `frame` (to leave by `port`) until `next_hop`
    /// resolves; `sender_ip` is the address the ARP request is sent from.
    ///
    /// Returns [`Queued::Waiting`] and, if no request for `next_hop` was
    /// scheduled within `retry` (and fewer than `max_requests` were sent),
    /// schedules one for [`poll_transmit`]. If `next_hop` is already resolved
    /// the frame is released at once. Returns [`Queued::Full`], keeping
    /// nothing, when `queue_frames` frames are held, `queue_per_ip` wait for
    /// `next_hop`, or `frame` is longer than `frame_capacity` or shorter than
    /// an Ethernet header.
    ///
    /// [`poll_transmit`]: ArpTable::poll_transmit
    pub fn queue(
        &mut self,
        now: Instant,
        port: PortId,
        next_hop: Ipv4Addr,
        sender_ip: Ipv4Addr,
        frame: &[u8],
    ) -> Queued {
        if frame.len() > self.config.frame_capacity || frame.len() < ETHERNET_HEADER_LEN {
            return Queued::Full;
        }
        let resolved = self.lookup(now, next_hop);
        let existing = self.pending_index.get(&next_hop).copied();
        if resolved.is_none() {
            let per_ip = existing.and_then(|p| self.pending.get(p as usize)).map_or(0, |pend| pend.count);
            if per_ip >= self.config.queue_per_ip {
                return Queued::Full;
            }
        }
        let Some(i) = self.alloc_slot() else {
            return Queued::Full;
        };
        let cap = self.config.frame_capacity;
        let stored = (i as usize)
            .checked_mul(cap)
            .and_then(|start| self.storage.get_mut(start..start.checked_add(frame.len())?));
        let (Some(bytes), Some(slot)) = (stored, self.slots.get_mut(i as usize)) else {
            self.free_slot(i);
            return Queued::Full;
        };
        bytes.copy_from_slice(frame);
        slot.len = frame.len();
        slot.port = port;

        if let Some(mac) = resolved {
            slot.dst = mac;
            self.append_ready(List { head: i, tail: i });
            self.held += 1;
            return Queued::Waiting;
        }

        let p = match existing {
            Some(p) => p,
            None => {
                // A frame slot was free, so fewer than `queue_frames` next
                // hops are pending and a pending slot is free too.
                let Some(p) = self.pending_free.pop() else {
                    self.free_slot(i);
                    return Queued::Full;
                };
                if let Some(pend) = self.pending.get_mut(p as usize) {
                    *pend = Pending {
                        active: true,
                        scheduled: pend.scheduled,
                        ip: next_hop,
                        sender_ip,
                        requests: 0,
                        last_request: now,
                        head: NIL,
                        tail: NIL,
                        count: 0,
                    };
                }
                self.pending_index.insert(next_hop, p);
                p
            }
        };
        let retry = self.config.retry;
        let max_requests = self.config.max_requests;
        let Some(pend) = self.pending.get_mut(p as usize) else {
            self.free_slot(i);
            return Queued::Full;
        };
        self.held += 1;
        let tail = pend.tail;
        pend.tail = i;
        if pend.head == NIL {
            pend.head = i;
        }
        pend.count += 1;
        let due = pend.requests == 0 || now >= pend.last_request + retry;
        let send = due && pend.requests < max_requests;
        if send {
            pend.requests += 1;
            pend.last_request = now;
            pend.sender_ip = sender_ip;
        }
        if let Some(t) = self.slots.get_mut(tail as usize) {
            t.next = i;
        }
        if send {
            self.schedule(p);
        }
        Queued::Waiting
    }

    /// The next frame to send, copied into `buf`: scheduled ARP requests
    /// first (they leave by [`PortId::OUTSIDE`]), then released frames in
    /// release order, with destination MAC (bytes 0..6) the resolved MAC and
    /// source MAC (bytes 6..12) ours. Returns the port and the length.
    ///
    /// `buf` should be at least `frame_capacity` bytes long; if the next frame
    /// does not fit, it is kept and `None` is returned.
    pub fn poll_transmit(&mut self, buf: &mut [u8]) -> Option<(PortId, usize)> {
        while self.requests_len > 0 {
            if buf.len() < FRAME_LEN {
                return None;
            }
            let p = self.requests.get(self.requests_head).copied().unwrap_or(NIL);
            self.requests_head = (self.requests_head + 1) % self.requests.len().max(1);
            self.requests_len -= 1;
            let Some(pend) = self.pending.get_mut(p as usize) else {
                continue;
            };
            pend.scheduled = false;
            if pend.active {
                let len = write_request(buf, self.our_mac, pend.sender_ip, pend.ip);
                return Some((PortId::OUTSIDE, len));
            }
        }

        if let Some(&ip) = self.refresh.last() {
            if buf.len() < FRAME_LEN {
                return None;
            }
            self.refresh.pop();
            let len = write_request(buf, self.our_mac, self.sender, ip);
            return Some((PortId::OUTSIDE, len));
        }

        let i = self.ready.head;
        let slot = *self.slots.get(i as usize)?;
        let start = (i as usize).checked_mul(self.config.frame_capacity)?;
        let src = self.storage.get(start..start.checked_add(slot.len)?)?;
        let out = buf.get_mut(..slot.len)?;
        out.copy_from_slice(src);
        let mut eth = EthernetFrame::new_unchecked(out);
        if eth.check_len().is_ok() {
            eth.set_dst_addr(EthernetAddress(slot.dst));
            eth.set_src_addr(EthernetAddress(self.our_mac));
        }
        self.ready.head = slot.next;
        if self.ready.head == NIL {
            self.ready.tail = NIL;
        }
        self.free_slot(i);
        self.held = self.held.saturating_sub(1);
        Some((slot.port, slot.len))
    }

    /// Timer work at `now`: schedules a retry for every address whose last
    /// request was `retry` ago; gives up on those that already had
    /// `max_requests` requests, dropping their waiting frames; forgets
    /// entries confirmed `reachable` or more ago. Returns how many frames
    /// were dropped.
    pub fn expire(&mut self, now: Instant) -> usize {
        self.memo = None;
        let retry = self.config.retry;
        let max_requests = self.config.max_requests;
        let mut dropped = 0;
        for p in 0..self.pending.len() {
            let Some(pend) = self.pending.get_mut(p) else {
                break;
            };
            if !pend.active || now < pend.last_request + retry {
                continue;
            }
            if pend.requests >= max_requests {
                let mut i = pend.head;
                dropped += pend.count;
                self.held = self.held.saturating_sub(pend.count);
                while let Some(slot) = self.slots.get(i as usize) {
                    let next = slot.next;
                    self.free_slot(i);
                    i = next;
                }
                self.free_pending(p as u32);
            } else {
                pend.requests += 1;
                pend.last_request = now;
                self.schedule(p as u32);
            }
        }
        let reachable = self.config.reachable;
        self.entries.retain(|_, e| now < e.confirmed + reachable);
        // Used entries in the last quarter of their life: ask again.
        let stale = reachable - reachable / 4;
        if !self.sender.is_unspecified() {
            for (ip, e) in &mut self.entries {
                if e.used
                    && now >= e.confirmed + stale
                    && now >= e.refreshed + retry
                    && self.refresh.len() < self.refresh.capacity()
                {
                    e.used = false;
                    e.refreshed = now;
                    self.refresh.push(*ip);
                }
            }
        }
        dropped
    }

    /// The earliest time [`expire`] has a retry or a give-up to do; `None` if
    /// no address is being resolved. Entry ageing needs no timer: stale
    /// entries are not returned by [`lookup`].
    ///
    /// [`expire`]: ArpTable::expire
    /// [`lookup`]: ArpTable::lookup
    ///
    /// Called at every wake-up of a worker: with nothing being resolved (the
    /// common case) it answers without looking at the pending slots, and
    /// otherwise it looks only at the active ones (`pending_index` holds
    /// exactly those).
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.pending_index.is_empty() {
            return None;
        }
        self.pending_index
            .values()
            .filter_map(|&p| self.pending.get(p as usize))
            .filter(|p| p.active)
            .map(|p| p.last_request + self.config.retry)
            .min()
    }

    /// Entries held, including stale ones not yet forgotten by [`expire`].
    ///
    /// [`expire`]: ArpTable::expire
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no entries are held.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Frames held: waiting for resolution or released but not yet taken by
    /// [`poll_transmit`].
    ///
    /// [`poll_transmit`]: ArpTable::poll_transmit
    pub fn queued_frames(&self) -> usize {
        self.held
    }

    /// Addresses being resolved.
    pub fn resolving(&self) -> usize {
        self.pending_index.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const GW_MAC: Mac = [0x02, 0x4a, 0x9c, 0x11, 0x22, 0x33];
    const OUR_MAC: Mac = [0x02, 0x00, 0x5e, 0xaa, 0xbb, 0xcc];
    const GW: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
    const ENI: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 57);

    /// A who-has 10.0.0.57 tell 10.0.0.1 from the VPC gateway, padded to the
    /// 60-byte Ethernet minimum as it arrives on the wire.
    #[rustfmt::skip]
    const REQUEST: [u8; 60] = [
        // Ethernet: dst broadcast, src 02:4a:9c:11:22:33, type ARP
        0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
        0x02, 0x4a, 0x9c, 0x11, 0x22, 0x33,
        0x08, 0x06,
        // htype 1, ptype 0x0800, hlen 6, plen 4, op 1 (request)
        0x00, 0x01, 0x08, 0x00, 0x06, 0x04, 0x00, 0x01,
        // sha 02:4a:9c:11:22:33, spa 10.0.0.1
        0x02, 0x4a, 0x9c, 0x11, 0x22, 0x33, 10, 0, 0, 1,
        // tha 00:00:00:00:00:00, tpa 10.0.0.57
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 10, 0, 0, 57,
        // padding
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    ];

    fn table(config: ArpConfig) -> ArpTable {
        ArpTable::new(config, OUR_MAC)
    }

    fn small() -> ArpConfig {
        ArpConfig { queue_frames: 4, queue_per_ip: 2, ..ArpConfig::default() }
    }

    /// An IPv4-ish frame of `len` bytes whose payload bytes are all `tag`.
    fn frame(tag: u8, len: usize) -> Vec<u8> {
        let mut f = vec![tag; len];
        f[..12].fill(0xee);
        f[12..14].copy_from_slice(&[0x08, 0x00]);
        f
    }

    fn ms(t: u64) -> Instant {
        Instant::from_millis(t)
    }

    /// Drains poll_transmit.
    fn drain(t: &mut ArpTable) -> Vec<(PortId, Vec<u8>)> {
        let mut buf = [0u8; 1518];
        let mut out = Vec::new();
        while let Some((port, len)) = t.poll_transmit(&mut buf) {
            out.push((port, buf[..len].to_vec()));
        }
        out
    }

    #[test]
    fn parse_request_fixture() {
        let msg = parse(&REQUEST).unwrap();
        assert_eq!(
            msg,
            ArpMessage {
                operation: ArpOp::Request,
                sender_mac: GW_MAC,
                sender_ip: GW,
                target_mac: [0; 6],
                target_ip: ENI,
            }
        );
        // Without padding too.
        assert_eq!(parse(&REQUEST[..FRAME_LEN]), Some(msg));
    }

    #[test]
    fn reply_contents() {
        let mut f = REQUEST;
        let msg = parse(&f).unwrap();
        assert_eq!(write_reply(&mut f, &msg, OUR_MAC), FRAME_LEN);
        #[rustfmt::skip]
        let expected: [u8; 42] = [
            0x02, 0x4a, 0x9c, 0x11, 0x22, 0x33,
            0x02, 0x00, 0x5e, 0xaa, 0xbb, 0xcc,
            0x08, 0x06,
            0x00, 0x01, 0x08, 0x00, 0x06, 0x04, 0x00, 0x02,
            0x02, 0x00, 0x5e, 0xaa, 0xbb, 0xcc, 10, 0, 0, 57,
            0x02, 0x4a, 0x9c, 0x11, 0x22, 0x33, 10, 0, 0, 1,
        ];
        assert_eq!(f[..FRAME_LEN], expected);
        assert_eq!(f[FRAME_LEN..], [0; 18], "padding untouched");
        let reply = parse(&f).unwrap();
        assert_eq!(reply.operation, ArpOp::Reply);
        assert_eq!((reply.sender_mac, reply.sender_ip), (OUR_MAC, ENI));
        assert_eq!((reply.target_mac, reply.target_ip), (GW_MAC, GW));

        let mut short = [0u8; FRAME_LEN - 1];
        assert_eq!(write_reply(&mut short, &msg, OUR_MAC), 0);
        assert_eq!(short, [0; FRAME_LEN - 1]);
    }

    #[test]
    fn request_layout() {
        let mut buf = [0x55u8; 64];
        assert_eq!(write_request(&mut buf, OUR_MAC, ENI, GW), FRAME_LEN);
        #[rustfmt::skip]
        let expected: [u8; 42] = [
            0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
            0x02, 0x00, 0x5e, 0xaa, 0xbb, 0xcc,
            0x08, 0x06,
            0x00, 0x01, 0x08, 0x00, 0x06, 0x04, 0x00, 0x01,
            0x02, 0x00, 0x5e, 0xaa, 0xbb, 0xcc, 10, 0, 0, 57,
            0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 10, 0, 0, 1,
        ];
        assert_eq!(buf[..FRAME_LEN], expected);
        assert_eq!(buf[FRAME_LEN..], [0x55; 22]);
        assert_eq!(write_request(&mut [0u8; 41], OUR_MAC, ENI, GW), 0);
        assert_eq!(write_request(&mut [], OUR_MAC, ENI, GW), 0);
    }

    /// A broadcast who-has for ENI (10.0.0.57) from OUR_MAC with sender
    /// address `spa` and a zero THA, as `write` makes it; nothing is written
    /// into a buffer of `short` bytes.
    fn assert_request_layout(write: impl Fn(&mut [u8]) -> usize, spa: [u8; 4], short: usize) {
        let mut buf = [0u8; 42];
        assert_eq!(write(&mut buf), FRAME_LEN);
        #[rustfmt::skip]
        let mut expected: [u8; 42] = [
            0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
            0x02, 0x00, 0x5e, 0xaa, 0xbb, 0xcc,
            0x08, 0x06,
            0x00, 0x01, 0x08, 0x00, 0x06, 0x04, 0x00, 0x01,
            0x02, 0x00, 0x5e, 0xaa, 0xbb, 0xcc, 0, 0, 0, 0,
            0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 10, 0, 0, 57,
        ];
        expected[28..32].copy_from_slice(&spa);
        assert_eq!(buf, expected);
        assert_eq!(write(&mut vec![0u8; short]), 0);
    }

    #[test]
    fn announcement_layout() {
        assert_request_layout(|b| write_announcement(b, OUR_MAC, ENI), [10, 0, 0, 57], 10);
    }

    #[test]
    fn probe_layout() {
        assert_request_layout(|b| write_probe(b, OUR_MAC, ENI), [0, 0, 0, 0], 41);
    }

    #[test]
    fn truncated_frames_are_none() {
        for len in 0..FRAME_LEN {
            assert_eq!(parse(&REQUEST[..len]), None, "length {len}");
        }
    }

    #[test]
    fn wrong_types_are_none() {
        let with = |at: usize, bytes: &[u8]| {
            let mut f = REQUEST;
            f[at..at + bytes.len()].copy_from_slice(bytes);
            parse(&f)
        };
        assert_eq!(with(12, &[0x08, 0x00]), None, "IPv4 ethertype");
        assert_eq!(with(12, &[0x81, 0x00]), None, "802.1Q tag");
        assert_eq!(with(14, &[0x00, 0x06]), None, "htype IEEE 802");
        assert_eq!(with(16, &[0x86, 0xdd]), None, "ptype IPv6");
        assert_eq!(with(18, &[0x08]), None, "hlen 8");
        assert_eq!(with(19, &[0x10]), None, "plen 16");
        assert_eq!(with(20, &[0x00, 0x03]), None, "RARP request");
        assert_eq!(with(20, &[0x00, 0x00]), None, "operation 0");
        assert!(with(20, &[0x00, 0x02]).is_some(), "reply");
        // A short hlen makes the body fit but is still not Ethernet/IPv4.
        assert_eq!(with(18, &[0x00]), None, "hlen 0");
    }

    #[test]
    fn queue_learn_releases_in_order() {
        let mut t = table(ArpConfig::default());
        let f1 = frame(1, 60);
        let f2 = frame(2, 1518);
        let f3 = frame(3, 100);
        assert_eq!(t.queue(ms(0), PortId(3), GW, ENI, &f1), Queued::Waiting);
        assert_eq!(t.queue(ms(10), PortId(4), GW, ENI, &f2), Queued::Waiting);
        assert_eq!(t.queue(ms(20), PortId(3), GW, ENI, &f3), Queued::Waiting);
        assert_eq!(t.queued_frames(), 3);
        assert_eq!(t.resolving(), 1);
        assert_eq!(t.lookup(ms(20), GW), None);

        // One request, nothing else until the reply.
        let out = drain(&mut t);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].0, PortId::OUTSIDE);
        let req = parse(&out[0].1).unwrap();
        assert_eq!(req.operation, ArpOp::Request);
        assert_eq!((req.sender_mac, req.sender_ip, req.target_ip), (OUR_MAC, ENI, GW));
        assert_eq!(out[0].1[..6], [0xff; 6]);

        // The reply names us as target but create=false must still create,
        // because frames wait for GW.
        t.learn(ms(30), GW, GW_MAC, false);
        assert_eq!(t.lookup(ms(30), GW), Some(GW_MAC));
        assert_eq!(t.resolving(), 0);
        assert_eq!(t.poll_timeout(), None);
        let out = drain(&mut t);
        assert_eq!(out.len(), 3);
        for ((port, bytes), (want_port, want)) in out.iter().zip([(PortId(3), &f1), (PortId(4), &f2), (PortId(3), &f3)])
        {
            assert_eq!(*port, want_port);
            assert_eq!(bytes.len(), want.len());
            assert_eq!(bytes[..6], GW_MAC);
            assert_eq!(bytes[6..12], OUR_MAC);
            assert_eq!(bytes[12..], want[12..]);
        }
        assert_eq!(t.queued_frames(), 0);
        assert_eq!(drain(&mut t), vec![]);
    }

    #[test]
    fn queue_to_resolved_next_hop_is_ready_at_once() {
        let mut t = table(ArpConfig::default());
        t.learn(ms(0), GW, GW_MAC, true);
        assert_eq!(t.queue(ms(1), PortId(2), GW, ENI, &frame(7, 80)), Queued::Waiting);
        assert_eq!(t.resolving(), 0);
        let out = drain(&mut t);
        assert_eq!(out.len(), 1, "no request, just the frame");
        assert_eq!(out[0].0, PortId(2));
        assert_eq!(out[0].1[..6], GW_MAC);
    }

    #[test]
    fn limits_are_full() {
        let mut t = table(small());
        let other = Ipv4Addr::new(10, 0, 0, 2);
        let third = Ipv4Addr::new(10, 0, 0, 3);
        assert_eq!(t.queue(ms(0), PortId(1), GW, ENI, &frame(1, 60)), Queued::Waiting);
        assert_eq!(t.queue(ms(0), PortId(1), GW, ENI, &frame(2, 60)), Queued::Waiting);
        assert_eq!(t.queue(ms(0), PortId(1), GW, ENI, &frame(3, 60)), Queued::Full, "per ip");
        assert_eq!(t.queue(ms(0), PortId(1), other, ENI, &frame(4, 60)), Queued::Waiting);
        assert_eq!(t.queue(ms(0), PortId(1), other, ENI, &frame(5, 60)), Queued::Waiting);
        assert_eq!(t.queued_frames(), 4);
        assert_eq!(t.queue(ms(0), PortId(1), third, ENI, &frame(6, 60)), Queued::Full, "total");
        assert_eq!(t.resolving(), 2, "a refused frame leaves no pending address");

        // Released frames still count against the total until transmitted.
        t.learn(ms(1), GW, GW_MAC, false);
        assert_eq!(t.queued_frames(), 4);
        assert_eq!(t.queue(ms(1), PortId(1), third, ENI, &frame(6, 60)), Queued::Full);
        assert_eq!(drain(&mut t).len(), 1 + 2, "one request (GW resolved first), two frames");
        assert_eq!(t.queue(ms(1), PortId(1), third, ENI, &frame(6, 60)), Queued::Waiting);

        // Frame length bounds.
        let mut t = table(small());
        assert_eq!(t.queue(ms(0), PortId(1), GW, ENI, &frame(1, 1519)), Queued::Full);
        assert_eq!(t.queue(ms(0), PortId(1), GW, ENI, &[0u8; 13]), Queued::Full);
        assert_eq!(t.queued_frames(), 0);
        assert_eq!(t.resolving(), 0);
        assert_eq!(t.queue(ms(0), PortId(1), GW, ENI, &frame(1, 1518)), Queued::Waiting);

        // Zero-sized queues refuse everything.
        let mut t = table(ArpConfig { queue_frames: 0, ..ArpConfig::default() });
        assert_eq!(t.queue(ms(0), PortId(1), GW, ENI, &frame(1, 60)), Queued::Full);
        let mut t = table(ArpConfig { queue_per_ip: 0, ..ArpConfig::default() });
        assert_eq!(t.queue(ms(0), PortId(1), GW, ENI, &frame(1, 60)), Queued::Full);
        assert_eq!(drain(&mut t), vec![]);
    }

    #[test]
    fn retries_then_give_up() {
        let mut t = table(ArpConfig::default());
        assert_eq!(t.poll_timeout(), None);
        assert_eq!(t.queue(ms(0), PortId(1), GW, ENI, &frame(1, 60)), Queued::Waiting);
        assert_eq!(drain(&mut t).len(), 1, "first request at 0 s");
        // Another frame within `retry` sends nothing.
        assert_eq!(t.queue(ms(500), PortId(1), GW, ENI, &frame(2, 60)), Queued::Waiting);
        assert_eq!(drain(&mut t).len(), 0);
        assert_eq!(t.poll_timeout(), Some(ms(1000)));

        assert_eq!(t.expire(ms(999)), 0);
        assert_eq!(drain(&mut t).len(), 0);
        assert_eq!(t.expire(ms(1000)), 0);
        let out = drain(&mut t);
        assert_eq!(out.len(), 1, "second request at 1 s");
        assert_eq!(parse(&out[0].1).map(|m| m.target_ip), Some(GW));
        assert_eq!(t.poll_timeout(), Some(ms(2000)));

        assert_eq!(t.expire(ms(2000)), 0);
        assert_eq!(drain(&mut t).len(), 1, "third request at 2 s");
        assert_eq!(t.poll_timeout(), Some(ms(3000)));
        // A frame queued after the last request does not trigger a fourth.
        assert_eq!(t.queue(ms(2500), PortId(1), GW, ENI, &frame(3, 60)), Queued::Waiting);
        assert_eq!(drain(&mut t).len(), 0);

        assert_eq!(t.expire(ms(2999)), 0);
        assert_eq!(t.expire(ms(3000)), 3, "given up: three frames dropped");
        assert_eq!(t.queued_frames(), 0);
        assert_eq!(t.resolving(), 0);
        assert_eq!(t.poll_timeout(), None);
        assert_eq!(drain(&mut t), vec![]);
        assert!(t.is_empty());

        // A late reply no longer creates an entry.
        t.learn(ms(3100), GW, GW_MAC, false);
        assert!(t.is_empty());

        // The freed capacity is usable again and starts a fresh round.
        assert_eq!(t.queue(ms(4000), PortId(1), GW, ENI, &frame(4, 60)), Queued::Waiting);
        assert_eq!(drain(&mut t).len(), 1);
        assert_eq!(t.poll_timeout(), Some(ms(5000)));
    }

    #[test]
    fn retry_from_queue_after_retry_elapsed() {
        let mut t = table(ArpConfig::default());
        let _ = t.queue(ms(0), PortId(1), GW, ENI, &frame(1, 60));
        assert_eq!(drain(&mut t).len(), 1);
        // The driver was late calling expire(); a new frame sends the retry.
        let _ = t.queue(ms(1200), PortId(1), GW, ENI, &frame(2, 60));
        assert_eq!(drain(&mut t).len(), 1);
        assert_eq!(t.poll_timeout(), Some(ms(2200)));
        assert_eq!(t.expire(ms(1500)), 0);
        assert_eq!(drain(&mut t).len(), 0);
    }

    #[test]
    fn resolved_while_request_scheduled() {
        let mut t = table(ArpConfig { queue_frames: 2, ..ArpConfig::default() });
        let other = Ipv4Addr::new(10, 0, 0, 2);
        let _ = t.queue(ms(0), PortId(1), GW, ENI, &frame(1, 60));
        // Resolved before its request left: that request is not sent.
        t.learn(ms(0), GW, GW_MAC, false);
        // The freed pending slot is reused while its old place in the
        // request ring is still taken; that place now serves `other`.
        let _ = t.queue(ms(0), PortId(2), other, ENI, &frame(2, 60));
        assert_eq!(t.requests_len, 1);
        let out = drain(&mut t);
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].0, PortId::OUTSIDE);
        assert_eq!(parse(&out[0].1).map(|m| m.target_ip), Some(other));
        assert_eq!(out[1].0, PortId(1));
        t.learn(ms(5), other, GW_MAC, false);
        let out = drain(&mut t);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].0, PortId(2));
    }

    #[test]
    fn ageing_after_reachable() {
        let mut t = table(ArpConfig::default());
        t.learn(ms(0), GW, GW_MAC, true);
        assert_eq!(t.len(), 1);
        assert_eq!(t.lookup(ms(299_999), GW), Some(GW_MAC));
        assert_eq!(t.lookup(ms(300_000), GW), None);
        assert_eq!(t.expire(ms(299_999)), 0);
        assert_eq!(t.len(), 1);
        // A confirmation (even unsolicited) refreshes an existing entry.
        t.learn(ms(200_000), GW, GW_MAC, false);
        assert_eq!(t.lookup(ms(499_999), GW), Some(GW_MAC));
        assert_eq!(t.expire(ms(500_000)), 0);
        assert!(t.is_empty());
        assert_eq!(t.lookup(ms(500_000), GW), None);
        assert_eq!(t.poll_timeout(), None, "ageing needs no timer");
    }

    /// The lookup's memo of its last hit answers only what the table would:
    /// a new MAC at once, and a hit through it marks the entry used (so a
    /// refresh is asked again after the last one).
    #[test]
    fn the_lookup_memo_never_outlives_what_it_remembers() {
        let mut t = table(ArpConfig::default());
        t.set_sender(ENI);
        t.learn(ms(0), GW, GW_MAC, true);
        assert_eq!(t.lookup(ms(1), GW), Some(GW_MAC));
        let other: Mac = [0x02, 0, 0, 0, 0, 9];
        t.learn(ms(2), GW, other, false);
        assert_eq!(t.lookup(ms(3), GW), Some(other));
        assert_eq!(t.expire(ms(230_000)), 0);
        assert_eq!(drain(&mut t).len(), 1, "a refresh in the last quarter of the entry's life");
        assert_eq!(t.lookup(ms(230_500), GW), Some(other));
        assert_eq!(t.lookup(ms(230_600), GW), Some(other));
        assert_eq!(t.expire(ms(232_000)), 0);
        assert_eq!(drain(&mut t).len(), 1, "used again since: refreshed again");
        assert_eq!(t.expire(ms(234_000)), 0);
        assert_eq!(drain(&mut t).len(), 0, "not used since the last refresh");
        assert_eq!(t.lookup(ms(300_002), GW), None, "past its reachable time");
    }

    #[test]
    fn learn_creates_only_when_asked() {
        let mut t = table(ArpConfig::default());
        t.learn(ms(0), GW, GW_MAC, false);
        assert!(t.is_empty());
        t.learn(ms(0), GW, GW_MAC, true);
        let moved = [0x02, 0, 0, 0, 0, 9];
        t.learn(ms(1), GW, moved, false);
        assert_eq!(t.lookup(ms(1), GW), Some(moved));
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn learn_ignores_bogus_senders() {
        let mut t = table(ArpConfig::default());
        t.learn(ms(0), Ipv4Addr::UNSPECIFIED, GW_MAC, true);
        t.learn(ms(0), Ipv4Addr::BROADCAST, GW_MAC, true);
        t.learn(ms(0), Ipv4Addr::new(224, 0, 0, 1), GW_MAC, true);
        t.learn(ms(0), GW, [0xff; 6], true);
        t.learn(ms(0), GW, [0x01, 0, 0x5e, 0, 0, 1], true);
        t.learn(ms(0), GW, [0; 6], true);
        assert!(t.is_empty());
    }

    #[test]
    fn eviction_when_full() {
        let mut t = table(ArpConfig { max_entries: 3, ..ArpConfig::default() });
        let ip = |n| Ipv4Addr::new(10, 0, 0, n);
        t.learn(ms(0), ip(1), GW_MAC, true);
        t.learn(ms(10), ip(2), GW_MAC, true);
        t.learn(ms(20), ip(3), GW_MAC, true);
        t.learn(ms(30), ip(1), GW_MAC, false); // ip(1) is now the newest
        t.learn(ms(40), ip(4), GW_MAC, true);
        assert_eq!(t.len(), 3);
        assert_eq!(t.lookup(ms(40), ip(2)), None, "least recently confirmed evicted");
        for n in [1, 3, 4] {
            assert_eq!(t.lookup(ms(40), ip(n)), Some(GW_MAC));
        }
        // A resolution for waiting frames also evicts.
        let _ = t.queue(ms(50), PortId(1), ip(5), ENI, &frame(1, 60));
        t.learn(ms(60), ip(5), GW_MAC, false);
        assert_eq!(t.len(), 3);
        assert_eq!(t.lookup(ms(60), ip(3)), None);
        assert_eq!(t.lookup(ms(60), ip(5)), Some(GW_MAC));

        // With no room at all, waiting frames are still released.
        let mut t = table(ArpConfig { max_entries: 0, ..ArpConfig::default() });
        let _ = t.queue(ms(0), PortId(1), GW, ENI, &frame(1, 60));
        assert_eq!(drain(&mut t).len(), 1, "the request");
        t.learn(ms(0), GW, GW_MAC, true);
        assert!(t.is_empty());
        assert_eq!(drain(&mut t).len(), 1, "the frame");
    }

    #[test]
    fn churn_never_grows_the_maps() {
        let config = ArpConfig { max_entries: 16, queue_frames: 8, ..ArpConfig::default() };
        let mut t = table(config);
        let (entries, pending) = (t.entries.capacity(), t.pending_index.capacity());
        let storage = t.storage.as_ptr();
        let mut now = 0;
        for i in 0..20_000u32 {
            now += 7;
            let [_, b, c, d] = i.to_be_bytes();
            let ip = Ipv4Addr::new(10, b, c, d);
            t.learn(ms(now), ip, GW_MAC, true);
            let hop = Ipv4Addr::new(172, b, c, d);
            let _ = t.queue(ms(now), PortId(1), hop, ENI, &frame(1, 60));
            if i % 3 == 0 {
                t.learn(ms(now), hop, GW_MAC, false);
            }
            t.expire(ms(now));
            drain(&mut t);
        }
        // A map's `capacity()` is its items plus the inserts left before it must rehash: erased entries leave
        // tombstones that lower it until the next rehash, which happens in place while the map is at most half
        // full. A map that grew would report more than it started with.
        assert!(t.entries.capacity() <= entries, "{} > {entries}", t.entries.capacity());
        assert!(t.pending_index.capacity() <= pending, "{} > {pending}", t.pending_index.capacity());
        assert_eq!(t.storage.as_ptr(), storage);
        assert!(t.len() <= 16);
    }

    /// One step of the random-operation property test.
    #[derive(Clone, Debug)]
    enum Op {
        Queue { hop: u8, len: usize },
        Learn { ip: u8, create: bool },
        Advance { ms: u64 },
        Expire,
        Poll,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0..6u8, 0..80usize).prop_map(|(hop, len)| Op::Queue { hop, len }),
            (0..6u8, any::<bool>()).prop_map(|(ip, create)| Op::Learn { ip, create }),
            (0..1500u64).prop_map(|ms| Op::Advance { ms }),
            Just(Op::Expire),
            Just(Op::Poll),
        ]
    }

    proptest! {
        #[test]
        fn parse_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..128)) {
            let _ = parse(&bytes);
            let mut b = bytes.clone();
            if let Some(msg) = parse(&bytes) {
                prop_assert_eq!(write_reply(&mut b, &msg, OUR_MAC), FRAME_LEN);
            }
        }

        #[test]
        fn parse_never_panics_on_arp_shaped(mut tail in proptest::collection::vec(any::<u8>(), 0..64)) {
            let mut bytes = REQUEST[..14].to_vec();
            bytes.append(&mut tail);
            let _ = parse(&bytes);
        }

        #[test]
        fn table_keeps_its_bounds(ops in proptest::collection::vec(op(), 0..200)) {
            let config = ArpConfig {
                max_entries: 3,
                queue_frames: 5,
                queue_per_ip: 2,
                frame_capacity: 64,
                ..ArpConfig::default()
            };
            let mut t = table(config);
            let mut now = 0u64;
            let mut accepted = 0usize;
            let mut left = 0usize;
            let mut buf = [0u8; 64];
            for op in ops {
                match op {
                    Op::Queue { hop, len } => {
                        let f = vec![hop; len];
                        let ip = Ipv4Addr::new(10, 0, 0, hop + 1);
                        if t.queue(ms(now), PortId(1), ip, ENI, &f) == Queued::Waiting {
                            accepted += 1;
                        }
                    }
                    Op::Learn { ip, create } => {
                        t.learn(ms(now), Ipv4Addr::new(10, 0, 0, ip + 1), GW_MAC, create);
                    }
                    Op::Advance { ms } => now += ms,
                    Op::Expire => left += t.expire(ms(now)),
                    Op::Poll => {
                        if let Some((port, len)) = t.poll_transmit(&mut buf) {
                            if port != PortId::OUTSIDE {
                                left += 1;
                                prop_assert_eq!(&buf[..6], &GW_MAC[..]);
                            } else {
                                prop_assert!(parse(&buf[..len]).is_some());
                            }
                        }
                    }
                }
                prop_assert!(t.len() <= 3);
                prop_assert!(t.queued_frames() <= 5);
                prop_assert!(t.resolving() <= t.queued_frames());
                prop_assert_eq!(accepted, left + t.queued_frames());
                prop_assert_eq!(t.poll_timeout().is_some(), t.resolving() > 0);
            }
        }
    }
}
