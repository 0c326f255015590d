//! The gateway's runtime API: a Unix stream socket speaking newline-delimited
//! JSON, and its data types. The text the CLI prints from them is in the
//! `hyperplane` crate (`hyperplane::tables`).
//!
//! # Protocol
//!
//! The gateway listens on a Unix stream socket (see [`serve`]) whose file has
//! mode `0600`: only its owner (root, the user the gateway runs as) can
//! connect. Over a connection, a client sends one [`Request`] as one JSON
//! object on one line (terminated by `\n`), and the gateway answers with one
//! [`Response`] as one JSON object on one line. A client may send several
//! requests on one connection, one after the other; each gets its response,
//! in order, before the next request is read. Blank lines are ignored.
//!
//! - A request is tagged by `"cmd"`: `status`, `sessions`, `stats`, `apply`,
//!   `flush`, `capture`. Fields that are `Option`s may be `null` or left
//!   out. Unknown fields of `sessions`, `apply`, `flush` and `capture` are
//!   refused (a typo is an error, not a silently unfiltered answer — or a
//!   flush of everything); `status` and `stats` ignore extra fields.
//! - A response is tagged by `"kind"`: `status`, `sessions`, `stats`,
//!   `applied`, `flushed`, `captured`, or `error` with a `"message"`.
//! - `capture` is answered when the capture ends (up to
//!   [`CAPTURE_MAX_SECONDS`]): a client waits that long
//!   ([`Client::set_timeout`]).
//! - A line that is not a valid request (bad JSON, unknown `cmd`, bad field)
//!   gets an `error` response and the connection stays usable.
//! - A request line longer than 4 MiB ([`MAX_REQUEST_BYTES`]) gets an `error`
//!   response and the gateway closes the connection (it does not read the
//!   rest of that line).
//! - A connection idle for 30 s is closed by the gateway.
//!
//! The exact JSON of a request, as [`call`] sends it (pinned by the tests):
//!
//! ```text
//! {"cmd":"sessions","eni":1,"env":null,"limit":null}
//! ```
//!
//! An exchange with `socat` (`>` is what the client sends, `<` what it gets):
//!
//! ```text
//! $ sudo socat - UNIX-CONNECT:/run/hyperplane.sock
//! > {"cmd":"stats"}
//! < {"kind":"stats","workers":4,"rx_frames":1200,...,"eni_setup_seconds":[[1,0.412]]}
//! > {"cmd":"sessions","eni":1,"limit":2}
//! < {"kind":"sessions","sessions":[{"proto":"tcp","timeout_s":7435,...}],"total":17}
//! > {"cmd":"frobnicate"}
//! < {"kind":"error","message":"bad request: unknown variant `frobnicate`, ..."}
//! ```
//!
//! # Server and client
//!
//! [`serve`] binds the socket and answers requests with a handler on threads
//! of its own (one accept thread, one short-lived thread per connection, at
//! most [`MAX_CONNECTIONS`] at a time); [`Server::stop`] (or dropping the
//! [`Server`]) stops them and removes the socket file. [`call`] is the
//! client for one request; [`Client`] keeps a connection for several.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::{self, BufRead, Read, Write};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

mod client;
mod server;

pub use client::{call, Client};
pub use server::{serve, Server};
pub(crate) use server::{serve_loop, Conn};

/// The largest request line the server reads, in bytes (4 MiB), not
/// counting the terminating newline.
pub const MAX_REQUEST_BYTES: usize = 4 * 1024 * 1024;

/// The largest response line the client reads, in bytes (256 MiB).
pub const MAX_RESPONSE_BYTES: usize = 256 * 1024 * 1024;

/// How many connections the server serves at once; more are answered with
/// an error and closed.
pub const MAX_CONNECTIONS: usize = 32;

/// Read and write timeout of a connection, on both sides (30 s).
pub const IO_TIMEOUT: Duration = Duration::from_secs(30);

/// How often the accept loops look at their stop flag.
pub(crate) const POLL_INTERVAL: Duration = Duration::from_millis(100);

/// The mode of the control socket file: read/write for its owner only.
pub const SOCKET_MODE: u32 = 0o600;

/// The handler a [`Server`] answers requests with.
pub type Handler = Arc<dyn Fn(Request) -> Response + Send + Sync>;

// ---------------------------------------------------------------------------
// Data types
// ---------------------------------------------------------------------------

/// A request to the gateway, one JSON object tagged by `"cmd"`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    /// The shared ENIs and the functions bound to them: `{"cmd":"status"}`.
    Status,
    /// The live NAT sessions, filtered.
    Sessions {
        /// Only sessions on this shared ENI (its id), if set.
        #[serde(default)]
        eni: Option<u32>,
        /// Only sessions of this execution environment (its address), if set.
        #[serde(default)]
        env: Option<Ipv4Addr>,
        /// At most this many sessions in the answer, if set (the answer's
        /// `total` still counts all that matched).
        #[serde(default)]
        limit: Option<usize>,
    },
    /// The dataplane counters: `{"cmd":"stats"}`.
    Stats,
    /// Apply a new config: the full TOML text of it, as `hyperplane run`
    /// reads from its file.
    Apply {
        /// The config, TOML text.
        config: String,
    },
    /// Remove the sessions that match every filter that is set (all of
    /// them when none is), as `conntrack -F` / `-D` do; `hyperplane flush`
    /// and `hyperplane sessions --delete` send it. Their ports rest in
    /// quarantine as after expiry; a packet of a removed flow starts a new
    /// session (or is unsolicited, from the VPC).
    Flush {
        /// Only sessions of this execution environment (its address).
        #[serde(default)]
        env: Option<Ipv4Addr>,
        /// Only sessions on this shared ENI (its id).
        #[serde(default)]
        eni: Option<u32>,
        /// Only this protocol: `tcp`, `udp` or `icmp`.
        #[serde(default)]
        proto: Option<String>,
        /// Only sessions to this remote address.
        #[serde(default)]
        dst: Option<Ipv4Addr>,
        /// Only sessions to this remote port (ICMP: the query id).
        #[serde(default)]
        dport: Option<u16>,
        /// Only sessions from this source port of the environment.
        #[serde(default)]
        sport: Option<u16>,
    },
    /// Write the frames one port sees, received and sent, to a pcap file:
    /// `hyperplane capture` sends it. The gateway answers when the capture
    /// ends (after `count` frames or `seconds`, whichever comes first).
    Capture {
        /// The port: an attachment's name, or the outside interface's.
        port: String,
        /// The pcap file to write (the gateway writes it, as its user).
        out: PathBuf,
        /// Stop after this many frames (default 1,000; at most
        /// [`CAPTURE_MAX_FRAMES`]).
        #[serde(default)]
        count: Option<u64>,
        /// Stop after this many seconds (default 10; at most
        /// [`CAPTURE_MAX_SECONDS`]).
        #[serde(default)]
        seconds: Option<f64>,
    },
}

/// The most frames one capture writes.
pub const CAPTURE_MAX_FRAMES: u64 = 1_000_000;
/// The longest a capture runs, in seconds.
pub const CAPTURE_MAX_SECONDS: f64 = 600.0;

/// The gateway's answer to a [`Request`], one JSON object tagged by `"kind"`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Response {
    /// Answer to [`Request::Status`].
    Status(StatusReport),
    /// Answer to [`Request::Sessions`].
    Sessions(SessionsReport),
    /// Answer to [`Request::Stats`].
    Stats(StatsReport),
    /// Answer to [`Request::Apply`] that succeeded.
    Applied(ApplyReport),
    /// Answer to [`Request::Flush`].
    Flushed(FlushReport),
    /// Answer to [`Request::Capture`], once the capture ended.
    Captured(CaptureReport),
    /// The request failed or could not be read.
    Error {
        /// What went wrong, for a human.
        message: String,
    },
}

/// The shared ENIs and the functions bound to them.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StatusReport {
    /// Every shared ENI the gateway manages, by id.
    pub enis: Vec<EniStatus>,
    /// Every function in the config, by name.
    pub functions: Vec<FunctionStatus>,
    /// Room left for new connections.
    #[serde(default)]
    pub headroom: Headroom,
}

/// The workers' I/O path and the system calls it made.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct IoStats {
    /// `"uring"` or `"syscalls"`; both joined by `+` when some worker fell
    /// back (see `gateway.io.backend`).
    pub backend: String,
    /// System calls made by the workers and the AF_PACKET reader, by kind
    /// (`read`, `write`, `epoll_wait`, `io_uring_enter`, `send`, `recv`,
    /// `wake`) (count).
    pub syscalls: BTreeMap<String, u64>,
    /// All of those divided by the packets forwarded (outbound plus
    /// inbound translated packets); 0 before the first.
    pub syscalls_per_packet: f64,
    /// Each `vhost-user` attachment's device counters, by attachment name,
    /// then by counter (`guest_tx_frames`, `guest_rx_frames`,
    /// `malformed_chains`, `rx_no_buffer`, `rx_too_big`, `rx_offload`,
    /// `ring_errors`) (count of frames or chains).
    #[serde(default)]
    pub vhost_user: BTreeMap<String, BTreeMap<String, u64>>,
}

/// One shared ENI.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EniStatus {
    /// The gateway's id of the ENI (stable for its life).
    pub id: u32,
    /// The subnet it is in (its config name or id, e.g. `subnet-a`).
    pub subnet: String,
    /// Its security groups (e.g. `sg-b`), sorted.
    pub security_groups: Vec<String>,
    /// Its IPv4 addresses, the NAT's translated sources.
    pub addrs: Vec<Ipv4Addr>,
    /// The config generation that last changed it (counts applies, from 1).
    pub generation: u64,
    /// Its lifecycle state, e.g. `creating`, `active`, `draining`.
    pub state: String,
    /// The functions bound to it, by name.
    pub functions: Vec<String>,
    /// Live NAT sessions on it (count).
    pub sessions: u64,
    /// Ports in use on each of its addresses.
    pub port_use: Vec<PortUseLine>,
    /// How long its setup took, in milliseconds; `None` while not set up.
    pub setup_ms: Option<f64>,
    /// Its setup, step by step, in order.
    pub setup_steps: Vec<SetupStep>,
}

/// One step of an ENI's setup and how long it took.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SetupStep {
    /// What the step did, e.g. `create`, `attach`, `addresses`.
    pub step: String,
    /// How long it took, in milliseconds.
    pub ms: f64,
}

/// NAT ports in use on one translated address, by protocol.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PortUseLine {
    /// The translated (ENI) address.
    pub addr: Ipv4Addr,
    /// TCP ports held by live connections (count).
    pub tcp: u32,
    /// UDP ports held by live mappings (count).
    pub udp: u32,
    /// ICMP query ids held by live mappings (count).
    pub icmp: u32,
    /// Ports held only by ended connections or unanswered sessions, which a
    /// new flow recycles when it needs them (count, by protocol).
    #[serde(default)]
    pub closing: ProtoCounts,
    /// Of `closing`: ports of connections the remote closed first, which may
    /// sit in its TIME_WAIT; they count towards the high-water mark that
    /// adds an ENI address (count, by protocol).
    #[serde(default)]
    pub cooling: ProtoCounts,
    /// Ports resting in quarantine before reuse (count, by protocol).
    #[serde(default)]
    pub quarantined: ProtoCounts,
    /// Ports (or ids) per protocol on this address (count).
    pub capacity: u32,
}

/// A count per protocol.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProtoCounts {
    /// TCP.
    pub tcp: u32,
    /// UDP.
    pub udp: u32,
    /// ICMP.
    pub icmp: u32,
}

/// How much room is left for new connections: the session tables, and
/// each ENI's addresses against its maximum.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Headroom {
    /// Sessions in the tables, live and recyclable (count).
    pub sessions: u64,
    /// Of those, sessions a new flow may recycle: ended TCP connections,
    /// sessions from the VPC never answered (count).
    pub sessions_recyclable: u64,
    /// Session table capacity, all workers (count).
    pub sessions_capacity: u64,
    /// Sessions recycled for new flows so far (count).
    pub sessions_recycled: u64,
    /// Outbound sessions nobody answered, taken from a full table for new
    /// flows so far (count).
    #[serde(default)]
    pub sessions_evicted: u64,
    /// Ended connections reopened by a new SYN on the same 5-tuple (count).
    pub sessions_reopened: u64,
    /// Addresses per shared ENI against the most it may have.
    pub eni_addresses: Vec<EniAddresses>,
}

/// One shared ENI's addresses against `max_eni_addresses`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EniAddresses {
    /// The ENI's id.
    pub eni: u32,
    /// Addresses it has (count).
    pub addresses: u32,
    /// The most it may have (count).
    pub max: u32,
}

/// One function of the config and how it is doing.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FunctionStatus {
    /// The function's name in the config.
    pub name: String,
    /// Its state, e.g. `Pending`, `Active`, `Failed`.
    pub state: String,
    /// Why it is in that state, when there is more to say.
    pub state_reason: Option<String>,
    /// How its last update went, e.g. `Successful`, `InProgress`, `Failed`.
    pub last_update_status: String,
    /// Why, when there is more to say.
    pub last_update_reason: Option<String>,
    /// The shared ENIs (ids) it sends through.
    pub enis: Vec<u32>,
}

/// Live NAT sessions.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SessionsReport {
    /// The sessions, at most the request's `limit` of them.
    pub sessions: Vec<SessionLine>,
    /// How many sessions matched the request's filters, before the limit.
    pub total: usize,
}

/// One NAT session, both directions.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SessionLine {
    /// `tcp`, `udp` or `icmp`.
    pub proto: String,
    /// Time left before it expires unless traffic refreshes it, in seconds.
    pub timeout_s: u64,
    /// The TCP state (e.g. `ESTABLISHED`), or `-` for UDP and ICMP.
    pub state: String,
    /// The execution environment it belongs to (its address).
    pub env: Ipv4Addr,
    /// The shared ENI it goes out through (id), if known.
    pub eni: Option<u32>,
    /// Source of the outbound packets as the environment sent them (for
    /// ICMP the port is the query id).
    pub original_src: SocketAddrV4,
    /// Destination of the outbound packets as the environment sent them.
    pub original_dst: SocketAddrV4,
    /// Source of the outbound packets after translation (ENI address and
    /// NAT port).
    pub translated_src: SocketAddrV4,
    /// Destination of the outbound packets after translation.
    pub translated_dst: SocketAddrV4,
    /// Packets from the environment (count).
    pub packets_out: u64,
    /// Bytes from the environment (IP packet bytes).
    pub bytes_out: u64,
    /// Packets to the environment (count).
    pub packets_in: u64,
    /// Bytes to the environment (IP packet bytes).
    pub bytes_in: u64,
}

/// The dataplane's counters, summed over workers, since the gateway started.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StatsReport {
    /// Worker threads running engines (count).
    pub workers: usize,
    /// Frames received on all devices (count).
    pub rx_frames: u64,
    /// Packets translated from environments out (count).
    pub outbound_packets: u64,
    /// Bytes of those packets (IP packet bytes).
    pub outbound_bytes: u64,
    /// Packets translated back in to environments (count).
    pub inbound_packets: u64,
    /// Bytes of those packets (IP packet bytes).
    pub inbound_bytes: u64,
    /// Packets between two environments turned around inside the gateway
    /// (count).
    pub hairpinned: u64,
    /// Live sessions, by protocol (`tcp`, `udp`, `icmp`) (count).
    pub sessions: BTreeMap<String, u64>,
    /// Sessions created, by protocol (count).
    pub sessions_created: BTreeMap<String, u64>,
    /// Sessions expired or closed, by protocol (count).
    pub sessions_expired: BTreeMap<String, u64>,
    /// Sessions removed by `flush` or `sessions --delete` (count; also in
    /// `sessions_expired`).
    #[serde(default)]
    pub sessions_flushed: u64,
    /// Packets dropped, by reason label; every reason, zeros included
    /// (count).
    pub drops: BTreeMap<String, u64>,
    /// Ports in use on each translated address.
    pub port_use: Vec<PortUseLine>,
    /// How long each ENI's setup took: (ENI id, seconds).
    pub eni_setup_seconds: Vec<(u32, f64)>,
    /// Room left for new connections.
    #[serde(default)]
    pub headroom: Headroom,
    /// The workers' I/O path and its system calls (boxed: keeps
    /// [`Response`] small).
    #[serde(default)]
    pub io: Box<IoStats>,
}

/// What a flush removed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FlushReport {
    /// Sessions removed (count).
    pub removed: u64,
}

/// What a capture wrote.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CaptureReport {
    /// The pcap file.
    pub out: PathBuf,
    /// Frames written (count).
    pub frames: u64,
    /// Frames seen on the port but not written because the writer fell
    /// behind (the workers never wait for it) (count).
    pub dropped: u64,
    /// How long the capture ran, in seconds.
    pub seconds: f64,
}

/// What an apply changed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ApplyReport {
    /// One human line per change, e.g. `function orders: security groups
    /// sg-a -> sg-b`, `eni 3 created for subnet-a [sg-b]`; empty if the
    /// config changed nothing.
    pub changes: Vec<String>,
}

// ---------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------

/// What can go wrong serving or calling the API (and serving metrics).
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// There is no socket file at the path.
    #[error("no control socket at {}: is the gateway running?", .path.display())]
    NoSocket {
        /// The socket path.
        path: PathBuf,
    },
    /// The socket file exists but nothing listens on it.
    #[error("nothing is listening on {} (a stale socket file): is the gateway running?", .path.display())]
    NotListening {
        /// The socket path.
        path: PathBuf,
    },
    /// The caller may not connect to the socket.
    #[error("permission denied on {}: the control socket is 0600: run as its owner (root)", .path.display())]
    PermissionDenied {
        /// The socket path.
        path: PathBuf,
    },
    /// Another server is listening on the path.
    #[error("control socket {} is already in use: another gateway is listening on it", .path.display())]
    InUse {
        /// The socket path.
        path: PathBuf,
    },
    /// Something other than a socket is at the path; the server does not
    /// remove it.
    #[error("{} exists and is not a socket: refusing to replace it", .path.display())]
    NotASocket {
        /// The path.
        path: PathBuf,
    },
    /// The path does not fit in a Unix socket address.
    #[error("socket path {} is too long: {len} bytes, at most {max}", .path.display())]
    PathTooLong {
        /// The path.
        path: PathBuf,
        /// Its length in bytes.
        len: usize,
        /// The longest path that fits, in bytes.
        max: usize,
    },
    /// The request is larger than the server accepts.
    #[error("request of {len} bytes is larger than the {} MiB limit", MAX_REQUEST_BYTES / (1024 * 1024))]
    TooLarge {
        /// Its size in bytes.
        len: usize,
    },
    /// A metrics address that is not loopback.
    #[error(
        "metrics address {addr} is not a loopback address: metrics are served on loopback only (e.g. 127.0.0.1:9100)"
    )]
    NotLoopback {
        /// The refused address.
        addr: std::net::SocketAddr,
    },
    /// The other side did not answer in time.
    #[error("timed out after {}s waiting for {what}", IO_TIMEOUT.as_secs())]
    Timeout {
        /// What was awaited.
        what: &'static str,
    },
    /// The other side said something that is not the protocol.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// Any other I/O error, with what was being done.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The error.
        #[source]
        source: io::Error,
    },
}

impl ApiError {
    fn io(context: impl Into<String>, source: io::Error) -> Self {
        ApiError::Io { context: context.into(), source }
    }
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut)
}

// ---------------------------------------------------------------------------
// Line framing
// ---------------------------------------------------------------------------

/// One line read from a stream.
enum Line {
    /// The line's bytes, without the newline.
    Data(Vec<u8>),
    /// The line is longer than the limit; the rest of it is left unread.
    TooLong,
    /// The stream ended before any byte of a line.
    Eof,
}

/// Reads one `\n`-terminated line of at most `max` bytes (newline not
/// counted). A last line without a newline counts as a line.
fn read_line(reader: &mut impl BufRead, max: usize) -> io::Result<Line> {
    let mut buf = Vec::new();
    let limit = u64::try_from(max).unwrap_or(u64::MAX).saturating_add(1);
    let n = reader.take(limit).read_until(b'\n', &mut buf)?;
    if n == 0 {
        return Ok(Line::Eof);
    }
    if buf.last() == Some(&b'\n') {
        buf.pop();
        if buf.last() == Some(&b'\r') {
            buf.pop();
        }
        return Ok(Line::Data(buf));
    }
    if buf.len() > max {
        return Ok(Line::TooLong);
    }
    Ok(Line::Data(buf))
}

fn write_response(w: &mut impl Write, resp: &Response) -> io::Result<()> {
    let mut text = serde_json::to_string(resp).unwrap_or_else(|e| {
        // Cannot happen with these types (string map keys only); answer
        // with an error rather than nothing.
        let err = Response::Error { message: format!("internal error: cannot encode the response: {e}") };
        serde_json::to_string(&err).unwrap_or_else(|_| r#"{"kind":"error","message":"internal error"}"#.into())
    });
    text.push('\n');
    w.write_all(text.as_bytes())?;
    w.flush()
}
