//! The device as the rust-vmm daemon sees it: two queues (0: the guest's
//! receive queue, 1: its transmit queue), the features offered, and where a
//! connection's rings are handed to the port's owner.
//!
//! Features offered: `VIRTIO_F_VERSION_1` (the 12-byte header; a legacy
//! driver that does not take it gets the 10-byte one),
//! `VIRTIO_RING_F_EVENT_IDX`, `VIRTIO_RING_F_INDIRECT_DESC` and
//! `VHOST_USER_F_PROTOCOL_FEATURES` (QEMU requires it of a net backend;
//! protocol feature: `REPLY_ACK`). No checksum or segmentation offload, and
//! no mergeable receive buffers: the guest sends whole frames with complete
//! checksums, and posts receive buffers big enough for a frame of its MTU.

use super::Shared;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use vhost::vhost_user::message::{VhostUserProtocolFeatures, VhostUserVirtioFeatures};
use vhost_user_backend::{VhostUserBackend, VringRwLock, VringT};
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};
use virtio_queue::QueueT;
use vm_memory::{GuestMemoryAtomic, GuestMemoryMmap};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::event::{new_event_consumer_and_notifier, EventConsumer, EventFlag, EventNotifier};

/// The guest's memory as the daemon maps it (no dirty-page log).
pub type Mem = GuestMemoryAtomic<GuestMemoryMmap>;

/// Index of the guest's receive queue (frames to the guest).
pub const RX_QUEUE: usize = 0;
/// Index of the guest's transmit queue (frames from the guest).
pub const TX_QUEUE: usize = 1;
/// Largest queue size accepted (QEMU's largest `rx_queue_size`).
pub const MAX_QUEUE_SIZE: usize = 1024;
/// The virtio-net header before every frame once `VIRTIO_F_VERSION_1` is
/// negotiated, in bytes.
pub const HDR_V1: usize = 12;
/// The legacy header (no `VIRTIO_F_VERSION_1`, no mergeable buffers).
pub const HDR_LEGACY: usize = 10;

/// The virtio features offered.
pub const FEATURES: u64 = (1 << VIRTIO_F_VERSION_1)
    | (1 << VIRTIO_RING_F_EVENT_IDX)
    | (1 << VIRTIO_RING_F_INDIRECT_DESC)
    | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits();

/// One connection's guest memory and rings, as the port's owner uses them.
pub struct Link {
    /// The guest's memory (replaced by the daemon when the VMM changes its
    /// table; read once per batch).
    pub(crate) mem: Mem,
    /// The guest's receive queue.
    pub(crate) rx: VringRwLock,
    /// The guest's transmit queue.
    pub(crate) tx: VringRwLock,
    /// Features the driver accepted (they may change when it restarts).
    acked: Arc<AtomicU64>,
}

impl Link {
    /// Bytes of virtio-net header before each frame, for the features the
    /// driver accepted.
    pub(crate) fn hdr_len(&self) -> usize {
        if self.acked.load(Ordering::Acquire) & (1 << VIRTIO_F_VERSION_1) != 0 {
            HDR_V1
        } else {
            HDR_LEGACY
        }
    }

    /// Whether both queues are enabled and set up.
    pub fn running(&self) -> bool {
        [&self.rx, &self.tx].iter().all(|v| {
            let s = v.get_ref();
            s.is_enabled() && s.get_queue().ready()
        })
    }
}

/// The device of one connection.
pub struct NetDevice {
    shared: Arc<Shared>,
    mem: Mem,
    /// Whether this connection's rings were handed to the owner.
    published: AtomicBool,
    /// Features the driver accepted.
    acked: Arc<AtomicU64>,
}

impl NetDevice {
    /// A device for one connection, over the memory the daemon maps.
    pub(crate) fn new(shared: Arc<Shared>, mem: Mem) -> NetDevice {
        NetDevice { shared, mem, published: AtomicBool::new(false), acked: Arc::default() }
    }
}

impl VhostUserBackend for NetDevice {
    type Bitmap = ();
    type Vring = VringRwLock;

    fn num_queues(&self) -> usize {
        2
    }

    fn max_queue_size(&self) -> usize {
        MAX_QUEUE_SIZE
    }

    fn features(&self) -> u64 {
        FEATURES
    }

    fn acked_features(&self, features: u64) {
        self.acked.store(features, Ordering::Release);
    }

    fn protocol_features(&self) -> VhostUserProtocolFeatures {
        VhostUserProtocolFeatures::REPLY_ACK
    }

    fn set_event_idx(&self, _enabled: bool) {
        // The daemon sets it on the queues themselves.
    }

    fn update_memory(&self, _mem: Mem) -> std::io::Result<()> {
        // The same `GuestMemoryAtomic` as `self.mem`: the owner sees the new
        // table at its next batch.
        Ok(())
    }

    fn exit_event(&self, _thread_index: usize) -> Option<(EventConsumer, EventNotifier)> {
        // Lets the protocol thread stop the vring thread when the VMM goes.
        new_event_consumer_and_notifier(EventFlag::NONBLOCK | EventFlag::CLOEXEC).ok()
    }

    /// Called by the vring thread when a queue is enabled and on every kick
    /// (already read). The first call hands the rings to the owner; a kick
    /// of the transmit queue rings the doorbell.
    fn handle_event(
        &self,
        device_event: u16,
        _evset: EventSet,
        vrings: &[VringRwLock],
        _thread_id: usize,
    ) -> std::io::Result<()> {
        if vrings.len() > TX_QUEUE && !self.published.swap(true, Ordering::AcqRel) {
            let link = Link {
                mem: self.mem.clone(),
                rx: vrings[RX_QUEUE].clone(),
                tx: vrings[TX_QUEUE].clone(),
                acked: Arc::clone(&self.acked),
            };
            self.shared.publish(Some(Arc::new(link)));
        } else if usize::from(device_event) == TX_QUEUE {
            self.shared.ring();
        }
        Ok(())
    }
}
