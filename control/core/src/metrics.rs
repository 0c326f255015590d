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
//! | `hyperplane_sessions_reopened_total` | counter | |
//! | `hyperplane_port_use` | gauge | `addr`, `proto` = `tcp`, `udp`, `icmp` (ports held by live flows) |
//! | `hyperplane_port_recyclable` | gauge | `addr`, `proto` |
//! | `hyperplane_port_quarantined` | gauge | `addr`, `proto` |
//! | `hyperplane_port_capacity` | gauge | `addr` |
//! | `hyperplane_eni_addresses` | gauge | `eni`, `limit` = `in_use`, `max` |
//! | `hyperplane_eni_setup_seconds` | gauge | `eni` |
//!
//! [`serve_metrics`] serves them: a tiny HTTP/1.1 server on a loopback
//! address only (the metrics say how busy each environment is, so they are
//! not for the network). `GET /metrics` gets `200` with `Content-Type:
//! text/plain; version=0.0.4; charset=utf-8`; anything else gets `404`. One
//! request per connection (`Connection: close`), 5 s timeouts, at most
//! [`api::MAX_CONNECTIONS`](crate::api::MAX_CONNECTIONS) connections at once.
//!
//! ```text
//! $ curl -s http://127.0.0.1:9100/metrics | grep drops
//! # HELP hyperplane_drops_total Packets dropped, by reason.
//! # TYPE hyperplane_drops_total counter
//! hyperplane_drops_total{reason="no_session"} 3
//! ```

use crate::api::{serve_loop, ApiError, Conn, StatsReport, MAX_CONNECTIONS};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

/// The content type of the text exposition format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Read and write timeout of a metrics connection.
const HTTP_TIMEOUT: Duration = Duration::from_secs(5);

/// The largest request head read, in bytes.
const MAX_HEAD: usize = 8 * 1024;

/// The source of the counters a [`MetricsServer`] serves.
pub type StatsSource = Arc<dyn Fn() -> StatsReport + Send + Sync>;

/// Escapes a label value: backslash, double quote and newline.
fn label(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// A float as the exposition format spells it (`NaN`, `+Inf`, `-Inf`).
fn float(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v.is_infinite() {
        if v > 0.0 { "+Inf" } else { "-Inf" }.into()
    } else {
        format!("{v}")
    }
}

/// Writes one family: HELP, TYPE, samples (`labels` is the text between the
/// braces, empty for none). Nothing at all if there are no samples.
fn family(out: &mut String, name: &str, kind: &str, help: &str, samples: &[(String, String)]) {
    if samples.is_empty() {
        return;
    }
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
    for (labels, value) in samples {
        if labels.is_empty() {
            let _ = writeln!(out, "{name} {value}");
        } else {
            let _ = writeln!(out, "{name}{{{labels}}} {value}");
        }
    }
}

fn one(v: impl ToString) -> Vec<(String, String)> {
    vec![(String::new(), v.to_string())]
}

fn by(key: &str, m: &BTreeMap<String, u64>) -> Vec<(String, String)> {
    m.iter().map(|(k, v)| (format!("{key}=\"{}\"", label(k)), v.to_string())).collect()
}

/// `s` in the Prometheus text exposition format 0.0.4 (see the module
/// docs for the families).
pub fn render(s: &StatsReport) -> String {
    let mut out = String::new();
    family(&mut out, "hyperplane_workers", "gauge", "Worker threads running NAT engines.", &one(s.workers));
    family(&mut out, "hyperplane_rx_frames_total", "counter", "Frames received on all devices.", &one(s.rx_frames));
    let dirs = |o: u64, i: u64| {
        vec![
            ("direction=\"outbound\"".to_string(), o.to_string()),
            ("direction=\"inbound\"".to_string(), i.to_string()),
        ]
    };
    family(
        &mut out,
        "hyperplane_packets_total",
        "counter",
        "Packets translated, outbound (from environments) and inbound (to them).",
        &dirs(s.outbound_packets, s.inbound_packets),
    );
    family(
        &mut out,
        "hyperplane_bytes_total",
        "counter",
        "Bytes of translated packets (IP packet bytes), by direction.",
        &dirs(s.outbound_bytes, s.inbound_bytes),
    );
    family(
        &mut out,
        "hyperplane_hairpinned_total",
        "counter",
        "Packets between two environments turned around inside the gateway.",
        &one(s.hairpinned),
    );
    family(&mut out, "hyperplane_sessions", "gauge", "Live NAT sessions, by protocol.", &by("proto", &s.sessions));
    family(
        &mut out,
        "hyperplane_sessions_created_total",
        "counter",
        "NAT sessions created, by protocol.",
        &by("proto", &s.sessions_created),
    );
    family(
        &mut out,
        "hyperplane_sessions_expired_total",
        "counter",
        "NAT sessions expired or closed, by protocol.",
        &by("proto", &s.sessions_expired),
    );
    family(&mut out, "hyperplane_drops_total", "counter", "Packets dropped, by reason.", &by("reason", &s.drops));

    let h = &s.headroom;
    let table_samples = vec![
        ("state=\"live\"".to_string(), h.sessions.saturating_sub(h.sessions_recyclable).to_string()),
        ("state=\"recyclable\"".to_string(), h.sessions_recyclable.to_string()),
        ("state=\"capacity\"".to_string(), h.sessions_capacity.to_string()),
    ];
    family(
        &mut out,
        "hyperplane_sessions_table",
        "gauge",
        "Session table use: live sessions, recyclable ones (ended TCP, unanswered), and capacity.",
        &table_samples,
    );
    family(
        &mut out,
        "hyperplane_sessions_recycled_total",
        "counter",
        "Ended or unanswered sessions removed early to make room for a new flow.",
        &one(h.sessions_recycled),
    );
    family(
        &mut out,
        "hyperplane_sessions_reopened_total",
        "counter",
        "Ended TCP sessions reopened by a new SYN on the same 5-tuple.",
        &one(h.sessions_reopened),
    );

    // One series per address even if a report lists an address twice.
    let mut ports: BTreeMap<Ipv4Addr, [[u64; 3]; 3]> = BTreeMap::new();
    let mut caps: BTreeMap<Ipv4Addr, u64> = BTreeMap::new();
    for p in &s.port_use {
        let e = ports.entry(p.addr).or_default();
        for (i, c) in [
            [p.tcp, p.udp, p.icmp],
            [p.closing.tcp, p.closing.udp, p.closing.icmp],
            [p.quarantined.tcp, p.quarantined.udp, p.quarantined.icmp],
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
    ] {
        let mut samples = Vec::new();
        for (addr, v) in &ports {
            for (j, proto) in ["tcp", "udp", "icmp"].into_iter().enumerate() {
                samples.push((format!("addr=\"{addr}\",proto=\"{proto}\""), v[i][j].to_string()));
            }
        }
        family(&mut out, name, "gauge", help, &samples);
    }
    let cap: Vec<(String, String)> = caps.iter().map(|(a, v)| (format!("addr=\"{a}\""), v.to_string())).collect();
    family(
        &mut out,
        "hyperplane_port_capacity",
        "gauge",
        "NAT ports available per protocol, by translated address.",
        &cap,
    );
    let addrs: Vec<(String, String)> = h
        .eni_addresses
        .iter()
        .flat_map(|e| {
            [
                (format!("eni=\"{}\",limit=\"in_use\"", e.eni), e.addresses.to_string()),
                (format!("eni=\"{}\",limit=\"max\"", e.eni), e.max.to_string()),
            ]
        })
        .collect();
    family(
        &mut out,
        "hyperplane_eni_addresses",
        "gauge",
        "Addresses of each shared ENI, and the most it may have (max_eni_addresses).",
        &addrs,
    );
    let setup: BTreeMap<u32, f64> = s.eni_setup_seconds.iter().copied().collect();
    let setup: Vec<(String, String)> = setup.iter().map(|(e, v)| (format!("eni=\"{e}\""), float(*v))).collect();
    family(
        &mut out,
        "hyperplane_eni_setup_seconds",
        "gauge",
        "How long each shared ENI's setup took, in seconds.",
        &setup,
    );
    out
}

/// A running metrics server; see [`serve_metrics`]. Stops on drop.
pub struct MetricsServer {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
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
        self.shutdown();
    }

    fn shutdown(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        self.shutdown();
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
    let stop = Arc::new(AtomicBool::new(false));
    let thread = {
        let stop = stop.clone();
        std::thread::Builder::new()
            .name("hp-metrics".into())
            .spawn(move || accept_loop(listener, source, stop))
            .map_err(|e| ctx("starting", e))?
    };
    tracing::info!(addr = %local, "metrics listening");
    Ok(MetricsServer { addr: local, stop, thread: Some(thread) })
}

fn accept_loop(listener: TcpListener, source: StatsSource, stop: Arc<AtomicBool>) {
    serve_loop(
        "metrics",
        &listener,
        |l| l.accept().map(|(s, _)| s),
        &stop,
        |stream, live| {
            if live >= MAX_CONNECTIONS {
                return None; // dropped: closed
            }
            let setup = || -> io::Result<TcpStream> {
                stream.set_nonblocking(false)?;
                stream.set_read_timeout(Some(HTTP_TIMEOUT))?;
                stream.set_write_timeout(Some(HTTP_TIMEOUT))?;
                stream.try_clone()
            };
            let handle = setup().ok()?;
            let source = source.clone();
            let thread = std::thread::Builder::new()
                .name("hp-metrics-conn".into())
                .spawn(move || serve_conn(stream, &source))
                .ok()?;
            Some(Conn { stream: handle, thread })
        },
    );
}

/// Reads the request head (up to the blank line, at most [`MAX_HEAD`]
/// bytes) and returns its request line, or `None` if there is none.
fn request_line(stream: &mut TcpStream) -> Option<String> {
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
    let text = String::from_utf8_lossy(&head);
    text.lines().next().map(|l| l.trim().to_string()).filter(|l| !l.is_empty())
}

fn serve_conn(mut stream: TcpStream, source: &StatsSource) {
    let Some(line) = request_line(&mut stream) else { return };
    let mut parts = line.split_whitespace();
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = target.split('?').next().unwrap_or("");
    let (status, body) = if method == "GET" && path == "/metrics" {
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
    let _ = stream.shutdown(std::net::Shutdown::Write);
}
