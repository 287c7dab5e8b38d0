//! `initialize` and `shutdown`: our own messages, camelCase keys, exact case.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::resources::Gpu;

/// The protocol version this crate speaks.
pub const PROTOCOL_VERSION: &str = "1";
/// Every version this crate can speak, newest first.
pub const SUPPORTED_PROTOCOL_VERSIONS: &[&str] = &[PROTOCOL_VERSION];

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct InitializeParams {
    /// Versions the host can speak; the plugin picks one.
    pub protocol_versions: Vec<String>,
    #[serde(default)]
    pub host: HostInfo,
    #[serde(default)]
    pub config: PluginConfig,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HostInfo {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub version: String,
}

/// Per-engine configuration from the host. Unset keys take the plugin's defaults.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", default)]
pub struct PluginConfig {
    /// The plugin's state root.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state_dir: Option<PathBuf>,
    /// Seconds a finished execution stays queryable.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retention: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_retained: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cgroup_base: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub run_as_user: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub default_pids_max: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nofile_limit: Option<u64>,
    /// Host paths inputs may bind from (Bacalhau's `Compute.AllowListedLocalPaths`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub allow_listed_local_paths: Vec<PathBuf>,
    /// Engine keys beyond these, kept verbatim.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct InitializeResult {
    pub protocol_version: String,
    /// The engine name this plugin serves (e.g. `native`).
    pub engine: String,
    pub plugin: PluginInfo,
    pub capabilities: Capabilities,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PluginInfo {
    pub name: String,
    pub version: String,
}

/// What this host can really enforce.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Capabilities {
    pub cgroup_mode: CgroupMode,
    pub limits: EnforcedLimits,
    pub network_isolation: bool,
    pub filesystem_isolation: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_as_user: Option<String>,
    #[serde(default)]
    pub gpus: Vec<Gpu>,
    /// Human-readable caveats (e.g. why a limit is not enforced).
    #[serde(default)]
    pub notes: Vec<String>,
}

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum CgroupMode {
    V2,
    V1,
    Hybrid,
    #[default]
    None,
}

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema,
)]
pub struct EnforcedLimits {
    pub cpu: bool,
    pub memory: bool,
    pub pids: bool,
    pub disk: bool,
}

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "camelCase", default)]
pub struct ShutdownParams {
    /// Cancel running executions instead of leaving them to their monitors.
    pub cancel_running: bool,
}
