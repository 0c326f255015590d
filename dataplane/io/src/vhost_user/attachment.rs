//! A vhost-user port as a gateway attachment ([`crate::Inside::VhostUser`]):
//! bound when the gateway starts, then taken by the one worker the
//! attachment is assigned to, which alone moves its frames. Frames for it
//! produced on another worker are handed to that owner
//! ([`VhostUserAttachment::owner`]).

use super::{VhostCounters, VhostUserPort};
use crate::error::IoError;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// No worker has taken the port yet.
const NO_OWNER: usize = usize::MAX;

/// A vhost-user attachment. See the module docs.
#[derive(Debug)]
pub struct VhostUserAttachment {
    name: String,
    socket: PathBuf,
    /// The port until its owner takes it.
    port: Mutex<Option<VhostUserPort>>,
    owner: AtomicUsize,
    counters: Arc<VhostCounters>,
}

impl VhostUserAttachment {
    /// Binds the socket at `socket` for the attachment called `name`.
    pub fn bind(name: &str, socket: &Path) -> Result<VhostUserAttachment, IoError> {
        let port = VhostUserPort::bind(socket)?;
        let counters = port.counters_handle();
        Ok(VhostUserAttachment {
            name: name.to_string(),
            socket: socket.to_path_buf(),
            port: Mutex::new(Some(port)),
            owner: AtomicUsize::new(NO_OWNER),
            counters,
        })
    }

    /// The attachment's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The socket's path.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// The port's counters.
    pub fn counters(&self) -> &VhostCounters {
        &self.counters
    }

    /// Worker `index` takes the port (once; `None` after).
    pub fn take(&self, index: usize) -> Option<VhostUserPort> {
        let p = self.port.lock().unwrap_or_else(|e| e.into_inner()).take()?;
        self.owner.store(index, Ordering::Release);
        Some(p)
    }

    /// The worker that moves this port's frames; `None` before one took it.
    pub fn owner(&self) -> Option<usize> {
        Some(self.owner.load(Ordering::Acquire)).filter(|&o| o != NO_OWNER)
    }
}
