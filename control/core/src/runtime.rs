//! The running gateway with its control plane: the [`Controller`] driven by
//! real time and the dataplane's events, its effects carried out on the
//! workers.
//!
//! A control thread wakes on engine events, every [`TICK`] while ARP probes
//! are in flight and every [`IDLE_TICK`] otherwise: it runs ARP probes on worker 0
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
use crate::controller::{Controller, Effect, Growth, Registry};
use crate::gateway::{self, RunningGateway, StartError};
use dataplane::time::Instant;
use dataplane::Event;
use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

/// How often the control thread runs while probes are in flight.
pub const TICK: Duration = Duration::from_millis(20);
/// How often it runs otherwise (engine events wake it at once).
pub const IDLE_TICK: Duration = Duration::from_millis(250);
/// How long an address is watched after its first probe.
pub const PROBE_TIME: Duration = Duration::from_millis(300);

/// Why the runtime could not start.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
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
    /// The controller's ENI and function registries, read by API requests
    /// without taking `ctl`.
    registry: Arc<Registry>,
    /// The gateway.
    pub gateway: RunningGateway,
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
    if a.io != b.io {
        return restart("gateway.io");
    }
    Ok(())
}

fn publish(ctl: &Controller, gw: &RunningGateway) {
    gw.set_bindings(ctl.bindings());
}

impl Runtime {
    /// Starts the controller for `cfg`, the gateway with the controller's
    /// bindings (no ENI is active until its setup ends), and the control
    /// thread.
    pub fn start(cfg: Config) -> Result<Runtime, RuntimeError> {
        let epoch = std::time::Instant::now();
        let ctl = Controller::new(cfg, Instant::from_millis(1000))?;
        let mut plan = ctl.plan().clone();
        plan.bindings = ctl.bindings();
        let gateway = gateway::start(&plan)?;
        let shared = Arc::new(Shared {
            registry: Arc::clone(ctl.registry()),
            ctl: Mutex::new(ctl),
            gateway,
            stop: AtomicBool::new(false),
            epoch,
        });
        let s = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("hp-control".into())
            .spawn(move || control_loop(&s))
            .map_err(|e| RuntimeError::Start(StartError::Io(e)))?;
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

/// How often one warning about the same address and outcome is logged.
const WARN_EVERY: Duration = Duration::from_secs(10);

/// A small key for rate-limiting log lines per outcome.
fn growth_kind(g: Growth) -> u8 {
    match g {
        Growth::Unknown => 0,
        Growth::Busy(_) => 1,
        Growth::Room(_) => 2,
        Growth::AtMax(..) => 3,
        Growth::SubnetFull(_) => 4,
        Growth::Adding(..) => 5,
    }
}

fn control_loop(s: &Shared) {
    let mut probes: Vec<Probe> = vec![];
    let mut warned: BTreeMap<(u8, Ipv4Addr), std::time::Instant> = BTreeMap::new();
    let mut live: BTreeMap<Ipv4Addr, u64> = BTreeMap::new();
    let mut last_activity = std::time::Instant::now();
    while !s.stop.load(Ordering::Relaxed) {
        // Sleep until an engine event arrives, or the next tick: short while
        // probes run, long when there is nothing to time.
        let wait = if probes.is_empty() { IDLE_TICK } else { TICK };
        let mut events = vec![];
        if let Ok((_, ev)) = s.gateway.events.recv_timeout(wait) {
            events.push(ev);
        }
        let now = s.now();
        while let Ok((_, ev)) = s.gateway.events.try_recv() {
            events.push(ev);
        }
        // Live sessions per ENI address, and environments with traffic.
        // (The gauges are atomics the workers keep: cheap to read each tick.)
        // Ended connections still hold their ports: an ENI drains until
        // they are gone too.
        live.clear();
        if s.gateway.counters().iter().any(|c| c.addrs_ungauged.get() > 0) {
            // Some address has no gauge (past `ADDR_GAUGES` on a worker):
            // ask the engines, or a draining address would look empty.
            for per_worker in s.gateway.query(|e| e.port_use()) {
                for p in per_worker {
                    *live.entry(p.addr).or_default() +=
                        (0..3).map(|i| u64::from(p.in_use[i] + p.closing[i])).sum::<u64>();
                }
            }
        } else {
            for c in s.gateway.counters() {
                for (addr, g) in c.port_gauges() {
                    *live.entry(addr).or_default() +=
                        (0..3).map(|i| u64::from(g.in_use[i] + g.closing[i])).sum::<u64>();
                }
            }
        }
        let active_envs = if last_activity.elapsed() >= Duration::from_secs(5) {
            last_activity = std::time::Instant::now();
            // Each engine keeps live-session counts per environment: this
            // costs the environments, not the table, on every worker.
            let per_worker = s.gateway.query(|e| {
                let mut v = Vec::new();
                e.active_envs(|ip| v.push(ip));
                v
            });
            per_worker.into_iter().flatten().collect()
        } else {
            vec![]
        };

        let mut ctl = s.controller();
        for ev in events {
            let (addr, proto, exhausted) = match ev {
                Event::NoEni { env } => {
                    ctl.traffic(env, now);
                    continue;
                }
                Event::HighWater { addr, proto, .. } => (addr, proto, false),
                Event::Exhausted { addr, proto } => (addr, proto, true),
            };
            let growth = ctl.high_water(addr, now, exhausted);
            // One line per ENI and outcome at most every 10 s, however many
            // flows are refused meanwhile (each one is counted).
            let key = (growth_kind(growth), addr);
            let due = warned.get(&key).is_none_or(|t: &std::time::Instant| t.elapsed() >= WARN_EVERY);
            match growth {
                Growth::Adding(eni, new) => tracing::info!(eni, %addr, proto, %new, exhausted, "adding an address"),
                Growth::AtMax(eni, max) if exhausted && due => {
                    tracing::warn!(eni, %addr, proto, max, "ports exhausted and the ENI has max_eni_addresses")
                }
                Growth::SubnetFull(eni) if due => {
                    tracing::warn!(eni, %addr, proto, "ports past the high-water mark and the subnet is full")
                }
                Growth::Busy(_) | Growth::Room(_) | Growth::AtMax(..) | Growth::SubnetFull(_) | Growth::Unknown => {
                    continue
                }
            }
            warned.insert(key, std::time::Instant::now());
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

// ----- the runtime API ------------------------------------------------------

use crate::api::{
    ApplyReport, EniAddresses, EniStatus, FunctionStatus, Headroom, IoStats, PortUseLine, ProtoCounts, Request,
    Response, SessionLine, SessionsReport, SetupStep, StatsReport, StatusReport,
};
use dataplane::flow::{ICMP, TCP};

const PROTOS: [&str; 3] = ["tcp", "udp", "icmp"];

/// Session table slots a worker looks at per control-plane call (walks for
/// `sessions` and `flush`): about a millisecond of a worker's time.
pub const WALK_SLOTS: usize = 16_384;

/// Which sessions a flush removes: every field that is set must match.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SessionFilter {
    /// The execution environment (its address).
    pub env: Option<Ipv4Addr>,
    /// The shared ENI (its id).
    pub eni: Option<u32>,
    /// `tcp`, `udp` or `icmp`.
    pub proto: Option<String>,
    /// The remote address.
    pub dst: Option<Ipv4Addr>,
    /// The remote port (ICMP: the query id).
    pub dport: Option<u16>,
    /// The environment's source port.
    pub sport: Option<u16>,
}

/// One session as the API shows it.
fn session_line(
    owners: &BTreeMap<Ipv4Addr, u32>,
    now: Instant,
    s: &dataplane::session::Session,
    deadline: Instant,
    (packets_out, packets_in): (u64, u64),
) -> SessionLine {
    let v4 = |ep: dataplane::flow::Endpoint| std::net::SocketAddrV4::new(ep.ip, ep.port);
    SessionLine {
        proto: match s.proto {
            TCP => "tcp",
            ICMP => "icmp",
            _ => "udp",
        }
        .to_string(),
        timeout_s: deadline.saturating_since(now).as_secs(),
        state: if s.proto == TCP { format!("{:?}", s.tcp) } else { "-".into() },
        env: s.inside.ip,
        eni: owners.get(&s.eni.ip).copied(),
        original_src: v4(s.inside),
        original_dst: v4(s.remote),
        translated_src: v4(s.eni),
        translated_dst: v4(s.remote),
        packets_out,
        bytes_out: s.out_bytes,
        packets_in,
        bytes_in: s.in_bytes,
    }
}

impl Shared {
    /// Answers one runtime API request (see [`crate::api`]).
    pub fn handle(&self, req: Request) -> Response {
        match req {
            Request::Status => Response::Status(self.status()),
            Request::Sessions { eni, env, limit } => Response::Sessions(self.sessions(eni, env, limit)),
            Request::Stats => Response::Stats(self.stats()),
            Request::Apply { config } => match self.apply(&config) {
                Ok(changes) => Response::Applied(ApplyReport { changes }),
                Err(e) => Response::Error { message: e.to_string() },
            },
            Request::Flush { env, eni, proto, dst, dport, sport } => {
                match self.flush(&SessionFilter { env, eni, proto, dst, dport, sport }) {
                    Ok(removed) => Response::Flushed(crate::api::FlushReport { removed }),
                    Err(message) => Response::Error { message },
                }
            }
            Request::Capture { port, out, count, seconds } => match self.capture(&port, &out, count, seconds) {
                Ok(r) => Response::Captured(r),
                Err(message) => Response::Error { message },
            },
        }
    }

    /// Walks every worker's session table [`WALK_SLOTS`] slots at a time,
    /// one call per chunk, so a worker is away from its frames for one
    /// chunk's walk at most, whatever the table size; `f` runs on the
    /// worker for each session of the chunk and `done` on the control side
    /// with each chunk's results.
    fn walk_chunks<R: Send + 'static>(
        &self,
        f: impl Fn(&mut dataplane::Engine, u32, usize) -> (R, Option<u32>) + Send + Sync + 'static,
        mut done: impl FnMut(R),
    ) {
        let f = Arc::new(f);
        for w in 0..self.gateway.workers() {
            let mut cursor = Some(0u32);
            while let Some(start) = cursor {
                let f = Arc::clone(&f);
                let Some((r, next)) = self.gateway.call(w, move |e| f(e, start, WALK_SLOTS)) else {
                    break;
                };
                done(r);
                cursor = next;
            }
        }
    }

    /// Captures the frames one port (an attachment's name or the outside
    /// interface's) receives and sends into the pcap file `out`, until
    /// `count` frames (default 1,000) or `seconds` (default 10) pass,
    /// within [`crate::api::CAPTURE_MAX_FRAMES`] and
    /// [`crate::api::CAPTURE_MAX_SECONDS`]. One capture at a time. Errors
    /// name the field.
    pub fn capture(
        &self,
        port: &str,
        out: &std::path::Path,
        count: Option<u64>,
        seconds: Option<f64>,
    ) -> Result<crate::api::CaptureReport, String> {
        use crate::api::{CAPTURE_MAX_FRAMES, CAPTURE_MAX_SECONDS};
        let id = {
            let ctl = self.controller();
            let plan = ctl.plan();
            if plan.outside.name == port {
                dataplane::PortId::OUTSIDE
            } else {
                match plan.attachments.iter().find(|a| a.name == port) {
                    Some(a) => a.port,
                    None => return Err(format!("port: {port:?} is neither an attachment nor the outside interface")),
                }
            }
        };
        let count = count.unwrap_or(1000);
        if count == 0 || count > CAPTURE_MAX_FRAMES {
            return Err(format!("count: {count} is not within 1..={CAPTURE_MAX_FRAMES}"));
        }
        let seconds = seconds.unwrap_or(10.0);
        if !(seconds > 0.0 && seconds <= CAPTURE_MAX_SECONDS) {
            return Err(format!("seconds: {seconds} is not within (0, {CAPTURE_MAX_SECONDS}]"));
        }
        if !out.is_absolute() {
            return Err(format!("out: {} is not an absolute path", out.display()));
        }
        if self.gateway.capture().running() {
            return Err("capture: another capture is running; try again when it ends".into());
        }
        let file = std::fs::File::create(out).map_err(|e| format!("out: cannot create {}: {e}", out.display()))?;
        let mut w = std::io::BufWriter::new(file);
        tracing::info!(port, out = %out.display(), count, seconds, "capture started");
        let t0 = std::time::Instant::now();
        let r = self.gateway.capture().run(id, &mut w, count, Duration::from_secs_f64(seconds));
        let took = t0.elapsed().as_secs_f64();
        match r {
            Ok(s) => {
                tracing::info!(port, out = %out.display(), frames = s.frames, dropped = s.dropped, "capture ended");
                Ok(crate::api::CaptureReport {
                    out: out.to_path_buf(),
                    frames: s.frames,
                    dropped: s.dropped,
                    seconds: took,
                })
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                let _ = std::fs::remove_file(out);
                Err("capture: another capture is running; try again when it ends".into())
            }
            Err(e) => Err(format!("out: writing {}: {e}", out.display())),
        }
    }

    /// Removes the sessions `filter` matches on every worker, a chunk at a
    /// time; counted (`sessions_flushed`) and logged. Errors name the field.
    pub fn flush(&self, filter: &SessionFilter) -> Result<u64, String> {
        let proto = match filter.proto.as_deref() {
            None => None,
            Some("tcp") => Some(TCP),
            Some("udp") => Some(dataplane::flow::UDP),
            Some("icmp") => Some(ICMP),
            Some(p) => return Err(format!("proto: {p:?} is not one of tcp, udp, icmp")),
        };
        // The ENI's addresses, looked up once (a handful), not per session.
        let eni_addrs: Option<Vec<Ipv4Addr>> = match filter.eni {
            None => None,
            Some(id) => match self.registry.enis().into_iter().find(|e| e.id == id) {
                Some(e) => Some(e.addrs),
                None => return Err(format!("eni: no shared ENI has id {id}")),
            },
        };
        let (env, dst, dport, sport) = (filter.env, filter.dst, filter.dport, filter.sport);
        let now = self.now();
        let mut removed = 0u64;
        self.walk_chunks(
            move |e, start, slots| {
                let w = e.remove_sessions(now, start, slots, |s| {
                    env.is_none_or(|a| a == s.inside.ip)
                        && proto.is_none_or(|p| p == s.proto)
                        && dst.is_none_or(|a| a == s.remote.ip)
                        && dport.is_none_or(|p| p == s.remote.port)
                        && sport.is_none_or(|p| p == s.inside.port)
                        && eni_addrs.as_ref().is_none_or(|a| a.contains(&s.eni.ip))
                });
                (w.matched, w.next)
            },
            |n| removed += n,
        );
        tracing::info!(
            removed,
            env = ?filter.env,
            eni = ?filter.eni,
            proto = ?filter.proto,
            dst = ?filter.dst,
            dport = ?filter.dport,
            sport = ?filter.sport,
            "sessions flushed by request"
        );
        Ok(removed)
    }

    fn port_use(&self) -> Vec<PortUseLine> {
        let range = self.controller().plan().engine.port_range.clone();
        let capacity = u32::from(*range.end()) - u32::from(*range.start()) + 1;
        let mut by_addr: BTreeMap<Ipv4Addr, dataplane::counters::PortGauge> = BTreeMap::new();
        for c in self.gateway.counters() {
            for (addr, g) in c.port_gauges() {
                let e = by_addr.entry(addr).or_default();
                for i in 0..3 {
                    e.in_use[i] += g.in_use[i];
                    e.closing[i] += g.closing[i];
                    e.cooling[i] += g.cooling[i];
                    e.quarantined[i] += g.quarantined[i];
                }
            }
        }
        let counts = |a: [u32; 3]| ProtoCounts { tcp: a[0], udp: a[1], icmp: a[2] };
        by_addr
            .into_iter()
            .map(|(addr, g)| PortUseLine {
                addr,
                tcp: g.in_use[0],
                udp: g.in_use[1],
                icmp: g.in_use[2],
                closing: counts(g.closing),
                cooling: counts(g.cooling),
                quarantined: counts(g.quarantined),
                capacity,
            })
            .collect()
    }

    /// Room for new connections: session tables and ENI addresses.
    fn headroom(&self) -> Headroom {
        let cs = self.gateway.counters();
        let sum = |f: &dyn Fn(&dataplane::counters::Counters) -> u64| cs.iter().map(|c| f(c)).sum::<u64>();
        let max = self.controller().config().gateway.max_eni_addresses.max(1);
        Headroom {
            sessions: self.gateway.totals().live.iter().sum(),
            sessions_recyclable: sum(&|c| c.sessions_recyclable.get()),
            sessions_capacity: sum(&|c| c.sessions_capacity.get()),
            sessions_recycled: sum(&|c| c.sessions_recycled.get()),
            sessions_evicted: sum(&|c| c.sessions_evicted.get()),
            sessions_reopened: sum(&|c| c.sessions_reopened.get()),
            eni_addresses: self
                .registry
                .enis()
                .iter()
                .map(|e| EniAddresses { eni: e.id, addresses: e.addrs.len() as u32, max })
                .collect(),
        }
    }

    /// ENIs and functions.
    pub fn status(&self) -> StatusReport {
        let ports = self.port_use();
        let reg = &self.registry;
        let enis = reg
            .enis()
            .into_iter()
            .map(|e| EniStatus {
                id: e.id,
                subnet: e.key.subnet.clone(),
                security_groups: e.key.security_groups.clone(),
                port_use: ports.iter().filter(|p| e.addrs.contains(&p.addr)).cloned().collect(),
                addrs: e.addrs.clone(),
                generation: e.generation,
                state: e.state.label().to_string(),
                functions: e.functions.iter().cloned().collect(),
                sessions: e.sessions,
                setup_ms: e.setup_time().map(|d| d.as_secs_f64() * 1000.0),
                setup_steps: e
                    .steps
                    .iter()
                    .map(|(s, d)| SetupStep { step: s.clone(), ms: d.as_secs_f64() * 1000.0 })
                    .collect(),
            })
            .collect();
        let functions = reg
            .functions()
            .into_iter()
            .map(|(name, f)| {
                let (state, state_reason) = f.state.parts();
                let (last, last_reason) = f.last_update.parts();
                let mut enis: Vec<u32> =
                    f.bound.values().chain(f.target.values()).filter_map(|k| reg.eni_for(k).map(|e| e.id)).collect();
                enis.sort_unstable();
                enis.dedup();
                FunctionStatus {
                    name,
                    state: state.to_string(),
                    state_reason,
                    last_update_status: last.to_string(),
                    last_update_reason: last_reason,
                    enis,
                }
            })
            .collect();
        StatusReport { enis, functions, headroom: self.headroom() }
    }

    /// Sessions, filtered by ENI and environment, at most `limit` (the
    /// first by environment, source port and destination). The tables are
    /// walked a chunk at a time ([`Shared::walk_chunks`]); with a limit,
    /// at most twice that many lines are held while walking.
    pub fn sessions(&self, eni: Option<u32>, env: Option<Ipv4Addr>, limit: Option<usize>) -> SessionsReport {
        let now = self.now();
        // Which ENI owns each address, looked up once per request.
        let owners: BTreeMap<Ipv4Addr, u32> =
            self.registry.enis().iter().flat_map(|e| e.addrs.iter().map(move |a| (*a, e.id))).collect();
        let key = |l: &SessionLine| (l.env, l.original_src.port(), l.original_dst);
        let mut lines: Vec<SessionLine> = Vec::new();
        let mut total = 0usize;
        self.walk_chunks(
            move |e, start, slots| {
                let t = *e.sessions().timeouts();
                let mut v = vec![];
                let table = e.sessions();
                let w = e.walk_sessions(start, slots, |id, s| {
                    if env.is_none_or(|a| a == s.inside.ip) {
                        v.push((*s, s.deadline(&t), table.out_packets(id), table.in_packets(id)));
                    }
                });
                (v, w.next)
            },
            |chunk| {
                for (s, deadline, packets_out, packets_in) in chunk {
                    let line = session_line(&owners, now, &s, deadline, (packets_out, packets_in));
                    if eni.is_none() || line.eni == eni {
                        total += 1;
                        lines.push(line);
                    }
                }
                if let Some(n) = limit {
                    if lines.len() > n.saturating_mul(2).max(WALK_SLOTS) {
                        lines.sort_by_key(key);
                        lines.truncate(n);
                    }
                }
            },
        );
        lines.sort_by_key(key);
        if let Some(n) = limit {
            lines.truncate(n);
        }
        SessionsReport { sessions: lines, total }
    }

    /// Counters, drops by reason, port use, ENI setup times.
    pub fn stats(&self) -> StatsReport {
        let cs = self.gateway.counters();
        let sum = |f: &dyn Fn(&dataplane::counters::Counters) -> u64| cs.iter().map(|c| f(c)).sum::<u64>();
        let t = self.gateway.totals();
        let per_proto = |f: &dyn Fn(&dataplane::counters::Counters, usize) -> u64| {
            PROTOS.iter().enumerate().map(|(i, p)| (p.to_string(), cs.iter().map(|c| f(c, i)).sum())).collect()
        };
        let eni_setup_seconds =
            self.controller().enis().iter().filter_map(|e| e.setup_time().map(|d| (e.id, d.as_secs_f64()))).collect();
        StatsReport {
            workers: self.gateway.workers(),
            rx_frames: sum(&|c| c.rx_frames.get()),
            outbound_packets: t.outbound.0,
            outbound_bytes: t.outbound.1,
            inbound_packets: t.inbound.0,
            inbound_bytes: t.inbound.1,
            hairpinned: t.hairpinned,
            sessions: PROTOS.iter().zip(t.live).map(|(p, n)| (p.to_string(), n)).collect(),
            sessions_created: per_proto(&|c, i| c.sessions_created[i].get()),
            sessions_expired: per_proto(&|c, i| c.sessions_expired[i].get()),
            sessions_flushed: sum(&|c| c.sessions_flushed.get()),
            drops: dataplane::counters::DropReason::ALL
                .iter()
                .map(|&r| (r.label().to_string(), sum(&|c| c.dropped(r))))
                .collect(),
            port_use: self.port_use(),
            eni_setup_seconds,
            headroom: self.headroom(),
            io: Box::new(self.io_stats(t.outbound.0 + t.inbound.0)),
        }
    }

    /// The I/O path and its system calls; `packets`: forwarded so far.
    fn io_stats(&self, packets: u64) -> IoStats {
        let calls = self.gateway.syscalls();
        let total: u64 = calls.iter().sum();
        IoStats {
            backend: self.gateway.io_backend(),
            syscalls: dataplane_io::syscalls::KINDS.iter().zip(calls).map(|(k, n)| (k.to_string(), n)).collect(),
            syscalls_per_packet: if packets == 0 { 0.0 } else { total as f64 / packets as f64 },
            vhost_user: self
                .gateway
                .inside
                .iter()
                .filter_map(|d| match d.as_ref() {
                    dataplane_io::Inside::VhostUser(v) => Some((
                        v.name().to_string(),
                        v.counters().snapshot().iter().map(|&(k, n)| (k.to_string(), n)).collect(),
                    )),
                    _ => None,
                })
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The workers' I/O path (`[gateway.io]`: backend, busy poll, CPUs) is
    /// set when they start: a change is refused, naming it, not taken
    /// silently.
    #[test]
    fn the_io_path_needs_a_restart() {
        let old = crate::config::parse(include_str!("../examples/gateway.toml")).expect("the example parses");
        assert!(restart_fields(&old, &old.clone()).is_ok());
        let mut pinned = old.clone();
        pinned.gateway.io.cpus = vec![0];
        let mut polling = old.clone();
        polling.gateway.io.busy_poll_us = 10;
        for new in [pinned, polling] {
            let e = restart_fields(&old, &new).expect_err("refused");
            assert_eq!(e.field, "gateway.io");
            assert!(e.reason.contains("restart"), "{e}");
        }
    }
}
