//! What a run is asked to do ([`LoadArgs`], [`Scenario`], [`Target`], the
//! [`StopHandle`]), how it is checked before anything is built
//! ([`LoadArgs::validate`]: an error names the parameter), and why a run
//! fails ([`LoadError`]).

use super::*;

/// What to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Scenario {
    /// Raw UDP frames, packets/s.
    Udp,
    /// TCP streams, Gbit/s.
    TcpBulk,
    /// Connect, request, response, close; connections/s and setup latency.
    Connect,
    /// A share of each.
    Mixed,
}

impl Scenario {
    /// Parses `udp`, `tcp-bulk`, `connect`, `mixed`.
    pub fn parse(s: &str) -> Result<Scenario, LoadError> {
        Ok(match s {
            "udp" => Scenario::Udp,
            "tcp-bulk" | "bulk" => Scenario::TcpBulk,
            "connect" => Scenario::Connect,
            "mixed" => Scenario::Mixed,
            _ => return Err(invalid("scenario", format!("{s:?} is not udp, tcp-bulk, connect or mixed"))),
        })
    }

    /// The name `parse` accepts.
    pub fn name(self) -> &'static str {
        match self {
            Scenario::Udp => "udp",
            Scenario::TcpBulk => "tcp-bulk",
            Scenario::Connect => "connect",
            Scenario::Mixed => "mixed",
        }
    }
}

/// Which NAT the load goes through.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Target {
    /// Our gateway (in-process, shared attachment).
    Ours,
    /// The kernel's nftables masquerade.
    Kernel,
    /// A NAT someone else runs between two links ([`LoadArgs::external`], [`external`]).
    External,
}

impl Target {
    /// `ours`, `kernel` or `external`.
    pub fn name(self) -> &'static str {
        match self {
            Target::Ours => "ours",
            Target::Kernel => "kernel",
            Target::External => "external",
        }
    }
}

/// Stops a run early (see the module doc); clones share the flag. SIGINT and SIGTERM, once [`control::signals`] is
/// installed (the `hyperplane` binary does), count as a stop too.
#[derive(Clone, Debug, Default)]
pub struct StopHandle(Arc<AtomicBool>);

impl StopHandle {
    /// A handle not stopped yet.
    pub fn new() -> StopHandle {
        StopHandle::default()
    }

    /// Asks the run to stop: the offered load ends at once and the report covers what was measured.
    pub fn stop(&self) {
        self.0.store(true, Ordering::Relaxed);
    }

    /// Whether a stop was asked for (by [`StopHandle::stop`] or a signal).
    pub fn is_stopped(&self) -> bool {
        self.0.load(Ordering::Relaxed) || control::signals::stopped()
    }
}

/// The load generator's arguments. See the module doc for units.
#[derive(Clone, Debug)]
pub struct LoadArgs {
    /// The scenario.
    pub scenario: Scenario,
    /// Environments; `None`: 1000 (udp, connect, mixed) or 16 (tcp-bulk).
    pub envs: Option<usize>,
    /// Length of the offered load (default 5 s, at most [`MAX_DURATION`]).
    pub duration: Duration,
    /// Open-loop rate: packets/s (udp) or connection starts/s (connect, mixed); `None`: as fast as possible.
    pub rate: Option<f64>,
    /// UDP payload bytes, 64..=1472 (udp, mixed).
    pub payload: usize,
    /// Environments appear evenly over this time, each starting at once.
    pub ramp: Duration,
    /// Our gateway or the kernel.
    pub target: Target,
    /// JSON wanted (suppresses the progress bar).
    pub json: bool,
    /// Where to write `report.json` and the SVG plots (`None`: nothing written).
    pub out_dir: Option<PathBuf>,
    /// Our gateway's `port_range` (e.g. `"2000-2049"`); `None`: the default.
    pub port_range: Option<String>,
    /// Our gateway's `max_eni_addresses` (1: the ENI never grows, so a
    /// small port range runs out); `None`: the default.
    pub max_eni_addresses: Option<u32>,
    /// Our gateway's worker threads (0: one per core).
    pub workers: usize,
    /// connect: each environment connects once (cold start) instead of repeatedly.
    pub once: bool,
    /// udp / mixed: the responder echoes every datagram and the environments count the echoes.
    pub echo: bool,
    /// A connection not established within this time is aborted (timeout); also bounds the other phases.
    pub connect_timeout: Duration,
    /// Show a progress bar (only if stderr is a terminal and `json` is off).
    pub progress: bool,
    /// One loadgen TAP per environment (and, against ours, one gateway attachment per environment) instead of one
    /// shared TAP; at most [`MAX_TAP_ENVS`] environments; tcp-bulk, connect and mixed only.
    pub tap_per_env: bool,
    /// Our gateway's `[gateway]` settings from a config file (`--config`; target ours only).
    pub gateway: Option<GatewayTable>,
    /// Stops the run early (also SIGINT/SIGTERM).
    pub stop: StopHandle,
    /// One thread per CPU listed, pinned to it: udp, a writer each ([`sender`]); tcp-bulk, connect and mixed, a
    /// shard of the environments each (environment `i` on thread `i mod len`, see [`envs`]), with a reader thread
    /// handing them their frames. Empty: one unpinned writer, or every environment on the calling thread.
    pub cpus: Vec<usize>,
    /// The NAT under test when `target` is [`Target::External`] (`--inside`, `--outside`, ...; see [`external`]).
    pub external: Option<ExternalNat>,
    /// udp: how the writers hand a batch to a TAP queue (`--tap-writes`).
    pub tap_writes: sender::TapWrites,
    /// udp with `cpus`: the loadgen TAP's receive path on the CPUs not writing (`--spread-receive`; receive packet
    /// steering, `rps_cpus`); off, it runs inside the writers' own system calls, as a sender's does through a veth.
    /// Frames the receiving CPUs' backlogs cannot take are counted as `receive_backlog_overflow` (machine-wide).
    pub spread_receive: bool,
    /// udp: after the load, trafgen (netsniff-ng) sends one flow for as long from the first of `cpus` (CPU 0 without
    /// them) on the same link, counted by the same VPC counter ([`crate::trafgen`]); the report carries both.
    pub trafgen: bool,
}

impl Default for LoadArgs {
    fn default() -> LoadArgs {
        LoadArgs {
            scenario: Scenario::Udp,
            envs: None,
            duration: Duration::from_secs(5),
            rate: None,
            payload: 64,
            ramp: Duration::ZERO,
            target: Target::Ours,
            json: false,
            out_dir: None,
            port_range: None,
            max_eni_addresses: None,
            workers: 0,
            once: false,
            echo: false,
            connect_timeout: Duration::from_secs(3),
            progress: true,
            tap_per_env: false,
            gateway: None,
            stop: StopHandle::new(),
            cpus: Vec::new(),
            external: None,
            tap_writes: sender::TapWrites::default(),
            spread_receive: false,
            trafgen: false,
        }
    }
}

impl LoadArgs {
    /// The number of environments this run uses.
    pub fn env_count(&self) -> usize {
        self.envs.unwrap_or(if self.scenario == Scenario::TcpBulk { 16 } else { 1000 })
    }

    /// Checks every argument; the error names the parameter.
    pub fn validate(&self) -> Result<(), LoadError> {
        let n = self.env_count();
        if n == 0 || n > MAX_ENVS {
            return Err(invalid("envs", format!("{n} is not in 1..={MAX_ENVS}")));
        }
        if self.tap_per_env && n > MAX_TAP_ENVS {
            return Err(invalid("envs", format!("{n} is above {MAX_TAP_ENVS}, the most with tap_per_env")));
        }
        if self.tap_per_env && self.scenario == Scenario::Udp {
            return Err(invalid("tap_per_env", "the raw udp scenario uses one TAP; use mixed for UDP".into()));
        }
        if self.duration.is_zero() {
            return Err(invalid("duration", "must be longer than 0".into()));
        }
        if self.duration > MAX_DURATION {
            return Err(invalid(
                "duration",
                format!(
                    "{} is longer than the longest run, {}",
                    settings::human_duration(self.duration),
                    settings::human_duration(MAX_DURATION)
                ),
            ));
        }
        if self.spread_receive
            && (self.cpus.is_empty() || self.target == Target::External || self.scenario != Scenario::Udp)
        {
            return Err(invalid(
                "spread_receive",
                "needs the udp scenario's pinned writers (--cpus) into a built-in target".into(),
            ));
        }
        if self.trafgen && (self.scenario != Scenario::Udp || self.rate.is_some()) {
            return Err(invalid("trafgen", "the trafgen check is for the unpaced udp scenario".into()));
        }
        let ncpu = std::thread::available_parallelism().map_or(1, |n| n.get());
        if let Some(c) = self.cpus.iter().find(|&&c| c >= ncpu) {
            return Err(invalid("cpus", format!("CPU {c} is not one of this machine's {ncpu} (0..{ncpu})")));
        }
        if self.spread_receive && (0..ncpu).all(|c| self.cpus.contains(&c)) {
            return Err(invalid(
                "spread_receive",
                format!("--cpus names every CPU of this machine's {ncpu}: none is left to receive on"),
            ));
        }
        if self.cpus.len() > 64 {
            return Err(invalid("cpus", format!("{} threads; at most 64", self.cpus.len())));
        }
        if self.ramp > self.duration {
            return Err(invalid("ramp", format!("{:?} is longer than the duration", self.ramp)));
        }
        if let Some(r) = self.rate {
            if !(r.is_finite() && r > 0.0 && r <= 1e9) {
                return Err(invalid("rate", format!("{r} is not in (0, 1e9]")));
            }
        }
        if !(64..=1472).contains(&self.payload) {
            return Err(invalid("payload", format!("{} bytes is not in 64..=1472", self.payload)));
        }
        if self.connect_timeout < Duration::from_millis(100) || self.connect_timeout > Duration::from_secs(30) {
            return Err(invalid("connect_timeout", format!("{:?} is not in 100 ms..=30 s", self.connect_timeout)));
        }
        if let Some(p) = &self.port_range {
            if !p.bytes().all(|b| b.is_ascii_digit() || b == b'-') {
                return Err(invalid("port_range", format!("{p:?} is not LO-HI")));
            }
        }
        if self.gateway.is_some() && self.target == Target::Kernel {
            return Err(invalid(
                "config",
                "the [gateway] settings are our gateway's: use target ours or compare".into(),
            ));
        }
        match (self.target, &self.external) {
            (Target::External, None) => {
                return Err(invalid("target", "external needs the NAT's links (--inside, --outside)".into()))
            }
            (Target::External, Some(x)) => {
                x.validate()?;
                if n > x.addrs.capacity() {
                    return Err(invalid(
                        "envs",
                        format!("{n} environments do not fit the environments' network ({})", x.addrs.capacity()),
                    ));
                }
                let ours_only = [
                    ("config", self.gateway.is_some()),
                    ("port_range", self.port_range.is_some()),
                    ("max_eni_addresses", self.max_eni_addresses.is_some()),
                    ("workers", self.workers != 0),
                    ("tap_per_env", self.tap_per_env),
                ];
                if let Some((param, _)) = ours_only.iter().find(|(_, set)| *set) {
                    return Err(invalid(param, "is for our gateway in the lab; the external NAT is the user's".into()));
                }
            }
            (_, Some(_)) => {
                return Err(invalid(
                    "inside",
                    "--inside/--outside measure an external NAT: not with ours or kernel".into(),
                ))
            }
            (Target::Ours, None) => {
                gateway_plan(self)?;
            }
            (Target::Kernel, None) => {}
        }
        Ok(())
    }
}

/// Why a load run failed.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// An argument that can never work.
    #[error("invalid {param}: {reason}")]
    Invalid {
        /// The parameter.
        param: &'static str,
        /// Why.
        reason: String,
    },
    /// Not root.
    #[error("the load generator needs root (network namespaces, TAP devices)")]
    NotRoot,
    /// Our lab did not build.
    #[error("lab: {0}")]
    Lab(#[from] lab::LabBuildError),
    /// A namespace or link operation failed.
    #[error("netlab: {0}")]
    Netlab(#[from] LabError),
    /// The TAP could not be opened.
    #[error("loadgen TAP: {0}")]
    Tap(#[from] IoError),
    /// A system call failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The NAT's inside address never answered ARP.
    #[error("the gateway {0} did not answer ARP within {1:?}")]
    GatewayUnresolved(Ipv4Addr, Duration),
    /// The `--config` file, or the gateway config made from it, was refused.
    #[error("config {file}: {field}: {reason}{}", line.map(|l| format!(" (line {l})")).unwrap_or_default())]
    Config {
        /// The file.
        file: String,
        /// The field (`gateway.timeouts.udp`; `toml` for a document that is not TOML).
        field: String,
        /// Why.
        reason: String,
        /// Its line in the file, when found.
        line: Option<usize>,
    },
    /// Stopped (signal or [`StopHandle`]) before the load began: nothing was measured.
    #[error("stopped before the load began; nothing was measured")]
    Stopped,
}

pub(crate) fn invalid(param: &'static str, reason: String) -> LoadError {
    LoadError::Invalid { param, reason }
}

pub(crate) fn io_err(what: impl Into<String>, source: std::io::Error) -> LoadError {
    LoadError::Io { what: what.into(), source }
}

/// Parses a CPU list, `0,1` or `0-3` or a mix (`--cpus`); the error names `cpus`.
pub fn parse_cpus(s: &str) -> Result<Vec<usize>, LoadError> {
    let bad = || invalid("cpus", format!("{s:?} is not a list of CPUs such as 0,1 or 0-3"));
    let mut v = Vec::new();
    for part in s.split(',').map(str::trim) {
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b): (usize, usize) = (a.parse().map_err(|_| bad())?, b.parse().map_err(|_| bad())?);
                if a > b || b - a > 1024 {
                    return Err(bad());
                }
                v.extend(a..=b);
            }
            None => v.push(part.parse().map_err(|_| bad())?),
        }
    }
    Ok(v)
}
