//! The on-disk state of executions: the directory layout under the state root, atomic JSON
//! records, and process identity (pid + start time) so a reused pid is never mistaken for ours.
//!
//! The execution's state directory is the whole interface between the plugin and the monitor:
//!
//! ```text
//! <state_root>/executions/<ExecutionID>/   flock'ed: the start lock (ExecDir::open_start_lock)
//!   request.json        plugin, before launching: the wire request + the resolved MonitorSpec
//!   monitor.json        monitor, once its sandbox is ready and once the job runs: MonitorRecord
//!   raw_container_logs  the log, unless the request named an ExecutionDir
//!   result.json         monitor at the end (or the plugin for a dead monitor): ResultRecord
//!   monitor.log         the monitor's stderr
//! ```

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use executor_schema::RunCommandResult;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::sandbox::cgroup::CgroupRecord;
use crate::sandbox::mounts::Bind;
use crate::sandbox::user::UserPlan;

pub const EXECUTIONS_DIR: &str = "executions";
pub const REQUEST_FILE: &str = "request.json";
pub const MONITOR_FILE: &str = "monitor.json";
pub const RESULT_FILE: &str = "result.json";
pub const MONITOR_LOG_FILE: &str = "monitor.log";
pub const LOG_FILE: &str = "raw_container_logs";

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("{path}: malformed JSON: {source}")]
    Json {
        path: PathBuf,
        source: serde_json::Error,
    },
}

impl StateError {
    pub fn io(path: &Path, source: io::Error) -> Self {
        StateError::Io {
            path: path.to_path_buf(),
            source,
        }
    }

    /// True when the file simply isn't there (as opposed to unreadable or corrupt).
    pub fn is_not_found(&self) -> bool {
        matches!(self, StateError::Io { source, .. } if source.kind() == io::ErrorKind::NotFound)
    }
}

/// Paths of one execution's state directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecDir {
    pub dir: PathBuf,
}

impl ExecDir {
    pub fn new(state_root: &Path, execution_id: &str) -> Self {
        ExecDir {
            dir: executions_root(state_root).join(execution_id),
        }
    }
    pub fn at(dir: impl Into<PathBuf>) -> Self {
        ExecDir { dir: dir.into() }
    }
    pub fn request(&self) -> PathBuf {
        self.dir.join(REQUEST_FILE)
    }
    pub fn monitor(&self) -> PathBuf {
        self.dir.join(MONITOR_FILE)
    }
    pub fn result(&self) -> PathBuf {
        self.dir.join(RESULT_FILE)
    }
    pub fn monitor_log(&self) -> PathBuf {
        self.dir.join(MONITOR_LOG_FILE)
    }
    /// The start lock: a `flock` on the execution directory itself, held by whoever may still
    /// start this execution's job: the plugin while it launches the monitor, then the monitor
    /// for its whole life (the directory open as its stdin). A plugin that finds it free knows
    /// nobody can still write `monitor.json` or `result.json`. (A lock file would be one more
    /// inode per execution, which a journal-less ext4 makes costly to allocate.) The state root
    /// must be local: NFS emulates `flock` with POSIX locks, which refuse an exclusive lock on a
    /// descriptor opened read-only, so every start there fails (loudly) at taking this lock.
    pub fn open_start_lock(&self) -> std::io::Result<std::fs::File> {
        std::fs::File::open(&self.dir)
    }
    /// Where the log goes when the request names no `ExecutionDir`.
    pub fn default_log(&self) -> PathBuf {
        self.dir.join(LOG_FILE)
    }
}

pub fn executions_root(state_root: &Path) -> PathBuf {
    state_root.join(EXECUTIONS_DIR)
}

/// The mode of every directory the plugin makes in its state: `request.json` holds the job's
/// `Env`, where secrets go, so no other local user may list or read anything there.
pub const PRIVATE_DIR_MODE: u32 = 0o700;
/// The mode of every file the plugin and the monitor make in their state.
pub const PRIVATE_FILE_MODE: u32 = 0o600;

/// `path` and any missing parents, made [`PRIVATE_DIR_MODE`] by `mkdir` itself (no window in
/// which a wider mode shows). Directories that already exist are left as they are.
pub fn create_private_dir_all(path: &Path) -> io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    fs::DirBuilder::new()
        .recursive(true)
        .mode(PRIVATE_DIR_MODE)
        .create(path)
}

/// Why a state root cannot be trusted: whoever else can write it, or rename or replace it or a
/// directory above it, could read the records (`request.json` holds the job's `Env`) or point
/// the plugin's writes, made as root, anywhere through symlinks and files of their own.
pub fn untrusted_state_root(path: &Path) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    // SAFETY: geteuid cannot fail.
    let me = unsafe { libc::geteuid() };
    let trusted = |uid: u32| uid == 0 || uid == me;
    let real = match fs::canonicalize(path) {
        Ok(r) => r,
        Err(e) => return Some(format!("cannot resolve it: {e}")),
    };
    // Where a symlink naming the root lives counts too: its directory's owner could re-point it.
    let link_dir = path
        .parent()
        .filter(|_| real != path)
        .and_then(|p| fs::canonicalize(p).ok());
    let chains = std::iter::once(real.as_path()).chain(link_dir.as_deref());
    for (i, start) in chains.enumerate() {
        let mut child_uid = None;
        for dir in start.ancestors() {
            let meta = match fs::metadata(dir) {
                Ok(m) => m,
                Err(e) => return Some(format!("cannot inspect {}: {e}", dir.display())),
            };
            // Group-writable is fine for our own group or root's (a umask of 002 with a group
            // per user makes every directory so), as for results directories.
            // SAFETY: getegid cannot fail.
            let our_group = meta.gid() == 0 || meta.gid() == unsafe { libc::getegid() };
            let open_to_others =
                meta.mode() & 0o002 != 0 || (meta.mode() & 0o020 != 0 && !our_group);
            let sticky = meta.mode() & libc::S_ISVTX != 0;
            if !trusted(meta.uid()) {
                return Some(format!("{} belongs to uid {}", dir.display(), meta.uid()));
            }
            // The root itself must be nobody else's to write; above it, a sticky directory
            // (such as /tmp) is fine where the entry below is a trusted user's.
            let is_root = i == 0 && child_uid.is_none();
            if open_to_others && (is_root || !(sticky && child_uid.is_some_and(trusted))) {
                return Some(format!(
                    "{} is writable by other users (mode {:o})",
                    dir.display(),
                    meta.mode() & 0o7777
                ));
            }
            child_uid = Some(meta.uid());
        }
    }
    None
}

/// A new or truncated file of the state, made [`PRIVATE_FILE_MODE`] by `open` itself.
pub fn create_private_file(path: &Path) -> io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(PRIVATE_FILE_MODE)
        .open(path)
}

/// The request field [`MonitorSpec::working_dir`] comes from, named in errors about it.
pub const WORKING_DIR_FIELD: &str = "EngineParams.Params.WorkingDirectory";

/// Everything the monitor needs, resolved by the plugin so the monitor never interprets the wire
/// request (and needs no validation code).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MonitorSpec {
    pub execution_id: String,
    pub job_id: String,
    /// Program and arguments: Entrypoint ++ Parameters. The program is looked up in PATH.
    pub argv: Vec<String>,
    /// The job's whole environment, in order; later entries win.
    pub env: Vec<(String, String)>,
    /// Where the job starts (the request field [`WORKING_DIR_FIELD`]).
    pub working_dir: Option<PathBuf>,
    pub results_dir: PathBuf,
    /// Names of the outputs: `results/<Name>` is created for each.
    pub output_names: Vec<String>,
    pub log_path: PathBuf,
    pub limits: Limits,
    /// Seconds; `None` or non-positive means no deadline.
    pub timeout_secs: Option<f64>,
    /// Milliseconds between the graceful SIGTERM and the kill of the whole tree.
    pub kill_grace_ms: u64,
    /// Limits and isolation. Absent in records written before it existed: no limits.
    #[serde(default)]
    pub sandbox: SandboxSpec,
}

/// What the monitor puts around the job. Requested limits (`cpu_cores`, `memory_bytes`) are
/// requirements: a host that cannot enforce one refuses the job. `pids_max` is the plugin's own
/// guard against fork bombs, applied where a pids controller exists.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SandboxSpec {
    /// Base cgroup as `/proc/self/cgroup` prints paths; `None`: `<own cgroup>/executor-plugins`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cgroup_base: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_cores: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_bytes: Option<u64>,
    /// The plugin's `defaultMemory`, for a job that requested no memory limit: like `pids_max`
    /// a guard, not a requirement, so it is applied only where a memory controller exists.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_memory_bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pids_max: Option<u64>,
    /// `RLIMIT_NOFILE` soft limit; `None`: the sandbox default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nofile: Option<u64>,
    /// A network namespace of its own with only `lo` (`Network: None`).
    #[serde(default)]
    pub isolate_network: bool,
    /// `Network: Bridge`: a namespace of its own on the plugin's bridge (instead of
    /// `isolate_network`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bridge: Option<crate::sandbox::bridge::BridgePlan>,
    /// `Network: HTTP`: a namespace with only `lo` and the monitor's proxy in it (instead of
    /// `isolate_network`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<crate::sandbox::http_proxy::HttpPlan>,
    /// A private root with the inputs and outputs mounted; absent: the host's filesystem.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filesystem: Option<FsSandbox>,
    /// The unprivileged identity the job switches to (the plugin is root); absent: the
    /// monitor's own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_as: Option<UserPlan>,
    /// GPU device nodes for the job's `/dev` and the devices cgroup's rules; absent on a host
    /// without GPUs for a job that asks for none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpu: Option<crate::sandbox::gpu::GpuSandbox>,
    /// The program is the monitor's own image (`/proc/self/exe`, which is this plugin's
    /// binary even when it runs from a sealed memfd), run in an engine's run mode; `argv[0]`
    /// is only its name and is not looked up in the job's root.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub self_exec: bool,
}

/// The job's private filesystem: a tmpfs mounted on `root_dir` (an empty directory shared by
/// every job) in the job's own mount namespace becomes its `/`, with the host's system directories read-only and `binds` at their targets.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FsSandbox {
    pub root_dir: PathBuf,
    /// Inputs, then outputs (`results/<Name>` read-write at `Path`).
    pub binds: Vec<Bind>,
    /// The size in bytes of each of the job's private tmpfs mounts (`/tmp`, `/dev/shm`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tmpfs_size: Option<u64>,
}

/// Output limits in bytes (docs/ARCHITECTURE.md, "Semantics": results).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Limits {
    pub stdout_file: u64,
    pub stdout_return: u64,
    pub stderr_file: u64,
    pub stderr_return: u64,
    /// Bytes the execution's log file holds before its "output dropped" marker (see
    /// [`crate::logstore::LogWriter`]). Absent in older records: the default.
    #[serde(default = "default_log_limit")]
    pub log: u64,
}

/// `maxLogLength` when the plugin's config sets none.
pub const DEFAULT_LOG_LIMIT: u64 = 256 << 20;
/// A log takes at least this much, however small the results files' limits: small outputs stay
/// followable in full (and a zero file limit still leaves the log).
pub const LOG_LIMIT_FLOOR: u64 = 16 << 20;

fn default_log_limit() -> u64 {
    DEFAULT_LOG_LIMIT
}

impl Limits {
    /// The log's limit for these results limits under the configured `max`: what the results
    /// files may keep (but at least [`LOG_LIMIT_FLOOR`]), never more than `max`.
    pub fn log_limit(stdout_file: u64, stderr_file: u64, max: u64) -> u64 {
        stdout_file
            .saturating_add(stderr_file)
            .max(LOG_LIMIT_FLOOR)
            .min(max)
    }
}

impl Default for Limits {
    /// Bacalhau's system defaults: 1 GiB files, 2 KiB summaries.
    fn default() -> Self {
        Limits {
            stdout_file: 1 << 30,
            stdout_return: 2048,
            stderr_file: 1 << 30,
            stderr_return: 2048,
            log: DEFAULT_LOG_LIMIT,
        }
    }
}

/// `request.json`: the request as it came over the wire (for list/inspection) and the spec.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RequestRecord {
    pub request: serde_json::Value,
    pub monitor: MonitorSpec,
    /// Milliseconds since the epoch when the plugin accepted the request.
    pub created_at_ms: u64,
}

/// A process named so that pid reuse can be detected: `starttime` from `/proc/<pid>/stat`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProcId {
    pub pid: i32,
    pub start_time: u64,
}

impl ProcId {
    pub fn of(pid: i32) -> io::Result<Self> {
        Ok(ProcId {
            pid,
            start_time: proc_start_time(pid)?,
        })
    }

    /// The process is alive (or a zombie) and is the same one that was recorded.
    pub fn is_alive(&self) -> bool {
        matches!(proc_start_time(self.pid), Ok(t) if t == self.start_time)
    }
}

/// `monitor.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MonitorRecord {
    pub monitor: ProcId,
    /// The job's main process (its pid is also its process group and session id).
    #[serde(default)]
    pub job: Option<ProcId>,
    pub log_path: PathBuf,
    /// The job's cgroup, recorded before the job is spawned: the plugin reads stats from it and
    /// removes it when the monitor died without doing so.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cgroup: Option<CgroupRecord>,
}

/// `result.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ResultRecord {
    pub result: RunCommandResult,
    pub finished_at_ms: u64,
    /// Total bytes the job wrote to each stream (beyond any limit).
    #[serde(default)]
    pub stdout_bytes: u64,
    #[serde(default)]
    pub stderr_bytes: u64,
    /// Free-form facts for diagnosis (e.g. what was killed).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub notes: BTreeMap<String, String>,
    /// The job's usage at its end; absent without a cgroup and in records of older plugins.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<FinalUsage>,
}

/// What the job's cgroup counted, read just before the cgroup was removed: a job too short to be
/// sampled while it ran still reports its peak memory and CPU time.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FinalUsage {
    pub memory_peak_bytes: Option<u64>,
    pub cpu_usec: Option<u64>,
    /// Processes still in the cgroup at the end (0: nothing was left behind).
    pub pids: Option<u64>,
    pub throttled_periods: Option<u64>,
    pub throttled_usec: Option<u64>,
}

pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Write JSON so that a reader sees the old file or the new one, never a torn one, and the new
/// one survives a crash: temp file in the same directory, fsync, rename, fsync the directory.
pub fn write_json_atomic<T: Serialize>(path: &Path, value: &T) -> Result<(), StateError> {
    let bytes = serde_json::to_vec_pretty(value).map_err(|e| StateError::Json {
        path: path.to_path_buf(),
        source: e,
    })?;
    write_atomic(path, &bytes).map_err(|e| StateError::io(path, e))
}

/// Like [`write_json_atomic`] but without the flushes: a reader (or a plugin restarted after a
/// crash) still sees the old file or the new one, never a torn one, but a power loss may lose it.
/// For records that describe live processes (`request.json`, `monitor.json`): a power loss kills
/// those processes too, and an execution whose records are missing after a reboot is buried as
/// failed either way, so flushing them would only add milliseconds to every start.
pub fn write_json_replace<T: Serialize>(path: &Path, value: &T) -> Result<(), StateError> {
    let bytes = serde_json::to_vec_pretty(value).map_err(|e| StateError::Json {
        path: path.to_path_buf(),
        source: e,
    })?;
    replace_file(path, &bytes, false).map_err(|e| StateError::io(path, e))
}

pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    replace_file(path, bytes, true)
}

fn replace_file(path: &Path, bytes: &[u8], durable: bool) -> io::Result<()> {
    let dir = path
        .parent()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "path has no parent"))?;
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "path has no file name"))?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(".tmp.{}", std::process::id()));
    let tmp = dir.join(tmp_name);
    let result = (|| {
        let mut f = create_private_file(&tmp)?;
        f.write_all(bytes)?;
        if durable {
            f.sync_all()?;
        }
        fs::rename(&tmp, path)?;
        if durable {
            // The rename itself must reach the disk too.
            File::open(dir)?.sync_all()?;
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

pub fn read_json<T: DeserializeOwned>(path: &Path) -> Result<T, StateError> {
    let bytes = fs::read(path).map_err(|e| StateError::io(path, e))?;
    serde_json::from_slice(&bytes).map_err(|e| StateError::Json {
        path: path.to_path_buf(),
        source: e,
    })
}

/// `starttime` (field 22 of `/proc/<pid>/stat`, clock ticks since boot).
pub fn proc_start_time(pid: i32) -> io::Result<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat"))?;
    parse_stat_field(&stat, 22)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "malformed /proc stat"))
}

/// Parent pid (field 4 of `/proc/<pid>/stat`).
pub fn proc_ppid(pid: i32) -> io::Result<i32> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat"))?;
    parse_stat_field(&stat, 4)
        .and_then(|v| i32::try_from(v).ok())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "malformed /proc stat"))
}

/// A numeric field of a `/proc/<pid>/stat` line (1-based, as in proc(5)). The command name
/// (field 2) may contain spaces and parentheses, so fields are counted from its last `)`.
pub fn parse_stat_field(stat: &str, field: usize) -> Option<u64> {
    let after = &stat[stat.rfind(')')? + 1..];
    let index = field.checked_sub(3)?;
    after.split_whitespace().nth(index)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_survive_odd_command_names() {
        let line = "1234 (a) b (c)) S 77 1234 1234 0 -1 4194560 1 0 0 0 0 0 0 0 20 0 1 0 98765 1 2";
        assert_eq!(parse_stat_field(line, 4), Some(77));
        assert_eq!(parse_stat_field(line, 22), Some(98765));
        assert_eq!(parse_stat_field(line, 99), None);
    }

    #[test]
    fn own_process_identity_is_alive_and_a_changed_start_time_is_not() {
        let me = ProcId::of(std::process::id() as i32).unwrap();
        assert!(me.is_alive());
        let other = ProcId {
            start_time: me.start_time + 1,
            ..me
        };
        assert!(!other.is_alive());
        // SAFETY: getppid has no preconditions.
        let ppid = unsafe { libc::getppid() };
        assert_eq!(proc_ppid(std::process::id() as i32).unwrap(), ppid);
    }

    #[test]
    fn state_files_and_directories_are_private_from_creation() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o7777;
        let nested = dir.path().join("a/b");
        create_private_dir_all(&nested).unwrap();
        assert_eq!(mode(&dir.path().join("a")), 0o700);
        assert_eq!(mode(&nested), 0o700);
        let json = nested.join("request.json");
        write_json_replace(&json, &serde_json::json!({"Env": {"K": "secret"}})).unwrap();
        assert_eq!(mode(&json), 0o600);
        write_atomic(&json, b"{}").unwrap();
        assert_eq!(mode(&json), 0o600);
        let log = nested.join("monitor.log");
        create_private_file(&log).unwrap();
        assert_eq!(mode(&log), 0o600);
    }

    #[test]
    fn atomic_json_round_trips_and_leaves_no_temp_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("result.json");
        let rec = ResultRecord {
            result: RunCommandResult::failed("boom"),
            finished_at_ms: 5,
            stdout_bytes: 1,
            stderr_bytes: 2,
            notes: BTreeMap::new(),
            usage: None,
        };
        write_json_atomic(&path, &rec).unwrap();
        write_json_atomic(&path, &rec).unwrap();
        let back: ResultRecord = read_json(&path).unwrap();
        assert_eq!(back, rec);
        let names: Vec<_> = fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(names.len(), 1);
        let raw: serde_json::Value = serde_json::from_slice(&fs::read(&path).unwrap()).unwrap();
        assert_eq!(raw["result"]["stderr"], "");
        assert_eq!(raw["result"]["ExitCode"], -1);
        assert!(read_json::<ResultRecord>(&dir.path().join("nope"))
            .unwrap_err()
            .is_not_found());
    }
}
