//! The plugin's JSON-RPC connection loop over any byte pipe pair (stdin/stdout in production).
//!
//! jsonrpsee ships no stdio server, so this assembles one from jsonrpsee-core's public parts, as
//! reth's IPC server does: one reader that frames lines and spawns a task per request, and one
//! writer task that owns the output and drains a single channel, so responses and subscription
//! notifications can never interleave inside a line. Bulk lines (log notifications) reach the
//! writer through a second lane bounded in bytes (`outlet`).

use std::sync::Arc;

use executor_schema::api::{METHOD_INITIALIZE, METHOD_SHUTDOWN};
use executor_schema::framing::{Frame, NdjsonCodec, MAX_MESSAGE_SIZE};
use futures::{SinkExt, StreamExt};
use jsonrpsee::core::id_providers::RandomIntegerIdProvider;
use jsonrpsee::types::{ErrorObject, ErrorObjectOwned, Id, Params, Request};
use jsonrpsee::{
    BoundedSubscriptions, ConnectionId, Extensions, MethodCallback, MethodSink, Methods,
    SubscriptionState,
};
use serde_json::value::RawValue;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, watch};
use tokio_util::codec::{FramedRead, FramedWrite};

use crate::outlet::{BulkLine, OutletQueue};

/// Bytes of bulk lines (log notifications) the plugin holds for a host that reads slowly: a few
/// dozen typical events, enough to keep the pipe full.
pub const BULK_BUDGET: usize = 2 << 20;

#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub max_message_size: usize,
    pub max_subscriptions: u32,
    /// Messages queued for the writer before senders wait. Responses are small and one per
    /// request; log data, which can be large, goes through the byte-bounded outlet instead.
    pub message_buffer: usize,
    /// Methods served before the next line is read, so a host may pipeline calls after them
    /// (`initialize`); everything else runs concurrently.
    pub barrier_methods: Vec<&'static str>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            max_message_size: MAX_MESSAGE_SIZE,
            max_subscriptions: 1024,
            message_buffer: 32,
            barrier_methods: vec![METHOD_INITIALIZE],
        }
    }
}

/// Pipe capacity asked for on the protocol output. With the default 64 KiB a single log
/// notification nearly fills the pipe, so plugin and host take turns sleeping and waking for
/// every one; 1 MiB (the unprivileged maximum by default) lets both run.
pub const OUTPUT_PIPE_SIZE: i32 = 1 << 20;

/// Asks for a larger kernel buffer on `fd` if it is a pipe; anything else, or a refusal (a
/// lower `fs.pipe-max-size`), leaves it as it was, which only costs speed.
pub fn widen_pipe(fd: std::os::fd::BorrowedFd<'_>, bytes: i32) {
    use std::os::fd::AsRawFd;
    // SAFETY: F_SETPIPE_SZ on a descriptor we borrow; it changes no memory of ours.
    let rc = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETPIPE_SZ, bytes) };
    if rc < 0 {
        tracing::debug!(
            error = %std::io::Error::last_os_error(),
            "kept the default pipe size on the protocol output"
        );
    }
}

/// Why the loop ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Exit {
    /// The peer closed our input: the host is gone.
    InputClosed,
    /// A `shutdown` call succeeded and its answer was written.
    Shutdown,
}

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("reading the protocol input failed: {0}")]
    Read(std::io::Error),
    #[error("writing the protocol output failed: {0}")]
    Write(String),
}

/// A stop request shared with method handlers (e.g. a fatal condition), besides `shutdown`.
#[derive(Clone)]
pub struct StopHandle(Arc<watch::Sender<bool>>);

impl StopHandle {
    pub fn stop(&self) {
        self.0.send_replace(true);
    }
}

/// Serve `methods` until the input closes or `shutdown` succeeds.
pub async fn serve<R, W>(
    methods: Methods,
    input: R,
    output: W,
    config: ServerConfig,
) -> Result<Exit, ServerError>
where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    serve_with_outlet(methods, input, output, config, None).await
}

/// `serve`, also writing the bulk lines sent through the outlet whose queue is `bulk`.
pub async fn serve_with_outlet<R, W>(
    methods: Methods,
    input: R,
    output: W,
    config: ServerConfig,
    bulk: Option<OutletQueue>,
) -> Result<Exit, ServerError>
where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let (stop_tx, stop_rx) = watch::channel(false);
    serve_with_stop(
        methods,
        input,
        output,
        config,
        bulk,
        StopHandle(Arc::new(stop_tx)),
        stop_rx,
    )
    .await
}

async fn serve_with_stop<R, W>(
    methods: Methods,
    input: R,
    output: W,
    config: ServerConfig,
    bulk: Option<OutletQueue>,
    stop: StopHandle,
    mut stop_rx: watch::Receiver<bool>,
) -> Result<Exit, ServerError>
where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let (tx, rx) = mpsc::channel::<Box<RawValue>>(config.message_buffer);
    let writer = tokio::spawn(write_loop(
        rx,
        bulk,
        FramedWrite::new(output, NdjsonCodec::new(config.max_message_size)),
        stop_rx.clone(),
    ));
    let conn = Arc::new(Connection {
        methods,
        sink: MethodSink::new_with_limit(
            tx,
            u32::try_from(config.max_message_size).unwrap_or(u32::MAX),
        ),
        subscriptions: BoundedSubscriptions::new(config.max_subscriptions),
        max_response_size: config.max_message_size,
        barrier_methods: config.barrier_methods,
        stop,
    });
    let mut frames = FramedRead::new(input, NdjsonCodec::new(config.max_message_size));

    let exit = loop {
        tokio::select! {
            biased;
            _ = stopped(&mut stop_rx) => break Ok(Exit::Shutdown),
            frame = frames.next() => match frame {
                None => break Ok(Exit::InputClosed),
                Some(Err(e)) => break Err(ServerError::Read(e)),
                Some(Ok(Frame::Oversized { len })) => {
                    tracing::warn!(len, "rejected an oversized message");
                    let err = ErrorObject::owned(
                        -32600,
                        format!(
                            "Invalid request: message of {len} bytes exceeds the {} byte limit",
                            conn.max_response_size
                        ),
                        None::<()>,
                    );
                    conn.send_error(Id::Null, err).await;
                }
                Some(Ok(Frame::Line(line))) => {
                    let conn = conn.clone();
                    if conn.is_barrier(&line) {
                        // Later lines are read only once this call has been answered.
                        conn.handle_line(line).await;
                    } else {
                        tokio::spawn(async move { conn.handle_line(line).await });
                    }
                }
            }
        }
    };

    // On input EOF the writer must still flush answers of calls already running? No: the host
    // is gone, nobody reads them. On shutdown the writer drains what was queued first.
    if exit.as_ref().is_ok_and(|e| *e == Exit::InputClosed) {
        conn.stop.stop();
    }
    match writer.await {
        Ok(Ok(())) => exit,
        Ok(Err(e)) => Err(e),
        Err(join) => Err(ServerError::Write(join.to_string())),
    }
}

async fn write_loop<W: AsyncWrite + Unpin>(
    mut rx: mpsc::Receiver<Box<RawValue>>,
    mut bulk: Option<OutletQueue>,
    mut out: FramedWrite<W, NdjsonCodec>,
    mut stop_rx: watch::Receiver<bool>,
) -> Result<(), ServerError> {
    loop {
        tokio::select! {
            biased;
            msg = rx.recv() => match msg {
                Some(msg) => feed(&mut out, msg).await?,
                None => break,
            },
            line = next_bulk(&mut bulk), if bulk.is_some() => match line {
                Some(line) => {
                    // A subscription's `accept` answer is queued on the main lane before its
                    // first notification is sent here; take everything queued there first so
                    // an answer is never overtaken by its own notifications.
                    while let Ok(msg) = rx.try_recv() {
                        feed(&mut out, msg).await?;
                    }
                    write_bulk(&mut out, line).await?;
                }
                None => bulk = None,
            },
            _ = stopped(&mut stop_rx) => {
                // Everything queued before the stop (the shutdown answer among it) goes out.
                while let Ok(msg) = rx.try_recv() {
                    feed(&mut out, msg).await?;
                }
                break;
            }
        }
        // Batch what is already queued into one flush.
        while let Ok(msg) = rx.try_recv() {
            feed(&mut out, msg).await?;
        }
        flush(&mut out).await?;
    }
    flush(&mut out).await
}

async fn next_bulk(bulk: &mut Option<OutletQueue>) -> Option<BulkLine> {
    match bulk {
        Some(q) => q.recv().await,
        None => std::future::pending().await,
    }
}

/// Writes a complete line after what is buffered, straight from the sender's buffer. Its share
/// of the byte budget is returned when `line` is dropped, once written.
async fn write_bulk<W: AsyncWrite + Unpin>(
    out: &mut FramedWrite<W, NdjsonCodec>,
    line: BulkLine,
) -> Result<(), ServerError> {
    flush(out).await?;
    out.get_mut()
        .write_all(&line.bytes)
        .await
        .map_err(|e| ServerError::Write(e.to_string()))
}

async fn flush<W: AsyncWrite + Unpin>(
    out: &mut FramedWrite<W, NdjsonCodec>,
) -> Result<(), ServerError> {
    SinkExt::<&str>::flush(out)
        .await
        .map_err(|e| ServerError::Write(e.to_string()))
}

async fn stopped(rx: &mut watch::Receiver<bool>) {
    // The guard `wait_for` returns is not Send; drop it before anything else awaits.
    let _ = rx.wait_for(|s| *s).await.map(|_| ());
}

async fn feed<W: AsyncWrite + Unpin>(
    out: &mut FramedWrite<W, NdjsonCodec>,
    msg: Box<RawValue>,
) -> Result<(), ServerError> {
    use executor_schema::framing::EncodeError;
    match out.feed(msg.get()).await {
        Ok(()) => Ok(()),
        // One bad message must not take the connection down; the peer gets nothing for it,
        // which only happens for a notification too big to send (responses are size-checked).
        Err(e @ (EncodeError::TooLarge { .. } | EncodeError::NotJson(_))) => {
            tracing::error!(error = %e, "dropped an outgoing message");
            Ok(())
        }
        Err(EncodeError::Io(e)) => Err(ServerError::Write(e.to_string())),
    }
}

struct Connection {
    methods: Methods,
    sink: MethodSink,
    subscriptions: BoundedSubscriptions,
    max_response_size: usize,
    barrier_methods: Vec<&'static str>,
    stop: StopHandle,
}

const CONN_ID: ConnectionId = ConnectionId(0);

impl Connection {
    async fn send_error(&self, id: Id<'_>, err: ErrorObject<'_>) {
        // A closed sink means the writer is gone, i.e. we are shutting down.
        let _ = self.sink.send_error(id, err).await;
    }

    fn is_barrier(&self, line: &[u8]) -> bool {
        #[derive(serde::Deserialize)]
        struct MethodOnly<'a> {
            #[serde(borrow)]
            method: Option<std::borrow::Cow<'a, str>>,
        }
        !self.barrier_methods.is_empty()
            && serde_json::from_slice::<MethodOnly<'_>>(line)
                .ok()
                .and_then(|m| m.method)
                .is_some_and(|m| self.barrier_methods.contains(&m.as_ref()))
    }

    async fn handle_line(&self, line: Vec<u8>) {
        match serde_json::from_slice::<Request<'_>>(&line) {
            Ok(req) => self.handle_request(req).await,
            Err(_) => self.reject(&line).await,
        }
    }

    /// Answer a line that is not a single valid request with the right error, or nothing for a
    /// notification (JSON-RPC: a notification is never answered).
    async fn reject(&self, line: &[u8]) {
        let value: serde_json::Value = match serde_json::from_slice(line) {
            Ok(v) => v,
            Err(e) => {
                let err = ErrorObject::owned(-32700, format!("Parse error: {e}"), None::<()>);
                return self.send_error(Id::Null, err).await;
            }
        };
        let invalid =
            |msg: &str| ErrorObject::owned(-32600, format!("Invalid request: {msg}"), None::<()>);
        match &value {
            serde_json::Value::Array(_) => {
                let err = invalid("batch requests are not supported; send one request per line");
                self.send_error(Id::Null, err).await
            }
            serde_json::Value::Object(obj) => {
                let id = obj.get("id").and_then(json_id);
                match id {
                    None if obj.contains_key("method") && !obj.contains_key("id") => {
                        tracing::debug!("ignored a notification from the host");
                    }
                    id => {
                        let why = if obj.get("jsonrpc").and_then(|v| v.as_str()) != Some("2.0") {
                            "\"jsonrpc\" must be \"2.0\""
                        } else if !obj.get("method").is_some_and(|m| m.is_string()) {
                            "\"method\" must be a string"
                        } else if id.is_none() {
                            "\"id\" must be a non-negative integer, a string or null"
                        } else {
                            "\"params\" must be an array or an object"
                        };
                        self.send_error(id.unwrap_or(Id::Null), invalid(why)).await
                    }
                }
            }
            _ => {
                self.send_error(Id::Null, invalid("expected a JSON object"))
                    .await
            }
        }
    }

    async fn handle_request(&self, req: Request<'_>) {
        let id = req.id.clone().into_owned();
        // JSON-RPC: params, when present, are structured; jsonrpsee's parser takes any value.
        if let Some(p) = &req.params {
            if !matches!(
                p.get().trim_start().as_bytes().first(),
                Some(b'[' | b'{') | Some(b'n')
            ) {
                let err = ErrorObject::owned(
                    -32600,
                    "Invalid request: \"params\" must be an array or an object",
                    None::<()>,
                );
                return self.send_error(id, err).await;
            }
        }
        let method = req.method.to_string();
        let params = Params::new(req.params.as_ref().map(|p| p.get())).into_owned();
        let Some((_, callback)) = self.methods.method_with_name(&method) else {
            let err = ErrorObject::owned(-32601, format!("Method not found: {method}"), None::<()>);
            return self.send_error(id, err).await;
        };
        let max = self.max_response_size;
        let response = match callback {
            MethodCallback::Sync(cb) => cb(id, params, max, Extensions::new()),
            MethodCallback::Async(cb) => cb(id, params, CONN_ID, max, Extensions::new()).await,
            MethodCallback::Unsubscription(cb) => cb(id, params, CONN_ID, max, Extensions::new()),
            MethodCallback::Subscription(cb) => {
                let Some(permit) = self.subscriptions.acquire() else {
                    let err: ErrorObjectOwned = ErrorObject::owned(
                        -32006,
                        "Too many subscriptions on the connection",
                        None::<()>,
                    );
                    return self.send_error(id, err).await;
                };
                let state = SubscriptionState {
                    conn_id: CONN_ID,
                    id_provider: &RandomIntegerIdProvider,
                    subscription_permit: permit,
                };
                cb(id, params, self.sink.clone(), state, Extensions::new()).await
            }
        };
        // A subscription's answer was already sent by `accept`/`reject`, before any item.
        if response.is_method_call() {
            let success = response.is_success();
            let _ = self.sink.send(response.into_json()).await;
            // A successful shutdown ends the connection once its answer is written.
            if success && method == METHOD_SHUTDOWN {
                self.stop.stop();
            }
        } else if !response.is_subscription() {
            let _ = self.sink.send(response.into_json()).await;
        }
    }
}

fn json_id(v: &serde_json::Value) -> Option<Id<'static>> {
    match v {
        serde_json::Value::Null => Some(Id::Null),
        serde_json::Value::Number(n) => n.as_u64().map(Id::Number),
        serde_json::Value::String(s) => Some(Id::Str(s.clone().into())),
        _ => None,
    }
}
