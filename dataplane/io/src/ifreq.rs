//! Interface configuration by name: MTU, up, MAC address, index.
//!
//! Each call opens a throwaway `AF_INET`/`SOCK_DGRAM` socket (the classic
//! handle for `SIOC*IF*` ioctls), issues one or two ioctls on a `struct ifreq`
//! and closes it. These are setup-time calls, not per-frame ones.
//!
//! Contracts:
//! - names are validated first ([`validate_name`]): 1 to 15 bytes
//!   (`IFNAMSIZ - 1`), no NUL, `/`, `:` or whitespace, not `.` or `..`;
//!   otherwise [`IoError::BadName`];
//! - an interface the kernel does not know gives [`IoError::NoSuchInterface`];
//! - lack of privileges gives [`IoError::NotPermitted`] (setters need
//!   `CAP_NET_ADMIN`; getters do not).
//!
//! Units: MTU in bytes of L3 payload (the Ethernet header is not counted), as
//! `ip link` shows it. A TAP accepts 68 to 65521 (65535 minus the 14-byte
//! Ethernet header); other values fail with `EINVAL` as [`IoError::Sys`].

use super::error::IoError;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};

/// Longest interface name in bytes (`IFNAMSIZ - 1`).
pub const MAX_NAME_LEN: usize = libc::IFNAMSIZ - 1;

/// Checks that `name` can be a Linux interface name (the kernel's
/// `dev_valid_name` rules).
pub fn validate_name(name: &str) -> Result<(), IoError> {
    let bad = |reason| Err(IoError::BadName { name: name.to_owned(), reason });
    if name.is_empty() {
        return bad("empty");
    }
    if name.len() > MAX_NAME_LEN {
        return bad("longer than 15 bytes");
    }
    if name == "." || name == ".." {
        return bad("'.' and '..' are reserved");
    }
    if name.bytes().any(|b| b == 0 || b == b'/' || b == b':' || b.is_ascii_whitespace()) {
        return bad("contains NUL, '/', ':' or whitespace");
    }
    Ok(())
}

/// A zeroed `ifreq` carrying `name` (validated).
pub(crate) fn ifreq_for(name: &str) -> Result<libc::ifreq, IoError> {
    validate_name(name)?;
    // SAFETY: `ifreq` is plain old data (a byte array and a union of integers,
    // sockaddrs and a pointer), for which all-zeroes is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(name.bytes()) {
        *dst = src as libc::c_char;
    }
    // The name is at most 15 bytes, so ifr_name[15] stays 0: NUL-terminated.
    Ok(req)
}

/// An `AF_INET` datagram socket for interface ioctls.
fn control_socket() -> Result<OwnedFd, IoError> {
    use rustix::net::{AddressFamily, SocketFlags, SocketType};
    rustix::net::socket_with(AddressFamily::INET, SocketType::DGRAM, SocketFlags::CLOEXEC, None)
        .map_err(|e| IoError::sys("socket(AF_INET, SOCK_DGRAM)", e.into()))
}

/// Issues the `SIOC*IF*` ioctl `request` on `req` for interface `name`.
fn ifioctl(op: &'static str, request: libc::c_ulong, name: &str, req: &mut libc::ifreq) -> Result<(), IoError> {
    let sock = control_socket()?;
    // SAFETY: `req` is a valid, exclusively borrowed `ifreq` with a
    // NUL-terminated name, which is what every SIOC*IF* request reads and
    // writes; it outlives the call.
    let rc = unsafe { libc::ioctl(sock.as_raw_fd(), request as _, req as *mut libc::ifreq) };
    if rc < 0 {
        let err = io::Error::last_os_error();
        return Err(match err.raw_os_error() {
            Some(libc::ENODEV) | Some(libc::ENXIO) => IoError::NoSuchInterface { name: name.to_owned() },
            _ => IoError::sys(op, err),
        });
    }
    Ok(())
}

/// Sets the MTU of `name` (`SIOCSIFMTU`), in bytes.
pub fn set_mtu(name: &str, mtu: u32) -> Result<(), IoError> {
    let mut req = ifreq_for(name)?;
    let mtu = libc::c_int::try_from(mtu)
        .map_err(|_| IoError::Sys { op: "SIOCSIFMTU", source: io::Error::from(io::ErrorKind::InvalidInput) })?;
    req.ifr_ifru.ifru_mtu = mtu;
    ifioctl("SIOCSIFMTU", libc::SIOCSIFMTU, name, &mut req)
}

/// Sets the transmit queue length of `name` (`SIOCSIFTXQLEN`), in frames.
/// For a TAP this is how many frames the kernel side may queue for its
/// reader before it drops.
pub fn set_tx_queue_len(name: &str, frames: u32) -> Result<(), IoError> {
    let mut req = ifreq_for(name)?;
    let n = libc::c_int::try_from(frames)
        .map_err(|_| IoError::Sys { op: "SIOCSIFTXQLEN", source: io::Error::from(io::ErrorKind::InvalidInput) })?;
    // `ifr_qlen` is the union's int member, the one libc names `ifru_mtu`.
    req.ifr_ifru.ifru_mtu = n;
    ifioctl("SIOCSIFTXQLEN", 0x8943, name, &mut req)
}

/// The MTU of `name` (`SIOCGIFMTU`), in bytes.
pub fn mtu(name: &str) -> Result<u32, IoError> {
    let mut req = ifreq_for(name)?;
    ifioctl("SIOCGIFMTU", libc::SIOCGIFMTU, name, &mut req)?;
    // SAFETY: SIOCGIFMTU succeeded, so the kernel filled the `ifru_mtu` arm.
    let mtu = unsafe { req.ifr_ifru.ifru_mtu };
    Ok(u32::try_from(mtu).unwrap_or(0))
}

/// The interface flags of `name` (`SIOCGIFFLAGS`: `IFF_UP`, `IFF_RUNNING`…).
pub fn flags(name: &str) -> Result<u16, IoError> {
    let mut req = ifreq_for(name)?;
    ifioctl("SIOCGIFFLAGS", libc::SIOCGIFFLAGS, name, &mut req)?;
    // SAFETY: SIOCGIFFLAGS succeeded, so the kernel filled `ifru_flags`.
    Ok(unsafe { req.ifr_ifru.ifru_flags } as u16)
}

/// Sets `IFF_UP` on `name`, keeping its other flags (`SIOCGIFFLAGS` then
/// `SIOCSIFFLAGS`; like `ip link set NAME up`).
pub fn set_up(name: &str) -> Result<(), IoError> {
    let current = flags(name)?;
    let mut req = ifreq_for(name)?;
    req.ifr_ifru.ifru_flags = (current | libc::IFF_UP as u16) as libc::c_short;
    ifioctl("SIOCSIFFLAGS", libc::SIOCSIFFLAGS, name, &mut req)
}

/// The hardware (MAC) address of `name` (`SIOCGIFHWADDR`).
pub fn hw_addr(name: &str) -> Result<[u8; 6], IoError> {
    let mut req = ifreq_for(name)?;
    ifioctl("SIOCGIFHWADDR", libc::SIOCGIFHWADDR, name, &mut req)?;
    // SAFETY: SIOCGIFHWADDR succeeded, so the kernel filled `ifru_hwaddr`.
    let sa = unsafe { req.ifr_ifru.ifru_hwaddr };
    let mut mac = [0u8; 6];
    for (dst, src) in mac.iter_mut().zip(sa.sa_data.iter()) {
        *dst = *src as u8;
    }
    Ok(mac)
}

/// Sets the hardware (MAC) address of `name` (`SIOCSIFHWADDR`, family
/// `ARPHRD_ETHER`). The kernel rejects multicast and all-zero addresses with
/// `EADDRNOTAVAIL` ([`IoError::Sys`]). A TAP accepts the change while up.
pub fn set_hw_addr(name: &str, mac: [u8; 6]) -> Result<(), IoError> {
    let mut req = ifreq_for(name)?;
    // SAFETY: `sockaddr` is plain old data; all-zeroes is valid.
    let mut sa: libc::sockaddr = unsafe { std::mem::zeroed() };
    sa.sa_family = libc::ARPHRD_ETHER;
    for (dst, src) in sa.sa_data.iter_mut().zip(mac) {
        *dst = src as libc::c_char;
    }
    req.ifr_ifru.ifru_hwaddr = sa;
    ifioctl("SIOCSIFHWADDR", libc::SIOCSIFHWADDR, name, &mut req)
}

/// The interface index of `name` (`if_nametoindex`);
/// [`IoError::NoSuchInterface`] if there is none.
pub fn index(name: &str) -> Result<u32, IoError> {
    validate_name(name)?;
    match rustix::net::netdevice::name_to_index(control_socket()?, name) {
        Ok(idx) => Ok(idx),
        Err(rustix::io::Errno::NODEV | rustix::io::Errno::NXIO | rustix::io::Errno::NOENT) => {
            Err(IoError::NoSuchInterface { name: name.to_owned() })
        }
        Err(e) => Err(IoError::sys("if_nametoindex", e.into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn name_validation() {
        assert!(validate_name("eth0").is_ok());
        assert!(validate_name("abcdefghijklmno").is_ok());
        for bad in ["", "abcdefghijklmnop", ".", "..", "a/b", "a:b", "a b", "a\0b"] {
            assert!(matches!(validate_name(bad), Err(IoError::BadName { .. })), "{bad:?}");
        }
    }

    #[test]
    fn missing_interface() {
        assert!(matches!(index("nonexistent0"), Err(IoError::NoSuchInterface { .. })));
        assert!(matches!(mtu("nonexistent0"), Err(IoError::NoSuchInterface { .. })));
        assert!(matches!(index(""), Err(IoError::BadName { .. })));
    }

    #[test]
    fn loopback_getters() {
        // `lo` exists in every network namespace and getters need no privilege.
        assert!(index("lo").is_ok_and(|i| i > 0));
        assert!(mtu("lo").is_ok_and(|m| m > 0));
        assert_eq!(hw_addr("lo").ok(), Some([0; 6]));
        assert!(flags("lo").is_ok());
    }
}
