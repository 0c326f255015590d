//! The shared-ENI study: what moving from an ENI per execution environment (Lambda before 2019)
//! to one shared ENI per (subnet, security-group set) (since 2019) does to cold starts, subnet
//! addresses and failures, by simulation.
//!
//! - [`scenario`]: the inputs ([`Scenario`]) and their defaults, each marked published or
//!   estimate;
//! - [`sim`]: the seeded discrete-event simulation of one design and its model;
//! - [`report`]: terminal tables, JSON, CSV and SVG plots;
//! - [`run`] simulates both designs over the same workload; [`sweep`] repeats that over values
//!   of one parameter, with the same seed (common random numbers).
//!
//! Units: seconds throughout, MB for memory. Runs are deterministic for a seed except for
//! [`DesignResult::wall_clock_ms`].

pub mod report;
pub mod results;
pub mod rng;
pub mod scenario;
pub mod sim;

use serde::{Deserialize, Serialize};

pub use scenario::{Arrival, Dist, FunctionSpec, PerEnvParams, Scenario, SharedParams, SubnetSpec};
pub use sim::{Bucket, Design, DesignResult, FailureCounts, FailureReason, InvocationCounts, LatencySummary};

/// A parameter or a sweep is invalid; `param` names it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum StudyError {
    /// A parameter is out of range.
    #[error("invalid parameter `{param}`: {reason}")]
    InvalidParameter {
        /// The parameter's path in the scenario (`functions[2].memory_mb`) or the sweep.
        param: String,
        /// What is wrong.
        reason: String,
    },
}

/// Both designs over one scenario.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StudyResult {
    /// The seed.
    pub seed: u64,
    /// The scenario.
    pub scenario: Scenario,
    /// Lambda before 2019.
    pub per_env: DesignResult,
    /// Lambda since 2019.
    pub shared: DesignResult,
}

impl StudyResult {
    /// Both designs, the older first.
    pub fn designs(&self) -> [&DesignResult; 2] {
        [&self.per_env, &self.shared]
    }
}

/// Simulates both designs over `scenario` with `seed`.
pub fn run(scenario: &Scenario, seed: u64) -> Result<StudyResult, StudyError> {
    scenario.validate()?;
    Ok(StudyResult {
        seed,
        scenario: scenario.clone(),
        per_env: sim::simulate(scenario, Design::PerEnvironmentEni, seed)?,
        shared: sim::simulate(scenario, Design::SharedEni, seed)?,
    })
}

/// The parameter a sweep varies.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SweepParam {
    /// Median of the per-environment ENI creation time, s (the distribution's shape kept).
    EniCreateSeconds,
    /// Prefix length of every subnet (16 to 28).
    SubnetPrefix,
    /// A burst's target concurrency; for open-loop patterns the (peak) rate is set to
    /// `value / mean duration`, the arrival rate that gives that concurrency (Little's law).
    TargetConcurrency,
    /// Memory of every function, MB.
    MemoryMb,
    /// Connections each running invocation holds (shared design).
    ConnectionsPerEnv,
    /// The VPC's ENI quota.
    EniQuota,
}

impl SweepParam {
    /// Every parameter.
    pub const ALL: [SweepParam; 6] = [
        SweepParam::EniCreateSeconds,
        SweepParam::SubnetPrefix,
        SweepParam::TargetConcurrency,
        SweepParam::MemoryMb,
        SweepParam::ConnectionsPerEnv,
        SweepParam::EniQuota,
    ];

    /// The name used on the command line and in output.
    pub fn name(self) -> &'static str {
        match self {
            SweepParam::EniCreateSeconds => "eni-create-seconds",
            SweepParam::SubnetPrefix => "subnet-prefix",
            SweepParam::TargetConcurrency => "target-concurrency",
            SweepParam::MemoryMb => "memory-mb",
            SweepParam::ConnectionsPerEnv => "connections-per-env",
            SweepParam::EniQuota => "eni-quota",
        }
    }

    /// `base` with this parameter set to `value`.
    pub fn apply(self, base: &Scenario, value: f64) -> Result<Scenario, StudyError> {
        let bad = |reason: String| StudyError::InvalidParameter { param: format!("sweep {}", self.name()), reason };
        if !value.is_finite() {
            return Err(bad(format!("value {value} is not finite")));
        }
        let integer = |lo: f64, hi: f64| -> Result<u32, StudyError> {
            if value.fract() != 0.0 || value < lo || value > hi {
                Err(bad(format!("value {value} must be an integer in {lo}..={hi}")))
            } else {
                Ok(value as u32)
            }
        };
        let mut s = base.clone();
        match self {
            SweepParam::EniCreateSeconds => {
                if value <= 0.0 {
                    return Err(bad(format!("value {value} must be > 0")));
                }
                s.per_env.eni_create = s.per_env.eni_create.with_median(value);
            }
            SweepParam::SubnetPrefix => {
                let p = integer(16.0, 28.0)? as u8;
                for sub in &mut s.subnets {
                    sub.prefix_len = p;
                }
            }
            SweepParam::TargetConcurrency => {
                let c = integer(1.0, f64::from(u32::MAX))?;
                let mean = s.duration.mean();
                match &mut s.arrival {
                    Arrival::Burst { target_concurrency, .. } => *target_concurrency = c,
                    Arrival::Steady { rate_per_s } if mean > 0.0 => *rate_per_s = value / mean,
                    Arrival::Daily { peak_rate_per_s, .. } if mean > 0.0 => *peak_rate_per_s = value / mean,
                    _ => return Err(bad("the duration's mean is 0: no rate gives a concurrency".into())),
                }
            }
            SweepParam::MemoryMb => {
                let m = integer(128.0, 10_240.0)?;
                for f in &mut s.functions {
                    f.memory_mb = m;
                }
            }
            SweepParam::ConnectionsPerEnv => s.shared.connections_per_env = integer(0.0, f64::from(u32::MAX))?,
            SweepParam::EniQuota => s.eni_quota = integer(0.0, f64::from(u32::MAX))?,
        }
        Ok(s)
    }
}

impl core::str::FromStr for SweepParam {
    type Err = StudyError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        SweepParam::ALL.into_iter().find(|p| p.name() == s || p.name().replace('-', "_") == s).ok_or_else(|| {
            StudyError::InvalidParameter {
                param: "sweep".into(),
                reason: format!(
                    "unknown parameter {s:?}; one of: {}",
                    SweepParam::ALL.map(SweepParam::name).join(", ")
                ),
            }
        })
    }
}

/// [`run`] for each value of `param` (same seed for every point).
pub fn sweep(
    base: &Scenario,
    param: SweepParam,
    values: &[f64],
    seed: u64,
) -> Result<Vec<(f64, StudyResult)>, StudyError> {
    let scenarios = values.iter().map(|&v| param.apply(base, v).map(|s| (v, s))).collect::<Result<Vec<_>, _>>()?;
    for (_, s) in &scenarios {
        s.validate()?;
    }
    scenarios.into_iter().map(|(v, s)| run(&s, seed).map(|r| (v, r))).collect()
}
