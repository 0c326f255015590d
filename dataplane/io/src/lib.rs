//! The I/O edge: TAP devices, `AF_PACKET` sockets and readiness polling.
//!
//! The rest of the crate is sans-IO (see [`dataplane::engine`]); this module is
//! where frames meet the kernel, and it is the only place in the crate with
//! `unsafe` code (raw `ioctl`, `read`/`write`/`writev`, `epoll`, `eventfd`,
//! io_uring submissions),
//! each block justified by a `SAFETY:` comment.
//!
//! - [`tap`]: [`Tap`], one queue of a TAP device opened with
//!   `IFF_TAP | IFF_NO_PI` (whole Ethernet frames, no packet-information
//!   prefix) and optionally `IFF_VNET_HDR` (a [`VNET_HDR_LEN`]-byte
//!   virtio-net header before every frame) and `IFF_MULTI_QUEUE` (one queue
//!   per worker). Offloads ([`Tap::set_offload`], [`OFFLOADS_TCP`]) let the
//!   kernel hand us partial checksums and TCP super-frames.
//! - [`vnet`]: the virtio-net header ([`VnetHdr`]) and
//!   [`complete_checksum`] for frames marked `F_NEEDS_CSUM`.
//! - [`ifreq`]: interface configuration by name (MTU, up, MAC, index).
//! - [`afpacket`]: [`AfPacket`], a plain socket on an existing interface,
//!   and [`PacketSender`], a send-only socket on it (batched sends,
//!   optionally with a virtio-net header); [`packet_rx`]:
//!   [`PacketReceiver`], the outside's receiving socket (offload header,
//!   ignores this host's transmissions, optionally one of a
//!   `PACKET_FANOUT` group); [`fanout_bpf`]: the group's classic BPF
//!   program steering each frame to the worker owning its port;
//!   [`steer_ebpf`]: the same steering as an eBPF program for the outside's
//!   multi-queue TAP (`TUNSETSTEERINGEBPF`); [`rx_source`]: a TAP queue or packet socket as
//!   a worker reads it (where the header and frame land in a buffer);
//!   [`packet_ring`]: `TPACKET` receive and transmit rings; [`ring_sender`]:
//!   [`RingSender`], a transmit ring and its plain socket for what the ring
//!   cannot take (the outside and direct attachments alike).
//! - [`inside`]: [`Inside`], an attachment's device: a TAP queue, or
//!   packet rings (or plain sockets) on an existing interface (a VMM's TAP).
//! - [`poll`]: [`Poller`] (level-triggered epoll), [`Events`] and [`Waker`]
//!   (eventfd) to stop a blocked worker.
//! - [`error`]: [`IoError`] and [`check_net_admin`].
//! - [`capture`]: [`capture::Capture`], the pcap tap points of the workers.
//! - [`worker`]: the gateway's worker threads (batched reads, offload
//!   headers, hand-over between workers); [`steer`]: which worker owns a
//!   frame from the VPC.
//! - [`vhost_user`]: [`vhost_user::VhostUserPort`], a vhost-user-net
//!   backend on a Unix socket (a VMM's network device: the guest's
//!   virtqueues read and written in shared memory).
//! - [`backend`]: the workers' I/O path, io_uring ([`uring`]) or
//!   `read`/`write` + epoll, and the fallback between them;
//!   [`syscalls`]: system calls counted per thread ([`IoCounters`]).
//! - [`write_batch`]: [`WriteBatch`], many frames written to one descriptor
//!   with one `io_uring_enter` (the load generator's TAP writers).
//!
//! Setup calls return [`IoError`]; per-frame calls return
//! [`std::io::Result`] so that `WouldBlock`/`TimedOut` stay cheap to match.
//! Every descriptor is close-on-exec and closed on drop; TAP and eventfd
//! descriptors are non-blocking.
//!
//! Privileges: creating or configuring devices needs `CAP_NET_ADMIN`,
//! `AF_PACKET` sockets `CAP_NET_RAW`; getters and polling need nothing.

pub mod afpacket;
pub mod backend;
pub mod capture;
pub mod error;
pub mod fanout_bpf;
pub mod ifreq;
pub mod inside;
pub mod packet_ring;
pub mod packet_rx;
pub mod poll;
pub mod ring_sender;
pub mod rx_source;
pub mod steer;
pub mod steer_ebpf;
pub mod syscalls;
pub mod tap;
pub mod tx_ring;
pub mod uring;
pub mod vhost_user;
pub mod vnet;
pub mod worker;
pub mod write_batch;

pub use afpacket::{AfPacket, PacketSender};
pub use backend::{Backend, IoSettings, WorkerCpus};
pub use error::{check_net_admin, keep_only_net_capabilities, IoError, KEPT_CAPABILITIES};
pub use inside::{Inside, PacketPort, PacketRx};
pub use packet_ring::{RingConfig, RxRing, SUPERFRAME_SLOT};
pub use packet_rx::{PacketReceiver, RxOptions, PACKET_VNET_LEN};
pub use poll::{wait_readable, Events, Poller, Waker};
pub use ring_sender::RingSender;
pub use syscalls::IoCounters;
pub use tap::{
    Tap, TapOptions, OFFLOADS_TCP, TUN_F_CSUM, TUN_F_TSO4, TUN_F_TSO6, TUN_F_TSO_ECN, TUN_F_UFO, VNET_HDR_LEN,
};
pub use tx_ring::TxRing;
pub use vnet::{complete_checksum, VnetHdr};
pub use write_batch::WriteBatch;
