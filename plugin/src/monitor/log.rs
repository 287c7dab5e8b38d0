//! Where the job's output goes besides the results files: the execution's log, written in
//! coalesced frames.

use std::io;
use std::time::{Duration, Instant};

use crate::results;

/// Where the job's output goes besides the results files.
pub trait JobLog {
    /// `stream`: 0 = stdout, 1 = stderr.
    fn write(&mut self, stream: usize, data: &[u8]);
    fn end(&mut self);
    /// The first error writing the log, if any.
    fn error(&self) -> Option<String>;
    /// When output held back to be gathered into one frame must be written.
    fn flush_at(&self) -> Option<Instant> {
        None
    }
    /// Write what is held back if its time (`flush_at`) has come.
    fn flush_due(&mut self, _now: Instant) {}
    /// Why the log left output out, if it did.
    fn dropped(&self) -> Option<String> {
        None
    }
}

/// How long after a frame the next one waits to gather small writes. The first write after a
/// quiet spell goes out at once, so a job that prints now and then is followed without delay;
/// a job writing a byte at a time makes a frame per this interval, not one per write.
pub const COALESCE: Duration = Duration::from_millis(10);
/// Held-back output goes out when it reaches this, whatever the time.
const COALESCE_MAX: usize = 256 * 1024;

/// Writes the log in the `raw_container_logs` format, gathering small writes into frames.
pub struct RawLog {
    writer: Option<crate::logstore::LogWriter>,
    error: Option<String>,
    /// Output held back for the next frame: all of one stream, so frames keep the order in
    /// which the two streams were read.
    pending: Vec<u8>,
    pending_stream: usize,
    /// When the first held-back byte was read (the frame's timestamp).
    pending_ts: [u8; crate::logstore::timestamp::TIMESTAMP_LEN],
    last_frame: Option<Instant>,
}

impl RawLog {
    /// A new log `name` in `dir`, holding at most `limit` bytes (see [`LogWriter::create_in`]).
    ///
    /// [`LogWriter::create_in`]: crate::logstore::LogWriter::create_in
    pub fn create_in(dir: &results::CheckedDir, name: &str, limit: u64) -> io::Result<Self> {
        Ok(RawLog {
            writer: Some(crate::logstore::LogWriter::create_in(dir, name, limit)?),
            error: None,
            pending: Vec::new(),
            pending_stream: 0,
            pending_ts: [0; crate::logstore::timestamp::TIMESTAMP_LEN],
            last_frame: None,
        })
    }

    fn fail(&mut self, e: io::Error) {
        eprintln!("monitor: writing the log failed, logging stops: {e}");
        self.error.get_or_insert_with(|| e.to_string());
        self.writer = None;
    }

    fn frame(
        &mut self,
        stream: usize,
        ts: Option<&[u8; crate::logstore::timestamp::TIMESTAMP_LEN]>,
        data: &[u8],
    ) {
        let s = if stream == 0 {
            crate::logstore::Stream::Stdout
        } else {
            crate::logstore::Stream::Stderr
        };
        self.last_frame = Some(Instant::now());
        if let Some(w) = self.writer.as_mut() {
            let written = match ts {
                Some(ts) => w.write_stamped(s, ts, data),
                None => w.write(s, data),
            };
            if let Err(e) = written {
                self.fail(e);
            }
        }
    }

    fn flush(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        let data = std::mem::take(&mut self.pending);
        let ts = self.pending_ts;
        self.frame(self.pending_stream, Some(&ts), &data);
        // Keep the buffer's allocation for the next batch.
        self.pending = data;
        self.pending.clear();
    }
}

impl JobLog for RawLog {
    fn write(&mut self, stream: usize, data: &[u8]) {
        if !self.pending.is_empty() && self.pending_stream != stream {
            self.flush();
        }
        let now = Instant::now();
        if self.pending.is_empty() {
            if self.last_frame.is_none_or(|t| now >= t + COALESCE) {
                self.frame(stream, None, data);
                return;
            }
            self.pending_stream = stream;
            crate::logstore::timestamp::now(&mut self.pending_ts);
        }
        self.pending.extend_from_slice(data);
        if self.pending.len() >= COALESCE_MAX {
            self.flush();
        }
    }
    fn end(&mut self) {
        self.flush();
        if let Some(w) = self.writer.as_mut() {
            if let Err(e) = w.end() {
                self.fail(e);
            }
        }
    }
    fn error(&self) -> Option<String> {
        self.error.clone()
    }
    fn flush_at(&self) -> Option<Instant> {
        if self.pending.is_empty() {
            return None;
        }
        Some(self.last_frame.map_or_else(Instant::now, |t| t + COALESCE))
    }
    fn flush_due(&mut self, now: Instant) {
        if self.flush_at().is_some_and(|at| now >= at) {
            self.flush();
        }
    }
    fn dropped(&self) -> Option<String> {
        let (why, bytes) = self.writer.as_ref()?.stopped()?;
        Some(match why {
            crate::logstore::LogStop::Limit(n) => {
                format!(
                    "{bytes} bytes of output not logged: the log reached its limit of {n} bytes"
                )
            }
            crate::logstore::LogStop::DiskLow => {
                format!(
                    "{bytes} bytes of output not logged: the disk holding the log is nearly full"
                )
            }
        })
    }
}
