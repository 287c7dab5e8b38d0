//! One interface over cgroup v2, v1 and hybrid hosts (and over none, where cgroups can't be
//! used), written against the cgroupfs files directly.
//!
//! Layout: a base cgroup per host (default `<own cgroup>/executor-plugins` in each hierarchy) and a
//! leaf per execution, `<base>/<name>`. On pure v2 the base has the controllers enabled in its
//! `cgroup.subtree_control` and never holds processes; processes found in the cgroup that must
//! delegate are moved to `<base>/supervisor`. A process already in such a supervisor leaf (the
//! plugin after relocation, or a monitor it spawned) resolves the same base.

mod detect;
mod fsio;
mod v1;
mod v2;

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

pub use detect::{parse_proc_cgroup, FsKind, FsProbe, HostView, Membership};

/// Name of the base cgroup created under this process's own cgroup.
pub const BASE_NAME: &str = "executor-plugins";
/// Leaf under the base that receives processes moved out of a cgroup that must delegate.
pub const SUPERVISOR_LEAF: &str = "supervisor";
/// CFS period: quota = cores x this.
pub const CPU_PERIOD_US: u64 = 100_000;
/// The kernel refuses quotas under 1 ms.
const MIN_CPU_QUOTA_US: u64 = 1_000;
/// The pids cap when a request sets none, against fork bombs.
pub const DEFAULT_PIDS_MAX: u64 = 4096;
/// The memory cap when a request sets none: what Bacalhau gives a job that asks for none, so a
/// job that forgot its `Memory` cannot take the host's memory (and the host's processes with
/// it) yet behaves as it would under Bacalhau's defaults.
pub const DEFAULT_MEMORY: u64 = 1 << 30;

const KILL_PATIENCE: Duration = Duration::from_secs(10);
const RMDIR_PATIENCE: Duration = Duration::from_secs(2);

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

#[derive(Debug, Clone)]
enum Backend {
    None(String),
    V2(v2::Base),
    Legacy {
        v1: v1::Bases,
        /// The base in the controller-less v2 tree of a hybrid host.
        unified: Option<PathBuf>,
        /// The base in the v1 `devices` hierarchy, where this process can write one.
        devices: Option<v1::Base>,
    },
}

/// Detects the host's cgroups once and creates job cgroups.
#[derive(Debug, Clone)]
pub struct CgroupManager {
    backend: Backend,
    default_pids_max: Option<u64>,
    /// A hybrid host's v2 tree has `cgroup.kill` (looked up once, see [`Self::joins`]).
    unified_kill: bool,
}

/// The last successful detection in this process, and its config. A monitor is a fork of the
/// fork server, which detects once ([`CgroupManager::warm_cache`]): every monitor then starts
/// with the host's layout known instead of probing a dozen paths again.
static DETECTED: crate::memo::LastFor<CgroupConfig, CgroupManager> = crate::memo::LastFor::new();

/// The default base for a process in cgroup `own`.
fn default_base(own: &Path) -> PathBuf {
    let in_supervisor = own.file_name().is_some_and(|n| n == SUPERVISOR_LEAF)
        && own
            .parent()
            .and_then(Path::file_name)
            .is_some_and(|n| n == BASE_NAME);
    match (in_supervisor, own.parent()) {
        (true, Some(parent)) => parent.to_path_buf(),
        _ => own.join(BASE_NAME),
    }
}

impl CgroupManager {
    /// Detects this host's cgroups and prepares the base. No cgroupfs, or no permission to
    /// write it, gives a manager in [`Mode::None`]; other failures are errors.
    pub fn detect(config: &CgroupConfig) -> Result<CgroupManager, CgroupError> {
        let host = HostView::current()
            .map_err(|e| fsio::io_err("read", Path::new("/proc/self/cgroup"), e))?;
        Self::detect_in(&host, config)
    }

    /// As [`detect`](Self::detect), over an injected view of the host.
    pub fn detect_in(host: &HostView, config: &CgroupConfig) -> Result<CgroupManager, CgroupError> {
        if let Some(base) = &config.base {
            let plain = base.is_absolute()
                && base.components().all(|c| {
                    matches!(
                        c,
                        std::path::Component::RootDir | std::path::Component::Normal(_)
                    )
                });
            if !plain {
                return Err(CgroupError::Config {
                    detail: format!(
                        "base {} must be an absolute cgroup path without '.' or '..'",
                        base.display()
                    ),
                });
            }
        }
        let base_of = |own: &Path| match &config.base {
            Some(b) => b.clone(),
            None => default_base(own),
        };
        let backend = match detect::detect_layout(host) {
            detect::Layout::None(reason) => Ok(Backend::None(reason)),
            detect::Layout::Unified { mount, own } => {
                let own_dir = fsio::under(&mount, &own);
                let base_dir = fsio::under(&mount, &base_of(&own));
                v2::prepare(&mount, &own_dir, &base_dir).map(Backend::V2)
            }
            detect::Layout::Legacy { v1, unified } => v1::prepare(&v1, &base_of).and_then(|v1| {
                let unified = match unified {
                    Some((mount, own)) => {
                        let dir = fsio::under(&mount, &base_of(&own));
                        fsio::mkdir_all(&dir)?;
                        Some(dir)
                    }
                    None => None,
                };
                // Optional: a host whose devices hierarchy this process cannot write still gets
                // every limit; the capabilities say GPUs are then not confined by it.
                let devices = detect::devices_mount(host).and_then(|m| {
                    let dir = fsio::under(&m.mount, &base_of(&m.own));
                    let usable = fsio::mkdir_all(&dir).is_ok()
                        && nix::unistd::access(&dir, nix::unistd::AccessFlags::W_OK).is_ok();
                    usable.then_some(v1::Base { mount: m, dir })
                });
                Ok(Backend::Legacy {
                    v1,
                    unified,
                    devices,
                })
            }),
        };
        let backend = backend.and_then(|b| {
            let mgr = CgroupManager {
                backend: b,
                default_pids_max: None,
                unified_kill: false,
            };
            // A base someone else made (root, earlier) that this process can't write into is no
            // better than no cgroups at all.
            for dir in mgr.base_dirs() {
                nix::unistd::access(&dir, nix::unistd::AccessFlags::W_OK)
                    .map_err(|e| fsio::io_err("access", &dir, io::Error::from(e)))?;
            }
            Ok(mgr.backend)
        });
        let backend = match backend {
            Ok(b) => b,
            Err(e) if fsio::is_permission(&e) => Backend::None(e.to_string()),
            Err(e) => return Err(e),
        };
        let unified_kill = matches!(&backend, Backend::Legacy { unified: Some(u), .. }
            if u.join("cgroup.kill").exists());
        Ok(CgroupManager {
            backend,
            default_pids_max: config.default_pids_max,
            unified_kill,
        })
    }

    /// [`detect`](Self::detect), reusing this process's last successful detection for the same
    /// config. The flag says whether the manager came from that cache: a job cgroup that
    /// cannot be made with a cached manager should be tried again with a fresh one
    /// ([`forget_cached`](Self::forget_cached)), in case the host changed since.
    pub fn detect_cached(config: &CgroupConfig) -> Result<(CgroupManager, bool), CgroupError> {
        if let Some(m) = DETECTED.get(config) {
            return Ok((m, true));
        }
        let m = Self::detect(config)?;
        // "No usable cgroups" is not kept: a base delegated later must still be found.
        if m.mode() != Mode::None {
            DETECTED.put(config.clone(), m.clone());
        }
        Ok((m, false))
    }

    /// Detect now, for the processes this one forks later.
    pub fn warm_cache(config: &CgroupConfig) {
        let _ = Self::detect_cached(config);
    }

    /// Drop the cached detection.
    pub fn forget_cached() {
        DETECTED.clear();
    }

    pub fn mode(&self) -> Mode {
        match &self.backend {
            Backend::None(_) => Mode::None,
            Backend::V2(_) => Mode::V2,
            Backend::Legacy { unified: None, .. } => Mode::V1,
            Backend::Legacy {
                unified: Some(_), ..
            } => Mode::Hybrid,
        }
    }

    /// Why cgroups can't be used, in [`Mode::None`].
    pub fn unavailable_reason(&self) -> Option<&str> {
        match &self.backend {
            Backend::None(reason) => Some(reason),
            _ => None,
        }
    }

    pub fn enforces(&self) -> Enforced {
        match &self.backend {
            Backend::None(_) => Enforced::default(),
            Backend::V2(b) => Enforced {
                cpu: b.has("cpu"),
                memory: b.has("memory"),
                pids: b.has("pids"),
                swap: b.swap,
            },
            Backend::Legacy { v1, .. } => Enforced {
                cpu: v1.has("cpu"),
                memory: v1.has("memory"),
                pids: v1.has("pids"),
                swap: v1.swap,
            },
        }
    }

    /// The base directories (one per hierarchy), for diagnostics.
    pub fn base_dirs(&self) -> Vec<PathBuf> {
        match &self.backend {
            Backend::None(_) => Vec::new(),
            Backend::V2(b) => vec![b.dir.clone()],
            Backend::Legacy { v1, unified, .. } => v1
                .list
                .iter()
                .map(|b| b.dir.clone())
                .chain(unified.iter().cloned())
                .collect(),
        }
    }

    fn resolve(&self, limits: &CgroupLimits) -> Result<ResolvedLimits, CgroupError> {
        let enforced = self.enforces();
        let unenforceable = |limit| CgroupError::Unenforceable {
            limit,
            reason: format!("no {limit} controller in {} mode", self.mode().as_str()),
        };
        let mut out = ResolvedLimits::default();
        if let Some(cores) = limits.cpu {
            if !(cores.is_finite() && cores > 0.0) {
                return Err(CgroupError::InvalidLimit {
                    limit: "cpu",
                    detail: format!("{cores} cores"),
                });
            }
            if !enforced.cpu {
                return Err(unenforceable("cpu"));
            }
            let quota = (cores * CPU_PERIOD_US as f64).round();
            // Saturating float-to-int conversion; a quota past u64 is "unlimited" in practice.
            out.cpu_quota_us = Some((quota as u64).max(MIN_CPU_QUOTA_US));
        }
        if let Some(bytes) = limits.memory {
            if bytes == 0 {
                return Err(CgroupError::InvalidLimit {
                    limit: "memory",
                    detail: "0 bytes".to_owned(),
                });
            }
            if !enforced.memory {
                return Err(unenforceable("memory"));
            }
            out.memory = Some(bytes);
        }
        match limits.pids {
            Some(0) => {
                return Err(CgroupError::InvalidLimit {
                    limit: "pids",
                    detail: "0 processes".to_owned(),
                })
            }
            Some(_) if !enforced.pids => return Err(unenforceable("pids")),
            Some(n) => out.pids = Some(n),
            None if enforced.pids => out.pids = self.default_pids_max,
            None => {}
        }
        Ok(out)
    }

    /// Creates the job's cgroup `<base>/<name>` in every hierarchy and writes its limits. A limit
    /// this host can't enforce is an error, never silently dropped.
    pub fn create(&self, name: &str, limits: &CgroupLimits) -> Result<JobCgroup, CgroupError> {
        self.create_with(name, limits, None)
    }

    /// As [`create`](Self::create), taking the directories `ahead` has in a hierarchy (renamed
    /// to the job's name) instead of making new ones.
    fn create_with(
        &self,
        name: &str,
        limits: &CgroupLimits,
        mut ahead: Option<&mut AheadDirs>,
    ) -> Result<JobCgroup, CgroupError> {
        if let Backend::None(reason) = &self.backend {
            return Err(CgroupError::Unavailable(reason.clone()));
        }
        validate_name(name)?;
        let resolved = self.resolve(limits)?;
        let mut job = JobCgroup {
            name: name.to_owned(),
            mode: self.mode(),
            dirs: Vec::new(),
        };
        let planned: Vec<LeafDir> = self
            .leaves(name)
            .into_iter()
            .filter(|leaf| self.joins(leaf, &resolved))
            .collect();
        let result = (|| {
            for leaf in planned {
                let made = ahead.as_deref_mut().and_then(|a| a.take_for(&leaf.dir));
                match made {
                    Some(made) => match fs::rename(&made, &leaf.dir) {
                        Ok(()) => {}
                        // A directory of the name exists: as when mkdir finds one.
                        Err(e)
                            if e.kind() == io::ErrorKind::AlreadyExists
                                || e.raw_os_error() == Some(libc::ENOTEMPTY) =>
                        {
                            let _ = fs::remove_dir(&made);
                            let exists = io::Error::from_raw_os_error(libc::EEXIST);
                            return Err(fsio::io_err("mkdir", &leaf.dir, exists));
                        }
                        Err(_) => {
                            let _ = fs::remove_dir(&made);
                            fsio::mkdir_new(&leaf.dir)?;
                        }
                    },
                    None => fsio::mkdir_new(&leaf.dir)?,
                }
                job.dirs.push(leaf);
            }
            match &self.backend {
                Backend::V2(b) => v2::write_limits(&job.dirs[0].dir, b, &resolved),
                Backend::Legacy { v1, .. } => {
                    v1::write_limits(|c| job.v1_dir(c).map(Path::to_path_buf), v1.swap, &resolved)
                }
                Backend::None(_) => Ok(()),
            }
        })();
        match result {
            Ok(()) => Ok(job),
            Err(first) => match job.remove() {
                Ok(()) => Err(first),
                Err(cleanup) => Err(CgroupError::Cleanup {
                    first: Box::new(first),
                    cleanup: Box::new(cleanup),
                }),
            },
        }
    }

    /// As [`create`](Self::create), but a leftover cgroup of the same name (an earlier attempt
    /// of the same execution whose monitor died) is killed and removed first.
    ///
    /// Leftovers are rare, so they are looked for only when a directory of the name already
    /// exists: every process of a job is in the directory it makes in every hierarchy it joins
    /// (the v2 one always, where there is one), so a leftover that still holds a process makes
    /// one of the new directories collide. Looking first would cost a lookup in every
    /// hierarchy on every start.
    pub fn create_replacing(
        &self,
        name: &str,
        limits: &CgroupLimits,
    ) -> Result<JobCgroup, CgroupError> {
        self.create_replacing_with(name, limits, None)
    }

    /// As [`create_replacing`](Self::create_replacing), with directories made ahead.
    pub fn create_replacing_with(
        &self,
        name: &str,
        limits: &CgroupLimits,
        ahead: Option<&mut AheadDirs>,
    ) -> Result<JobCgroup, CgroupError> {
        match self.create_with(name, limits, ahead) {
            Err(e) if e.is_existing_dir() => {
                if let Some(old) = self.open_existing(name)? {
                    old.kill_all()?;
                    old.remove()?;
                }
                self.create(name, limits)
            }
            created => created,
        }
    }

    /// Make, before any job asks, the directories every job gets in the v1 hierarchies
    /// (renaming one is a fifth of making it: a v1 memory cgroup costs ~0.05 ms to make). v2
    /// directories cannot be renamed: none are made ahead there. `owner` names them
    /// ([`ahead_name`]); what is not taken is removed when the [`AheadDirs`] is dropped.
    pub fn make_ahead(&self, owner: i32) -> AheadDirs {
        let name = ahead_name(owner);
        let mut dirs = Vec::new();
        for leaf in self.leaves(&name) {
            if matches!(leaf.kind, DirKind::V1(_))
                && self.joins(&leaf, &ResolvedLimits::default())
                && fsio::mkdir_new(&leaf.dir).is_ok()
            {
                dirs.push(leaf.dir);
            }
        }
        AheadDirs { dirs }
    }

    /// Remove what [`make_ahead`](Self::make_ahead) made for `owner` and left (it died before
    /// its job took them). Without processes in them, nothing can fail but a missing one.
    pub fn remove_ahead(&self, owner: i32) {
        for leaf in self.leaves(&ahead_name(owner)) {
            if matches!(leaf.kind, DirKind::V1(_)) {
                let _ = fs::remove_dir(&leaf.dir);
            }
        }
    }

    /// Remove every directory made ahead that this host's bases still hold (of processes gone
    /// with a plugin that was killed). One a live process still means to take is only made
    /// again by a job's start: it finds it gone and makes its own.
    pub fn sweep_ahead(&self) {
        for base in self.v1_bases() {
            let Ok(entries) = fs::read_dir(&base) else {
                continue;
            };
            for e in entries.flatten() {
                if e.file_name().to_string_lossy().starts_with(AHEAD_PREFIX) {
                    let _ = fs::remove_dir(e.path());
                }
            }
        }
    }

    fn v1_bases(&self) -> Vec<PathBuf> {
        match &self.backend {
            Backend::Legacy { v1, .. } => v1.list.iter().map(|b| b.dir.clone()).collect(),
            _ => Vec::new(),
        }
    }

    /// Whether a job gets a directory in `leaf`'s hierarchy. All of them, except on a hybrid
    /// host whose v2 tree has `cgroup.kill`: there the v2 tree kills the job and accounts its
    /// CPU (`cpu.stat`), so a v1 hierarchy holding only `freezer` or `cpuacct` adds nothing, and
    /// `cpu` only matters for a CPU limit. Each hierarchy joined is one more directory made and
    /// removed and one more v1 migration (which can wait for an RCU grace period) per job.
    fn joins(&self, leaf: &LeafDir, limits: &ResolvedLimits) -> bool {
        if !matches!(
            &self.backend,
            Backend::Legacy {
                unified: Some(_),
                ..
            }
        ) || !self.unified_kill
        {
            return true;
        }
        match &leaf.kind {
            DirKind::V2 => true,
            DirKind::V1(controllers) => controllers.iter().any(|c| match c.as_str() {
                "freezer" | "cpuacct" => false,
                "cpu" => limits.cpu_quota_us.is_some(),
                _ => true,
            }),
        }
    }

    fn leaves(&self, name: &str) -> Vec<LeafDir> {
        match &self.backend {
            Backend::None(_) => Vec::new(),
            Backend::V2(b) => vec![LeafDir {
                dir: b.dir.join(name),
                kind: DirKind::V2,
            }],
            Backend::Legacy { v1, unified, .. } => v1
                .list
                .iter()
                .map(|b| LeafDir {
                    dir: b.dir.join(name),
                    kind: DirKind::V1(b.mount.controllers.clone()),
                })
                .chain(unified.iter().map(|u| LeafDir {
                    dir: u.join(name),
                    kind: DirKind::V2,
                }))
                .collect(),
        }
    }

    /// Whether jobs can get a v1 `devices` cgroup ([`restrict_devices`](Self::restrict_devices)).
    pub fn has_devices(&self) -> bool {
        matches!(
            &self.backend,
            Backend::Legacy {
                devices: Some(_),
                ..
            }
        )
    }

    fn devices_leaf(&self, name: &str) -> Option<LeafDir> {
        match &self.backend {
            Backend::Legacy {
                devices: Some(b), ..
            } => Some(LeafDir {
                dir: b.dir.join(name),
                kind: DirKind::V1(b.mount.controllers.clone()),
            }),
            _ => None,
        }
    }

    /// Adds a v1 `devices` cgroup to `job` that denies every device but those `allow` lists
    /// (`devices.allow` entries such as `c 195:0 rwm`). Call before the job joins: the rules
    /// hold from its first instruction. On failure the devices leaf is removed again.
    pub fn restrict_devices(
        &self,
        job: &mut JobCgroup,
        allow: &[String],
    ) -> Result<(), CgroupError> {
        let Some(leaf) = self.devices_leaf(&job.name) else {
            return Err(CgroupError::Unavailable(
                "no writable v1 devices hierarchy".to_owned(),
            ));
        };
        match fsio::mkdir_new(&leaf.dir) {
            // Left by an earlier attempt of the execution whose removal was cut short: its
            // other directories are gone (the job's own would have collided), so this one holds
            // no process and goes.
            Err(e) if e.is_existing_dir() => {
                fsio::rmdir_retry(&leaf.dir, RMDIR_PATIENCE)?;
                fsio::mkdir_new(&leaf.dir)?;
            }
            made => made?,
        }
        let written = v1::write_device_rules(&leaf.dir, allow);
        if let Err(first) = written {
            return match fsio::rmdir_retry(&leaf.dir, RMDIR_PATIENCE) {
                Ok(()) => Err(first),
                Err(cleanup) => Err(CgroupError::Cleanup {
                    first: Box::new(first),
                    cleanup: Box::new(cleanup),
                }),
            };
        }
        job.dirs.push(leaf);
        Ok(())
    }

    /// The job cgroup `name` left by an earlier process (a monitor that died, a plugin that
    /// restarted), so it can be killed and removed; `None` when no directory of it exists.
    pub fn open_existing(&self, name: &str) -> Result<Option<JobCgroup>, CgroupError> {
        if let Backend::None(reason) = &self.backend {
            return Err(CgroupError::Unavailable(reason.clone()));
        }
        validate_name(name)?;
        let dirs: Vec<LeafDir> = self
            .leaves(name)
            .into_iter()
            .chain(self.devices_leaf(name))
            .filter(|d| d.dir.is_dir())
            .collect();
        Ok((!dirs.is_empty()).then(|| JobCgroup {
            name: name.to_owned(),
            mode: self.mode(),
            dirs,
        }))
    }
}

/// Directories made ahead start with a dot, which no job cgroup name may.
const AHEAD_PREFIX: &str = ".ahead-";

fn ahead_name(owner: i32) -> String {
    format!("{AHEAD_PREFIX}{owner}")
}

/// Job cgroup directories made ahead ([`CgroupManager::make_ahead`]), one per hierarchy.
#[derive(Debug, Default)]
pub struct AheadDirs {
    dirs: Vec<PathBuf>,
}

impl AheadDirs {
    /// The one made in the hierarchy of `leaf` (the same parent), no longer ours to remove.
    fn take_for(&mut self, leaf: &Path) -> Option<PathBuf> {
        let i = self.dirs.iter().position(|d| d.parent() == leaf.parent())?;
        Some(self.dirs.swap_remove(i))
    }
}

impl Drop for AheadDirs {
    fn drop(&mut self) {
        for d in &self.dirs {
            let _ = fs::remove_dir(d);
        }
    }
}

/// Whether `name` can name a job cgroup.
pub fn is_valid_name(name: &str) -> bool {
    validate_name(name).is_ok()
}

fn validate_name(name: &str) -> Result<(), CgroupError> {
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

#[derive(Debug, Clone)]
enum DirKind {
    /// A v2 leaf (pure v2, or the tracking tree of a hybrid host).
    V2,
    /// A v1 leaf in the hierarchy carrying these controllers.
    V1(Vec<String>),
}

#[derive(Debug, Clone)]
struct LeafDir {
    dir: PathBuf,
    kind: DirKind,
}

/// A job cgroup as written down in the execution's state, so another process (the plugin) can
/// read its stats or kill and remove it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CgroupRecord {
    pub name: String,
    pub mode: String,
    pub dirs: Vec<RecordedDir>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RecordedDir {
    pub path: PathBuf,
    /// The v1 controllers of this hierarchy; `None` for a v2 directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub v1_controllers: Option<Vec<String>>,
}

/// One execution's cgroup (a directory in each hierarchy). Not removed on drop: the owner kills
/// and removes it explicitly, after reading [`oom_killed`](Self::oom_killed).
#[derive(Debug)]
pub struct JobCgroup {
    name: String,
    mode: Mode,
    dirs: Vec<LeafDir>,
}

/// Open `cgroup.procs` descriptors of a job cgroup, to join it between `fork` and `exec`.
#[derive(Debug)]
pub struct JoinFds {
    fds: Vec<OwnedFd>,
}

impl JoinFds {
    /// Moves the calling process into the job cgroup in every hierarchy. Async-signal-safe: one
    /// `write(2)` of "0" per descriptor, no allocation; meant for `CommandExt::pre_exec`.
    pub fn join_self(&self) -> io::Result<()> {
        for fd in &self.fds {
            // SAFETY: the descriptor is open for the lifetime of `self`; the buffer is static.
            let n = unsafe { libc::write(fd.as_raw_fd(), b"0".as_ptr().cast(), 1) };
            if n < 0 {
                return Err(io::Error::last_os_error());
            }
        }
        Ok(())
    }
}

impl JobCgroup {
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn record(&self) -> CgroupRecord {
        CgroupRecord {
            name: self.name.clone(),
            mode: self.mode.as_str().to_owned(),
            dirs: self
                .dirs
                .iter()
                .map(|d| RecordedDir {
                    path: d.dir.clone(),
                    v1_controllers: match &d.kind {
                        DirKind::V2 => None,
                        DirKind::V1(c) => Some(c.clone()),
                    },
                })
                .collect(),
        }
    }

    /// The cgroup a record names. Only directories that are absolute, end in the job's name and
    /// still exist are taken: a record is never a way to reach some other cgroup.
    pub fn from_record(record: &CgroupRecord) -> Result<JobCgroup, CgroupError> {
        validate_name(&record.name)?;
        let mode = Mode::parse(&record.mode).ok_or_else(|| CgroupError::Config {
            detail: format!("unknown cgroup mode {:?} in a job record", record.mode),
        })?;
        let mut dirs = Vec::new();
        for d in &record.dirs {
            let plain = d.path.is_absolute()
                && d.path
                    .file_name()
                    .is_some_and(|n| n == record.name.as_str())
                && d.path.components().all(|c| {
                    matches!(
                        c,
                        std::path::Component::RootDir | std::path::Component::Normal(_)
                    )
                });
            if !plain {
                return Err(CgroupError::Config {
                    detail: format!(
                        "job record names {} for cgroup {}",
                        d.path.display(),
                        record.name
                    ),
                });
            }
            if d.path.is_dir() {
                dirs.push(LeafDir {
                    dir: d.path.clone(),
                    kind: match &d.v1_controllers {
                        None => DirKind::V2,
                        Some(c) => DirKind::V1(c.clone()),
                    },
                });
            }
        }
        Ok(JobCgroup {
            name: record.name.clone(),
            mode,
            dirs,
        })
    }

    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// The job's directories, one per hierarchy.
    pub fn dirs(&self) -> Vec<&Path> {
        self.dirs.iter().map(|d| d.dir.as_path()).collect()
    }

    fn v2_dir(&self) -> Option<&Path> {
        self.dirs
            .iter()
            .find(|d| matches!(d.kind, DirKind::V2))
            .map(|d| d.dir.as_path())
    }

    fn v1_dir(&self, controller: &str) -> Option<&Path> {
        self.dirs
            .iter()
            .find(|d| matches!(&d.kind, DirKind::V1(c) if c.iter().any(|c| c == controller)))
            .map(|d| d.dir.as_path())
    }

    /// Opens the `cgroup.procs` files to write from the child. Call before spawning; the
    /// descriptors are close-on-exec, so the job never inherits them.
    pub fn join_handle(&self) -> Result<JoinFds, CgroupError> {
        let fds = self
            .dirs
            .iter()
            .map(|d| {
                let path = d.dir.join("cgroup.procs");
                OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .map(|f: File| OwnedFd::from(f))
                    .map_err(|e| fsio::io_err("open", &path, e))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(JoinFds { fds })
    }

    /// Every process in the job cgroup, in any hierarchy.
    pub fn pids(&self) -> Result<Vec<i32>, CgroupError> {
        let mut all = Vec::new();
        for d in &self.dirs {
            all.extend(fsio::read_pids(&d.dir.join("cgroup.procs"))?);
        }
        all.sort_unstable();
        all.dedup();
        Ok(all)
    }

    /// Kills every process of the job and returns once none is left. `cgroup.kill` where the
    /// kernel has it (v2 and the v2 tree of a hybrid host, 5.14+); otherwise freeze, SIGKILL
    /// each process, thaw, until the cgroup is empty.
    pub fn kill_all(&self) -> Result<(), CgroupError> {
        let start = Instant::now();
        if let Some(dir) = self.v2_dir() {
            let kill_file = dir.join("cgroup.kill");
            if kill_file.exists() {
                fsio::write_value(&kill_file, "1")?;
                while start.elapsed() < Duration::from_secs(2) {
                    if self.pids()?.is_empty() {
                        return Ok(());
                    }
                    thread::sleep(Duration::from_millis(5));
                }
            }
        }
        loop {
            let pids = self.pids()?;
            if pids.is_empty() {
                return Ok(());
            }
            if start.elapsed() > KILL_PATIENCE {
                return Err(CgroupError::KillIncomplete {
                    name: self.name.clone(),
                    pids,
                });
            }
            self.set_frozen(true)?;
            // Frozen, the cgroup can't fork, so this list is complete.
            let pids = self.pids();
            if let Ok(pids) = &pids {
                for &pid in pids {
                    // A kill that fails shows up as a survivor on the next pass, and as
                    // `KillIncomplete` once patience runs out.
                    let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
                }
            }
            // Thaw even when listing failed, or the job would stay frozen forever.
            self.set_frozen(false)?;
            pids?;
            thread::sleep(Duration::from_millis(5));
        }
    }

    fn set_frozen(&self, frozen: bool) -> Result<(), CgroupError> {
        if let Some(dir) = self.v1_dir("freezer") {
            return v1::set_frozen(dir, frozen);
        }
        if let Some(dir) = self.v2_dir() {
            let file = dir.join("cgroup.freeze");
            if file.exists() {
                return fsio::write_value(&file, if frozen { "1" } else { "0" });
            }
        }
        Ok(())
    }

    /// Whether the kernel OOM-killed a process of the job. Read it before [`remove`](Self::remove).
    /// Without a memory controller nothing can be OOM-killed by a job limit: `false`.
    pub fn oom_killed(&self) -> Result<bool, CgroupError> {
        if let Some(dir) = self.v1_dir("memory") {
            return Ok(v1::oom_kills(dir)? > 0);
        }
        match self.v2_dir() {
            Some(dir) if self.mode == Mode::V2 && dir.join("memory.events").exists() => {
                Ok(v2::oom_kills(dir)? > 0)
            }
            _ => Ok(false),
        }
    }

    pub fn stats(&self) -> Result<CgroupStats, CgroupError> {
        self.read_stats(Reading::All)
    }

    /// What a finished job's totals need (peak memory, CPU time and throttling, processes
    /// left), read once everything of it has exited: none of the figures that only mean
    /// something while it runs. Each file less is one read less between the job's exit and
    /// its result.
    pub fn final_stats(&self) -> Result<CgroupStats, CgroupError> {
        self.read_stats(Reading::Totals)
    }

    fn read_stats(&self, reading: Reading) -> Result<CgroupStats, CgroupError> {
        let mut stats = CgroupStats::default();
        v1::stats(
            |c| self.v1_dir(c).map(Path::to_path_buf),
            &mut stats,
            reading,
        )?;
        if let Some(dir) = self.v2_dir() {
            v2::stats(dir, &mut stats, reading)?;
        }
        Ok(stats)
    }

    /// Removes the job's directories; they must hold no live process (see
    /// [`kill_all`](Self::kill_all)).
    pub fn remove(self) -> Result<(), CgroupError> {
        let mut first_err = None;
        for d in self.dirs.iter().rev() {
            if let Err(e) = fsio::rmdir_retry(&d.dir, RMDIR_PATIENCE) {
                first_err.get_or_insert(e);
            }
        }
        match first_err {
            None => Ok(()),
            Some(e) => Err(e),
        }
    }
}
