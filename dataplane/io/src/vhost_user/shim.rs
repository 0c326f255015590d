//! The relay between a VMM and the rust-vmm daemon, one per connection:
//! every vhost-user message is passed on unchanged, with its file
//! descriptors, both ways; one is added.
//!
//! Why: QEMU (7.2 at least) sends `SET_VRING_ENABLE` when the guest resets
//! its device, before any `SET_FEATURES`, as soon as the backend offers
//! `VHOST_USER_F_PROTOCOL_FEATURES` (which QEMU requires of a vhost-user
//! net backend). The rust-vmm handler checks that feature against the
//! *accepted* features and, on the error, closes the connection. So before
//! the first `SET_VRING_ENABLE` that comes ahead of every `SET_FEATURES`,
//! the relay gives the daemon a `SET_FEATURES` accepting only
//! `VHOST_USER_F_PROTOCOL_FEATURES` (no reply asked; the VMM's own
//! `SET_FEATURES` replaces it later, as it would anyway).
//!
//! Wire format (vhost-user): a 12-byte header (`request`, `flags`, `size`:
//! little-endian u32s) then `size` bytes; descriptors travel as
//! `SCM_RIGHTS` with the message's first bytes. A message whose size is
//! beyond [`MAX_BODY`] or with more than [`MAX_FDS`] descriptors ends the
//! connection.

use rustix::net::{
    recvmsg, sendmsg, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer, SendAncillaryMessage,
    SendFlags,
};
use std::io::{self, IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::net::Shutdown;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use vhost::vhost_user::message::VhostUserVirtioFeatures;

/// `VHOST_USER_SET_FEATURES`.
const SET_FEATURES: u32 = 2;
/// `VHOST_USER_SET_VRING_ENABLE`.
const SET_VRING_ENABLE: u32 = 18;
/// Header bytes.
const HEADER: usize = 12;
/// Largest message body relayed, bytes (a memory table of 509 regions is
/// some 16 KiB).
pub const MAX_BODY: usize = 1 << 20;
/// Most descriptors relayed with one message.
pub const MAX_FDS: usize = 32;
/// Header flags: protocol version 1, no reply asked.
const VERSION_1: u32 = 1;

/// Relays both ways until either side closes; then closes both.
pub(crate) fn relay(vmm: UnixStream, daemon: UnixStream) {
    let (Ok(vmm2), Ok(daemon2)) = (vmm.try_clone(), daemon.try_clone()) else {
        return;
    };
    let back = std::thread::Builder::new().name("hp-vhost-relay".into()).spawn(move || {
        let _ = pass(&daemon2, &vmm2, false);
        let _ = vmm2.shutdown(Shutdown::Both);
        let _ = daemon2.shutdown(Shutdown::Both);
    });
    let _ = pass(&vmm, &daemon, true);
    let _ = vmm.shutdown(Shutdown::Both);
    let _ = daemon.shutdown(Shutdown::Both);
    if let Ok(t) = back {
        let _ = t.join();
    }
}

/// Passes messages from `from` to `to` until `from` closes. `to_daemon`:
/// this is the VMM's direction, where the early `SET_FEATURES` is added.
fn pass(from: &UnixStream, to: &UnixStream, to_daemon: bool) -> io::Result<()> {
    let mut features_seen = false;
    let mut msg = vec![0u8; HEADER];
    let mut fds: Vec<OwnedFd> = Vec::new();
    loop {
        fds.clear();
        msg.resize(HEADER, 0);
        if !recv_exact(from, &mut msg[..HEADER], &mut fds)? {
            return Ok(());
        }
        let word = |i: usize| u32::from_le_bytes([msg[i], msg[i + 1], msg[i + 2], msg[i + 3]]);
        let (request, size) = (word(0), word(8) as usize);
        if size > MAX_BODY {
            return Err(io::Error::other(format!("vhost-user message of {size} bytes")));
        }
        msg.resize(HEADER + size, 0);
        if size > 0 && !recv_exact(from, &mut msg[HEADER..], &mut fds)? {
            return Ok(());
        }
        if to_daemon {
            if request == SET_FEATURES {
                features_seen = true;
            } else if request == SET_VRING_ENABLE && !features_seen {
                features_seen = true;
                send(to, &early_set_features(), &[])?;
            }
        }
        send(to, &msg, &fds)?;
    }
}

/// A `SET_FEATURES` accepting only `VHOST_USER_F_PROTOCOL_FEATURES`.
fn early_set_features() -> [u8; HEADER + 8] {
    let mut m = [0u8; HEADER + 8];
    m[..4].copy_from_slice(&SET_FEATURES.to_le_bytes());
    m[4..8].copy_from_slice(&VERSION_1.to_le_bytes());
    m[8..12].copy_from_slice(&8u32.to_le_bytes());
    m[12..].copy_from_slice(&VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits().to_le_bytes());
    m
}

/// Fills `buf`, collecting the descriptors that come with it; false on a
/// clean end of stream before the first byte.
fn recv_exact(s: &UnixStream, buf: &mut [u8], fds: &mut Vec<OwnedFd>) -> io::Result<bool> {
    let mut got = 0;
    while got < buf.len() {
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
        let mut anc = RecvAncillaryBuffer::new(&mut space);
        let mut iov = [IoSliceMut::new(&mut buf[got..])];
        let r = match recvmsg(s.as_fd(), &mut iov, &mut anc, RecvFlags::CMSG_CLOEXEC) {
            Ok(r) => r,
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        };
        for m in anc.drain() {
            if let RecvAncillaryMessage::ScmRights(it) = m {
                fds.extend(it);
            }
        }
        if fds.len() > MAX_FDS {
            return Err(io::Error::other("too many descriptors with a vhost-user message"));
        }
        if r.bytes == 0 {
            return if got == 0 { Ok(false) } else { Err(io::ErrorKind::UnexpectedEof.into()) };
        }
        got += r.bytes;
    }
    Ok(true)
}

/// Sends `msg` whole, `fds` with its first bytes.
fn send(s: &UnixStream, msg: &[u8], fds: &[OwnedFd]) -> io::Result<()> {
    let borrowed: Vec<_> = fds.iter().map(|f| f.as_fd()).collect();
    let mut sent = 0;
    while sent < msg.len() {
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
        let mut anc = SendAncillaryBuffer::new(&mut space);
        if sent == 0 && !borrowed.is_empty() {
            anc.push(SendAncillaryMessage::ScmRights(&borrowed));
        }
        match sendmsg(s.as_fd(), &[IoSlice::new(&msg[sent..])], &mut anc, SendFlags::NOSIGNAL) {
            Ok(n) => sent += n,
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}
