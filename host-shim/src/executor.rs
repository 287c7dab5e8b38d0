//! The `Executor` trait: Bacalhau's Go interface in Rust.
//!
//! Differences from Go, on purpose: `wait` returns one `Result` (Go's pair of channels lets a
//! caller see a nil result and a nil error at once), and a context deadline travels as an
//! explicit `Option<Instant>` because it has to become `ExecutionTimeout` on the wire.

use std::time::Instant;

use executor_schema::{
    BidStrategyRequest, BidStrategyResponse, LogStreamRequest, Resources, RunCommandRequest,
    RunCommandResult,
};
use jsonrpsee::core::async_trait;

use crate::error::HostError;
use crate::logs::LogStream;

#[async_trait]
pub trait Executor: Send + Sync {
    /// Whether this executor can run jobs on this host now.
    async fn is_installed(&self) -> Result<bool, HostError>;

    async fn should_bid(
        &self,
        request: BidStrategyRequest,
    ) -> Result<BidStrategyResponse, HostError>;

    async fn should_bid_based_on_usage(
        &self,
        request: BidStrategyRequest,
        usage: Resources,
    ) -> Result<BidStrategyResponse, HostError>;

    /// Returns once the job runs. `deadline` becomes the request's `ExecutionTimeout` (the
    /// earlier of the two when both are set).
    async fn start(
        &self,
        request: RunCommandRequest,
        deadline: Option<Instant>,
    ) -> Result<(), HostError>;

    /// `start`, then `wait`.
    async fn run(
        &self,
        request: RunCommandRequest,
        deadline: Option<Instant>,
    ) -> Result<RunCommandResult, HostError>;

    /// Exactly one terminal outcome: the result (a failed job is a result with `ErrorMsg`), or
    /// an error such as `ExecutionNotFound`.
    async fn wait(&self, execution_id: &str) -> Result<RunCommandResult, HostError>;

    async fn cancel(&self, execution_id: &str) -> Result<(), HostError>;

    /// The execution's output: typed events, or (`LogStream::into_stdcopy`) Docker stdcopy
    /// frames as Bacalhau's log consumers read them.
    async fn get_log_stream(&self, request: LogStreamRequest) -> Result<LogStream, HostError>;
}

/// Put a caller's deadline into the request as `ExecutionTimeout` (seconds from now).
pub fn apply_deadline(
    request: &mut RunCommandRequest,
    deadline: Option<Instant>,
) -> Result<(), HostError> {
    let Some(deadline) = deadline else {
        return Ok(());
    };
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return Err(HostError::DeadlineExceeded);
    }
    let secs = left.as_secs_f64();
    request.execution_timeout = Some(match request.execution_timeout {
        Some(t) if t > 0.0 && t < secs => t,
        _ => secs,
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn deadline_becomes_timeout_unless_the_request_is_stricter() {
        let mut req = RunCommandRequest::default();
        apply_deadline(&mut req, Some(Instant::now() + Duration::from_secs(30))).unwrap();
        let t = req.execution_timeout.unwrap();
        assert!(t > 25.0 && t <= 30.0, "{t}");

        req.execution_timeout = Some(2.0);
        apply_deadline(&mut req, Some(Instant::now() + Duration::from_secs(30))).unwrap();
        assert_eq!(req.execution_timeout, Some(2.0));

        req.execution_timeout = None;
        apply_deadline(&mut req, None).unwrap();
        assert_eq!(req.execution_timeout, None);

        let past = Instant::now();
        std::thread::sleep(Duration::from_millis(2));
        assert!(matches!(
            apply_deadline(&mut req, Some(past)),
            Err(HostError::DeadlineExceeded)
        ));
    }
}
