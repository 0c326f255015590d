//! The control plane's registries: ENIs by id and by key, functions by
//! name.
//!
//! They are dashmaps behind an `Arc`: the [`Controller`](super::Controller)
//! writes them from the control thread (its `&mut self` methods, under the
//! runtime's lock), and API requests (`status`, `sessions`) read them at the
//! same time without that lock, so a request never waits for a control-plane
//! step and never holds one up. A reader holds at most one map's shard at a
//! time.

use super::{EniRecord, FunctionRecord};
use crate::plan::EniKey;
use dashmap::DashMap;
use std::net::Ipv4Addr;

/// ENIs and functions, readable from any thread.
#[derive(Debug, Default)]
pub struct Registry {
    pub(super) enis: DashMap<u32, EniRecord>,
    pub(super) by_key: DashMap<EniKey, u32>,
    pub(super) functions: DashMap<String, FunctionRecord>,
}

impl Registry {
    /// The ENIs, by id.
    pub fn enis(&self) -> Vec<EniRecord> {
        let mut v: Vec<EniRecord> = self.enis.iter().map(|e| e.value().clone()).collect();
        v.sort_by_key(|e| e.id);
        v
    }

    /// The functions, by name.
    pub fn functions(&self) -> Vec<(String, FunctionRecord)> {
        let mut v: Vec<(String, FunctionRecord)> =
            self.functions.iter().map(|f| (f.key().clone(), f.value().clone())).collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    /// One function.
    pub fn function(&self, name: &str) -> Option<FunctionRecord> {
        self.functions.get(name).map(|f| f.value().clone())
    }

    /// The ENI with this key.
    pub fn eni_for(&self, key: &EniKey) -> Option<EniRecord> {
        let id = *self.by_key.get(key)?;
        self.enis.get(&id).map(|e| e.value().clone())
    }

    /// The ENI that owns `addr`.
    pub fn eni_of_addr(&self, addr: Ipv4Addr) -> Option<u32> {
        self.enis.iter().find(|e| e.addrs.contains(&addr)).map(|e| e.id)
    }
}
