//! The cgroup v1 side: one base directory per mounted hierarchy, a leaf in each per job.

use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use super::detect::V1Mount;
use super::fsio;
use super::{CgroupError, CgroupStats, Reading, ResolvedLimits, CPU_PERIOD_US};

/// A hierarchy with this plugin's base directory in it.
#[derive(Debug, Clone)]
pub(crate) struct Base {
    pub mount: V1Mount,
    pub dir: PathBuf,
}

/// The bases of all usable hierarchies.
#[derive(Debug, Clone)]
pub(crate) struct Bases {
    pub list: Vec<Base>,
    /// `memory.memsw.limit_in_bytes` exists (swap accounting is on).
    pub swap: bool,
}

impl Bases {
    pub fn has(&self, controller: &str) -> bool {
        self.list.iter().any(|b| b.mount.has(controller))
    }
}

/// Creates `<mount>/<base>` in every hierarchy. v1 has no no-internal-processes rule, so nothing
/// is relocated.
pub(crate) fn prepare(
    mounts: &[V1Mount],
    base_of: &impl Fn(&Path) -> PathBuf,
) -> Result<Bases, CgroupError> {
    let mut list = Vec::new();
    for m in mounts {
        let dir = fsio::under(&m.mount, &base_of(&m.own));
        fsio::mkdir_all(&dir)?;
        list.push(Base {
            mount: m.clone(),
            dir,
        });
    }
    let swap = list
        .iter()
        .any(|b| b.mount.has("memory") && b.dir.join("memory.memsw.limit_in_bytes").exists());
    Ok(Bases { list, swap })
}

/// Writes limits into the leaf of the hierarchy that carries each controller. `leaf_of` maps a
/// controller to its leaf directory.
pub(crate) fn write_limits(
    leaf_of: impl Fn(&str) -> Option<PathBuf>,
    swap: bool,
    limits: &ResolvedLimits,
) -> Result<(), CgroupError> {
    if let (Some(quota), Some(dir)) = (limits.cpu_quota_us, leaf_of("cpu")) {
        fsio::write_value(&dir.join("cpu.cfs_period_us"), &CPU_PERIOD_US.to_string())?;
        fsio::write_value(&dir.join("cpu.cfs_quota_us"), &quota.to_string())?;
    }
    if let (Some(bytes), Some(dir)) = (limits.memory, leaf_of("memory")) {
        // memsw must stay >= limit_in_bytes, so the plain limit goes first.
        fsio::write_value(&dir.join("memory.limit_in_bytes"), &bytes.to_string())?;
        if swap {
            fsio::write_value(&dir.join("memory.memsw.limit_in_bytes"), &bytes.to_string())?;
        }
    }
    if let (Some(pids), Some(dir)) = (limits.pids, leaf_of("pids")) {
        fsio::write_value(&dir.join("pids.max"), &pids.to_string())?;
    }
    Ok(())
}

/// Turns the leaf's default to "deny" (which also drops what it inherited) and allows `allow`.
/// With a default of "allow" the kernel keeps deny exceptions but `devices.list` shows only
/// `a *:* rwm`, so a deny list could be neither read back nor checked.
pub(crate) fn write_device_rules(leaf: &Path, allow: &[String]) -> Result<(), CgroupError> {
    fsio::write_value(&leaf.join("devices.deny"), "a")?;
    for rule in allow {
        fsio::write_value(&leaf.join("devices.allow"), rule)?;
    }
    Ok(())
}

/// `oom_kill` of `memory.oom_control` (kernel 4.13+).
pub(crate) fn oom_kills(memory_leaf: &Path) -> Result<u64, CgroupError> {
    let path = memory_leaf.join("memory.oom_control");
    let text = fsio::read(&path)?;
    fsio::keyed(&text, "oom_kill").ok_or_else(|| {
        fsio::parse_err(
            &path,
            "no oom_kill counter (kernel older than 4.13)".to_owned(),
        )
    })
}

pub(crate) fn stats(
    leaf_of: impl Fn(&str) -> Option<PathBuf>,
    stats: &mut CgroupStats,
    reading: Reading,
) -> Result<(), CgroupError> {
    let all = reading == Reading::All;
    if let Some(dir) = leaf_of("memory") {
        if all {
            stats.memory_current = fsio::read_u64(&dir.join("memory.usage_in_bytes"))?;
        }
        stats.memory_peak = fsio::read_u64(&dir.join("memory.max_usage_in_bytes"))?;
    }
    if let Some(dir) = leaf_of("cpuacct") {
        stats.cpu_usage_usec = fsio::read_u64(&dir.join("cpuacct.usage"))?.map(|ns| ns / 1000);
    }
    if let Some(dir) = leaf_of("cpu") {
        if let Some(text) = fsio::read_optional(&dir.join("cpu.stat"))? {
            stats.nr_periods = fsio::keyed(&text, "nr_periods");
            stats.nr_throttled = fsio::keyed(&text, "nr_throttled");
            stats.throttled_usec = fsio::keyed(&text, "throttled_time").map(|ns| ns / 1000);
        }
    }
    if let Some(dir) = leaf_of("pids") {
        stats.pids_current = fsio::read_u64(&dir.join("pids.current"))?;
        if all {
            stats.fork_failures = fsio::read_optional(&dir.join("pids.events"))?
                .and_then(|text| fsio::keyed(&text, "max"));
        }
    }
    Ok(())
}

/// Sets `freezer.state`; when freezing, waits a little for `FROZEN` (tasks pass through
/// `FREEZING`). A cgroup stuck in `FREEZING` is still killed: SIGKILL lands on thaw.
pub(crate) fn set_frozen(freezer_leaf: &Path, frozen: bool) -> Result<(), CgroupError> {
    let state = freezer_leaf.join("freezer.state");
    fsio::write_value(&state, if frozen { "FROZEN" } else { "THAWED" })?;
    if frozen {
        let start = Instant::now();
        while start.elapsed() < Duration::from_millis(200) {
            if fsio::read(&state)?.trim() == "FROZEN" {
                break;
            }
            thread::sleep(Duration::from_millis(2));
        }
    }
    Ok(())
}
