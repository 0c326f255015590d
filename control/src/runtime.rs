//! The running gateway with its control plane: the [`Controller`] driven by
//! real time and the dataplane's events, its effects carried out on the
//! workers.
//!
//! A control thread wakes every [`TICK`]: it runs ARP probes on worker 0
//! (two probes 100 ms apart, the verdict at [`PROBE_TIME`]; shorter than
//! RFC 5227's 1–2 s per probe because the VPC link here is ours to reason
//! about), publishes new bindings to every worker, turns engine events into
//! control-plane input (a high-water mark adds an address; a new flow from
//! an environment without an active ENI restores its function), and feeds
//! the controller the live sessions per ENI address (every tick) and the
//! environments with sessions (every five seconds, for idle reclaim).
//! The controller sits behind a mutex: only the control thread and API
//! requests take it, never the packet path.

use crate::config::{self, Config, ConfigError};
use crate::controller::{Controller, Effect};
use crate::gateway::{self, Running, StartError};
use dataplane::time::Instant;
use dataplane::Event;
use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

/// How often the control thread runs.
pub const TICK: Duration = Duration::from_millis(20);
/// How long an address is watched after its first probe.
pub const PROBE_TIME: Duration = Duration::from_millis(300);

/// Why the runtime could not start.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The config.
    #[error("{0}")]
    Config(#[from] ConfigError),
    /// The gateway.
    #[error(transparent)]
    Start(#[from] StartError),
}

/// The control plane and the gateway, running.
pub struct Runtime {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

/// What the control thread and API requests share.
pub struct Shared {
    ctl: Mutex<Controller>,
    /// The gateway.
    pub gateway: Running,
    stop: AtomicBool,
    epoch: std::time::Instant,
}

impl Shared {
    /// The control plane's clock (milliseconds since start, plus a second).
    pub fn now(&self) -> Instant {
        Instant::from_millis(1000 + self.epoch.elapsed().as_millis() as u64)
    }

    /// The controller.
    pub fn controller(&self) -> MutexGuard<'_, Controller> {
        self.ctl.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Applies a new config (TOML text). Settings that need new devices or
    /// engines are refused with the field named; on any error nothing
    /// changes.
    pub fn apply(&self, text: &str) -> Result<Vec<String>, ConfigError> {
        let cfg = config::parse(text)?;
        let mut ctl = self.controller();
        restart_fields(ctl.config(), &cfg)?;
        let changes = ctl.apply(cfg, self.now())?;
        publish(&ctl, &self.gateway);
        Ok(changes)
    }
}

/// Settings that a running gateway cannot take on: they need a restart.
fn restart_fields(old: &Config, new: &Config) -> Result<(), ConfigError> {
    let restart = |field: &str| Err(ConfigError::new(field, "cannot change while running: restart the gateway"));
    if old.outside != new.outside {
        return restart("outside");
    }
    if old.attachments != new.attachments {
        return restart("attachments");
    }
    if old.engine_config() != new.engine_config() {
        return restart("gateway (engine settings)");
    }
    let (a, b) = (&old.gateway, &new.gateway);
    if (a.workers, a.offloads, &a.control_socket) != (b.workers, b.offloads, &b.control_socket) {
        return restart("gateway (workers, offloads or control_socket)");
    }
    Ok(())
}

fn publish(ctl: &Controller, gw: &Running) {
    gw.set_bindings(ctl.bindings());
}

impl Runtime {
    /// Starts the controller for `cfg`, the gateway with the controller's
    /// bindings (no ENI is active until its setup ends), and the control
    /// thread.
    pub fn start(cfg: Config) -> Result<Runtime, Error> {
        let epoch = std::time::Instant::now();
        let ctl = Controller::new(cfg, Instant::from_millis(1000))?;
        let mut plan = ctl.plan().clone();
        plan.bindings = ctl.bindings();
        let gateway = gateway::start(&plan)?;
        let shared = Arc::new(Shared { ctl: Mutex::new(ctl), gateway, stop: AtomicBool::new(false), epoch });
        let s = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("hp-control".into())
            .spawn(move || control_loop(&s))
            .map_err(|e| Error::Start(StartError::Io(e)))?;
        Ok(Runtime { shared, thread: Some(thread) })
    }

    /// What API requests use.
    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// Waits until every function is settled (no ENI being created, no
    /// function pending), or `timeout` passes; true when settled.
    pub fn wait_settled(&self, timeout: Duration) -> bool {
        let t0 = std::time::Instant::now();
        while t0.elapsed() < timeout {
            {
                let ctl = self.shared.controller();
                let pending = ctl.enis().iter().any(|e| e.state == crate::controller::EniState::Creating)
                    || ctl
                        .functions()
                        .iter()
                        .any(|(_, f)| matches!(f.state, crate::controller::FunctionState::Pending(_)));
                if !pending {
                    return true;
                }
            }
            std::thread::sleep(TICK);
        }
        false
    }

    /// Stops the control thread and the gateway.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Runtime {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// An address being probed.
struct Probe {
    eni: u32,
    addr: Ipv4Addr,
    started: std::time::Instant,
    second_sent: bool,
}

fn control_loop(s: &Shared) {
    let mut probes: Vec<Probe> = vec![];
    let mut live: BTreeMap<Ipv4Addr, u64> = BTreeMap::new();
    let mut last_activity = std::time::Instant::now();
    while !s.stop.load(Ordering::Relaxed) {
        std::thread::sleep(TICK);
        let now = s.now();
        // Engine events.
        let mut events = vec![];
        while let Ok((_, ev)) = s.gateway.events.try_recv() {
            events.push(ev);
        }
        // Live sessions per ENI address, and environments with traffic.
        // (The gauges are atomics the workers keep: cheap to read each tick.)
        live.clear();
        for c in s.gateway.counters() {
            for (addr, in_use) in c.port_use() {
                *live.entry(addr).or_default() += in_use.iter().map(|&n| u64::from(n)).sum::<u64>();
            }
        }
        let active_envs = if last_activity.elapsed() >= Duration::from_secs(5) {
            last_activity = std::time::Instant::now();
            let per_worker = s.gateway.query(|e| {
                let mut v = std::collections::BTreeSet::new();
                e.sessions().for_each(|_, x| {
                    v.insert(x.inside.ip);
                });
                v
            });
            per_worker.into_iter().flatten().collect()
        } else {
            vec![]
        };

        let mut ctl = s.controller();
        for ev in events {
            match ev {
                Event::HighWater { addr, .. } => ctl.high_water(addr, now),
                Event::NoEni { env } => ctl.traffic(env, now),
                Event::Exhausted { addr, proto } => tracing::warn!(%addr, proto, "ports exhausted"),
            }
        }
        for env in active_envs {
            ctl.traffic(env, now);
        }
        // Probes in flight: a second probe, then the verdict.
        let mut i = 0;
        while i < probes.len() {
            let p = &mut probes[i];
            if !p.second_sent && p.started.elapsed() >= PROBE_TIME / 3 {
                p.second_sent = true;
                let addr = p.addr;
                s.gateway.call(0, move |e| e.probe(addr));
            }
            if p.started.elapsed() >= PROBE_TIME {
                let p = probes.swap_remove(i);
                let addr = p.addr;
                let claimed = s.gateway.call(0, move |e| e.probe_result(addr)).flatten().unwrap_or(false);
                ctl.probe_done(p.eni, p.addr, claimed, now);
                continue;
            }
            i += 1;
        }
        ctl.tick(now, &live);
        let mut republish = false;
        while let Some(effect) = ctl.poll_effect() {
            match effect {
                Effect::Probe { eni, addr } => {
                    s.gateway.call(0, move |e| e.probe(addr));
                    probes.push(Probe { eni, addr, started: std::time::Instant::now(), second_sent: false });
                }
                Effect::Publish => republish = true,
            }
        }
        if republish {
            publish(&ctl, &s.gateway);
        }
    }
}
