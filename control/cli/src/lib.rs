//! The `hyperplane` command's library: what the binary prints and the
//! commands that need more than the control plane.
//!
//! - [`CliError`]: what a command fails with;
//! - [`tables`]: the text of `status`, `sessions` and `stats`;
//! - [`study_real`] (feature `study`): `hyperplane study --real`, both designs
//!   measured through the real gateway in a namespace lab.

mod error;
#[cfg(feature = "study")]
pub mod study_real;
pub mod tables;

pub use error::CliError;
