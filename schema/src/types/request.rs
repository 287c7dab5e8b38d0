//! `executor.RunCommandRequest` and `executor.OutputLimits`.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::casefold::{empty_as_null, null_as_default};
use super::datasize::ByteSize;
use super::network::NetworkConfig;
use super::resources::Resources;
use super::spec::{ResultPath, SpecConfig};
use super::storage::PreparedStorage;

/// Everything an executor needs to run one execution.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(remote = "Self", default)]
pub struct RunCommandRequest {
    #[serde(rename = "JobID")]
    pub job_id: String,
    #[serde(rename = "ExecutionID")]
    pub execution_id: String,
    /// Allocated totals, GPUs included.
    #[serde(rename = "Resources")]
    pub resources: Option<Resources>,
    #[serde(rename = "Network")]
    pub network: Option<NetworkConfig>,
    #[serde(
        rename = "Outputs",
        serialize_with = "empty_as_null",
        deserialize_with = "null_as_default"
    )]
    #[schemars(with = "Option<Vec<ResultPath>>")]
    pub outputs: Vec<ResultPath>,
    #[serde(
        rename = "Inputs",
        serialize_with = "empty_as_null",
        deserialize_with = "null_as_default"
    )]
    #[schemars(with = "Option<Vec<PreparedStorage>>")]
    pub inputs: Vec<PreparedStorage>,
    /// Where results go when `ExecutionDir` is empty (Bacalhau before v1.8.0).
    #[serde(rename = "ResultsDir")]
    pub results_dir: String,
    /// Newer Bacalhau: results in `<ExecutionDir>/results`, logs in `<ExecutionDir>/logs`.
    /// Omitted when empty because older Go hosts do not know it.
    #[serde(rename = "ExecutionDir", skip_serializing_if = "String::is_empty")]
    pub execution_dir: String,
    #[serde(rename = "EngineParams")]
    pub engine_params: Option<SpecConfig>,
    #[serde(rename = "OutputLimits")]
    pub output_limits: OutputLimits,
    /// Job environment; keys keep their case.
    #[serde(
        rename = "Env",
        skip_serializing_if = "BTreeMap::is_empty",
        deserialize_with = "null_as_default"
    )]
    pub env: BTreeMap<String, String>,
    /// Seconds, may be fractional: a Go context deadline cannot cross the pipe, so the host
    /// sends it here.
    #[serde(rename = "ExecutionTimeout", skip_serializing_if = "Option::is_none")]
    pub execution_timeout: Option<f64>,
}

go_json!(
    RunCommandRequest,
    [
        "JobID",
        "ExecutionID",
        "Resources",
        "Network",
        "Outputs",
        "Inputs",
        "ResultsDir",
        "ExecutionDir",
        "EngineParams",
        "OutputLimits",
        "Env",
        "ExecutionTimeout",
    ]
);

impl RunCommandRequest {
    /// Where result files go: `<ExecutionDir>/results` when `ExecutionDir` is set, else
    /// `ResultsDir`.
    pub fn results_path(&self) -> PathBuf {
        if self.execution_dir.is_empty() {
            PathBuf::from(&self.results_dir)
        } else {
            PathBuf::from(&self.execution_dir).join("results")
        }
    }

    /// Where raw logs go (`<ExecutionDir>/logs/raw_container_logs`), when `ExecutionDir` is set.
    pub fn logs_path(&self) -> Option<PathBuf> {
        if self.execution_dir.is_empty() {
            None
        } else {
            Some(
                PathBuf::from(&self.execution_dir)
                    .join("logs")
                    .join("raw_container_logs"),
            )
        }
    }
}

/// How much of stdout/stderr is kept in files and returned inline.
///
/// Defaults are Bacalhau's fixed system values (1GB per file, 2KB returned). Decoding choices:
/// a request without `OutputLimits` (or with `null`) gets all four defaults; inside a present
/// object a missing key also takes its default, while a key present with `0` means zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(remote = "Self", default)]
pub struct OutputLimits {
    #[serde(rename = "MaxStdoutFileLength")]
    pub max_stdout_file_length: ByteSize,
    #[serde(rename = "MaxStdoutReturnLength")]
    pub max_stdout_return_length: ByteSize,
    #[serde(rename = "MaxStderrFileLength")]
    pub max_stderr_file_length: ByteSize,
    #[serde(rename = "MaxStderrReturnLength")]
    pub max_stderr_return_length: ByteSize,
}

go_json!(
    OutputLimits,
    [
        "MaxStdoutFileLength",
        "MaxStdoutReturnLength",
        "MaxStderrFileLength",
        "MaxStderrReturnLength",
    ]
);

impl OutputLimits {
    pub const DEFAULT_FILE_LENGTH: ByteSize = ByteSize::GB;
    pub const DEFAULT_RETURN_LENGTH: ByteSize = ByteSize(2 * 1024);
}

impl Default for OutputLimits {
    fn default() -> Self {
        OutputLimits {
            max_stdout_file_length: Self::DEFAULT_FILE_LENGTH,
            max_stdout_return_length: Self::DEFAULT_RETURN_LENGTH,
            max_stderr_file_length: Self::DEFAULT_FILE_LENGTH,
            max_stderr_return_length: Self::DEFAULT_RETURN_LENGTH,
        }
    }
}
