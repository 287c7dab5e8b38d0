//! The JSON-RPC API between a host and a plugin: one `jsonrpsee` trait gives both the plugin's
//! server side (`ExecutorApiServer`) and the host's typed client (`ExecutorApiClient`).
//!
//! Method names are the wire contract (schema/PROTOCOL.md, section 6 "Methods"); params are
//! accepted by position and by name (the argument names below, camelCase on the wire).

use jsonrpsee::core::SubscriptionResult;
use jsonrpsee::proc_macros::rpc;
use jsonrpsee::types::ErrorObjectOwned;

use crate::types::{
    BidStrategyRequest, BidStrategyResponse, ExecutionStats, ExecutionSummary, HostInfo,
    InitializeResult, LogEvent, LogStreamRequest, PluginConfig, Resources, RunCommandRequest,
    RunCommandResult,
};

pub const METHOD_INITIALIZE: &str = "initialize";
pub const METHOD_SHUTDOWN: &str = "shutdown";
pub const METHOD_IS_INSTALLED: &str = "executor_isInstalled";
pub const METHOD_SHOULD_BID: &str = "executor_shouldBid";
pub const METHOD_SHOULD_BID_USAGE: &str = "executor_shouldBidBasedOnUsage";
pub const METHOD_START: &str = "executor_start";
pub const METHOD_RUN: &str = "executor_run";
pub const METHOD_WAIT: &str = "executor_wait";
pub const METHOD_CANCEL: &str = "executor_cancel";
pub const METHOD_LIST: &str = "executor_list";
pub const METHOD_STATS: &str = "executor_stats";
pub const METHOD_SUBSCRIBE_LOGS: &str = "executor_subscribeLogs";
pub const METHOD_UNSUBSCRIBE_LOGS: &str = "executor_unsubscribeLogs";
pub const NOTIFICATION_LOGS: &str = "executor_logs";

/// Every method name, for the protocol doc check.
pub const ALL_METHODS: [&str; 13] = [
    METHOD_INITIALIZE,
    METHOD_SHUTDOWN,
    METHOD_IS_INSTALLED,
    METHOD_SHOULD_BID,
    METHOD_SHOULD_BID_USAGE,
    METHOD_START,
    METHOD_RUN,
    METHOD_WAIT,
    METHOD_CANCEL,
    METHOD_LIST,
    METHOD_STATS,
    METHOD_SUBSCRIBE_LOGS,
    METHOD_UNSUBSCRIBE_LOGS,
];

#[rpc(server, client)]
pub trait ExecutorApi {
    /// Version negotiation and configuration; the first call a host makes.
    #[method(name = "initialize")]
    async fn initialize(
        &self,
        #[argument(rename = "protocolVersions")] protocol_versions: Vec<String>,
        host: Option<HostInfo>,
        config: Option<PluginConfig>,
    ) -> Result<InitializeResult, ErrorObjectOwned>;

    /// Answer `null`, then exit once the answer is written. Executions keep running under their
    /// monitors unless `cancelRunning` is true.
    #[method(name = "shutdown")]
    async fn shutdown(
        &self,
        #[argument(rename = "cancelRunning")] cancel_running: Option<bool>,
    ) -> Result<(), ErrorObjectOwned>;

    #[method(name = "executor_isInstalled")]
    async fn is_installed(&self) -> Result<bool, ErrorObjectOwned>;

    #[method(name = "executor_shouldBid")]
    async fn should_bid(
        &self,
        request: BidStrategyRequest,
    ) -> Result<BidStrategyResponse, ErrorObjectOwned>;

    #[method(name = "executor_shouldBidBasedOnUsage")]
    async fn should_bid_based_on_usage(
        &self,
        request: BidStrategyRequest,
        usage: Resources,
    ) -> Result<BidStrategyResponse, ErrorObjectOwned>;

    /// Returns once the job is running; setup errors are returned here.
    #[method(name = "executor_start")]
    async fn start(&self, request: RunCommandRequest) -> Result<(), ErrorObjectOwned>;

    /// Start, then wait for the result.
    #[method(name = "executor_run")]
    async fn run(&self, request: RunCommandRequest) -> Result<RunCommandResult, ErrorObjectOwned>;

    /// Pending until the execution ends; answers the stored result as often as asked after.
    #[method(name = "executor_wait")]
    async fn wait(
        &self,
        #[argument(rename = "executionId")] execution_id: String,
    ) -> Result<RunCommandResult, ErrorObjectOwned>;

    #[method(name = "executor_cancel")]
    async fn cancel(
        &self,
        #[argument(rename = "executionId")] execution_id: String,
    ) -> Result<(), ErrorObjectOwned>;

    #[method(name = "executor_list")]
    async fn list(&self) -> Result<Vec<ExecutionSummary>, ErrorObjectOwned>;

    #[method(name = "executor_stats")]
    async fn stats(
        &self,
        #[argument(rename = "executionId")] execution_id: String,
    ) -> Result<ExecutionStats, ErrorObjectOwned>;

    /// Log history and/or follow as `executor_logs` notifications, ending with an `end` event.
    #[subscription(
        name = "executor_subscribeLogs" => "executor_logs",
        unsubscribe = "executor_unsubscribeLogs",
        item = LogEvent
    )]
    async fn subscribe_logs(&self, request: LogStreamRequest) -> SubscriptionResult;
}
