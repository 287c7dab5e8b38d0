//! Errors a host sees: the executor's own codes, kept apart from a plugin that is down.

use executor_schema::{ErrorCode, ExecutorError};
use jsonrpsee::core::client::Error as ClientError;

use crate::process::PluginSpawnError;

#[derive(Debug, thiserror::Error)]
pub enum HostError {
    /// What the plugin answered: a wire code (AlreadyStarted, NotFound, InvalidParams, ...).
    #[error(transparent)]
    Executor(#[from] ExecutorError),
    /// The plugin went away during a call that cannot be repeated safely (`start`): whether the
    /// execution exists is unknown; `wait` on its id tells.
    #[error("plugin for engine {engine} died during {method}; the outcome is unknown: {detail}")]
    Interrupted {
        engine: String,
        method: &'static str,
        detail: String,
    },
    /// The plugin crashed too often in a short time; it is not restarted for a while.
    #[error("plugin for engine {engine} is unhealthy: it {reason}{tail}", tail = format_tail(.stderr))]
    Unhealthy {
        engine: String,
        reason: String,
        stderr: Vec<String>,
    },
    /// The plugin could not be started or did not complete the handshake.
    #[error("plugin {plugin} could not be started: {detail}{tail}", tail = format_tail(.stderr))]
    Launch {
        plugin: String,
        detail: String,
        stderr: Vec<String>,
    },
    /// A protocol-level answer that is no executor error (method not found, parse error, ...).
    #[error("plugin for engine {engine} answered {method} with a protocol error: {detail}")]
    Protocol {
        engine: String,
        method: &'static str,
        detail: String,
    },
    /// The plugin answered `initialize` with an error: it refuses its configuration. Not
    /// retried; the message names the key to change.
    #[error("plugin {plugin} refused its configuration: {message}")]
    Refused { plugin: String, message: String },
    /// The plugin did not answer a call that needs no time within its limit; it was killed
    /// (it is restarted on next use). For `executor_start` whether the execution started is
    /// unknown: `wait` on its id tells.
    #[error(
        "plugin for engine {engine} did not answer {method} within {limit:?}; it was stopped \
         and is restarted on next use{hint}",
        hint = if *.method == "executor_start" {
            "; whether the execution started is unknown: wait on its id to find out"
        } else {
            ""
        }
    )]
    Timeout {
        engine: String,
        method: &'static str,
        limit: std::time::Duration,
    },
    /// The caller's deadline passed before the job could be started.
    #[error("context deadline exceeded")]
    DeadlineExceeded,
    #[error(transparent)]
    Spawn(#[from] PluginSpawnError),
    #[error(transparent)]
    Pin(#[from] crate::pin::PinError),
    #[error("the host shim is shutting down")]
    ShuttingDown,
}

fn format_tail(lines: &[String]) -> String {
    if lines.is_empty() {
        String::new()
    } else {
        format!("; last stderr lines:\n{}", lines.join("\n"))
    }
}

impl HostError {
    /// The wire code when the plugin answered with an executor error.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            HostError::Executor(e) => Some(e.code),
            _ => None,
        }
    }

    pub fn is_code(&self, code: ErrorCode) -> bool {
        self.code() == Some(code)
    }

    /// The plugin process is gone or cannot be reached (as opposed to an answer it gave).
    pub fn is_plugin_down(&self) -> bool {
        matches!(
            self,
            HostError::Interrupted { .. }
                | HostError::Unhealthy { .. }
                | HostError::Launch { .. }
                | HostError::Refused { .. }
                | HostError::Timeout { .. }
        )
    }
}

/// How a failed client call is to be treated.
pub(crate) enum CallFailure {
    /// An answer: pass it on.
    Answer(HostError),
    /// The connection is gone: the plugin died (or is dying).
    Disconnected(String),
}

pub(crate) fn classify(engine: &str, method: &'static str, err: ClientError) -> CallFailure {
    match err {
        ClientError::Call(obj) => match ExecutorError::from_error_object(&obj) {
            Some(e) => CallFailure::Answer(HostError::Executor(e)),
            None => CallFailure::Answer(HostError::Protocol {
                engine: engine.to_string(),
                method,
                detail: format!("{} ({})", obj.message(), obj.code()),
            }),
        },
        ClientError::RestartNeeded(e) => CallFailure::Disconnected(e.to_string()),
        ClientError::Transport(e) => CallFailure::Disconnected(e.to_string()),
        ClientError::ServiceDisconnect => CallFailure::Disconnected("disconnected".to_string()),
        other => CallFailure::Answer(HostError::Protocol {
            engine: engine.to_string(),
            method,
            detail: other.to_string(),
        }),
    }
}
