//! [`CliError`]: everything a `hyperplane` command can fail with, each
//! printed as `hyperplane: <error>` with exit status 1.

use control::api::ApiError;
use control::config::ConfigError;
use control::runtime::RuntimeError;
use netlab::demo::DemoError;
use std::io;
use std::path::PathBuf;

/// Why a command failed.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// A file could not be read.
    #[error("{}: {source}", .path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// Results could not be written into a directory.
    #[error("{}: {source}", .path.display())]
    Write {
        /// The directory.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// A config file is not valid.
    #[error("{}: {source}", .path.display())]
    Config {
        /// The file.
        path: PathBuf,
        /// The field and the reason.
        source: ConfigError,
    },
    /// A JSON file (a study scenario) does not parse.
    #[error("{}: {source}", .path.display())]
    Json {
        /// The file.
        path: PathBuf,
        /// Why.
        source: serde_json::Error,
    },
    /// A command-line value out of range or unknown.
    #[error("{0}")]
    Usage(String),
    /// The gateway did not start.
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    /// The control socket or the metrics endpoint.
    #[error(transparent)]
    Api(#[from] ApiError),
    /// The running gateway answered with an error.
    #[error("{0}")]
    Refused(String),
    /// The demo could not run.
    #[error(transparent)]
    Demo(#[from] DemoError),
    /// The demo ran, but not every environment completed its exchanges.
    #[error("{failed} of {total} environments did not complete their exchanges")]
    DemoIncomplete {
        /// Environments that did not.
        failed: usize,
        /// Environments in all.
        total: usize,
    },
    /// A report could not be encoded as JSON.
    #[error(transparent)]
    Encode(#[from] serde_json::Error),
    /// The load generator.
    #[cfg(feature = "loadgen")]
    #[error(transparent)]
    Load(#[from] loadgen::LoadError),
    /// The simulation.
    #[cfg(feature = "study")]
    #[error(transparent)]
    Study(#[from] study::StudyError),
    /// `study --real`: the lab could not be built.
    #[cfg(feature = "study")]
    #[error(transparent)]
    Lab(#[from] netlab::lab::LabBuildError),
}

impl CliError {
    /// A read error of `path`.
    pub fn read(path: &std::path::Path) -> impl FnOnce(io::Error) -> CliError + '_ {
        move |source| CliError::Read { path: path.to_path_buf(), source }
    }

    /// A write error into `path`.
    pub fn write(path: &std::path::Path) -> impl FnOnce(io::Error) -> CliError + '_ {
        move |source| CliError::Write { path: path.to_path_buf(), source }
    }

    /// A config error of `path`.
    pub fn config(path: &std::path::Path) -> impl FnOnce(ConfigError) -> CliError + '_ {
        move |source| CliError::Config { path: path.to_path_buf(), source }
    }
}
