//! Typed errors of the I/O edge, and the privilege check.
//!
//! Every fallible setup call (opening a TAP, an `AF_PACKET` socket, an
//! interface ioctl) returns an [`IoError`] that names what failed in terms an
//! operator can act on: missing privileges, a missing `tun` module, a missing
//! or unsuitable interface, a bad name. Anything else is [`IoError::Sys`] with
//! the operation (`op`, e.g. `"TUNSETIFF"`) and the OS error.
//!
//! The per-frame paths (`recv`/`send`) return plain [`std::io::Result`]
//! instead: `WouldBlock` and `TimedOut` are normal there and the caller needs
//! the [`std::io::ErrorKind`], not a diagnosis.

use std::io;

/// An error setting up or configuring the I/O edge.
#[derive(Debug, thiserror::Error)]
pub enum IoError {
    /// The kernel refused the operation for lack of privileges (`EPERM` or
    /// `EACCES`).
    #[error("{op}: operation not permitted (needs root or CAP_NET_ADMIN)")]
    NotPermitted {
        /// The operation that was refused.
        op: &'static str,
    },
    /// `/dev/net/tun` is missing, or the `tun` driver is not loaded.
    #[error("/dev/net/tun is not available (is the tun module loaded? try `modprobe tun`)")]
    NoTunDevice,
    /// No network interface has this name.
    #[error("no such network interface: {name:?}")]
    NoSuchInterface {
        /// The name looked up.
        name: String,
    },
    /// The interface name cannot be a Linux interface name.
    #[error("bad interface name {name:?}: {reason}")]
    BadName {
        /// The rejected name.
        name: String,
        /// Why it was rejected.
        reason: &'static str,
    },
    /// The interface exists but cannot be attached as a TAP queue: it is not
    /// a TAP device (e.g. `lo`, or a TUN device), its multi-queue setting
    /// differs from the one asked for, or its only queue is already open.
    #[error("cannot attach to interface {name:?} as a TAP: {reason}")]
    NotTap {
        /// The interface name.
        name: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// Any other failure of a system call.
    #[error("{op}: {source}")]
    Sys {
        /// The operation that failed.
        op: &'static str,
        /// The OS error.
        #[source]
        source: io::Error,
    },
}

impl IoError {
    /// Classifies an OS error from `op`: `EPERM`/`EACCES` become
    /// [`IoError::NotPermitted`], anything else [`IoError::Sys`].
    pub(crate) fn sys(op: &'static str, source: io::Error) -> IoError {
        match source.raw_os_error() {
            Some(libc::EPERM) | Some(libc::EACCES) => IoError::NotPermitted { op },
            _ => IoError::Sys { op, source },
        }
    }
}

/// `CAP_NET_ADMIN`, bit 12 of the capability sets.
const CAP_NET_ADMIN: u32 = 12;
/// `CAP_NET_RAW` (linux/capability.h).
const CAP_NET_RAW: u32 = 13;
/// Checks that this process may configure network devices: its effective
/// uid is 0, or `CAP_NET_ADMIN` is in its effective capability set (read with
/// the `capget` system call, falling back to `CapEff` in `/proc/self/status`).
///
/// Returns [`IoError::NotPermitted`] with `op = "CAP_NET_ADMIN"` otherwise.
/// This is a courtesy check for a clear early message; the kernel still has
/// the last word on every operation.
pub fn check_net_admin() -> Result<(), IoError> {
    if rustix::process::geteuid().is_root() {
        return Ok(());
    }
    let has = capget_effective().or_else(proc_status_effective).is_some_and(|eff| eff & (1 << CAP_NET_ADMIN) != 0);
    if has {
        Ok(())
    } else {
        Err(IoError::NotPermitted { op: "CAP_NET_ADMIN" })
    }
}

/// The capabilities a running gateway keeps once its devices are open:
/// `CAP_NET_ADMIN` (interface settings, TAP queues) and `CAP_NET_RAW`
/// (`AF_PACKET`).
pub const KEPT_CAPABILITIES: u64 = (1 << CAP_NET_ADMIN) | (1 << CAP_NET_RAW);

/// Drops every capability of the calling thread but
/// [`KEPT_CAPABILITIES`] (effective and permitted; none inheritable).
/// Capabilities are per thread: threads started afterwards from this one
/// inherit the reduced sets, threads already running keep theirs.
pub fn keep_only_net_capabilities() -> io::Result<()> {
    use rustix::thread::{set_capabilities, CapabilitySet, CapabilitySets};
    let keep = CapabilitySet::NET_ADMIN | CapabilitySet::NET_RAW;
    let have = rustix::thread::capabilities(None)?;
    let sets = CapabilitySets {
        effective: have.effective & keep,
        permitted: have.permitted & keep,
        inheritable: CapabilitySet::empty(),
    };
    set_capabilities(None, sets)?;
    Ok(())
}

/// The low 64 bits of the effective set via `capget(2)`, `None` on failure.
fn capget_effective() -> Option<u64> {
    rustix::thread::capabilities(None).ok().map(|c| c.effective.bits())
}

/// The effective set from the `CapEff:` line of `/proc/self/status`.
fn proc_status_effective() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    parse_cap_eff(&status)
}

/// Parses the hexadecimal `CapEff:` line of a `/proc/<pid>/status` text.
fn parse_cap_eff(status: &str) -> Option<u64> {
    let line = status.lines().find_map(|l| l.strip_prefix("CapEff:"))?;
    u64::from_str_radix(line.trim(), 16).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cap_eff_parsing() {
        let status = "Name:\tx\nCapInh:\t0000000000000000\nCapEff:\t0000000000001000\nCapBnd:\t000001ffffffffff\n";
        assert_eq!(parse_cap_eff(status), Some(0x1000));
        assert_eq!(parse_cap_eff("CapEff:\tzz\n"), None);
        assert_eq!(parse_cap_eff(""), None);
    }

    #[test]
    fn capget_agrees_with_proc() {
        // Both sources describe the same process.
        if let (Some(a), Some(b)) = (capget_effective(), proc_status_effective()) {
            assert_eq!(a, b);
        }
    }

    #[test]
    fn errno_classification() {
        let e = IoError::sys("X", io::Error::from_raw_os_error(libc::EPERM));
        assert!(matches!(e, IoError::NotPermitted { op: "X" }));
        assert!(e.to_string().contains("CAP_NET_ADMIN"));
        let e = IoError::sys("X", io::Error::from_raw_os_error(libc::EINVAL));
        assert!(matches!(e, IoError::Sys { op: "X", .. }));
        assert!(IoError::NoTunDevice.to_string().contains("modprobe tun"));
    }

    #[test]
    fn root_passes_check() {
        if rustix::process::geteuid().is_root() {
            assert!(check_net_admin().is_ok());
        }
    }
}
