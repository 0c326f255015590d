//! Threads that run until a shared stop flag is set.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

/// Threads sharing one stop flag. [`StopGroup::halt`] (or dropping the
/// group) sets the flag and joins them all; each thread must look at the
/// flag often enough to end soon after.
#[derive(Debug, Default)]
pub struct StopGroup {
    flag: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl StopGroup {
    /// An empty group, its flag not set.
    pub fn new() -> StopGroup {
        StopGroup::default()
    }

    /// The flag its threads watch.
    pub fn flag(&self) -> Arc<AtomicBool> {
        Arc::clone(&self.flag)
    }

    /// Adds a thread that watches [`StopGroup::flag`].
    pub fn push(&mut self, thread: JoinHandle<()>) {
        self.threads.push(thread);
    }

    /// Sets the flag and joins every thread; whether any was still running.
    pub fn halt(&mut self) -> bool {
        self.flag.store(true, Ordering::Relaxed);
        let running = !self.threads.is_empty();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        running
    }
}

impl Drop for StopGroup {
    fn drop(&mut self) {
        self.halt();
    }
}
