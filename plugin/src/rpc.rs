//! The `native` engine's JSON-RPC methods: the handshake and the executor calls, delegated to
//! the execution registry.

use executor_schema::api::ExecutorApiServer;
use executor_schema::errors::{ErrorCode, ExecutorError};
use executor_schema::{
    BidStrategyRequest, BidStrategyResponse, Capabilities, ExecutionStats, ExecutionSummary,
    HostInfo, InitializeResult, LogStreamRequest, PluginConfig, PluginInfo, Resources,
    RunCommandRequest, RunCommandResult, SUPPORTED_PROTOCOL_VERSIONS,
};
use jsonrpsee::core::{async_trait, SubscriptionResult};
use jsonrpsee::types::ErrorObjectOwned;
use jsonrpsee::PendingSubscriptionSink;
use std::path::PathBuf;
use tokio::sync::OnceCell;

pub const ENGINE: &str = "native";
pub const PLUGIN_NAME: &str = "executor-native";

type RpcResult<T> = Result<T, ErrorObjectOwned>;

/// What `initialize` settled; set once.
struct Session {
    host: HostInfo,
    config: PluginConfig,
    state_dir: PathBuf,
}

pub struct NativePlugin {
    session: OnceCell<Session>,
}

impl Default for NativePlugin {
    fn default() -> Self {
        Self::new()
    }
}

impl NativePlugin {
    pub fn new() -> Self {
        NativePlugin {
            session: OnceCell::new(),
        }
    }

    fn session(&self) -> Result<&Session, ExecutorError> {
        self.session.get().ok_or_else(not_initialized)
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::default()
    }
}

fn not_initialized() -> ExecutorError {
    ExecutorError::new(
        ErrorCode::NotInitialized,
        "plugin not initialized: call `initialize` first",
    )
}

fn not_implemented(method: &str) -> ErrorObjectOwned {
    ExecutorError::unsupported(format!("{method} is not implemented yet by {PLUGIN_NAME}")).into()
}

/// The default state root: `/var/lib/executor-plugins/<engine>` as root, else under
/// `$XDG_STATE_HOME` (or `~/.local/state`).
pub fn default_state_dir(engine: &str) -> PathBuf {
    if nix::unistd::geteuid().is_root() {
        return PathBuf::from("/var/lib/executor-plugins").join(engine);
    }
    let base = std::env::var_os("XDG_STATE_HOME")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/state")))
        .unwrap_or_else(std::env::temp_dir);
    base.join("executor-plugins").join(engine)
}

/// Pick the newest version both sides speak.
pub fn negotiate(offered: &[String]) -> Result<&'static str, ExecutorError> {
    SUPPORTED_PROTOCOL_VERSIONS
        .iter()
        .rev()
        .find(|v| offered.iter().any(|o| o == *v))
        .copied()
        .ok_or_else(|| {
            ExecutorError::unsupported(format!(
                "no common protocol version: the host speaks {offered:?}, {PLUGIN_NAME} speaks {:?}",
                SUPPORTED_PROTOCOL_VERSIONS
            ))
        })
}

#[async_trait]
impl ExecutorApiServer for NativePlugin {
    async fn initialize(
        &self,
        protocol_versions: Vec<String>,
        host: Option<HostInfo>,
        config: Option<PluginConfig>,
    ) -> RpcResult<InitializeResult> {
        let version = negotiate(&protocol_versions)?;
        let config = config.unwrap_or_default();
        let state_dir = config
            .state_dir
            .clone()
            .unwrap_or_else(|| default_state_dir(ENGINE));
        if !state_dir.is_absolute() {
            return Err(
                ExecutorError::invalid_params(vec![executor_schema::FieldProblem {
                    field: "config.stateDir".into(),
                    message: format!("must be an absolute path, got {}", state_dir.display()),
                }])
                .into(),
            );
        }
        std::fs::create_dir_all(&state_dir).map_err(|e| {
            ExecutorError::internal(format!(
                "cannot create the state directory {}: {e}; set config.stateDir to a writable directory",
                state_dir.display()
            ))
        })?;
        let host = host.unwrap_or_default();
        tracing::info!(host = %host.name, host_version = %host.version, state_dir = %state_dir.display(), "initialized");
        let session = Session {
            host,
            config,
            state_dir,
        };
        if self.session.set(session).is_err() {
            return Err(ExecutorError::new(
                ErrorCode::InvalidParams,
                "already initialized: `initialize` may be called once per plugin process",
            )
            .into());
        }
        Ok(InitializeResult {
            protocol_version: version.to_string(),
            engine: ENGINE.to_string(),
            plugin: PluginInfo {
                name: PLUGIN_NAME.to_string(),
                version: env!("CARGO_PKG_VERSION").to_string(),
            },
            capabilities: self.capabilities(),
        })
    }

    async fn shutdown(&self, cancel_running: Option<bool>) -> RpcResult<()> {
        tracing::info!(
            cancel_running = cancel_running.unwrap_or(false),
            "shutting down"
        );
        Ok(())
    }

    async fn is_installed(&self) -> RpcResult<bool> {
        let session = self.session()?;
        Ok(session.state_dir.is_dir())
    }

    async fn should_bid(&self, _request: BidStrategyRequest) -> RpcResult<BidStrategyResponse> {
        self.session()?;
        Err(not_implemented("executor_shouldBid"))
    }

    async fn should_bid_based_on_usage(
        &self,
        _request: BidStrategyRequest,
        _usage: Resources,
    ) -> RpcResult<BidStrategyResponse> {
        self.session()?;
        Err(not_implemented("executor_shouldBidBasedOnUsage"))
    }

    async fn start(&self, _request: RunCommandRequest) -> RpcResult<()> {
        self.session()?;
        Err(not_implemented("executor_start"))
    }

    async fn run(&self, _request: RunCommandRequest) -> RpcResult<RunCommandResult> {
        self.session()?;
        Err(not_implemented("executor_run"))
    }

    async fn wait(&self, _execution_id: String) -> RpcResult<RunCommandResult> {
        self.session()?;
        Err(not_implemented("executor_wait"))
    }

    async fn cancel(&self, _execution_id: String) -> RpcResult<()> {
        self.session()?;
        Err(not_implemented("executor_cancel"))
    }

    async fn list(&self) -> RpcResult<Vec<ExecutionSummary>> {
        self.session()?;
        Err(not_implemented("executor_list"))
    }

    async fn stats(&self, _execution_id: String) -> RpcResult<ExecutionStats> {
        self.session()?;
        Err(not_implemented("executor_stats"))
    }

    async fn subscribe_logs(
        &self,
        pending: PendingSubscriptionSink,
        _request: LogStreamRequest,
    ) -> SubscriptionResult {
        if let Err(e) = self.session() {
            pending.reject(ErrorObjectOwned::from(e)).await;
            return Ok(());
        }
        pending
            .reject(not_implemented("executor_subscribeLogs"))
            .await;
        Ok(())
    }
}
