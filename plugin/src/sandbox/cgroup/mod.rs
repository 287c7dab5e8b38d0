//! One interface over cgroup v2, v1 and hybrid hosts (and over none, where cgroups can't be
//! used), written against the cgroupfs files directly.
//!
//! Layout: a base cgroup per host (default `<own cgroup>/executor-plugins` in each hierarchy) and a
//! leaf per execution, `<base>/<name>`. On pure v2 the base has the controllers enabled in its
//! `cgroup.subtree_control` and never holds processes; processes found in the cgroup that must
//! delegate are moved to `<base>/supervisor`. A process already in such a supervisor leaf (the
//! plugin after relocation, or a monitor it spawned) resolves the same base.
//!
//! The files: this one holds the configuration, limits and errors; `manager` detects the host
//! and makes job cgroups; `job` is one job's cgroup (join, stats, kill, remove, its record);
//! `v1`/`v2` write each hierarchy's files, `detect` reads the host, `fsio` does the I/O.

mod detect;
mod fsio;
mod job;
mod manager;
mod v1;
mod v2;

use std::io;
use std::path::PathBuf;
use std::time::Duration;

pub use detect::{parse_proc_cgroup, FsKind, FsProbe, HostView, Membership};
pub use job::{CgroupRecord, JobCgroup, JoinFds, RecordedDir};
pub use manager::{AheadDirs, CgroupManager};

/// Name of the base cgroup created under this process's own cgroup.
pub const BASE_NAME: &str = "executor-plugins";
/// Leaf under the base that receives processes moved out of a cgroup that must delegate.
pub const SUPERVISOR_LEAF: &str = "supervisor";
/// CFS period: quota = cores x this.
pub const CPU_PERIOD_US: u64 = 100_000;
/// The kernel refuses quotas under 1 ms.
pub(super) const MIN_CPU_QUOTA_US: u64 = 1_000;
/// The pids cap when a request sets none, against fork bombs.
pub const DEFAULT_PIDS_MAX: u64 = 4096;
/// The memory cap when a request sets none: what Bacalhau gives a job that asks for none, so a
/// job that forgot its `Memory` cannot take the host's memory (and the host's processes with
/// it) yet behaves as it would under Bacalhau's defaults.
pub const DEFAULT_MEMORY: u64 = 1 << 30;

pub(super) const KILL_PATIENCE: Duration = Duration::from_secs(10);
pub(super) const RMDIR_PATIENCE: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("cgroups are not usable on this host: {0}")]
    Unavailable(String),
    #[error("the {limit} limit cannot be enforced on this host: {reason}")]
    Unenforceable { limit: &'static str, reason: String },
    #[error("invalid {limit} limit: {detail}")]
    InvalidLimit { limit: &'static str, detail: String },
    #[error("invalid cgroup name {0:?}: use letters, digits, '.', '_' or '-', not starting with '.', and not \"supervisor\"")]
    InvalidName(String),
    #[error("cgroup configuration: {detail}")]
    Config { detail: String },
    #[error("{op} {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("malformed {}: {detail}", path.display())]
    Parse { path: PathBuf, detail: String },
    #[error("cannot enable controllers in {}: it holds processes this plugin does not own; configure a delegated base cgroup", path.display())]
    InternalProcesses { path: PathBuf },
    #[error("processes {pids:?} survived killing cgroup {name}")]
    KillIncomplete { name: String, pids: Vec<i32> },
    #[error("{first}; cleaning up after it also failed: {cleanup}")]
    Cleanup {
        first: Box<CgroupError>,
        cleanup: Box<CgroupError>,
    },
}

/// Which cgroup arrangement the host has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    V2,
    V1,
    /// v1 controllers for limits plus the v2 tree for tracking and `cgroup.kill`.
    Hybrid,
    None,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::V2 => "v2",
            Mode::V1 => "v1",
            Mode::Hybrid => "hybrid",
            Mode::None => "none",
        }
    }

    pub fn parse(s: &str) -> Option<Mode> {
        [Mode::V2, Mode::V1, Mode::Hybrid, Mode::None]
            .into_iter()
            .find(|m| m.as_str() == s)
    }
}

/// Which limits a job cgroup actually enforces here.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Enforced {
    pub cpu: bool,
    pub memory: bool,
    pub pids: bool,
    /// Swap is capped too (`memory.swap.max` / `memsw`); without it a job may swap past its
    /// memory limit.
    pub swap: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct CgroupConfig {
    /// Base cgroup path as `/proc/self/cgroup` prints paths (e.g.
    /// `/system.slice/host.service` under systemd `Delegate=yes`), applied in every hierarchy.
    /// Default: `<own cgroup>/executor-plugins`.
    pub base: Option<PathBuf>,
    /// `pids.max` when a job sets none; `None` for no cap.
    pub default_pids_max: Option<u64>,
}

impl Default for CgroupConfig {
    fn default() -> Self {
        CgroupConfig {
            base: None,
            default_pids_max: Some(DEFAULT_PIDS_MAX),
        }
    }
}

/// What a job asks for.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct CgroupLimits {
    /// Cores (0.5 = half of one CPU's time).
    pub cpu: Option<f64>,
    /// Bytes.
    pub memory: Option<u64>,
    pub pids: Option<u64>,
}

/// Limits as they will be written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct ResolvedLimits {
    pub cpu_quota_us: Option<u64>,
    pub memory: Option<u64>,
    pub pids: Option<u64>,
}

impl CgroupError {
    /// A directory to make was there already (a leftover of the same name).
    fn is_existing_dir(&self) -> bool {
        matches!(self, CgroupError::Io { op: "mkdir", source, .. }
            if source.kind() == io::ErrorKind::AlreadyExists)
    }
}

/// Which figures [`JobCgroup`] reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reading {
    All,
    /// Not the current memory use or the refused forks.
    Totals,
}

/// Live usage of a job cgroup; `None` where this host does not account it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CgroupStats {
    pub memory_current: Option<u64>,
    pub memory_peak: Option<u64>,
    pub cpu_usage_usec: Option<u64>,
    pub pids_current: Option<u64>,
    /// Forks refused because of `pids.max` (`pids.events` `max`).
    pub fork_failures: Option<u64>,
    pub nr_periods: Option<u64>,
    pub nr_throttled: Option<u64>,
    pub throttled_usec: Option<u64>,
}

/// Whether `name` can name a job cgroup.
pub fn is_valid_name(name: &str) -> bool {
    validate_name(name).is_ok()
}

pub(super) fn validate_name(name: &str) -> Result<(), CgroupError> {
    let ok = !name.is_empty()
        && name.len() <= 200
        && !name.starts_with('.')
        && name != SUPERVISOR_LEAF
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(CgroupError::InvalidName(name.to_owned()))
    }
}
