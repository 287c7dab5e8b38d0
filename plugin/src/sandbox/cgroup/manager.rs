//! The host's cgroups, detected once: which hierarchies, where the base is, what it enforces;
//! and the job cgroups it makes (ahead of a job, or at its start).

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use super::detect::{self, HostView};
use super::job::{DirKind, JobCgroup, LeafDir};
use super::{
    fsio, v1, v2, validate_name, CgroupConfig, CgroupError, CgroupLimits, Enforced, Mode,
    ResolvedLimits, BASE_NAME, CPU_PERIOD_US, MIN_CPU_QUOTA_US, RMDIR_PATIENCE, SUPERVISOR_LEAF,
};

#[derive(Debug, Clone)]
pub(super) enum Backend {
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
pub(super) static DETECTED: crate::memo::LastFor<CgroupConfig, CgroupManager> =
    crate::memo::LastFor::new();

/// The default base for a process in cgroup `own`.
pub(super) fn default_base(own: &Path) -> PathBuf {
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
    /// (renaming one costs far less than making it; see docs/PERFORMANCE.md). v2
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
pub(super) const AHEAD_PREFIX: &str = ".ahead-";

pub(super) fn ahead_name(owner: i32) -> String {
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
