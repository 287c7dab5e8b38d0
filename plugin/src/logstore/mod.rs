//! The per-execution log in Bacalhau's `raw_container_logs` format: a writer for the monitor,
//! an incremental reader and an async follower for `executor_subscribeLogs`.

pub mod format;
pub mod timestamp;
pub mod writer;

pub use format::{stdcopy_frame, Stream};
pub use writer::{append_end_frame, LogWriter};
