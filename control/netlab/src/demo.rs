//! `hyperplane demo`: the shared-ENI story, end to end, on this machine.
//!
//! Builds a [`Lab`] (a VPC namespace with a TCP and UDP server, N
//! execution-environment namespaces each on its own TAP, our gateway in
//! between), has every environment open a TCP connection, exchange a UDP
//! datagram and ping the server, and reports what the server saw: every
//! environment arriving from the one shared ENI address. It contrasts the
//! one-time ENI setup with each environment's first-connection latency, the
//! point of moving ENI creation off the cold-start path. Everything it made
//! is removed when it returns, also on error or Ctrl-C (every step has a
//! timeout and checks [`control::signals::stopped`]).

use crate::lab::{self, Lab, Options};
use crate::{env_addr, SERVER};
use core::net::{Ipv4Addr, SocketAddrV4};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// TCP port of the demo server.
pub const TCP_PORT: u16 = 7000;
/// UDP port of the demo server.
pub const UDP_PORT: u16 = 7001;
const STEP: Duration = Duration::from_secs(5);

/// Why the demo failed.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// Building the lab or starting the gateway.
    #[error(transparent)]
    Lab(#[from] lab::LabBuildError),
    /// Interrupted by SIGINT or SIGTERM.
    #[error("interrupted")]
    Interrupted,
    /// A server socket.
    #[error("server: {0}")]
    Server(std::io::Error),
}

/// One environment's traffic.
#[derive(Clone, Debug, Serialize)]
pub struct EnvReport {
    /// Its index.
    pub env: usize,
    /// Its address.
    pub address: Ipv4Addr,
    /// Time from its start to its first TCP response, milliseconds.
    pub first_connection_ms: Option<f64>,
    /// The source the server saw for its TCP connection.
    pub tcp_seen_as: Option<String>,
    /// The source the server saw for its UDP datagram.
    pub udp_seen_as: Option<String>,
    /// Ping round trip, milliseconds.
    pub ping_ms: Option<f64>,
    /// Sessions the gateway holds for it.
    pub sessions: usize,
    /// What failed, if anything.
    pub errors: Vec<String>,
}

impl EnvReport {
    /// Environment `i`, before anything happened.
    fn new(i: usize) -> EnvReport {
        EnvReport {
            env: i,
            address: env_addr(i),
            first_connection_ms: None,
            tcp_seen_as: None,
            udp_seen_as: None,
            ping_ms: None,
            sessions: 0,
            errors: vec![],
        }
    }
}

/// The demo's findings.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// Environments.
    pub envs: usize,
    /// The shared ENI address.
    pub eni_address: Ipv4Addr,
    /// Worker threads.
    pub workers: usize,
    /// Offloads on the TAPs.
    pub offloads: bool,
    /// One-time ENI setup (config, IPAM, devices, announce), milliseconds.
    pub eni_setup_ms: f64,
    /// First-connection latency over the environments, milliseconds.
    pub first_connection_ms: Percentiles,
    /// Distinct source addresses the server saw.
    pub server_saw_sources: Vec<Ipv4Addr>,
    /// Environments whose TCP, UDP and ping all worked.
    pub envs_ok: usize,
    /// Sessions by protocol (TCP, UDP, ICMP).
    pub sessions: BTreeMap<&'static str, u64>,
    /// Packets out and in.
    pub packets: BTreeMap<&'static str, u64>,
    /// Drops by reason (non-zero only).
    pub drops: BTreeMap<&'static str, u64>,
    /// Each environment.
    pub per_env: Vec<EnvReport>,
    /// Wall time of the whole demo, seconds.
    pub elapsed_s: f64,
}

/// p50, p99 and max of a sample, milliseconds.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Percentiles {
    /// Median.
    pub p50: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Largest.
    pub max: f64,
}

impl Percentiles {
    /// Of `v` (any order); zeros when empty.
    pub fn of(mut v: Vec<f64>) -> Percentiles {
        if v.is_empty() {
            return Percentiles::default();
        }
        v.sort_by(f64::total_cmp);
        let at = |q: f64| v[((v.len() as f64 * q).ceil() as usize).clamp(1, v.len()) - 1];
        Percentiles { p50: at(0.5), p99: at(0.99), max: v[v.len() - 1] }
    }
}

fn check_stop() -> Result<(), DemoError> {
    if control::signals::stopped() {
        Err(DemoError::Interrupted)
    } else {
        Ok(())
    }
}

/// Runs the demo.
pub fn run(opts: &Options) -> Result<Report, DemoError> {
    let t0 = Instant::now();
    let lab = Lab::build(opts)?;
    check_stop()?;
    let stop = Arc::new(AtomicBool::new(false));
    let seen: Arc<Mutex<Vec<(String, SocketAddrV4)>>> = Arc::default();
    let servers = start_servers(&lab, &stop, &seen)?;

    // Every environment at once, as a burst of cold starts would.
    let clients: Vec<_> = lab.envs.iter().enumerate().map(|(i, ns)| ns.thread(move || environment(i))).collect();
    let mut per_env: Vec<EnvReport> = clients
        .into_iter()
        .enumerate()
        .map(|(i, c)| {
            c.join()
                .unwrap_or_else(|_| EnvReport { errors: vec!["client thread panicked".into()], ..EnvReport::new(i) })
        })
        .collect();
    stop.store(true, Ordering::Relaxed);
    for s in servers {
        let _ = s.join();
    }
    check_stop()?;

    // What the server saw, matched to environments by their greeting.
    let seen = seen.lock().map(|v| v.clone()).unwrap_or_default();
    for (tag, from) in &seen {
        let (kind, i) = tag.split_once(' ').unwrap_or(("", ""));
        if let Some(r) = i.parse::<usize>().ok().and_then(|i| per_env.get_mut(i)) {
            match kind {
                "tcp" => r.tcp_seen_as = Some(from.to_string()),
                "udp" => r.udp_seen_as = Some(from.to_string()),
                _ => {}
            }
        }
    }
    let sources: BTreeSet<Ipv4Addr> = seen.iter().map(|(_, a)| *a.ip()).collect();

    // Sessions per environment, from every worker's table.
    let counts = lab.gateway().query(|e| {
        let mut m: BTreeMap<Ipv4Addr, usize> = BTreeMap::new();
        e.sessions().for_each(|_, s| *m.entry(s.inside.ip).or_default() += 1);
        m
    });
    for r in &mut per_env {
        r.sessions = counts.iter().map(|m| m.get(&r.address).copied().unwrap_or(0)).sum();
    }
    let totals = lab.gateway().totals();
    let envs_ok = per_env
        .iter()
        .filter(|r| r.errors.is_empty() && r.tcp_seen_as.is_some() && r.udp_seen_as.is_some() && r.ping_ms.is_some())
        .count();
    let report = Report {
        envs: opts.envs,
        eni_address: lab.eni,
        workers: lab.gateway().workers(),
        offloads: lab.gateway().offloads,
        eni_setup_ms: ms(lab.eni_setup),
        first_connection_ms: Percentiles::of(per_env.iter().filter_map(|r| r.first_connection_ms).collect()),
        server_saw_sources: sources.into_iter().collect(),
        envs_ok,
        sessions: [("tcp", totals.live[0]), ("udp", totals.live[1]), ("icmp", totals.live[2])].into_iter().collect(),
        packets: [("outbound", totals.outbound.0), ("inbound", totals.inbound.0)].into_iter().collect(),
        drops: totals.drops.iter().map(|(r, n)| (r.label(), *n)).collect(),
        per_env,
        elapsed_s: 0.0,
    };
    lab.stop();
    Ok(Report { elapsed_s: t0.elapsed().as_secs_f64(), ..report })
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// The VPC's TCP and UDP servers: each request is a line `tcp N` / `udp N`;
/// the answer names the source the server saw.
fn start_servers(
    lab: &Lab,
    stop: &Arc<AtomicBool>,
    seen: &Arc<Mutex<Vec<(String, SocketAddrV4)>>>,
) -> Result<Vec<std::thread::JoinHandle<()>>, DemoError> {
    let tcp = lab.server.run(|| {
        let l = TcpListener::bind(SocketAddrV4::new(SERVER, TCP_PORT))?;
        l.set_nonblocking(true)?;
        Ok::<_, std::io::Error>(l)
    });
    let tcp = tcp.map_err(DemoError::Server)?;
    let udp = lab.server.run(|| {
        let s = UdpSocket::bind(SocketAddrV4::new(SERVER, UDP_PORT))?;
        s.set_read_timeout(Some(Duration::from_millis(100)))?;
        Ok::<_, std::io::Error>(s)
    });
    let udp = udp.map_err(DemoError::Server)?;
    let (stop1, seen1) = (Arc::clone(stop), Arc::clone(seen));
    let t = std::thread::spawn(move || {
        while !stop1.load(Ordering::Relaxed) {
            match tcp.accept() {
                Ok((c, std::net::SocketAddr::V4(from))) => {
                    let seen = Arc::clone(&seen1);
                    std::thread::spawn(move || {
                        let _ = c.set_read_timeout(Some(STEP));
                        let mut line = String::new();
                        let mut r = BufReader::new(&c);
                        if r.read_line(&mut line).is_ok() {
                            if let Ok(mut v) = seen.lock() {
                                v.push((line.trim().to_string(), from));
                            }
                            let _ = (&c).write_all(format!("you are {from}\n").as_bytes());
                        }
                    });
                }
                Ok(_) => {}
                Err(_) => std::thread::sleep(Duration::from_millis(2)),
            }
        }
    });
    let (stop2, seen2) = (Arc::clone(stop), Arc::clone(seen));
    let u = std::thread::spawn(move || {
        let mut buf = [0u8; 2048];
        while !stop2.load(Ordering::Relaxed) {
            if let Ok((n, std::net::SocketAddr::V4(from))) = udp.recv_from(&mut buf) {
                let msg = String::from_utf8_lossy(&buf[..n]).trim().to_string();
                if let Ok(mut v) = seen2.lock() {
                    v.push((msg, from));
                }
                let _ = udp.send_to(format!("you are {from}\n").as_bytes(), from);
            }
        }
    });
    Ok(vec![t, u])
}

/// One environment's cold start: TCP request/response (timed from its
/// start), a UDP exchange and a ping.
fn environment(i: usize) -> EnvReport {
    let start = Instant::now();
    let mut r = EnvReport::new(i);
    match tcp_exchange(i) {
        Ok(()) => r.first_connection_ms = Some(ms(start.elapsed())),
        Err(e) => r.errors.push(format!("tcp: {e}")),
    }
    if let Err(e) = udp_exchange(i) {
        r.errors.push(format!("udp: {e}"));
    }
    match icmp_echo(SERVER, 0x4800 + i as u16, STEP) {
        Ok(rtt) => r.ping_ms = Some(ms(rtt)),
        Err(e) => r.errors.push(format!("ping: {e}")),
    }
    r
}

fn tcp_exchange(i: usize) -> std::io::Result<()> {
    let addr = SocketAddrV4::new(SERVER, TCP_PORT).into();
    // SYNs lost while ARP resolves are retried by the kernel (1 s).
    let mut c = TcpStream::connect_timeout(&addr, STEP)?;
    c.set_read_timeout(Some(STEP))?;
    c.write_all(format!("tcp {i}\n").as_bytes())?;
    let mut line = String::new();
    BufReader::new(&c).read_line(&mut line)?;
    if line.starts_with("you are") {
        Ok(())
    } else {
        Err(std::io::Error::other(format!("unexpected answer {line:?}")))
    }
}

fn udp_exchange(i: usize) -> std::io::Result<()> {
    let s = UdpSocket::bind("0.0.0.0:0")?;
    s.set_read_timeout(Some(Duration::from_millis(500)))?;
    let mut buf = [0u8; 256];
    for _ in 0..6 {
        s.send_to(format!("udp {i}\n").as_bytes(), SocketAddrV4::new(SERVER, UDP_PORT))?;
        if let Ok((n, _)) = s.recv_from(&mut buf) {
            if buf[..n].starts_with(b"you are") {
                return Ok(());
            }
        }
        if control::signals::stopped() {
            break;
        }
    }
    Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "no answer"))
}

/// One ICMP echo over a raw socket (root); the round-trip time.
pub fn icmp_echo(dst: Ipv4Addr, ident: u16, timeout: Duration) -> std::io::Result<Duration> {
    use rustix::net::{ipproto, AddressFamily, SocketFlags, SocketType};
    let sock =
        rustix::net::socket_with(AddressFamily::INET, SocketType::RAW, SocketFlags::CLOEXEC, Some(ipproto::ICMP))?;
    let sock = std::net::UdpSocket::from(sock); // only for its timeout and send/recv wrappers
    sock.set_read_timeout(Some(Duration::from_millis(200)))?;
    let mut msg = [0u8; 64];
    msg[0] = 8;
    msg[4..6].copy_from_slice(&ident.to_be_bytes());
    msg[6..8].copy_from_slice(&1u16.to_be_bytes());
    msg[8..].fill(0x5a);
    let c = dataplane::checksum::checksum(&msg);
    msg[2..4].copy_from_slice(&c.to_be_bytes());
    let start = Instant::now();
    sock.send_to(&msg, SocketAddrV4::new(dst, 0))?;
    let mut buf = [0u8; 1500];
    while start.elapsed() < timeout && !control::signals::stopped() {
        let Ok((n, _)) = sock.recv_from(&mut buf) else {
            continue;
        };
        // A raw socket reads the IP header too.
        let hl = usize::from(buf[0] & 0x0f) * 4;
        if n >= hl + 8 && buf[hl] == 0 && buf[hl + 4..hl + 6] == ident.to_be_bytes() && buf[12..16] == dst.octets() {
            return Ok(start.elapsed());
        }
    }
    Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "no echo reply"))
}
