//! Async replay-and-follow of a log file for `executor_subscribeLogs`.
//!
//! A pull stream: nothing is read until the consumer asks, so a slow subscriber only slows its
//! own stream and memory stays bounded by one read chunk plus one frame.

use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use futures::Stream;
use tokio::time::Instant;

use super::reader::{LogItem, LogReader};

/// How often a follower at the end of the file checks for more. The writer flushes each chunk
/// it drains, so this bounds added latency, not throughput: a follower only sleeps when it has
/// caught up.
pub const POLL_INTERVAL: Duration = Duration::from_millis(25);

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FollowOptions {
    /// Frame boundary to start from (default 0); ignored when `tail` is set.
    pub position: Option<u64>,
    /// Start at the end of the file as it is when the file is opened: only new output.
    pub tail: bool,
    /// At the end of the file, wait for more until the END frame instead of stopping.
    pub follow: bool,
    /// How long to wait for the file to be created before failing.
    pub wait_for_file: Duration,
}

impl Default for FollowOptions {
    fn default() -> Self {
        FollowOptions {
            position: None,
            tail: false,
            follow: false,
            wait_for_file: Duration::from_secs(60),
        }
    }
}

enum State {
    Opening { path: PathBuf, deadline: Instant },
    Reading(LogReader),
    Done,
}

/// Streams the log at `path`: history from `opts.position` (or only new output with `tail`),
/// then, with `follow`, new frames as they are written. Ends with exactly one `LogItem::End`,
/// after the END frame or, without `follow`, at the end of the file (a trailing frame still
/// being written is left for a later resume). An error ends the stream without an `End`.
pub fn follow(
    path: PathBuf,
    opts: FollowOptions,
) -> impl Stream<Item = io::Result<LogItem>> + Send {
    let deadline = Instant::now() + opts.wait_for_file;
    let state = State::Opening { path, deadline };
    futures::stream::unfold((state, opts), |(state, opts)| async move {
        let (item, state) = step(state, &opts).await;
        item.map(|item| (item, (state, opts)))
    })
}

/// Produces the next item and the state after it; `None` once the stream is over.
async fn step(mut state: State, opts: &FollowOptions) -> (Option<io::Result<LogItem>>, State) {
    loop {
        state = match state {
            State::Done => return (None, State::Done),
            State::Opening { path, deadline } => match open(&path, opts, deadline).await {
                Ok(reader) => State::Reading(reader),
                Err(e) => return (Some(Err(e)), State::Done),
            },
            State::Reading(mut reader) => {
                match reader.decode_buffered() {
                    Ok(Some(item)) => {
                        let next = if reader.ended() {
                            State::Done
                        } else {
                            State::Reading(reader)
                        };
                        return (Some(Ok(item)), next);
                    }
                    Ok(None) => {}
                    Err(e) => return (Some(Err(e.into())), State::Done),
                }
                let (reader, filled) = match blocking(move || {
                    let n = reader.fill();
                    (reader, n)
                })
                .await
                {
                    Ok(pair) => pair,
                    Err(e) => return (Some(Err(e)), State::Done),
                };
                match filled {
                    Ok(0) if !opts.follow => {
                        let end = LogItem::End {
                            offset: reader.offset(),
                        };
                        return (Some(Ok(end)), State::Done);
                    }
                    Ok(0) => tokio::time::sleep(POLL_INTERVAL).await,
                    Ok(_) => {}
                    Err(e) => return (Some(Err(e)), State::Done),
                }
                State::Reading(reader)
            }
        };
    }
}

async fn open(path: &Path, opts: &FollowOptions, deadline: Instant) -> io::Result<LogReader> {
    loop {
        let p = path.to_path_buf();
        let tail = opts.tail;
        let position = opts.position.unwrap_or(0);
        let opened = blocking(move || {
            let file = super::reader::open_log_file(&p)?;
            let offset = if tail {
                file.metadata()?.len()
            } else {
                position
            };
            LogReader::new(file, offset)
        })
        .await?;
        match opened {
            Ok(reader) => return Ok(reader),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                if Instant::now() >= deadline {
                    return Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!(
                            "timeout while waiting for execution logs: {} does not exist",
                            path.display()
                        ),
                    ));
                }
                tokio::time::sleep(POLL_INTERVAL).await;
            }
            Err(e) => return Err(e),
        }
    }
}

/// File I/O on a regular file blocks, so it runs on tokio's blocking pool.
async fn blocking<T, F>(f: F) -> io::Result<T>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| io::Error::other(format!("log reader task failed: {e}")))
}
