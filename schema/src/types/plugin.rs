//! The plugin protocol's own messages (camelCase keys).

use std::path::PathBuf;

use base64::Engine as _;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::bacalhau::Gpu;

/// The protocol version this build speaks.
pub const PROTOCOL_VERSION: &str = "1";
/// Every version this build can speak, oldest first.
pub const SUPPORTED_PROTOCOL_VERSIONS: &[&str] = &["1"];

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct HostInfo {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub version: String,
}

/// Per-engine configuration the host passes in `initialize`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PluginConfig {
    /// The plugin's state root. Default `/var/lib/executor-plugins/<engine>` as root, else
    /// `$XDG_STATE_HOME/executor-plugins/<engine>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state_dir: Option<PathBuf>,
    /// Seconds a finished execution stays queryable (default 3600).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retention: Option<f64>,
    /// Finished executions kept at most (default 1000); the oldest are evicted first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_retained: Option<usize>,
    /// Seconds between the polite SIGTERM and the kill of the whole tree (default 2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kill_grace: Option<f64>,
    /// Cgroup under which executions get their own cgroups (a delegated subtree).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cgroup_base: Option<PathBuf>,
    /// One user that every job runs as when the plugin runs as root. Unset: each running
    /// execution gets a uid (and gid) of its own from `jobUidRange`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_as_user: Option<String>,
    /// The uids (and equal gids) handed to running executions one each when the plugin runs as
    /// root and no `runAsUser` is set; default 70000-79999.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_uid_range: Option<IdRange>,
    /// `pids.max` for jobs that set none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_pids_max: Option<u64>,
    /// The memory cap of a job whose request sets no `Resources.Memory` (default 1GB, what
    /// Bacalhau gives a job that asks for none); 0 means no cap.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_memory: Option<super::datasize::ByteSize>,
    /// `RLIMIT_NOFILE` for jobs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nofile_limit: Option<u64>,
    /// The size in bytes of each of a jailed job's private tmpfs mounts (`/tmp`, `/dev/shm`);
    /// default: the job's memory limit, else 1 GiB; 0: the kernel's default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tmpfs_size: Option<u64>,
    /// Bytes an execution's log (`raw_container_logs`) holds at most (default 256 MiB); the
    /// limit of one execution's log is what its results files may keep (at least 16 MiB), at
    /// most this. Past it, a marker says output was dropped; the results files are unaffected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_log_length: Option<u64>,
    /// Host paths inputs may come from (Bacalhau's `AllowListedLocalPaths`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow_listed_local_paths: Vec<PathBuf>,
    /// The `nvidia-smi` program GPUs are detected with (default: found in `PATH`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nvidia_smi: Option<PathBuf>,
    /// Where the NVIDIA device nodes are (`nvidiactl`, `nvidia<minor>`, ...; default `/dev`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpu_device_dir: Option<PathBuf>,
    /// The private IPv4 range `Network: Bridge` jobs get their addresses from (the bridge
    /// has the first; default `10.213.0.0/16`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bridge_subnet: Option<String>,
    /// A hosts(5) file the HTTP network's proxy looks names up in before the system resolver
    /// (private names; tests).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_hosts_file: Option<PathBuf>,
    /// Keys for other engines, kept as given.
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

/// An inclusive range of numeric ids.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct IdRange {
    pub min: u32,
    pub max: u32,
}

/// `initialize` params (by name; by position: `[protocolVersions, host, config]`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct InitializeParams {
    pub protocol_versions: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<HostInfo>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<PluginConfig>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct PluginInfo {
    pub name: String,
    pub version: String,
}

/// How this host's cgroups are laid out.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum CgroupMode {
    V2,
    V1,
    /// v1 controllers plus a controller-less v2 tree (used for tracking and `cgroup.kill`).
    Hybrid,
    /// No usable cgroups: rlimits and process-group kill only.
    #[default]
    None,
}

/// A mechanism that confines a job to its allocated GPUs' device nodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum GpuDeviceControl {
    /// A v1 `devices` cgroup per job denies every NVIDIA GPU node (char major 195) but the
    /// allocated ones, whatever the job's filesystem.
    DevicesCgroup,
    /// The job's private `/dev` holds only the allocated GPUs' nodes (and the control nodes).
    PrivateDev,
}

/// Which limits are enforced for real on this host.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct EnforcedLimits {
    pub cpu: bool,
    pub memory: bool,
    pub pids: bool,
    pub disk: bool,
}

/// What this plugin can honour on this host; a bid strategy declines what it cannot.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Capabilities {
    pub cgroup_mode: CgroupMode,
    pub limits: EnforcedLimits,
    /// `Network: None` gets its own network namespace.
    pub network_isolation: bool,
    /// The `Network.Type`s this host runs jobs with (`Default` included when it maps to one
    /// of them); the others are declined and refused. Empty from a plugin that predates it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub networks: Vec<super::bacalhau::Network>,
    /// Inputs and outputs are mounted at their paths in a private mount namespace.
    pub filesystem_isolation: bool,
    /// User jobs run as, when not the plugin's own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_as_user: Option<String>,
    #[serde(default)]
    pub gpus: Vec<Gpu>,
    /// What keeps a job away from the GPUs it was not allocated (empty: nothing does).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gpu_device_control: Vec<GpuDeviceControl>,
    /// Human-readable notes on anything degraded, and why.
    #[serde(default)]
    pub notes: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct InitializeResult {
    pub protocol_version: String,
    /// The engine type this plugin serves (`native`).
    pub engine: String,
    pub plugin: PluginInfo,
    pub capabilities: Capabilities,
}

/// `shutdown` params.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ShutdownParams {
    /// Cancel running executions first (default: leave them running under their monitors).
    #[serde(default)]
    pub cancel_running: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum LogStream {
    Stdout,
    Stderr,
}

impl LogStream {
    /// Docker's stream byte.
    pub fn as_u8(self) -> u8 {
        match self {
            LogStream::Stdout => 1,
            LogStream::Stderr => 2,
        }
    }
}

/// One `executor_logs` notification item.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum LogEvent {
    /// Output as the job wrote it.
    Data {
        stream: LogStream,
        /// When the monitor read it: RFC 3339, UTC, nine fractional digits.
        timestamp: String,
        /// The exact bytes, base64 (standard alphabet, padded).
        data: String,
        /// Byte offset of this chunk in the execution's log.
        offset: u64,
        /// Offset right after it: pass as `Position` to resume without loss or repeat.
        next: u64,
    },
    /// The stream is over (the job ended, or the history asked for was sent); nothing follows.
    End { offset: u64 },
}

impl LogEvent {
    pub fn data(
        stream: LogStream,
        timestamp: String,
        bytes: &[u8],
        offset: u64,
        next: u64,
    ) -> Self {
        LogEvent::Data {
            stream,
            timestamp,
            data: base64::engine::general_purpose::STANDARD.encode(bytes),
            offset,
            next,
        }
    }

    /// The decoded bytes of a data event (empty for `end` or undecodable data).
    pub fn data_bytes(&self) -> Vec<u8> {
        match self {
            LogEvent::Data { data, .. } => base64::engine::general_purpose::STANDARD
                .decode(data)
                .unwrap_or_default(),
            LogEvent::End { .. } => Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ExecutionState {
    Starting,
    Running,
    Completed,
    Failed,
    Cancelled,
}

/// One entry of `executor_list`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ExecutionSummary {
    pub execution_id: String,
    pub job_id: String,
    pub state: ExecutionState,
    /// RFC 3339.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_msg: Option<String>,
}

/// Live usage of a running execution; `null` fields cannot be measured on this host.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ExecutionStats {
    pub execution_id: String,
    pub memory_current_bytes: Option<u64>,
    pub memory_peak_bytes: Option<u64>,
    pub cpu_seconds: Option<f64>,
    pub pids: Option<u64>,
    pub throttled_periods: Option<u64>,
    pub throttled_seconds: Option<f64>,
}
