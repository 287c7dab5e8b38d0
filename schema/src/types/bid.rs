//! `bidstrategy.BidStrategyRequest`/`BidStrategyResponse` and the parts of `models.Job` a bid
//! strategy reads. Untyped job keys are preserved so a job round-trips unchanged.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::casefold::{empty_as_null, is_false, is_zero_i64, null_as_default};
use super::network::NetworkConfig;
use super::resources::ResourcesConfig;
use super::spec::{ResultPath, SpecConfig};
use super::storage::InputSource;

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(remote = "Self", default)]
pub struct BidStrategyRequest {
    /// Sent by Bacalhau before v1.5.2 only.
    #[serde(rename = "NodeID", skip_serializing_if = "String::is_empty")]
    pub node_id: String,
    #[serde(rename = "Job")]
    pub job: Job,
}

go_json!(BidStrategyRequest, ["NodeID", "Job"]);

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(remote = "Self", default)]
pub struct BidStrategyResponse {
    #[serde(rename = "ShouldBid")]
    pub should_bid: bool,
    /// Only Bacalhau before v1.5.2 knows it.
    #[serde(rename = "ShouldWait", skip_serializing_if = "is_false")]
    pub should_wait: bool,
    #[serde(rename = "Reason")]
    pub reason: String,
}

go_json!(BidStrategyResponse, ["ShouldBid", "ShouldWait", "Reason"]);

impl BidStrategyResponse {
    /// Go's `NewBidResponse`: `this node does ` + (`not ` unless bidding) + `text`.
    pub fn new(should_bid: bool, text: impl AsRef<str>) -> Self {
        let not = if should_bid { "" } else { "not " };
        BidStrategyResponse {
            should_bid,
            should_wait: false,
            reason: format!("this node does {not}{}", text.as_ref()),
        }
    }
}

/// `models.Job`, typed only where a bid strategy looks.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(remote = "Self", default)]
pub struct Job {
    #[serde(rename = "ID")]
    pub id: String,
    #[serde(rename = "Name")]
    pub name: String,
    #[serde(rename = "Namespace")]
    pub namespace: String,
    /// `batch`, `ops`, `daemon`, `service`.
    #[serde(rename = "Type")]
    pub job_type: String,
    #[serde(rename = "Count")]
    pub count: i64,
    #[serde(
        rename = "Tasks",
        serialize_with = "empty_as_null",
        deserialize_with = "null_as_default"
    )]
    #[schemars(with = "Option<Vec<Task>>")]
    pub tasks: Vec<Task>,
    /// Every other key of the job, kept verbatim.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

go_json!(Job, ["ID", "Name", "Namespace", "Type", "Count", "Tasks"]);

impl Job {
    /// Bacalhau jobs have exactly one task today.
    pub fn task(&self) -> Option<&Task> {
        self.tasks.first()
    }
}

/// `models.Task`, typed only where a bid strategy or executor looks.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(remote = "Self", default)]
pub struct Task {
    #[serde(rename = "Name")]
    pub name: String,
    #[serde(rename = "Engine")]
    pub engine: Option<SpecConfig>,
    #[serde(
        rename = "Env",
        skip_serializing_if = "BTreeMap::is_empty",
        deserialize_with = "null_as_default"
    )]
    pub env: BTreeMap<String, String>,
    #[serde(
        rename = "InputSources",
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "null_as_default"
    )]
    pub input_sources: Vec<InputSource>,
    #[serde(
        rename = "ResultPaths",
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "null_as_default"
    )]
    pub result_paths: Vec<ResultPath>,
    #[serde(rename = "Resources")]
    pub resources: ResourcesConfig,
    #[serde(rename = "Network")]
    pub network: Option<NetworkConfig>,
    #[serde(rename = "Timeouts")]
    pub timeouts: TimeoutConfig,
    /// Every other key of the task, kept verbatim.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

go_json!(
    Task,
    [
        "Name",
        "Engine",
        "Env",
        "InputSources",
        "ResultPaths",
        "Resources",
        "Network",
        "Timeouts",
    ]
);

/// `models.TimeoutConfig`: whole seconds.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(remote = "Self", default)]
pub struct TimeoutConfig {
    #[serde(rename = "ExecutionTimeout", skip_serializing_if = "is_zero_i64")]
    pub execution_timeout: i64,
    #[serde(rename = "QueueTimeout", skip_serializing_if = "is_zero_i64")]
    pub queue_timeout: i64,
    #[serde(rename = "TotalTimeout", skip_serializing_if = "is_zero_i64")]
    pub total_timeout: i64,
}

go_json!(
    TimeoutConfig,
    ["ExecutionTimeout", "QueueTimeout", "TotalTimeout"]
);

impl TimeoutConfig {
    /// Go's `GetExecutionTimeout`: `ExecutionTimeout` if positive, else `TotalTimeout`.
    pub fn effective_execution_timeout(&self) -> i64 {
        if self.execution_timeout > 0 {
            self.execution_timeout
        } else {
            self.total_timeout
        }
    }
}
