//! What the controller keeps and says: ENI and function records with their
//! states, the effects it asks of the runtime, and how an address was added.

use crate::plan::EniKey;
use dataplane::time::Instant;
use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::time::Duration;

/// What [`Controller::high_water`](super::Controller::high_water) did about a full address.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Growth {
    /// The address is none of ours.
    Unknown,
    /// The ENI is being set up or already probing an address.
    Busy(u32),
    /// A newer address of the ENI still has room.
    Room(u32),
    /// The ENI has `max_eni_addresses` addresses already.
    AtMax(u32, usize),
    /// Its subnet has no address left.
    SubnetFull(u32),
    /// An address is being probed and will be added.
    Adding(u32, Ipv4Addr),
}

/// What the runtime must do for the control plane.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Effect {
    /// Probe `addr` on the VPC link (ARP, RFC 5227), then call
    /// [`Controller::probe_done`](super::Controller::probe_done).
    Probe {
        /// The ENI it is for.
        eni: u32,
        /// The address.
        addr: Ipv4Addr,
    },
    /// The bindings changed: publish [`Controller::bindings`](super::Controller::bindings).
    Publish,
}

/// A shared ENI's state.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum EniState {
    /// Being set up.
    Creating,
    /// In the bindings; new flows use it.
    Active,
    /// No function uses it; its sessions finish.
    Draining,
}

impl EniState {
    /// As shown by `hyperplane status`.
    pub fn label(self) -> &'static str {
        match self {
            EniState::Creating => "Creating",
            EniState::Active => "Active",
            EniState::Draining => "Draining",
        }
    }
}

/// One shared ENI.
#[derive(Clone, Debug)]
pub struct EniRecord {
    /// Its id (never reused).
    pub id: u32,
    /// Its key.
    pub key: EniKey,
    /// Its addresses in use (the first from setup, more past the
    /// high-water mark).
    pub addrs: Vec<Ipv4Addr>,
    /// Bumped whenever what the dataplane sees of it changes.
    pub generation: u64,
    /// Its state.
    pub state: EniState,
    /// Functions that use it (their environments' flows) or will.
    pub functions: BTreeSet<String>,
    /// Live sessions on its addresses (from the dataplane).
    pub sessions: u64,
    /// Setup steps and how long each took.
    pub steps: Vec<(String, Duration)>,
    /// When its setup began.
    pub created: Instant,
    /// An address being probed, and since when (an extra one when the ENI
    /// is already active).
    pub probing: Option<(Ipv4Addr, Instant)>,
    /// When provisioning ends.
    pub ready_at: Option<Instant>,
    /// When draining began.
    pub draining_since: Option<Instant>,
}

impl EniRecord {
    /// Total setup time, once it is active.
    pub fn setup_time(&self) -> Option<Duration> {
        (self.state != EniState::Creating).then(|| self.steps.iter().map(|(_, d)| *d).sum())
    }
}

/// A function's state, as Lambda shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FunctionState {
    /// Waiting for its ENIs; the reason is `Creating` or `Restoring`.
    Pending(&'static str),
    /// Its environments' new flows are translated.
    Active,
    /// Reclaimed (reason `Idle`).
    Inactive(&'static str),
    /// Its ENIs could not be set up (reason code).
    Failed(String),
}

impl FunctionState {
    /// State name and reason.
    pub fn parts(&self) -> (&'static str, Option<String>) {
        match self {
            FunctionState::Pending(r) => ("Pending", Some(r.to_string())),
            FunctionState::Active => ("Active", None),
            FunctionState::Inactive(r) => ("Inactive", Some(r.to_string())),
            FunctionState::Failed(r) => ("Failed", Some(r.clone())),
        }
    }
}

/// The outcome of the last update of a function.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum UpdateStatus {
    /// Its new ENIs are being set up.
    InProgress,
    /// Done.
    Successful,
    /// The new ENIs failed; the old configuration stays (reason code).
    Failed(String),
}

impl UpdateStatus {
    /// Status name and reason.
    pub fn parts(&self) -> (&'static str, Option<String>) {
        match self {
            UpdateStatus::InProgress => ("InProgress", None),
            UpdateStatus::Successful => ("Successful", None),
            UpdateStatus::Failed(r) => ("Failed", Some(r.clone())),
        }
    }
}

/// One function.
#[derive(Clone, Debug)]
pub struct FunctionRecord {
    /// Its state.
    pub state: FunctionState,
    /// Its last update.
    pub last_update: UpdateStatus,
    /// The keys its environments use now, by subnet.
    pub bound: BTreeMap<String, EniKey>,
    /// The keys it is moving to, by subnet (equal to `bound` when settled).
    pub target: BTreeMap<String, EniKey>,
    /// Last traffic from one of its environments (or its creation).
    pub last_activity: Instant,
}
