//! The control socket's server: binds the 0600 Unix socket, accepts (at
//! most [`MAX_CONNECTIONS`] at once) and answers each request line with the
//! handler.

use super::{
    is_timeout, read_line, write_response, ApiError, Handler, Line, Request, Response, IO_TIMEOUT, MAX_CONNECTIONS,
    MAX_REQUEST_BYTES, POLL_INTERVAL, SOCKET_MODE,
};
use crate::config::MAX_SOCKET_PATH_LEN;
use crate::deadline::Deadline;
use crate::threads::StopGroup;
use dataplane_io::wait_readable;
use std::io::{self, BufReader};
use std::os::fd::AsFd;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

/// A running API server; see [`serve`]. Stopping it (or dropping it) stops
/// the accept loop, closes open connections, waits for their threads and
/// removes the socket file.
pub struct Server {
    path: PathBuf,
    accept: StopGroup,
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
    let mut accept = StopGroup::new();
    let stop = accept.flag();
    accept.push(
        std::thread::Builder::new()
            .name("hp-api".into())
            .spawn(move || accept_loop(listener, handler, stop))
            .map_err(|e| ApiError::io("starting the API thread", e))?,
    );
    tracing::info!(path = %path.display(), "control socket listening");
    Ok(Server { path: path.to_path_buf(), accept, id: (md.dev(), md.ino()) })
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
        if self.accept.halt() {
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
    use rustix::net::{AddressFamily, SocketAddrUnix, SocketFlags, SocketType};
    use std::os::unix::ffi::OsStrExt;
    let bytes = path.as_os_str().as_bytes();
    let max = MAX_SOCKET_PATH_LEN; // sun_path, less the terminating NUL
    if bytes.is_empty() || bytes.len() > max || bytes.contains(&0) {
        return Err(ApiError::PathTooLong { path: path.to_path_buf(), len: bytes.len(), max });
    }
    let addr = SocketAddrUnix::new(path).map_err(|e| ApiError::io(format!("binding {}", path.display()), e.into()))?;
    let fd = rustix::net::socket_with(AddressFamily::UNIX, SocketType::STREAM, SocketFlags::CLOEXEC, None)
        .map_err(|e| ApiError::io("creating the control socket", e.into()))?;
    // The mode is set before bind, so the file is never reachable by others.
    rustix::fs::fchmod(&fd, rustix::fs::Mode::from_raw_mode(SOCKET_MODE))
        .map_err(|e| ApiError::io("setting the control socket's mode", e.into()))?;
    if let Err(e) = rustix::net::bind(&fd, &addr) {
        let e = io::Error::from(e);
        return Err(match e.kind() {
            io::ErrorKind::AddrInUse => ApiError::InUse { path: path.to_path_buf() },
            _ => ApiError::io(format!("binding {}", path.display()), e),
        });
    }
    if let Err(e) = rustix::net::listen(&fd, 64) {
        let _ = std::fs::remove_file(path);
        return Err(ApiError::io(format!("listening on {}", path.display()), e.into()));
    }
    Ok(UnixListener::from(fd))
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
/// [`POLL_INTERVAL`] at a time, so `stop` is seen) for a connection,
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
        match wait_readable(listener, POLL_INTERVAL) {
            Ok(true) => {}
            Ok(false) => continue,
            Err(e) => {
                tracing::warn!(error = %e, "{what}: poll failed");
                std::thread::sleep(POLL_INTERVAL);
                continue;
            }
        }
        let stream = match accept(listener) {
            Ok(s) => s,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock || e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                tracing::warn!(error = %e, "{what}: accept failed");
                std::thread::sleep(POLL_INTERVAL);
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
        Ok(w) => Deadline::new(w, IO_TIMEOUT),
        Err(_) => return,
    };
    // Each request has IO_TIMEOUT in all to arrive (and its answer to
    // leave), however it trickles in.
    let mut reader = BufReader::new(Deadline::new(stream, IO_TIMEOUT));
    loop {
        reader.get_mut().renew(IO_TIMEOUT);
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
        writer.renew(IO_TIMEOUT);
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
