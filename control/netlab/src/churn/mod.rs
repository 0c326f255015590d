//! Connection churn: many short TCP connections opened and closed for a long time, the workload that shows whether
//! a NAT gives back what closed connections held (session-table slots, external ports).
//!
//! - [`ChurnServer`]: in a namespace, listens on `ports` consecutive ports of one address with a deep accept queue
//!   (65,535: `listen(2)` again after std's `listen(128)`, with `net.core.somaxconn` and
//!   `net.ipv4.tcp_max_syn_backlog` raised in that namespace), and a few epoll threads (default 4, each owning every
//!   `threads`-th port) that accept, count each connection's peer address, and read each connection (non-blocking,
//!   at once and then whenever epoll says) until the client's FIN (end of stream) or RST (an error), then drop it. So both [`CloseMode`]s work: with
//!   [`CloseMode::Fin`] the server's FIN follows the client's (the client keeps the TIME-WAIT), with
//!   [`CloseMode::Rst`] nothing is left on either side. A connection silent for [`SERVER_IDLE`] is dropped. Threads
//!   poll a stop flag every 50 ms; [`ChurnServer::stop`] (also `Drop`) sets it and joins them.
//! - [`run_clients`]: from every given namespace, `threads_per_env` threads each loop: `connect` (non-blocking with
//!   `connect_timeout`) to the next server port (round robin), then close per [`CloseMode`]:
//!   - `Rst`: `SO_LINGER` 0 and close: the client sends an RST, no TIME-WAIT anywhere;
//!   - `Fin`: `shutdown(SHUT_WR)` (the client's FIN first), wait for the server's FIN (end of stream) for at most
//!     `connect_timeout`, close: an orderly close through the NAT in both directions.
//!
//!   Closed loop (`rate_per_env: None`): the next connection starts when the last one ends, after `fail_backoff` when
//!   it failed (so a gateway that refuses at once is not hammered by a spinning loop). Open loop
//!   (`Some(r)`): each namespace starts `r` connections per second, spread evenly over its threads and paced to a
//!   fixed schedule; a thread held up by a slow connection catches up, but slots more than a second late are skipped
//!   and counted as `missed`. Every thread starts its last connection before the deadline, so the run ends at most
//!   `secs` + 2 × `connect_timeout` after it starts.
//! - [`ChurnReport`] (serde): totals, failures by kind ([`Failures`]), a timeline of 1-second buckets (a connection
//!   counts in the second it ended), the rate over the first and the last `window` seconds, their ratio, and the
//!   failures as a fraction of the completed connections.
//!
//! Sockets belong to the namespace they were created in: listeners are made in the server namespace
//! ([`Netns::run`]), and each client thread runs in its environment's namespace ([`Netns::thread`]).

mod server;

pub use server::{ChurnServer, ServerConfig, ServerReport};

use crate::{LabError, Netns, SERVER};
use dataplane_io::{Events, Poller};
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::io::{self, Read};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The first server port by default.
pub const DEFAULT_BASE_PORT: u16 = 7700;
/// Server ports by default.
pub const DEFAULT_PORTS: u16 = 16;
/// A server connection that neither ends nor sends for this long is dropped.
pub const SERVER_IDLE: Duration = Duration::from_secs(10);
/// The listeners' accept (and SYN) queue depth.
const ACCEPT_BACKLOG: i32 = 65535;
/// Connections accepted from one listener per wake-up (so one busy port cannot starve the others).
const ACCEPT_BATCH: usize = 512;
/// Token bit marking a listener in a server thread's epoll set (connections count up from 0).
const LISTENER: u64 = 1 << 63;

/// How the client ends each connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CloseMode {
    /// `SO_LINGER` 0, then close: the client sends an RST.
    Rst,
    /// `shutdown(SHUT_WR)`, wait for the server's FIN, close: an orderly close, the client's FIN first.
    Fin,
}

impl CloseMode {
    /// Both modes, RST first.
    pub const ALL: [CloseMode; 2] = [CloseMode::Rst, CloseMode::Fin];

    /// `"rst"` or `"fin"`.
    pub fn label(self) -> &'static str {
        match self {
            CloseMode::Rst => "rst",
            CloseMode::Fin => "fin",
        }
    }
}

/// Why a churn run could not start or finish.
#[derive(Debug, thiserror::Error)]
pub enum ChurnError {
    /// A namespace operation failed.
    #[error(transparent)]
    Lab(#[from] LabError),
    /// A socket or thread operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// A setting that can never work.
    #[error("invalid churn setting: {0}")]
    Invalid(String),
    /// A client thread panicked (e.g. it could not enter its namespace).
    #[error("a churn client thread panicked: {0}")]
    Panicked(String),
}

fn io_err(what: impl Into<String>, source: io::Error) -> ChurnError {
    ChurnError::Io { what: what.into(), source }
}

// ---------------------------------------------------------------------------------------------------------------
// Clients
// ---------------------------------------------------------------------------------------------------------------

/// The client side of a churn run.
#[derive(Clone, Copy, Debug)]
pub struct ClientConfig {
    /// Threads per environment namespace (default 2).
    pub threads_per_env: usize,
    /// How each connection ends (default [`CloseMode::Rst`]).
    pub mode: CloseMode,
    /// The server's address (default [`SERVER`]).
    pub server: Ipv4Addr,
    /// The first server port (default [`DEFAULT_BASE_PORT`]).
    pub base_port: u16,
    /// Server ports, used round robin (default [`DEFAULT_PORTS`]).
    pub ports: u16,
    /// Length of the run, seconds (default 150); also the number of timeline buckets.
    pub secs: u32,
    /// `Some(r)`: open loop, `r` new connections per second from each namespace; `None` (default): closed loop.
    pub rate_per_env: Option<f64>,
    /// Longest wait for a connection to be established, and in [`CloseMode::Fin`] for the server's FIN (default
    /// 2 s).
    pub connect_timeout: Duration,
    /// Closed loop only: pause after a failed connection (default 10 ms).
    pub fail_backoff: Duration,
    /// Seconds of the first and last windows the report compares (default 30; at most half the run).
    pub window_secs: u32,
}

impl Default for ClientConfig {
    fn default() -> ClientConfig {
        ClientConfig {
            threads_per_env: 2,
            mode: CloseMode::Rst,
            server: SERVER,
            base_port: DEFAULT_BASE_PORT,
            ports: DEFAULT_PORTS,
            secs: 150,
            rate_per_env: None,
            connect_timeout: Duration::from_secs(2),
            fail_backoff: Duration::from_millis(10),
            window_secs: 30,
        }
    }
}

impl ClientConfig {
    fn validate(&self, envs: usize) -> Result<(), ChurnError> {
        let bad = |m: String| Err(ChurnError::Invalid(m));
        if envs == 0 {
            return bad("no environment namespaces".into());
        }
        if self.threads_per_env == 0 || self.ports == 0 || self.secs == 0 {
            return bad(format!(
                "threads_per_env ({}), ports ({}) and secs ({}) must be at least 1",
                self.threads_per_env, self.ports, self.secs
            ));
        }
        if self.base_port == 0 || u32::from(self.base_port) + u32::from(self.ports) - 1 > u32::from(u16::MAX) {
            return bad(format!("ports {}+{} leave 1..=65535", self.base_port, self.ports));
        }
        if let Some(r) = self.rate_per_env {
            if !(r.is_finite() && r > 0.0) {
                return bad(format!("rate_per_env {r} is not a positive number"));
            }
        }
        if self.connect_timeout.is_zero() {
            return bad("connect_timeout must be positive".into());
        }
        Ok(())
    }

    /// The server configuration this client config talks to (the default number of threads).
    pub fn server_config(&self) -> ServerConfig {
        ServerConfig { addr: self.server, base_port: self.base_port, ports: self.ports, ..ServerConfig::default() }
    }
}

/// Failed connections by kind.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Failures {
    /// No answer to the SYN within `connect_timeout` (a silent drop).
    pub timeout: u64,
    /// Refused (an RST to the SYN).
    pub refused: u64,
    /// Host or network unreachable (e.g. ICMP "administratively prohibited" from a NAT out of ports).
    pub unreachable: u64,
    /// A limit of the client itself (no local port or descriptor: `EADDRNOTAVAIL`, `EMFILE`, `ENOBUFS`, ...).
    pub local: u64,
    /// [`CloseMode::Fin`]: connected, but the server's FIN did not come back within `connect_timeout` (or the
    /// connection was reset meanwhile).
    pub close: u64,
    /// Anything else, among them std's "no error set after POLLHUP": the connect failed (an RST or an ICMP error
    /// arrived) but its error code was gone by the time std asked for it.
    pub other: u64,
}

/// One kind of [`Failures`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailureKind {
    /// See [`Failures::timeout`].
    Timeout,
    /// See [`Failures::refused`].
    Refused,
    /// See [`Failures::unreachable`].
    Unreachable,
    /// See [`Failures::local`].
    Local,
    /// See [`Failures::close`].
    Close,
    /// See [`Failures::other`].
    Other,
}

impl FailureKind {
    /// The kind of a failed `connect`.
    pub fn of_connect(e: &io::Error) -> FailureKind {
        match e.raw_os_error() {
            Some(libc::ETIMEDOUT) => FailureKind::Timeout,
            Some(libc::ECONNREFUSED) => FailureKind::Refused,
            Some(libc::EHOSTUNREACH | libc::ENETUNREACH) => FailureKind::Unreachable,
            Some(libc::EADDRNOTAVAIL | libc::EADDRINUSE | libc::EMFILE | libc::ENFILE | libc::ENOBUFS) => {
                FailureKind::Local
            }
            Some(_) => FailureKind::Other,
            // std's connect_timeout reports its own poll timeout without an OS error.
            None => match e.kind() {
                io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => FailureKind::Timeout,
                io::ErrorKind::ConnectionRefused => FailureKind::Refused,
                _ => FailureKind::Other,
            },
        }
    }
}

impl Failures {
    /// All failures.
    pub fn total(&self) -> u64 {
        self.timeout + self.refused + self.unreachable + self.local + self.close + self.other
    }

    /// Counts one failure of `kind`.
    pub fn add(&mut self, kind: FailureKind) {
        *match kind {
            FailureKind::Timeout => &mut self.timeout,
            FailureKind::Refused => &mut self.refused,
            FailureKind::Unreachable => &mut self.unreachable,
            FailureKind::Local => &mut self.local,
            FailureKind::Close => &mut self.close,
            FailureKind::Other => &mut self.other,
        } += 1;
    }

    /// Adds `other`'s counts.
    pub fn merge(&mut self, o: &Failures) {
        self.timeout += o.timeout;
        self.refused += o.refused;
        self.unreachable += o.unreachable;
        self.local += o.local;
        self.close += o.close;
        self.other += o.other;
    }
}

/// One second of a run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Second {
    /// Connections completed (connected and closed per the mode) in this second.
    pub completed: u64,
    /// Connections that failed in this second.
    pub failures: Failures,
    /// Open loop: scheduled connections skipped because their thread was more than a second late.
    pub missed: u64,
}

impl Second {
    fn merge(&mut self, o: &Second) {
        self.completed += o.completed;
        self.failures.merge(&o.failures);
        self.missed += o.missed;
    }
}

/// The result of a churn run.
#[derive(Clone, Debug, Serialize)]
pub struct ChurnReport {
    /// How connections were closed.
    pub mode: CloseMode,
    /// Environment namespaces.
    pub envs: usize,
    /// Threads per namespace.
    pub threads_per_env: usize,
    /// Server ports.
    pub ports: u16,
    /// Length of the run, seconds.
    pub secs: u32,
    /// Open loop: the offered rate per namespace, connections/s; `None`: closed loop.
    pub rate_per_env: Option<f64>,
    /// The window the first/last rates are taken over, seconds.
    pub window_secs: u32,
    /// Connections completed.
    pub completed: u64,
    /// Failed connections by kind.
    pub failures: Failures,
    /// All failed connections.
    pub failed: u64,
    /// Open loop: scheduled connections skipped.
    pub missed: u64,
    /// Completed connections per second over the whole run.
    pub rate: f64,
    /// Completed connections per second over the first `window_secs`.
    pub rate_first: f64,
    /// Completed connections per second over the last `window_secs`.
    pub rate_last: f64,
    /// `rate_last / rate_first` (0 when nothing completed in the first window).
    pub last_over_first: f64,
    /// `failed / completed` (`failed` itself when nothing completed, so any failure shows as at least 1).
    pub failure_fraction: f64,
    /// One bucket per second.
    pub timeline: Vec<Second>,
}

impl ChurnReport {
    /// Builds the report of a run of `envs` namespaces with `cfg` from its per-second `timeline` (its length is the
    /// run's length in seconds).
    pub fn new(cfg: &ClientConfig, envs: usize, timeline: Vec<Second>) -> ChurnReport {
        let secs = timeline.len() as u32;
        let window = effective_window(cfg.window_secs, secs);
        let mut total = Second::default();
        for s in &timeline {
            total.merge(s);
        }
        let failed = total.failures.total();
        let mut r = ChurnReport {
            mode: cfg.mode,
            envs,
            threads_per_env: cfg.threads_per_env,
            ports: cfg.ports,
            secs,
            rate_per_env: cfg.rate_per_env,
            window_secs: window,
            completed: total.completed,
            failures: total.failures,
            failed,
            missed: total.missed,
            rate: 0.0,
            rate_first: 0.0,
            rate_last: 0.0,
            last_over_first: 0.0,
            failure_fraction: if total.completed > 0 { failed as f64 / total.completed as f64 } else { failed as f64 },
            timeline,
        };
        let n = r.timeline.len();
        r.rate = r.rate_between(0, n);
        r.rate_first = r.rate_between(0, window as usize);
        r.rate_last = r.rate_between(n.saturating_sub(window as usize), n);
        r.last_over_first = if r.rate_first > 0.0 { r.rate_last / r.rate_first } else { 0.0 };
        r
    }

    /// Completed connections per second over the buckets `from..to` (clamped to the run; 0 when empty).
    pub fn rate_between(&self, from: usize, to: usize) -> f64 {
        let to = to.min(self.timeline.len());
        if from >= to {
            return 0.0;
        }
        let done: u64 = self.timeline[from..to].iter().map(|s| s.completed).sum();
        done as f64 / (to - from) as f64
    }

    /// Failures over the buckets `from..to` (clamped to the run).
    pub fn failures_between(&self, from: usize, to: usize) -> Failures {
        let to = to.min(self.timeline.len());
        let mut f = Failures::default();
        for s in self.timeline.get(from..to).unwrap_or_default() {
            f.merge(&s.failures);
        }
        f
    }

    /// The completed rate of each minute of the run (connections/s; the last minute may be shorter).
    pub fn per_minute(&self) -> Vec<f64> {
        (0..self.timeline.len()).step_by(60).map(|m| self.rate_between(m, m + 60)).collect()
    }

    /// The completed count of each second (for printing a timeline).
    pub fn completed_series(&self) -> Vec<u64> {
        self.timeline.iter().map(|s| s.completed).collect()
    }
}

/// The first/last window for a run of `secs` seconds: `window`, but at most half the run and at least 1 second.
pub fn effective_window(window: u32, secs: u32) -> u32 {
    window.min(secs / 2).max(1)
}

/// Runs the clients from every namespace in `envs` (see the module doc) and reports. Blocks for `cfg.secs` seconds
/// plus at most 2 × `cfg.connect_timeout`.
pub fn run_clients(envs: &[&Netns], cfg: &ClientConfig) -> Result<ChurnReport, ChurnError> {
    cfg.validate(envs.len())?;
    let secs = cfg.secs as usize;
    let threads = cfg.threads_per_env;
    // Threads are created first and all start at t0, so thread start-up does not eat into the first second.
    let t0 = Instant::now() + Duration::from_millis(100) + Duration::from_micros(200 * (envs.len() * threads) as u64);
    let deadline = t0 + Duration::from_secs(u64::from(cfg.secs));
    let mut handles = Vec::with_capacity(envs.len() * threads);
    for (e, ns) in envs.iter().enumerate() {
        for ti in 0..threads {
            let cfg = *cfg;
            let global = e * threads + ti;
            handles.push(ns.thread(move || client_loop(&cfg, global, ti, t0, deadline, secs)));
        }
    }
    let mut timeline = vec![Second::default(); secs];
    let mut panicked = None;
    for h in handles {
        match h.join() {
            Ok(part) => {
                for (acc, s) in timeline.iter_mut().zip(&part) {
                    acc.merge(s);
                }
            }
            Err(p) => {
                let msg = p
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| p.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                    .unwrap_or_else(|| "(no message)".into());
                panicked.get_or_insert(msg);
            }
        }
    }
    if let Some(msg) = panicked {
        return Err(ChurnError::Panicked(msg));
    }
    Ok(ChurnReport::new(cfg, envs.len(), timeline))
}

/// One client thread; returns its timeline.
fn client_loop(
    cfg: &ClientConfig,
    global: usize,
    index_in_env: usize,
    t0: Instant,
    deadline: Instant,
    secs: usize,
) -> Vec<Second> {
    let mut tl = vec![Second::default(); secs];
    let bucket = |at: Instant| (at.saturating_duration_since(t0).as_secs() as usize).min(secs - 1);
    // Open loop: this thread's share of the namespace's rate, its slots staggered against its siblings'.
    let interval = cfg.rate_per_env.map(|r| Duration::from_secs_f64(cfg.threads_per_env as f64 / r));
    let start = match interval {
        Some(iv) => t0 + iv.mul_f64(index_in_env as f64 / cfg.threads_per_env as f64),
        None => t0,
    };
    let mut slot = 0u64;
    let mut port_i = global;
    sleep_until(t0);
    loop {
        let now = Instant::now();
        if now >= deadline {
            break;
        }
        if let Some(iv) = interval {
            let due = start + iv.mul_f64(slot as f64);
            if due > now {
                sleep_until(due.min(deadline));
                if Instant::now() >= deadline {
                    break;
                }
            } else if now - due > Duration::from_secs(1) {
                let skip = ((now - due).as_secs_f64() / iv.as_secs_f64()) as u64;
                tl[bucket(now)].missed += skip;
                slot += skip;
            }
            slot += 1;
        }
        let port = cfg.base_port + (port_i % usize::from(cfg.ports)) as u16;
        port_i = port_i.wrapping_add(1);
        let dst = SocketAddr::from(SocketAddrV4::new(cfg.server, port));
        let outcome = one_connection(dst, cfg.mode, cfg.connect_timeout);
        let b = bucket(Instant::now());
        match outcome {
            Ok(()) => tl[b].completed += 1,
            Err(kind) => {
                tl[b].failures.add(kind);
                if interval.is_none() && !cfg.fail_backoff.is_zero() {
                    sleep_until((Instant::now() + cfg.fail_backoff).min(deadline));
                }
            }
        }
    }
    tl
}

fn sleep_until(t: Instant) {
    let now = Instant::now();
    if t > now {
        std::thread::sleep(t - now);
    }
}

/// One connection: connect, then close per `mode`.
fn one_connection(dst: SocketAddr, mode: CloseMode, timeout: Duration) -> Result<(), FailureKind> {
    let s = TcpStream::connect_timeout(&dst, timeout).map_err(|e| FailureKind::of_connect(&e))?;
    match mode {
        CloseMode::Rst => {
            set_linger_zero(&s).map_err(|_| FailureKind::Other)?;
            drop(s);
            Ok(())
        }
        CloseMode::Fin => {
            s.shutdown(Shutdown::Write).map_err(|_| FailureKind::Close)?;
            s.set_read_timeout(Some(timeout)).map_err(|_| FailureKind::Other)?;
            let mut buf = [0u8; 64];
            let mut s = s;
            loop {
                match s.read(&mut buf) {
                    Ok(0) => return Ok(()),
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(_) => return Err(FailureKind::Close),
                }
            }
        }
    }
}

/// `SO_LINGER` 0: close sends an RST and leaves no TIME-WAIT.
pub fn set_linger_zero(s: &TcpStream) -> io::Result<()> {
    Ok(rustix::net::sockopt::set_socket_linger(s, Some(Duration::ZERO))?)
}

/// A whole run: starts a [`ChurnServer`] in `server_ns` for `cfg` ([`ClientConfig::server_config`]), runs the
/// clients, lets the server catch up with its accept queues (until its accepted count has not moved for 300 ms, at
/// most 3 s), stops it and returns both reports.
pub fn run(server_ns: &Netns, envs: &[&Netns], cfg: &ClientConfig) -> Result<(ChurnReport, ServerReport), ChurnError> {
    let server = ChurnServer::start(server_ns, cfg.server_config())?;
    let report = run_clients(envs, cfg);
    let until = Instant::now() + Duration::from_secs(3);
    let mut last = server.accepted();
    while Instant::now() < until {
        std::thread::sleep(Duration::from_millis(300));
        let now = server.accepted();
        if now == last {
            break;
        }
        last = now;
    }
    let seen = server.stop();
    Ok((report?, seen))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sec(completed: u64, timeout: u64) -> Second {
        Second { completed, failures: Failures { timeout, ..Failures::default() }, missed: 0 }
    }

    #[test]
    fn windows_are_at_most_half_the_run() {
        assert_eq!(effective_window(30, 150), 30);
        assert_eq!(effective_window(30, 40), 20);
        assert_eq!(effective_window(5, 25), 5);
        assert_eq!(effective_window(30, 1), 1);
        assert_eq!(effective_window(0, 10), 1);
    }

    #[test]
    fn report_rates_and_ratio() {
        let cfg = ClientConfig { window_secs: 2, ..ClientConfig::default() };
        // 2 s at 100/s, 2 s at 50/s, then 2 s at 10/s with failures.
        let tl = vec![sec(100, 0), sec(100, 0), sec(50, 0), sec(50, 0), sec(10, 3), sec(10, 1)];
        let r = ChurnReport::new(&cfg, 4, tl);
        assert_eq!(r.secs, 6);
        assert_eq!(r.window_secs, 2);
        assert_eq!(r.completed, 320);
        assert_eq!(r.failed, 4);
        assert_eq!(r.failures.timeout, 4);
        assert!((r.rate - 320.0 / 6.0).abs() < 1e-9);
        assert!((r.rate_first - 100.0).abs() < 1e-9);
        assert!((r.rate_last - 10.0).abs() < 1e-9);
        assert!((r.last_over_first - 0.1).abs() < 1e-9);
        assert!((r.failure_fraction - 4.0 / 320.0).abs() < 1e-12);
        assert!((r.rate_between(2, 4) - 50.0).abs() < 1e-9);
        assert_eq!(r.rate_between(5, 100), 10.0);
        assert_eq!(r.rate_between(4, 4), 0.0);
        assert_eq!(r.failures_between(4, 99).timeout, 4);
        assert_eq!(r.completed_series(), vec![100, 100, 50, 50, 10, 10]);
    }

    #[test]
    fn report_of_a_run_that_never_started() {
        let r = ChurnReport::new(&ClientConfig::default(), 1, vec![sec(0, 5), sec(0, 5)]);
        assert_eq!(r.completed, 0);
        assert_eq!(r.last_over_first, 0.0);
        assert_eq!(r.failure_fraction, 10.0);
        let empty = ChurnReport::new(&ClientConfig::default(), 1, vec![sec(0, 0)]);
        assert_eq!(empty.failure_fraction, 0.0);
        assert_eq!(empty.rate_first, 0.0);
    }

    #[test]
    fn per_minute_rates() {
        let mut tl = vec![sec(10, 0); 60];
        tl.extend(vec![sec(4, 0); 30]);
        let r = ChurnReport::new(&ClientConfig::default(), 1, tl);
        assert_eq!(r.per_minute(), vec![10.0, 4.0]);
    }

    #[test]
    fn failures_add_up_and_serialize() {
        let mut f = Failures::default();
        for k in [
            FailureKind::Timeout,
            FailureKind::Refused,
            FailureKind::Unreachable,
            FailureKind::Local,
            FailureKind::Close,
            FailureKind::Other,
            FailureKind::Other,
        ] {
            f.add(k);
        }
        assert_eq!(f.total(), 7);
        assert_eq!(f.other, 2);
        let mut g = f;
        g.merge(&f);
        assert_eq!(g.total(), 14);
        let r = ChurnReport::new(&ClientConfig::default(), 1, vec![Second { completed: 1, failures: f, missed: 2 }]);
        let v = serde_json::to_value(&r).expect("serializes");
        assert_eq!(v["mode"], "rst");
        assert_eq!(v["failures"]["unreachable"], 1);
        assert_eq!(v["timeline"][0]["missed"], 2);
        assert_eq!(v["missed"], 2);
    }

    #[test]
    fn connect_errors_are_classified() {
        let os = |c| FailureKind::of_connect(&io::Error::from_raw_os_error(c));
        assert_eq!(os(libc::ETIMEDOUT), FailureKind::Timeout);
        assert_eq!(os(libc::ECONNREFUSED), FailureKind::Refused);
        assert_eq!(os(libc::EHOSTUNREACH), FailureKind::Unreachable);
        assert_eq!(os(libc::ENETUNREACH), FailureKind::Unreachable);
        assert_eq!(os(libc::EADDRNOTAVAIL), FailureKind::Local);
        assert_eq!(os(libc::EPERM), FailureKind::Other);
        let timed_out = io::Error::new(io::ErrorKind::TimedOut, "connection timed out");
        assert_eq!(FailureKind::of_connect(&timed_out), FailureKind::Timeout);
    }

    #[test]
    fn settings_are_checked() {
        let ok = ClientConfig::default();
        assert!(ok.validate(1).is_ok());
        assert!(ok.validate(0).is_err());
        assert!(ClientConfig { threads_per_env: 0, ..ok }.validate(1).is_err());
        assert!(ClientConfig { secs: 0, ..ok }.validate(1).is_err());
        assert!(ClientConfig { base_port: 65530, ports: 16, ..ok }.validate(1).is_err());
        assert!(ClientConfig { rate_per_env: Some(0.0), ..ok }.validate(1).is_err());
        assert!(ClientConfig { rate_per_env: Some(f64::NAN), ..ok }.validate(1).is_err());
        assert!(ClientConfig { connect_timeout: Duration::ZERO, ..ok }.validate(1).is_err());
    }

    /// Root only: server and clients in one namespace over loopback, both close modes, one second each.
    #[test]
    #[cfg_attr(not(root_tests), ignore = "needs root: network namespaces and TAP devices")]
    fn loopback_churn_in_a_namespace() {
        crate::require_root();
        let ns = Netns::new(crate::unique("hpc")).expect("namespace");
        for mode in CloseMode::ALL {
            for rate in [None, Some(200.0)] {
                let cfg = ClientConfig {
                    mode,
                    server: Ipv4Addr::LOCALHOST,
                    secs: 1,
                    rate_per_env: rate,
                    ports: 4,
                    ..ClientConfig::default()
                };
                let (r, seen) = run(&ns, &[&ns], &cfg).expect("churn runs");
                assert!(r.completed > 0, "{mode:?} {rate:?}: {r:?}");
                assert_eq!(r.failed, 0, "{mode:?} {rate:?}: {:?}", r.failures);
                if let Some(rate) = rate {
                    assert!(r.completed as f64 <= rate * 1.1 + 2.0, "{mode:?}: paced, {} completed", r.completed);
                }
                assert_eq!(seen.not_from(Ipv4Addr::LOCALHOST), 0);
                assert!(seen.accepted > 0);
                if mode == CloseMode::Fin {
                    assert_eq!(seen.reset, 0, "{seen:?}");
                }
            }
        }
    }
}
