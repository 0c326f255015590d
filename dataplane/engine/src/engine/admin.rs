//! What the control plane asks of an engine between frames: walks of the
//! session table a bounded chunk at a time, removal of the sessions an
//! operator names (`hyperplane flush`, `sessions --delete`), and the
//! environments with live sessions.
//!
//! Invariants: no call here costs more than its `slots` argument (table
//! slots looked at) or the number of environments the engine knows, so a
//! worker answering the control plane is away from its frames for a
//! bounded time whatever the table size. Removed sessions release exactly
//! what expiry releases (ports, quotas, gauges).

use super::Engine;
use crate::session::Session;
use crate::time::Instant;
use core::net::Ipv4Addr;

/// Where a chunked walk of the session table stands.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct Walk {
    /// Sessions the chunk matched (visited, or removed).
    pub matched: u64,
    /// The slot the next chunk starts at; `None` when the walk is done.
    pub next: Option<u32>,
}

impl Engine {
    /// Calls `f` with the slot id and the session of each session in table
    /// slots `start..start + slots`.
    /// See [`crate::session::SessionTable::for_each_from`].
    pub fn walk_sessions(&self, start: u32, slots: usize, mut f: impl FnMut(u32, &Session)) -> Walk {
        let mut matched = 0;
        let next = self.table.for_each_from(start, slots, |id, s| {
            matched += 1;
            f(id, s)
        });
        Walk { matched, next }
    }

    /// Removes the sessions in table slots `start..start + slots` that
    /// `pick` accepts, as expiry would (their ports rest in quarantine,
    /// their quotas and gauges go down), counting each in
    /// `sessions_flushed` and `sessions_expired`. `matched` is the number
    /// removed.
    pub fn remove_sessions(
        &mut self,
        now: Instant,
        start: u32,
        slots: usize,
        mut pick: impl FnMut(&Session) -> bool,
    ) -> Walk {
        self.now = self.now.max(now);
        let mut ids = Vec::new();
        let next = self.table.for_each_from(start, slots, |id, s| {
            if pick(s) {
                ids.push(id);
            }
        });
        for &id in &ids {
            let s = *self.table.get(id);
            let removed = self.table.remove(id);
            self.counters.sessions_flushed.inc();
            let Engine { addrs, envs, bindings, counters, cfg, .. } = self;
            Engine::account_removed(envs, bindings, addrs, counters, cfg, now, &s, removed, false);
        }
        if !ids.is_empty() {
            self.counters.sessions_recyclable.set(self.table.recyclable_len() as u64);
        }
        Walk { matched: ids.len() as u64, next }
    }

    /// Calls `f` with each environment that has live sessions (or sessions
    /// from the VPC not answered yet). Costs the number of environments the
    /// engine knows, not the table size; allocates nothing.
    pub fn active_envs(&self, f: impl FnMut(Ipv4Addr)) {
        self.envs.for_each_active(&self.bindings, f);
    }
}
