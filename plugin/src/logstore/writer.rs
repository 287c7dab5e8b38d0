//! Appends frames to a `raw_container_logs` file. Runs in the monitor process (no async
//! runtime); every frame goes out in a single `write(2)` on an `O_APPEND` descriptor so that a
//! concurrent reader only ever sees whole frames or a clean prefix of one.
//!
//! The log is bounded: past its limit (or when the disk it is on runs low) one marker frame on
//! stderr says so and later output is only counted. The job's output is still drained by the
//! monitor, so the job never blocks on it, and the results files are not affected.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use super::format::{header, Stream, END_FRAME, HEADER_LEN, MAX_FRAME_DATA, PREFIX_LEN};
use super::timestamp::{self, TIMESTAMP_LEN};
use crate::results::CheckedDir;

/// How much the log may grow between two looks at the free space of its filesystem.
const SPACE_CHECK_EVERY: u64 = 4 << 20;
/// The log stops while less than this share of its filesystem is free for unprivileged users
/// (`1/RESERVE_DIVISOR`, at most [`RESERVE_MAX`]): a job's output must never fill the disk the
/// plugin's state lives on.
const RESERVE_DIVISOR: u64 = 20;
const RESERVE_MAX: u64 = 1 << 30;

/// Why the log stopped taking output before the job ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogStop {
    /// The log reached its limit (bytes of the file).
    Limit(u64),
    /// The filesystem the log is on has too little space left.
    DiskLow,
}

impl LogStop {
    fn marker(self) -> String {
        match self {
            LogStop::Limit(n) => format!(
                "executor-native: the log reached its limit of {n} bytes; the rest of the job's \
                 output is not in the log (the results files are not affected)\n"
            ),
            LogStop::DiskLow => "executor-native: the disk holding the log is nearly full; the \
                 rest of the job's output is not in the log (the results files are not affected)\n"
                .to_string(),
        }
    }
}

pub struct LogWriter {
    file: File,
    /// Reused frame buffer: sized once for the largest frame, so writing never allocates.
    buf: Vec<u8>,
    ended: bool,
    /// Bytes in the file.
    written: u64,
    /// The most bytes of frames the file takes before the marker.
    limit: u64,
    /// When to look at the free space next (in `written` bytes).
    next_space_check: u64,
    stopped: Option<LogStop>,
    /// Bytes of output not logged since the log stopped.
    dropped: u64,
}

impl LogWriter {
    /// Creates (or truncates) the log, creating parent directories. Unbounded, for tools and
    /// tests; the monitor uses [`LogWriter::create_in`].
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
            .custom_flags(libc::O_APPEND | libc::O_NOFOLLOW)
            .open(path)?;
        Ok(Self::new(file, u64::MAX))
    }

    /// A new log `name` in a checked directory (never through a symlink; see
    /// [`CheckedDir::create_file`]), holding at most `limit` bytes of frames before its marker.
    pub fn create_in(dir: &CheckedDir, name: &str, limit: u64) -> io::Result<LogWriter> {
        let file = dir.create_file(name)?;
        // SAFETY: fcntl on a descriptor we own.
        unsafe {
            let fd = file.as_raw_fd();
            let flags = libc::fcntl(fd, libc::F_GETFL);
            if flags < 0 || libc::fcntl(fd, libc::F_SETFL, flags | libc::O_APPEND) < 0 {
                return Err(io::Error::last_os_error());
            }
        }
        Ok(Self::new(file, limit))
    }

    fn new(file: File, limit: u64) -> LogWriter {
        LogWriter {
            file,
            buf: Vec::with_capacity(HEADER_LEN + PREFIX_LEN + MAX_FRAME_DATA),
            ended: false,
            written: 0,
            limit,
            next_space_check: 0,
            stopped: None,
            dropped: 0,
        }
    }

    /// Writes `data` as one or more frames stamped with the current time. Empty data still
    /// produces a frame (Docker never emits one, but it is valid and keeps `write` total).
    pub fn write(&mut self, stream: Stream, data: &[u8]) -> io::Result<()> {
        let mut ts = [0u8; TIMESTAMP_LEN];
        timestamp::now(&mut ts);
        self.write_stamped(stream, &ts, data)
    }

    /// As [`LogWriter::write`], stamped `ts` (when the first of `data` was read).
    pub fn write_stamped(
        &mut self,
        stream: Stream,
        ts: &[u8; TIMESTAMP_LEN],
        data: &[u8],
    ) -> io::Result<()> {
        if data.is_empty() {
            return self.write_bounded(stream, ts, data);
        }
        for chunk in data.chunks(MAX_FRAME_DATA) {
            self.write_bounded(stream, ts, chunk)?;
        }
        Ok(())
    }

    /// Why the log stopped early, if it did, and how many bytes of output it left out.
    pub fn stopped(&self) -> Option<(LogStop, u64)> {
        self.stopped.map(|s| (s, self.dropped))
    }

    fn write_bounded(
        &mut self,
        stream: Stream,
        ts: &[u8; TIMESTAMP_LEN],
        data: &[u8],
    ) -> io::Result<()> {
        if self.stopped.is_some() {
            self.dropped += data.len() as u64;
            return Ok(());
        }
        if self.written >= self.next_space_check {
            self.next_space_check = self.written.saturating_add(SPACE_CHECK_EVERY);
            if disk_low(&self.file) {
                self.dropped += data.len() as u64;
                return self.stop(LogStop::DiskLow);
            }
        }
        let overhead = (HEADER_LEN + PREFIX_LEN) as u64;
        let room = self.limit.saturating_sub(self.written);
        if overhead + data.len() as u64 <= room {
            return self.write_frame(stream as u8, ts, data);
        }
        // What fits goes out, the rest is counted, and the marker follows.
        let fit = room.saturating_sub(overhead).min(data.len() as u64) as usize;
        if fit > 0 {
            self.write_frame(stream as u8, ts, &data[..fit])?;
        }
        self.dropped += (data.len() - fit) as u64;
        self.stop(LogStop::Limit(self.limit))
    }

    fn stop(&mut self, why: LogStop) -> io::Result<()> {
        self.stopped = Some(why);
        let mut ts = [0u8; TIMESTAMP_LEN];
        timestamp::now(&mut ts);
        self.write_frame(Stream::Stderr as u8, &ts, why.marker().as_bytes())
    }

    fn write_frame(&mut self, stream: u8, ts: &[u8; TIMESTAMP_LEN], data: &[u8]) -> io::Result<()> {
        // MAX_FRAME_DATA keeps this far below u32::MAX.
        let size = (PREFIX_LEN + data.len()) as u32;
        self.buf.clear();
        self.buf.extend_from_slice(&header(stream, size));
        self.buf.extend_from_slice(ts);
        self.buf.push(b' ');
        self.buf.extend_from_slice(data);
        write_once(&mut self.file, &self.buf)?;
        self.written += self.buf.len() as u64;
        Ok(())
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

/// Whether the filesystem holding `file` has less free space than the log must leave.
// statvfs's fields are 32-bit on some targets.
#[allow(clippy::unnecessary_cast)]
fn disk_low(file: &File) -> bool {
    let mut st = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: fstatvfs on a descriptor we own, into a buffer of the right type.
    if unsafe { libc::fstatvfs(file.as_raw_fd(), st.as_mut_ptr()) } != 0 {
        // Cannot tell: keep logging (the write itself fails on a full disk and is reported).
        return false;
    }
    // SAFETY: fstatvfs succeeded and filled the buffer.
    let st = unsafe { st.assume_init() };
    let unit = st.f_frsize as u64;
    let total = (st.f_blocks as u64).saturating_mul(unit);
    let free = (st.f_bavail as u64).saturating_mul(unit);
    free < (total / RESERVE_DIVISOR).min(RESERVE_MAX)
}

/// A regular-file append is not split by the kernel short of a full disk or a signal, but if it
/// is, finishing the frame is the only way to keep the file parseable.
fn write_once(file: &mut File, bytes: &[u8]) -> io::Result<()> {
    file.write_all(bytes)
}

/// Appends an END frame to an existing log, for a plugin that finds the monitor died before
/// writing one. Does not create the file: a missing log is the caller's problem to report.
/// Never through a symlink: the log's directory may have been made by someone else.
pub fn append_end_frame(path: &Path) -> io::Result<()> {
    let mut file = OpenOptions::new()
        .append(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)?;
    write_once(&mut file, &END_FRAME)
}
