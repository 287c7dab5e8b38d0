//! `PluginExecutor`: the `Executor` trait over a supervised plugin process.
//!
//! The plugin is started on first use. When it dies, the next call starts a new one (with a
//! capped backoff when it keeps dying); calls that can be repeated safely (`wait`, log follows,
//! queries) are re-issued on the new plugin, which has re-attached to the execution monitors,
//! so their callers see only a delay. A plugin that dies too often in a short window is marked
//! unhealthy, and its last stderr lines travel in the error.

use std::collections::VecDeque;
use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use executor_schema::api::{
    ExecutorApiClient, METHOD_CANCEL, METHOD_IS_INSTALLED, METHOD_LIST, METHOD_RUN,
    METHOD_SHOULD_BID, METHOD_SHOULD_BID_USAGE, METHOD_START, METHOD_STATS, METHOD_SUBSCRIBE_LOGS,
    METHOD_WAIT, NOTIFICATION_LOGS,
};
use executor_schema::{
    BidStrategyRequest, BidStrategyResponse, ExecutionStats, ExecutionSummary, HostInfo,
    InitializeResult, LogEvent, LogStreamRequest, PluginConfig, Resources, RunCommandRequest,
    RunCommandResult, PROTOCOL_VERSION,
};
use jsonrpsee::core::async_trait;
use jsonrpsee::core::client::{Error as ClientError, SubscriptionCloseReason};
use tokio::sync::{mpsc, Mutex};

use crate::error::{classify, CallFailure, HostError};
use crate::executor::{apply_deadline, Executor};
use crate::log_routes::LogRoute;
use crate::logs::{event_bytes, ByteBudget, LogStream};
use crate::pin::OpenBinary;
use crate::process::{PluginProcess, SpawnOptions};

/// How a plugin is restarted and stopped.
#[derive(Debug, Clone)]
pub struct Supervision {
    /// Wait before the first restart after a crash; doubles per further crash in the window.
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    /// This many crashes within `window` mark the plugin unhealthy.
    pub max_crashes: usize,
    pub window: Duration,
    /// How long an unhealthy plugin is left alone before a new start is tried.
    pub unhealthy_for: Duration,
    /// Limit for `initialize` to answer.
    pub handshake_timeout: Duration,
    /// After `shutdown`, how long the plugin gets to exit before it is killed.
    pub shutdown_grace: Duration,
    /// Limit for the calls a plugin answers promptly (`isInstalled`, bids, `start`, `cancel`,
    /// `list`, `stats`, a log subscription's acknowledgement). A plugin that misses it is
    /// killed and restarted on next use. `wait`, `run` and log follows are never limited:
    /// they last as long as the job.
    pub call_timeout: Duration,
}

impl Default for Supervision {
    fn default() -> Self {
        Supervision {
            backoff_initial: Duration::from_millis(100),
            backoff_max: Duration::from_secs(5),
            max_crashes: 5,
            window: Duration::from_secs(60),
            unhealthy_for: Duration::from_secs(30),
            handshake_timeout: Duration::from_secs(30),
            shutdown_grace: Duration::from_secs(2),
            call_timeout: Duration::from_secs(30),
        }
    }
}

/// What to start and how.
#[derive(Debug, Clone)]
pub struct PluginSpec {
    /// The engine this plugin must declare in `initialize`.
    pub engine: String,
    pub program: PathBuf,
    /// sha256 (hex) the binary must have; checked on the descriptor that is executed.
    pub sha256: Option<String>,
    /// Sent as `initialize.config`.
    pub config: PluginConfig,
    pub supervision: Supervision,
}

impl PluginSpec {
    pub fn new(engine: impl Into<String>, program: impl Into<PathBuf>) -> Self {
        PluginSpec {
            engine: engine.into(),
            program: program.into(),
            sha256: None,
            config: PluginConfig::default(),
            supervision: Supervision::default(),
        }
    }
}

struct Conn {
    process: PluginProcess,
    generation: u64,
    init: InitializeResult,
}

impl Conn {
    fn alive(&self) -> bool {
        self.process.exit_status().is_none() && self.process.client.is_connected()
    }
}

#[derive(Default)]
struct State {
    current: Option<Arc<Conn>>,
    generation: u64,
    crashes: VecDeque<Instant>,
    last_stderr: Vec<String>,
    last_failure: String,
    unhealthy_since: Option<Instant>,
    last_init: Option<InitializeResult>,
}

struct Inner {
    spec: PluginSpec,
    state: Mutex<State>,
    closed: AtomicBool,
}

/// An executor served by a plugin process. Cheap to clone; clones share the plugin.
#[derive(Clone)]
pub struct PluginExecutor {
    inner: Arc<Inner>,
}

/// A log subscription ended without an `end` event this many times in a row while the plugin
/// stayed up: the plugin is refusing to serve it, so stop retrying.
const MAX_FRUITLESS_RESUBSCRIBES: u32 = 5;

/// Bytes of log data a log stream holds for its reader before the feed waits.
const LOG_STREAM_BUDGET: usize = 8 << 20;

impl PluginExecutor {
    pub fn new(spec: PluginSpec) -> Self {
        PluginExecutor {
            inner: Arc::new(Inner {
                spec,
                state: Mutex::new(State::default()),
                closed: AtomicBool::new(false),
            }),
        }
    }

    pub fn engine(&self) -> &str {
        &self.inner.spec.engine
    }

    pub fn program(&self) -> &std::path::Path {
        &self.inner.spec.program
    }

    /// The plugin's `initialize` answer (starting it if needed).
    pub async fn info(&self) -> Result<InitializeResult, HostError> {
        Ok(self.inner.conn().await?.init.clone())
    }

    /// Pid of the plugin process now serving, if one is running.
    pub async fn pid(&self) -> Option<u32> {
        let state = self.inner.state.lock().await;
        state
            .current
            .as_ref()
            .filter(|c| c.alive())
            .and_then(|c| c.process.pid)
    }

    /// Every execution the plugin knows.
    pub async fn list(&self) -> Result<Vec<ExecutionSummary>, HostError> {
        self.inner
            .call(METHOD_LIST, Retry::Limited, |c| async move {
                ExecutorApiClient::list(&c.process.client).await
            })
            .await
    }

    /// Live usage of a running execution.
    pub async fn stats(&self, execution_id: &str) -> Result<ExecutionStats, HostError> {
        let id = execution_id.to_string();
        self.inner
            .call(METHOD_STATS, Retry::Limited, move |c| {
                let id = id.clone();
                async move { ExecutorApiClient::stats(&c.process.client, id).await }
            })
            .await
    }

    /// `shutdown`, a short wait, then kill. Executions keep running under their monitors unless
    /// `cancel_running`. Later calls fail with `ShuttingDown`.
    pub async fn shutdown(&self, cancel_running: bool) {
        self.inner.closed.store(true, Ordering::SeqCst);
        let conn = self.inner.state.lock().await.current.take();
        let Some(conn) = conn else { return };
        let grace = self.inner.spec.supervision.shutdown_grace;
        // With cancel_running the plugin waits for the monitors' results before answering.
        let answer_limit = if cancel_running {
            grace + Duration::from_secs(10)
        } else {
            grace
        };
        let _ = tokio::time::timeout(
            answer_limit,
            ExecutorApiClient::shutdown(&conn.process.client, Some(cancel_running)),
        )
        .await;
        if conn.process.wait_exit_for(grace).await.is_none() {
            tracing::warn!(engine = %self.engine(), "plugin did not exit after shutdown; killing it");
            conn.process.kill();
            conn.process.wait_exit_for(grace).await;
        }
    }
}

/// Calls a plugin answers at once, whatever its jobs do; see `Supervision::call_timeout`.
fn is_prompt(method: &str) -> bool {
    matches!(
        method,
        METHOD_IS_INSTALLED
            | METHOD_SHOULD_BID
            | METHOD_SHOULD_BID_USAGE
            | METHOD_START
            | METHOD_CANCEL
            | METHOD_LIST
            | METHOD_STATS
            | METHOD_SUBSCRIBE_LOGS
    )
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Retry {
    /// The call may have had an effect: never repeat it.
    Never,
    /// Safe to repeat; a few tries.
    Limited,
    /// Safe to repeat for as long as the plugin can be restarted (waits).
    UntilUnhealthy,
}

impl Inner {
    fn supervision(&self) -> &Supervision {
        &self.spec.supervision
    }

    /// The live connection, starting (or restarting) the plugin when needed.
    async fn conn(&self) -> Result<Arc<Conn>, HostError> {
        let mut state = self.state.lock().await;
        loop {
            if self.closed.load(Ordering::SeqCst) {
                return Err(HostError::ShuttingDown);
            }
            if let Some(c) = &state.current {
                if c.alive() {
                    return Ok(c.clone());
                }
                let dead = c.clone();
                self.record_death(&mut state, &dead, "exited").await;
            }
            let sup = self.supervision().clone();
            let now = Instant::now();
            while state
                .crashes
                .front()
                .is_some_and(|t| now.duration_since(*t) > sup.window)
            {
                state.crashes.pop_front();
            }
            if let Some(since) = state.unhealthy_since {
                if now.duration_since(since) < sup.unhealthy_for {
                    return Err(self.unhealthy(&state));
                }
                state.unhealthy_since = None;
                state.crashes.clear();
            }
            if state.crashes.len() >= sup.max_crashes {
                state.unhealthy_since = Some(now);
                tracing::error!(engine = %self.spec.engine, crashes = state.crashes.len(), "plugin marked unhealthy");
                return Err(self.unhealthy(&state));
            }
            if let Some(n) = state.crashes.len().checked_sub(1) {
                let backoff = sup
                    .backoff_initial
                    .saturating_mul(1u32 << n.min(16))
                    .min(sup.backoff_max);
                tokio::time::sleep(backoff).await;
            }
            match self.launch(state.generation + 1).await {
                Ok(conn) => {
                    let conn = Arc::new(conn);
                    state.generation = conn.generation;
                    state.last_init = Some(conn.init.clone());
                    state.current = Some(conn.clone());
                    return Ok(conn);
                }
                // A binary that fails its pin or cannot be executed, or that refuses its configuration,
                // will not get better.
                Err(e @ (HostError::Pin(_) | HostError::Spawn(_) | HostError::Refused { .. })) => {
                    return Err(e)
                }
                Err(HostError::Launch { detail, stderr, .. }) => {
                    tracing::warn!(engine = %self.spec.engine, %detail, "plugin failed to start");
                    state.crashes.push_back(Instant::now());
                    state.last_failure = format!("failed to start: {detail}");
                    state.last_stderr = stderr;
                }
                Err(e) => return Err(e),
            }
        }
    }

    fn unhealthy(&self, state: &State) -> HostError {
        HostError::Unhealthy {
            engine: self.spec.engine.clone(),
            reason: format!(
                "crashed {} times within {:?} (last: {}); it is retried after {:?}",
                state.crashes.len(),
                self.supervision().window,
                state.last_failure,
                self.supervision().unhealthy_for
            ),
            stderr: state.last_stderr.clone(),
        }
    }

    async fn record_death(&self, state: &mut State, dead: &Conn, how: &str) {
        state.current = None;
        // The exit status arrives a moment after the pipes close.
        let status = dead
            .process
            .wait_exit_for(Duration::from_secs(1))
            .await
            .unwrap_or_else(|| "still running; killed".to_string());
        dead.process.kill();
        state.crashes.push_back(Instant::now());
        state.last_failure = format!("{how}: {status}");
        state.last_stderr = dead.process.stderr_tail();
        tracing::warn!(engine = %self.spec.engine, pid = ?dead.process.pid, %status, "plugin died; it will be restarted on next use");
    }

    /// A call on connection `generation` found the plugin gone.
    async fn mark_dead(&self, generation: u64, detail: &str) {
        let mut state = self.state.lock().await;
        let Some(c) = state.current.clone() else {
            return;
        };
        if c.generation == generation {
            self.record_death(&mut state, &c, detail).await;
        }
    }

    async fn launch(&self, generation: u64) -> Result<Conn, HostError> {
        let spec = &self.spec;
        let plugin = spec.program.display().to_string();
        // A bare name is a file in the current directory, never one looked up on PATH.
        let program = std::path::absolute(&spec.program).map_err(|source| {
            HostError::Pin(crate::pin::PinError::Open {
                path: spec.program.clone(),
                source,
            })
        })?;
        let mut opts = SpawnOptions::new(&program);
        match &spec.sha256 {
            Some(pin) => opts.binary = Some(OpenBinary::open(&program, Some(pin))?),
            // Unpinned, the file runs from its path; it must at least be one nobody but root
            // or this user can change.
            None => drop(crate::pin::open_trusted(&program)?),
        }
        let process = PluginProcess::spawn(opts).await?;
        let init = tokio::time::timeout(
            self.supervision().handshake_timeout,
            ExecutorApiClient::initialize(
                &process.client,
                vec![PROTOCOL_VERSION.to_string()],
                Some(HostInfo {
                    name: "executor-host".to_string(),
                    version: env!("CARGO_PKG_VERSION").to_string(),
                }),
                Some(spec.config.clone()),
            ),
        )
        .await;
        let refused_by = plugin.clone();
        let failed = |detail: String, process: PluginProcess| async move {
            process.kill();
            process.wait_exit_for(Duration::from_secs(1)).await;
            HostError::Launch {
                plugin: plugin.clone(),
                detail,
                stderr: process.stderr_tail(),
            }
        };
        let init = match init {
            Ok(Ok(init)) => init,
            // The plugin answered: it refuses this configuration (a state directory it cannot
            // create, a malformed allow-list). Starting it again would be refused the same way.
            Ok(Err(jsonrpsee::core::client::Error::Call(obj))) => {
                process.kill();
                process.wait_exit_for(Duration::from_secs(1)).await;
                return Err(HostError::Refused {
                    plugin: refused_by,
                    message: obj.message().to_string(),
                });
            }
            Ok(Err(e)) => return Err(failed(format!("initialize failed: {e}"), process).await),
            Err(_) => {
                let detail = format!(
                    "initialize did not answer within {:?}",
                    self.supervision().handshake_timeout
                );
                return Err(failed(detail, process).await);
            }
        };
        if !spec.engine.is_empty() && init.engine != spec.engine {
            let detail = format!(
                "it declares engine {:?}, but it is configured for engine {:?}",
                init.engine, spec.engine
            );
            return Err(failed(detail, process).await);
        }
        tracing::info!(engine = %init.engine, pid = ?process.pid, generation, "plugin started");
        Ok(Conn {
            process,
            generation,
            init,
        })
    }

    async fn call<T, F, Fut>(
        &self,
        method: &'static str,
        retry: Retry,
        f: F,
    ) -> Result<T, HostError>
    where
        F: Fn(Arc<Conn>) -> Fut,
        Fut: Future<Output = Result<T, ClientError>>,
    {
        let mut tries = 0u32;
        loop {
            tries += 1;
            let conn = self.conn().await?;
            let generation = conn.generation;
            let answered = if is_prompt(method) {
                let limit = self.supervision().call_timeout;
                let process_conn = conn.clone();
                match tokio::time::timeout(limit, f(conn)).await {
                    Ok(answer) => answer,
                    Err(_) => {
                        tracing::warn!(engine = %self.spec.engine, method, ?limit, "plugin did not answer in time; restarting it");
                        process_conn.process.kill();
                        self.mark_dead(generation, &format!("did not answer {method}"))
                            .await;
                        return Err(HostError::Timeout {
                            engine: self.spec.engine.clone(),
                            method,
                            limit,
                        });
                    }
                }
            } else {
                f(conn).await
            };
            match answered {
                Ok(v) => return Ok(v),
                Err(e) => match classify(&self.spec.engine, method, e) {
                    CallFailure::Answer(e) => return Err(e),
                    CallFailure::Disconnected(detail) => {
                        self.mark_dead(generation, &format!("died during {method}"))
                            .await;
                        let again = match retry {
                            Retry::Never => false,
                            Retry::Limited => tries < 3,
                            Retry::UntilUnhealthy => true,
                        };
                        if !again {
                            return Err(HostError::Interrupted {
                                engine: self.spec.engine.clone(),
                                method,
                                detail,
                            });
                        }
                        tracing::info!(engine = %self.spec.engine, method, "plugin died during a call; re-issuing it on a new plugin");
                    }
                },
            }
        }
    }

    /// Feed a log stream, resuming after plugin restarts from the last position delivered.
    async fn follow_logs(
        self: Arc<Self>,
        request: LogStreamRequest,
        tx: mpsc::Sender<Result<LogEvent, HostError>>,
        budget: Arc<ByteBudget>,
        first: LogSubscription,
        first_generation: u64,
    ) {
        let mut position = request.position;
        let mut sub = Some((first, first_generation));
        let mut fruitless = 0u32;
        loop {
            let ((mut subscription, mut route), generation) = match sub.take() {
                Some(s) => s,
                None => match self.subscribe(&request, position).await {
                    Ok(s) => s,
                    Err(e) => {
                        let _ = tx.send(Err(e)).await;
                        return;
                    }
                },
            };
            let mut progressed = false;
            // Hands one event on; `false` once the stream is over for good.
            let mut deliver = |ev: LogEvent, position: &mut Option<u64>| {
                progressed = true;
                let end = match &ev {
                    LogEvent::Data { next, .. } => {
                        *position = Some(*next);
                        false
                    }
                    LogEvent::End { .. } => true,
                };
                let (tx, budget) = (tx.clone(), budget.clone());
                async move {
                    budget.acquire(event_bytes(&ev)).await;
                    tx.send(Ok(ev)).await.is_ok() && !end
                }
            };
            let route_lagged = loop {
                // jsonrpsee's buffer first: it holds whatever came before the route existed.
                let fetched = tokio::select! {
                    biased;
                    item = subscription.next() => Fetched::Jsonrpsee(item),
                    ev = recv_route(&mut route) => Fetched::Routed(ev),
                };
                match fetched {
                    Fetched::Jsonrpsee(Some(Ok(ev))) | Fetched::Routed(Some(ev)) => {
                        if !deliver(ev, &mut position).await {
                            return;
                        }
                    }
                    Fetched::Jsonrpsee(Some(Err(e))) => {
                        let _ = tx
                            .send(Err(HostError::Protocol {
                                engine: self.spec.engine.clone(),
                                method: NOTIFICATION_LOGS,
                                detail: format!("undecodable log event: {e}"),
                            }))
                            .await;
                        return;
                    }
                    Fetched::Jsonrpsee(None)
                        if matches!(
                            subscription.close_reason(),
                            Some(SubscriptionCloseReason::Lagged)
                        ) =>
                    {
                        // Routed events may lie past what jsonrpsee dropped: resume instead.
                        break false;
                    }
                    Fetched::Jsonrpsee(None) => {
                        // Routed events came before whatever ended the subscription.
                        while let Some(ev) = route.as_mut().and_then(LogRoute::try_recv) {
                            if !deliver(ev, &mut position).await {
                                return;
                            }
                        }
                        break false;
                    }
                    Fetched::Routed(None) => break true,
                }
            };
            let reason = subscription.close_reason();
            // Unsubscribes before a new subscription is made.
            drop((subscription, route));
            let conn_alive = {
                let state = self.state.lock().await;
                state
                    .current
                    .as_ref()
                    .is_some_and(|c| c.generation == generation && c.alive())
            };
            match reason {
                _ if route_lagged => {
                    tracing::debug!(engine = %self.spec.engine, "log route lagged; resuming");
                }
                Some(SubscriptionCloseReason::Lagged) => {
                    tracing::debug!(engine = %self.spec.engine, "log subscription lagged; resuming");
                }
                _ if !conn_alive => {
                    self.mark_dead(generation, "died during a log stream").await;
                    tracing::info!(engine = %self.spec.engine, ?position, "plugin died during a log stream; resuming on a new plugin");
                }
                _ => {
                    fruitless = if progressed { 0 } else { fruitless + 1 };
                    if fruitless >= MAX_FRUITLESS_RESUBSCRIBES {
                        let _ = tx
                            .send(Err(HostError::Protocol {
                                engine: self.spec.engine.clone(),
                                method: METHOD_SUBSCRIBE_LOGS,
                                detail: "the plugin keeps closing the log stream before its end"
                                    .to_string(),
                            }))
                            .await;
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }

    async fn subscribe(
        &self,
        request: &LogStreamRequest,
        position: Option<u64>,
    ) -> Result<(LogSubscription, u64), HostError> {
        let mut req = request.clone();
        // Once anything was delivered, resume exactly after it (a tail request included).
        if position.is_some() {
            req.position = position;
            req.tail = false;
        }
        let generation = std::sync::atomic::AtomicU64::new(0);
        let generation_ref = &generation;
        let sub = self
            .call(METHOD_SUBSCRIBE_LOGS, Retry::UntilUnhealthy, move |c| {
                let req = req.clone();
                generation_ref.store(c.generation, Ordering::SeqCst);
                async move {
                    let sub = ExecutorApiClient::subscribe_logs(&c.process.client, req).await?;
                    // At once: until the route exists, jsonrpsee receives the events.
                    let route = c.process.route_logs(&sub);
                    Ok((sub, route))
                }
            })
            .await?;
        Ok((sub, generation.load(Ordering::SeqCst)))
    }
}

/// A log subscription and, when the transport could route it, its direct route.
type LogSubscription = (
    jsonrpsee::core::client::Subscription<LogEvent>,
    Option<LogRoute>,
);

enum Fetched {
    Jsonrpsee(Option<Result<LogEvent, serde_json::Error>>),
    Routed(Option<LogEvent>),
}

/// The next routed event; never ready without a route.
async fn recv_route(route: &mut Option<LogRoute>) -> Option<LogEvent> {
    match route {
        Some(r) => r.recv().await,
        None => std::future::pending().await,
    }
}

#[async_trait]
impl Executor for PluginExecutor {
    async fn is_installed(&self) -> Result<bool, HostError> {
        self.inner
            .call(METHOD_IS_INSTALLED, Retry::Limited, |c| async move {
                ExecutorApiClient::is_installed(&c.process.client).await
            })
            .await
    }

    async fn should_bid(
        &self,
        request: BidStrategyRequest,
    ) -> Result<BidStrategyResponse, HostError> {
        self.inner
            .call(METHOD_SHOULD_BID, Retry::Limited, move |c| {
                let request = request.clone();
                async move { ExecutorApiClient::should_bid(&c.process.client, request).await }
            })
            .await
    }

    async fn should_bid_based_on_usage(
        &self,
        request: BidStrategyRequest,
        usage: Resources,
    ) -> Result<BidStrategyResponse, HostError> {
        self.inner
            .call(METHOD_SHOULD_BID_USAGE, Retry::Limited, move |c| {
                let (request, usage) = (request.clone(), usage.clone());
                async move {
                    ExecutorApiClient::should_bid_based_on_usage(&c.process.client, request, usage)
                        .await
                }
            })
            .await
    }

    async fn start(
        &self,
        mut request: RunCommandRequest,
        deadline: Option<Instant>,
    ) -> Result<(), HostError> {
        apply_deadline(&mut request, deadline)?;
        self.inner
            .call(METHOD_START, Retry::Never, move |c| {
                let request = request.clone();
                async move { ExecutorApiClient::start(&c.process.client, request).await }
            })
            .await
    }

    async fn run(
        &self,
        request: RunCommandRequest,
        deadline: Option<Instant>,
    ) -> Result<RunCommandResult, HostError> {
        let mut request = request;
        apply_deadline(&mut request, deadline)?;
        let id = request.execution_id.clone();
        // One round trip instead of a start and then a wait (a third of a millisecond of a
        // trivial job's few). Not repeatable as a whole: if the plugin goes away meanwhile, the
        // wait below is, on the plugin that replaced it, which re-attached to the execution.
        let ran = self
            .inner
            .call(METHOD_RUN, Retry::Never, move |c| {
                let request = request.clone();
                async move { ExecutorApiClient::run(&c.process.client, request).await }
            })
            .await;
        match ran {
            Err(interrupted @ HostError::Interrupted { .. }) => match self.wait(&id).await {
                // The start never got as far as the plugin: report the interruption.
                Err(HostError::Executor(e))
                    if e.code == executor_schema::ErrorCode::ExecutionNotFound =>
                {
                    Err(interrupted)
                }
                waited => waited,
            },
            other => other,
        }
    }

    async fn wait(&self, execution_id: &str) -> Result<RunCommandResult, HostError> {
        let id = execution_id.to_string();
        self.inner
            .call(METHOD_WAIT, Retry::UntilUnhealthy, move |c| {
                let id = id.clone();
                async move { ExecutorApiClient::wait(&c.process.client, id).await }
            })
            .await
    }

    async fn cancel(&self, execution_id: &str) -> Result<(), HostError> {
        let id = execution_id.to_string();
        self.inner
            .call(METHOD_CANCEL, Retry::Limited, move |c| {
                let id = id.clone();
                async move { ExecutorApiClient::cancel(&c.process.client, id).await }
            })
            .await
    }

    async fn get_log_stream(&self, request: LogStreamRequest) -> Result<LogStream, HostError> {
        // The first subscription is made here so that its errors (NotFound, ...) are this
        // call's; later ones happen in the background after a restart.
        let (first, generation) = self.inner.subscribe(&request, request.position).await?;
        // Counted in events by the channel, in bytes by the budget: a plugin picks how large
        // each event is.
        let (tx, rx) = mpsc::channel(256);
        let budget = ByteBudget::new(LOG_STREAM_BUDGET);
        let task = tokio::spawn(self.inner.clone().follow_logs(
            request,
            tx,
            budget.clone(),
            first,
            generation,
        ));
        Ok(LogStream::with_budget(rx, task, budget))
    }
}
