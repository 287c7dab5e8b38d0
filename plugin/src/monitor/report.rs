//! The monitor's side of its boundary with the plugin: the report lines on its stdout (the
//! start report, then the news that the result is written) and the start errors they carry,
//! typed by [`ErrorCode`] with the request field at fault.

use std::fs::File;
use std::io::{self, Write};
use std::mem::ManuallyDrop;
use std::os::fd::FromRawFd;

use executor_schema::{ErrorCode, ExecutorError, FieldProblem};
use serde::{Deserialize, Serialize};

use super::spawn::SandboxError;
use super::MONITOR_ARG;
use crate::results;
use crate::state::{ResultRecord, StateError};

/// The longest `Finished` report line that carries its result record. With the start report, both
/// lines fit a pipe's buffer many times over, so the monitor never blocks on a plugin that
/// stopped reading.
pub const INLINE_RESULT_MAX: usize = 16 * 1024;

/// The one line the monitor writes on its stdout for the plugin's `start`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "camelCase")]
pub enum MonitorReport {
    /// The job is running.
    Running {
        #[serde(rename = "jobPid")]
        job_pid: i32,
    },
    /// The job could not be executed; its (failed) result follows in `result.json`.
    NotStarted { reason: String },
    /// The result is in `result.json` (not yet flushed to disk: the monitor does that next,
    /// then exits). Sent after `Running` or `NotStarted`. Carries the record itself when it is
    /// small ([`INLINE_RESULT_MAX`]), so the plugin need not read the file back.
    Finished {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        record: Option<Box<ResultRecord>>,
    },
    /// Setup failed: a start error, no result will follow. [`MonitorReport::start_error`] is
    /// the error the plugin answers with.
    Failed {
        error: String,
        #[serde(default = "internal_code", skip_serializing_if = "is_internal")]
        code: ErrorCode,
        /// The request field at fault, with code `InvalidParams`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        field: Option<String>,
    },
}

fn internal_code() -> ErrorCode {
    ErrorCode::Internal
}

fn is_internal(code: &ErrorCode) -> bool {
    *code == ErrorCode::Internal
}

impl MonitorReport {
    /// The start error a [`MonitorReport::Failed`] stands for; `None` for any other report.
    pub fn start_error(self) -> Option<ExecutorError> {
        let MonitorReport::Failed { error, code, field } = self else {
            return None;
        };
        Some(match code {
            ErrorCode::InvalidParams => ExecutorError::invalid_params(vec![FieldProblem {
                field: field.unwrap_or_default(),
                message: error,
            }]),
            code => ExecutorError::new(code, error),
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum MonitorError {
    #[error("usage: executor-native {MONITOR_ARG} <execution-state-dir>")]
    Usage,
    #[error(transparent)]
    State(#[from] StateError),
    #[error("{what}: {source}")]
    Setup { what: String, source: io::Error },
    /// The request needs something this host cannot do.
    #[error("{0}")]
    Unsupported(String),
    /// The request's `field` cannot be honoured as given (the caller's fault).
    #[error("{field}: {message}")]
    InvalidParams { field: String, message: String },
    #[error("{0}")]
    Sandbox(String),
    /// The results directory (or the log's) cannot be written into safely.
    #[error(transparent)]
    Dir(#[from] results::DirError),
}

impl MonitorError {
    /// The report for a start error.
    pub fn report(&self) -> MonitorReport {
        match self {
            MonitorError::InvalidParams { field, message } => MonitorReport::Failed {
                error: message.clone(),
                code: ErrorCode::InvalidParams,
                field: Some(field.clone()),
            },
            MonitorError::Dir(e) if e.is_callers() => MonitorReport::Failed {
                error: e.to_string(),
                code: ErrorCode::InvalidParams,
                field: Some("ResultsDir".into()),
            },
            MonitorError::Unsupported(_) => MonitorReport::Failed {
                error: self.to_string(),
                code: ErrorCode::Unsupported,
                field: None,
            },
            _ => MonitorReport::Failed {
                error: self.to_string(),
                code: ErrorCode::Internal,
                field: None,
            },
        }
    }
}

impl From<SandboxError> for MonitorError {
    fn from(e: SandboxError) -> Self {
        match e {
            SandboxError::Unsupported(m) => MonitorError::Unsupported(m),
            SandboxError::InvalidParams { field, message } => {
                MonitorError::InvalidParams { field, message }
            }
            SandboxError::Setup(m) => MonitorError::Sandbox(m),
        }
    }
}

/// The report channel: fd 1, a pipe the plugin reads. One line when the job started (or could
/// not), one more when the result is written; then fd 1 is pointed at /dev/null. The lines are
/// short and at most two, so a plugin that stopped reading can never block us.
pub struct Reporter {
    sent: bool,
}

impl Reporter {
    pub(super) fn stdout() -> Self {
        Reporter { sent: false }
    }

    /// The start report; only the first one is sent.
    pub fn send(&mut self, report: &MonitorReport) {
        if self.sent {
            return;
        }
        self.sent = true;
        write_line(report);
    }

    /// Tell the plugin the result is written, and close the channel.
    pub fn finished(&mut self, record: &ResultRecord) {
        self.sent = true;
        write_bytes(finished_line(record));
        if let Ok(null) = File::options().read(true).write(true).open("/dev/null") {
            use std::os::fd::AsRawFd;
            // SAFETY: dup2 onto fd 1; `null` is closed when dropped.
            unsafe { libc::dup2(null.as_raw_fd(), 1) };
        }
    }
}

/// The `Finished` line for `record` (without the newline): [`MonitorReport::Finished`] with the
/// record when that stays small enough, serialized once and without copying the record.
fn finished_line(record: &ResultRecord) -> Vec<u8> {
    #[derive(Serialize)]
    #[serde(tag = "status", rename = "finished")]
    struct WithRecord<'a> {
        record: &'a ResultRecord,
    }
    match serde_json::to_vec(&WithRecord { record }) {
        Ok(line) if line.len() <= INLINE_RESULT_MAX => line,
        _ => report_line(&MonitorReport::Finished { record: None }),
    }
}

fn report_line(report: &MonitorReport) -> Vec<u8> {
    serde_json::to_vec(report).unwrap_or_else(|_| b"{}".to_vec())
}

fn write_line(report: &MonitorReport) {
    write_bytes(report_line(report));
}

fn write_bytes(mut line: Vec<u8>) {
    line.push(b'\n');
    // SAFETY: fd 1 stays open for the life of the process; ManuallyDrop keeps File from
    // closing it.
    let mut out = ManuallyDrop::new(unsafe { File::from_raw_fd(1) });
    // The plugin may be gone (EPIPE; SIGPIPE is ignored): the job runs on regardless.
    let _ = out.write_all(&line);
}

#[cfg(test)]
mod tests {
    use super::*;
    use executor_schema::RunCommandResult;

    #[test]
    fn small_results_travel_in_the_finished_report_and_large_ones_stay_in_the_file() {
        let mut rec = ResultRecord {
            result: RunCommandResult::failed("x"),
            finished_at_ms: 1,
            stdout_bytes: 0,
            stderr_bytes: 0,
            notes: Default::default(),
            usage: None,
        };
        let line = String::from_utf8(finished_line(&rec)).unwrap();
        match serde_json::from_str::<MonitorReport>(&line).unwrap() {
            MonitorReport::Finished { record: Some(r) } => assert_eq!(*r, rec),
            other => panic!("{other:?}"),
        }
        rec.result.stdout = "y".repeat(INLINE_RESULT_MAX);
        let line = String::from_utf8(finished_line(&rec)).unwrap();
        assert_eq!(line, r#"{"status":"finished"}"#);
        assert!(matches!(
            serde_json::from_str::<MonitorReport>(&line).unwrap(),
            MonitorReport::Finished { record: None }
        ));
    }

    #[test]
    fn reports_are_one_json_object() {
        let r = MonitorReport::Running { job_pid: 7 };
        let s = serde_json::to_string(&r).unwrap();
        assert_eq!(s, r#"{"status":"running","jobPid":7}"#);
        let back: MonitorReport = serde_json::from_str(&s).unwrap();
        assert_eq!(back, r);
    }
}
