//! Probes that observe a topology from inside a namespace.
//!
//! [`udp_ttl_probe`] is a plain-socket function: call it inside [`Netns::run`](super::Netns::run) so its socket lives
//! in the namespace. [`ping`] runs the `ping` binary (Debian package `iputils-ping`) in a namespace.
//!
//! `IP_RECVERR` and the reading of the socket's error queue (`recvmsg(MSG_ERRQUEUE)` and its control messages) are
//! the only `unsafe` code here: neither std nor rustix offers them.

use std::mem::{size_of, MaybeUninit};
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use super::{LabError, Netns};

/// An ICMP error reported back to a socket through its error queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IcmpReport {
    /// The node that sent the ICMP error (`SO_EE_OFFENDER`).
    pub from: Ipv4Addr,
    /// ICMP type: 11 time exceeded, 3 destination unreachable.
    pub icmp_type: u8,
    /// ICMP code: for type 3, 3 is port unreachable.
    pub code: u8,
}

/// ICMP time exceeded.
pub const ICMP_TIME_EXCEEDED: u8 = 11;
/// ICMP destination unreachable.
pub const ICMP_DEST_UNREACH: u8 = 3;
/// Code of destination unreachable: port unreachable.
pub const ICMP_PORT_UNREACH: u8 = 3;

/// Sends one UDP datagram to `dst` with IP TTL `ttl` and waits up to `timeout` for an ICMP error about it, read from
/// the socket's error queue (`IP_RECVERR`, `recvmsg(MSG_ERRQUEUE)`).
///
/// Returns `Ok(None)` if none arrived in time. Errors that did not come from ICMP (`SO_EE_ORIGIN_LOCAL`, e.g. a
/// local `EMSGSIZE`) are skipped. A TTL that expires at hop N is reported as time exceeded (11/0) from that hop;
/// a datagram reaching a host where nothing listens on the port as port unreachable (3/3) from that host.
pub fn udp_ttl_probe(dst: SocketAddrV4, ttl: u8, timeout: Duration) -> Result<Option<IcmpReport>, LabError> {
    let socket = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).map_err(|e| LabError::io("bind UDP probe socket", e))?;
    socket.set_ttl(u32::from(ttl)).map_err(|e| LabError::io(format!("set IP_TTL {ttl}"), e))?;
    let fd = socket.as_raw_fd();
    let one: libc::c_int = 1;
    // SAFETY: fd is a valid socket owned by `socket`; the option value points to a live c_int of the given size.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::IPPROTO_IP,
            libc::IP_RECVERR,
            (&one as *const libc::c_int).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(LabError::io("set IP_RECVERR", std::io::Error::last_os_error()));
    }
    socket.send_to(b"hyperplane netlab probe", dst).map_err(|e| LabError::io(format!("send probe to {dst}"), e))?;

    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(None);
        }
        // Round up so a sub-millisecond remainder still waits.
        let wait = Duration::from_micros(u64::try_from(left.as_micros().div_ceil(1000) * 1000).unwrap_or(u64::MAX));
        let wait =
            rustix::event::Timespec::try_from(wait).unwrap_or(rustix::event::Timespec { tv_sec: i64::MAX, tv_nsec: 0 });
        // No events asked: POLLERR (a non-empty error queue) is always reported, and a datagram that happens to
        // come back (POLLIN) does not wake us.
        let mut pfd = [rustix::event::PollFd::new(&socket, rustix::event::PollFlags::empty())];
        match rustix::event::poll(&mut pfd, Some(&wait)) {
            Ok(_) => {}
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(LabError::io("poll probe socket", e.into())),
        }
        if !pfd[0].revents().contains(rustix::event::PollFlags::ERR) {
            continue;
        }
        while let Some(report) = read_error_queue(fd)? {
            if let Some(report) = report {
                return Ok(Some(report));
            }
        }
    }
}

/// Reads one entry from the error queue: `None` when the queue is empty, `Some(None)` for an entry that is not an
/// ICMP error, `Some(Some(report))` for an ICMP error.
fn read_error_queue(fd: libc::c_int) -> Result<Option<Option<IcmpReport>>, LabError> {
    let mut payload = [0u8; 64];
    // u64 elements keep the control buffer aligned for cmsghdr.
    let mut control = [0u64; 64];
    let mut iov = libc::iovec { iov_base: payload.as_mut_ptr().cast(), iov_len: payload.len() };
    // SAFETY: msghdr is a plain C struct for which all-zero is a valid (empty) value.
    let mut msg: libc::msghdr = unsafe { MaybeUninit::zeroed().assume_init() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = size_of::<[u64; 64]>() as _;
    // SAFETY: msg points to a valid iovec and control buffer that outlive the call.
    let n = unsafe { libc::recvmsg(fd, &mut msg, libc::MSG_ERRQUEUE | libc::MSG_DONTWAIT) };
    if n < 0 {
        let e = std::io::Error::last_os_error();
        return match e.kind() {
            std::io::ErrorKind::WouldBlock => Ok(None),
            std::io::ErrorKind::Interrupted => Ok(Some(None)),
            _ => Err(LabError::io("recvmsg(MSG_ERRQUEUE)", e)),
        };
    }
    // SAFETY: msg was filled by recvmsg; the CMSG_* macros walk the control buffer within msg_controllen.
    let mut cmsg = unsafe { libc::CMSG_FIRSTHDR(&msg) };
    while !cmsg.is_null() {
        // SAFETY: cmsg is non-null and points into the control buffer (CMSG_FIRSTHDR/CMSG_NXTHDR guarantee it).
        let hdr = unsafe { &*cmsg };
        if hdr.cmsg_level == libc::SOL_IP && hdr.cmsg_type == libc::IP_RECVERR {
            // SAFETY: an IP_RECVERR message carries a sock_extended_err followed by the offender's sockaddr_in; the
            // kernel sizes cmsg_len for both, and read_unaligned tolerates any alignment.
            let (ee, offender) = unsafe {
                let data = libc::CMSG_DATA(cmsg);
                let ee = std::ptr::read_unaligned(data.cast::<libc::sock_extended_err>());
                let off = libc::SO_EE_OFFENDER(data.cast::<libc::sock_extended_err>());
                let have_offender = hdr.cmsg_len as usize
                    >= libc::CMSG_LEN((size_of::<libc::sock_extended_err>() + size_of::<libc::sockaddr_in>()) as u32)
                        as usize;
                let offender = have_offender.then(|| std::ptr::read_unaligned(off.cast::<libc::sockaddr_in>()));
                (ee, offender)
            };
            if ee.ee_origin != libc::SO_EE_ORIGIN_ICMP {
                return Ok(Some(None));
            }
            let from = offender
                .filter(|sa| sa.sin_family == libc::AF_INET as libc::sa_family_t)
                .map(|sa| Ipv4Addr::from(u32::from_be(sa.sin_addr.s_addr)))
                .unwrap_or(Ipv4Addr::UNSPECIFIED);
            return Ok(Some(Some(IcmpReport { from, icmp_type: ee.ee_type, code: ee.ee_code })));
        }
        // SAFETY: as above; returns null after the last header.
        cmsg = unsafe { libc::CMSG_NXTHDR(&msg, cmsg) };
    }
    Ok(Some(None))
}

/// Pings `dst` from `ns` with `ping -q -c COUNT -W 1 -i 0.2 -n`; `true` when all `count` replies arrived.
///
/// An unreachable or silent destination is `Ok(false)`; a missing `ping` or another failure (exit status 2) is an
/// error.
pub fn ping(ns: &Netns, dst: Ipv4Addr, count: u32) -> Result<bool, LabError> {
    if count == 0 {
        return Err(LabError::Invalid("ping needs a count of at least 1".into()));
    }
    let count_s = count.to_string();
    let dst_s = dst.to_string();
    let args = ["ping", "-q", "-c", &count_s, "-W", "1", "-i", "0.2", "-n", &dst_s];
    let output = match ns.exec(&args) {
        Ok(output) => output,
        // ping exits 1 when replies are missing; that is an answer, not an error.
        Err(LabError::Command { status, .. }) if status.code() == Some(1) => return Ok(false),
        Err(e) => return Err(e),
    };
    let stdout = String::from_utf8_lossy(&output.stdout);
    Ok(received(&stdout) == Some(count))
}

/// Parses `N packets transmitted, M received` from ping's summary.
fn received(summary: &str) -> Option<u32> {
    let line = summary.lines().find(|l| l.contains("packets transmitted"))?;
    let part = line.split(',').find(|p| p.trim_end().ends_with("received"))?;
    part.split_whitespace().next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ping_summary() {
        let s =
            "--- 10.0.0.1 ping statistics ---\n3 packets transmitted, 2 received, 33.3333% packet loss, time 402ms\n";
        assert_eq!(received(s), Some(2));
        assert_eq!(received("nothing"), None);
    }
}
