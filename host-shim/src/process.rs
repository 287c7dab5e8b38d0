//! Launching a plugin binary and connecting a JSON-RPC client to its stdio.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use jsonrpsee::async_client::{Client, ClientBuilder};
use tokio::io::AsyncReadExt;
use tokio::process::{ChildStderr, Command};
use tokio::sync::{oneshot, watch};

use crate::log_routes::LogRouter;
use crate::transport::{Receiver, Sender, StderrTail};

pub const COOKIE_KEY: &str = "EXECUTOR_PLUGIN_COOKIE";
pub const COOKIE_VALUE: &str = "executor-plugin";

/// A plugin's `PATH`: fixed, whatever the host's is (a host's `PATH` may name directories its
/// user can write).
pub const PLUGIN_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// What a plugin's environment takes from the host's, when set: its log settings, Rust's
/// backtraces, and what locates a user's default state directory and temporary files. Nothing
/// else passes (no `LD_PRELOAD`, `LD_LIBRARY_PATH`, secrets): see PROTOCOL.md section 3.
pub const PLUGIN_ENV_PASSED: [&str; 6] = [
    "EXECUTOR_PLUGIN_LOG",
    "EXECUTOR_PLUGIN_TIMING_LOG",
    "RUST_BACKTRACE",
    "HOME",
    "XDG_STATE_HOME",
    "TMPDIR",
];

/// Calls such as `executor_wait` legitimately pend for as long as a job runs; deadlines are
/// applied per call by the caller instead of one client-wide timeout.
const NO_TIMEOUT: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

#[derive(Debug, Clone)]
pub struct SpawnOptions {
    pub program: PathBuf,
    pub args: Vec<OsString>,
    /// Set in the plugin's environment on top of the clean one (`PLUGIN_PATH` and
    /// `PLUGIN_ENV_PASSED`).
    pub env: Vec<(OsString, OsString)>,
    /// jsonrpsee's per-subscription buffer, in notifications (each up to the 16 MiB frame
    /// limit): only log events that arrive before their route exists, or that do not take the
    /// route, wait here. A log consumer slower than this loses its subscription (and resumes
    /// from its last position).
    pub subscription_buffer: usize,
    /// Bytes of log notifications a routed subscription holds for a slow reader before it is
    /// closed and resumed (see `log_routes`).
    pub route_budget: usize,
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
            subscription_buffer: 16,
            route_budget: 8 << 20,
            binary: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PluginSpawnError {
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
    pub async fn spawn(opts: SpawnOptions) -> Result<PluginProcess, PluginSpawnError> {
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
            .env_clear()
            .env("PATH", PLUGIN_PATH)
            .envs(
                PLUGIN_ENV_PASSED
                    .iter()
                    .filter_map(|k| std::env::var_os(k).map(|v| (k, v))),
            )
            .envs(opts.env.iter().map(|(k, v)| (k, v)))
            .env(COOKIE_KEY, COOKIE_VALUE)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().map_err(|source| PluginSpawnError::Spawn {
            program: name.clone(),
            source,
        })?;
        let missing = |what| PluginSpawnError::MissingPipe {
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

        let logs = LogRouter::new(opts.route_budget);
        let client = ClientBuilder::default()
            .request_timeout(NO_TIMEOUT)
            .max_buffer_capacity_per_subscription(opts.subscription_buffer);
        let sender = Sender::new(name.clone(), stdin);
        let pending = sender.pending();
        let client = client.build_with_tokio(
            sender,
            Receiver::new(
                name.clone(),
                stdout,
                exit_rx.clone(),
                tail.clone(),
                logs.clone(),
                pending,
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

/// Longest stderr line kept; the rest of a longer one is dropped (and the line says so).
pub const MAX_STDERR_LINE: usize = 16 * 1024;

/// Re-emit the plugin's diagnostics (JSON lines from its `tracing`) in the host's log. Read as
/// bytes in bounded lines: a line without end, or bytes that are not UTF-8, cost no more memory
/// than one line and never stop the drain (the plugin would block on a full pipe).
async fn drain_stderr(plugin: String, mut stderr: ChildStderr, tail: StderrTail) {
    let mut buf = vec![0u8; 64 * 1024];
    let mut line = BoundedLine::default();
    loop {
        let n = match stderr.read(&mut buf).await {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                tracing::warn!(plugin = %crate::human::escape(&plugin), error = %e, "cannot read plugin stderr");
                break;
            }
        };
        let mut chunk = &buf[..n];
        while let Some(end) = chunk.iter().position(|&b| b == b'\n') {
            line.push(&chunk[..end]);
            let text = line.take();
            emit(&plugin, &text);
            tail.push(text);
            chunk = &chunk[end + 1..];
        }
        line.push(chunk);
    }
    if !line.is_empty() {
        let text = line.take();
        emit(&plugin, &text);
        tail.push(text);
    }
}

/// One stderr line being read: at most [`MAX_STDERR_LINE`] bytes kept, the rest counted.
#[derive(Default)]
struct BoundedLine {
    kept: Vec<u8>,
    dropped: usize,
}

impl BoundedLine {
    fn push(&mut self, bytes: &[u8]) {
        let room = MAX_STDERR_LINE.saturating_sub(self.kept.len());
        let keep = bytes.len().min(room);
        self.kept.extend_from_slice(&bytes[..keep]);
        self.dropped = self.dropped.saturating_add(bytes.len() - keep);
    }

    fn is_empty(&self) -> bool {
        self.kept.is_empty() && self.dropped == 0
    }

    /// The line as text (invalid UTF-8 replaced), noting what was cut off; then empty again.
    fn take(&mut self) -> String {
        if self.kept.last() == Some(&b'\r') && self.dropped == 0 {
            self.kept.pop();
        }
        let mut text = String::from_utf8_lossy(&self.kept).into_owned();
        if self.dropped > 0 {
            text.push_str(&format!(
                " [line truncated: {} more bytes dropped]",
                self.dropped
            ));
        }
        self.kept.clear();
        self.dropped = 0;
        text
    }
}

/// Everything here is the plugin's text: control characters are escaped before it reaches a
/// terminal (`-v`).
fn emit(plugin: &str, line: &str) {
    use crate::human::escape;
    let plugin = escape(plugin);
    let parsed: Option<serde_json::Value> = serde_json::from_str(line).ok();
    let Some(obj) = parsed.as_ref().and_then(|v| v.as_object()) else {
        let line = escape(line);
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
    let text = escape(&format!("{message} {rest}")).into_owned();
    match level {
        "ERROR" => tracing::error!(target: "plugin", plugin = %plugin, "{text}"),
        "WARN" => tracing::warn!(target: "plugin", plugin = %plugin, "{text}"),
        "DEBUG" => tracing::debug!(target: "plugin", plugin = %plugin, "{text}"),
        "TRACE" => tracing::trace!(target: "plugin", plugin = %plugin, "{text}"),
        _ => tracing::info!(target: "plugin", plugin = %plugin, "{text}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_long_line_is_cut_and_says_so_and_bad_utf8_is_replaced() {
        let mut line = BoundedLine::default();
        line.push(&vec![b'x'; MAX_STDERR_LINE + 10]);
        line.push(b"yy");
        let text = line.take();
        assert!(text.starts_with("xxx"));
        assert!(
            text.ends_with(" [line truncated: 12 more bytes dropped]"),
            "{text}"
        );
        assert!(line.is_empty());
        line.push(b"ok \xff\xfe\r");
        assert_eq!(line.take(), "ok \u{fffd}\u{fffd}");
    }
}
