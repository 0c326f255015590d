//! A cache-friendly hash index from a flow key's hash to a slot id:
//! bucketized open addressing with linear probing over 64-byte buckets.
//!
//! # Layout
//! A [`Bucket`] is one cache line: [`SLOTS`] (10) slot ids (`u32`, [`NIL`]
//! when empty), a 16-bit tag per slot (the low bits of the hash) and an
//! overflow count. A lookup reads the key's home bucket, compares the tags
//! and only reads an entry (the caller's `eq`) on a tag match: a miss costs
//! one cache line, a hit one cache line plus the entry.
//!
//! # Probing and the overflow count
//! The home bucket is `hash × buckets >> 64` (the high bits; any bucket
//! count works, no power-of-two rounding). An insert that finds its home
//! bucket full moves to the next one (wrapping) and adds one to the overflow
//! count of every full bucket it passed; a remove walks the same way and
//! takes it off again. A lookup stops at the first bucket whose overflow
//! count is zero, so it never walks further than some live entry was
//! placed. A count that reaches `u16::MAX` sticks there (it then only
//! lengthens lookups; it is never wrong).
//!
//! # Sizing and memory
//! [`FlowIndex::new`] takes the most entries it will ever hold and makes
//! `ceil(entries / 9)` buckets (a load of at most 90% of the 10 slots), so
//! an insert below that bound always finds a free slot. Memory is
//! `64 × ceil(entries / 9)` bytes: 7.1 bytes per entry.
//!
//! The index holds hashes and ids only: the caller owns the entries and
//! compares keys. Nothing here allocates after `new`.

use crate::session::NIL;

/// Slots per bucket.
pub const SLOTS: usize = 10;
/// Entries per bucket the index is sized for (the load bound).
pub const LOAD: usize = 9;
/// A count that no longer changes.
const STUCK: u16 = u16::MAX;

/// One cache line of the index.
#[derive(Clone, Copy, Debug)]
#[repr(C, align(64))]
pub struct Bucket {
    ids: [u32; SLOTS],
    tags: [u16; SLOTS],
    overflow: u16,
    _pad: u16,
}

impl Bucket {
    /// A bit per slot whose tag is `t` (bit `i` for slot `i`; empty slots
    /// may match): the ten tags compared at once, without a branch per
    /// slot, which the compiler makes a vector compare. A branch per slot
    /// mispredicts more the fuller the buckets: this was 7–12% faster at
    /// 100,000 and 1,000,000 sessions and 1–3 ns slower at 1,000 (`cargo
    /// bench --bench engine`, the two side by side).
    #[inline]
    fn matches(&self, t: u16) -> u32 {
        let mut m = 0u32;
        for (i, &x) in self.tags.iter().enumerate() {
            m |= u32::from(x == t) << i;
        }
        m
    }
}

const EMPTY: Bucket = Bucket { ids: [NIL; SLOTS], tags: [0; SLOTS], overflow: 0, _pad: 0 };

/// The tag of a hash: its low 16 bits (the home bucket takes the high bits).
#[inline]
fn tag(h: u64) -> u16 {
    h as u16
}

/// Hash → slot id, for at most the number of entries given to `new`.
pub struct FlowIndex {
    buckets: Vec<Bucket>,
}

impl FlowIndex {
    /// An index for up to `entries` entries.
    pub fn new(entries: usize) -> FlowIndex {
        let n = entries.div_ceil(LOAD).max(1);
        FlowIndex { buckets: vec![EMPTY; n] }
    }

    /// Bytes the index takes.
    pub fn bytes(&self) -> usize {
        self.buckets.len() * core::mem::size_of::<Bucket>()
    }

    /// The home bucket of `h`.
    #[inline]
    fn home(&self, h: u64) -> usize {
        ((u128::from(h) * self.buckets.len() as u128) >> 64) as usize
    }

    #[inline]
    fn next(&self, b: usize) -> usize {
        if b + 1 == self.buckets.len() {
            0
        } else {
            b + 1
        }
    }

    /// Asks the CPU to fetch the home bucket of `h` (a hint; see
    /// [`prefetch`]).
    #[inline]
    pub fn prefetch(&self, h: u64) {
        prefetch(&self.buckets[self.home(h)]);
    }

    /// Calls `f` with every id in the home bucket of `h` whose tag matches
    /// (the likely hits, to prefetch; entries that overflowed further are
    /// left out). Returns whether those are all the ids stored under `h`
    /// (the home bucket's overflow count is zero, so no entry of `h` was
    /// placed further): then a key `f` was not called for is not stored.
    #[inline]
    pub fn candidates(&self, h: u64, mut f: impl FnMut(u32)) -> bool {
        let bucket = &self.buckets[self.home(h)];
        let mut m = bucket.matches(tag(h));
        while m != 0 {
            let i = m.trailing_zeros() as usize;
            m &= m - 1;
            if bucket.ids[i] != NIL {
                f(bucket.ids[i]);
            }
        }
        bucket.overflow == 0
    }

    /// The first id stored under hash `h` that `eq` accepts.
    #[inline(always)]
    pub fn find(&self, h: u64, mut eq: impl FnMut(u32) -> bool) -> Option<u32> {
        let t = tag(h);
        let mut b = self.home(h);
        for _ in 0..self.buckets.len() {
            let bucket = &self.buckets[b];
            let mut m = bucket.matches(t);
            while m != 0 {
                let i = m.trailing_zeros() as usize;
                m &= m - 1;
                if bucket.ids[i] != NIL && eq(bucket.ids[i]) {
                    return Some(bucket.ids[i]);
                }
            }
            if bucket.overflow == 0 {
                return None;
            }
            b = self.next(b);
        }
        None
    }

    /// Stores `id` under hash `h`. Returns false only if every slot is
    /// taken (more entries than the index was made for).
    pub fn insert(&mut self, h: u64, id: u32) -> bool {
        let t = tag(h);
        let home = self.home(h);
        let mut b = home;
        for _ in 0..self.buckets.len() {
            if let Some(i) = self.buckets[b].ids.iter().position(|&x| x == NIL) {
                self.buckets[b].ids[i] = id;
                self.buckets[b].tags[i] = t;
                // Count the insert on every full bucket it passed.
                self.count_passed(home, b, true);
                return true;
            }
            b = self.next(b);
        }
        false
    }

    /// Counts an entry stored in bucket `b` in (`up`) or out of the overflow
    /// count of every bucket from its home `home` up to `b` (a count that
    /// reached [`STUCK`] stays there).
    fn count_passed(&mut self, home: usize, b: usize, up: bool) {
        let mut p = home;
        while p != b {
            let o = &mut self.buckets[p].overflow;
            if *o != STUCK {
                *o = if up { *o + 1 } else { *o - 1 };
            }
            p = self.next(p);
        }
    }

    /// Removes `id` stored under hash `h`. Returns whether it was there.
    pub fn remove(&mut self, h: u64, id: u32) -> bool {
        let home = self.home(h);
        let mut b = home;
        for _ in 0..self.buckets.len() {
            if let Some(i) = self.buckets[b].ids.iter().position(|&x| x == id) {
                self.buckets[b].ids[i] = NIL;
                self.count_passed(home, b, false);
                return true;
            }
            if self.buckets[b].overflow == 0 {
                return false;
            }
            b = self.next(b);
        }
        false
    }
}

/// Asks the CPU to bring the cache line holding `*p` into L1: a hint with
/// no effect on results (a prefetch never faults, whatever the address).
/// A no-op on targets without a prefetch intrinsic.
#[inline(always)]
pub fn prefetch<T>(p: &T) {
    #[cfg(all(target_arch = "x86_64", target_feature = "sse"))]
    {
        use core::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        // SAFETY: `_mm_prefetch` needs SSE, which the cfg above makes sure
        // the target has; a prefetch is a hint that reads nothing the
        // program sees and cannot fault on any address, and `p` is a valid
        // reference anyway. The engine's only `unsafe`.
        unsafe { _mm_prefetch::<_MM_HINT_T0>((p as *const T).cast::<i8>()) };
    }
    #[cfg(not(all(target_arch = "x86_64", target_feature = "sse")))]
    {
        let _ = p;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_is_one_cache_line() {
        assert_eq!(core::mem::size_of::<Bucket>(), 64);
        assert_eq!(core::mem::align_of::<Bucket>(), 64);
        // 10 entries sized at 9 per bucket: 64 / 9 bytes per entry.
        assert_eq!(FlowIndex::new(900).bytes(), 100 * 64);
    }

    /// Every id is found under its hash after any mix of inserts and
    /// removes, including crowded home buckets that overflow into the next
    /// ones, and removed ids are gone.
    #[test]
    fn crowded_buckets_overflow_and_shrink_back() {
        const N: usize = 90;
        let mut ix = FlowIndex::new(N);
        assert_eq!(ix.buckets.len(), 10);
        // Every hash has home bucket 0 and the same tag: the worst case.
        let h = |i: u32| u64::from(i % 3) << 16;
        let mut live = [false; N];
        for i in 0..N as u32 {
            assert!(ix.insert(h(i), i));
            live[i as usize] = true;
        }
        for round in 0..4u32 {
            for i in (round..N as u32).step_by(3) {
                assert!(ix.remove(h(i), i));
                live[i as usize] = false;
            }
            for i in 0..N as u32 {
                let found = ix.find(h(i), |id| id == i);
                assert_eq!(found.is_some(), live[i as usize], "id {i} round {round}");
            }
            for i in (round..N as u32).step_by(3) {
                assert!(ix.insert(h(i), i));
                live[i as usize] = true;
            }
        }
        for i in 0..N as u32 {
            assert!(ix.remove(h(i), i));
        }
        assert!(ix.buckets.iter().all(|b| b.overflow == 0 && b.ids.iter().all(|&x| x == NIL)));
        assert!(!ix.remove(h(0), 0), "nothing left to remove");
    }

    #[test]
    fn a_full_index_refuses_and_tags_filter() {
        let mut ix = FlowIndex::new(1);
        for i in 0..SLOTS as u32 {
            assert!(ix.insert(u64::from(i), i));
        }
        assert!(!ix.insert(99, 99), "every slot taken");
        let mut compared = 0;
        assert_eq!(
            ix.find(3, |id| {
                compared += 1;
                id == 3
            }),
            Some(3)
        );
        assert_eq!(compared, 1, "only the entry with the matching tag is compared");
    }

    /// `candidates` says it gave every id stored under a hash only while no
    /// entry of its home bucket went further: an id that overflowed into
    /// the next bucket is not among the candidates, and the answer is then
    /// "maybe more".
    #[test]
    fn candidates_are_complete_only_without_overflow() {
        let mut ix = FlowIndex::new(90);
        // Home bucket 0 for all; tags 0, 1, 2.
        let h = |i: u32| u64::from(i % 3);
        let mut got = vec![];
        assert!(ix.candidates(h(0), |id| got.push(id)), "an empty index holds nothing");
        assert!(got.is_empty());
        for i in 0..SLOTS as u32 {
            assert!(ix.insert(h(i), i));
        }
        assert!(ix.candidates(h(1), |id| got.push(id)), "a full bucket that overflowed nothing");
        assert_eq!(got, [1, 4, 7]);
        // The eleventh goes to bucket 1: bucket 0 now says "maybe further".
        assert!(ix.insert(h(10), 10));
        got.clear();
        assert!(!ix.candidates(h(1), |id| got.push(id)));
        assert_eq!(got, [1, 4, 7], "the overflowed id 10 is not a candidate");
        assert_eq!(ix.find(h(10), |id| id == 10), Some(10));
        assert!(ix.remove(h(10), 10));
        assert!(ix.candidates(h(1), |_| {}), "complete again once it is gone");
    }
}
