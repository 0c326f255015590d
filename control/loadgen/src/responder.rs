//! The responder: the far end of every scenario, on sockets created inside the server namespace.
//!
//! - UDP on `udp_port`: counts datagrams and payload bytes, records every (source address, source port) seen, and
//!   with `echo` sends each datagram back to its source.
//! - TCP on `connect_port` (the `connect` scenario): one epoll thread accepts, reads one request line per connection
//!   (up to 256 bytes; a connection silent for 10 s is dropped), writes one response line and closes (the server
//!   closes first, so the client's side ends in CLOSED, not TIME-WAIT). No connection waits for another. Counts
//!   accepted connections and responses written.
//! - TCP on `bulk_port` (`tcp-bulk`): one thread per stream (at most [`MAX_STREAMS`]) reads to end of stream and
//!   counts bytes.
//!
//! Every thread polls a stop flag at least every 50 ms; [`Responder::stop`] (also Drop) sets it and joins them. The
//! sockets were created in the namespace ([`Netns::run`]), so the threads themselves need not be in it.

use super::{io_err, LoadError, ResponderReport, Timeline};
use control::threads::StopGroup;
use netlab::Netns;
use std::collections::{HashMap, HashSet};
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Most concurrent bulk streams.
pub const MAX_STREAMS: usize = 1024;
/// The connect port's answer.
const RESPONSE: &[u8] = b"OK hyperplane loadgen\n";
/// The listeners' accept (and SYN) queue depth: as net.core.somaxconn and tcp_max_syn_backlog are set in the server
/// namespace.
const ACCEPT_BACKLOG: i32 = 65535;
/// A connection that has not sent its request line this long after being accepted is closed.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Ports and behaviour.
#[derive(Clone, Copy, Debug)]
pub struct Config {
    /// The address the three sockets bind (the lab's [`netlab::SERVER`], or `--responder`).
    pub addr: Ipv4Addr,
    /// Deepen the namespace's accept queues (`net.core.somaxconn`, `net.ipv4.tcp_max_syn_backlog`): in the
    /// namespaces the load generator made, not in a user's.
    pub tune_backlog: bool,
    /// Echo UDP datagrams back.
    pub echo: bool,
    /// UDP port.
    pub udp_port: u16,
    /// Request/response TCP port.
    pub connect_port: u16,
    /// Bulk-sink TCP port.
    pub bulk_port: u16,
}

#[derive(Default)]
struct Counts {
    udp_packets: AtomicU64,
    udp_bytes: AtomicU64,
    accepted: AtomicU64,
    responded: AtomicU64,
    streams: AtomicU64,
    bulk_bytes: AtomicU64,
    sources: Mutex<HashSet<SocketAddrV4>>,
}

impl Counts {
    fn saw(&self, from: SocketAddr) {
        if let SocketAddr::V4(a) = from {
            self.sources.lock().unwrap_or_else(|e| e.into_inner()).insert(a);
        }
    }
}

/// Running responder threads; stop (or drop) to end them.
pub struct Responder {
    counts: Arc<Counts>,
    threads: StopGroup,
}

impl Responder {
    /// Binds the three sockets on `cfg.addr` inside `ns` and starts the threads.
    pub fn start(ns: &Netns, cfg: Config, tl: Arc<Timeline>) -> Result<Responder, LoadError> {
        // A deep accept queue, whichever NAT is under test: a burst of
        // thousands of SYNs must not be dropped by the server.
        // (Not in a namespace the user made: its settings are the user's, and cap the backlog asked for below.)
        let tune: &[(&str, &str)] = if cfg.tune_backlog {
            &[("net.core.somaxconn", "65535"), ("net.ipv4.tcp_max_syn_backlog", "65535")]
        } else {
            &[]
        };
        for &(key, value) in tune {
            if let Err(e) = ns.sysctl(key, value) {
                tracing::warn!(key, error = %e, "responder: cannot deepen the accept queue");
            }
        }
        let a = cfg.addr;
        let (udp, conn, bulk) = ns.run(move || {
            let udp = UdpSocket::bind(SocketAddrV4::new(a, cfg.udp_port));
            let conn = TcpListener::bind(SocketAddrV4::new(a, cfg.connect_port));
            let bulk = TcpListener::bind(SocketAddrV4::new(a, cfg.bulk_port));
            (udp, conn, bulk)
        });
        let udp = udp.map_err(|e| io_err(format!("bind udp {a}:{}", cfg.udp_port), e))?;
        let conn = conn.map_err(|e| io_err(format!("bind tcp {a}:{}", cfg.connect_port), e))?;
        let bulk = bulk.map_err(|e| io_err(format!("bind tcp {a}:{}", cfg.bulk_port), e))?;
        set_rcvbuf(&udp, 32 << 20);
        udp.set_read_timeout(Some(Duration::from_millis(50))).map_err(|e| io_err("udp read timeout", e))?;
        // std listens with a backlog of 128 whatever somaxconn says; at ~16,000 connections/s that overflows
        // (ListenOverflows: SYNs dropped, so a 1 s SYN retransmission; handshakes completed by the client but dropped
        // by the server, so requests that time out). listen(2) again on a listening socket only resizes its queues.
        for l in [&conn, &bulk] {
            rustix::net::listen(l, ACCEPT_BACKLOG).map_err(|e| io_err("listen backlog", e.into()))?;
        }
        conn.set_nonblocking(true).map_err(|e| io_err("listener non-blocking", e))?;
        bulk.set_nonblocking(true).map_err(|e| io_err("listener non-blocking", e))?;
        let mut threads = StopGroup::new();
        let stop = threads.flag();
        let counts = Arc::new(Counts::default());
        {
            let (stop, counts, tl) = (Arc::clone(&stop), Arc::clone(&counts), Arc::clone(&tl));
            threads.push(spawn("lg-udp", move || udp_loop(&udp, cfg.echo, &stop, &counts, &tl)));
        }
        {
            let (stop, counts, tl) = (Arc::clone(&stop), Arc::clone(&counts), Arc::clone(&tl));
            threads.push(spawn("lg-conn", move || connect_loop(&conn, &stop, &counts, &tl)));
        }
        {
            let (stop, counts) = (Arc::clone(&stop), Arc::clone(&counts));
            threads.push(spawn("lg-bulk", move || bulk_loop(&bulk, &stop, &counts, &tl)));
        }
        Ok(Responder { counts, threads })
    }

    /// Stops the threads (after draining what is queued) and reports.
    pub fn stop(mut self) -> ResponderReport {
        self.threads.halt();
        let c = &self.counts;
        let sources = c.sources.lock().unwrap_or_else(|e| e.into_inner());
        let addrs: std::collections::BTreeSet<Ipv4Addr> = sources.iter().map(|s| *s.ip()).collect();
        ResponderReport {
            udp_packets: c.udp_packets.load(Ordering::Relaxed),
            udp_bytes: c.udp_bytes.load(Ordering::Relaxed),
            tcp_accepted: c.accepted.load(Ordering::Relaxed),
            tcp_responded: c.responded.load(Ordering::Relaxed),
            bulk_streams: c.streams.load(Ordering::Relaxed),
            bulk_bytes: c.bulk_bytes.load(Ordering::Relaxed),
            distinct_sources: sources.len() as u64,
            distinct_addresses: addrs.len() as u64,
            addresses: addrs.into_iter().take(16).collect(),
        }
    }
}

fn spawn(name: &str, f: impl FnOnce() + Send + 'static) -> JoinHandle<()> {
    std::thread::Builder::new().name(name.into()).spawn(f).expect("loadgen: cannot spawn a responder thread")
}

fn set_rcvbuf(s: &UdpSocket, bytes: usize) {
    // Best effort, as before: without CAP_NET_ADMIN the default stays.
    let _ = rustix::net::sockopt::set_socket_recv_buffer_size_force(s, bytes);
}

fn udp_loop(s: &UdpSocket, echo: bool, stop: &AtomicBool, c: &Counts, tl: &Timeline) {
    let mut buf = vec![0u8; 65536];
    let mut seen: HashSet<SocketAddrV4> = HashSet::new();
    loop {
        match s.recv_from(&mut buf) {
            Ok((n, from)) => {
                c.udp_packets.fetch_add(1, Ordering::Relaxed);
                c.udp_bytes.fetch_add(n as u64, Ordering::Relaxed);
                let now = Instant::now();
                tl.add(&tl.delivered, now, 1);
                tl.add(&tl.bytes, now, n as u64);
                if let SocketAddr::V4(a) = from {
                    if seen.insert(a) {
                        c.saw(from);
                    }
                }
                if echo {
                    let _ = s.send_to(&buf[..n], from);
                }
            }
            Err(_) => {
                if stop.load(Ordering::Relaxed) {
                    return;
                }
            }
        }
    }
}

/// Waits up to 50 ms for the listener to become readable.
fn wait_readable(l: &TcpListener) {
    let _ = dataplane_io::wait_readable(l, Duration::from_millis(50));
}

fn connect_loop(l: &TcpListener, stop: &AtomicBool, c: &Counts, tl: &Timeline) {
    use dataplane_io::{Events, Poller};
    const LISTENER: u64 = u64::MAX;
    let Ok(poller) = Poller::new() else { return };
    if poller.add(l, LISTENER).is_err() {
        return;
    }
    let mut events = Events::with_capacity(256);
    // Open connections by token: the stream, what it sent so far, when it was accepted.
    let mut open: HashMap<u64, (TcpStream, Vec<u8>, Instant)> = HashMap::new();
    let mut next = 0u64;
    let mut last_sweep = Instant::now();
    let mut stopped: Option<Instant> = None;
    loop {
        if poller.wait(&mut events, Some(Duration::from_millis(20))).is_err() {
            std::thread::sleep(Duration::from_millis(1));
        }
        let ready: Vec<u64> = events.tokens().collect();
        let idle = ready.is_empty();
        for t in ready {
            if t == LISTENER {
                while let Ok((s, from)) = l.accept() {
                    c.accepted.fetch_add(1, Ordering::Relaxed);
                    tl.add(&tl.delivered, Instant::now(), 1);
                    c.saw(from);
                    if s.set_nonblocking(true).is_ok() && poller.add(&s, next).is_ok() {
                        open.insert(next, (s, Vec::new(), Instant::now()));
                        next += 1;
                    }
                }
                continue;
            }
            let Some((s, got, _)) = open.get_mut(&t) else { continue };
            let mut buf = [0u8; 256];
            let done = match s.read(&mut buf) {
                Ok(0) => true,
                Ok(n) => {
                    got.extend_from_slice(&buf[..n]);
                    if got.contains(&b'\n') {
                        if s.write_all(RESPONSE).is_ok() {
                            c.responded.fetch_add(1, Ordering::Relaxed);
                        }
                        true
                    } else {
                        got.len() >= 256
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => false,
                Err(_) => true,
            };
            if done {
                // Dropping the stream closes it (the server closes first) and leaves the epoll set.
                open.remove(&t);
            }
        }
        if last_sweep.elapsed() >= Duration::from_millis(500) {
            last_sweep = Instant::now();
            open.retain(|_, (_, _, at)| at.elapsed() < REQUEST_TIMEOUT);
        }
        if stop.load(Ordering::Relaxed) {
            // Drain what is queued, but never for more than a second after the stop.
            let since = *stopped.get_or_insert_with(Instant::now);
            if idle || since.elapsed() >= Duration::from_secs(1) {
                return;
            }
        }
    }
}

fn bulk_loop(l: &TcpListener, stop: &Arc<AtomicBool>, c: &Arc<Counts>, tl: &Arc<Timeline>) {
    let mut streams: Vec<JoinHandle<()>> = Vec::new();
    loop {
        match l.accept() {
            Ok((s, from)) if streams.len() < MAX_STREAMS => {
                c.streams.fetch_add(1, Ordering::Relaxed);
                c.saw(from);
                let (stop, c, tl) = (Arc::clone(stop), Arc::clone(c), Arc::clone(tl));
                streams.push(spawn("lg-sink", move || sink(s, &stop, &c, &tl)));
            }
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                wait_readable(l);
            }
            Err(_) => std::thread::sleep(Duration::from_millis(1)),
        }
    }
    for t in streams {
        let _ = t.join();
    }
}

fn sink(mut s: TcpStream, stop: &AtomicBool, c: &Counts, tl: &Timeline) {
    if s.set_nonblocking(false).is_err() || s.set_read_timeout(Some(Duration::from_millis(50))).is_err() {
        return;
    }
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => {
                c.bulk_bytes.fetch_add(n as u64, Ordering::Relaxed);
                tl.add(&tl.bytes, Instant::now(), n as u64);
            }
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                if stop.load(Ordering::Relaxed) {
                    return;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return,
        }
    }
}
