//! `models.RunCommandResult`.

use serde::{Deserialize, Serialize};

/// What an execution produced. Note Bacalhau's lower-case `stderr` key.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(remote = "Self", default)]
pub struct RunCommandResult {
    #[serde(rename = "Stdout")]
    pub stdout: String,
    #[serde(rename = "StdoutTruncated")]
    pub stdout_truncated: bool,
    #[serde(rename = "stderr")]
    pub stderr: String,
    #[serde(rename = "StderrTruncated")]
    pub stderr_truncated: bool,
    #[serde(rename = "ExitCode")]
    pub exit_code: i64,
    /// Empty means success from the system's point of view, whatever the exit code.
    #[serde(rename = "ErrorMsg")]
    pub error_msg: String,
}

go_json!(
    RunCommandResult,
    [
        "Stdout",
        "StdoutTruncated",
        "stderr",
        "StderrTruncated",
        "ExitCode",
        "ErrorMsg"
    ]
);

impl RunCommandResult {
    /// Go's `NewFailedResult`: exit code -1 and the reason as the error message.
    pub fn failed(reason: impl Into<String>) -> Self {
        RunCommandResult {
            exit_code: -1,
            error_msg: reason.into(),
            ..Default::default()
        }
    }

    pub fn is_error(&self) -> bool {
        !self.error_msg.is_empty()
    }
}
