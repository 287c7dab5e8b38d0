//! The executor's error codes and their JSON-RPC error objects.
//!
//! Every error a plugin returns for an executor method is a JSON-RPC error object whose `message`
//! is the Go package's sentinel text and whose `data` names the code, so a Go host can rebuild a
//! `bacerrors` error with the same `Code` and `Component`.

use jsonrpsee::types::{ErrorObject, ErrorObjectOwned};
use serde::{Deserialize, Serialize};

/// The component name Bacalhau's executors put on their errors.
pub const COMPONENT: &str = "Executor";

/// Executor error codes (schema/PROTOCOL.md, section 8 "Errors").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ErrorCode {
    ExecutionAlreadyStarted,
    ExecutionAlreadyComplete,
    ExecutionNotFound,
    ExecutionAlreadyCancelled,
    InvalidParams,
    Unsupported,
    /// A method other than `initialize` called before `initialize`.
    NotInitialized,
    /// Anything else that went wrong inside the plugin (I/O, the OS refusing something).
    Internal,
}

impl ErrorCode {
    pub const ALL: [ErrorCode; 8] = [
        ErrorCode::ExecutionAlreadyStarted,
        ErrorCode::ExecutionAlreadyComplete,
        ErrorCode::ExecutionNotFound,
        ErrorCode::ExecutionAlreadyCancelled,
        ErrorCode::InvalidParams,
        ErrorCode::Unsupported,
        ErrorCode::NotInitialized,
        ErrorCode::Internal,
    ];

    /// The JSON-RPC error code on the wire.
    pub const fn rpc_code(self) -> i32 {
        match self {
            ErrorCode::ExecutionAlreadyStarted => -32001,
            ErrorCode::ExecutionAlreadyComplete => -32002,
            ErrorCode::ExecutionNotFound => -32003,
            ErrorCode::ExecutionAlreadyCancelled => -32004,
            ErrorCode::InvalidParams => -32602,
            ErrorCode::Unsupported => -32010,
            ErrorCode::NotInitialized => -32011,
            ErrorCode::Internal => -32603,
        }
    }

    /// The name carried in `data.code`.
    pub const fn name(self) -> &'static str {
        match self {
            ErrorCode::ExecutionAlreadyStarted => "ExecutionAlreadyStarted",
            ErrorCode::ExecutionAlreadyComplete => "ExecutionAlreadyComplete",
            ErrorCode::ExecutionNotFound => "ExecutionNotFound",
            ErrorCode::ExecutionAlreadyCancelled => "ExecutionAlreadyCancelled",
            ErrorCode::InvalidParams => "InvalidParams",
            ErrorCode::Unsupported => "Unsupported",
            ErrorCode::NotInitialized => "NotInitialized",
            ErrorCode::Internal => "Internal",
        }
    }

    /// The fixed message for the state-machine codes (the Go package's sentinel texts).
    pub const fn sentinel(self) -> Option<&'static str> {
        match self {
            ErrorCode::ExecutionAlreadyStarted => Some("execution already started"),
            ErrorCode::ExecutionAlreadyComplete => Some("execution already complete"),
            ErrorCode::ExecutionNotFound => Some("execution not found"),
            ErrorCode::ExecutionAlreadyCancelled => Some("execution already cancelled"),
            _ => None,
        }
    }

    pub fn from_name(name: &str) -> Option<ErrorCode> {
        Self::ALL.into_iter().find(|c| c.name() == name)
    }

    pub fn from_rpc_code(code: i32) -> Option<ErrorCode> {
        Self::ALL.into_iter().find(|c| c.rpc_code() == code)
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// One problem found while validating a request: where, and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct FieldProblem {
    /// Path of the offending field, e.g. `EngineParams.Params.Entrypoint` or `Outputs[1].Path`.
    pub field: String,
    pub message: String,
}

impl std::fmt::Display for FieldProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.field.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.field, self.message)
        }
    }
}

/// The `data` member of an executor error object.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ErrorData {
    pub code: String,
    pub component: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub execution_id: Option<String>,
    /// For `InvalidParams`: every problem found, with its field path.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub problems: Vec<FieldProblem>,
}

/// An error an executor method returns: a code, a message a user can act on, and context.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{message}")]
pub struct ExecutorError {
    pub code: ErrorCode,
    pub message: String,
    pub execution_id: Option<String>,
    pub problems: Vec<FieldProblem>,
}

impl ExecutorError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ExecutorError {
            code,
            message: message.into(),
            execution_id: None,
            problems: Vec::new(),
        }
    }

    /// A state-machine error with the sentinel message, for one execution.
    pub fn state(code: ErrorCode, execution_id: impl Into<String>) -> Self {
        let message = code.sentinel().unwrap_or(code.name());
        ExecutorError::new(code, message).with_execution(execution_id)
    }

    pub fn already_started(id: impl Into<String>) -> Self {
        Self::state(ErrorCode::ExecutionAlreadyStarted, id)
    }
    pub fn already_complete(id: impl Into<String>) -> Self {
        Self::state(ErrorCode::ExecutionAlreadyComplete, id)
    }
    pub fn not_found(id: impl Into<String>) -> Self {
        Self::state(ErrorCode::ExecutionNotFound, id)
    }
    pub fn already_cancelled(id: impl Into<String>) -> Self {
        Self::state(ErrorCode::ExecutionAlreadyCancelled, id)
    }
    pub fn unsupported(message: impl Into<String>) -> Self {
        ExecutorError::new(ErrorCode::Unsupported, message)
    }
    pub fn internal(message: impl Into<String>) -> Self {
        ExecutorError::new(ErrorCode::Internal, message)
    }

    /// Invalid params: the message joins every problem, `data.problems` lists them.
    pub fn invalid_params(problems: Vec<FieldProblem>) -> Self {
        let message = problems
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("; ");
        ExecutorError {
            code: ErrorCode::InvalidParams,
            message,
            execution_id: None,
            problems,
        }
    }

    pub fn with_execution(mut self, id: impl Into<String>) -> Self {
        self.execution_id = Some(id.into());
        self
    }

    pub fn data(&self) -> ErrorData {
        ErrorData {
            code: self.code.name().to_string(),
            component: COMPONENT.to_string(),
            execution_id: self.execution_id.clone(),
            problems: self.problems.clone(),
        }
    }

    /// Rebuild from a JSON-RPC error object; `None` when it is not an executor error
    /// (a transport or protocol error such as -32601).
    pub fn from_error_object(obj: &ErrorObject<'_>) -> Option<Self> {
        let data: Option<ErrorData> = obj
            .data()
            .and_then(|raw| serde_json::from_str(raw.get()).ok());
        let code = data
            .as_ref()
            .and_then(|d| ErrorCode::from_name(&d.code))
            .or_else(|| match obj.code() {
                // -32602 and -32603 are also jsonrpsee's own codes: only trust them with data.
                -32602 => Some(ErrorCode::InvalidParams),
                c => ErrorCode::from_rpc_code(c).filter(|c| *c != ErrorCode::Internal),
            })?;
        let (execution_id, problems) = match data {
            Some(d) => (d.execution_id, d.problems),
            None => (None, Vec::new()),
        };
        Some(ExecutorError {
            code,
            message: obj.message().to_string(),
            execution_id,
            problems,
        })
    }
}

impl From<ExecutorError> for ErrorObjectOwned {
    fn from(err: ExecutorError) -> Self {
        ErrorObject::owned(err.code.rpc_code(), err.message.clone(), Some(err.data()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_errors_round_trip_through_error_objects() {
        for code in ErrorCode::ALL {
            let err = ExecutorError::state(code, "e-1");
            let obj: ErrorObjectOwned = err.clone().into();
            assert_eq!(obj.code(), code.rpc_code());
            let back = ExecutorError::from_error_object(&obj).expect("executor error");
            assert_eq!(back, err);
        }
    }

    #[test]
    fn sentinel_texts_match_the_go_package() {
        let obj: ErrorObjectOwned = ExecutorError::not_found("e-9").into();
        assert_eq!(obj.message(), "execution not found");
        let data: serde_json::Value = serde_json::from_str(obj.data().unwrap().get()).unwrap();
        assert_eq!(
            data,
            serde_json::json!({"code": "ExecutionNotFound", "component": "Executor", "executionId": "e-9"})
        );
    }

    #[test]
    fn protocol_errors_are_not_executor_errors() {
        let obj = ErrorObject::owned(-32601, "Method not found", None::<()>);
        assert!(ExecutorError::from_error_object(&obj).is_none());
    }
}
