//! What sessions hold: ENI addresses' port pools and high-water marks,
//! environments' quotas (their state in [`super::quotas`]), and the recycling of ended and unanswered sessions
//! when a new flow is short of a slot or a port.

use super::quotas::{step, EnvQuotas};
use super::{Engine, Event};
use crate::bindings::Bindings;
use crate::config::{EngineConfig, Mapping};
use crate::counters::Counters;
use crate::flow::{proto_index, Endpoint, FlowKey, TCP};
use crate::ports::PortPool;
use crate::session::{Session, SessionTable, NIL};
use crate::tcp;
use crate::time::Instant;
use core::net::Ipv4Addr;
use std::collections::HashMap;

/// One ENI address's port pools.
pub(super) struct Addr {
    pub(super) pools: [PortPool; 3],
    /// Slot in [`Counters::addrs`], if one was free.
    pub(super) gauge: Option<usize>,
    /// Sessions per protocol under address-and-port-dependent mapping.
    pub(super) apdm: [u32; 3],
    /// Ports (sessions under address-and-port-dependent mapping) held by
    /// live flows, per protocol.
    pub(super) live: [u32; 3],
    /// Sessions on the `cool` list, per protocol (only TCP has any): their
    /// ports count towards the high-water mark.
    pub(super) warm: [u32; 3],
    /// The session table's recyclable list for this address: sessions
    /// whose port any new flow may take.
    pub(super) list: u16,
    /// Its list of ended connections whose remote closed first less than
    /// [`REMOTE_TIME_WAIT`] ago ([`cooling`]): their ports may still sit in
    /// that remote's TIME_WAIT, so they carry no new connection towards it
    /// and count as held. [`Engine::cool_down`] moves each to `list` when
    /// its time is up. Equal to `list` when the table ran out of list ids
    /// (over 500 addresses): then nothing counts as cooling.
    pub(super) cool: u16,
    pub(super) high: [bool; 3],
    pub(super) bound: bool,
}

impl Addr {
    /// Ports (or sessions) held, live or recyclable.
    pub(super) fn held(&self, pi: usize, mapping: Mapping) -> u32 {
        match mapping {
            Mapping::EndpointIndependent => self.pools[pi].in_use(),
            Mapping::AddressAndPortDependent => self.apdm[pi],
        }
    }

    /// Ports (or sessions) held only by recyclable sessions: held, not live.
    pub(super) fn closing(&self, pi: usize, mapping: Mapping) -> u32 {
        self.held(pi, mapping).saturating_sub(self.live[pi])
    }

    /// Of [`Addr::closing`], those cooling in their remote's TIME_WAIT.
    pub(super) fn cooling(&self, pi: usize, mapping: Mapping) -> u32 {
        self.warm[pi].min(self.closing(pi, mapping))
    }

    /// The high-water mark of live ports for protocol `pi`. A mark above the
    /// pool (65,000 against 64,512 ports by default) must still fire while
    /// there is room for the time an address takes to add (its probe): at
    /// most 7/8 of the pool.
    pub(super) fn mark(&self, pi: usize, cfg: &EngineConfig) -> u32 {
        let cap = self.pools[pi].capacity();
        match cfg.mapping {
            Mapping::EndpointIndependent => cfg.high_water.min(cap - cap / 8).max(1),
            Mapping::AddressAndPortDependent => cfg.high_water,
        }
    }

    /// The list a recyclable session of hold `h` waits on.
    fn list_for(&self, h: Hold) -> u16 {
        if h == Hold::Closing(true) {
            self.cool
        } else {
            self.list
        }
    }

    /// Whether `s` is counted in `warm`: it is on the cooling list.
    fn is_cool(&self, s: &Session) -> bool {
        self.cool != self.list && s.on_list() == Some(self.cool)
    }

    /// Whether a new mapping can have a port here without recycling.
    pub(super) fn has_room(&self, pi: usize, mapping: Mapping) -> bool {
        match mapping {
            Mapping::EndpointIndependent => self.pools[pi].available() > 0,
            Mapping::AddressAndPortDependent => self.apdm[pi] < self.pools[pi].capacity(),
        }
    }
}

/// What a session holds on behalf of its environment.
///
/// `Live` sessions count against the environment's quotas and are never
/// recycled. `Closing` ones (TCP after both FINs or an RST) and
/// `Unanswered` ones (opened from the VPC, nothing sent back yet) only wait
/// out their timers: they sit on their address's recyclable list, and a new
/// flow short of a table slot or a port takes the oldest.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub(super) enum Hold {
    Live,
    /// Ended; `true` when [`warm`]: the remote closed first.
    Closing(bool),
    Unanswered,
}

impl Hold {
    pub(super) fn of(s: &Session) -> Hold {
        Hold::from_parts(s.inbound_origin && s.no_out(), s.proto == TCP && s.tcp.closing(), warm(s))
    }

    pub(super) const fn from_parts(unanswered: bool, closing: bool, warm: bool) -> Hold {
        if unanswered {
            Hold::Unanswered
        } else if closing {
            Hold::Closing(warm)
        } else {
            Hold::Live
        }
    }
}

/// A port [`Engine::find_port`] took for a new mapping, already counted as
/// held live on its address and published.
#[derive(Copy, Clone, Debug)]
pub(super) struct Taken {
    pub(super) ep: Endpoint,
    /// Its address reached its high-water mark with it: the caller checks
    /// again ([`Engine::check_high_water`], which raises the event) once
    /// the flow's session exists, so a flow refused after all raises none.
    pub(super) high: bool,
}

/// How long an outbound flow nobody has answered keeps its session against
/// a full table: after it, a new flow short of a slot may take the session
/// (Linux's conntrack likewise drops unreplied entries early when it is
/// full). Long enough for an answer to cross a VPC; a flow answered later
/// just starts a new session. TCP counts as answered from its first segment
/// from the VPC, so only SYNs nobody answered are taken.
pub const UNANSWERED_GRACE: std::time::Duration = std::time::Duration::from_secs(1);

/// How many sessions a flow short of a table slot looks at for one nobody
/// answered ([`UNANSWERED_GRACE`]) before it is refused.
pub(super) const EVICT_SCAN: u32 = 64;

/// How far a new flow looks down an address's recyclable list for a
/// session whose removal gives it a port.
pub(super) const RECYCLE_SCAN: usize = 64;

/// The most session-table lookups one call of
/// [`Engine::probe_port`] makes: 32 random ports, then a scan of at most
/// [`PROBE_SCAN`] from a random start. A destination that has nearly every
/// port of an address may then be refused a port that is free elsewhere in
/// the range (the flow tries the next address, recycles, or is refused);
/// the alternative, a scan of the whole range, costs up to 64,512 lookups
/// per new flow, and a client retrying SYNs towards a busy server would
/// hold the worker.
pub const PROBE_LIMIT: u64 = 32 + PROBE_SCAN as u64;
/// Ports scanned after the random probes.
pub const PROBE_SCAN: u32 = 512;

/// How long a remote that closed a connection first may hold it in
/// TIME_WAIT: until then the ENI port carries no new connection to that
/// same remote endpoint, which would meet the old one's TIME_WAIT and lose
/// its SYN. Linux's `TCP_TIMEWAIT_LEN` (FreeBSD's 2MSL) is 60 s, but Linux
/// runs it on its timer wheel, which fires a 60 s timer up to an eighth
/// late (64–67.5 s seen from the wire), so 70 s.
pub const REMOTE_TIME_WAIT: std::time::Duration = std::time::Duration::from_secs(70);

/// Whether `s` ended with the remote closing first less than
/// [`REMOTE_TIME_WAIT`] ago: the remote may still hold its 5-tuple.
pub(super) fn cooling(s: &Session, now: Instant) -> bool {
    s.proto == TCP && s.tcp == tcp::State::FinBoth && s.remote_closed_first && now < s.last_seen + REMOTE_TIME_WAIT
}

/// Whether `s` counts as holding its port towards the high-water mark
/// after it ended: the remote closed first, so the port may sit in the
/// remote's TIME_WAIT (until the session is recycled or expires).
pub(super) fn warm(s: &Session) -> bool {
    s.proto == TCP && s.tcp == tcp::State::FinBoth && s.remote_closed_first
}

impl Engine {
    pub(super) fn forget_idle_addrs(&mut self) {
        let m = self.cfg.mapping;
        let Engine { addrs, addr_set, counters, free_lists, cfg, .. } = self;
        addrs.retain(|_, a| {
            let keep = a.bound || (0..3).any(|i| a.held(i, m) > 0);
            if !keep {
                if let Some(g) = a.gauge {
                    counters.addrs[g].set_addr(None, 0);
                }
                for l in [a.list, a.cool] {
                    if usize::from(l) < crate::session::LISTS - 1 && !free_lists.contains(&l) {
                        free_lists.push(l);
                    }
                }
            }
            keep
        });
        addr_set.rebuild(addrs.keys().copied());
        // Slots freed above go to addresses that had none.
        let mut ungauged = 0u64;
        for (&addr, a) in addrs.iter_mut().filter(|(_, a)| a.gauge.is_none()) {
            let Some(g) = counters.addrs.iter().position(|g| g.addr().is_none()) else {
                ungauged += 1;
                continue;
            };
            a.gauge = Some(g);
            counters.addrs[g].set_addr(Some(addr), a.pools[0].capacity());
            for pi in 0..3 {
                Engine::publish(counters, a, pi, cfg);
            }
        }
        counters.addrs_ungauged.set(ungauged);
    }

    /// Publishes one address's port use for other threads, and re-arms its
    /// high-water mark once live use is back below it.
    pub(super) fn publish(counters: &Counters, a: &mut Addr, pi: usize, cfg: &EngineConfig) {
        let below = a.live[pi] + a.warm[pi] < a.mark(pi, cfg);
        Engine::publish_marked(counters, a, pi, cfg, below);
    }

    /// [`Engine::publish`] with whether live use is `below` the mark.
    #[inline]
    fn publish_marked(counters: &Counters, a: &mut Addr, pi: usize, cfg: &EngineConfig, below: bool) {
        if below {
            a.high[pi] = false;
        }
        if let Some(g) = a.gauge {
            let (closing, cooling) = (a.closing(pi, cfg.mapping), a.cooling(pi, cfg.mapping));
            counters.addrs[g].set(pi, a.live[pi], closing, cooling, a.pools[pi].quarantined());
        }
    }

    /// Moves a session whose hold changed (it closed, reopened, or the
    /// environment answered it) between the quotas and its address's
    /// recyclable list. `before` is its hold before the change.
    pub(super) fn rehold(&mut self, sid: u32, before: Hold) {
        let s = *self.table.get(sid);
        let after = Hold::of(&s);
        if after == before {
            return;
        }
        let pi = proto_index(s.proto);
        let env = self.envs.entry(&self.bindings, s.inside.ip);
        env.count(before, false);
        env.count(after, true);
        let live = after == Hold::Live;
        let Some(a) = self.addrs.get_mut(&s.eni.ip) else {
            // An address no longer known: off the lists, or on the shared last one.
            let list = (!live).then_some(crate::session::LISTS as u16 - 1);
            if self.table.set_recyclable(sid, list) {
                step(&mut env.ports[pi], live);
            }
            return;
        };
        let was_cool = a.is_cool(&s);
        let target = (!live).then(|| a.list_for(after));
        if s.on_list() != target && self.table.set_recyclable(sid, target) {
            step(&mut env.ports[pi], live);
            step(&mut a.live[pi], live);
        }
        let is_cool = target == Some(a.cool) && a.cool != a.list;
        if was_cool != is_cool {
            step(&mut a.warm[pi], is_cool);
        }
        self.check_high_water(s.eni.ip, s.proto);
    }

    /// Accounts for a session that left the table (expired or recycled):
    /// the environment's quotas, its address's live ports and port pool.
    /// A TCP mapping whose last session ended in a close gives its port
    /// back at once: its closing timer was the quarantine (RFC 6888 REQ-8
    /// exempts TCP closed under state tracking), unless the remote closed
    /// first less than [`REMOTE_TIME_WAIT`] ago and may still hold the
    /// 5-tuple; other ports rest. `reuse`: the caller takes the port at
    /// once for a flow that cannot meet that TIME_WAIT.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn account_removed(
        envs: &mut EnvQuotas,
        bindings: &Bindings,
        addrs: &mut HashMap<Ipv4Addr, Addr, foldhash::fast::RandomState>,
        counters: &Counters,
        cfg: &EngineConfig,
        now: Instant,
        s: &Session,
        removed: crate::session::Removed,
        reuse: bool,
    ) {
        let pi = proto_index(s.proto);
        counters.sessions_expired[pi].inc();
        let hold = if s.recyclable() { Hold::of(s) } else { Hold::Live };
        if let Some(e) = envs.get_mut(bindings, s.inside.ip) {
            e.count(hold, false);
            if removed.port_left_live {
                step(&mut e.ports[pi], false);
            }
        }
        let Some(a) = addrs.get_mut(&s.eni.ip) else { return };
        if removed.port_left_live {
            step(&mut a.live[pi], false);
        }
        if a.is_cool(s) {
            step(&mut a.warm[pi], false);
        }
        match cfg.mapping {
            Mapping::EndpointIndependent => {
                if let Some(m) = removed.mapping {
                    let ended = s.proto == TCP && (s.tcp.closing() || s.recyclable());
                    if reuse || (ended && !cooling(s, now)) {
                        a.pools[pi].release_now(m.eni.port);
                    } else {
                        a.pools[pi].release(now, m.eni.port);
                    }
                }
            }
            Mapping::AddressAndPortDependent => a.apdm[pi] = a.apdm[pi].saturating_sub(1),
        }
        Engine::publish(counters, a, pi, cfg);
    }

    /// Removes recyclable session `sid` early to give its slot (and maybe
    /// its port, at once when `reuse`) to a new flow.
    pub(super) fn recycle(&mut self, now: Instant, sid: u32, reuse: bool) {
        self.counters.sessions_recycled.inc();
        self.remove_early(now, sid, reuse);
    }

    /// Removes session `sid` before its timer, accounting for it as an
    /// expiry.
    fn remove_early(&mut self, now: Instant, sid: u32, reuse: bool) {
        let s = *self.table.get(sid);
        let removed = self.table.remove(sid);
        let Engine { addrs, envs, bindings, counters, cfg, .. } = self;
        Engine::account_removed(envs, bindings, addrs, counters, cfg, now, &s, removed, reuse);
    }

    /// Frees one session slot: recycles the session that has been
    /// recyclable longest on any address, sparing the sessions of mapping
    /// `keep` (the one the new flow is joining). Whether it freed one.
    pub(super) fn recycle_session(&mut self, now: Instant, keep: u32) -> bool {
        let mut best: Option<(Instant, u32)> = None;
        for l in self.addrs.values().flat_map(|a| [a.list, a.cool]) {
            let mut id = self.table.list_head(l);
            // Skip (at most a few) sessions of the kept mapping.
            for _ in 0..RECYCLE_SCAN {
                match id {
                    Some(i) if keep != NIL && self.table.mapping_of(i) == keep => id = self.table.list_next(i),
                    _ => break,
                }
            }
            if let Some(i) = id {
                let seen = self.table.get(i).last_seen;
                if best.is_none_or(|(t, _)| seen < t) {
                    best = Some((seen, i));
                }
            }
        }
        match best {
            Some((_, sid)) => {
                self.recycle(now, sid, false);
                true
            }
            None => self.evict_unanswered(now, keep),
        }
    }

    /// With every slot of the table taken, removes one outbound session
    /// nobody answered for [`UNANSWERED_GRACE`] (not of mapping `keep`),
    /// looking at up to [`EVICT_SCAN`] slots from where the last call
    /// stopped (a clock hand over the slab, so a flood's sessions are taken
    /// roughly in the order they were made). Whether it removed one.
    fn evict_unanswered(&mut self, now: Instant, keep: u32) -> bool {
        let cap = self.table.capacity() as u32;
        if cap == 0 || self.table.len() < cap as usize {
            return false;
        }
        for _ in 0..EVICT_SCAN.min(cap) {
            let id = self.evict_at % cap;
            self.evict_at = (id + 1) % cap;
            let s = self.table.get(id);
            let unanswered = !s.inbound_origin && s.no_in() && !s.no_out();
            if unanswered && self.table.mapping_of(id) != keep && now >= self.table.created(id) + UNANSWERED_GRACE {
                self.counters.sessions_evicted.inc();
                self.remove_early(now, id, false);
                return true;
            }
        }
        false
    }

    /// Frees a TCP port on `addr` for a new flow towards `remote` by
    /// recycling, oldest first, a mapping held only by ended connections
    /// (under address-and-port-dependent mapping: an ended connection to the
    /// same remote), passing over one whose port may still sit in that
    /// remote's TIME_WAIT. Whether a port was freed.
    pub(super) fn recycle_port(&mut self, now: Instant, addr: Ipv4Addr, pi: usize, remote: Endpoint) -> bool {
        if pi != proto_index(TCP) {
            // Only TCP knows when a flow has ended; other ports wait out
            // their timers and quarantine.
            return false;
        }
        self.cool_down(now, addr);
        let Some(lists) = self.addrs.get(&addr).map(|a| [a.list, a.cool]) else {
            return false;
        };
        let mut victim = None;
        // Ready ports first; then a cooling one if its remote is another.
        'lists: for list in lists {
            let mut id = self.table.list_head(list);
            for _ in 0..RECYCLE_SCAN {
                let Some(i) = id else { break };
                let s = self.table.get(i);
                let fits = s.proto == TCP
                    && s.eni.ip == addr
                    && !(s.remote == remote && cooling(s, now))
                    && match self.cfg.mapping {
                        Mapping::EndpointIndependent => self.table.mapping(self.table.mapping_of(i)).live == 0,
                        Mapping::AddressAndPortDependent => s.remote == remote,
                    };
                if fits {
                    victim = Some(i);
                    break 'lists;
                }
                id = self.table.list_next(i);
            }
        }
        let Some(sid) = victim else {
            return false;
        };
        let m = self.table.mapping_of(sid);
        if m == NIL {
            self.recycle(now, sid, true);
            return true;
        }
        // Every session of the mapping is recyclable (it has no live one):
        // take them all, and the port comes back with the last.
        let mut batch = [0u32; 16];
        loop {
            let n = self.table.mapping_sessions(m, &mut batch);
            let last = n == self.table.mapping(m).sessions as usize;
            for &i in &batch[..n] {
                self.recycle(now, i, true);
            }
            if last || n == 0 {
                return true;
            }
        }
    }

    /// A port for a new mapping of `key` on one of the addresses of ENI
    /// `eni` (its index in the bindings' ENIs): on the paired address if
    /// there is one (a free port, or one recycled from an ended
    /// connection), else a free port on the first address below the
    /// high-water mark, else a free port anywhere, else a recycled one
    /// anywhere. The port comes back [`Taken`]: already counted as held
    /// live on its address and published, in the lookup that took it. The
    /// address to report as exhausted otherwise, with nothing counted.
    ///
    /// The common case, a free port on the paired address, is inline and
    /// costs one lookup of the address; the rest is out of line.
    #[inline]
    pub(super) fn find_port(
        &mut self,
        now: Instant,
        eni: usize,
        paired: Option<Ipv4Addr>,
        pi: usize,
        key: FlowKey,
    ) -> Result<Taken, Ipv4Addr> {
        let paired = paired.filter(|p| self.bindings.enis()[eni].addrs.contains(p));
        self.cool_all(now);
        if let Some(t) = paired.and_then(|p| self.free_port(now, p, pi, key)) {
            return Ok(t);
        }
        self.find_port_further(now, eni, paired, pi, key)
    }

    /// [`Engine::find_port`] once the paired address (if any) had no free
    /// port.
    #[cold]
    #[inline(never)]
    fn find_port_further(
        &mut self,
        now: Instant,
        eni: usize,
        paired: Option<Ipv4Addr>,
        pi: usize,
        key: FlowKey,
    ) -> Result<Taken, Ipv4Addr> {
        if let Some(t) = paired.and_then(|p| self.take_recycled_port(now, p, pi, key)) {
            return Ok(t);
        }
        // The ENI's addresses are read through `self.bindings` by position
        // (the bindings do not change while a frame is processed).
        let addr_at = |e: &Engine, i: usize| e.bindings.enis()[eni].addrs.get(i).copied();
        let n = self.bindings.enis()[eni].addrs.len();
        let m = self.cfg.mapping;
        for below in [true, false] {
            for i in 0..n {
                let Some(a) = addr_at(self, i) else { break };
                let free = self
                    .addrs
                    .get(&a)
                    .is_some_and(|s| s.has_room(pi, m) && (!below || s.live[pi] + s.warm[pi] < s.mark(pi, &self.cfg)));
                if free {
                    if let Some(t) = self.take_port(now, a, pi, key) {
                        return Ok(t);
                    }
                }
            }
        }
        for i in 0..n {
            let Some(a) = addr_at(self, i) else { break };
            if Some(a) == paired {
                continue;
            }
            if let Some(t) = self.take_port(now, a, pi, key) {
                return Ok(t);
            }
        }
        Err(paired.or(addr_at(self, 0)).unwrap_or(Ipv4Addr::UNSPECIFIED))
    }

    /// Moves the sessions of `addr`'s cooling list whose remote's
    /// TIME_WAIT has passed to its ready list (oldest first, at most
    /// [`RECYCLE_SCAN`] a call: each moves once, so new flows keep up), and
    /// takes them off the high-water count.
    pub(super) fn cool_down(&mut self, now: Instant, addr: Ipv4Addr) {
        if let Some(a) = self.addrs.get_mut(&addr) {
            cool(&mut self.table, a, now);
        }
    }

    /// [`Engine::cool_down`] for every address, at most once per
    /// millisecond of the engine's clock: a cooling period ends on a
    /// millisecond, so a second pass within the same one finds nothing new
    /// (only what a pass left at [`RECYCLE_SCAN`] waits for the next
    /// millisecond). New flows call it, so a burst of them pays for one
    /// pass, not one per flow and address.
    #[inline]
    pub(super) fn cool_all(&mut self, now: Instant) {
        if self.cooled_at != now {
            self.cool_all_now(now);
        }
    }

    /// [`Engine::cool_all`]'s pass, out of line (once a millisecond).
    #[cold]
    #[inline(never)]
    fn cool_all_now(&mut self, now: Instant) {
        self.cooled_at = now;
        let Engine { addrs, table, .. } = self;
        for a in addrs.values_mut() {
            cool(table, a, now);
        }
    }

    /// A port on `addr` for a new mapping of `key`: a free one, or one a
    /// recycled ended connection gave back; [`Taken`].
    #[inline]
    fn take_port(&mut self, now: Instant, addr: Ipv4Addr, pi: usize, key: FlowKey) -> Option<Taken> {
        // The common case, a free port, inline; recycling out of line.
        match self.free_port(now, addr, pi, key) {
            Some(t) => Some(t),
            None => self.take_recycled_port(now, addr, pi, key),
        }
    }

    /// [`Engine::take_port`] once a free port was not found: recycles an
    /// ended connection's port and tries again, twice at most.
    #[cold]
    #[inline(never)]
    fn take_recycled_port(&mut self, now: Instant, addr: Ipv4Addr, pi: usize, key: FlowKey) -> Option<Taken> {
        if !self.recycle_port(now, addr, pi, key.remote) {
            return None;
        }
        if let Some(t) = self.free_port(now, addr, pi, key) {
            return Some(t);
        }
        // A second recycling whose port the next flow finds free.
        let _ = self.recycle_port(now, addr, pi, key.remote);
        None
    }

    /// A free port on `addr` (under address-and-port-dependent mapping, one
    /// whose outside key towards this remote is unused), no recycling;
    /// [`Taken`].
    #[inline(always)]
    fn free_port(&mut self, now: Instant, addr: Ipv4Addr, pi: usize, key: FlowKey) -> Option<Taken> {
        match self.cfg.mapping {
            Mapping::EndpointIndependent => {
                let Engine { addrs, counters, cfg, .. } = self;
                let a = addrs.get_mut(&addr)?;
                let p = if cfg.port_preservation {
                    a.pools[pi].allocate_preferred(now, key.local.port)
                } else {
                    a.pools[pi].allocate(now)
                }?;
                Some(Engine::count_taken(counters, cfg, a, pi, Endpoint::new(addr, p)))
            }
            Mapping::AddressAndPortDependent => self.probe_port(addr, key),
        }
    }

    /// Address-and-port-dependent mapping: a random port whose outside key
    /// towards this remote is unused (random probes, then a scan; at most
    /// [`PROBE_LIMIT`] lookups); [`Taken`].
    fn probe_port(&mut self, addr: Ipv4Addr, key: FlowKey) -> Option<Taken> {
        let range = self.cfg.port_range.clone();
        let Engine { addrs, table, port_probes, counters, cfg, .. } = self;
        let a = addrs.get_mut(&addr)?;
        let pi = proto_index(key.proto);
        let mut free = |t: &SessionTable, p: u16| {
            *port_probes += 1;
            t.find_outside(&FlowKey { proto: key.proto, local: Endpoint::new(addr, p), remote: key.remote }).is_none()
        };
        let mut found = None;
        for _ in 0..32 {
            let p = a.pools[pi].random_port();
            if free(table, p) {
                found = Some(p);
                break;
            }
        }
        if found.is_none() {
            let start = a.pools[pi].random_port();
            let (lo, hi) = (u32::from(*range.start()), u32::from(*range.end()));
            let n = hi - lo + 1;
            found =
                (0..n.min(PROBE_SCAN)).map(|i| (lo + (u32::from(start) - lo + i) % n) as u16).find(|&p| free(table, p));
        }
        found.map(|p| Engine::count_taken(counters, cfg, a, pi, Endpoint::new(addr, p)))
    }

    /// Counts port `ep` just taken on its address `a` as held live (under
    /// address-and-port-dependent mapping, its session as held too) and
    /// publishes it: the one place a new mapping's port is counted.
    #[inline(always)]
    fn count_taken(counters: &Counters, cfg: &EngineConfig, a: &mut Addr, pi: usize, ep: Endpoint) -> Taken {
        a.live[pi] += 1;
        if cfg.mapping == Mapping::AddressAndPortDependent {
            a.apdm[pi] += 1;
        }
        let high = Engine::publish_and_check(counters, a, pi, cfg).is_some();
        Taken { ep, high }
    }

    /// Gives back a port [`Engine::find_port`] took for a flow that could
    /// not be created: no longer counted, and (never used) free again
    /// without quarantine.
    pub(super) fn release_unused_port(&mut self, ep: Endpoint, pi: usize) {
        let Some(a) = self.addrs.get_mut(&ep.ip) else { return };
        step(&mut a.live[pi], false);
        match self.cfg.mapping {
            Mapping::EndpointIndependent => {
                a.pools[pi].release_now(ep.port);
            }
            Mapping::AddressAndPortDependent => step(&mut a.apdm[pi], false),
        }
        Engine::publish(&self.counters, a, pi, &self.cfg);
    }

    pub(super) fn check_high_water(&mut self, addr: Ipv4Addr, proto: u8) {
        let pi = proto_index(proto);
        let Some(a) = self.addrs.get_mut(&addr) else { return };
        if let Some(in_use) = Engine::publish_and_check(&self.counters, a, pi, &self.cfg) {
            self.raise_high_water(addr, proto, in_use);
        }
    }

    /// A mapping held only by recyclable sessions that a new flow made live
    /// again: its port on `addr` is held live once more (counted,
    /// published and checked against the high-water mark, one lookup).
    /// Ports a new mapping takes are counted by [`Engine::find_port`].
    pub(super) fn count_revived_port(&mut self, addr: Ipv4Addr, proto: u8) {
        let pi = proto_index(proto);
        let Some(a) = self.addrs.get_mut(&addr) else { return };
        a.live[pi] += 1;
        if let Some(in_use) = Engine::publish_and_check(&self.counters, a, pi, &self.cfg) {
            self.raise_high_water(addr, proto, in_use);
        }
    }

    /// [`Engine::publish`], then the ports in use if they reached the
    /// high-water mark and no event is armed for it.
    #[inline]
    fn publish_and_check(counters: &Counters, a: &mut Addr, pi: usize, cfg: &EngineConfig) -> Option<u32> {
        let in_use = a.live[pi] + a.warm[pi];
        let mark = a.mark(pi, cfg);
        Engine::publish_marked(counters, a, pi, cfg, in_use < mark);
        (in_use >= mark && !a.high[pi]).then_some(in_use)
    }

    /// Queues the high-water event of `addr`; armed until it is queued (a
    /// full queue does not lose it).
    #[cold]
    fn raise_high_water(&mut self, addr: Ipv4Addr, proto: u8, in_use: u32) {
        let queued = self.event(Event::HighWater { addr, proto, in_use });
        if let Some(a) = self.addrs.get_mut(&addr) {
            a.high[proto_index(proto)] = queued;
        }
    }
}

/// Moves `a`'s cooling sessions whose remote's TIME_WAIT has passed to its
/// ready list (see [`Engine::cool_down`]).
fn cool(table: &mut crate::session::SessionTable, a: &mut Addr, now: Instant) {
    if a.cool == a.list {
        return;
    }
    for _ in 0..RECYCLE_SCAN {
        let Some(i) = table.list_head(a.cool) else { break };
        if cooling(table.get(i), now) {
            break;
        }
        table.set_recyclable(i, Some(a.list));
        let pi = proto_index(table.get(i).proto);
        step(&mut a.warm[pi], false);
    }
}
