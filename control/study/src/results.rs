//! What a simulated design yields: failures, invocations, latency
//! summaries, time buckets, and the helpers that summarise them.

use serde::{Deserialize, Serialize};

/// Which way functions reach the VPC.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Design {
    /// Before 2019: an ENI per execution environment (shared by the environments of one
    /// function on one 3 GB worker), created on the cold-start path.
    PerEnvironmentEni,
    /// Since 2019: one shared (Hyperplane) ENI per (subnet, security-group set), created with
    /// the function.
    SharedEni,
}

impl Design {
    /// Both designs, the older first.
    pub const ALL: [Design; 2] = [Design::PerEnvironmentEni, Design::SharedEni];

    /// The identifier used in CSV and JSON.
    pub fn id(self) -> &'static str {
        match self {
            Design::PerEnvironmentEni => "per_environment_eni",
            Design::SharedEni => "shared_eni",
        }
    }

    /// A human label.
    pub fn label(self) -> &'static str {
        match self {
            Design::PerEnvironmentEni => "per-environment ENI (before 2019)",
            Design::SharedEni => "shared ENI (since 2019)",
        }
    }
}

/// Why an invocation failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum FailureReason {
    /// The subnet had no free address for a new ENI.
    #[serde(rename = "SubnetOutOfIPAddresses")]
    SubnetOutOfIpAddresses,
    /// The VPC's ENI quota was reached.
    EniLimitExceeded,
    /// The function was `Pending` (being restored from `Inactive`).
    ResourceNotReady,
}

impl FailureReason {
    /// The AWS error name.
    pub fn aws_name(self) -> &'static str {
        match self {
            FailureReason::SubnetOutOfIpAddresses => "SubnetOutOfIPAddresses",
            FailureReason::EniLimitExceeded => "EniLimitExceeded",
            FailureReason::ResourceNotReady => "ResourceNotReady",
        }
    }
}

/// Failed invocations by reason.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailureCounts {
    /// `SubnetOutOfIPAddresses`.
    #[serde(rename = "SubnetOutOfIPAddresses")]
    pub subnet_out_of_ip_addresses: u64,
    /// `EniLimitExceeded`.
    #[serde(rename = "EniLimitExceeded")]
    pub eni_limit_exceeded: u64,
    /// `ResourceNotReady` (function restoring from `Inactive`).
    #[serde(rename = "ResourceNotReady")]
    pub resource_not_ready: u64,
}

impl FailureCounts {
    pub(crate) fn add(&mut self, r: FailureReason) {
        match r {
            FailureReason::SubnetOutOfIpAddresses => self.subnet_out_of_ip_addresses += 1,
            FailureReason::EniLimitExceeded => self.eni_limit_exceeded += 1,
            FailureReason::ResourceNotReady => self.resource_not_ready += 1,
        }
    }

    /// All failures.
    pub fn total(&self) -> u64 {
        self.subnet_out_of_ip_addresses + self.eni_limit_exceeded + self.resource_not_ready
    }
}

/// Invocation counts.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct InvocationCounts {
    /// Invocations issued.
    pub total: u64,
    /// Invocations that ran.
    pub ok: u64,
    /// Invocations that failed.
    pub failed: u64,
    /// Failures by reason.
    pub failed_by_reason: FailureCounts,
    /// Successful invocations that created an environment.
    pub cold_starts: u64,
    /// Successful invocations that reused one.
    pub warm_starts: u64,
}

/// Summary of the network latency of cold starts, seconds.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct LatencySummary {
    /// Cold starts measured.
    pub count: u64,
    /// Mean.
    pub mean_s: f64,
    /// Median (nearest rank).
    pub p50_s: f64,
    /// 99th percentile (nearest rank).
    pub p99_s: f64,
    /// Maximum.
    pub max_s: f64,
}

/// One time-series bucket.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Bucket {
    /// Start of the bucket, s.
    pub t_start_s: f64,
    /// End of the bucket, s.
    pub t_end_s: f64,
    /// Invocations issued in the bucket.
    pub invocations: u64,
    /// Of which failed.
    pub failures: u64,
    /// Of which cold starts (successful).
    pub cold_starts: u64,
    /// Highest concurrency (running invocations) in the bucket.
    pub concurrency: u32,
    /// Highest number of execution environments in the bucket.
    pub environments: u32,
    /// Highest number of subnet addresses (ENIs) in use in the bucket.
    pub addresses: u32,
    /// Median network latency of the cold starts issued in the bucket, s (none if none).
    pub p50_latency_s: Option<f64>,
    /// 99th percentile of the same, s.
    pub p99_latency_s: Option<f64>,
}

/// Everything one design produced.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DesignResult {
    /// The design.
    pub design: Design,
    /// Invocation counts.
    pub invocations: InvocationCounts,
    /// Network latency of cold starts (warm starts cost 0 and are not included).
    pub cold_start_latency: LatencySummary,
    /// ENIs created (including the shared design's set-up before t = 0).
    pub enis_created: u64,
    /// ENIs deleted.
    pub enis_deleted: u64,
    /// Most subnet addresses (ENIs) in use at once, over all subnets.
    pub peak_addresses: u32,
    /// Most addresses in use at once, per subnet: `(subnet id, addresses)`.
    pub peak_addresses_by_subnet: Vec<(u32, u32)>,
    /// Highest concurrency.
    pub peak_concurrency: u32,
    /// Most execution environments at once.
    pub peak_environments: u32,
    /// Most connections held at once.
    pub peak_connections: u64,
    /// First time concurrency reached a burst's target, s (none if never, or not a burst).
    pub time_to_target_s: Option<f64>,
    /// Set-up before t = 0, s (the shared design's ENI creation; 0 for per-environment).
    pub setup_s: f64,
    /// Time of the last event, s.
    pub sim_end_s: f64,
    /// Width of the time-series buckets, s.
    pub bucket_s: f64,
    /// The time series.
    pub series: Vec<Bucket>,
    /// Wall-clock time of this simulation, ms (the only output that varies between runs).
    pub wall_clock_ms: f64,
}

impl DesignResult {
    /// A result with nothing counted yet.
    pub(crate) fn empty(design: Design) -> DesignResult {
        DesignResult {
            design,
            invocations: InvocationCounts::default(),
            cold_start_latency: LatencySummary::default(),
            enis_created: 0,
            enis_deleted: 0,
            peak_addresses: 0,
            peak_addresses_by_subnet: Vec::new(),
            peak_concurrency: 0,
            peak_environments: 0,
            peak_connections: 0,
            time_to_target_s: None,
            setup_s: 0.0,
            sim_end_s: 0.0,
            bucket_s: 0.0,
            series: Vec::new(),
            wall_clock_ms: 0.0,
        }
    }
}

/// Nearest-rank percentile of sorted data.
pub(crate) fn percentile(sorted: &[f64], q: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

/// The smallest of 1, 2, 5 times a power of ten that is >= `x` (at least 1 ms).
pub(crate) fn nice_width(x: f64) -> f64 {
    let x = if x.is_finite() { x.max(1e-3) } else { 1.0 };
    let p = 10f64.powf(x.log10().floor());
    for m in [1.0, 2.0, 5.0, 10.0] {
        if m * p >= x * (1.0 - 1e-12) {
            return m * p;
        }
    }
    10.0 * p
}

/// The maximum of a step function (changes in time order, the value holding until the next
/// change) over each of `n` buckets of `width`.
pub(crate) fn step_max(log: &[(f64, u32)], width: f64, n: usize) -> Vec<u32> {
    let mut out = vec![0u32; n];
    let mut current = 0u32;
    let mut j = 0;
    for (i, slot) in out.iter_mut().enumerate() {
        let end = (i + 1) as f64 * width;
        let mut m = current;
        while j < log.len() && (log[j].0 < end || i == n - 1) {
            current = log[j].1;
            m = m.max(current);
            j += 1;
        }
        *slot = m;
    }
    out
}
