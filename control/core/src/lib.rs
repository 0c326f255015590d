//! The hyperplane control plane and the gateway's runtime.
//!
//! - [`config`]: the one typed, validated TOML schema (`hyperplane run`,
//!   `hyperplane apply`);
//! - [`ipam`]: addresses from subnets, skipping the ones AWS reserves;
//! - [`plan`]: a config compiled into shared ENIs (one per subnet and
//!   security-group set) and dataplane bindings;
//! - [`gateway`]: devices opened, engines sharded over workers, started;
//! - [`controller`] and [`runtime`]: the sans-IO control plane and the thread
//!   that drives it; [`api`]: the control socket; [`metrics`]: Prometheus;
//! - [`signals`]: SIGINT/SIGTERM as a flag for clean shutdown; [`threads`]:
//!   threads stopped by a shared flag.

pub mod api;
pub mod config;
pub mod controller;
pub mod deadline;
pub mod gateway;
pub mod ipam;
pub mod metrics;
pub mod plan;
pub mod runtime;
pub mod signals;
pub mod threads;

pub use dataplane;
