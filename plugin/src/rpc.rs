//! A plugin's JSON-RPC methods: the handshake and the executor calls, delegated to the
//! execution registry; what is the engine's to decide is asked of its [`Engine`].

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use executor_schema::api::ExecutorApiServer;
use executor_schema::errors::{ErrorCode, ExecutorError};
use executor_schema::framing::MAX_MESSAGE_SIZE;
use executor_schema::{
    BidStrategyRequest, BidStrategyResponse, Capabilities, ExecutionState, ExecutionStats,
    ExecutionSummary, FieldProblem, HostInfo, InitializeResult, LogEvent, LogStream,
    LogStreamRequest, PluginConfig, PluginInfo, Resources, RunCommandRequest, RunCommandResult,
    SUPPORTED_PROTOCOL_VERSIONS,
};
use futures::StreamExt;
use jsonrpsee::core::{async_trait, SubscriptionResult};
use jsonrpsee::types::ErrorObjectOwned;
use jsonrpsee::{PendingSubscriptionSink, SubscriptionMessage};
use tokio::sync::OnceCell;

use crate::engine::{Engine, PlanContext};
use crate::logstore::{self, FollowOptions, LogItem};
use crate::monitor::CANCELLED_MSG;
use crate::outlet::Outlet;
use crate::registry::spec;
use crate::registry::{ExecInfo, LogSource, Phase, Registry, RegistryConfig};
use crate::sandbox::allowlist;
use crate::sandbox::user::UserPlan;
use crate::state::ResultRecord;

type RpcResult<T> = Result<T, ErrorObjectOwned>;

/// What `initialize` settled; set once.
struct Session {
    state_dir: PathBuf,
    config: PluginConfig,
    /// Detected once at `initialize`: what this host can enforce.
    capabilities: Capabilities,
    /// The GPUs in `capabilities`, with the device minors jobs' nodes are found by.
    gpus: Vec<crate::sandbox::gpu::HostGpu>,
    registry: Arc<Registry>,
}

impl Session {
    fn host(&self) -> spec::Host<'_> {
        spec::Host {
            state_dir: &self.state_dir,
            config: &self.config,
            capabilities: &self.capabilities,
            gpus: &self.gpus,
        }
    }
}

pub struct Plugin {
    engine: Arc<dyn Engine>,
    session: OnceCell<Session>,
    /// Where log notifications go, byte-bounded; without one they take jsonrpsee's sink.
    outlet: Option<Outlet>,
}

impl Plugin {
    /// The plugin of `engine`.
    pub fn new(engine: Arc<dyn Engine>) -> Self {
        Plugin {
            engine,
            session: OnceCell::new(),
            outlet: None,
        }
    }

    /// Sends log notifications through `outlet` (see `server::serve_with_outlet`).
    pub fn with_outlet(mut self, outlet: Outlet) -> Self {
        self.outlet = Some(outlet);
        self
    }

    fn session(&self) -> Result<&Session, ExecutorError> {
        self.session.get().ok_or_else(not_initialized)
    }

    fn capabilities(&self) -> Capabilities {
        self.session
            .get()
            .map(|s| s.capabilities.clone())
            .unwrap_or_default()
    }
}

fn not_initialized() -> ExecutorError {
    ExecutorError::new(
        ErrorCode::NotInitialized,
        "plugin not initialized: call `initialize` first",
    )
}

fn seconds(value: Option<f64>, field: &str, default: Duration) -> Result<Duration, ExecutorError> {
    match value {
        None => Ok(default),
        Some(v) => Duration::try_from_secs_f64(v).map_err(|_| {
            ExecutorError::invalid_params(vec![FieldProblem {
                field: format!("config.{field}"),
                message: format!("must be a number of seconds >= 0, got {v}"),
            }])
        }),
    }
}

fn registry_config(
    config: &PluginConfig,
    state_dir: &Path,
) -> Result<RegistryConfig, ExecutorError> {
    // Monitors re-execute this very binary. Not `current_exe()`: a pinned plugin runs from a
    // sealed memfd (the host executes exactly the bytes it hashed), whose path reads
    // `/memfd:... (deleted)` and cannot be executed. `/proc/self/exe`, resolved in the forked
    // child at exec, is the running image whether it came from a file or a memfd.
    let exe = PathBuf::from("/proc/self/exe");
    let mut rc = RegistryConfig::new(state_dir, exe);
    rc.retention = seconds(config.retention, "retention", rc.retention)?;
    rc.kill_grace = seconds(config.kill_grace, "killGrace", rc.kill_grace)?;
    if let Some(max) = config.max_retained {
        rc.max_retained = max;
    }
    rc.job_uids = crate::sandbox::user::job_uid_range(config)?;
    if let Some(subnet) = &config.bridge_subnet {
        crate::sandbox::bridge::Subnet::parse(subnet).map_err(|e| {
            ExecutorError::invalid_params(vec![FieldProblem {
                field: "config.bridgeSubnet".into(),
                message: e.to_string(),
            }])
        })?;
    }
    if let Some(path) = config.http_hosts_file.as_ref().filter(|p| !p.is_absolute()) {
        return Err(ExecutorError::invalid_params(vec![FieldProblem {
            field: "config.httpHostsFile".into(),
            message: format!("must be an absolute path, got {}", path.display()),
        }]));
    }
    let bad = allowlist::AllowList::problems(&config.allow_listed_local_paths);
    if !bad.is_empty() {
        return Err(ExecutorError::invalid_params(vec![FieldProblem {
            field: "config.allowListedLocalPaths".into(),
            message: bad.join("; "),
        }]));
    }
    Ok(rc)
}

/// Remove the veths and published ports of Bridge jobs whose monitors were killed (see
/// [`crate::sandbox::bridge::sweep`]); their namespaces went with their last process.
fn sweep_bridge(subnet: Option<&str>) {
    if crate::sandbox::bridge::unavailable().is_some() {
        return;
    }
    // This version's rules in force: a job's start only makes the table when it is missing.
    if let Err(e) = crate::sandbox::bridge::load_shared(subnet) {
        tracing::warn!("loading the bridge network's firewall table: {e}");
    }
    let (removed, problems) = crate::sandbox::bridge::sweep();
    for r in removed {
        tracing::info!("removed the leftover network of a killed monitor: {r}");
    }
    for p in problems {
        tracing::warn!("removing leftovers of killed monitors' networks: {p}");
    }
}

fn rfc3339_ms(ms: u64) -> String {
    let mut buf = [0u8; logstore::timestamp::TIMESTAMP_LEN];
    logstore::timestamp::format_unix(
        (ms / 1000) as i64,
        ((ms % 1000) * 1_000_000) as u32,
        &mut buf,
    );
    String::from_utf8_lossy(&buf).into_owned()
}

fn summary(info: ExecInfo) -> ExecutionSummary {
    let (state, finished): (ExecutionState, Option<&ResultRecord>) = match &info.phase {
        Phase::Starting => (ExecutionState::Starting, None),
        Phase::Running => (ExecutionState::Running, None),
        Phase::Finished(r) if r.result.error_msg == CANCELLED_MSG => {
            (ExecutionState::Cancelled, Some(r))
        }
        Phase::Finished(r) if !r.result.error_msg.is_empty() => (ExecutionState::Failed, Some(r)),
        Phase::Finished(r) => (ExecutionState::Completed, Some(r)),
    };
    ExecutionSummary {
        execution_id: info.execution_id,
        job_id: info.job_id,
        state,
        started_at: Some(rfc3339_ms(info.created_at_ms)),
        finished_at: finished.map(|r| rfc3339_ms(r.finished_at_ms)),
        exit_code: finished.map(|r| r.result.exit_code),
        error_msg: finished
            .map(|r| r.result.error_msg.clone())
            .filter(|m| !m.is_empty()),
    }
}

fn log_event(item: &LogItem) -> LogEvent {
    match item {
        LogItem::Frame(f) => LogEvent::data(
            match f.stream {
                logstore::Stream::Stdout => LogStream::Stdout,
                logstore::Stream::Stderr => LogStream::Stderr,
            },
            f.timestamp.clone(),
            &f.data,
            f.offset,
            f.next,
        ),
        LogItem::End { offset } => LogEvent::End { offset: *offset },
    }
}

/// How long a log subscription waits for an execution it does not know yet: requests are served
/// concurrently, so a subscribe sent right behind its `executor_start` may arrive first (as in
/// Bacalhau, whose docker executor polls five seconds for the handler).
const LOG_SOURCE_PATIENCE: Duration = Duration::from_secs(5);

async fn log_source_soon(
    registry: &Registry,
    execution_id: &str,
) -> Result<LogSource, ExecutorError> {
    let deadline = tokio::time::Instant::now() + LOG_SOURCE_PATIENCE;
    loop {
        match registry.log_source(execution_id) {
            Err(e)
                if e.code == ErrorCode::ExecutionNotFound
                    && tokio::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            other => return other,
        }
    }
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
pub fn negotiate(offered: &[String], plugin_name: &str) -> Result<&'static str, ExecutorError> {
    SUPPORTED_PROTOCOL_VERSIONS
        .iter()
        .rev()
        .find(|v| offered.iter().any(|o| o == *v))
        .copied()
        .ok_or_else(|| {
            ExecutorError::unsupported(format!(
                "no common protocol version: the host speaks {offered:?}, {plugin_name} speaks {:?}",
                SUPPORTED_PROTOCOL_VERSIONS
            ))
        })
}

#[async_trait]
impl ExecutorApiServer for Plugin {
    async fn initialize(
        &self,
        protocol_versions: Vec<String>,
        host: Option<HostInfo>,
        config: Option<PluginConfig>,
    ) -> RpcResult<InitializeResult> {
        let version = negotiate(&protocol_versions, self.engine.plugin_name())?;
        if self.session.initialized() {
            return Err(ExecutorError::new(
                ErrorCode::InvalidParams,
                "already initialized: `initialize` may be called once per plugin process",
            )
            .into());
        }
        let config = config.unwrap_or_default();
        let state_dir = config
            .state_dir
            .clone()
            .unwrap_or_else(|| default_state_dir(self.engine.name()));
        if !state_dir.is_absolute() {
            return Err(ExecutorError::invalid_params(vec![FieldProblem {
                field: "config.stateDir".into(),
                message: format!("must be an absolute path, got {}", state_dir.display()),
            }])
            .into());
        }
        crate::state::create_private_dir_all(&state_dir).map_err(|e| {
            ExecutorError::internal(format!(
                "cannot create the state directory {}: {e}; set config.stateDir to a writable directory",
                state_dir.display()
            ))
        })?;
        if let Some(why) = crate::state::untrusted_state_root(&state_dir) {
            return Err(ExecutorError::invalid_params(vec![FieldProblem {
                field: "config.stateDir".into(),
                message: format!(
                    "{} cannot hold the plugin's state: {why}; it and every directory above it \
                     must be root's or the plugin's user's, and not writable by others",
                    state_dir.display()
                ),
            }])
            .into());
        }
        let rc = registry_config(&config, &state_dir)?;
        let host = host.unwrap_or_default();
        let session = self
            .session
            .get_or_try_init(|| async {
                let registry = Registry::open(rc).await.map_err(|e| {
                    ExecutorError::internal(format!("cannot open the state directory: {e}"))
                })?;
                let detect_config = config.clone();
                let engine = self.engine.clone();
                let (capabilities, gpus) = tokio::task::spawn_blocking(move || {
                    sweep_bridge(detect_config.bridge_subnet.as_deref());
                    let (caps, gpus) = crate::capabilities::detect_with_gpus(&detect_config);
                    (engine.capabilities(caps), gpus)
                })
                .await
                .map_err(|e| ExecutorError::internal(format!("detecting capabilities: {e}")))?;
                Ok::<_, ExecutorError>(Session {
                    state_dir: state_dir.clone(),
                    config: config.clone(),
                    capabilities,
                    gpus,
                    registry,
                })
            })
            .await?;
        tracing::info!(host = %host.name, host_version = %host.version, state_dir = %session.state_dir.display(), "initialized");
        Ok(InitializeResult {
            protocol_version: version.to_string(),
            engine: self.engine.name().to_string(),
            plugin: PluginInfo {
                name: self.engine.plugin_name().to_string(),
                version: env!("CARGO_PKG_VERSION").to_string(),
            },
            capabilities: self.capabilities(),
        })
    }

    async fn shutdown(&self, cancel_running: Option<bool>) -> RpcResult<()> {
        let cancel_running = cancel_running.unwrap_or(false);
        tracing::info!(cancel_running, "shutting down");
        if let Some(session) = self.session.get() {
            session.registry.shutdown(cancel_running).await;
        }
        Ok(())
    }

    async fn is_installed(&self) -> RpcResult<bool> {
        let session = self.session()?;
        Ok(session.state_dir.is_dir())
    }

    async fn should_bid(&self, request: BidStrategyRequest) -> RpcResult<BidStrategyResponse> {
        let session = self.session()?;
        Ok(self.engine.should_bid(
            &request,
            &self.capabilities(),
            &session.config.allow_listed_local_paths,
        ))
    }

    async fn should_bid_based_on_usage(
        &self,
        _request: BidStrategyRequest,
        usage: Resources,
    ) -> RpcResult<BidStrategyResponse> {
        let session = self.session()?;
        let problems = executor_schema::validate::validate_resources(&usage);
        if !problems.is_empty() {
            return Err(ExecutorError::invalid_params(problems).into());
        }
        let gpus = self.capabilities().gpus.len() as u64;
        // File reads for every running execution (and the host's capacity): off the runtime's
        // one thread.
        let state_dir = session.state_dir.clone();
        let infos = session.registry.infos();
        let (capacity, held) = tokio::task::spawn_blocking(move || {
            (
                crate::bid::Capacity::of_host(&state_dir, gpus),
                held_resources(&state_dir, &infos),
            )
        })
        .await
        .map_err(|e| ExecutorError::internal(format!("reading held resources: {e}")))?;
        let mut answer = crate::bid::usage(&usage, capacity, &held);
        // Every job needs a uid of its own: with all of them held, a start would fail now but
        // succeed once an execution ends.
        if let Some((total, taken)) = session.registry.job_uid_room() {
            if answer.should_bid && taken >= total {
                answer = BidStrategyResponse::new(
                    false,
                    format!(
                        "have a free job uid now: running executions hold all {total} of \
                         jobUidRange; one frees when an execution ends"
                    ),
                );
                answer.should_wait = true;
            }
        }
        Ok(answer)
    }

    async fn start(&self, request: RunCommandRequest) -> RpcResult<()> {
        Ok(self.start_request(request).await?)
    }

    async fn run(&self, request: RunCommandRequest) -> RpcResult<RunCommandResult> {
        let id = request.execution_id.clone();
        self.start_request(request).await?;
        crate::timing::mark("p.started");
        let r = self.wait_result(&id).await?;
        crate::timing::mark("p.result");
        Ok(r)
    }

    async fn wait(&self, execution_id: String) -> RpcResult<RunCommandResult> {
        Ok(self.wait_result(&execution_id).await?)
    }

    async fn cancel(&self, execution_id: String) -> RpcResult<()> {
        Ok(self.session()?.registry.cancel(&execution_id).await?)
    }

    async fn list(&self) -> RpcResult<Vec<ExecutionSummary>> {
        let session = self.session()?;
        let finish = |mut info: crate::registry::ExecInfo| {
            if let Phase::Finished(r) = &info.phase {
                let dir = crate::state::ExecDir::new(&session.state_dir, &info.execution_id);
                let result = self.engine.finish(&dir.dir, r.result.clone());
                if result != r.result {
                    let mut record = (**r).clone();
                    record.result = result;
                    info.phase = Phase::Finished(Arc::new(record));
                }
            }
            summary(info)
        };
        Ok(session.registry.infos().into_iter().map(finish).collect())
    }

    async fn stats(&self, execution_id: String) -> RpcResult<ExecutionStats> {
        Ok(self.session()?.registry.stats(&execution_id).await?)
    }

    async fn subscribe_logs(
        &self,
        pending: PendingSubscriptionSink,
        request: LogStreamRequest,
    ) -> SubscriptionResult {
        let source = match self.session() {
            Ok(session) => log_source_soon(&session.registry, &request.execution_id).await,
            Err(e) => Err(e),
        };
        let source = match source {
            Ok(s) => s,
            Err(e) => {
                pending.reject(ErrorObjectOwned::from(e)).await;
                return Ok(());
            }
        };
        let sink = pending.accept().await?;
        let opts = FollowOptions {
            position: request.position,
            tail: request.tail,
            follow: request.follow,
            ..FollowOptions::default()
        };
        let stream = logstore::follow(source.path, opts);
        futures::pin_mut!(stream);
        let prefix = match &self.outlet {
            Some(_) => Some(logstore::notification::line_prefix(
                sink.method_name(),
                sink.subscription_id(),
            )?),
            None => None,
        };
        loop {
            let item = tokio::select! {
                _ = sink.closed() => return Ok(()),
                item = stream.next() => item,
            };
            match item {
                Some(Ok(item)) => {
                    let end = matches!(item, LogItem::End { .. });
                    match (&self.outlet, &prefix) {
                        (Some(outlet), Some(prefix)) => {
                            let line = logstore::notification::encode_line(prefix, &item);
                            if line.len() > MAX_MESSAGE_SIZE {
                                return Err(format!(
                                    "a log frame at offset {} is too large to send ({} bytes \
                                     encoded, the limit is {MAX_MESSAGE_SIZE})",
                                    item_offset(&item),
                                    line.len()
                                )
                                .into());
                            }
                            tokio::select! {
                                _ = sink.closed() => return Ok(()),
                                sent = outlet.send(line) => sent?,
                            }
                        }
                        _ => {
                            let msg = SubscriptionMessage::new(
                                sink.method_name(),
                                sink.subscription_id(),
                                &log_event(&item),
                            )?;
                            sink.send(msg).await?;
                        }
                    }
                    if end {
                        return Ok(());
                    }
                }
                // The client learns why through the subscription's error and can resume from
                // the last `next` it received.
                Some(Err(e)) => return Err(format!("reading the execution log failed: {e}").into()),
                None => return Ok(()),
            }
        }
    }
}

fn item_offset(item: &LogItem) -> u64 {
    match item {
        LogItem::Frame(f) => f.offset,
        LogItem::End { offset } => *offset,
    }
}

/// What running executions were allocated, from their stored requests.
fn held_resources(state_dir: &std::path::Path, infos: &[ExecInfo]) -> Resources {
    let mut held = Resources::default();
    for info in infos {
        if matches!(info.phase, Phase::Finished(_)) {
            continue;
        }
        let path = crate::state::ExecDir::new(state_dir, &info.execution_id).request();
        let Ok(record) = crate::state::read_json::<crate::state::RequestRecord>(&path) else {
            continue;
        };
        let Ok(req) = serde_json::from_value::<RunCommandRequest>(record.request) else {
            continue;
        };
        if let Some(r) = req.resources {
            held.cpu += r.cpu;
            held.memory = held.memory.saturating_add(r.memory);
            held.disk = held.disk.saturating_add(r.disk);
            held.gpu = held.gpu.saturating_add(r.gpu);
        }
    }
    held
}

impl Plugin {
    async fn start_request(&self, request: RunCommandRequest) -> Result<(), ExecutorError> {
        crate::timing::mark("p.start_request");
        let session = self.session()?;
        self.engine.validate(&request).map_err(|p| {
            ExecutorError::invalid_params(p).with_execution(request.execution_id.clone())
        })?;
        let wire = serde_json::to_value(&request)
            .map_err(|e| ExecutorError::internal(format!("encoding the request: {e}")))?;
        let uid_lease = session.registry.lease_job_uid().await?;
        crate::timing::mark("p.uid_leased");
        let plan = self
            .engine
            .plan(
                &request,
                PlanContext {
                    state_dir: &session.state_dir,
                    config: &session.config,
                    capabilities: &session.capabilities,
                    job_uid: uid_lease.as_ref().map(|l| l.uid()),
                },
            )
            .await?;
        let job_user = uid_lease
            .as_ref()
            .map(|l| UserPlan::per_execution(l.uid(), l.path().to_owned()));
        let monitor_spec = spec::from_request(session.host(), &request, plan, job_user)?;
        session
            .registry
            .start_spec_as(wire, monitor_spec, uid_lease)
            .await
    }

    async fn wait_result(&self, execution_id: &str) -> Result<RunCommandResult, ExecutorError> {
        let session = self.session()?;
        let record = session.registry.wait_record(execution_id).await?;
        let dir = crate::state::ExecDir::new(&session.state_dir, execution_id);
        Ok(self.engine.finish(&dir.dir, record.result.clone()))
    }
}
