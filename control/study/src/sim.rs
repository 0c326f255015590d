//! The discrete-event simulation of one design over one workload.
//!
//! # The model
//!
//! Time is in seconds from the start of the workload (t = 0); an event queue (a binary heap of
//! `(time, sequence, event)`, the sequence breaking ties in insertion order) drives it. The
//! workload (arrival times, the function of each arrival, each invocation's duration) comes
//! from streams seeded only by the seed, so both designs see the same invocations; the designs
//! differ only in what a cold start costs and what it consumes.
//!
//! Common to both designs:
//! - an invocation takes an idle execution environment of its function if there is one (a warm
//!   start: no network cost; the most recently used first), otherwise it creates one (a cold
//!   start: the network cost below; only the network part of a cold start is modelled);
//! - an environment idle for `env_idle_s` is reclaimed;
//! - ENIs count against `eni_quota` (per VPC) and each takes one address of its subnet; when a
//!   new ENI is needed the quota is checked first (`EniLimitExceeded`), then the subnet
//!   (`SubnetOutOfIPAddresses`); either failure fails the invocation;
//! - concurrency is the number of invocations whose code is running (after the network part of
//!   a cold start), "time to target" the first moment it reaches a burst's target.
//!
//! [`Design::PerEnvironmentEni`] (Lambda before 2019): a new environment needs an ENI slot of
//! its own function. Reading of the published sizing rule "addresses ≈ peak concurrency ×
//! memory GB / 3 GB": an ENI serves a 3 GB worker, so it is shared by up to
//! `k = max(1, floor(worker_mb / memory_mb))` environments of the same function, and a function
//! with `n` environments holds `ceil(n / k)` ENIs. This equals the formula when the memory
//! divides 3,072 MB and exceeds it otherwise (2,048 MB: one ENI per environment, not 2/3);
//! above 3 GB it stays one per environment. A new environment takes a free slot on one of its
//! function's ENIs (the one ready soonest; if that ENI is still being created the cold start
//! waits for it, and a slot on a ready ENI costs nothing), or creates an ENI: the cold start
//! then waits the full creation time drawn from `per_env.eni_create`. An ENI is deleted when
//! its last environment is reclaimed.
//!
//! [`Design::SharedEni`] (Lambda since 2019): one ENI per (subnet, security-group set), set up
//! when the functions are created, at `t = -shared.setup_s`, so ready at t = 0; a combination
//! whose ENI cannot be created (quota, subnet) leaves its functions `Failed` with that reason
//! for the whole run. A cold start costs one flow-table entry (`shared.flow_entry_s`). Each
//! running invocation holds `shared.connections_per_env` connections on its combination's
//! ENIs (taken when it starts, released when it ends); when they would exceed
//! `shared.connections_per_eni` per ENI another ENI (address) is added at once (Lambda scales
//! ahead of need; the model charges the address and the quota, no delay) and kept until the
//! combination is reclaimed. A function without invocations for `shared.idle_reclaim_s` goes
//! `Inactive`; when every function of a combination is inactive (or failed) its ENIs are
//! deleted. Invoking an inactive function fails (`ResourceNotReady`) and restores it: the
//! function is `Pending` (its invocations fail) for `shared.setup_s`, re-creating the ENI if it
//! was deleted.

use std::cmp::Ordering;
use std::collections::BinaryHeap;
use std::time::Instant;

use super::rng::Rng;
use super::scenario::{Arrival, Scenario};
use super::StudyError;

use super::results::{nice_width, percentile, step_max};
pub use super::results::{
    Bucket, Design, DesignResult, FailureCounts, FailureReason, InvocationCounts, LatencySummary,
};

// ---------------------------------------------------------------------------------------------
// The engine.

const NONE: u32 = u32::MAX;

/// Stream ids of the seeded generators.
const STREAM_ARRIVAL: u64 = 1;
const STREAM_FUNCTION: u64 = 2;
const STREAM_DURATION: u64 = 3;
const STREAM_ENI_CREATE: u64 = 4;
const STREAM_CLIENT_BASE: u64 = 1 << 32;

#[derive(Clone, Copy, Debug)]
enum Ev {
    /// The next open-loop arrival.
    Arrival,
    /// A burst caller starts or retries.
    Client(u32),
    /// A cold start's network part is done: the code starts.
    Start { env: u32, client: u32, dur: f64 },
    /// An invocation returns.
    Done { env: u32, client: u32 },
    /// Check whether an environment has been idle long enough.
    EnvExpire(u32),
    /// Check whether a function has been idle long enough (shared design).
    FnIdle(u32),
}

impl Ev {
    fn primary(&self) -> bool {
        matches!(self, Ev::Arrival | Ev::Client(_) | Ev::Start { .. } | Ev::Done { .. })
    }
}

struct Queued {
    t: f64,
    seq: u64,
    ev: Ev,
}

impl PartialEq for Queued {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Queued {}
impl PartialOrd for Queued {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Queued {
    /// Reversed: the heap pops the earliest time, then the lowest sequence number.
    fn cmp(&self, other: &Self) -> Ordering {
        other.t.total_cmp(&self.t).then_with(|| other.seq.cmp(&self.seq))
    }
}

struct Env {
    func: u32,
    alive: bool,
    busy: bool,
    idle_since: f64,
    epoch: u32,
    expire_pending: bool,
    eni: u32,
}

struct PerEnvEni {
    func: u32,
    subnet: usize,
    ready_at: f64,
    used: u32,
}

#[derive(Clone, Copy, PartialEq, Debug)]
enum FnState {
    Active,
    Inactive,
    Pending(f64),
    Failed(FailureReason),
}

#[derive(Clone, Copy, PartialEq)]
enum Outcome {
    Warm,
    Cold(f64),
    Failed,
}

struct InvRecord {
    t: f64,
    outcome: Outcome,
}

struct Client {
    func: u32,
    rng: Rng,
}

struct Sim<'a> {
    sc: &'a Scenario,
    design: Design,
    seed: u64,
    heap: BinaryHeap<Queued>,
    seq: u64,
    primary_pending: u64,
    now: f64,

    // workload
    func_cum: Vec<f64>,
    arrival_rng: Rng,
    func_rng: Rng,
    dur_rng: Rng,
    clients: Vec<Client>,
    clients_started: u32,
    issued: u64,

    // functions and combinations
    fn_combo: Vec<usize>,
    fn_subnet: Vec<usize>,
    fn_slots: Vec<u32>,
    combo_subnet: Vec<usize>,
    combo_fns: Vec<Vec<u32>>,
    combo_enis: Vec<u32>,
    combo_conns: Vec<u64>,
    fn_state: Vec<FnState>,
    fn_last_activity: Vec<f64>,
    fn_busy: Vec<u32>,
    fn_idle_pending: Vec<bool>,

    // environments and ENIs
    envs: Vec<Env>,
    idle_stack: Vec<Vec<(u32, u32)>>,
    per_env_enis: Vec<PerEnvEni>,
    open_enis: Vec<Vec<u32>>,
    eni_rng: Rng,
    subnet_usable: Vec<u64>,
    subnet_used: Vec<u32>,
    subnet_peak: Vec<u32>,
    live_enis: u64,

    // measurements
    res: DesignResult,
    executing: u32,
    live_envs: u32,
    addresses: u32,
    conns: u64,
    target: Option<u32>,
    inv_log: Vec<InvRecord>,
    exec_log: Vec<(f64, u32)>,
    env_log: Vec<(f64, u32)>,
    addr_log: Vec<(f64, u32)>,
}

/// Simulates `design` over `scenario` (validated first) with `seed`.
pub fn simulate(scenario: &Scenario, design: Design, seed: u64) -> Result<DesignResult, StudyError> {
    scenario.validate()?;
    let started = Instant::now();
    let mut sim = Sim::new(scenario, design, seed);
    sim.run();
    let mut res = sim.finish();
    res.wall_clock_ms = started.elapsed().as_secs_f64() * 1e3;
    Ok(res)
}

impl<'a> Sim<'a> {
    fn new(sc: &'a Scenario, design: Design, seed: u64) -> Self {
        let combos = sc.combinations();
        let subnet_index = |id: u32| sc.subnets.iter().position(|s| s.id == id).unwrap_or(0);
        let fn_combo: Vec<usize> =
            sc.functions.iter().map(|f| combos.iter().position(|&c| c == (f.subnet, f.sg_set)).unwrap_or(0)).collect();
        let mut combo_fns = vec![Vec::new(); combos.len()];
        for (i, &c) in fn_combo.iter().enumerate() {
            combo_fns[c].push(i as u32);
        }
        let mut cum = 0.0;
        let func_cum = sc
            .functions
            .iter()
            .map(|f| {
                cum += f.weight;
                cum
            })
            .collect();
        let nf = sc.functions.len();
        let target = match sc.arrival {
            Arrival::Burst { target_concurrency, .. } => Some(target_concurrency),
            _ => None,
        };
        Sim {
            sc,
            design,
            seed,
            heap: BinaryHeap::new(),
            seq: 0,
            primary_pending: 0,
            now: 0.0,
            func_cum,
            arrival_rng: Rng::stream(seed, STREAM_ARRIVAL),
            func_rng: Rng::stream(seed, STREAM_FUNCTION),
            dur_rng: Rng::stream(seed, STREAM_DURATION),
            clients: Vec::new(),
            clients_started: 0,
            issued: 0,
            fn_combo,
            fn_subnet: sc.functions.iter().map(|f| subnet_index(f.subnet)).collect(),
            fn_slots: sc.functions.iter().map(|f| (sc.per_env.worker_mb / f.memory_mb).max(1)).collect(),
            combo_subnet: combos.iter().map(|&(s, _)| subnet_index(s)).collect(),
            combo_fns,
            combo_enis: vec![0; combos.len()],
            combo_conns: vec![0; combos.len()],
            fn_state: vec![FnState::Active; nf],
            fn_last_activity: vec![0.0; nf],
            fn_busy: vec![0; nf],
            fn_idle_pending: vec![false; nf],
            envs: Vec::new(),
            idle_stack: vec![Vec::new(); nf],
            per_env_enis: Vec::new(),
            open_enis: vec![Vec::new(); nf],
            eni_rng: Rng::stream(seed, STREAM_ENI_CREATE),
            subnet_usable: sc.subnets.iter().map(|s| s.usable()).collect(),
            subnet_used: vec![0; sc.subnets.len()],
            subnet_peak: vec![0; sc.subnets.len()],
            live_enis: 0,
            res: DesignResult::empty(design),
            executing: 0,
            live_envs: 0,
            addresses: 0,
            conns: 0,
            target,
            inv_log: Vec::new(),
            exec_log: Vec::new(),
            env_log: Vec::new(),
            addr_log: Vec::new(),
        }
    }

    fn push(&mut self, t: f64, ev: Ev) {
        if ev.primary() {
            self.primary_pending += 1;
        }
        self.seq += 1;
        self.heap.push(Queued { t, seq: self.seq, ev });
    }

    fn run(&mut self) {
        self.setup();
        match self.sc.arrival {
            Arrival::Burst { .. } => {
                let t = self.client_start_time(0);
                self.push(t, Ev::Client(0));
            }
            _ => {
                if let Some(t) = self.next_arrival_time(0.0) {
                    self.push(t, Ev::Arrival);
                }
            }
        }
        let horizon = self.sc.horizon_s.unwrap_or(f64::INFINITY);
        while let Some(q) = self.heap.pop() {
            if q.t > horizon {
                self.now = horizon;
                break;
            }
            let primary = q.ev.primary();
            if primary {
                self.primary_pending -= 1;
            } else if self.primary_pending == 0 {
                // Only housekeeping is left: the workload is over.
                break;
            }
            self.now = q.t;
            self.handle(q.ev);
        }
    }

    /// Shared design: one ENI per combination, created at t = -setup_s.
    fn setup(&mut self) {
        self.exec_log.push((0.0, 0));
        self.env_log.push((0.0, 0));
        if self.design != Design::SharedEni {
            self.addr_log.push((0.0, 0));
            return;
        }
        self.res.setup_s = self.sc.shared.setup_s;
        for c in 0..self.combo_enis.len() {
            if let Err(r) = self.create_shared_eni(c) {
                for &f in &self.combo_fns[c] {
                    self.fn_state[f as usize] = FnState::Failed(r);
                }
            }
        }
        self.addr_log.push((0.0, self.addresses));
        for f in 0..self.fn_state.len() {
            if self.fn_state[f] == FnState::Active {
                self.fn_idle_pending[f] = true;
                self.push(self.sc.shared.idle_reclaim_s, Ev::FnIdle(f as u32));
            }
        }
    }

    fn client_start_time(&self, c: u32) -> f64 {
        match self.sc.arrival {
            Arrival::Burst { target_concurrency, ramp_s } => {
                ramp_s * f64::from(c + 1) / f64::from(target_concurrency.max(1))
            }
            _ => 0.0,
        }
    }

    /// The next open-loop arrival after `t`, or none when the pattern has no more in range.
    fn next_arrival_time(&mut self, t: f64) -> Option<f64> {
        let horizon = self.sc.horizon_s.unwrap_or(f64::INFINITY);
        match self.sc.arrival {
            Arrival::Steady { rate_per_s } => Some(t + self.arrival_rng.exponential(1.0 / rate_per_s)),
            Arrival::Daily { peak_rate_per_s, period_s } => {
                let mut t = t;
                loop {
                    t += self.arrival_rng.exponential(1.0 / peak_rate_per_s);
                    if t > horizon {
                        return Some(t);
                    }
                    let rate = 0.5 * (1.0 - (2.0 * core::f64::consts::PI * t / period_s).cos());
                    if self.arrival_rng.next_f64() < rate {
                        return Some(t);
                    }
                }
            }
            Arrival::Burst { .. } => None,
        }
    }

    fn handle(&mut self, ev: Ev) {
        match ev {
            Ev::Arrival => {
                if self.issued < self.sc.invocations {
                    let f = self.func_rng.weighted_index(&self.func_cum) as u32;
                    let dur = self.sc.duration.sample(&mut self.dur_rng);
                    self.invoke(f, dur, NONE);
                    if self.issued < self.sc.invocations {
                        if let Some(t) = self.next_arrival_time(self.now) {
                            self.push(t, Ev::Arrival);
                        }
                    }
                }
            }
            Ev::Client(c) => {
                if c == self.clients_started {
                    // A new caller: pick its function, give it its own duration stream.
                    self.clients_started += 1;
                    let func = self.func_rng.weighted_index(&self.func_cum) as u32;
                    let rng = Rng::stream(self.seed, STREAM_CLIENT_BASE + u64::from(c));
                    self.clients.push(Client { func, rng });
                    if let Arrival::Burst { target_concurrency, .. } = self.sc.arrival {
                        if self.clients_started < target_concurrency && self.issued < self.sc.invocations {
                            let t = self.client_start_time(self.clients_started);
                            self.push(t, Ev::Client(self.clients_started));
                        }
                    }
                }
                self.client_invoke(c);
            }
            Ev::Start { env, client, dur } => self.start(env, client, dur),
            Ev::Done { env, client } => self.done(env, client),
            Ev::EnvExpire(e) => self.env_expire(e),
            Ev::FnIdle(f) => self.fn_idle(f),
        }
    }

    fn client_invoke(&mut self, c: u32) {
        if self.issued >= self.sc.invocations {
            return;
        }
        let Some(client) = self.clients.get_mut(c as usize) else { return };
        let f = client.func;
        let dur = self.sc.duration.sample(&mut client.rng);
        self.invoke(f, dur, c);
    }

    /// One invocation of function `f` at `now`.
    fn invoke(&mut self, f: u32, dur: f64, client: u32) {
        self.issued += 1;
        self.res.invocations.total += 1;
        let fi = f as usize;
        if let Err(r) = self.admit(f) {
            self.fail(r, client);
            return;
        }
        self.fn_last_activity[fi] = self.now;
        // Warm start: the most recently used idle environment of the function.
        while let Some((e, epoch)) = self.idle_stack[fi].pop() {
            let env = &mut self.envs[e as usize];
            if env.alive && !env.busy && env.epoch == epoch {
                env.busy = true;
                self.fn_busy[fi] += 1;
                self.take_connections(fi);
                self.res.invocations.ok += 1;
                self.res.invocations.warm_starts += 1;
                self.inv_log.push(InvRecord { t: self.now, outcome: Outcome::Warm });
                self.start(e, client, dur);
                return;
            }
        }
        // Cold start.
        let (eni, latency) = match self.design {
            Design::PerEnvironmentEni => match self.per_env_slot(fi) {
                Ok(x) => x,
                Err(r) => {
                    self.fail(r, client);
                    return;
                }
            },
            Design::SharedEni => (NONE, self.sc.shared.flow_entry_s),
        };
        let e = self.envs.len() as u32;
        self.envs.push(Env {
            func: f,
            alive: true,
            busy: true,
            idle_since: self.now,
            epoch: 0,
            expire_pending: false,
            eni,
        });
        self.live_envs += 1;
        self.res.peak_environments = self.res.peak_environments.max(self.live_envs);
        self.env_log.push((self.now, self.live_envs));
        self.fn_busy[fi] += 1;
        self.take_connections(fi);
        self.res.invocations.ok += 1;
        self.res.invocations.cold_starts += 1;
        self.inv_log.push(InvRecord { t: self.now, outcome: Outcome::Cold(latency) });
        if latency > 0.0 {
            self.push(self.now + latency, Ev::Start { env: e, client, dur });
        } else {
            self.start(e, client, dur);
        }
    }

    /// Whether the function may run now; for the shared design also takes the invocation's
    /// connections on the combination's ENIs (adding ENIs past `connections_per_eni`).
    fn admit(&mut self, f: u32) -> Result<(), FailureReason> {
        if self.design != Design::SharedEni {
            return Ok(());
        }
        let fi = f as usize;
        match self.fn_state[fi] {
            FnState::Active => {}
            FnState::Failed(r) => return Err(r),
            FnState::Pending(until) if self.now < until => return Err(FailureReason::ResourceNotReady),
            FnState::Pending(_) => {
                self.fn_state[fi] = FnState::Active;
                if !self.fn_idle_pending[fi] {
                    self.fn_idle_pending[fi] = true;
                    self.push(self.now + self.sc.shared.idle_reclaim_s, Ev::FnIdle(f));
                }
            }
            FnState::Inactive => {
                // The invocation fails and starts the restore.
                let c = self.fn_combo[fi];
                if self.combo_enis[c] == 0 {
                    if let Err(r) = self.create_shared_eni(c) {
                        self.fn_state[fi] = FnState::Failed(r);
                        return Err(r);
                    }
                }
                self.fn_state[fi] = FnState::Pending(self.now + self.sc.shared.setup_s);
                return Err(FailureReason::ResourceNotReady);
            }
        }
        let c = self.fn_combo[fi];
        let need = u64::from(self.sc.shared.connections_per_env);
        let cap = u64::from(self.sc.shared.connections_per_eni);
        while self.combo_conns[c] + need > u64::from(self.combo_enis[c]) * cap {
            self.create_shared_eni(c)?;
        }
        Ok(())
    }

    fn take_connections(&mut self, fi: usize) {
        let need = u64::from(self.sc.shared.connections_per_env);
        self.combo_conns[self.fn_combo[fi]] += need;
        self.conns += need;
        self.res.peak_connections = self.res.peak_connections.max(self.conns);
    }

    fn fail(&mut self, r: FailureReason, client: u32) {
        self.res.invocations.failed += 1;
        self.res.invocations.failed_by_reason.add(r);
        self.inv_log.push(InvRecord { t: self.now, outcome: Outcome::Failed });
        if client != NONE {
            self.push(self.now + self.sc.retry_backoff_s, Ev::Client(client));
        }
    }

    /// Quota, then subnet; takes one address on success.
    fn take_address(&mut self, subnet: usize) -> Result<(), FailureReason> {
        if self.live_enis >= u64::from(self.sc.eni_quota) {
            return Err(FailureReason::EniLimitExceeded);
        }
        if u64::from(self.subnet_used[subnet]) >= self.subnet_usable[subnet] {
            return Err(FailureReason::SubnetOutOfIpAddresses);
        }
        self.live_enis += 1;
        self.res.enis_created += 1;
        self.subnet_used[subnet] += 1;
        self.subnet_peak[subnet] = self.subnet_peak[subnet].max(self.subnet_used[subnet]);
        self.addresses += 1;
        self.res.peak_addresses = self.res.peak_addresses.max(self.addresses);
        self.addr_log.push((self.now.max(0.0), self.addresses));
        Ok(())
    }

    fn release_addresses(&mut self, subnet: usize, n: u32) {
        self.live_enis -= u64::from(n);
        self.res.enis_deleted += u64::from(n);
        self.subnet_used[subnet] -= n;
        self.addresses -= n;
        self.addr_log.push((self.now, self.addresses));
    }

    fn create_shared_eni(&mut self, c: usize) -> Result<(), FailureReason> {
        self.take_address(self.combo_subnet[c])?;
        self.combo_enis[c] += 1;
        Ok(())
    }

    /// Per-environment design: a slot on one of the function's ENIs, or a new ENI.
    /// Returns the ENI and the cold start's network latency.
    fn per_env_slot(&mut self, fi: usize) -> Result<(u32, f64), FailureReason> {
        let k = self.fn_slots[fi];
        let best = self.open_enis[fi]
            .iter()
            .enumerate()
            .min_by(|a, b| {
                let ta = self.per_env_enis[*a.1 as usize].ready_at;
                let tb = self.per_env_enis[*b.1 as usize].ready_at;
                ta.total_cmp(&tb)
            })
            .map(|(i, &id)| (i, id));
        if let Some((i, id)) = best {
            let eni = &mut self.per_env_enis[id as usize];
            eni.used += 1;
            let latency = (eni.ready_at - self.now).max(0.0);
            if eni.used >= k {
                self.open_enis[fi].swap_remove(i);
            }
            return Ok((id, latency));
        }
        let subnet = self.fn_subnet[fi];
        self.take_address(subnet)?;
        let latency = self.sc.per_env.eni_create.sample(&mut self.eni_rng);
        let id = self.per_env_enis.len() as u32;
        self.per_env_enis.push(PerEnvEni { func: fi as u32, subnet, ready_at: self.now + latency, used: 1 });
        if k > 1 {
            self.open_enis[fi].push(id);
        }
        Ok((id, latency))
    }

    fn start(&mut self, env: u32, client: u32, dur: f64) {
        self.executing += 1;
        self.res.peak_concurrency = self.res.peak_concurrency.max(self.executing);
        self.exec_log.push((self.now, self.executing));
        if let Some(target) = self.target {
            if self.res.time_to_target_s.is_none() && self.executing >= target {
                self.res.time_to_target_s = Some(self.now);
            }
        }
        self.push(self.now + dur, Ev::Done { env, client });
    }

    fn done(&mut self, e: u32, client: u32) {
        self.executing -= 1;
        self.exec_log.push((self.now, self.executing));
        let need = u64::from(self.sc.shared.connections_per_env);
        let env = &mut self.envs[e as usize];
        let fi = env.func as usize;
        env.busy = false;
        env.idle_since = self.now;
        env.epoch = env.epoch.wrapping_add(1);
        let epoch = env.epoch;
        let schedule_expire = !env.expire_pending;
        env.expire_pending = true;
        self.idle_stack[fi].push((e, epoch));
        if schedule_expire {
            self.push(self.now + self.sc.env_idle_s, Ev::EnvExpire(e));
        }
        self.fn_busy[fi] -= 1;
        self.fn_last_activity[fi] = self.now;
        let c = self.fn_combo[fi];
        self.combo_conns[c] -= need;
        self.conns -= need;
        if client != NONE {
            self.client_invoke(client);
        }
    }

    fn env_expire(&mut self, e: u32) {
        let env = &mut self.envs[e as usize];
        if !env.alive || env.busy {
            env.expire_pending = false;
            return;
        }
        let due = env.idle_since + self.sc.env_idle_s;
        if due > self.now {
            self.push(due, Ev::EnvExpire(e));
            return;
        }
        env.alive = false;
        env.expire_pending = false;
        let eni = env.eni;
        self.live_envs -= 1;
        self.env_log.push((self.now, self.live_envs));
        if self.design == Design::PerEnvironmentEni && eni != NONE {
            let k = self.fn_slots[self.per_env_enis[eni as usize].func as usize];
            let x = &mut self.per_env_enis[eni as usize];
            let was_full = x.used >= k;
            x.used -= 1;
            let (func, subnet, used) = (x.func as usize, x.subnet, x.used);
            if used == 0 {
                self.open_enis[func].retain(|&id| id != eni);
                self.release_addresses(subnet, 1);
            } else if was_full {
                self.open_enis[func].push(eni);
            }
        }
    }

    fn fn_idle(&mut self, f: u32) {
        let fi = f as usize;
        if self.fn_state[fi] != FnState::Active {
            self.fn_idle_pending[fi] = false;
            return;
        }
        let idle = self.sc.shared.idle_reclaim_s;
        if self.fn_busy[fi] > 0 {
            self.push(self.now + idle, Ev::FnIdle(f));
            return;
        }
        let due = self.fn_last_activity[fi] + idle;
        if due > self.now {
            self.push(due, Ev::FnIdle(f));
            return;
        }
        self.fn_idle_pending[fi] = false;
        self.fn_state[fi] = FnState::Inactive;
        let c = self.fn_combo[fi];
        let all_idle = self.combo_fns[c]
            .iter()
            .all(|&g| matches!(self.fn_state[g as usize], FnState::Inactive | FnState::Failed(_)));
        if all_idle && self.combo_conns[c] == 0 && self.combo_enis[c] > 0 {
            let n = self.combo_enis[c];
            self.combo_enis[c] = 0;
            self.release_addresses(self.combo_subnet[c], n);
        }
    }

    // -----------------------------------------------------------------------------------------
    // Results.

    fn finish(mut self) -> DesignResult {
        let end = self.now.max(1e-9);
        let mut res = std::mem::replace(&mut self.res, DesignResult::empty(self.design));
        res.sim_end_s = self.now;
        res.peak_addresses_by_subnet = self.sc.subnets.iter().zip(&self.subnet_peak).map(|(s, &p)| (s.id, p)).collect();
        let mut lat: Vec<f64> = self
            .inv_log
            .iter()
            .filter_map(|r| match r.outcome {
                Outcome::Cold(l) => Some(l),
                _ => None,
            })
            .collect();
        lat.sort_by(f64::total_cmp);
        res.cold_start_latency = LatencySummary {
            count: lat.len() as u64,
            mean_s: if lat.is_empty() { 0.0 } else { lat.iter().sum::<f64>() / lat.len() as f64 },
            p50_s: percentile(&lat, 0.50).unwrap_or(0.0),
            p99_s: percentile(&lat, 0.99).unwrap_or(0.0),
            max_s: lat.last().copied().unwrap_or(0.0),
        };
        // At most a million buckets, whatever `bucket_s` says.
        let width = self.sc.bucket_s.unwrap_or_else(|| nice_width(end / 200.0)).max(end / 1e6);
        let n = ((end / width).ceil() as usize).clamp(1, 1_000_000);
        res.bucket_s = width;
        let exec = step_max(&self.exec_log, width, n);
        let envs = step_max(&self.env_log, width, n);
        let addrs = step_max(&self.addr_log, width, n);
        let mut series: Vec<Bucket> = (0..n)
            .map(|i| Bucket {
                t_start_s: i as f64 * width,
                t_end_s: (i + 1) as f64 * width,
                invocations: 0,
                failures: 0,
                cold_starts: 0,
                concurrency: exec[i],
                environments: envs[i],
                addresses: addrs[i],
                p50_latency_s: None,
                p99_latency_s: None,
            })
            .collect();
        let mut per_bucket: Vec<Vec<f64>> = vec![Vec::new(); n];
        for r in &self.inv_log {
            let i = ((r.t / width) as usize).min(n - 1);
            let b = &mut series[i];
            b.invocations += 1;
            match r.outcome {
                Outcome::Failed => b.failures += 1,
                Outcome::Cold(l) => {
                    b.cold_starts += 1;
                    per_bucket[i].push(l);
                }
                Outcome::Warm => {}
            }
        }
        for (b, mut v) in series.iter_mut().zip(per_bucket) {
            v.sort_by(f64::total_cmp);
            b.p50_latency_s = percentile(&v, 0.50);
            b.p99_latency_s = percentile(&v, 0.99);
        }
        res.series = series;
        res
    }
}
