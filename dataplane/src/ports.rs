//! STUB (replaced by the real allocator).
use crate::time::Instant;
use core::ops::RangeInclusive;
use std::time::Duration;
pub struct PortPool { r: RangeInclusive<u16>, used: std::collections::HashSet<u16>, x: u64 }
impl PortPool {
    pub fn new(range: RangeInclusive<u16>, _q: Duration, seed: u64) -> PortPool { PortPool { r: range, used: Default::default(), x: seed | 1 } }
    pub fn random_port(&mut self) -> u16 { self.x ^= self.x << 13; self.x ^= self.x >> 7; self.x ^= self.x << 17; let n = u64::from(*self.r.end() - *self.r.start()) + 1; *self.r.start() + (self.x % n) as u16 }
    pub fn allocate(&mut self, _now: Instant) -> Option<u16> { for _ in 0..100000 { let p = self.random_port(); if self.used.insert(p) { return Some(p); } } None }
    pub fn allocate_preferred(&mut self, now: Instant, port: u16) -> Option<u16> { if self.r.contains(&port) && self.used.insert(port) { Some(port) } else { self.allocate(now) } }
    pub fn release(&mut self, _now: Instant, port: u16) -> bool { self.used.remove(&port) }
    pub fn expire(&mut self, _now: Instant) {}
    pub fn in_use(&self) -> u32 { self.used.len() as u32 }
    pub fn capacity(&self) -> u32 { u32::from(*self.r.end() - *self.r.start()) + 1 }
}
