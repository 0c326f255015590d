//! The study's inputs: functions, subnets, quota, arrival pattern and the two designs'
//! parameters, with their defaults and validation.
//!
//! Units: seconds for every time (`_s`), MB for memory, prefix lengths for subnets.
//! Which default is a published figure and which an estimate is said on each field; estimates
//! are parameters precisely because they are estimates.

use serde::{Deserialize, Serialize};

use super::rng::Rng;
use super::StudyError;

/// z of the 99th percentile of the standard normal.
const Z99: f64 = 2.326_347_874_040_841;

/// Addresses AWS reserves in every subnet (network, router, DNS, future use, broadcast):
/// published.
pub const AWS_RESERVED_ADDRESSES: u64 = 5;

/// A distribution of a duration, in seconds.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Dist {
    /// Always `value_s`.
    Fixed {
        /// The value.
        value_s: f64,
    },
    /// Exponential with mean `mean_s`.
    Exponential {
        /// The mean.
        mean_s: f64,
    },
    /// Log-normal given by its median and 99th percentile (`p99_s >= median_s`).
    LogNormal {
        /// The median (`exp(mu)`).
        median_s: f64,
        /// The 99th percentile (`exp(mu + 2.326 sigma)`).
        p99_s: f64,
    },
    /// Uniform on `[min_s, max_s]`.
    Uniform {
        /// The lower bound.
        min_s: f64,
        /// The upper bound.
        max_s: f64,
    },
}

fn invalid(param: &str, reason: impl Into<String>) -> StudyError {
    StudyError::InvalidParameter { param: param.to_string(), reason: reason.into() }
}

fn check_nonneg(param: &str, v: f64) -> Result<(), StudyError> {
    if v.is_finite() && v >= 0.0 {
        Ok(())
    } else {
        Err(invalid(param, format!("must be a finite number >= 0, got {v}")))
    }
}

fn check_pos(param: &str, v: f64) -> Result<(), StudyError> {
    if v.is_finite() && v > 0.0 {
        Ok(())
    } else {
        Err(invalid(param, format!("must be a finite number > 0, got {v}")))
    }
}

impl Dist {
    /// Checks the parameters; `param` names the field in errors.
    pub fn validate(&self, param: &str) -> Result<(), StudyError> {
        match *self {
            Dist::Fixed { value_s } => check_nonneg(&format!("{param}.value_s"), value_s),
            Dist::Exponential { mean_s } => check_pos(&format!("{param}.mean_s"), mean_s),
            Dist::LogNormal { median_s, p99_s } => {
                check_pos(&format!("{param}.median_s"), median_s)?;
                check_pos(&format!("{param}.p99_s"), p99_s)?;
                if p99_s < median_s {
                    return Err(invalid(&format!("{param}.p99_s"), format!("must be >= median_s ({median_s})")));
                }
                Ok(())
            }
            Dist::Uniform { min_s, max_s } => {
                check_nonneg(&format!("{param}.min_s"), min_s)?;
                check_nonneg(&format!("{param}.max_s"), max_s)?;
                if max_s < min_s {
                    return Err(invalid(&format!("{param}.max_s"), format!("must be >= min_s ({min_s})")));
                }
                Ok(())
            }
        }
    }

    /// One draw.
    pub fn sample(&self, rng: &mut Rng) -> f64 {
        match *self {
            Dist::Fixed { value_s } => value_s,
            Dist::Exponential { mean_s } => rng.exponential(mean_s),
            Dist::LogNormal { median_s, p99_s } => {
                let sigma = (p99_s / median_s).ln() / Z99;
                rng.lognormal(median_s.ln(), sigma)
            }
            Dist::Uniform { min_s, max_s } => min_s + (max_s - min_s) * rng.next_f64(),
        }
    }

    /// The mean.
    pub fn mean(&self) -> f64 {
        match *self {
            Dist::Fixed { value_s } => value_s,
            Dist::Exponential { mean_s } => mean_s,
            Dist::LogNormal { median_s, p99_s } => {
                let sigma = (p99_s / median_s).ln() / Z99;
                median_s * (sigma * sigma / 2.0).exp()
            }
            Dist::Uniform { min_s, max_s } => (min_s + max_s) / 2.0,
        }
    }

    /// The median.
    pub fn median(&self) -> f64 {
        match *self {
            Dist::Fixed { value_s } => value_s,
            Dist::Exponential { mean_s } => mean_s * core::f64::consts::LN_2,
            Dist::LogNormal { median_s, .. } => median_s,
            Dist::Uniform { min_s, max_s } => (min_s + max_s) / 2.0,
        }
    }

    /// The same shape scaled so that its median is `median_s`.
    pub fn with_median(&self, median_s: f64) -> Dist {
        let old = self.median();
        let k = if old > 0.0 { median_s / old } else { 1.0 };
        match *self {
            Dist::Fixed { .. } => Dist::Fixed { value_s: median_s },
            Dist::Exponential { .. } => Dist::Exponential { mean_s: median_s / core::f64::consts::LN_2 },
            Dist::LogNormal { median_s: m, p99_s } => Dist::LogNormal { median_s, p99_s: median_s * (p99_s / m) },
            Dist::Uniform { min_s, max_s } if old > 0.0 => Dist::Uniform { min_s: min_s * k, max_s: max_s * k },
            Dist::Uniform { .. } => Dist::Fixed { value_s: median_s },
        }
    }

    /// A short human description.
    pub fn describe(&self) -> String {
        match *self {
            Dist::Fixed { value_s } => format!("fixed {value_s} s"),
            Dist::Exponential { mean_s } => format!("exponential, mean {mean_s} s"),
            Dist::LogNormal { median_s, p99_s } => format!("log-normal, median {median_s} s, p99 {p99_s} s"),
            Dist::Uniform { min_s, max_s } => format!("uniform {min_s}..{max_s} s"),
        }
    }
}

/// How invocations arrive.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Arrival {
    /// Closed loop: `target_concurrency` callers, started evenly over `ramp_s` (caller `c`, from
    /// 0, starts at `ramp_s * (c + 1) / target`), each invoking again as soon as its previous
    /// invocation returns (after `retry_backoff_s` when it failed). Concurrency thus climbs from 0
    /// to the target, as in a load test or a burst of events.
    Burst {
        /// Callers at the end of the ramp.
        target_concurrency: u32,
        /// Length of the ramp.
        ramp_s: f64,
    },
    /// Open loop: a Poisson process of `rate_per_s` invocations per second.
    Steady {
        /// Arrivals per second.
        rate_per_s: f64,
    },
    /// Open loop: a non-homogeneous Poisson process with rate
    /// `peak_rate_per_s * (1 - cos(2 pi t / period_s)) / 2`: 0 at t = 0, the peak at half a
    /// period (generated by thinning).
    Daily {
        /// Arrivals per second at the peak.
        peak_rate_per_s: f64,
        /// The period (86,400 for a day).
        period_s: f64,
    },
}

impl Arrival {
    /// A short human description.
    pub fn describe(&self) -> String {
        match *self {
            Arrival::Burst { target_concurrency, ramp_s } => {
                format!("burst to {target_concurrency} concurrent over {ramp_s} s (closed loop)")
            }
            Arrival::Steady { rate_per_s } => format!("steady Poisson, {rate_per_s}/s"),
            Arrival::Daily { peak_rate_per_s, period_s } => {
                format!("daily sinusoid, peak {peak_rate_per_s}/s, period {period_s} s")
            }
        }
    }
}

/// One Lambda function attached to a VPC.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FunctionSpec {
    /// Configured memory, MB (Lambda: 128 to 10,240; 3,008 was the maximum before 2020).
    pub memory_mb: u32,
    /// The subnet's id (must be in [`Scenario::subnets`]).
    pub subnet: u32,
    /// The security-group set's id: functions with equal (subnet, sg_set) share a shared ENI.
    pub sg_set: u32,
    /// Share of the invocations (open loop) or of the callers (burst), relative to the others.
    pub weight: f64,
}

impl Default for FunctionSpec {
    fn default() -> Self {
        FunctionSpec { memory_mb: 1024, subnet: 0, sg_set: 0, weight: 1.0 }
    }
}

/// One subnet of the VPC.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubnetSpec {
    /// The id functions refer to.
    pub id: u32,
    /// Prefix length, 16 to 28 as AWS allows; usable addresses are `2^(32 - prefix) - 5`.
    pub prefix_len: u8,
}

impl SubnetSpec {
    /// Usable addresses after AWS's five reserved ones (a /24 has 251, a /28 has 11).
    pub fn usable(&self) -> u64 {
        (1u64 << (32 - u32::from(self.prefix_len).min(32))).saturating_sub(AWS_RESERVED_ADDRESSES)
    }
}

/// The per-environment design's parameters (Lambda before 2019).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PerEnvParams {
    /// Time to create and attach an ENI, on the cold-start path. Default log-normal, median
    /// 8 s, p99 15 s: **estimate**, fitted to the published "cold starts of 3 to 15 s" and the
    /// public 12,011 ms to 5,581 ms before/after measurement (about 6.4 s of ENI work).
    pub eni_create: Dist,
    /// Memory an ENI serves, MB: an ENI is shared by up to `floor(worker_mb / memory_mb)`
    /// environments of one function. 3,072 is the published "memory GB / 3 GB" of the sizing
    /// formula.
    pub worker_mb: u32,
}

impl Default for PerEnvParams {
    fn default() -> Self {
        PerEnvParams { eni_create: Dist::LogNormal { median_s: 8.0, p99_s: 15.0 }, worker_mb: 3072 }
    }
}

/// The shared design's parameters (Lambda since 2019).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SharedParams {
    /// Time to set up a shared ENI at function create/update (and to restore an Inactive
    /// function). Default 90 s: the published 2019 figure, an **estimate** today ("several
    /// minutes").
    pub setup_s: f64,
    /// Network cost of a cold start: one flow-table entry. Default 50 µs: **estimate**
    /// (published only as "microseconds").
    pub flow_entry_s: f64,
    /// Connections each running invocation holds. Default 1: **estimate** (workload-specific).
    pub connections_per_env: u32,
    /// Connections one shared ENI carries before another address is needed. Default 65,000:
    /// published.
    pub connections_per_eni: u32,
    /// Without invocations for this long a function goes `Inactive`; when every function of a
    /// (subnet, SG set) is inactive its ENI is reclaimed. Default 14 days: **estimate** of the
    /// published "consecutive weeks".
    pub idle_reclaim_s: f64,
}

impl Default for SharedParams {
    fn default() -> Self {
        SharedParams {
            setup_s: 90.0,
            flow_entry_s: 50e-6,
            connections_per_env: 1,
            connections_per_eni: 65_000,
            idle_reclaim_s: 14.0 * 86_400.0,
        }
    }
}

/// The whole workload and both designs' parameters.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Scenario {
    /// The functions. Default: 10 functions over 3 (subnet, SG set) combinations:
    /// (0, 0), (1, 0), (0, 1) for functions `i % 3` = 0, 1, 2; memory cycling 1,024, 512,
    /// 1,536, 1,024, 3,072 MB (all dividing 3 GB, so the sizing formula is exact).
    pub functions: Vec<FunctionSpec>,
    /// The subnets. Default: two /24 (251 usable addresses each).
    pub subnets: Vec<SubnetSpec>,
    /// ENIs per VPC. Default 250: published default quota.
    pub eni_quota: u32,
    /// The arrival pattern. Default: burst to 3,000 concurrent over 60 s.
    pub arrival: Arrival,
    /// Invocation duration (function code). Default exponential, mean 1 s: estimate.
    pub duration: Dist,
    /// Stop issuing invocations after this many (failed ones count). Default 100,000.
    pub invocations: u64,
    /// Stop the simulation at this time, if set. Default: none (the count ends the run).
    pub horizon_s: Option<f64>,
    /// Width of a time-series bucket; default: the run's length / 200, rounded to 1, 2 or 5
    /// times a power of ten.
    pub bucket_s: Option<f64>,
    /// An idle execution environment is reclaimed after this long. Default 600 s: estimate.
    pub env_idle_s: f64,
    /// A burst caller whose invocation failed tries again after this long. Default 1 s.
    pub retry_backoff_s: f64,
    /// The per-environment design's parameters.
    pub per_env: PerEnvParams,
    /// The shared design's parameters.
    pub shared: SharedParams,
}

impl Default for Scenario {
    fn default() -> Self {
        const COMBOS: [(u32, u32); 3] = [(0, 0), (1, 0), (0, 1)];
        const MEMORY: [u32; 5] = [1024, 512, 1536, 1024, 3072];
        let functions = (0..10)
            .map(|i| {
                let (subnet, sg_set) = COMBOS[i % COMBOS.len()];
                FunctionSpec { memory_mb: MEMORY[i % MEMORY.len()], subnet, sg_set, weight: 1.0 }
            })
            .collect();
        Scenario {
            functions,
            subnets: vec![SubnetSpec { id: 0, prefix_len: 24 }, SubnetSpec { id: 1, prefix_len: 24 }],
            eni_quota: 250,
            arrival: Arrival::Burst { target_concurrency: 3000, ramp_s: 60.0 },
            duration: Dist::Exponential { mean_s: 1.0 },
            invocations: 100_000,
            horizon_s: None,
            bucket_s: None,
            env_idle_s: 600.0,
            retry_backoff_s: 1.0,
            per_env: PerEnvParams::default(),
            shared: SharedParams::default(),
        }
    }
}

impl Scenario {
    /// Checks every parameter; the error names the first bad one.
    pub fn validate(&self) -> Result<(), StudyError> {
        if self.functions.is_empty() {
            return Err(invalid("functions", "at least one function is needed"));
        }
        if self.subnets.is_empty() {
            return Err(invalid("subnets", "at least one subnet is needed"));
        }
        for (i, s) in self.subnets.iter().enumerate() {
            if !(16..=28).contains(&s.prefix_len) {
                return Err(invalid(
                    &format!("subnets[{i}].prefix_len"),
                    format!("must be 16 to 28 (AWS subnet sizes), got {}", s.prefix_len),
                ));
            }
            if self.subnets[..i].iter().any(|o| o.id == s.id) {
                return Err(invalid(&format!("subnets[{i}].id"), format!("duplicate subnet id {}", s.id)));
            }
        }
        let mut total_weight = 0.0;
        for (i, f) in self.functions.iter().enumerate() {
            if !(128..=10_240).contains(&f.memory_mb) {
                return Err(invalid(
                    &format!("functions[{i}].memory_mb"),
                    format!("must be 128 to 10240 MB, got {}", f.memory_mb),
                ));
            }
            if !self.subnets.iter().any(|s| s.id == f.subnet) {
                return Err(invalid(&format!("functions[{i}].subnet"), format!("no subnet with id {}", f.subnet)));
            }
            check_pos(&format!("functions[{i}].weight"), f.weight)?;
            total_weight += f.weight;
        }
        if !total_weight.is_finite() {
            return Err(invalid("functions", "weights sum to infinity"));
        }
        match self.arrival {
            Arrival::Burst { target_concurrency, ramp_s } => {
                if target_concurrency == 0 {
                    return Err(invalid("arrival.target_concurrency", "must be > 0"));
                }
                check_nonneg("arrival.ramp_s", ramp_s)?;
            }
            Arrival::Steady { rate_per_s } => check_pos("arrival.rate_per_s", rate_per_s)?,
            Arrival::Daily { peak_rate_per_s, period_s } => {
                check_pos("arrival.peak_rate_per_s", peak_rate_per_s)?;
                check_pos("arrival.period_s", period_s)?;
            }
        }
        self.duration.validate("duration")?;
        if self.invocations == 0 {
            return Err(invalid("invocations", "must be > 0"));
        }
        if let Some(h) = self.horizon_s {
            check_pos("horizon_s", h)?;
        }
        if let Some(b) = self.bucket_s {
            check_pos("bucket_s", b)?;
        }
        check_nonneg("env_idle_s", self.env_idle_s)?;
        check_nonneg("retry_backoff_s", self.retry_backoff_s)?;
        self.per_env.eni_create.validate("per_env.eni_create")?;
        if self.per_env.worker_mb == 0 {
            return Err(invalid("per_env.worker_mb", "must be > 0"));
        }
        check_nonneg("shared.setup_s", self.shared.setup_s)?;
        check_nonneg("shared.flow_entry_s", self.shared.flow_entry_s)?;
        if self.shared.connections_per_eni == 0 {
            return Err(invalid("shared.connections_per_eni", "must be > 0"));
        }
        check_pos("shared.idle_reclaim_s", self.shared.idle_reclaim_s)?;
        Ok(())
    }

    /// The distinct (subnet, SG set) combinations, in order of first appearance.
    pub fn combinations(&self) -> Vec<(u32, u32)> {
        let mut out: Vec<(u32, u32)> = Vec::new();
        for f in &self.functions {
            if !out.contains(&(f.subnet, f.sg_set)) {
                out.push((f.subnet, f.sg_set));
            }
        }
        out
    }

    /// Mean memory over the functions, weighted by their share of the load, MB.
    pub fn weighted_memory_mb(&self) -> f64 {
        let w: f64 = self.functions.iter().map(|f| f.weight).sum();
        if w > 0.0 {
            self.functions.iter().map(|f| f.weight * f64::from(f.memory_mb)).sum::<f64>() / w
        } else {
            0.0
        }
    }
}
