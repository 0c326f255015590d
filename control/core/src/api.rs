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
//! - A request is tagged by `"cmd"`: `status`, `sessions`, `stats`, `apply`.
//!   Fields that are `Option`s may be `null` or left out. Unknown fields of
//!   `sessions` and `apply` are refused (a typo is an error, not a silently
//!   unfiltered answer); `status` and `stats` ignore extra fields.
//! - A response is tagged by `"kind"`: `status`, `sessions`, `stats`,
//!   `applied`, or `error` with a `"message"`.
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
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

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
pub(crate) const POLL_INTERVAL_MS: i32 = 100;

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
}

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

// ---------------------------------------------------------------------------
// Server
// ---------------------------------------------------------------------------

/// A running API server; see [`serve`]. Stopping it (or dropping it) stops
/// the accept loop, closes open connections, waits for their threads and
/// removes the socket file.
pub struct Server {
    path: PathBuf,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    /// Device and inode of the socket file we created, so we only remove
    /// our own socket, not one a newer server put at the same path.
    id: (u64, u64),
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server").field("path", &self.path).finish_non_exhaustive()
    }
}

/// Serves the API on a Unix stream socket at `path` with `handler`.
///
/// - A socket file already at `path` is removed first only if nothing
///   listens on it (a stale file left by a gateway that died); if something
///   does, this fails with [`ApiError::InUse`]. Anything that is not a
///   socket is left alone ([`ApiError::NotASocket`]).
/// - The socket file has mode `0600`, so only its owner (root) can connect.
///   There is no window in which it is more open: the socket's mode is set
///   with `fchmod` on the descriptor *before* `bind`, and Linux creates the
///   file with that mode (further narrowed by the umask); it is set again
///   with `chmod` right after `bind`, which only ever narrows or keeps it.
///   (Changing the process-wide umask instead would race with other threads
///   creating files.)
/// - Requests are answered on threads of their own: one accept thread and
///   one short-lived thread per connection (at most [`MAX_CONNECTIONS`]),
///   with 30 s read and write timeouts. A handler that panics gets the
///   client an error response; the server keeps serving.
pub fn serve(path: &Path, handler: Arc<dyn Fn(Request) -> Response + Send + Sync>) -> Result<Server, ApiError> {
    clear_stale(path)?;
    let listener = bind_private(path)?;
    let started = start_server(path, listener, handler);
    if started.is_err() {
        let _ = std::fs::remove_file(path);
    }
    started
}

/// The rest of [`serve`] once the socket is bound (on error, the caller
/// removes the socket file).
fn start_server(path: &Path, listener: UnixListener, handler: Handler) -> Result<Server, ApiError> {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(SOCKET_MODE))
        .map_err(|e| ApiError::io(format!("setting the mode of {}", path.display()), e))?;
    let md = std::fs::symlink_metadata(path).map_err(|e| ApiError::io(format!("{}", path.display()), e))?;
    listener.set_nonblocking(true).map_err(|e| ApiError::io("making the listener nonblocking", e))?;
    let stop = Arc::new(AtomicBool::new(false));
    let thread = {
        let stop = stop.clone();
        std::thread::Builder::new()
            .name("hp-api".into())
            .spawn(move || accept_loop(listener, handler, stop))
            .map_err(|e| ApiError::io("starting the API thread", e))?
    };
    tracing::info!(path = %path.display(), "control socket listening");
    Ok(Server { path: path.to_path_buf(), stop, thread: Some(thread), id: (md.dev(), md.ino()) })
}

impl Server {
    /// The socket path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Stops serving and removes the socket file (same as dropping it).
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
            if let Ok(md) = std::fs::symlink_metadata(&self.path) {
                if (md.dev(), md.ino()) == self.id {
                    let _ = std::fs::remove_file(&self.path);
                }
            }
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Removes a socket file at `path` that nothing listens on.
fn clear_stale(path: &Path) -> Result<(), ApiError> {
    match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(ApiError::io(format!("{}", path.display()), e)),
        Ok(md) if !md.file_type().is_socket() => Err(ApiError::NotASocket { path: path.to_path_buf() }),
        Ok(_) => match UnixStream::connect(path) {
            Ok(_) => Err(ApiError::InUse { path: path.to_path_buf() }),
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                tracing::info!(path = %path.display(), "removing a stale control socket");
                std::fs::remove_file(path).map_err(|e| ApiError::io(format!("removing stale {}", path.display()), e))
            }
            Err(e) => Err(ApiError::io(format!("probing {}", path.display()), e)),
        },
    }
}

/// Creates a listening Unix stream socket at `path` whose file is created
/// with mode [`SOCKET_MODE`] (see [`serve`]).
fn bind_private(path: &Path) -> Result<UnixListener, ApiError> {
    use std::os::unix::ffi::OsStrExt;
    // SAFETY: an all-zero sockaddr_un is a valid value (family AF_UNSPEC,
    // empty path); it is filled in below.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    let bytes = path.as_os_str().as_bytes();
    let max = addr.sun_path.len() - 1; // room for the terminating NUL
    if bytes.is_empty() || bytes.len() > max || bytes.contains(&0) {
        return Err(ApiError::PathTooLong { path: path.to_path_buf(), len: bytes.len(), max });
    }
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    for (dst, src) in addr.sun_path.iter_mut().zip(bytes) {
        *dst = *src as libc::c_char;
    }
    // SAFETY: plain syscall with constant arguments; returns a new
    // descriptor or -1.
    let raw = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if raw < 0 {
        return Err(ApiError::io("creating the control socket", io::Error::last_os_error()));
    }
    // SAFETY: `raw` is a fresh descriptor that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    // SAFETY: `fd` is a valid open descriptor for the duration of the call.
    if unsafe { libc::fchmod(fd.as_raw_fd(), SOCKET_MODE as libc::mode_t) } != 0 {
        return Err(ApiError::io("setting the control socket's mode", io::Error::last_os_error()));
    }
    let len = std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t;
    // SAFETY: `addr` is an initialised sockaddr_un with a NUL-terminated
    // path, `len` is its size, and `fd` is valid for the call.
    let rc = unsafe { libc::bind(fd.as_raw_fd(), std::ptr::addr_of!(addr).cast::<libc::sockaddr>(), len) };
    if rc != 0 {
        let e = io::Error::last_os_error();
        return Err(match e.kind() {
            io::ErrorKind::AddrInUse => ApiError::InUse { path: path.to_path_buf() },
            _ => ApiError::io(format!("binding {}", path.display()), e),
        });
    }
    // SAFETY: `fd` is a valid, bound stream socket.
    if unsafe { libc::listen(fd.as_raw_fd(), 64) } != 0 {
        let e = io::Error::last_os_error();
        let _ = std::fs::remove_file(path);
        return Err(ApiError::io(format!("listening on {}", path.display()), e));
    }
    Ok(UnixListener::from(fd))
}

/// Waits up to `timeout_ms` for `fd` to be readable (for a listener: to
/// have a connection waiting). `Ok(false)` on timeout or signal.
pub(crate) fn wait_readable(fd: &impl AsFd, timeout_ms: i32) -> io::Result<bool> {
    let mut pfd = libc::pollfd { fd: fd.as_fd().as_raw_fd(), events: libc::POLLIN, revents: 0 };
    // SAFETY: `pfd` is one initialised pollfd that outlives the call, and
    // its descriptor is borrowed, so open, for the call.
    let rc = unsafe { libc::poll(&mut pfd, 1, timeout_ms) };
    if rc < 0 {
        let e = io::Error::last_os_error();
        return if e.kind() == io::ErrorKind::Interrupted { Ok(false) } else { Err(e) };
    }
    Ok(rc > 0)
}

/// A connection being served: a handle to shut it down and its thread.
pub(crate) struct Conn<S> {
    pub(crate) stream: S,
    pub(crate) thread: JoinHandle<()>,
}

fn accept_loop(listener: UnixListener, handler: Handler, stop: Arc<AtomicBool>) {
    serve_loop(
        "control socket",
        &listener,
        |l| l.accept().map(|(s, _)| s),
        &stop,
        |stream, live| start_conn(stream, &handler, live),
    );
}

/// A connected stream a server can shut down when it stops.
pub(crate) trait Shut {
    /// Shuts both directions down (errors ignored).
    fn shut(&self);
}

impl Shut for UnixStream {
    fn shut(&self) {
        let _ = self.shutdown(std::net::Shutdown::Both);
    }
}

impl Shut for std::net::TcpStream {
    fn shut(&self) {
        let _ = self.shutdown(std::net::Shutdown::Both);
    }
}

/// The accept loop both servers share: waits (at most
/// [`POLL_INTERVAL_MS`] at a time, so `stop` is seen) for a connection,
/// accepts it, joins finished connection threads, and hands the new one to
/// `start` with the number still open. When `stop` is set, every open
/// connection is shut down and its thread joined.
pub(crate) fn serve_loop<L: AsFd, S: Shut>(
    what: &str,
    listener: &L,
    accept: impl Fn(&L) -> io::Result<S>,
    stop: &AtomicBool,
    mut start: impl FnMut(S, usize) -> Option<Conn<S>>,
) {
    let mut conns: Vec<Conn<S>> = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        match wait_readable(listener, POLL_INTERVAL_MS) {
            Ok(true) => {}
            Ok(false) => continue,
            Err(e) => {
                tracing::warn!(error = %e, "{what}: poll failed");
                std::thread::sleep(Duration::from_millis(POLL_INTERVAL_MS as u64));
                continue;
            }
        }
        let stream = match accept(listener) {
            Ok(s) => s,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock || e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                tracing::warn!(error = %e, "{what}: accept failed");
                std::thread::sleep(Duration::from_millis(POLL_INTERVAL_MS as u64));
                continue;
            }
        };
        conns = reap(conns);
        if let Some(c) = start(stream, conns.len()) {
            conns.push(c);
        }
    }
    for c in &conns {
        c.stream.shut();
    }
    for c in conns {
        let _ = c.thread.join();
    }
}

/// Joins the finished connection threads and keeps the others.
pub(crate) fn reap<S>(conns: Vec<Conn<S>>) -> Vec<Conn<S>> {
    let (done, live): (Vec<_>, Vec<_>) = conns.into_iter().partition(|c| c.thread.is_finished());
    for c in done {
        let _ = c.thread.join();
    }
    live
}

fn start_conn(stream: UnixStream, handler: &Handler, live: usize) -> Option<Conn<UnixStream>> {
    let setup = || -> io::Result<UnixStream> {
        stream.set_nonblocking(false)?;
        stream.set_read_timeout(Some(IO_TIMEOUT))?;
        stream.set_write_timeout(Some(IO_TIMEOUT))?;
        stream.try_clone()
    };
    let handle = match setup() {
        Ok(h) => h,
        Err(e) => {
            tracing::warn!(error = %e, "control socket: cannot set up a connection");
            return None;
        }
    };
    if live >= MAX_CONNECTIONS {
        let mut s = stream;
        let msg = format!("too many connections ({MAX_CONNECTIONS} open): try again later");
        let _ = write_response(&mut s, &Response::Error { message: msg });
        return None;
    }
    let handler = handler.clone();
    match std::thread::Builder::new().name("hp-api-conn".into()).spawn(move || serve_conn(stream, &handler)) {
        Ok(thread) => Some(Conn { stream: handle, thread }),
        Err(e) => {
            tracing::warn!(error = %e, "control socket: cannot start a connection thread");
            None
        }
    }
}

fn serve_conn(stream: UnixStream, handler: &Handler) {
    let mut writer = match stream.try_clone() {
        Ok(w) => w,
        Err(_) => return,
    };
    let mut reader = BufReader::new(stream);
    loop {
        let line = match read_line(&mut reader, MAX_REQUEST_BYTES) {
            Ok(l) => l,
            Err(e) => {
                if !is_timeout(&e) {
                    tracing::debug!(error = %e, "control connection: read failed");
                }
                return;
            }
        };
        let resp = match line {
            Line::Eof => return,
            Line::TooLong => {
                let message = format!(
                    "request larger than the {} MiB limit: closing the connection",
                    MAX_REQUEST_BYTES / (1024 * 1024)
                );
                let _ = write_response(&mut writer, &Response::Error { message });
                return;
            }
            Line::Data(bytes) if bytes.iter().all(u8::is_ascii_whitespace) => continue,
            Line::Data(bytes) => answer(&bytes, handler),
        };
        if let Err(e) = write_response(&mut writer, &resp) {
            tracing::debug!(error = %e, "control connection: write failed");
            return;
        }
    }
}

/// Parses one request line and answers it with `handler`.
fn answer(line: &[u8], handler: &Handler) -> Response {
    let req: Request = match serde_json::from_slice(line) {
        Ok(r) => r,
        Err(e) => return Response::Error { message: format!("bad request: {e}") },
    };
    match catch_unwind(AssertUnwindSafe(|| handler(req))) {
        Ok(resp) => resp,
        Err(_) => Response::Error { message: "internal error: the request handler panicked".into() },
    }
}

// ---------------------------------------------------------------------------
// Client
// ---------------------------------------------------------------------------

/// A connection to the API for several requests; [`call`] for one.
#[derive(Debug)]
pub struct Client {
    path: PathBuf,
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Client {
    /// Connects to the socket at `path`, with 30 s read and write timeouts.
    pub fn connect(path: &Path) -> Result<Client, ApiError> {
        let stream = UnixStream::connect(path).map_err(|e| {
            let path = path.to_path_buf();
            match e.kind() {
                io::ErrorKind::NotFound => ApiError::NoSocket { path },
                io::ErrorKind::PermissionDenied => ApiError::PermissionDenied { path },
                io::ErrorKind::ConnectionRefused => ApiError::NotListening { path },
                _ => ApiError::io(format!("connecting to {}", path.display()), e),
            }
        })?;
        let setup = || -> io::Result<UnixStream> {
            stream.set_read_timeout(Some(IO_TIMEOUT))?;
            stream.set_write_timeout(Some(IO_TIMEOUT))?;
            stream.try_clone()
        };
        let writer = setup().map_err(|e| ApiError::io(format!("setting up {}", path.display()), e))?;
        Ok(Client { path: path.to_path_buf(), reader: BufReader::new(stream), writer })
    }

    /// Sends `req` and waits for its response. A request the gateway could
    /// not carry out is `Ok(Response::Error { .. })`; `Err` is for failures
    /// to talk to it.
    pub fn call(&mut self, req: &Request) -> Result<Response, ApiError> {
        let mut text = serde_json::to_string(req).map_err(|e| ApiError::Protocol(format!("encoding: {e}")))?;
        if text.len() > MAX_REQUEST_BYTES {
            return Err(ApiError::TooLarge { len: text.len() });
        }
        text.push('\n');
        let io_err = |what: &'static str, e: io::Error, path: &Path| {
            if is_timeout(&e) {
                ApiError::Timeout { what }
            } else {
                ApiError::io(format!("{what} on {}", path.display()), e)
            }
        };
        self.writer.write_all(text.as_bytes()).map_err(|e| io_err("sending the request", e, &self.path))?;
        self.writer.flush().map_err(|e| io_err("sending the request", e, &self.path))?;
        match read_line(&mut self.reader, MAX_RESPONSE_BYTES) {
            Ok(Line::Data(bytes)) => serde_json::from_slice(&bytes)
                .map_err(|e| ApiError::Protocol(format!("bad response from the gateway: {e}"))),
            Ok(Line::Eof) => Err(ApiError::Protocol("the gateway closed the connection without answering".into())),
            Ok(Line::TooLong) => {
                Err(ApiError::Protocol(format!("response larger than {} MiB", MAX_RESPONSE_BYTES / (1024 * 1024))))
            }
            Err(e) => Err(io_err("the response", e, &self.path)),
        }
    }
}

/// Sends one request to the API at `path` and returns its response (30 s
/// timeouts). See [`Client::call`] for what is `Ok` and what is `Err`.
pub fn call(path: &Path, req: &Request) -> Result<Response, ApiError> {
    Client::connect(path)?.call(req)
}
