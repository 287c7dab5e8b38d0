//! jsonrpsee client transport over a plugin's stdin/stdout pipes, framed as NDJSON.
//!
//! The receiver is forgiving where jsonrpsee is not: one stray non-JSON line, valid JSON that is
//! no protocol message (`{"foo":1}`, a batch, a request from the plugin), or a response to an id
//! the host never asked (or was already answered) would otherwise end the client (jsonrpsee
//! treats each as fatal), so such lines are logged and skipped, as PROTOCOL.md section 2 says.
//! The sender records the id of every request it writes; a response passes only for an id
//! that is still pending. When the plugin's stdout closes, the error names the exit status and the plugin's
//! last stderr lines, and jsonrpsee fails every pending call with it.
//!
//! Log notifications are nearly all of the bytes a plugin writes: a line that starts exactly
//! like the plugin's own `executor_logs` notification skips the check (see
//! `is_log_notification`) and goes to its log stream directly when one is routed
//! (`log_routes`), else to jsonrpsee, which parses it fully anyway.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use executor_schema::framing::{EncodeError, Frame, NdjsonCodec};
use futures::{SinkExt, StreamExt};
use jsonrpsee::core::client::{ReceivedMessage, TransportReceiverT, TransportSenderT};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;
use tokio_util::codec::{FramedRead, FramedWrite};

use crate::human::escape;
use crate::log_routes::{LogRouter, LOG_NOTIFICATION_PREFIX};

/// How a plugin process ended, as far as the host knows.
pub type ExitWatch = watch::Receiver<Option<String>>;

/// The last lines a plugin wrote on stderr, kept for error messages.
#[derive(Clone, Default)]
pub struct StderrTail(Arc<Mutex<VecDeque<String>>>);

impl StderrTail {
    const KEEP: usize = 20;

    pub fn push(&self, line: String) {
        if let Ok(mut q) = self.0.lock() {
            if q.len() == Self::KEEP {
                q.pop_front();
            }
            q.push_back(line);
        }
    }

    pub fn lines(&self) -> Vec<String> {
        self.0
            .lock()
            .map(|q| q.iter().cloned().collect())
            .unwrap_or_default()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("plugin {plugin} closed its protocol output ({status}){tail}")]
    Closed {
        plugin: String,
        status: String,
        tail: String,
    },
    #[error("reading from plugin {plugin} failed: {source}")]
    Read {
        plugin: String,
        source: std::io::Error,
    },
    #[error("writing to plugin {plugin} failed: {source}")]
    Write { plugin: String, source: EncodeError },
}

pub struct Sender<W> {
    plugin: String,
    frames: FramedWrite<W, NdjsonCodec>,
    pending: PendingIds,
}

pub struct Receiver<R> {
    plugin: String,
    frames: FramedRead<R, NdjsonCodec>,
    exit: ExitWatch,
    stderr: StderrTail,
    router: LogRouter,
    pending: PendingIds,
}

/// Ids (their JSON text) of the requests written and not yet answered; shared by a sender and
/// its receiver.
#[derive(Clone, Default)]
pub struct PendingIds(Arc<Mutex<std::collections::HashSet<String>>>);

impl PendingIds {
    /// Record the id of an outgoing request (a message without one records nothing).
    fn sent(&self, msg: &str) {
        #[derive(serde::Deserialize)]
        struct Outgoing<'a> {
            #[serde(borrow, default)]
            id: Option<&'a serde_json::value::RawValue>,
        }
        if let Ok(Outgoing { id: Some(id) }) = serde_json::from_str::<Outgoing>(msg) {
            if let Ok(mut ids) = self.0.lock() {
                ids.insert(id.get().to_string());
            }
        }
    }

    /// Whether `id` was asked and not yet answered; it is answered from now on.
    fn answer(&self, id: &str) -> bool {
        self.0.lock().is_ok_and(|mut ids| ids.remove(id))
    }
}

/// Whether a field is there at all (`null` included).
#[derive(Default)]
struct Present(bool);

impl<'de> serde::Deserialize<'de> for Present {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        serde::de::IgnoredAny::deserialize(d).map(|_| Present(true))
    }
}

/// The parts of an incoming message that say what it is.
#[derive(serde::Deserialize)]
struct Incoming<'a> {
    #[serde(borrow, default)]
    id: Option<&'a serde_json::value::RawValue>,
    #[serde(default)]
    method: Present,
    #[serde(default)]
    result: Present,
    #[serde(default)]
    error: Present,
}

/// Why a JSON line from the plugin is no message for this host, if it is not.
fn not_a_message(line: &str, pending: &PendingIds) -> Option<&'static str> {
    let Ok(msg) = serde_json::from_str::<Incoming>(line) else {
        return Some("valid JSON, but not a JSON-RPC message object");
    };
    match (msg.method.0, msg.id) {
        (true, None) => None,
        (true, Some(_)) => Some("a request; a plugin never sends requests"),
        (false, _) if msg.result.0 == msg.error.0 => {
            Some("neither a notification nor a response with exactly one of result or error")
        }
        (false, None) => Some("a response to no request (id null or missing)"),
        (false, Some(id)) if pending.answer(id.get()) => None,
        (false, Some(_)) => Some("a response to an id that was never asked or is answered"),
    }
}

impl<W: AsyncWrite + Unpin + Send + 'static> Sender<W> {
    pub fn new(plugin: impl Into<String>, output: W) -> Self {
        Sender {
            plugin: plugin.into(),
            frames: FramedWrite::new(output, NdjsonCodec::default()),
            pending: PendingIds::default(),
        }
    }

    /// The ids this sender writes, for its [`Receiver`].
    pub fn pending(&self) -> PendingIds {
        self.pending.clone()
    }
}

impl<R: AsyncRead + Unpin + Send + 'static> Receiver<R> {
    /// Log notifications of subscriptions routed through `router` go there instead of to
    /// jsonrpsee. Responses pass for the ids in `pending` (see [`Sender::pending`]).
    pub fn new(
        plugin: impl Into<String>,
        input: R,
        exit: ExitWatch,
        stderr: StderrTail,
        router: LogRouter,
        pending: PendingIds,
    ) -> Self {
        Receiver {
            plugin: plugin.into(),
            // Log notifications are tens of KiB and the plugin's pipe holds 1 MiB: reading it
            // in large pieces means one wakeup and one read for many lines instead of several
            // reads for each.
            frames: FramedRead::with_capacity(input, NdjsonCodec::default(), READ_CAPACITY),
            exit,
            stderr,
            router,
            pending,
        }
    }

    async fn closed_error(&mut self) -> TransportError {
        // The pipe usually closes a moment before the exit status is known.
        let status = tokio::time::timeout(Duration::from_secs(2), async {
            let _ = self.exit.wait_for(Option::is_some).await;
        })
        .await;
        let status = match (status, self.exit.borrow().clone()) {
            (_, Some(s)) => s,
            _ => "still running".to_string(),
        };
        // Give the stderr drain a moment to catch the last words.
        tokio::time::sleep(Duration::from_millis(50)).await;
        let lines = self.stderr.lines();
        let tail = if lines.is_empty() {
            String::new()
        } else {
            format!("; last stderr lines:\n{}", lines.join("\n"))
        };
        TransportError::Closed {
            plugin: self.plugin.clone(),
            status,
            tail,
        }
    }
}

impl<W: AsyncWrite + Unpin + Send + 'static> TransportSenderT for Sender<W> {
    type Error = TransportError;

    async fn send(&mut self, msg: String) -> Result<(), TransportError> {
        self.pending.sent(&msg);
        self.frames
            .send(msg)
            .await
            .map_err(|source| TransportError::Write {
                plugin: self.plugin.clone(),
                source,
            })
    }

    async fn close(&mut self) -> Result<(), TransportError> {
        SinkExt::<String>::close(&mut self.frames)
            .await
            .map_err(|source| TransportError::Write {
                plugin: self.plugin.clone(),
                source,
            })
    }
}

/// Initial read buffer of the receiver: the size of the plugin's protocol pipe.
const READ_CAPACITY: usize = 1 << 20;

/// A log notification from the plugin itself. Only the plugin's notification writer produces
/// this exact start, and the object must also be closed on the same line; such a line skips
/// the full JSON check because jsonrpsee parses it fully right after (if it were broken after
/// all, jsonrpsee would end the connection and the supervisor would restart the plugin, as for
/// any other protocol failure). Stray output, even JSON-looking, does not start like this.
fn is_log_notification(line: &[u8]) -> bool {
    line.starts_with(LOG_NOTIFICATION_PREFIX) && line.ends_with(b"}")
}

/// Whether a line can be a JSON-RPC message at all (object or batch array).
fn looks_like_json_message(line: &[u8]) -> bool {
    matches!(
        line.iter().find(|b| !b.is_ascii_whitespace()),
        Some(b'{') | Some(b'[')
    )
}

impl<R: AsyncRead + Unpin + Send + 'static> TransportReceiverT for Receiver<R> {
    type Error = TransportError;

    async fn receive(&mut self) -> Result<ReceivedMessage, TransportError> {
        loop {
            match self.frames.next().await {
                Some(Ok(Frame::Line(line))) => {
                    if is_log_notification(&line) {
                        match self.router.deliver(line) {
                            Ok(()) => continue,
                            // As bytes: jsonrpsee parses with `from_slice`, which checks UTF-8
                            // in the strings it reads, so a separate pass is not needed.
                            Err(line) => return Ok(ReceivedMessage::Bytes(line)),
                        }
                    }
                    if looks_like_json_message(&line) {
                        match String::from_utf8(line) {
                            Ok(text)
                                if serde_json::from_str::<serde::de::IgnoredAny>(&text).is_ok() =>
                            {
                                match not_a_message(&text, &self.pending) {
                                    None => return Ok(ReceivedMessage::Text(text)),
                                    Some(why) => {
                                        tracing::warn!(plugin = %escape(&self.plugin), line = %escape(&text), "skipped a line on the plugin's protocol output: {why}");
                                    }
                                }
                            }
                            Ok(text) => {
                                tracing::warn!(plugin = %escape(&self.plugin), line = %escape(&text), "skipped an unparsable line on the plugin's protocol output");
                            }
                            Err(e) => {
                                tracing::warn!(plugin = %escape(&self.plugin), line = %escape(&String::from_utf8_lossy(e.as_bytes())), "skipped a non-UTF-8 line on the plugin's protocol output");
                            }
                        }
                    } else {
                        tracing::warn!(plugin = %escape(&self.plugin), line = %escape(&String::from_utf8_lossy(&line)), "skipped a non-JSON line on the plugin's protocol output");
                    }
                }
                Some(Ok(Frame::Oversized { len })) => {
                    tracing::warn!(plugin = %self.plugin, len, "skipped an oversized message from the plugin");
                }
                Some(Err(source)) => {
                    return Err(TransportError::Read {
                        plugin: self.plugin.clone(),
                        source,
                    })
                }
                None => return Err(self.closed_error().await),
            }
        }
    }
}
