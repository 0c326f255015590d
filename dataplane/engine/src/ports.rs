//! External-port allocation for one (shared ENI address, protocol) pair.
//!
//! A [`PortPool`] hands out the external ports of a configurable range
//! (default [`DEFAULT_RANGE`], `1024..=65535`) following RFC 6056, RFC 6888
//! and RFC 7857 §9:
//!
//! - **Unpredictable.** [`PortPool::allocate`] picks uniformly at random among
//!   the ports free at that moment (RFC 6056 §3.3.1, "simple port
//!   randomization"; RFC 7857 §9: external ports must not be predictable),
//!   using a small seeded PRNG (wyrand) private to the pool. The seed comes
//!   from the caller; pools with different seeds give different sequences.
//! - **Quarantined.** A released port is not handed out again for
//!   `quarantine` (default [`DEFAULT_QUARANTINE`], 120 s; RFC 6888 REQ-8), so
//!   a late packet of an old session is never delivered to a new one.
//! - **Preserving, on request.** [`PortPool::allocate_preferred`] takes exactly
//!   the requested port when it is free and falls back to a random one.
//!
//! # Layout and invariants
//!
//! Every port of the range is in exactly one of three states: *allocated*,
//! *quarantined* or *available*, so
//! `in_use() + quarantined() + available() == capacity()` at all times.
//!
//! The ports live in one array `perm` of `capacity()` slots, treated as a
//! circle and cut into three consecutive arcs, in this order: the quarantine
//! FIFO (oldest release first), the allocated ports, the available ports.
//! `pos` is the inverse of `perm` (port -> slot), so a port's state is read
//! off its slot in O(1). Every transition moves a port across exactly one arc
//! boundary with at most one swap:
//!
//! - allocate: swap the chosen available slot with the first available slot,
//!   then grow the allocated arc by one;
//! - release: swap the port with the first allocated slot, then grow the
//!   quarantine arc by one (it becomes the newest quarantined port);
//! - mature: shrink the quarantine arc from its oldest end; the ports fall
//!   into the end of the available arc without moving.
//!
//! Allocate, release and maturing are therefore O(1) (maturing is O(1) per
//! batch of ports released in the same time bucket, amortised O(1) per call).
//!
//! Release times are kept per *run*: consecutive releases whose times fall
//! into the same bucket of `ceil(quarantine / 256)` milliseconds share one
//! run, stamped with the latest release time in it. Runs sit in a fixed ring
//! of 258 entries, which is provably enough because matured runs are drained
//! before each release (should it ever be full, a release merges into the
//! newest run, which can only lengthen quarantine). A clock passed in that
//! goes backwards is tolerated the same way: the release joins the newest
//! run. Consequently a
//! port released at `t` is handed out again **no earlier than
//! `t + quarantine`** and, once `allocate`, `release` or `expire` is called,
//! no later than `t + quarantine + ceil(quarantine / 256)` (under 0.5 s for the
//! default 120 s). Matured ports are folded back lazily by `allocate`,
//! `allocate_preferred`, `reserve` and `release`, or explicitly by
//! [`PortPool::expire`]; until then they still count as quarantined.
//!
//! # Units
//!
//! Time is [`Instant`], milliseconds; the quarantine is a [`Duration`] rounded
//! **up** to whole milliseconds. Counts are `u32` (a range holds at most
//! 65,536 ports).
//!
//! # Memory
//!
//! Everything is allocated in [`PortPool::new`]; nothing is allocated or
//! freed afterwards. A pool takes **4 bytes per port of the range** (two
//! `u16` arrays) plus a fixed 4 KiB run ring and ~100 bytes of header: about
//! 256 KiB for the default range of 64,512 ports.
//!
//! # Errors
//!
//! Nothing panics. Ports outside the range, releases of ports that are not
//! allocated (double frees, never-allocated or quarantined ports) and
//! exhaustion are refused with `false` / `None` and leave the pool unchanged.

use core::fmt;
use core::ops::RangeInclusive;
use std::time::Duration;

use crate::time::Instant;

/// The default external-port range: everything above the well-known ports.
pub const DEFAULT_RANGE: RangeInclusive<u16> = 1024..=65535;

/// The default quarantine of a released port (RFC 6888 REQ-8 suggests
/// 120 s, the TCP 2MSL).
pub const DEFAULT_QUARANTINE: Duration = Duration::from_secs(120);

/// Into how many time buckets one quarantine period is cut.
const BUCKETS: u64 = 256;
/// Capacity of the run ring: at most `BUCKETS + 1` unmatured buckets exist
/// after draining, plus one spare.
const RUNS: usize = BUCKETS as usize + 2;

/// Releases that fell into one time bucket: the newest `count` ports of the
/// quarantine arc at the time, all released no later than `at`.
#[derive(Copy, Clone, Debug, Default)]
struct Run {
    /// Latest release time in the run, milliseconds.
    at: u64,
    count: u32,
}

/// wyrand: a 64-bit PRNG, one multiply per output, passes BigCrush/PractRand.
/// Not cryptographic; the seed is what makes ports unguessable to outsiders.
#[derive(Copy, Clone, Debug)]
struct WyRand(u64);

impl WyRand {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0xa076_1d64_78bd_642f);
        let t = u128::from(self.0) * u128::from(self.0 ^ 0xe703_7ed1_a0b4_28db);
        ((t >> 64) as u64) ^ (t as u64)
    }

    /// Uniform in `0..n` (Lemire's multiply-shift with rejection, unbiased);
    /// `0` when `n == 0`.
    fn below(&mut self, n: u32) -> u32 {
        if n == 0 {
            return 0;
        }
        let n = u64::from(n);
        let mut m = u128::from(self.next_u64()) * u128::from(n);
        if (m as u64) < n {
            let threshold = n.wrapping_neg() % n;
            while (m as u64) < threshold {
                m = u128::from(self.next_u64()) * u128::from(n);
            }
        }
        (m >> 64) as u32
    }
}

/// Where a port of the range is.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum State {
    Quarantined,
    Allocated,
    Available,
}

/// The external ports of one (ENI address, protocol) pair; see the module
/// documentation.
#[derive(Clone)]
pub struct PortPool {
    start: u16,
    end: u16,
    /// Ports in the range; 0 for an empty range.
    n: u32,
    /// Slot -> port offset from `start`.
    perm: Box<[u16]>,
    /// Port offset -> slot; the inverse of `perm`.
    pos: Box<[u16]>,
    /// Slot of the oldest quarantined port (start of the quarantine arc).
    q_head: u32,
    /// Ports in the quarantine arc (matured but not yet drained included).
    q_len: u32,
    /// Ports in the allocated arc, which follows the quarantine arc.
    a_len: u32,
    quarantine: Duration,
    /// `quarantine` in milliseconds, rounded up.
    q_ms: u64,
    /// Width of a run's time bucket, milliseconds, at least 1.
    bucket_ms: u64,
    /// Ring of runs, oldest at `run_head`; their counts sum to `q_len`, their
    /// `at` strictly increase.
    runs: Box<[Run]>,
    run_head: usize,
    run_len: usize,
    rng: WyRand,
}

impl PortPool {
    /// A pool over `range` where every port is available. `quarantine` is how
    /// long a released port rests (may be zero); `seed` seeds the port
    /// randomization and should differ between pools and between runs of
    /// the gateway. An empty range (`start > end`) gives a pool of capacity
    /// zero that refuses everything.
    pub fn new(range: RangeInclusive<u16>, quarantine: Duration, seed: u64) -> PortPool {
        let (start, end) = (*range.start(), *range.end());
        let n = if start <= end { u32::from(end) - u32::from(start) + 1 } else { 0 };
        // Offsets and slots are < n <= 65_536, so they fit in u16.
        let perm: Box<[u16]> = (0..n).map(|i| i as u16).collect();
        let pos = perm.clone();
        let q_ms = u64::try_from(quarantine.as_nanos().div_ceil(1_000_000)).unwrap_or(u64::MAX);
        PortPool {
            start,
            end,
            n,
            perm,
            pos,
            q_head: 0,
            q_len: 0,
            a_len: 0,
            quarantine,
            q_ms,
            bucket_ms: q_ms.div_ceil(BUCKETS).max(1),
            runs: vec![Run::default(); RUNS].into_boxed_slice(),
            run_head: 0,
            run_len: 0,
            rng: WyRand(seed),
        }
    }

    /// A uniformly random available port, or `None` when every port is
    /// allocated or quarantined. Folds matured ports back first.
    pub fn allocate(&mut self, now: Instant) -> Option<u16> {
        self.expire(now);
        let free = self.available();
        if free == 0 {
            return None;
        }
        let r = self.rng.below(free);
        let first = self.avail_start();
        Some(self.take_at(self.wrap(first + r), first))
    }

    /// Exactly `port` if it is available (port preservation), else a random
    /// available port as [`allocate`](Self::allocate) would give.
    pub fn allocate_preferred(&mut self, now: Instant, port: u16) -> Option<u16> {
        if self.reserve(now, port) {
            Some(port)
        } else {
            self.allocate(now)
        }
    }

    /// Allocates exactly `port`; `false` (and no change) if it is outside the
    /// range, allocated or still quarantined at `now`.
    pub fn reserve(&mut self, now: Instant, port: u16) -> bool {
        self.expire(now);
        match self.offset(port) {
            Some(off) if self.state(off) == State::Available => {
                self.take_slot(u32::from(self.pos[off as usize]));
                true
            }
            _ => false,
        }
    }

    /// Returns an allocated port to the pool; it becomes available again
    /// `quarantine` after `now`. `false`, and no change, if `port` is not
    /// currently allocated (outside the range, never allocated, or already
    /// released).
    pub fn release(&mut self, now: Instant, port: u16) -> bool {
        let Some(off) = self.offset(port) else {
            return false;
        };
        if self.state(off) != State::Allocated {
            return false;
        }
        // Drain first: this is what bounds the number of live runs.
        self.expire(now);
        let first_allocated = self.wrap(self.q_head + self.q_len);
        self.swap(u32::from(self.pos[off as usize]), first_allocated);
        self.q_len += 1;
        self.a_len -= 1;
        self.record(now.millis());
        // A zero quarantine makes the port available at once.
        self.expire(now);
        true
    }

    /// Returns an allocated port straight to the available ports, skipping
    /// the quarantine: for a TCP mapping whose connections all ended with a
    /// FIN exchange or an RST that the NAT tracked, whose closing timer
    /// already kept the port from reuse (RFC 6888 REQ-8 exempts ports of
    /// TCP connections closed under state tracking). `false`, and no
    /// change, if `port` is not allocated.
    pub fn release_now(&mut self, port: u16) -> bool {
        let Some(off) = self.offset(port) else {
            return false;
        };
        if self.state(off) != State::Allocated {
            return false;
        }
        // The last allocated slot becomes the first available one.
        let last = self.wrap(self.q_head + self.q_len + self.a_len - 1);
        self.swap(u32::from(self.pos[off as usize]), last);
        self.a_len -= 1;
        true
    }

    /// Makes every port whose quarantine has ended by `now` available.
    /// O(1) per batch of matured ports.
    pub fn expire(&mut self, now: Instant) {
        let now = now.millis();
        while self.run_len > 0 {
            let run = self.runs[self.run_head];
            if now.saturating_sub(run.at) < self.q_ms {
                break;
            }
            // run.count <= q_len <= n, so the sum stays below 2n.
            self.q_head = self.wrap(self.q_head + run.count);
            self.q_len -= run.count;
            self.run_head = (self.run_head + 1) % RUNS;
            self.run_len -= 1;
        }
    }

    /// When the oldest quarantined port becomes available, if any is
    /// quarantined: a deadline for a driver's timer.
    pub fn next_expiry(&self) -> Option<Instant> {
        (self.run_len > 0).then(|| Instant::from_millis(self.runs[self.run_head].at.saturating_add(self.q_ms)))
    }

    /// Whether `port` is currently allocated.
    pub fn is_allocated(&self, port: u16) -> bool {
        self.offset(port).is_some_and(|off| self.state(off) == State::Allocated)
    }

    /// Whether `port` is in quarantine (including matured ports that no call
    /// has folded back yet).
    pub fn is_quarantined(&self, port: u16) -> bool {
        self.offset(port).is_some_and(|off| self.state(off) == State::Quarantined)
    }

    /// Whether `port` is available now.
    pub fn is_available(&self, port: u16) -> bool {
        self.offset(port).is_some_and(|off| self.state(off) == State::Available)
    }

    /// Ports allocated.
    pub fn in_use(&self) -> u32 {
        self.a_len
    }

    /// Ports in quarantine (including matured ports not yet folded back).
    pub fn quarantined(&self) -> u32 {
        self.q_len
    }

    /// Ports that can be allocated right now.
    pub fn available(&self) -> u32 {
        self.n - self.q_len - self.a_len
    }

    /// Ports in the range.
    pub fn capacity(&self) -> u32 {
        self.n
    }

    /// The range this pool was built over (possibly empty).
    pub fn range(&self) -> RangeInclusive<u16> {
        self.start..=self.end
    }

    /// The quarantine a released port rests for.
    pub fn quarantine(&self) -> Duration {
        self.quarantine
    }

    /// A uniformly random port of the range (allocated or not), from the same
    /// PRNG: used by the address-and-port-dependent mapping mode, which probes
    /// candidates itself. For an empty range, the range's start.
    pub fn random_port(&mut self) -> u16 {
        // start + below(n) <= end <= u16::MAX.
        (u32::from(self.start) + self.rng.below(self.n)) as u16
    }

    fn offset(&self, port: u16) -> Option<u32> {
        (self.n > 0 && (self.start..=self.end).contains(&port)).then(|| u32::from(port - self.start))
    }

    /// `x mod n` for `x < 2n`.
    fn wrap(&self, x: u32) -> u32 {
        if x >= self.n {
            x - self.n
        } else {
            x
        }
    }

    fn avail_start(&self) -> u32 {
        // q_head < n and q_len + a_len <= n.
        self.wrap(self.q_head + self.q_len + self.a_len)
    }

    fn state(&self, off: u32) -> State {
        let slot = u32::from(self.pos[off as usize]);
        let d = if slot >= self.q_head { slot - self.q_head } else { slot + self.n - self.q_head };
        if d < self.q_len {
            State::Quarantined
        } else if d < self.q_len + self.a_len {
            State::Allocated
        } else {
            State::Available
        }
    }

    fn swap(&mut self, a: u32, b: u32) {
        let (a, b) = (a as usize, b as usize);
        self.perm.swap(a, b);
        self.pos[self.perm[a] as usize] = a as u16;
        self.pos[self.perm[b] as usize] = b as u16;
    }

    /// Moves the available port at `slot` into the allocated arc; its port.
    fn take_slot(&mut self, slot: u32) -> u16 {
        let first = self.avail_start();
        self.take_at(slot, first)
    }

    /// [`PortPool::take_slot`] with the first available slot, `first`,
    /// known: the port at `slot` trades places with the one at `first`,
    /// which becomes the allocated arc's last.
    #[inline]
    fn take_at(&mut self, slot: u32, first: u32) -> u16 {
        let (s, f) = (slot as usize, first as usize);
        let (port, other) = (self.perm[s], self.perm[f]);
        self.perm[s] = other;
        self.perm[f] = port;
        self.pos[usize::from(other)] = slot as u16;
        self.pos[usize::from(port)] = first as u16;
        self.a_len += 1;
        (u32::from(self.start) + u32::from(port)) as u16
    }

    /// Notes one release at `at` ms, the newest port of the quarantine arc.
    fn record(&mut self, at: u64) {
        if self.run_len > 0 {
            let last = (self.run_head + self.run_len - 1) % RUNS;
            let run = &mut self.runs[last];
            if at / self.bucket_ms <= run.at / self.bucket_ms || self.run_len == RUNS {
                // Same bucket (or a clock that went backwards, or a full
                // ring): stamp the run with the later time, which can only
                // lengthen the quarantine of the ports already in it.
                run.at = run.at.max(at);
                run.count += 1;
                return;
            }
        }
        let next = (self.run_head + self.run_len) % RUNS;
        self.runs[next] = Run { at, count: 1 };
        self.run_len += 1;
    }

    /// Checks every internal invariant (tests only).
    #[cfg(test)]
    fn check(&self) {
        assert_eq!(self.perm.len(), self.n as usize);
        assert_eq!(self.pos.len(), self.n as usize);
        for (slot, &off) in self.perm.iter().enumerate() {
            assert_eq!(self.pos[off as usize] as usize, slot);
        }
        assert!(self.q_len + self.a_len <= self.n);
        assert!(self.n == 0 || self.q_head < self.n);
        assert!(self.run_len <= RUNS);
        let mut sum = 0;
        let mut prev = None;
        for i in 0..self.run_len {
            let run = self.runs[(self.run_head + i) % RUNS];
            assert!(run.count > 0);
            assert!(prev.is_none_or(|p| p < run.at), "run times strictly increase");
            prev = Some(run.at);
            sum += run.count;
        }
        assert_eq!(sum, self.q_len);
        assert_eq!(self.in_use() + self.quarantined() + self.available(), self.capacity());
    }
}

impl fmt::Debug for PortPool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PortPool")
            .field("range", &self.range())
            .field("capacity", &self.n)
            .field("in_use", &self.a_len)
            .field("quarantined", &self.q_len)
            .field("available", &self.available())
            .field("quarantine", &self.quarantine)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::{BTreeSet, HashMap};

    const Q: Duration = DEFAULT_QUARANTINE;

    fn ms(t: u64) -> Instant {
        Instant::from_millis(t)
    }

    #[test]
    fn exhaust_gives_every_port_once() {
        let mut p = PortPool::new(100..=163, Q, 7);
        assert_eq!(p.capacity(), 64);
        let mut seen = BTreeSet::new();
        for i in 0..64 {
            let port = p.allocate(Instant::ZERO).expect("a free port");
            assert!((100..=163).contains(&port));
            assert!(seen.insert(port), "port {port} handed out twice");
            assert!(p.is_allocated(port));
            assert_eq!(p.in_use(), i + 1);
            p.check();
        }
        assert_eq!(seen.len(), 64);
        assert_eq!(p.allocate(Instant::ZERO), None);
        assert_eq!(p.allocate_preferred(Instant::ZERO, 100), None);
        assert_eq!((p.in_use(), p.quarantined(), p.available()), (64, 0, 0));
    }

    #[test]
    fn full_and_single_and_empty_ranges() {
        let mut full = PortPool::new(0..=65535, Q, 1);
        assert_eq!(full.capacity(), 65536);
        let mut seen = vec![false; 65536];
        while let Some(port) = full.allocate(Instant::ZERO) {
            assert!(!std::mem::replace(&mut seen[port as usize], true));
        }
        assert!(seen.iter().all(|&s| s));
        full.check();
        assert!(full.release(Instant::ZERO, 65535));
        assert!(full.release(Instant::ZERO, 0));
        let back: BTreeSet<u16> = (0..2).filter_map(|_| full.allocate(Instant::ZERO + Q)).collect();
        assert_eq!(back, BTreeSet::from([0, 65535]));
        assert_eq!(full.allocate(Instant::ZERO + Q), None);
        full.check();

        let mut one = PortPool::new(4242..=4242, Duration::ZERO, 1);
        assert_eq!(one.random_port(), 4242);
        assert_eq!(one.allocate(Instant::ZERO), Some(4242));
        assert_eq!(one.allocate(Instant::ZERO), None);

        #[allow(clippy::reversed_empty_ranges)]
        let mut empty = PortPool::new(10..=9, Q, 1);
        assert_eq!((empty.capacity(), empty.available()), (0, 0));
        assert_eq!(empty.allocate(Instant::ZERO), None);
        assert_eq!(empty.allocate_preferred(Instant::ZERO, 10), None);
        assert!(!empty.release(Instant::ZERO, 10));
        assert!(!empty.reserve(Instant::ZERO, 9));
        assert!(!empty.is_allocated(10));
        assert_eq!(empty.random_port(), 10);
        empty.expire(Instant::FAR_FUTURE);
        assert_eq!(empty.next_expiry(), None);
        empty.check();
    }

    #[test]
    fn quarantine_holds_for_120s() {
        let mut p = PortPool::new(2000..=2009, Q, 3);
        let ports: Vec<u16> = (0..10).map(|_| p.allocate(Instant::ZERO).unwrap()).collect();
        let freed = ports[4];
        assert!(p.release(ms(5_000), freed));
        assert!(p.is_quarantined(freed) && !p.is_allocated(freed));
        assert_eq!((p.in_use(), p.quarantined(), p.available()), (9, 1, 0));
        assert_eq!(p.next_expiry(), Some(ms(125_000)));
        assert_eq!(p.allocate(ms(124_999)), None);
        assert_eq!(p.allocate_preferred(ms(124_999), freed), None);
        p.expire(ms(124_999));
        assert_eq!(p.quarantined(), 1);
        p.expire(ms(125_000));
        assert_eq!((p.quarantined(), p.available()), (0, 1));
        assert!(p.is_available(freed));
        assert_eq!(p.allocate(ms(125_000)), Some(freed));
        p.check();
    }

    #[test]
    fn quarantine_holds_under_churn() {
        let mut p = PortPool::new(30000..=30999, Q, 11);
        let mut rng = WyRand(99);
        let mut allocated: Vec<u16> = Vec::new();
        let mut released_at: HashMap<u16, Instant> = HashMap::new();
        let mut refused = 0;
        let mut reused = 0;
        let mut now = Instant::ZERO;
        for step in 0..4_000u64 {
            now = ms(step * 150);
            // Keep ~300 allocated, churning several ports a second.
            while allocated.len() > 300 {
                let i = rng.below(allocated.len() as u32) as usize;
                let port = allocated.swap_remove(i);
                assert!(p.release(now, port));
                released_at.insert(port, now);
            }
            for _ in 0..2 {
                match p.allocate(now) {
                    Some(port) => {
                        if let Some(&t) = released_at.get(&port) {
                            assert!(now - t >= Q, "port {port} reused {:?} after release", now - t);
                            reused += 1;
                        }
                        allocated.push(port);
                    }
                    None => refused += 1,
                }
            }
            p.check();
        }
        assert!(reused > 1_000, "quarantined ports do come back ({reused})");
        assert!(refused > 0, "the churn exhausts the pool at times");
        // Everything released by `now` is available at `now + quarantine`.
        p.expire(now + Q);
        assert_eq!(p.quarantined(), 0);
        assert_eq!(p.in_use() as usize, allocated.len());
        assert_eq!(p.available() as usize, 1000 - allocated.len());
    }

    #[test]
    fn release_now_skips_the_quarantine() {
        let mut p = PortPool::new(7000..=7003, Q, 9);
        let ports: Vec<u16> = (0..4).map(|_| p.allocate(Instant::ZERO).unwrap()).collect();
        assert!(p.release(ms(1), ports[0]));
        assert!(p.release_now(ports[2]));
        assert!(!p.release_now(ports[2]), "already free");
        assert!(!p.release_now(ports[0]), "quarantined, not allocated");
        assert_eq!((p.in_use(), p.quarantined(), p.available()), (2, 1, 1));
        p.check();
        assert_eq!(p.allocate(ms(2)), Some(ports[2]));
        assert_eq!(p.allocate(ms(2)), None);
        p.check();
    }

    #[test]
    fn zero_quarantine_reuses_at_once() {
        let mut p = PortPool::new(5000..=5001, Duration::ZERO, 5);
        let a = p.allocate(Instant::ZERO).unwrap();
        let b = p.allocate(Instant::ZERO).unwrap();
        assert!(p.release(ms(10), a));
        assert_eq!((p.quarantined(), p.available()), (0, 1));
        assert!(p.is_available(a));
        assert_eq!(p.allocate(ms(10)), Some(a));
        assert!(p.release(ms(10), b));
        assert_eq!(p.allocate_preferred(ms(10), b), Some(b));
        p.check();
    }

    #[test]
    fn preferred_port() {
        let mut p = PortPool::new(DEFAULT_RANGE, Q, 8);
        assert_eq!(p.allocate_preferred(Instant::ZERO, 40000), Some(40000));
        assert!(p.is_allocated(40000));
        // Taken: falls back to another, random, port.
        let other = p.allocate_preferred(Instant::ZERO, 40000).unwrap();
        assert_ne!(other, 40000);
        assert!(p.is_allocated(other));
        // Outside the range: random port of the range.
        let low = p.allocate_preferred(Instant::ZERO, 80).unwrap();
        assert!(low >= 1024 && low != 40000 && low != other);
        // Quarantined: not preserved until the quarantine ends.
        assert!(p.release(ms(1_000), 40000));
        let q = p.allocate_preferred(ms(2_000), 40000).unwrap();
        assert_ne!(q, 40000);
        assert_eq!(p.allocate_preferred(ms(121_000), 40000), Some(40000));
        assert!(p.reserve(ms(121_000), 50000));
        assert!(!p.reserve(ms(121_000), 50000));
        assert!(!p.reserve(ms(121_000), 1023));
        assert_eq!(p.in_use(), 5);
        p.check();
    }

    #[test]
    fn bad_releases_are_refused() {
        let mut p = PortPool::new(100..=119, Q, 2);
        let a = p.allocate(Instant::ZERO).unwrap();
        let never = (100..=119).find(|&x| x != a).unwrap();
        let before = (p.in_use(), p.quarantined(), p.available());
        assert!(!p.release(Instant::ZERO, never), "never allocated");
        assert!(!p.release(Instant::ZERO, 99), "below the range");
        assert!(!p.release(Instant::ZERO, 120), "above the range");
        assert!(!p.release(Instant::ZERO, u16::MAX));
        assert_eq!((p.in_use(), p.quarantined(), p.available()), before);
        assert!(p.release(Instant::ZERO, a));
        assert!(!p.release(Instant::ZERO, a), "double free");
        assert!(!p.release(ms(200_000), a), "double free after quarantine");
        assert_eq!((p.in_use(), p.quarantined() + p.available()), (0, 20));
        // The port is in the pool exactly once: 20 allocations, all distinct.
        let all: BTreeSet<u16> = (0..20).map(|_| p.allocate(ms(200_000)).unwrap()).collect();
        assert_eq!(all.len(), 20);
        assert_eq!(p.allocate(ms(200_000)), None);
        p.check();
    }

    #[test]
    fn clock_going_backwards_is_harmless() {
        let mut p = PortPool::new(100..=999, Duration::from_millis(1_000), 4);
        let ports: Vec<u16> = (0..600).map(|_| p.allocate(Instant::ZERO).unwrap()).collect();
        // Releases at wildly out-of-order times: more buckets than the ring.
        for (i, &port) in ports.iter().enumerate() {
            let t = if i % 2 == 0 { 10_000 + i as u64 * 7 } else { 500 + i as u64 };
            assert!(p.release(ms(t), port));
            p.check();
        }
        assert_eq!(p.in_use(), 0);
        p.expire(ms(1_000_000));
        assert_eq!(p.available(), 900);
        p.check();
    }

    /// 10,000 allocations from the default range (no releases).
    fn draws(seed: u64) -> Vec<u16> {
        let mut p = PortPool::new(DEFAULT_RANGE, Q, seed);
        (0..10_000).map(|_| p.allocate(Instant::ZERO).unwrap()).collect()
    }

    /// RFC 6056 §4 / RFC 7857 §9: allocations are spread evenly over the
    /// range (chi-square over 64 equal buckets).
    #[test]
    fn randomness_chi_square() {
        for seed in [0, 1, 0xdead_beef, u64::MAX] {
            let mut buckets = [0u32; 64];
            let width = (65535 - 1024 + 1) / 64; // 1008, exact
            for port in draws(seed) {
                buckets[usize::from(port - 1024) / width] += 1;
            }
            let expect = 10_000.0 / 64.0;
            let chi2: f64 = buckets.iter().map(|&o| (f64::from(o) - expect).powi(2) / expect).sum();
            // 63 degrees of freedom: mean 63, sd ~11; p(chi2 > 120) ~ 2e-5.
            assert!(chi2 < 120.0, "seed {seed}: chi2 {chi2}");
        }
    }

    /// Successive ports are not sequential and not predictable from the
    /// previous ones.
    #[test]
    fn randomness_sequence() {
        for seed in [3, 42, 1 << 40] {
            let d = draws(seed);
            let pairs = d.len() - 1;
            let plus_one = d.windows(2).filter(|w| w[1] == w[0].wrapping_add(1)).count();
            assert!(plus_one * 100 < pairs, "seed {seed}: {plus_one} sequential");

            // Next-port prediction: the most common difference is rare, and
            // "same step as last time" is almost never right.
            let diffs: Vec<i32> = d.windows(2).map(|w| i32::from(w[1]) - i32::from(w[0])).collect();
            let mut freq: HashMap<i32, usize> = HashMap::new();
            for &x in &diffs {
                *freq.entry(x).or_default() += 1;
            }
            let top = freq.values().copied().max().unwrap();
            assert!(top * 100 < pairs, "seed {seed}: one step repeats {top} times");
            let same_step = diffs.windows(2).filter(|w| w[0] == w[1]).count();
            assert!(same_step * 100 < pairs, "seed {seed}: {same_step} repeated steps");

            // Wald-Wolfowitz runs up and down: R ~ N((2n-1)/3, (16n-29)/90).
            let n = d.len() as f64;
            let runs = 1 + diffs.windows(2).filter(|w| (w[0] > 0) != (w[1] > 0)).count();
            let mean = (2.0 * n - 1.0) / 3.0;
            let sd = ((16.0 * n - 29.0) / 90.0).sqrt();
            let z = (runs as f64 - mean) / sd;
            assert!(z.abs() < 4.5, "seed {seed}: runs {runs}, z {z}");
        }
    }

    #[test]
    fn seeds_give_different_sequences() {
        let a = draws(1);
        assert_eq!(a, draws(1), "same seed, same sequence");
        let b = draws(2);
        let same = a.iter().zip(&b).filter(|(x, y)| x == y).count();
        assert!(same < 10, "{same} equal positions");
        assert_ne!(a[..8], b[..8]);
    }

    #[test]
    fn random_port_covers_the_range() {
        let mut p = PortPool::new(60000..=60015, Q, 9);
        let mut seen = [0u32; 16];
        for _ in 0..16_000 {
            let port = p.random_port();
            assert!((60000..=60015).contains(&port));
            seen[usize::from(port - 60000)] += 1;
        }
        assert!(seen.iter().all(|&c| (800..1200).contains(&c)), "{seen:?}");
        // random_port does not allocate.
        assert_eq!(p.in_use(), 0);
    }

    mod prop {
        use super::*;
        use proptest::prelude::*;

        const LO: u16 = 5000;
        const HI: u16 = 5031;

        #[derive(Clone, Debug)]
        enum Op {
            Allocate,
            Preferred(u16),
            Reserve(u16),
            /// Release the i-th allocated port (mod count).
            ReleaseAllocated(usize),
            /// Release any port, allocated or not.
            Release(u16),
            Advance(u64),
            Expire,
        }

        fn op() -> impl Strategy<Value = Op> {
            let port = LO - 8..=HI + 8;
            prop_oneof![
                4 => Just(Op::Allocate),
                1 => port.clone().prop_map(Op::Preferred),
                1 => port.clone().prop_map(Op::Reserve),
                3 => any::<usize>().prop_map(Op::ReleaseAllocated),
                1 => port.prop_map(Op::Release),
                3 => (0u64..800).prop_map(Op::Advance),
                1 => Just(Op::Expire),
            ]
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(512))]

            #[test]
            fn invariants_hold(
                q in prop_oneof![Just(0u64), Just(1_000), 1u64..5_000],
                seed in any::<u64>(),
                ops in proptest::collection::vec(op(), 1..300),
            ) {
                let mut p = PortPool::new(LO..=HI, Duration::from_millis(q), seed);
                let slack = p.bucket_ms;
                let mut now = 0u64;
                // Whether the pool has folded matured ports back at `now`.
                let mut drained = true;
                let mut allocated: BTreeSet<u16> = BTreeSet::new();
                let mut released_at: HashMap<u16, u64> = HashMap::new();
                // Ports that are certainly available after draining at `now`.
                let surely_free = |allocated: &BTreeSet<u16>, rel: &HashMap<u16, u64>, now: u64| {
                    (LO..=HI).filter(|x| !allocated.contains(x)
                        && rel.get(x).is_none_or(|&t| now - t >= q + slack)).count()
                };
                for op in ops {
                    let t = Instant::from_millis(now);
                    let got = match op {
                        Op::Allocate => {
                            let must = surely_free(&allocated, &released_at, now) > 0;
                            let got = p.allocate(t);
                            drained = true;
                            prop_assert!(got.is_some() || !must);
                            got
                        }
                        Op::Preferred(want) => {
                            let got = p.allocate_preferred(t, want);
                            drained = true;
                            let free = (LO..=HI).contains(&want) && !allocated.contains(&want)
                                && released_at.get(&want).is_none_or(|&r| now - r >= q + slack);
                            if free {
                                prop_assert_eq!(got, Some(want));
                            }
                            got
                        }
                        Op::Reserve(want) => {
                            drained = true;
                            p.reserve(t, want).then_some(want)
                        }
                        Op::ReleaseAllocated(i) => {
                            if let Some(&port) = allocated.iter().nth(i % allocated.len().max(1)) {
                                prop_assert!(p.release(t, port));
                                drained = true;
                                allocated.remove(&port);
                                released_at.insert(port, now);
                            }
                            None
                        }
                        Op::Release(port) => {
                            let ok = p.release(t, port);
                            prop_assert_eq!(ok, allocated.remove(&port));
                            if ok {
                                drained = true;
                                released_at.insert(port, now);
                            }
                            None
                        }
                        Op::Advance(d) => {
                            now += d;
                            drained &= d == 0;
                            None
                        }
                        Op::Expire => {
                            p.expire(t);
                            drained = true;
                            None
                        }
                    };
                    if let Some(port) = got {
                        prop_assert!((LO..=HI).contains(&port));
                        prop_assert!(allocated.insert(port), "port {} handed out twice", port);
                        if let Some(&r) = released_at.get(&port) {
                            prop_assert!(now - r >= q, "port {} back after {} ms", port, now - r);
                        }
                    }
                    p.check();
                    prop_assert_eq!(p.in_use() as usize, allocated.len());
                    prop_assert_eq!(p.in_use() + p.quarantined() + p.available(), p.capacity());
                    for port in LO - 1..=HI + 1 {
                        prop_assert_eq!(p.is_allocated(port), allocated.contains(&port));
                        let rel = released_at.get(&port).filter(|_| !allocated.contains(&port));
                        if rel.is_some_and(|&r| now - r < q) {
                            prop_assert!(p.is_quarantined(port), "port {} left quarantine early", port);
                        }
                        if drained && rel.is_some_and(|&r| now - r >= q + slack) {
                            prop_assert!(p.is_available(port), "port {} stuck in quarantine", port);
                        }
                    }
                }
            }
        }
    }
}
