//! SIGINT and SIGTERM as a flag, so every command stops cleanly and removes
//! what it created.
//!
//! [`install`] blocks both signals in the calling thread (call it first in
//! `main`, before any thread starts, so every thread inherits the mask) and
//! starts one thread that waits for them with `sigwait` and sets the flag.
//! Long-running work polls [`stopped`] and every blocking step it takes has
//! a timeout, so a Ctrl-C ends the command within about a second, through
//! the normal drop path.
//!
//! The signal mask and `sigwait` are the only `unsafe` code here: neither
//! std nor rustix offers them as safe calls.

use std::sync::atomic::{AtomicBool, Ordering};

static STOPPED: AtomicBool = AtomicBool::new(false);

/// Whether SIGINT or SIGTERM has arrived.
pub fn stopped() -> bool {
    STOPPED.load(Ordering::Relaxed)
}

/// Installs the handling described in the module docs. Idempotent enough:
/// a second call starts a second waiting thread, which does no harm.
pub fn install() -> std::io::Result<()> {
    // SAFETY: `set` is a local, fully initialised by sigemptyset before use;
    // pthread_sigmask only reads it and changes this thread's mask.
    let set = unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        if libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        set
    };
    std::thread::Builder::new().name("hp-signals".into()).spawn(move || {
        // It only waits for signals: it needs no capability.
        use rustix::thread::{set_capabilities, CapabilitySet, CapabilitySets};
        let none = CapabilitySet::empty();
        let _ = set_capabilities(None, CapabilitySets { effective: none, permitted: none, inheritable: none });
        signal_loop(&set)
    })?;
    Ok(())
}

fn signal_loop(set: &libc::sigset_t) -> ! {
    loop {
        let mut sig = 0;
        // SAFETY: `set` is initialised above and `sig` is a valid out pointer.
        let rc = unsafe { libc::sigwait(set, &mut sig) };
        if rc == 0 {
            tracing::info!(signal = sig, "stopping");
            STOPPED.store(true, Ordering::Relaxed);
        }
    }
}
