//! Log streams as a host hands them out: typed events, or Docker stdcopy frames.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use bytes::Bytes;
use executor_schema::{LogEvent, LogStream as StreamKind};
use futures::stream::{BoxStream, Stream, StreamExt};
use tokio::sync::{mpsc, Notify};
use tokio::task::JoinHandle;
use tokio_util::io::StreamReader;

use crate::error::HostError;

/// Docker stdcopy header: stream byte, three zero bytes, big-endian u32 payload size.
pub const STDCOPY_HEADER: usize = 8;

/// An execution's log. Yields `Data` events in log order and then one `End`; a stream that
/// was interrupted by a plugin restart resumes where it stopped, so no event is lost or
/// repeated. Dropping it ends the subscription.
pub struct LogStream {
    rx: mpsc::Receiver<Result<LogEvent, HostError>>,
    task: Option<JoinHandle<()>>,
    done: bool,
    budget: Option<Arc<ByteBudget>>,
}

/// Bytes of log data queued for a reader: the feeding task waits while the reader holds more
/// than the limit (the event that finds the queue empty always goes). The bound is in bytes,
/// because a plugin picks the size of each event.
pub struct ByteBudget {
    limit: usize,
    used: Mutex<usize>,
    freed: Notify,
}

impl ByteBudget {
    pub fn new(limit: usize) -> Arc<Self> {
        Arc::new(ByteBudget {
            limit,
            used: Mutex::new(0),
            freed: Notify::new(),
        })
    }

    /// Wait until `n` more bytes fit, then count them.
    pub async fn acquire(&self, n: usize) {
        loop {
            // Made before the check, so a release between the check and the wait is not missed.
            let freed = self.freed.notified();
            {
                let mut used = self.used.lock().unwrap_or_else(|p| p.into_inner());
                if *used == 0 || used.saturating_add(n) <= self.limit {
                    *used = used.saturating_add(n);
                    return;
                }
            }
            freed.await;
        }
    }

    pub fn release(&self, n: usize) {
        let mut used = self.used.lock().unwrap_or_else(|p| p.into_inner());
        *used = used.saturating_sub(n);
        drop(used);
        self.freed.notify_waiters();
    }
}

/// What an event counts against a [`ByteBudget`]: its data as it travels (base64).
pub fn event_bytes(event: &LogEvent) -> usize {
    match event {
        LogEvent::Data {
            data, timestamp, ..
        } => data.len() + timestamp.len(),
        LogEvent::End { .. } => 0,
    }
}

impl LogStream {
    /// A stream fed by `task` through `rx`; the task is aborted when the stream is dropped.
    pub fn new(rx: mpsc::Receiver<Result<LogEvent, HostError>>, task: JoinHandle<()>) -> Self {
        LogStream {
            rx,
            task: Some(task),
            done: false,
            budget: None,
        }
    }

    /// As [`LogStream::new`], for a task that counts every event it sends against `budget`
    /// ([`event_bytes`]); each is released as the reader takes it.
    pub fn with_budget(
        rx: mpsc::Receiver<Result<LogEvent, HostError>>,
        task: JoinHandle<()>,
        budget: Arc<ByteBudget>,
    ) -> Self {
        let mut stream = LogStream::new(rx, task);
        stream.budget = Some(budget);
        stream
    }

    /// Docker stdcopy frames (`[stream,0,0,0,size BE u32] data`), the stream Bacalhau's
    /// `LiveStreamer` and `stdcopy.StdCopy` read. The END event closes the reader; an error
    /// becomes a read error.
    pub fn into_stdcopy(self) -> StdcopyReader {
        let frames: BoxStream<'static, std::io::Result<Bytes>> = self
            .filter_map(|item| async move {
                match item {
                    Ok(ev @ LogEvent::Data { .. }) => Some(Ok(stdcopy_frame(&ev))),
                    Ok(LogEvent::End { .. }) => None,
                    Err(e) => Some(Err(std::io::Error::other(e.to_string()))),
                }
            })
            .boxed();
        StreamReader::new(frames)
    }
}

impl Drop for LogStream {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

impl Stream for LogStream {
    type Item = Result<LogEvent, HostError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.done {
            return Poll::Ready(None);
        }
        match self.rx.poll_recv(cx) {
            Poll::Ready(Some(item)) => {
                if let (Some(budget), Ok(ev)) = (&self.budget, &item) {
                    budget.release(event_bytes(ev));
                }
                if matches!(item, Ok(LogEvent::End { .. }) | Err(_)) {
                    self.done = true;
                }
                Poll::Ready(Some(item))
            }
            Poll::Ready(None) => {
                self.done = true;
                Poll::Ready(None)
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

/// An `AsyncRead` of Docker stdcopy frames.
pub type StdcopyReader = StreamReader<BoxStream<'static, std::io::Result<Bytes>>, Bytes>;

/// One stdcopy frame for a data event (empty for `End`).
pub fn stdcopy_frame(event: &LogEvent) -> Bytes {
    let LogEvent::Data { stream, data, .. } = event else {
        return Bytes::new();
    };
    // Decoded straight behind the header: the frame is the only buffer the bytes pass through.
    let mut frame = Vec::with_capacity(STDCOPY_HEADER + data.len() / 4 * 3 + 3);
    frame.push(stream.as_u8());
    frame.extend_from_slice(&[0; STDCOPY_HEADER - 1]);
    if STANDARD.decode_vec(data, &mut frame).is_err() {
        // As `LogEvent::data_bytes`: undecodable data counts as empty.
        frame.truncate(STDCOPY_HEADER);
    }
    // A chunk is at most one pipe read of the monitor, far below 4 GiB.
    let size = (frame.len() - STDCOPY_HEADER) as u32;
    frame[4..STDCOPY_HEADER].copy_from_slice(&size.to_be_bytes());
    Bytes::from(frame)
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum DemuxError {
    #[error("stdcopy stream ends inside a frame at byte {0}")]
    Truncated(usize),
    #[error("stdcopy frame at byte {offset} has unknown stream {stream}")]
    UnknownStream { offset: usize, stream: u8 },
}

/// Split a stdcopy stream into stdout and stderr bytes (`stdcopy.StdCopy`).
pub fn demux_stdcopy(mut input: &[u8]) -> Result<(Vec<u8>, Vec<u8>), DemuxError> {
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let total = input.len();
    while !input.is_empty() {
        let offset = total - input.len();
        if input.len() < STDCOPY_HEADER {
            return Err(DemuxError::Truncated(offset));
        }
        let size = u32::from_be_bytes([input[4], input[5], input[6], input[7]]) as usize;
        let body = input
            .get(STDCOPY_HEADER..STDCOPY_HEADER + size)
            .ok_or(DemuxError::Truncated(offset))?;
        match input[0] {
            1 => out.extend_from_slice(body),
            2 => err.extend_from_slice(body),
            stream => return Err(DemuxError::UnknownStream { offset, stream }),
        }
        input = &input[STDCOPY_HEADER + size..];
    }
    Ok((out, err))
}

/// Which stream a data event belongs to.
pub fn event_stream(event: &LogEvent) -> Option<StreamKind> {
    match event {
        LogEvent::Data { stream, .. } => Some(*stream),
        LogEvent::End { .. } => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    fn ev(stream: StreamKind, data: &[u8], offset: u64) -> LogEvent {
        LogEvent::data(stream, "t".into(), data, offset, offset + 1)
    }

    #[tokio::test]
    async fn events_become_stdcopy_frames_that_demux_back() {
        let (tx, rx) = mpsc::channel(8);
        let task = tokio::spawn(async {});
        for item in [
            ev(StreamKind::Stdout, b"out\n", 0),
            ev(StreamKind::Stderr, b"err\n", 1),
            ev(StreamKind::Stdout, b"\x00\xff", 2),
            LogEvent::End { offset: 3 },
        ] {
            tx.send(Ok(item)).await.unwrap();
        }
        // Nothing after END is read.
        tx.send(Ok(ev(StreamKind::Stdout, b"late", 4)))
            .await
            .unwrap();
        let mut bytes = Vec::new();
        LogStream::new(rx, task)
            .into_stdcopy()
            .read_to_end(&mut bytes)
            .await
            .unwrap();
        assert_eq!(&bytes[..8], &[1, 0, 0, 0, 0, 0, 0, 4]);
        let (out, err) = demux_stdcopy(&bytes).unwrap();
        assert_eq!(out, b"out\n\x00\xff");
        assert_eq!(err, b"err\n");
    }

    #[test]
    fn a_frame_carries_the_decoded_bytes_and_their_size() {
        let big: Vec<u8> = (0..70_000u32).map(|i| (i * 7) as u8).collect();
        for data in [&b""[..], b"a", b"ab", b"abc", &big] {
            let frame = stdcopy_frame(&ev(StreamKind::Stderr, data, 0));
            assert_eq!(frame[0], 2);
            assert_eq!(&frame[1..4], &[0, 0, 0]);
            assert_eq!(&frame[4..8], &(data.len() as u32).to_be_bytes());
            assert_eq!(&frame[8..], data);
        }
        let bad = LogEvent::Data {
            stream: StreamKind::Stdout,
            timestamp: "t".into(),
            data: "not base64!".into(),
            offset: 0,
            next: 1,
        };
        assert_eq!(&stdcopy_frame(&bad)[..], &[1, 0, 0, 0, 0, 0, 0, 0]);
        assert!(stdcopy_frame(&LogEvent::End { offset: 0 }).is_empty());
    }

    #[test]
    fn demux_refuses_a_cut_frame() {
        assert_eq!(
            demux_stdcopy(&[1, 0, 0, 0, 0, 0, 0, 5, b'a']),
            Err(DemuxError::Truncated(0))
        );
    }
}
