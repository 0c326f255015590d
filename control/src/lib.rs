//! The hyperplane control plane.
//!
//! The shared-ENI lifecycle, the typed configuration, IPAM and the runtime API
//! arrive with their issue; today this crate re-exports the dataplane so the
//! workspace layout is the one users will build on.

pub use dataplane;
