//! Appends frames to a `raw_container_logs` file. Runs in the monitor process (no async
//! runtime); every frame goes out in a single `write(2)` on an `O_APPEND` descriptor so that a
//! concurrent reader only ever sees whole frames or a clean prefix of one.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use super::format::{header, Stream, END_FRAME, HEADER_LEN, MAX_FRAME_DATA, PREFIX_LEN};
use super::timestamp::{self, TIMESTAMP_LEN};

pub struct LogWriter {
    file: File,
    /// Reused frame buffer: sized once for the largest frame, so writing never allocates.
    buf: Vec<u8>,
    ended: bool,
}

impl LogWriter {
    /// Creates (or truncates) the log, creating parent directories.
    pub fn create(path: &Path) -> io::Result<LogWriter> {
        if let Some(parent) = path.parent() {
            if !parent.as_os_str().is_empty() {
                std::fs::create_dir_all(parent)?;
            }
        }
        // std refuses `append` together with `truncate`, so O_APPEND is set as a raw flag.
        let file = OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .custom_flags(libc::O_APPEND)
            .open(path)?;
        Ok(LogWriter {
            file,
            buf: Vec::with_capacity(HEADER_LEN + PREFIX_LEN + MAX_FRAME_DATA),
            ended: false,
        })
    }

    /// Writes `data` as one or more frames stamped with the current time. Empty data still
    /// produces a frame (Docker never emits one, but it is valid and keeps `write` total).
    pub fn write(&mut self, stream: Stream, data: &[u8]) -> io::Result<()> {
        let mut ts = [0u8; TIMESTAMP_LEN];
        timestamp::now(&mut ts);
        if data.is_empty() {
            return self.write_frame(stream, &ts, data);
        }
        for chunk in data.chunks(MAX_FRAME_DATA) {
            self.write_frame(stream, &ts, chunk)?;
        }
        Ok(())
    }

    fn write_frame(
        &mut self,
        stream: Stream,
        ts: &[u8; TIMESTAMP_LEN],
        data: &[u8],
    ) -> io::Result<()> {
        // MAX_FRAME_DATA keeps this far below u32::MAX.
        let size = (PREFIX_LEN + data.len()) as u32;
        self.buf.clear();
        self.buf.extend_from_slice(&header(stream as u8, size));
        self.buf.extend_from_slice(ts);
        self.buf.push(b' ');
        self.buf.extend_from_slice(data);
        write_once(&mut self.file, &self.buf)
    }

    /// Appends the END frame; idempotent so a monitor's cleanup path can call it unconditionally.
    pub fn end(&mut self) -> io::Result<()> {
        if self.ended {
            return Ok(());
        }
        write_once(&mut self.file, &END_FRAME)?;
        self.ended = true;
        Ok(())
    }
}

/// A regular-file append is not split by the kernel short of a full disk or a signal, but if it
/// is, finishing the frame is the only way to keep the file parseable.
fn write_once(file: &mut File, bytes: &[u8]) -> io::Result<()> {
    file.write_all(bytes)
}

/// Appends an END frame to an existing log, for a plugin that finds the monitor died before
/// writing one. Does not create the file: a missing log is the caller's problem to report.
pub fn append_end_frame(path: &Path) -> io::Result<()> {
    let mut file = OpenOptions::new().append(true).open(path)?;
    write_once(&mut file, &END_FRAME)
}
