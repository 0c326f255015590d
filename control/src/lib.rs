//! The hyperplane control plane and the gateway's runtime.
//!
//! - [`config`]: the one typed, validated TOML schema (`hyperplane run`,
//!   `hyperplane apply`);
//! - [`ipam`]: addresses from subnets, skipping the ones AWS reserves;
//! - [`plan`]: a config compiled into shared ENIs (one per subnet and
//!   security-group set) and dataplane bindings;
//! - [`gateway`]: devices opened, engines sharded over workers, started;
//! - [`netlab`] and [`lab`]: network-namespace topologies for the demo, the
//!   end-to-end tests and the benchmarks; [`demo`]: `hyperplane demo`;
//! - [`signals`]: SIGINT/SIGTERM as a flag for clean shutdown.

pub mod api;
pub mod config;
pub mod controller;
pub mod demo;
pub mod gateway;
pub mod ipam;
pub mod lab;
pub mod loadgen;
pub mod metrics;
pub mod netlab;
pub mod plan;
pub mod runtime;
pub mod signals;
pub mod study;

pub use dataplane;
