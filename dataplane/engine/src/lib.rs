//! The hyperplane dataplane: a sans-IO NAT that maps many execution
//! environments onto shared ENI addresses.
//!
//! The [`engine::Engine`] is handed a frame that arrived on a [`PortId`]
//! together with the current [`time::Instant`], rewrites it in place and says
//! what to do with it. It never reads a clock and never does I/O; drivers (the
//! TAP gateway in `dataplane-io`, tests, benches) own sockets, buffers and time.
//!
//! [`testkit`] (frame builders for tests, benches and fuzzing) and
//! [`fuzzing`] (the fuzz target's body) are behind the cargo feature
//! `testkit`.

pub mod arp;
pub mod bindings;
pub mod checksum;
pub mod config;
pub mod counters;
pub mod engine;
pub mod flow;
pub mod frag;
#[cfg(any(test, feature = "testkit"))]
pub mod fuzzing;
pub mod index;
pub mod policy;
pub mod ports;
pub mod session;
pub mod tcp;
#[cfg(any(test, feature = "testkit"))]
pub mod testkit;
pub mod time;
pub mod wire;

pub use engine::{Action, BatchFrame, Engine, Event, Offload, UNANSWERED_GRACE};

/// A port of the engine: where a frame arrived or where it leaves.
///
/// [`PortId::OUTSIDE`] is the VPC side, where the shared ENI addresses live;
/// every other value is an inside attachment (a TAP carrying one or more
/// execution environments).
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PortId(pub u16);

impl PortId {
    /// The VPC-side port.
    pub const OUTSIDE: PortId = PortId(0);

    /// Whether this is an inside attachment.
    pub const fn is_inside(self) -> bool {
        self.0 != 0
    }
}
