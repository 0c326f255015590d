//! The control plane: shared ENIs keyed by (subnet, security-group set),
//! their one-time setup, function states, and config updates while traffic
//! flows. Sans-IO, like the engine: time is passed in, and what the world
//! must do is returned as [`Effect`]s (probe an address on the VPC link,
//! publish new bindings to the dataplane).
//!
//! # Shared ENIs
//! The first function with a key creates its ENI; later ones reuse it. The
//! setup, each step timed:
//! 1. `allocate_address`: the lowest free address of the subnet (the
//!    network address, the three after it and the broadcast address are
//!    never used; none left: `SubnetOutOfIPAddresses`);
//! 2. `compile_security_groups`: the union of the groups' egress rules;
//! 3. `probe`: [`Effect::Probe`]; the runtime sends ARP probes (RFC 5227)
//!    on the outside port and reports back with [`Controller::probe_done`];
//!    if anyone answers for the address it is kept out of use and the next
//!    one is probed;
//! 4. `provisioning`: the modelled delay (`provisioning_delay_ms`, default
//!    0; AWS takes about 90 s);
//! 5. `publish`: the ENI becomes `Active`, its address goes into the
//!    dataplane's bindings, and the engine announces it with a gratuitous
//!    ARP.
//!
//! ENI states: `Creating` → `Active` → `Draining` (no function uses it; its
//! address leaves the bindings, so new flows cannot use it, while its
//! sessions finish) → deleted (no session left, or the drain limit passed;
//! the address goes back to the subnet). A failed setup removes the ENI.
//!
//! # Functions
//! States as Lambda shows them: `Pending` (`Creating`) → `Active` or
//! `Failed` (reason code); `Inactive` (`Idle`) after the idle period with no
//! traffic, which releases its ENIs; traffic from one of its environments
//! ([`Controller::traffic`]) makes it `Pending` (`Restoring`) and then
//! `Active` again. An update that changes a function's subnets or groups is
//! make-before-break: its environments keep their current ENIs
//! (`LastUpdateStatus` `InProgress`) until every ENI of the new keys is
//! `Active`, then switch for new flows (`Successful`); if the new ENIs fail,
//! the function keeps its old ENIs (`Failed`, with the reason). Flows
//! already open keep the ENI endpoint they have in the engine until they
//! end. Security-group rule edits need no new ENI: they are recompiled and
//! published at once (new flows see them; established flows continue).
//!
//! # Atomicity
//! [`Controller::apply`] validates the whole new config first (and that the
//! quota and every subnet can hold the ENIs it needs); on error it returns
//! the error and nothing has changed.

use crate::config::{self, Config, ConfigError};
use crate::ipam::Ipam;
use crate::plan::{self, EniKey, Plan};
use dataplane::bindings::{Bindings, Eni, Env, InsidePort};
use dataplane::policy::RuleSet;
use dataplane::time::Instant;
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

mod records;
mod registry;

pub use records::{Effect, EniRecord, EniState, FunctionRecord, FunctionState, Growth, UpdateStatus};
pub use registry::Registry;

/// The control plane. See the module docs.
pub struct Controller {
    cfg: Config,
    plan: Plan,
    ipam: BTreeMap<String, Ipam>,
    /// ENIs and functions, shared with readers (see [`Registry`]).
    reg: Arc<Registry>,
    next_id: u32,
    effects: VecDeque<Effect>,
    /// Addresses another host answered for: never handed out.
    conflicts: BTreeSet<Ipv4Addr>,
    /// The unit (see [`unit_of`]) of every environment, by address: what
    /// [`Controller::traffic`] looks up, rebuilt with each config.
    env_units: HashMap<Ipv4Addr, String>,
}

/// The unit of every environment of `cfg`, by address.
fn env_units(cfg: &Config) -> HashMap<Ipv4Addr, String> {
    cfg.environments.iter().map(|e| (e.address, unit_of(cfg, e))).collect()
}

fn keys_of(f: &config::Function) -> BTreeMap<String, EniKey> {
    f.subnets.iter().map(|s| (s.clone(), EniKey::new(s, &f.security_groups))).collect()
}

/// What gets ENIs: a function (shared mode), or an execution environment
/// (per-environment mode, named `function@address`).
#[derive(Clone, Debug, PartialEq)]
struct Unit {
    name: String,
    /// Subnet and groups, for change messages.
    describe: String,
    keys: BTreeMap<String, EniKey>,
    /// Starts without ENIs, until its environment starts.
    on_start: bool,
}

fn units(cfg: &Config) -> Vec<Unit> {
    let describe =
        |f: &config::Function| format!("subnets [{}] groups [{}]", f.subnets.join(","), f.security_groups.join(","));
    match cfg.gateway.eni_mode {
        config::EniMode::Shared => cfg
            .functions
            .iter()
            .map(|f| Unit { name: f.name.clone(), describe: describe(f), keys: keys_of(f), on_start: false })
            .collect(),
        config::EniMode::PerEnvironment => cfg
            .environments
            .iter()
            .filter_map(|e| {
                let f = cfg.functions.iter().find(|f| f.name == e.function)?;
                let subnet = e.subnet.clone().unwrap_or_else(|| f.subnets[0].clone());
                let key = EniKey { owner: Some(e.address), ..EniKey::new(&subnet, &f.security_groups) };
                Some(Unit {
                    name: format!("{}@{}", f.name, e.address),
                    describe: describe(f),
                    keys: [(subnet, key)].into(),
                    on_start: true,
                })
            })
            .collect(),
    }
}

/// The unit an environment belongs to.
fn unit_of(cfg: &Config, e: &config::Environment) -> String {
    match cfg.gateway.eni_mode {
        config::EniMode::Shared => e.function.clone(),
        config::EniMode::PerEnvironment => format!("{}@{}", e.function, e.address),
    }
}

fn ms_since(now: Instant, then: Instant) -> Duration {
    now.saturating_since(then)
}

impl Controller {
    /// A control plane for `cfg`, starting the setup of every ENI its
    /// functions need.
    pub fn new(cfg: Config, now: Instant) -> Result<Controller, ConfigError> {
        let plan = plan::plan(&cfg, &BTreeMap::new())?;
        let ipam = plan::subnet_allocators(&cfg).into_iter().map(|p| (p.subnet().to_string(), p)).collect();
        let mut c = Controller {
            cfg: Config { functions: vec![], ..cfg.clone() },
            plan,
            ipam,
            reg: Arc::default(),
            next_id: 1,
            effects: VecDeque::new(),
            conflicts: BTreeSet::new(),
            env_units: HashMap::new(),
        };
        c.apply(cfg, now)?;
        Ok(c)
    }

    /// The config in force.
    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// The static parts (devices, engine settings, workers) of the config in
    /// force.
    pub fn plan(&self) -> &Plan {
        &self.plan
    }

    /// The next thing the runtime must do.
    pub fn poll_effect(&mut self) -> Option<Effect> {
        self.effects.pop_front()
    }

    /// The registries of ENIs and functions, to read without holding the
    /// controller (API requests do).
    pub fn registry(&self) -> &Arc<Registry> {
        &self.reg
    }

    /// The ENIs, by id.
    pub fn enis(&self) -> Vec<EniRecord> {
        self.reg.enis()
    }

    /// The functions, by name.
    pub fn functions(&self) -> Vec<(String, FunctionRecord)> {
        self.reg.functions()
    }

    /// One function.
    pub fn function(&self, name: &str) -> Option<FunctionRecord> {
        self.reg.function(name)
    }

    /// The ENI with this key.
    pub fn eni_for(&self, key: &EniKey) -> Option<EniRecord> {
        self.reg.eni_for(key)
    }

    /// The ENI that owns `addr`.
    pub fn eni_of_addr(&self, addr: Ipv4Addr) -> Option<u32> {
        self.reg.eni_of_addr(addr)
    }

    /// Replaces the config. Validation, quota and subnet capacity are
    /// checked first: on error nothing changes. Returns what changed, a line
    /// per change.
    pub fn apply(&mut self, cfg: Config, now: Instant) -> Result<Vec<String>, ConfigError> {
        cfg.validate()?;
        // What the new config needs that does not exist yet.
        let new_units = units(&cfg);
        let mut wanted: BTreeSet<EniKey> = BTreeSet::new();
        for u in &new_units {
            let inactive = match self.reg.functions.get(&u.name) {
                Some(r) => matches!(r.state, FunctionState::Inactive(_)),
                None => u.on_start,
            };
            if !inactive {
                wanted.extend(u.keys.values().cloned());
            }
        }
        let new_keys: Vec<&EniKey> = wanted.iter().filter(|k| !self.reg.by_key.contains_key(*k)).collect();
        let quota = cfg.gateway.eni_quota as usize;
        if self.reg.enis.len() + new_keys.len() > quota {
            return Err(ConfigError::new(
                "gateway.eni_quota",
                format!(
                    "EniLimitExceeded: {} ENIs exist and the config needs {} more; the quota is {quota}",
                    self.reg.enis.len(),
                    new_keys.len()
                ),
            ));
        }
        // Subnets: the new config's allocators, with our addresses taken.
        let mut ipam: BTreeMap<String, Ipam> =
            plan::subnet_allocators(&cfg).into_iter().map(|p| (p.subnet().to_string(), p)).collect();
        for p in ipam.values_mut() {
            for &a in &self.conflicts {
                // Addresses of other subnets are refused: nothing to do.
                let _ = p.reserve(a);
            }
        }
        for e in self.reg.enis.iter() {
            if let Some(p) = ipam.get_mut(&e.key.subnet) {
                for a in e.addrs.iter().chain(e.probing.as_ref().map(|(a, _)| a)) {
                    let _ = p.reserve(*a);
                }
            }
        }
        for (subnet, keys) in new_keys.iter().fold(BTreeMap::<&str, usize>::new(), |mut m, k| {
            *m.entry(k.subnet.as_str()).or_default() += 1;
            m
        }) {
            let free = ipam.get(subnet).map_or(0, Ipam::available);
            if (keys as u64) > free {
                let i = cfg.subnets.iter().position(|s| s.id == subnet).unwrap_or(0);
                return Err(ConfigError::new(
                    format!("subnets[{i}]"),
                    format!(
                        "SubnetOutOfIPAddresses: {subnet} has {free} free addresses, {keys} new ENIs need one each"
                    ),
                ));
            }
        }
        let assignments: BTreeMap<EniKey, Vec<Ipv4Addr>> =
            self.reg.enis.iter().filter(|e| e.key.owner.is_none()).map(|e| (e.key.clone(), e.addrs.clone())).collect();
        let plan = plan::plan(&cfg, &assignments)?;

        // Accepted: from here on nothing fails.
        let mut changes = vec![];
        let old: BTreeMap<String, Unit> = units(&self.cfg).into_iter().map(|u| (u.name.clone(), u)).collect();
        // Rule edits reach every ENI at once.
        if self.cfg.security_groups != cfg.security_groups {
            changes.push("security groups recompiled: new flows use the new rules".to_string());
        }
        self.cfg = cfg.clone();
        self.env_units = env_units(&self.cfg);
        self.plan = plan;
        self.ipam = ipam;
        for u in &new_units {
            let target = u.keys.clone();
            match old.get(&u.name) {
                None if u.on_start => {
                    // Per-environment mode: its ENI comes when it starts.
                    self.reg.functions.insert(
                        u.name.clone(),
                        FunctionRecord {
                            state: FunctionState::Inactive("NotStarted"),
                            last_update: UpdateStatus::Successful,
                            bound: BTreeMap::new(),
                            target,
                            last_activity: now,
                        },
                    );
                }
                None => {
                    changes.push(format!("function {}: created", u.name));
                    self.reg.functions.insert(
                        u.name.clone(),
                        FunctionRecord {
                            state: FunctionState::Pending("Creating"),
                            last_update: UpdateStatus::Successful,
                            bound: BTreeMap::new(),
                            target: target.clone(),
                            last_activity: now,
                        },
                    );
                    self.ensure_enis(&u.name, &target, now);
                }
                Some(o) if o.keys != target => {
                    changes.push(format!("function {}: {} -> {}", u.name, o.describe, u.describe));
                    if let Some(mut r) = self.reg.functions.get_mut(&u.name) {
                        r.target = target.clone();
                        if !matches!(r.state, FunctionState::Inactive(_)) {
                            r.last_update = UpdateStatus::InProgress;
                        }
                    }
                    let inactive =
                        self.reg.functions.get(&u.name).is_some_and(|r| matches!(r.state, FunctionState::Inactive(_)));
                    if !inactive {
                        self.ensure_enis(&u.name, &target, now);
                    }
                }
                Some(_) => {}
            }
        }
        for name in old.keys().filter(|n| !new_units.iter().any(|u| &u.name == *n)) {
            changes.push(format!("function {name}: deleted"));
            self.reg.functions.remove(name);
        }
        self.refresh_users(now);
        for mut e in self.reg.enis.iter_mut() {
            e.generation += 1;
        }
        self.effects.push_back(Effect::Publish);
        Ok(changes)
    }

    /// Makes sure every key has an ENI (set up if new) used by `function`.
    fn ensure_enis(&mut self, function: &str, keys: &BTreeMap<String, EniKey>, now: Instant) {
        for key in keys.values() {
            if let Some(id) = self.reg.by_key.get(key).map(|r| *r) {
                if let Some(mut e) = self.reg.enis.get_mut(&id) {
                    e.functions.insert(function.to_string());
                    if e.state == EniState::Draining {
                        // Needed again before it was gone.
                        e.state = EniState::Active;
                        e.draining_since = None;
                        e.generation += 1;
                        self.effects.push_back(Effect::Publish);
                    }
                }
                continue;
            }
            self.create_eni(key, function, now);
        }
    }

    fn create_eni(&mut self, key: &EniKey, function: &str, now: Instant) {
        let id = self.next_id;
        let mut rec = EniRecord {
            id,
            key: key.clone(),
            addrs: vec![],
            generation: 0,
            state: EniState::Creating,
            functions: [function.to_string()].into(),
            sessions: 0,
            steps: vec![],
            created: now,
            probing: None,
            ready_at: None,
            draining_since: None,
        };
        if self.reg.enis.len() >= self.cfg.gateway.eni_quota as usize {
            tracing::warn!(%function, "EniLimitExceeded");
            self.fail_key(key, "EniLimitExceeded");
            return;
        }
        let t0 = std::time::Instant::now();
        let Some(addr) = self.ipam.get_mut(&key.subnet).and_then(|p| p.allocate().ok()) else {
            tracing::warn!(%function, subnet = %key.subnet, "SubnetOutOfIPAddresses");
            self.fail_key(key, "SubnetOutOfIPAddresses");
            return;
        };
        rec.steps.push(("allocate_address".into(), t0.elapsed()));
        let t1 = std::time::Instant::now();
        // The rules are compiled by the plan for every key the config uses;
        // timing the lookup keeps the step visible.
        let _ = self.egress(key);
        rec.steps.push(("compile_security_groups".into(), t1.elapsed()));
        rec.probing = Some((addr, now));
        tracing::info!(eni = id, %addr, subnet = %key.subnet, groups = ?key.security_groups, "ENI setup: probing");
        self.next_id += 1;
        self.reg.enis.insert(id, rec);
        self.reg.by_key.insert(key.clone(), id);
        self.effects.push_back(Effect::Probe { eni: id, addr });
    }

    /// A setup that failed for `key`: the functions moving to it fail (new
    /// ones) or keep their old ENIs (updates).
    fn fail_key(&mut self, key: &EniKey, reason: &str) {
        for mut f in self.reg.functions.iter_mut() {
            if !f.target.values().any(|k| k == key) {
                continue;
            }
            if f.bound.is_empty() {
                f.state = FunctionState::Failed(reason.to_string());
                f.target.clear();
            } else {
                f.last_update = UpdateStatus::Failed(reason.to_string());
                f.target = f.bound.clone();
            }
        }
    }

    /// The dataplane's answer to [`Effect::Probe`]: `conflict` when another
    /// host answered for the address.
    pub fn probe_done(&mut self, eni: u32, addr: Ipv4Addr, conflict: bool, now: Instant) {
        let Some(mut e) = self.reg.enis.get_mut(&eni) else {
            return;
        };
        let Some((probed, since)) = e.probing else {
            return;
        };
        if probed != addr {
            return;
        }
        e.probing = None;
        let subnet = e.key.subnet.clone();
        if conflict {
            // Someone else has it: keep it out of use and try the next.
            tracing::warn!(eni, %addr, "address in use on the VPC link; taking another");
            self.conflicts.insert(addr);
            let next = self.ipam.get_mut(&subnet).and_then(|p| p.allocate().ok());
            match next {
                Some(a) => {
                    e.probing = Some((a, now));
                    self.effects.push_back(Effect::Probe { eni, addr: a });
                }
                None if e.state == EniState::Creating => {
                    let key = e.key.clone();
                    drop(e);
                    self.remove_eni(eni, false);
                    self.fail_key(&key, "SubnetOutOfIPAddresses");
                }
                None => {}
            }
            return;
        }
        e.steps.push(("probe".into(), ms_since(now, since)));
        if e.state == EniState::Creating {
            e.addrs.push(addr);
            e.ready_at = Some(now + self.plan.lifecycle.provisioning_delay);
        } else {
            // An extra address past the high-water mark.
            e.addrs.push(addr);
            e.generation += 1;
            tracing::info!(eni, %addr, "address added past the high-water mark");
            self.effects.push_back(Effect::Publish);
        }
    }

    /// Traffic from environment `env` (a new flow, or live sessions): keeps
    /// its function from going idle, and brings an inactive one back.
    pub fn traffic(&mut self, env: Ipv4Addr, now: Instant) {
        let Some(name) = self.env_units.get(&env) else {
            return;
        };
        let restore = {
            let Some(mut f) = self.reg.functions.get_mut(name) else {
                return;
            };
            f.last_activity = now;
            if let FunctionState::Inactive(why) = f.state {
                // A per-environment ENI is created on the cold start; an
                // idle function's ENI is restored.
                f.state = FunctionState::Pending(if why == "NotStarted" { "Creating" } else { "Restoring" });
                Some(f.target.clone())
            } else {
                None
            }
        };
        if let Some(target) = restore {
            let name = name.clone();
            tracing::info!(function = %name, "restoring");
            self.ensure_enis(&name, &target, now);
        }
    }

    /// Port use on `addr` passed the high-water mark (`exhausted`: a new
    /// flow found no port on any of the ENI's addresses): add an address to
    /// its ENI for new flows, one at a time, up to `max_eni_addresses`. A
    /// mark passed on an older address adds nothing while a newer one has
    /// room; exhaustion always adds. Says what it did.
    pub fn high_water(&mut self, addr: Ipv4Addr, now: Instant, exhausted: bool) -> Growth {
        let Some(id) = self.eni_of_addr(addr) else {
            return Growth::Unknown;
        };
        let Some(mut e) = self.reg.enis.get_mut(&id) else {
            return Growth::Unknown;
        };
        if e.state != EniState::Active || e.probing.is_some() {
            return Growth::Busy(id);
        }
        if !exhausted && e.addrs.last() != Some(&addr) {
            return Growth::Room(id);
        }
        let max = self.cfg.gateway.max_eni_addresses.max(1) as usize;
        if e.addrs.len() >= max {
            return Growth::AtMax(id, max);
        }
        let subnet = e.key.subnet.clone();
        match self.ipam.get_mut(&subnet).and_then(|p| p.allocate().ok()) {
            Some(a) => {
                e.probing = Some((a, now));
                self.effects.push_back(Effect::Probe { eni: id, addr: a });
                Growth::Adding(id, a)
            }
            None => Growth::SubnetFull(id),
        }
    }

    /// Advances time: finished setups become active, functions move to
    /// their new ENIs, idle functions are reclaimed, unused ENIs drain and
    /// go. `live` is the dataplane's live sessions per ENI address.
    pub fn tick(&mut self, now: Instant, live: &BTreeMap<Ipv4Addr, u64>) {
        let mut publish = false;
        for mut e in self.reg.enis.iter_mut() {
            e.sessions = e.addrs.iter().map(|a| live.get(a).copied().unwrap_or(0)).sum();
            if e.state == EniState::Creating && e.ready_at.is_some_and(|t| t <= now) {
                let since = e.ready_at.map_or(now, |t| t);
                let provisioning = self.plan.lifecycle.provisioning_delay;
                e.steps.push(("provisioning".into(), provisioning.max(ms_since(now, since))));
                e.steps.push(("publish".into(), Duration::ZERO));
                e.state = EniState::Active;
                e.ready_at = None;
                e.generation += 1;
                publish = true;
                tracing::info!(
                    eni = e.id,
                    addr = ?e.addrs,
                    setup_ms = e.setup_time().unwrap_or_default().as_secs_f64() * 1000.0,
                    "ENI active"
                );
            }
        }
        // Functions whose target ENIs are all active switch to them.
        let active: BTreeSet<EniKey> =
            self.reg.enis.iter().filter(|e| e.state == EniState::Active).map(|e| e.key.clone()).collect();
        let idle = self.plan.lifecycle.idle_reclaim;
        for mut f in self.reg.functions.iter_mut() {
            let ready = !f.target.is_empty() && f.target.values().all(|k| active.contains(k));
            if ready && (f.bound != f.target || matches!(f.state, FunctionState::Pending(_))) {
                f.bound = f.target.clone();
                f.state = FunctionState::Active;
                if f.last_update == UpdateStatus::InProgress {
                    f.last_update = UpdateStatus::Successful;
                }
                publish = true;
            }
            if f.state == FunctionState::Active && idle.is_some_and(|d| ms_since(now, f.last_activity) >= d) {
                f.state = FunctionState::Inactive("Idle");
                f.bound.clear();
                publish = true;
            }
        }
        self.refresh_users(now);
        // Draining ENIs go once their sessions end or the limit passes.
        let limit = self.plan.lifecycle.drain_limit;
        let done: Vec<u32> = self
            .reg
            .enis
            .iter()
            .filter(|e| {
                e.state == EniState::Draining
                    && (e.sessions == 0 || e.draining_since.is_some_and(|t| ms_since(now, t) >= limit))
            })
            .map(|e| e.id)
            .collect();
        for id in done {
            self.remove_eni(id, true);
        }
        if publish {
            self.effects.push_back(Effect::Publish);
        }
    }

    /// Recomputes who uses each ENI; an ENI nobody uses starts draining.
    fn refresh_users(&mut self, now: Instant) {
        let mut users: BTreeMap<EniKey, BTreeSet<String>> = BTreeMap::new();
        for f in self.reg.functions.iter() {
            let inactive = matches!(f.state, FunctionState::Inactive(_));
            for k in f.bound.values().chain(if inactive { None } else { Some(f.target.values()) }.into_iter().flatten())
            {
                users.entry(k.clone()).or_default().insert(f.key().clone());
            }
        }
        let mut publish = false;
        let mut failed_creating = vec![];
        for mut e in self.reg.enis.iter_mut() {
            e.functions = users.remove(&e.key).unwrap_or_default();
            if e.functions.is_empty() {
                match e.state {
                    EniState::Active => {
                        e.state = EniState::Draining;
                        e.draining_since = Some(now);
                        e.generation += 1;
                        publish = true;
                        tracing::info!(eni = e.id, "draining: no function uses it");
                    }
                    EniState::Creating => failed_creating.push(e.id),
                    EniState::Draining => {}
                }
            }
        }
        for id in failed_creating {
            // Set up for a function that no longer wants it.
            self.remove_eni(id, false);
        }
        if publish {
            self.effects.push_back(Effect::Publish);
        }
    }

    /// Deletes an ENI and returns its addresses to the subnet.
    fn remove_eni(&mut self, id: u32, log: bool) {
        if let Some((_, e)) = self.reg.enis.remove(&id) {
            self.reg.by_key.remove(&e.key);
            if let Some(p) = self.ipam.get_mut(&e.key.subnet) {
                for a in e.addrs.iter().chain(e.probing.map(|(a, _)| a).as_ref()) {
                    p.release(*a);
                }
            }
            if log {
                tracing::info!(eni = id, addrs = ?e.addrs, "ENI deleted; addresses back to the subnet");
            }
        }
    }

    /// The compiled egress rules of a key's groups (per-environment ENIs
    /// use their shared key's).
    fn egress(&self, key: &EniKey) -> Arc<RuleSet> {
        let shared = EniKey { owner: None, ..key.clone() };
        self.plan
            .enis
            .iter()
            .find(|e| e.key == shared)
            .map_or_else(|| Arc::new(RuleSet::new(vec![])), |e| e.egress.clone())
    }

    /// The dataplane's view: active ENIs with their addresses and rules,
    /// every environment bound to its function's current ENI for its
    /// subnet (or to none, id 0, while its function has no active ENI: its
    /// new flows are dropped as `no_eni`).
    pub fn bindings(&self) -> Bindings {
        let b = &self.plan.bindings;
        let mut enis: Vec<Eni> = vec![Eni { id: 0, addrs: vec![], egress: Arc::new(RuleSet::new(vec![])) }];
        for e in self.reg.enis.iter().filter(|e| e.state == EniState::Active) {
            enis.push(Eni { id: e.id, addrs: e.addrs.clone(), egress: self.egress(&e.key) });
        }
        let functions: BTreeMap<&str, &config::Function> =
            self.cfg.functions.iter().map(|f| (f.name.as_str(), f)).collect();
        let envs: Vec<Env> = self
            .cfg
            .environments
            .iter()
            .zip(b.envs())
            .map(|(e, planned)| {
                let subnet =
                    e.subnet.clone().or_else(|| functions.get(e.function.as_str()).map(|f| f.subnets[0].clone()));
                let eni = subnet
                    .and_then(|s| {
                        // During an update that moves the function to other
                        // subnets, its environments stay where they are.
                        let f = self.reg.functions.get(&unit_of(&self.cfg, e))?;
                        f.bound.get(&s).or_else(|| f.bound.values().next()).cloned()
                    })
                    .and_then(|k| self.reg.by_key.get(&k).map(|id| *id))
                    .filter(|id| self.reg.enis.get(id).is_some_and(|r| r.state == EniState::Active))
                    .unwrap_or(0);
                Env { ip: planned.ip, port: planned.port, eni }
            })
            .collect();
        let inside: Vec<InsidePort> = b.inside_ports().to_vec();
        Bindings::new(b.outside().clone(), inside, enis, envs).unwrap_or_else(|e| {
            // The plan validated the same ports and environments, and ENI
            // ids are unique: this cannot fail; keep the planned bindings.
            tracing::error!(error = %e, "bindings rejected");
            b.clone()
        })
    }
}
