//! Launching a plugin binary and connecting a JSON-RPC client to its stdio.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use jsonrpsee::async_client::{Client, ClientBuilder};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{ChildStderr, Command};
use tokio::sync::{oneshot, watch};

use crate::log_routes::LogRouter;
use crate::transport::{Receiver, Sender, StderrTail};

pub const COOKIE_KEY: &str = "EXECUTOR_PLUGIN_COOKIE";
pub const COOKIE_VALUE: &str = "executor-plugin";

/// Calls such as `executor_wait` legitimately pend for as long as a job runs; deadlines are
/// applied per call by the caller instead of one client-wide timeout.
const NO_TIMEOUT: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

#[derive(Debug, Clone)]
pub struct SpawnOptions {
    pub program: PathBuf,
    pub args: Vec<OsString>,
    pub env: Vec<(OsString, OsString)>,
    /// Per-subscription buffer on the host; a log consumer slower than this loses its
    /// subscription (and resumes from its last position).
    pub subscription_buffer: usize,
    /// When set, this checked descriptor is executed instead of `program` (which then only
    /// names the plugin and becomes its `argv[0]`).
    pub binary: Option<crate::pin::OpenBinary>,
}

impl SpawnOptions {
    pub fn new(program: impl Into<PathBuf>) -> Self {
        SpawnOptions {
            program: program.into(),
            args: Vec::new(),
            env: Vec::new(),
            subscription_buffer: 4096,
            binary: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    #[error("cannot start plugin {program}: {source}")]
    Spawn {
        program: String,
        source: std::io::Error,
    },
    #[error("plugin {program} started without {what} pipe")]
    MissingPipe { program: String, what: &'static str },
}

/// A running plugin process with a connected client.
pub struct PluginProcess {
    pub client: Client,
    pub pid: Option<u32>,
    pub program: PathBuf,
    exit: watch::Receiver<Option<String>>,
    stderr: StderrTail,
    kill: std::sync::Mutex<Option<oneshot::Sender<()>>>,
    logs: LogRouter,
}

impl PluginProcess {
    pub async fn spawn(opts: SpawnOptions) -> Result<PluginProcess, SpawnError> {
        let name = opts.program.display().to_string();
        let mut cmd = match &opts.binary {
            Some(b) => {
                let mut c = Command::new(b.exec_path());
                c.arg0(&opts.program);
                c
            }
            None => Command::new(&opts.program),
        };
        cmd.args(&opts.args)
            .envs(opts.env.iter().map(|(k, v)| (k, v)))
            .env(COOKIE_KEY, COOKIE_VALUE)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().map_err(|source| SpawnError::Spawn {
            program: name.clone(),
            source,
        })?;
        let missing = |what| SpawnError::MissingPipe {
            program: name.clone(),
            what,
        };
        let stdin = child.stdin.take().ok_or_else(|| missing("stdin"))?;
        let stdout = child.stdout.take().ok_or_else(|| missing("stdout"))?;
        let stderr = child.stderr.take().ok_or_else(|| missing("stderr"))?;
        let pid = child.id();

        let tail = StderrTail::default();
        tokio::spawn(drain_stderr(name.clone(), stderr, tail.clone()));
        let (exit_tx, exit_rx) = watch::channel(None);
        let (kill_tx, kill_rx) = oneshot::channel::<()>();
        // The child is owned here alone, so a kill can never hit a reused pid.
        tokio::spawn(async move {
            let status = tokio::select! {
                s = child.wait() => s,
                Ok(()) = kill_rx => {
                    let _ = child.start_kill();
                    child.wait().await
                }
            };
            let status = match status {
                Ok(s) => s.to_string(),
                Err(e) => format!("unknown exit status: {e}"),
            };
            exit_tx.send_replace(Some(status));
        });

        let logs = LogRouter::new(opts.subscription_buffer);
        let client = ClientBuilder::default()
            .request_timeout(NO_TIMEOUT)
            .max_buffer_capacity_per_subscription(opts.subscription_buffer)
            .build_with_tokio(
                Sender::new(name.clone(), stdin),
                Receiver::new(
                    name.clone(),
                    stdout,
                    exit_rx.clone(),
                    tail.clone(),
                    logs.clone(),
                ),
            );
        Ok(PluginProcess {
            client,
            pid,
            program: opts.program,
            exit: exit_rx,
            stderr: tail,
            kill: std::sync::Mutex::new(Some(kill_tx)),
            logs,
        })
    }

    /// The exit status once the process has ended.
    pub fn exit_status(&self) -> Option<String> {
        self.exit.borrow().clone()
    }

    /// Wait until the process has ended; returns its status text.
    pub async fn wait_exit(&mut self) -> String {
        let _ = self.exit.wait_for(Option::is_some).await;
        self.exit.borrow().clone().unwrap_or_default()
    }

    /// SIGKILL the plugin (no effect once it has exited).
    pub fn kill(&self) {
        if let Some(tx) = self.kill.lock().ok().and_then(|mut k| k.take()) {
            let _ = tx.send(());
        }
    }

    /// Wait (up to `limit`) for the process to end; `None` if it is still running.
    pub async fn wait_exit_for(&self, limit: Duration) -> Option<String> {
        let mut exit = self.exit.clone();
        let _ = tokio::time::timeout(limit, exit.wait_for(Option::is_some)).await;
        self.exit_status()
    }

    /// Have the transport deliver the events of a log subscription made on this process's
    /// client to the returned route, past jsonrpsee; see `log_routes` for how a reader keeps
    /// them in order with what jsonrpsee already holds.
    pub fn route_logs<T>(
        &self,
        sub: &jsonrpsee::core::client::Subscription<T>,
    ) -> Option<crate::log_routes::LogRoute> {
        self.logs.route(sub)
    }

    pub fn stderr_tail(&self) -> Vec<String> {
        self.stderr.lines()
    }
}

/// Re-emit the plugin's diagnostics (JSON lines from its `tracing`) in the host's log.
async fn drain_stderr(plugin: String, stderr: ChildStderr, tail: StderrTail) {
    let mut lines = BufReader::new(stderr).lines();
    loop {
        match lines.next_line().await {
            Ok(Some(line)) => {
                emit(&plugin, &line);
                tail.push(line);
            }
            Ok(None) => break,
            Err(e) => {
                // Non-UTF-8 output: keep draining so the plugin never blocks on a full pipe.
                tracing::warn!(plugin = %plugin, error = %e, "unreadable plugin stderr");
                break;
            }
        }
    }
}

fn emit(plugin: &str, line: &str) {
    let parsed: Option<serde_json::Value> = serde_json::from_str(line).ok();
    let Some(obj) = parsed.as_ref().and_then(|v| v.as_object()) else {
        tracing::info!(target: "plugin", plugin = %plugin, "{line}");
        return;
    };
    let level = obj.get("level").and_then(|v| v.as_str()).unwrap_or("INFO");
    let fields = obj.get("fields");
    let message = fields
        .and_then(|f| f.get("message"))
        .and_then(|m| m.as_str())
        .unwrap_or(line);
    let rest = fields
        .and_then(|f| f.as_object())
        .map(|f| {
            f.iter()
                .filter(|(k, _)| k.as_str() != "message")
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_default();
    match level {
        "ERROR" => tracing::error!(target: "plugin", plugin = %plugin, "{message} {rest}"),
        "WARN" => tracing::warn!(target: "plugin", plugin = %plugin, "{message} {rest}"),
        "DEBUG" => tracing::debug!(target: "plugin", plugin = %plugin, "{message} {rest}"),
        "TRACE" => tracing::trace!(target: "plugin", plugin = %plugin, "{message} {rest}"),
        _ => tracing::info!(target: "plugin", plugin = %plugin, "{message} {rest}"),
    }
}
