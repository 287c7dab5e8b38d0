//! The per-execution log in Bacalhau's `raw_container_logs` format: a writer for the monitor,
//! an incremental reader and an async follower for `executor_subscribeLogs`.

pub mod follow;
pub mod format;
pub mod notification;
pub mod reader;
pub mod timestamp;
pub mod writer;

pub use follow::{follow, FollowOptions};
pub use format::{stdcopy_frame, Stream};
pub use reader::{decode, FrameError, LogFrame, LogItem, LogReader};
pub use writer::{append_end_frame, LogStop, LogWriter};
