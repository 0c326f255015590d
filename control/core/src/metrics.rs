//! The gateway's counters as Prometheus metrics, over HTTP on loopback.
//!
//! [`render`] writes a [`StatsReport`] in the Prometheus text exposition
//! format 0.0.4: for each metric family a `# HELP` and a `# TYPE` line, then
//! its samples. Families whose samples come from a list or a map (sessions
//! by protocol, drops by reason, port use by address, ENI setup times) are
//! left out entirely while that list is empty. The families:
//!
//! | metric | type | labels |
//! |---|---|---|
//! | `hyperplane_workers` | gauge | |
//! | `hyperplane_rx_frames_total` | counter | |
//! | `hyperplane_packets_total` | counter | `direction` = `outbound`, `inbound` |
//! | `hyperplane_bytes_total` | counter | `direction` |
//! | `hyperplane_hairpinned_total` | counter | |
//! | `hyperplane_sessions` | gauge | `proto` |
//! | `hyperplane_sessions_created_total` | counter | `proto` |
//! | `hyperplane_sessions_expired_total` | counter | `proto` |
//! | `hyperplane_drops_total` | counter | `reason` (every reason, zeros included) |
//! | `hyperplane_sessions_table` | gauge | `state` = `live`, `recyclable`, `capacity` |
//! | `hyperplane_sessions_recycled_total` | counter | |
//! | `hyperplane_sessions_evicted_total` | counter | |
//! | `hyperplane_sessions_reopened_total` | counter | |
//! | `hyperplane_sessions_flushed_total` | counter | |
//! | `hyperplane_port_use` | gauge | `addr`, `proto` = `tcp`, `udp`, `icmp` (ports held by live flows) |
//! | `hyperplane_port_recyclable` | gauge | `addr`, `proto` |
//! | `hyperplane_port_cooling` | gauge | `addr`, `proto` (of the recyclable: the remote closed first; they count towards the high-water mark) |
//! | `hyperplane_port_quarantined` | gauge | `addr`, `proto` |
//! | `hyperplane_port_capacity` | gauge | `addr` |
//! | `hyperplane_eni_addresses` | gauge | `eni`, `limit` = `in_use`, `max` |
//! | `hyperplane_eni_setup_seconds` | gauge | `eni` |
//! | `hyperplane_syscalls_total` | counter | `kind` = `read`, `write`, `epoll_wait`, `io_uring_enter`, `send`, `recv`, `wake` |
//! | `hyperplane_syscalls_per_packet` | gauge | |
//! | `hyperplane_io_backend` | gauge | `backend` = `uring`, `syscalls` (or `uring+syscalls`) |
//!
//! The text is written by `prometheus-client` (its Prometheus 0.0.4 text
//! encoder, with a collector that turns one [`StatsReport`] into these
//! families on each scrape).
//!
//! [`serve_metrics`] serves them on a loopback address only (the metrics say
//! how busy each environment is, so they are not for the network). `GET
//! /metrics` gets `200` with `Content-Type: text/plain; version=0.0.4;
//! charset=utf-8`; anything else gets `404`. One request per connection
//! (`Connection: close`), 5 s in all for a connection (request in, answer
//! out, however slowly it trickles), at most
//! [`api::MAX_CONNECTIONS`](crate::api::MAX_CONNECTIONS) connections at once
//! and [`MAX_PER_PEER`] per peer (its user id, from `/proc/net/tcp`, or its
//! address), so one local user cannot hold every slot:
//! the connections are accepted by the same bounded accept loop as the
//! control socket's, and the request is parsed by `httparse`.
//!
//! ```text
//! $ curl -s http://127.0.0.1:9100/metrics | grep drops
//! # HELP hyperplane_drops_total Packets dropped, by reason.
//! # TYPE hyperplane_drops_total counter
//! hyperplane_drops_total{reason="no_session"} 3
//! ```

use crate::api::{serve_loop, ApiError, Conn, StatsReport, MAX_CONNECTIONS};
use crate::deadline::Deadline;
use crate::threads::StopGroup;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{prometheus_text, DescriptorEncoder, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use std::collections::{BTreeMap, HashMap};
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The content type of the text exposition format (0.0.4).
pub const CONTENT_TYPE: &str = prometheus_text::CONTENT_TYPE;

/// How long a metrics connection may last in all (reading the request and
/// writing the answer).
pub const HTTP_TIMEOUT: Duration = Duration::from_secs(5);

/// Connections one peer (local user, or address) may hold at once.
pub const MAX_PER_PEER: usize = 8;

/// The largest request head read, in bytes.
const MAX_HEAD: usize = 8 * 1024;

/// The source of the counters a [`MetricsServer`] serves.
pub type StatsSource = Arc<dyn Fn() -> StatsReport + Send + Sync>;

/// One sample's labels (none: an unlabelled sample).
type Labels = Vec<(&'static str, String)>;

/// A sample's value: a count or a measurement.
#[derive(Copy, Clone, Debug)]
enum Value {
    Int(u64),
    Float(f64),
}

/// One metric family as the collector writes it.
struct Family {
    /// The name; a counter's gets `_total` from the encoder.
    name: &'static str,
    help: &'static str,
    kind: MetricType,
    samples: Vec<(Labels, Value)>,
}

/// The families of one [`StatsReport`], written by prometheus-client on
/// each scrape in the order built here.
#[derive(Debug)]
struct Snapshot(StatsReport);

impl Collector for Snapshot {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        for f in families(&self.0) {
            if f.samples.is_empty() {
                continue;
            }
            let mut metric = encoder.encode_descriptor(f.name, f.help, None, f.kind)?;
            for (labels, value) in &f.samples {
                if labels.is_empty() {
                    write_value(&mut metric, f.kind, *value)?;
                } else {
                    write_value(&mut metric.encode_family(labels)?, f.kind, *value)?;
                }
            }
        }
        Ok(())
    }
}

fn write_value(m: &mut MetricEncoder, kind: MetricType, v: Value) -> Result<(), std::fmt::Error> {
    match (kind, v) {
        (MetricType::Counter, Value::Int(n)) => m.encode_counter::<NoLabelSet, _, u64>(&n, None),
        (MetricType::Counter, Value::Float(x)) => m.encode_counter::<NoLabelSet, _, f64>(&x, None),
        (_, Value::Int(n)) => m.encode_gauge(&n),
        (_, Value::Float(x)) => m.encode_gauge(&x),
    }
}

fn one(v: u64) -> Vec<(Labels, Value)> {
    vec![(vec![], Value::Int(v))]
}

fn by(key: &'static str, m: &BTreeMap<String, u64>) -> Vec<(Labels, Value)> {
    m.iter().map(|(k, v)| (vec![(key, k.clone())], Value::Int(*v))).collect()
}

fn counter(name: &'static str, help: &'static str, samples: Vec<(Labels, Value)>) -> Family {
    Family { name, help, kind: MetricType::Counter, samples }
}

fn gauge(name: &'static str, help: &'static str, samples: Vec<(Labels, Value)>) -> Family {
    Family { name, help, kind: MetricType::Gauge, samples }
}

/// Every family of `s`, in the order they are written (see the module docs).
fn families(s: &StatsReport) -> Vec<Family> {
    let dirs = |o: u64, i: u64| {
        vec![
            (vec![("direction", "outbound".to_string())], Value::Int(o)),
            (vec![("direction", "inbound".to_string())], Value::Int(i)),
        ]
    };
    let h = &s.headroom;
    let mut v = vec![
        gauge("hyperplane_workers", "Worker threads running NAT engines.", one(s.workers as u64)),
        counter("hyperplane_rx_frames", "Frames received on all devices.", one(s.rx_frames)),
        counter(
            "hyperplane_packets",
            "Packets translated, outbound (from environments) and inbound (to them).",
            dirs(s.outbound_packets, s.inbound_packets),
        ),
        counter(
            "hyperplane_bytes",
            "Bytes of translated packets (IP packet bytes), by direction.",
            dirs(s.outbound_bytes, s.inbound_bytes),
        ),
        counter(
            "hyperplane_hairpinned",
            "Packets between two environments turned around inside the gateway.",
            one(s.hairpinned),
        ),
        gauge("hyperplane_sessions", "Live NAT sessions, by protocol.", by("proto", &s.sessions)),
        counter("hyperplane_sessions_created", "NAT sessions created, by protocol.", by("proto", &s.sessions_created)),
        counter(
            "hyperplane_sessions_expired",
            "NAT sessions expired or closed, by protocol.",
            by("proto", &s.sessions_expired),
        ),
        counter("hyperplane_drops", "Packets dropped, by reason.", by("reason", &s.drops)),
        gauge(
            "hyperplane_sessions_table",
            "Session table use: live sessions, recyclable ones (ended TCP, unanswered), and capacity.",
            [
                ("live", h.sessions.saturating_sub(h.sessions_recyclable)),
                ("recyclable", h.sessions_recyclable),
                ("capacity", h.sessions_capacity),
            ]
            .into_iter()
            .map(|(state, n)| (vec![("state", state.to_string())], Value::Int(n)))
            .collect(),
        ),
        counter(
            "hyperplane_sessions_recycled",
            "Ended or unanswered sessions removed early to make room for a new flow.",
            one(h.sessions_recycled),
        ),
        counter(
            "hyperplane_sessions_evicted",
            "Outbound sessions nobody answered, taken from a full table for a new flow.",
            one(h.sessions_evicted),
        ),
        counter(
            "hyperplane_sessions_reopened",
            "Ended TCP sessions reopened by a new SYN on the same 5-tuple.",
            one(h.sessions_reopened),
        ),
        counter(
            "hyperplane_sessions_flushed",
            "Sessions removed by an operator (flush, sessions --delete).",
            one(s.sessions_flushed),
        ),
    ];

    // One series per address even if a report lists an address twice.
    let mut ports: BTreeMap<Ipv4Addr, [[u64; 3]; 4]> = BTreeMap::new();
    let mut caps: BTreeMap<Ipv4Addr, u64> = BTreeMap::new();
    for p in &s.port_use {
        let e = ports.entry(p.addr).or_default();
        for (i, c) in [
            [p.tcp, p.udp, p.icmp],
            [p.closing.tcp, p.closing.udp, p.closing.icmp],
            [p.quarantined.tcp, p.quarantined.udp, p.quarantined.icmp],
            [p.cooling.tcp, p.cooling.udp, p.cooling.icmp],
        ]
        .into_iter()
        .enumerate()
        {
            for j in 0..3 {
                e[i][j] += u64::from(c[j]);
            }
        }
        let cap = caps.entry(p.addr).or_default();
        *cap = (*cap).max(u64::from(p.capacity));
    }
    for (i, name, help) in [
        (
            0,
            "hyperplane_port_use",
            "NAT ports (ICMP: query ids) held by live flows, by translated address and protocol.",
        ),
        (
            1,
            "hyperplane_port_recyclable",
            "NAT ports held only by ended or unanswered sessions, which new flows recycle.",
        ),
        (2, "hyperplane_port_quarantined", "NAT ports resting before reuse (RFC 6888 REQ-8)."),
        (
            3,
            "hyperplane_port_cooling",
            "Of the recyclable NAT ports, those whose remote closed first: they may sit in its TIME_WAIT and count \
             towards the high-water mark that adds an ENI address.",
        ),
    ] {
        let mut samples = Vec::new();
        for (addr, n) in &ports {
            for (j, proto) in ["tcp", "udp", "icmp"].into_iter().enumerate() {
                samples.push((vec![("addr", addr.to_string()), ("proto", proto.to_string())], Value::Int(n[i][j])));
            }
        }
        v.push(gauge(name, help, samples));
    }
    v.push(gauge(
        "hyperplane_port_capacity",
        "NAT ports available per protocol, by translated address.",
        caps.iter().map(|(a, n)| (vec![("addr", a.to_string())], Value::Int(*n))).collect(),
    ));
    v.push(gauge(
        "hyperplane_eni_addresses",
        "Addresses of each shared ENI, and the most it may have (max_eni_addresses).",
        h.eni_addresses
            .iter()
            .flat_map(|e| {
                [("in_use", e.addresses), ("max", e.max)].map(|(limit, n)| {
                    (vec![("eni", e.eni.to_string()), ("limit", limit.to_string())], Value::Int(u64::from(n)))
                })
            })
            .collect(),
    ));
    v.push(counter(
        "hyperplane_syscalls",
        "System calls made by the I/O threads, by kind.",
        by("kind", &s.io.syscalls),
    ));
    v.push(counter(
        "hyperplane_vhost_user",
        "vhost-user attachments' device counters: frames from and to the guest, malformed descriptor chains returned unused, frames for the guest dropped (no buffer, too big, offload), ring errors.",
        s.io
            .vhost_user
            .iter()
            .flat_map(|(a, cs)| {
                cs.iter().map(|(k, n)| (vec![("attachment", a.clone()), ("counter", k.clone())], Value::Int(*n)))
            })
            .collect(),
    ));
    if !s.io.backend.is_empty() {
        v.push(gauge(
            "hyperplane_syscalls_per_packet",
            "System calls of the I/O threads per forwarded packet (outbound plus inbound), since start.",
            vec![(vec![], Value::Float(s.io.syscalls_per_packet))],
        ));
        v.push(gauge(
            "hyperplane_io_backend",
            "The workers' I/O path (1 for the one in use).",
            vec![(vec![("backend", s.io.backend.clone())], Value::Int(1))],
        ));
    }
    let setup: BTreeMap<u32, f64> = s.eni_setup_seconds.iter().copied().collect();
    v.push(gauge(
        "hyperplane_eni_setup_seconds",
        "How long each shared ENI's setup took, in seconds.",
        setup.iter().map(|(e, secs)| (vec![("eni", e.to_string())], Value::Float(*secs))).collect(),
    ));
    v
}

/// `s` in the Prometheus text exposition format 0.0.4 (see the module
/// docs for the families), written by prometheus-client.
pub fn render(s: &StatsReport) -> String {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(Snapshot(s.clone())));
    let mut out = String::new();
    // Writing into a String cannot fail.
    let _ = prometheus_text::encode(&mut out, &registry);
    out
}

/// A running metrics server; see [`serve_metrics`]. Stops on drop.
pub struct MetricsServer {
    addr: SocketAddr,
    accept: StopGroup,
}

impl std::fmt::Debug for MetricsServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MetricsServer").field("addr", &self.addr).finish_non_exhaustive()
    }
}

impl MetricsServer {
    /// The address it listens on (with the real port when bound to port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops serving (same as dropping it).
    pub fn stop(mut self) {
        self.accept.halt();
    }
}

/// Serves [`render`] of `source()` at `http://{addr}/metrics`. `addr` must
/// be a loopback address ([`ApiError::NotLoopback`] otherwise); port 0 picks
/// a free port (see [`MetricsServer::local_addr`]).
pub fn serve_metrics(
    addr: SocketAddr,
    source: Arc<dyn Fn() -> StatsReport + Send + Sync>,
) -> Result<MetricsServer, ApiError> {
    if !addr.ip().is_loopback() {
        return Err(ApiError::NotLoopback { addr });
    }
    let ctx = |what: &str, e: io::Error| ApiError::Io { context: format!("{what} metrics on {addr}"), source: e };
    let listener = TcpListener::bind(addr).map_err(|e| ctx("binding", e))?;
    let local = listener.local_addr().map_err(|e| ctx("binding", e))?;
    listener.set_nonblocking(true).map_err(|e| ctx("serving", e))?;
    let mut accept = StopGroup::new();
    let stop = accept.flag();
    accept.push(
        std::thread::Builder::new()
            .name("hp-metrics".into())
            .spawn(move || accept_loop(listener, source, stop))
            .map_err(|e| ctx("starting", e))?,
    );
    tracing::info!(addr = %local, "metrics listening");
    Ok(MetricsServer { addr: local, accept })
}

/// Who holds a metrics connection: the local user that opened it, or
/// (when `/proc/net/tcp` does not say) its address.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Peer {
    Uid(u32),
    Addr(std::net::IpAddr),
    Unknown,
}

/// One connection counted against its peer's share; given back on drop.
struct PeerSlot {
    peers: Arc<Mutex<HashMap<Peer, usize>>>,
    peer: Peer,
}

impl PeerSlot {
    fn take(peers: &Arc<Mutex<HashMap<Peer, usize>>>, peer: Peer) -> Option<PeerSlot> {
        let mut m = peers.lock().unwrap_or_else(|e| e.into_inner());
        let n = m.entry(peer.clone()).or_default();
        if *n >= MAX_PER_PEER {
            return None;
        }
        *n += 1;
        Some(PeerSlot { peers: Arc::clone(peers), peer })
    }
}

impl Drop for PeerSlot {
    fn drop(&mut self) {
        let mut m = self.peers.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = m.get_mut(&self.peer) {
            *n -= 1;
            if *n == 0 {
                m.remove(&self.peer);
            }
        }
    }
}

/// The peer of an accepted loopback connection: the owner of the client's
/// socket, found in `/proc/net/tcp` (or `tcp6`) as the line whose local
/// end is the peer and remote end is us.
fn peer_of(stream: &TcpStream) -> Peer {
    let (Ok(us), Ok(them)) = (stream.local_addr(), stream.peer_addr()) else {
        return Peer::Unknown;
    };
    let hex = |a: SocketAddr| match a {
        SocketAddr::V4(v) => format!("{:08X}:{:04X}", u32::from_le_bytes(v.ip().octets()), v.port()),
        SocketAddr::V6(v) => {
            let o = v.ip().octets();
            let words: String =
                o.chunks(4).map(|c| format!("{:08X}", u32::from_le_bytes([c[0], c[1], c[2], c[3]]))).collect();
            format!("{words}:{:04X}", v.port())
        }
    };
    let file = if them.is_ipv4() { "/proc/net/tcp" } else { "/proc/net/tcp6" };
    let (local, remote) = (hex(them), hex(us));
    let uid = std::fs::read_to_string(file).ok().and_then(|t| {
        t.lines().skip(1).find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() > 7 && f[1] == local && f[2] == remote).then(|| f[7].parse().ok()).flatten()
        })
    });
    match uid {
        Some(u) => Peer::Uid(u),
        None => Peer::Addr(them.ip()),
    }
}

fn accept_loop(listener: TcpListener, source: StatsSource, stop: Arc<AtomicBool>) {
    let peers: Arc<Mutex<HashMap<Peer, usize>>> = Arc::default();
    serve_loop(
        "metrics",
        &listener,
        |l| l.accept().map(|(s, _)| s),
        &stop,
        |stream, live| {
            if live >= MAX_CONNECTIONS {
                return None; // dropped: closed
            }
            let slot = PeerSlot::take(&peers, peer_of(&stream))?; // over its share: closed
            let setup = || -> io::Result<TcpStream> {
                stream.set_nonblocking(false)?;
                stream.try_clone()
            };
            let handle = setup().ok()?;
            let source = source.clone();
            let thread = std::thread::Builder::new()
                .name("hp-metrics-conn".into())
                .spawn(move || {
                    serve_conn(Deadline::new(stream, HTTP_TIMEOUT), &source);
                    drop(slot);
                })
                .ok()?;
            Some(Conn { stream: handle, thread })
        },
    );
}

/// Reads the request head (up to the blank line, at most [`MAX_HEAD`]
/// bytes) and returns its method and path (without the query), or `None`
/// if it is not an HTTP request (httparse decides).
fn request_target(stream: &mut impl Read) -> Option<(String, String)> {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && !head.windows(2).any(|w| w == b"\n\n") {
        if head.len() >= MAX_HEAD {
            break;
        }
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => head.extend_from_slice(&buf[..n]),
            Err(_) => return None,
        }
    }
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut req = httparse::Request::new(&mut headers);
    // What httparse read of the request line counts, as before: a head cut
    // at MAX_HEAD (partial) or with a bad header still has its method and
    // path; "junk" has none.
    let _ = req.parse(&head);
    let path = req.path?.split('?').next().unwrap_or("").to_string();
    Some((req.method?.to_string(), path))
}

fn serve_conn(mut stream: Deadline<TcpStream>, source: &StatsSource) {
    let target = request_target(&mut stream);
    let is_metrics = target.as_ref().is_some_and(|(method, path)| method == "GET" && path == "/metrics");
    let (status, body) = if is_metrics {
        match catch_unwind(AssertUnwindSafe(|| render(&source()))) {
            Ok(body) => ("200 OK", body),
            Err(_) => ("500 Internal Server Error", "internal error\n".to_string()),
        }
    } else {
        ("404 Not Found", "not found: try GET /metrics\n".to_string())
    };
    let content_type = if status.starts_with("200") { CONTENT_TYPE } else { "text/plain; charset=utf-8" };
    let resp = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.write_all(resp.as_bytes());
    let _ = stream.flush();
    let _ = stream.get_ref().shutdown(std::net::Shutdown::Write);
}
