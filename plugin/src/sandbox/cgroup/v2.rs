//! The cgroup v2 side: the base cgroup (controllers enabled, no processes of its own) and the
//! per-job leaf files. Also used for the controller-less v2 tree of a hybrid host.

use std::path::{Path, PathBuf};

use super::fsio::{self, io_err};
use super::{CgroupError, CgroupStats, Reading, ResolvedLimits, CPU_PERIOD_US, SUPERVISOR_LEAF};

/// Controllers this module enables on v2, in the order the kernel lists them.
const WANTED: [&str; 3] = ["cpu", "memory", "pids"];

/// A prepared v2 base.
#[derive(Debug, Clone)]
pub(crate) struct Base {
    pub dir: PathBuf,
    /// Controllers enabled in the base's `cgroup.subtree_control`, so present in every leaf.
    pub controllers: Vec<String>,
    /// Whether leaves have `memory.swap.max` (swap accounting is on).
    pub swap: bool,
}

impl Base {
    pub fn has(&self, controller: &str) -> bool {
        self.controllers.iter().any(|c| c == controller)
    }
}

fn tokens(text: &str) -> Vec<String> {
    text.split_whitespace()
        .map(|t| t.trim_start_matches('+').to_owned())
        .collect()
}

/// Creates the base at `base_dir` (under `mount`) and enables the wanted controllers down the
/// path from the mount to it.
///
/// Enabling a controller in a cgroup's `subtree_control` needs that cgroup to hold no processes
/// (except the root). Processes found in this process's own cgroup (`own_dir`) or in the base are
/// moved into `<base>/supervisor` first; a foreign ancestor with processes is reported, not
/// touched.
pub(crate) fn prepare(mount: &Path, own_dir: &Path, base_dir: &Path) -> Result<Base, CgroupError> {
    let available = tokens(&fsio::read(&mount.join("cgroup.controllers"))?);
    let wanted: Vec<&str> = WANTED
        .into_iter()
        .filter(|c| available.iter().any(|a| a == c))
        .collect();

    let rel = base_dir
        .strip_prefix(mount)
        .map_err(|_| CgroupError::Config {
            detail: format!(
                "base {} is not under the cgroup2 mount {}",
                base_dir.display(),
                mount.display()
            ),
        })?;
    let mut chain = vec![mount.to_path_buf()];
    let mut cur = mount.to_path_buf();
    for comp in rel.components() {
        cur.push(comp);
        chain.push(cur.clone());
    }

    // Known before anything is created: relocation may create the base early.
    let fresh: Vec<bool> = chain.iter().map(|d| !d.exists()).collect();
    let mut controllers = Vec::new();
    for (dir, &fresh) in chain.iter().zip(&fresh) {
        if !dir.exists() {
            fsio::mkdir_new(dir)?;
        }
        let ours = dir == own_dir || dir == base_dir;
        let place = Place {
            fresh,
            is_root: dir == mount,
            ours,
        };
        controllers = enable(dir, &wanted, place, base_dir)?;
    }
    controllers.retain(|c| WANTED.contains(&c.as_str()));
    let swap = controllers.iter().any(|c| c == "memory")
        && (base_dir != mount && base_dir.join("memory.swap.max").exists());
    Ok(Base {
        dir: base_dir.to_path_buf(),
        controllers,
        swap,
    })
}

/// Where a cgroup on the way to the base stands.
#[derive(Debug, Clone, Copy)]
struct Place {
    fresh: bool,
    is_root: bool,
    /// This process's own cgroup or the base: its processes may be moved.
    ours: bool,
}

/// Enables `wanted` in `dir`'s `subtree_control`; returns what is enabled there afterwards.
fn enable(
    dir: &Path,
    wanted: &[&str],
    place: Place,
    base_dir: &Path,
) -> Result<Vec<String>, CgroupError> {
    let Place {
        fresh,
        is_root,
        ours,
    } = place;
    let control = dir.join("cgroup.subtree_control");
    let mut enabled = if fresh {
        Vec::new()
    } else {
        tokens(&fsio::read(&control)?)
    };
    let missing: Vec<&str> = wanted
        .iter()
        .copied()
        .filter(|c| !enabled.iter().any(|e| e == c))
        .collect();
    if missing.is_empty() {
        return Ok(enabled);
    }
    // The real root is exempt from the no-internal-processes rule, and its processes are the
    // whole system's, so it is only relocated from when the kernel says it must be (a cgroup
    // namespace root is not exempt).
    if ours && !is_root && !fresh && has_processes(dir)? {
        relocate(dir, base_dir)?;
    }
    let value = missing
        .iter()
        .map(|c| format!("+{c}"))
        .collect::<Vec<_>>()
        .join(" ");
    let mut attempts = 0;
    loop {
        match fsio::write_value(&control, &value) {
            Ok(()) => {
                enabled.extend(missing.iter().map(|c| (*c).to_owned()));
                return Ok(enabled);
            }
            Err(CgroupError::Io { source, .. }) if source.raw_os_error() == Some(libc::EBUSY) => {
                // A process forked into the cgroup after the relocation pass; move it too.
                attempts += 1;
                if !ours {
                    return Err(CgroupError::InternalProcesses {
                        path: dir.to_path_buf(),
                    });
                }
                if attempts > 5 {
                    return Err(io_err("write", &control, source));
                }
                relocate(dir, base_dir)?;
            }
            Err(e) => return Err(e),
        }
    }
}

fn has_processes(dir: &Path) -> Result<bool, CgroupError> {
    Ok(!fsio::read_pids(&dir.join("cgroup.procs"))?.is_empty())
}

/// Moves every process of `dir` into `<base>/supervisor`.
fn relocate(dir: &Path, base_dir: &Path) -> Result<(), CgroupError> {
    let target = base_dir.join(SUPERVISOR_LEAF);
    fsio::mkdir_all(&target)?;
    let procs = target.join("cgroup.procs");
    for pid in fsio::read_pids(&dir.join("cgroup.procs"))? {
        match fsio::write_value(&procs, &pid.to_string()) {
            Ok(()) => {}
            // The process exited between the read and the move: nothing left to move.
            Err(CgroupError::Io { source, .. }) if source.raw_os_error() == Some(libc::ESRCH) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Writes the limits into a fresh leaf of `base`.
pub(crate) fn write_limits(
    leaf: &Path,
    base: &Base,
    limits: &ResolvedLimits,
) -> Result<(), CgroupError> {
    if let Some(quota) = limits.cpu_quota_us {
        fsio::write_value(&leaf.join("cpu.max"), &format!("{quota} {CPU_PERIOD_US}"))?;
    }
    if let Some(bytes) = limits.memory {
        fsio::write_value(&leaf.join("memory.max"), &bytes.to_string())?;
        if base.swap {
            fsio::write_value(&leaf.join("memory.swap.max"), "0")?;
        }
    }
    if base.has("memory") {
        // An OOM kill takes the whole job, not one arbitrary process of it.
        fsio::write_value(&leaf.join("memory.oom.group"), "1")?;
    }
    if let Some(pids) = limits.pids {
        fsio::write_value(&leaf.join("pids.max"), &pids.to_string())?;
    }
    Ok(())
}

/// `oom_kill` of `memory.events` (not `oom`, which also counts OOMs that killed nothing).
pub(crate) fn oom_kills(leaf: &Path) -> Result<u64, CgroupError> {
    let path = leaf.join("memory.events");
    let text = fsio::read(&path)?;
    fsio::keyed(&text, "oom_kill")
        .ok_or_else(|| fsio::parse_err(&path, "no oom_kill line".to_owned()))
}

/// Fills what a v2 leaf knows. `cpu.stat` `usage_usec` exists without the cpu controller; the
/// throttling lines only with it.
pub(crate) fn stats(
    leaf: &Path,
    stats: &mut CgroupStats,
    reading: Reading,
) -> Result<(), CgroupError> {
    let all = reading == Reading::All;
    // On a hybrid host v1 has filled the memory and pids figures: those files are not read.
    if all && stats.memory_current.is_none() {
        stats.memory_current = fsio::read_u64(&leaf.join("memory.current"))?;
    }
    if stats.memory_peak.is_none() {
        stats.memory_peak = fsio::read_u64(&leaf.join("memory.peak"))?;
    }
    if stats.pids_current.is_none() {
        stats.pids_current = fsio::read_u64(&leaf.join("pids.current"))?;
    }
    if all && stats.fork_failures.is_none() {
        if let Some(text) = fsio::read_optional(&leaf.join("pids.events"))? {
            stats.fork_failures = fsio::keyed(&text, "max");
        }
    }
    if let Some(text) = fsio::read_optional(&leaf.join("cpu.stat"))? {
        stats.cpu_usage_usec = stats.cpu_usage_usec.or(fsio::keyed(&text, "usage_usec"));
        stats.nr_periods = stats.nr_periods.or(fsio::keyed(&text, "nr_periods"));
        stats.nr_throttled = stats.nr_throttled.or(fsio::keyed(&text, "nr_throttled"));
        stats.throttled_usec = stats
            .throttled_usec
            .or(fsio::keyed(&text, "throttled_usec"));
    }
    Ok(())
}
