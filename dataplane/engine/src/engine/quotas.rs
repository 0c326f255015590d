//! Environments' quota state: per environment, its learned MAC, live and
//! unanswered sessions and the ports its flows hold ([`EnvState`]), kept
//! where a new flow reaches it without a lookup of its own ([`EnvQuotas`]).
//! Units: counts of sessions and ports.

use super::hold::Hold;
use crate::bindings::{Bindings, Mac};
use core::net::Ipv4Addr;
use std::collections::HashMap;

/// Per-environment state the engine keeps (learned MAC, quotas).
#[derive(Copy, Clone, Debug, Default)]
pub(super) struct EnvState {
    pub(super) mac: Mac,
    /// Live sessions (the session quota counts these).
    pub(super) sessions: u32,
    /// Ports held by live flows, per protocol (the port quota counts these).
    pub(super) ports: [u32; 3],
    /// Sessions opened from the VPC and not answered yet.
    pub(super) unanswered: u32,
    pub(super) addr: Option<Ipv4Addr>,
}

impl EnvState {
    /// Counts a session of hold `h` in (`up`) or out of the quota it
    /// counts against, if any.
    pub(super) fn count(&mut self, h: Hold, up: bool) {
        match h {
            Hold::Live => step(&mut self.sessions, up),
            Hold::Unanswered => step(&mut self.unanswered, up),
            Hold::Closing(_) => {}
        }
    }
}

impl EnvState {
    /// Whether it holds anything (sessions, unanswered sessions, ports).
    fn holds(&self) -> bool {
        self.sessions > 0 || self.unanswered > 0 || self.ports.iter().any(|&n| n > 0)
    }
}

/// Every environment's [`EnvState`]: a bound environment's by its index in
/// the bindings' environments ([`Bindings::envs`]), so a new flow reaches
/// it through the index its bindings lookup gave (no lookup of its own);
/// an environment the bindings no longer list, while it still holds
/// anything, by address.
///
/// Invariants: `bound` is as long as the environments of the bindings in
/// force ([`EnvQuotas::rebind`] keeps it so on every change); an address
/// is in at most one of the two; a state moves with its environment's
/// address whatever index the bindings give it.
#[derive(Default)]
pub(super) struct EnvQuotas {
    bound: Vec<EnvState>,
    unbound: HashMap<Ipv4Addr, EnvState, foldhash::fast::RandomState>,
}

impl EnvQuotas {
    /// The state of the environment at index `i` of the bindings in force.
    #[inline]
    pub(super) fn at(&mut self, i: usize) -> &mut EnvState {
        &mut self.bound[i]
    }

    /// The state of environment `ip` under bindings `b` (those in force),
    /// if there is one.
    pub(super) fn get_mut(&mut self, b: &Bindings, ip: Ipv4Addr) -> Option<&mut EnvState> {
        match b.env_index(ip) {
            Some(i) => self.bound.get_mut(i),
            None => self.unbound.get_mut(&ip),
        }
    }

    /// [`EnvQuotas::get_mut`], made (empty) if there is none.
    pub(super) fn entry(&mut self, b: &Bindings, ip: Ipv4Addr) -> &mut EnvState {
        match b.env_index(ip).filter(|&i| i < self.bound.len()) {
            Some(i) => &mut self.bound[i],
            None => self.unbound.entry(ip).or_default(),
        }
    }

    /// Moves every state from where bindings `old` put it to where `new`
    /// does, by address: bound environments to their new index, those
    /// `new` drops to `unbound` while they hold anything, those it binds
    /// again back from there. Costs the environments of both; allocates
    /// the new index vector.
    pub(super) fn rebind(&mut self, old: &Bindings, new: &Bindings) {
        let mut prev = core::mem::take(&mut self.bound);
        let mut next = Vec::with_capacity(new.envs().len());
        for v in new.envs() {
            let st = match old.env_index(v.ip).and_then(|i| prev.get_mut(i)) {
                Some(s) => core::mem::take(s),
                None => self.unbound.remove(&v.ip).unwrap_or_default(),
            };
            next.push(st);
        }
        for (v, st) in old.envs().iter().zip(prev) {
            if new.env_index(v.ip).is_none() && st.holds() {
                self.unbound.insert(v.ip, st);
            }
        }
        self.unbound.retain(|_, s| s.holds());
        self.bound = next;
    }

    /// Calls `f` with every environment (bound under `b`, the bindings in
    /// force, or not) that has live sessions or sessions from the VPC not
    /// answered yet.
    pub(super) fn for_each_active(&self, b: &Bindings, mut f: impl FnMut(Ipv4Addr)) {
        let bound = b.envs().iter().map(|v| v.ip).zip(&self.bound);
        for (ip, e) in bound.chain(self.unbound.iter().map(|(&ip, e)| (ip, e))) {
            if e.sessions > 0 || e.unanswered > 0 {
                f(ip);
            }
        }
    }
}

/// One up or down (never below zero).
pub(super) fn step(n: &mut u32, up: bool) {
    *n = if up { *n + 1 } else { n.saturating_sub(1) };
}
