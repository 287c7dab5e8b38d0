//! The engine boundary: what an engine decides (how a request becomes a job process, what it
//! can bid on) apart from what every plugin shares (stdio server, registry, monitor, results,
//! logs, sandbox). Each engine is a binary of its own that hands its [`Engine`] to
//! [`crate::entry::plugin_main`]; `native` is one implementation ([`Native`]).

use std::path::{Path, PathBuf};

use executor_schema::native::NativeEngineSpec;
use executor_schema::{
    BidStrategyRequest, BidStrategyResponse, Capabilities, ExecutorError, FieldProblem, Network,
    PluginConfig, RunCommandRequest, RunCommandResult,
};
use jsonrpsee::core::async_trait;

use crate::registry::InputSpec;

/// What an engine is told about the plugin and the start it plans.
pub struct PlanContext<'a> {
    /// The plugin's state root (`initialize.config.stateDir`): trusted, private.
    pub state_dir: &'a Path,
    pub config: &'a PluginConfig,
    pub capabilities: &'a Capabilities,
    /// The uid the job will run as, when the plugin is root and leased it one of its own.
    pub job_uid: Option<u32>,
}

/// How a validated request becomes the job's process. Everything else (inputs and outputs at
/// their targets, limits, network, user, logs, results) the runtime derives from the request as
/// for every engine.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct JobPlan {
    /// The program and its arguments. With `self_exec`, `argv[0]` is only a name.
    pub argv: Vec<String>,
    /// `K=V` entries over the request's `Env`.
    pub engine_env: Vec<String>,
    pub working_dir: Option<PathBuf>,
    /// Extra binds of the engine's own (files of the state root, say): not allow-listed, as
    /// the engine vouches for their sources.
    pub extra_binds: Vec<InputSpec>,
    /// Run the plugin's own binary (see [`crate::state::SandboxSpec::self_exec`]).
    pub self_exec: bool,
    /// The network the job gets instead of the request's (`None`: the request's).
    pub network: Option<Network>,
}

#[async_trait]
pub trait Engine: Send + Sync + 'static {
    /// The engine type it serves (`initialize`'s `engine`, `EngineParams.Type`).
    fn name(&self) -> &'static str;
    /// Its binary's name (`initialize`'s `plugin.name`).
    fn plugin_name(&self) -> &'static str;
    /// Validate a whole request; its engine params with the engine's decoder.
    fn validate(&self, request: &RunCommandRequest) -> Result<(), Vec<FieldProblem>>;
    /// The job's process for a request that [`Engine::validate`] accepted.
    async fn plan(
        &self,
        request: &RunCommandRequest,
        ctx: PlanContext<'_>,
    ) -> Result<JobPlan, ExecutorError>;
    /// Bacalhau's semantic bid: can this host run the job at all.
    fn should_bid(
        &self,
        request: &BidStrategyRequest,
        caps: &Capabilities,
        allow_listed: &[PathBuf],
    ) -> BidStrategyResponse;
    /// The host's capabilities as this engine offers them (a subset of networks, notes).
    fn capabilities(&self, detected: Capabilities) -> Capabilities {
        detected
    }
    /// The result as the engine reports it, from what the monitor recorded and the execution's
    /// state directory (where the engine may have left the job a file to report through).
    fn finish(&self, _exec_dir: &Path, result: RunCommandResult) -> RunCommandResult {
        result
    }
}

/// Engine `native`: the request's program runs as a process tree.
pub struct Native;

pub const NATIVE_PLUGIN_NAME: &str = "executor-native";

#[async_trait]
impl Engine for Native {
    fn name(&self) -> &'static str {
        executor_schema::native::ENGINE_NATIVE
    }

    fn plugin_name(&self) -> &'static str {
        NATIVE_PLUGIN_NAME
    }

    fn validate(&self, request: &RunCommandRequest) -> Result<(), Vec<FieldProblem>> {
        executor_schema::validate::validate_run_request(request).map(drop)
    }

    async fn plan(
        &self,
        request: &RunCommandRequest,
        _ctx: PlanContext<'_>,
    ) -> Result<JobPlan, ExecutorError> {
        let params = request.engine_params.clone().unwrap_or_default();
        let spec = NativeEngineSpec::from_spec_config(&params).map_err(|p| {
            ExecutorError::invalid_params(p).with_execution(request.execution_id.clone())
        })?;
        Ok(JobPlan {
            argv: spec.argv(),
            working_dir: (!spec.working_directory.is_empty())
                .then(|| PathBuf::from(&spec.working_directory)),
            engine_env: spec.environment_variables,
            ..JobPlan::default()
        })
    }

    fn should_bid(
        &self,
        request: &BidStrategyRequest,
        caps: &Capabilities,
        allow_listed: &[PathBuf],
    ) -> BidStrategyResponse {
        crate::bid::semantic(request, caps, allow_listed)
    }
}
