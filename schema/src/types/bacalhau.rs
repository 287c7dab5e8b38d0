//! Bacalhau's own types, with the keys its Go code writes.

use std::collections::BTreeMap;
use std::path::PathBuf;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::datasize::ByteSize;
use super::go_json;

type JsonMap = serde_json::Map<String, serde_json::Value>;

fn is_zero_u64(v: &u64) -> bool {
    *v == 0
}
fn is_zero_f64(v: &f64) -> bool {
    *v == 0.0
}
fn is_zero_i64(v: &i64) -> bool {
    *v == 0
}

/// Go encodes a nil slice as `null`; Bacalhau's own hosts send that for a request without
/// outputs or inputs, so we write the same.
fn empty_as_null<S: serde::Serializer, T: Serialize>(v: &[T], s: S) -> Result<S::Ok, S::Error> {
    if v.is_empty() {
        s.serialize_none()
    } else {
        s.collect_seq(v)
    }
}

/// `models.RunCommandResult`. Note Bacalhau's lower-case `stderr` key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(remote = "Self")]
pub struct RunCommandResult {
    #[serde(rename = "Stdout", default)]
    pub stdout: String,
    #[serde(rename = "StdoutTruncated", default)]
    pub stdout_truncated: bool,
    #[serde(rename = "stderr", default)]
    pub stderr: String,
    #[serde(rename = "StderrTruncated", default)]
    pub stderr_truncated: bool,
    /// Exit status; 128+N when killed by signal N; -1 when the job never finished on its own.
    #[serde(rename = "ExitCode", default)]
    pub exit_code: i64,
    /// Empty unless a system failure prevented a complete run (a non-zero exit is not one).
    #[serde(rename = "ErrorMsg", default)]
    pub error_msg: String,
}
go_json!(RunCommandResult { "Stdout", "StdoutTruncated", "stderr", "StderrTruncated", "ExitCode", "ErrorMsg" });

impl Default for RunCommandResult {
    /// As Go's `NewRunCommandResult`: exit code -1.
    fn default() -> Self {
        RunCommandResult {
            stdout: String::new(),
            stdout_truncated: false,
            stderr: String::new(),
            stderr_truncated: false,
            exit_code: -1,
            error_msg: String::new(),
        }
    }
}

impl RunCommandResult {
    /// As Go's `NewFailedResult`.
    pub fn failed(reason: impl Into<String>) -> Self {
        RunCommandResult {
            error_msg: reason.into(),
            ..Default::default()
        }
    }

    pub fn is_error(&self) -> bool {
        !self.error_msg.is_empty()
    }
}

/// `models.GPU`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(remote = "Self")]
pub struct Gpu {
    #[serde(rename = "Index", default)]
    pub index: u64,
    #[serde(rename = "Name", default)]
    pub name: String,
    /// `NVIDIA`, `AMD/ATI` or `Intel`.
    #[serde(rename = "Vendor", default)]
    pub vendor: String,
    /// MiB.
    #[serde(rename = "Memory", default)]
    pub memory: u64,
    #[serde(rename = "PCIAddress", default)]
    pub pci_address: String,
}
go_json!(Gpu { "Index", "Name", "Vendor", "Memory", "PCIAddress" });

/// `models.Resources`: allocated totals.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(remote = "Self")]
pub struct Resources {
    /// Cores (0.5 = half a core).
    #[serde(rename = "CPU", default, skip_serializing_if = "is_zero_f64")]
    pub cpu: f64,
    /// Bytes.
    #[serde(rename = "Memory", default, skip_serializing_if = "is_zero_u64")]
    pub memory: u64,
    /// Bytes.
    #[serde(rename = "Disk", default, skip_serializing_if = "is_zero_u64")]
    pub disk: u64,
    /// GPU count.
    #[serde(rename = "GPU", default, skip_serializing_if = "is_zero_u64")]
    pub gpu: u64,
    #[serde(rename = "GPUs", default, skip_serializing_if = "Vec::is_empty")]
    pub gpus: Vec<Gpu>,
}
go_json!(Resources { "CPU", "Memory", "Disk", "GPU", "GPUs" });

/// `models.Network`: serialized as its name.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, JsonSchema)]
pub enum Network {
    #[default]
    Default,
    None,
    Host,
    /// Deprecated alias of `Host`.
    Full,
    #[serde(rename = "HTTP")]
    Http,
    Bridge,
}

impl Network {
    pub const ALL: [Network; 6] = [
        Network::Default,
        Network::None,
        Network::Host,
        Network::Full,
        Network::Http,
        Network::Bridge,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Network::Default => "Default",
            Network::None => "None",
            Network::Host => "Host",
            Network::Full => "Full",
            Network::Http => "HTTP",
            Network::Bridge => "Bridge",
        }
    }
}

impl std::fmt::Display for Network {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Network {
    type Err = String;

    /// As Go's `UnmarshalText`: trimmed, any case.
    fn from_str(s: &str) -> Result<Self, String> {
        let t = s.trim();
        Network::ALL
            .into_iter()
            .find(|n| n.as_str().eq_ignore_ascii_case(t))
            .ok_or_else(|| format!("models.Network: unknown type '{s}'"))
    }
}

impl Serialize for Network {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Network {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // A number does not decode: Go's Network is a TextUnmarshaler.
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// `models.Port`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(remote = "Self")]
pub struct Port {
    #[serde(rename = "Name", default)]
    pub name: String,
    #[serde(rename = "Static", default, skip_serializing_if = "is_zero_i64")]
    pub static_port: i64,
    #[serde(rename = "Target", default, skip_serializing_if = "is_zero_i64")]
    pub target: i64,
    #[serde(
        rename = "HostNetwork",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub host_network: String,
}
go_json!(Port { "Name", "Static", "Target", "HostNetwork" });

/// `models.NetworkConfig`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(remote = "Self")]
pub struct NetworkConfig {
    #[serde(rename = "Type", default)]
    pub network_type: Network,
    #[serde(rename = "Domains", default, skip_serializing_if = "Vec::is_empty")]
    pub domains: Vec<String>,
    #[serde(rename = "Ports", default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<Port>,
}
go_json!(NetworkConfig { "Type", "Domains", "Ports" });

/// `models.ResultPath`: an output directory the job writes at `Path`, published as `Name`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(remote = "Self")]
pub struct ResultPath {
    #[serde(rename = "Name", default)]
    pub name: String,
    #[serde(rename = "Path", default)]
    pub path: String,
}
go_json!(ResultPath { "Name", "Path" });

/// `models.SpecConfig`: a type name and free-form parameters.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(remote = "Self")]
pub struct SpecConfig {
    #[serde(rename = "Type", default)]
    pub spec_type: String,
    #[serde(
        rename = "Params",
        default,
        skip_serializing_if = "serde_json::Map::is_empty"
    )]
    pub params: JsonMap,
}
go_json!(SpecConfig { "Type", "Params" });

impl SpecConfig {
    /// As Go's `IsType`: trimmed, any case.
    pub fn is_type(&self, t: &str) -> bool {
        self.spec_type.trim().eq_ignore_ascii_case(t.trim())
    }
}

/// `models.InputSource`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(remote = "Self")]
pub struct InputSource {
    #[serde(rename = "Source", default)]
    pub source: Option<SpecConfig>,
    #[serde(rename = "Alias", default)]
    pub alias: String,
    #[serde(rename = "Target", default)]
    pub target: String,
}
go_json!(InputSource { "Source", "Alias", "Target" });

/// `storage.StorageVolume`. Note the lower-case keys and the numeric `type`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(remote = "Self")]
pub struct StorageVolume {
    /// Connector type; only 1 (bind) exists.
    #[serde(rename = "type", default)]
    pub volume_type: u32,
    #[serde(rename = "readOnly", default)]
    pub read_only: bool,
    /// Host path (file or directory).
    #[serde(rename = "source", default)]
    pub source: String,
    /// Path the job sees.
    #[serde(rename = "target", default)]
    pub target: String,
}
go_json!(StorageVolume { "type", "readOnly", "source", "target" });

impl StorageVolume {
    pub const BIND: u32 = 1;
}

/// `storage.PreparedStorage`: an input already staged on this host.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(remote = "Self")]
pub struct PreparedStorage {
    #[serde(rename = "InputSource", default)]
    pub input_source: InputSource,
    #[serde(rename = "Volume", default)]
    pub volume: StorageVolume,
}
go_json!(PreparedStorage { "InputSource", "Volume" });

/// `executor.OutputLimits`. Sizes are datasize text (`"1GB"`) or integers. A request without
/// `OutputLimits` gets Bacalhau's defaults, and so does a key missing from a present object;
/// an explicit 0 means 0 (nothing kept).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(remote = "Self")]
pub struct OutputLimits {
    #[serde(rename = "MaxStdoutFileLength", default = "default_file_limit")]
    pub max_stdout_file_length: ByteSize,
    #[serde(rename = "MaxStdoutReturnLength", default = "default_return_limit")]
    pub max_stdout_return_length: ByteSize,
    #[serde(rename = "MaxStderrFileLength", default = "default_file_limit")]
    pub max_stderr_file_length: ByteSize,
    #[serde(rename = "MaxStderrReturnLength", default = "default_return_limit")]
    pub max_stderr_return_length: ByteSize,
}
go_json!(OutputLimits { "MaxStdoutFileLength", "MaxStdoutReturnLength", "MaxStderrFileLength", "MaxStderrReturnLength" });

fn default_file_limit() -> ByteSize {
    ByteSize(ByteSize::GB)
}
fn default_return_limit() -> ByteSize {
    ByteSize(2 * ByteSize::KB)
}

impl Default for OutputLimits {
    /// Bacalhau's system defaults: 1 GB per file, 2 KB returned in the result.
    fn default() -> Self {
        OutputLimits {
            max_stdout_file_length: default_file_limit(),
            max_stdout_return_length: default_return_limit(),
            max_stderr_file_length: default_file_limit(),
            max_stderr_return_length: default_return_limit(),
        }
    }
}

/// `executor.RunCommandRequest`, plus the newer `ExecutionDir` and `Env`, and our
/// `ExecutionTimeout` (a Go context deadline cannot cross a pipe).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(remote = "Self")]
pub struct RunCommandRequest {
    #[serde(rename = "JobID", default)]
    pub job_id: String,
    #[serde(rename = "ExecutionID", default)]
    pub execution_id: String,
    #[serde(rename = "Resources", default)]
    pub resources: Option<Resources>,
    #[serde(rename = "Network", default)]
    pub network: Option<NetworkConfig>,
    #[serde(rename = "Outputs", default, serialize_with = "empty_as_null")]
    #[schemars(with = "Option<Vec<ResultPath>>")]
    pub outputs: Vec<ResultPath>,
    #[serde(rename = "Inputs", default, serialize_with = "empty_as_null")]
    #[schemars(with = "Option<Vec<PreparedStorage>>")]
    pub inputs: Vec<PreparedStorage>,
    /// Where `stdout`, `stderr`, `exitCode` and the outputs go (older Bacalhau).
    #[serde(rename = "ResultsDir", default)]
    pub results_dir: String,
    /// Newer Bacalhau: results in `ExecutionDir/results`, log in `ExecutionDir/logs`.
    #[serde(
        rename = "ExecutionDir",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub execution_dir: String,
    #[serde(rename = "EngineParams", default)]
    pub engine_params: Option<SpecConfig>,
    #[serde(rename = "OutputLimits", default)]
    pub output_limits: OutputLimits,
    #[serde(rename = "Env", default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// Seconds (fractions allowed); the execution fails with `context deadline exceeded` after.
    #[serde(
        rename = "ExecutionTimeout",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub execution_timeout: Option<f64>,
}
go_json!(RunCommandRequest {
    "JobID", "ExecutionID", "Resources", "Network", "Outputs", "Inputs", "ResultsDir",
    "ExecutionDir", "EngineParams", "OutputLimits", "Env", "ExecutionTimeout"
});

impl RunCommandRequest {
    /// Where the result files go: `ExecutionDir/results` when given, else `ResultsDir`.
    pub fn results_path(&self) -> PathBuf {
        if self.execution_dir.is_empty() {
            PathBuf::from(&self.results_dir)
        } else {
            PathBuf::from(&self.execution_dir).join("results")
        }
    }

    /// Bacalhau's log location, when an `ExecutionDir` is given.
    pub fn logs_path(&self) -> Option<PathBuf> {
        (!self.execution_dir.is_empty()).then(|| {
            PathBuf::from(&self.execution_dir)
                .join("logs")
                .join("raw_container_logs")
        })
    }
}

/// `ExecutionLogsRequest` (older: `LogStreamRequest`), plus `Position` to resume a stream.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(remote = "Self")]
pub struct LogStreamRequest {
    #[serde(rename = "ExecutionID", default)]
    pub execution_id: String,
    #[serde(rename = "JobID", default, skip_serializing_if = "String::is_empty")]
    pub job_id: String,
    #[serde(rename = "NodeID", default, skip_serializing_if = "String::is_empty")]
    pub node_id: String,
    /// Only what is written from now on (no history).
    #[serde(rename = "Tail", default)]
    pub tail: bool,
    /// Keep the stream open and send output as it is written, until the job ends.
    #[serde(rename = "Follow", default)]
    pub follow: bool,
    /// Resume from this byte offset of the log (the `next` of the last event received).
    #[serde(rename = "Position", default, skip_serializing_if = "Option::is_none")]
    pub position: Option<u64>,
}
go_json!(LogStreamRequest { "ExecutionID", "JobID", "NodeID", "Tail", "Follow", "Position" });

/// `models.ResourcesConfig`: resources as the user wrote them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(remote = "Self")]
pub struct ResourcesConfig {
    #[serde(rename = "CPU", default, skip_serializing_if = "String::is_empty")]
    pub cpu: String,
    #[serde(rename = "Memory", default, skip_serializing_if = "String::is_empty")]
    pub memory: String,
    #[serde(rename = "Disk", default, skip_serializing_if = "String::is_empty")]
    pub disk: String,
    #[serde(rename = "GPU", default, skip_serializing_if = "String::is_empty")]
    pub gpu: String,
}
go_json!(ResourcesConfig { "CPU", "Memory", "Disk", "GPU" });

/// `models.TimeoutConfig` (seconds).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(remote = "Self")]
pub struct TimeoutConfig {
    #[serde(
        rename = "ExecutionTimeout",
        default,
        skip_serializing_if = "is_zero_i64"
    )]
    pub execution_timeout: i64,
    #[serde(rename = "QueueTimeout", default, skip_serializing_if = "is_zero_i64")]
    pub queue_timeout: i64,
    #[serde(rename = "TotalTimeout", default, skip_serializing_if = "is_zero_i64")]
    pub total_timeout: i64,
}
go_json!(TimeoutConfig { "ExecutionTimeout", "QueueTimeout", "TotalTimeout" });

/// `models.Task`, typed where an executor looks; every other key is kept as is.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(remote = "Self")]
pub struct Task {
    #[serde(rename = "Name", default)]
    pub name: String,
    #[serde(rename = "Engine", default)]
    pub engine: Option<SpecConfig>,
    #[serde(rename = "Env", default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    #[serde(
        rename = "InputSources",
        default,
        skip_serializing_if = "Vec::is_empty"
    )]
    pub input_sources: Vec<InputSource>,
    #[serde(rename = "ResultPaths", default, skip_serializing_if = "Vec::is_empty")]
    pub result_paths: Vec<ResultPath>,
    #[serde(rename = "Resources", default)]
    pub resources: ResourcesConfig,
    #[serde(rename = "Network", default)]
    pub network: Option<NetworkConfig>,
    #[serde(rename = "Timeouts", default)]
    pub timeouts: Option<TimeoutConfig>,
    #[serde(flatten)]
    pub extra: JsonMap,
}
go_json!(Task keep_unknown { "Name", "Engine", "Env", "InputSources", "ResultPaths", "Resources", "Network", "Timeouts" });

/// `models.Job`, typed where an executor looks; every other key is kept as is.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(remote = "Self")]
pub struct Job {
    #[serde(rename = "ID", default)]
    pub id: String,
    #[serde(rename = "Name", default)]
    pub name: String,
    #[serde(
        rename = "Namespace",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub namespace: String,
    #[serde(rename = "Type", default)]
    pub job_type: String,
    #[serde(rename = "Count", default)]
    pub count: i64,
    #[serde(rename = "Tasks", default, serialize_with = "empty_as_null")]
    #[schemars(with = "Option<Vec<Task>>")]
    pub tasks: Vec<Task>,
    #[serde(flatten)]
    pub extra: JsonMap,
}
go_json!(Job keep_unknown { "ID", "Name", "Namespace", "Type", "Count", "Tasks" });

impl Job {
    /// The job's task (Bacalhau jobs have one).
    pub fn task(&self) -> Option<&Task> {
        self.tasks.first()
    }
}

/// `bidstrategy.BidStrategyRequest`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(remote = "Self")]
pub struct BidStrategyRequest {
    #[serde(rename = "NodeID", default, skip_serializing_if = "String::is_empty")]
    pub node_id: String,
    #[serde(rename = "Job", default)]
    pub job: Job,
}
go_json!(BidStrategyRequest { "NodeID", "Job" });

/// `bidstrategy.BidStrategyResponse` (with `ShouldWait` from older Bacalhau).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(remote = "Self")]
pub struct BidStrategyResponse {
    #[serde(rename = "ShouldBid", default)]
    pub should_bid: bool,
    /// The job would fit once running executions end.
    #[serde(
        rename = "ShouldWait",
        default,
        skip_serializing_if = "std::ops::Not::not"
    )]
    pub should_wait: bool,
    #[serde(rename = "Reason", default)]
    pub reason: String,
}
go_json!(BidStrategyResponse { "ShouldBid", "ShouldWait", "Reason" });

impl BidStrategyResponse {
    /// As Go's `NewBidResponse`: `this node does [not ]<text>`.
    pub fn new(should_bid: bool, text: impl std::fmt::Display) -> Self {
        let not = if should_bid { "" } else { "not " };
        BidStrategyResponse {
            should_bid,
            should_wait: false,
            reason: format!("this node does {not}{text}"),
        }
    }
}
