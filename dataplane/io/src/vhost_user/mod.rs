//! A vhost-user-net backend: the gateway as a VM's network device.
//!
//! A VMM (QEMU, cloud-hypervisor) connects to a Unix socket of ours and
//! hands over, with the vhost-user protocol, the guest's memory (shared
//! file descriptors, mapped here) and its virtio-net queues (ring addresses
//! and two eventfds per queue: *kick*, guest to us, and *call*, us to the
//! guest). Frames then move between the guest's rings and the gateway's
//! worker buffers without a system call per frame.
//!
//! - [`attachment`]: [`VhostUserAttachment`], a port as a gateway
//!   attachment, taken by its owning worker;
//! - [`device`]: [`device::NetDevice`], what the rust-vmm
//!   `vhost-user-backend` daemon asks about the device (features, queues),
//!   and where a connection's rings are published to the port;
//! - [`queues`]: the data path, [`GuestTx`] (frames the guest sent) and
//!   [`GuestRx`] (frames written into the guest), and the port's
//!   [`VhostCounters`];
//! - `shim`: the relay between the VMM and the daemon (it passes messages
//!   on, and adds one QEMU needs the daemon to have seen);
//! - `frontend` (feature `vhost-user-frontend`, and tests): the VMM's side,
//!   with a driver-side split virtqueue, for tests and benches.
//!
//! # Threads and locks
//! One [`VhostUserPort`] per VM socket. It runs one protocol thread
//! (accepts a connection, relays it to the daemon, and accepts the next one
//! when the VMM goes away), the relay's two threads, the daemon's request
//! thread and its vring thread, which only reads the
//! guest's kicks and rings the port's *doorbell* (an eventfd) for the
//! transmit queue. The frames themselves are moved by the port's owner (a
//! gateway worker) with `&mut self` calls: [`VhostUserPort::guest_tx`] and
//! [`VhostUserPort::guest_rx`] each take the queue's lock once per batch
//! (a write lock the protocol thread takes too, when the VMM reconfigures
//! the queue), never per frame. Frames for the guest produced on another
//! worker go to the owner (hand-over), not through a lock.
//!
//! # Copies
//! One copy each way, as vhost-net makes: guest memory → a worker buffer
//! when the guest sends ([`GuestTx::recv`]), a worker buffer → guest
//! memory when it receives ([`GuestRx::send`]). Nothing else copies or
//! allocates on the data path.
//!
//! # Invariants
//! - Buffer layout (the workers'): after [`GuestTx::recv`] the frame sits at
//!   `buf[HDR..HDR + len]` and `buf[..HDR]` is a zeroed 12-byte
//!   virtio-net header: no offload is offered to the guest, so a frame it
//!   sends carries no offload state (a header claiming any is ignored).
//! - Every frame in a virtqueue is preceded by the 12-byte
//!   `virtio_net_hdr_v1` (10 bytes for a legacy driver that did not accept
//!   `VIRTIO_F_VERSION_1`); one frame is one descriptor chain (no
//!   `VIRTIO_NET_F_MRG_RXBUF`).
//! - A chain the guest made available is always returned to it (added to
//!   the used ring), also when it is malformed (a write-only descriptor in
//!   a transmit chain, an address outside guest memory, too short or too
//!   long): such a chain is dropped and counted, never a panic. A receive
//!   chain too small for the frame is not consumed; the frame is dropped.
//! - A frame for the guest with a partial checksum is completed in
//!   software; a GSO superframe is dropped (the guest takes no offloads).
//! - Units: lengths in bytes; counters in frames.

pub mod attachment;
pub mod device;
#[cfg(any(test, feature = "vhost-user-frontend"))]
pub mod frontend;
pub mod queues;
mod shim;
#[cfg(test)]
mod tests;

pub use attachment::VhostUserAttachment;
pub use queues::{GuestRx, GuestTx, RxDrop, VhostCounters};

use crate::error::IoError;
use crate::poll::Waker;
use device::{Link, NetDevice};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;
use vhost::vhost_user::Listener;
use vhost_user_backend::VhostUserDaemon;
use vm_memory::{GuestMemoryAtomic, GuestMemoryMmap};

/// What the protocol thread and the port's owner share.
pub(crate) struct Shared {
    /// Rung when the guest kicks its transmit queue, and when a connection's
    /// rings are published or withdrawn.
    pub(crate) doorbell: Waker,
    /// Rung instead of `doorbell` once set: the owning worker's own waker.
    pub(crate) forward: OnceLock<Arc<Waker>>,
    /// The current connection's memory and rings (none between
    /// connections). Read by the owner only when `generation` moved.
    pub(crate) link: Mutex<Option<Arc<Link>>>,
    /// Bumped whenever `link` changes.
    pub(crate) generation: AtomicU64,
    /// Set when the port is dropped.
    pub(crate) stop: AtomicBool,
    /// The current VMM connection, to end it (port drop).
    pub(crate) shutdown: Mutex<Option<UnixStream>>,
    /// The port's counters.
    pub(crate) counters: Arc<VhostCounters>,
}

impl Shared {
    /// Replaces the published link and tells the owner.
    pub(crate) fn publish(&self, link: Option<Arc<Link>>) {
        *self.link.lock().unwrap_or_else(|e| e.into_inner()) = link;
        self.generation.fetch_add(1, Ordering::Release);
        self.ring();
    }

    /// Rings the doorbell (or the owner's waker, once forwarded).
    pub(crate) fn ring(&self) {
        let _ = match self.forward.get() {
            Some(w) => w.wake(),
            None => self.doorbell.wake(),
        };
    }
}

/// A vhost-user-net device on a Unix socket, serving one VMM at a time.
///
/// Not `Clone`: the one owner moves frames with `&mut self` calls. Dropping
/// it ends the connection, stops its threads and removes the socket.
pub struct VhostUserPort {
    shared: Arc<Shared>,
    path: PathBuf,
    thread: Option<JoinHandle<()>>,
    /// The link as last seen, and the generation it was read at.
    cached: Option<Arc<Link>>,
    seen: u64,
}

impl VhostUserPort {
    /// Binds `path` (an existing socket file there is replaced) and starts
    /// serving: a VMM may connect at once, and again after it goes away.
    pub fn bind(path: impl AsRef<Path>) -> Result<VhostUserPort, IoError> {
        let path = path.as_ref().to_path_buf();
        let bind_err = |e: std::io::Error| IoError::Sys {
            op: "vhost-user socket bind",
            source: std::io::Error::new(e.kind(), format!("{}: {e}", path.display())),
        };
        // An earlier socket file there is replaced (as a VMM restarts).
        match std::fs::symlink_metadata(&path) {
            Ok(m) if std::os::unix::fs::FileTypeExt::is_socket(&m.file_type()) => {
                let _ = std::fs::remove_file(&path);
            }
            _ => {}
        }
        let public = UnixListener::bind(&path).map_err(bind_err)?;
        // The daemon's side: an abstract socket only the relay connects to.
        static N: AtomicU64 = AtomicU64::new(0);
        let name = format!("hp-vhost-{}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed));
        let private_addr = SocketAddr::from_abstract_name(name.as_bytes()).map_err(bind_err)?;
        let private = UnixListener::bind_addr(&private_addr).map_err(bind_err)?;
        let shared = Arc::new(Shared {
            doorbell: Waker::new().map_err(|e| IoError::sys("eventfd", e))?,
            link: Mutex::new(None),
            generation: AtomicU64::new(0),
            stop: AtomicBool::new(false),
            shutdown: Mutex::new(None),
            forward: OnceLock::new(),
            counters: Arc::default(),
        });
        let s = Arc::clone(&shared);
        let name = format!("hp-vhost-{}", path.file_name().and_then(|n| n.to_str()).unwrap_or("sock"));
        let thread = std::thread::Builder::new()
            .name(name.chars().take(15).collect())
            .spawn(move || serve(&s, &public, Listener::from(private), &private_addr))
            .map_err(|e| IoError::sys("spawn vhost-user thread", e))?;
        Ok(VhostUserPort { shared, path, thread: Some(thread), cached: None, seen: 0 })
    }

    /// The socket's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The doorbell: readable when the guest kicked its transmit queue or
    /// a connection came or went (unless forwarded:
    /// [`VhostUserPort::forward_doorbell`]). Poll it,
    /// [`VhostUserPort::reset`] it, then drain [`VhostUserPort::guest_tx`].
    pub fn doorbell(&self) -> BorrowedFd<'_> {
        self.shared.doorbell.as_fd()
    }

    /// Clears the doorbell (one non-blocking read).
    pub fn reset(&self) {
        let _ = self.shared.doorbell.reset();
    }

    /// The port's counters.
    pub fn counters(&self) -> &VhostCounters {
        &self.shared.counters
    }

    /// The port's counters, to keep after the port moves.
    pub fn counters_handle(&self) -> Arc<VhostCounters> {
        Arc::clone(&self.shared.counters)
    }

    /// From now on, ring `waker` instead of the port's own doorbell (a
    /// worker that polls all its ports when woken). Once; later calls are
    /// ignored.
    pub fn forward_doorbell(&self, waker: Arc<Waker>) {
        let _ = self.shared.forward.set(waker);
        // Whatever was rung before, the owner looks at least once.
        self.shared.ring();
    }

    /// Whether a VMM is connected and both queues are running.
    pub fn is_running(&mut self) -> bool {
        self.refresh();
        self.cached.as_deref().is_some_and(Link::running)
    }

    /// Brings the cached link up to date: one atomic load, and a lock only
    /// when a connection came or went since the last call.
    fn refresh(&mut self) {
        let g = self.shared.generation.load(Ordering::Acquire);
        if g != self.seen {
            self.seen = g;
            self.cached = self.shared.link.lock().unwrap_or_else(|e| e.into_inner()).clone();
        }
    }

    /// A batch of the frames the guest sent (its transmit queue); `None`
    /// when no guest is connected or the queue is not running. Holds the
    /// queue's lock until dropped.
    pub fn guest_tx(&mut self) -> Option<GuestTx<'_>> {
        self.refresh();
        GuestTx::new(self.cached.as_deref()?, &self.shared.counters)
    }

    /// A batch of frames to write into the guest (its receive queue);
    /// `None` when no guest is connected or the queue is not running.
    /// Holds the queue's lock until dropped.
    pub fn guest_rx(&mut self) -> Option<GuestRx<'_>> {
        self.refresh();
        GuestRx::new(self.cached.as_deref()?, &self.shared.counters)
    }
}

impl std::fmt::Debug for VhostUserPort {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VhostUserPort").field("path", &self.path).finish_non_exhaustive()
    }
}

impl AsFd for VhostUserPort {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.doorbell()
    }
}

impl Drop for VhostUserPort {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        if let Some(c) = self.shared.shutdown.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = c.shutdown(std::net::Shutdown::Both);
        }
        // A thread waiting in `accept` is woken by a connection of our own.
        let _ = UnixStream::connect(&self.path);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

/// The protocol thread: one connection at a time, each with a fresh device
/// and daemon (the rust-vmm handler cannot be reset after a VMM leaves),
/// the VMM's messages passed to it through [`shim::relay`].
fn serve(shared: &Arc<Shared>, public: &UnixListener, mut private: Listener, private_addr: &SocketAddr) {
    while !shared.stop.load(Ordering::Acquire) {
        let vmm = match public.accept() {
            Ok((c, _)) => c,
            Err(e) => {
                tracing::warn!("vhost-user: accept failed: {e}");
                std::thread::sleep(std::time::Duration::from_millis(100));
                continue;
            }
        };
        if shared.stop.load(Ordering::Acquire) {
            return;
        }
        let mem = GuestMemoryAtomic::new(GuestMemoryMmap::new());
        let device = Arc::new(NetDevice::new(Arc::clone(shared), mem.clone()));
        let mut daemon = match VhostUserDaemon::new("hp-vhost-vring".into(), Arc::clone(&device), mem) {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!("vhost-user: cannot create the daemon: {e}");
                return;
            }
        };
        // Queued on the private listener before the daemon accepts it.
        let inner = match UnixStream::connect_addr(private_addr) {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!("vhost-user: cannot reach the daemon: {e}");
                stop_vring_threads(&daemon);
                continue;
            }
        };
        if let Err(e) = daemon.start(&mut private) {
            tracing::warn!("vhost-user: daemon start failed: {e}");
            stop_vring_threads(&daemon);
            continue;
        }
        *shared.shutdown.lock().unwrap_or_else(|e| e.into_inner()) = vmm.try_clone().ok();
        if shared.stop.load(Ordering::Acquire) {
            let _ = vmm.shutdown(std::net::Shutdown::Both);
        }
        let relay = std::thread::Builder::new().name("hp-vhost-relay".into()).spawn(move || shim::relay(vmm, inner));
        if let Err(e) = daemon.wait() {
            tracing::debug!("vhost-user: connection ended: {e}");
        }
        daemon.request_shutdown();
        if let Ok(t) = relay {
            let _ = t.join();
        }
        shared.shutdown.lock().unwrap_or_else(|e| e.into_inner()).take();
        stop_vring_threads(&daemon);
        shared.publish(None);
    }
}

/// Ends the daemon's vring thread (it would otherwise outlive the
/// connection).
fn stop_vring_threads(daemon: &VhostUserDaemon<Arc<NetDevice>>) {
    for h in daemon.get_epoll_handlers() {
        h.send_exit_event();
    }
}
