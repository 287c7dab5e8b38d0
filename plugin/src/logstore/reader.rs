//! Incremental, synchronous decoding of a `raw_container_logs` file from a byte offset.
//!
//! The file is appended to while it is read, so a frame cut short at the end of the file is
//! "not complete yet", never an error; only bytes that can never become a valid frame are.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;

use super::format::{Stream, END_STREAM, HEADER_LEN, MAX_FRAME_DATA, PREFIX_LEN, SYSTEMERR_STREAM};
use super::timestamp::{self, TIMESTAMP_LEN};

/// Bytes requested from the file per read; also the buffer size in the common case.
pub const READ_CHUNK: usize = 256 * 1024;
/// Largest frame payload accepted. Our writer caps data at `MAX_FRAME_DATA`, Docker at far less;
/// anything larger is a corrupt size field, and refusing it keeps the reader's memory bounded.
pub const MAX_FRAME_PAYLOAD: usize = PREFIX_LEN + 16 * MAX_FRAME_DATA;

/// One data frame and where it sits in the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogFrame {
    pub stream: Stream,
    /// RFC3339Nano UTC with nine fractional digits, exactly as stored.
    pub timestamp: String,
    pub data: Vec<u8>,
    /// Offset of the frame's first header byte.
    pub offset: u64,
    /// Offset just past the frame: where a client resumes to get the frames after this one.
    pub next: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogItem {
    Frame(LogFrame),
    /// End of the log. `offset` is where the END frame starts, or, for a reader that stopped
    /// at the end of the file without following, where reading stopped; resuming from it loses
    /// nothing.
    End {
        offset: u64,
    },
}

/// Bytes at `offset` that can never become a valid frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("log frame is too short at offset {offset}: size {size} < {PREFIX_LEN}")]
    TooShort { offset: u64, size: u32 },
    #[error("log frame is too large at offset {offset}: size {size} > {MAX_FRAME_PAYLOAD}")]
    TooLarge { offset: u64, size: u32 },
    #[error("log frame at offset {offset} has a bad timestamp {timestamp:?}")]
    BadTimestamp { offset: u64, timestamp: String },
    #[error("log frame at offset {offset} has no space after its timestamp")]
    MissingSeparator { offset: u64 },
    #[error("log frame at offset {offset} has unknown stream byte {byte}")]
    UnknownStream { offset: u64, byte: u8 },
    #[error("log frame at offset {offset} has non-zero padding in its header")]
    BadHeader { offset: u64 },
    #[error("error from daemon in stream at offset {offset}: {message}")]
    SystemError { offset: u64, message: String },
}

impl FrameError {
    pub fn offset(&self) -> u64 {
        match self {
            FrameError::TooShort { offset, .. }
            | FrameError::TooLarge { offset, .. }
            | FrameError::BadTimestamp { offset, .. }
            | FrameError::MissingSeparator { offset }
            | FrameError::UnknownStream { offset, .. }
            | FrameError::BadHeader { offset }
            | FrameError::SystemError { offset, .. } => *offset,
        }
    }
}

impl From<FrameError> for io::Error {
    fn from(e: FrameError) -> io::Error {
        io::Error::new(io::ErrorKind::InvalidData, e)
    }
}

/// Decodes the item at the start of `buf`, which lies at file offset `offset`.
/// Returns the item and the bytes it used, or `None` when `buf` holds only part of it.
pub fn decode(buf: &[u8], offset: u64) -> Result<Option<(LogItem, usize)>, FrameError> {
    if buf.is_empty() {
        return Ok(None);
    }
    // Checked before the header is complete so a bad stream byte fails at once instead of
    // looking like a frame still being written.
    let byte = buf[0];
    if byte != END_STREAM && byte != SYSTEMERR_STREAM && Stream::from_byte(byte).is_none() {
        return Err(FrameError::UnknownStream { offset, byte });
    }
    if buf.len() < HEADER_LEN {
        return Ok(None);
    }
    if buf[1..4] != [0, 0, 0] {
        return Err(FrameError::BadHeader { offset });
    }
    let size = u32::from_be_bytes([buf[4], buf[5], buf[6], buf[7]]);
    if byte == END_STREAM {
        // Docker's END frame has no payload; a reader that stops at it never looks past it.
        return Ok(Some((LogItem::End { offset }, HEADER_LEN)));
    }
    if (size as usize) < PREFIX_LEN {
        return Err(FrameError::TooShort { offset, size });
    }
    if size as usize > MAX_FRAME_PAYLOAD {
        return Err(FrameError::TooLarge { offset, size });
    }
    let total = HEADER_LEN + size as usize;
    if buf.len() < total {
        return Ok(None);
    }
    let payload = &buf[HEADER_LEN..total];
    let ts = &payload[..TIMESTAMP_LEN];
    if timestamp::parse(ts).is_none() {
        return Err(FrameError::BadTimestamp {
            offset,
            timestamp: String::from_utf8_lossy(ts).into_owned(),
        });
    }
    if payload[TIMESTAMP_LEN] != b' ' {
        return Err(FrameError::MissingSeparator { offset });
    }
    let data = &payload[PREFIX_LEN..];
    let stream = match Stream::from_byte(byte) {
        Some(s) => s,
        None => {
            return Err(FrameError::SystemError {
                offset,
                message: String::from_utf8_lossy(data).into_owned(),
            })
        }
    };
    let frame = LogFrame {
        stream,
        // Validated as ASCII digits and separators above.
        timestamp: String::from_utf8_lossy(ts).into_owned(),
        data: data.to_vec(),
        offset,
        next: offset + total as u64,
    };
    Ok(Some((LogItem::Frame(frame), total)))
}

/// Opens a log for reading: never through a symlink, and only a regular file. A host's
/// `ExecutionDir/logs` is checked when the monitor makes the log, but its path is what a reader
/// opens later: whoever can rename entries beside it could put a directory of their own there
/// whose log is a symlink to another execution's, or a FIFO that would block the reader.
pub fn open_log_file(path: &Path) -> io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)?;
    if !file.metadata()?.is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{} is not a regular file", path.display()),
        ));
    }
    Ok(file)
}

/// Reads items from an open log file, starting at a frame boundary, in bounded memory.
/// Reads go through `pread` at the tracked offset, so the file's own cursor is irrelevant and
/// the file may grow between calls.
pub struct LogReader {
    file: File,
    /// File offset of `buf[start]`.
    offset: u64,
    buf: Vec<u8>,
    start: usize,
    ended: bool,
}

impl LogReader {
    /// Opens `path` and positions at `offset`, which must be a frame boundary (0, or a `next`
    /// or `End` offset from an earlier read) not beyond the current end of the file.
    pub fn open(path: &Path, offset: u64) -> io::Result<LogReader> {
        LogReader::new(open_log_file(path)?, offset)
    }

    pub fn new(file: File, offset: u64) -> io::Result<LogReader> {
        let len = file.metadata()?.len();
        if offset > len {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("log position {offset} is beyond the end of the log ({len} bytes)"),
            ));
        }
        Ok(LogReader {
            file,
            offset,
            buf: Vec::new(),
            start: 0,
            ended: false,
        })
    }

    /// Offset of the next undecoded byte: a frame boundary.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Whether an END frame has been returned; nothing is read after it.
    pub fn ended(&self) -> bool {
        self.ended
    }

    /// Current length of the underlying file.
    pub fn file_len(&self) -> io::Result<u64> {
        Ok(self.file.metadata()?.len())
    }

    /// Decodes the next item from bytes already read, without touching the file.
    pub fn decode_buffered(&mut self) -> Result<Option<LogItem>, FrameError> {
        if self.ended {
            return Ok(None);
        }
        match decode(&self.buf[self.start..], self.offset)? {
            Some((item, used)) => {
                self.start += used;
                self.offset += used as u64;
                if matches!(item, LogItem::End { .. }) {
                    self.ended = true;
                    self.buf = Vec::new();
                    self.start = 0;
                }
                Ok(Some(item))
            }
            None => Ok(None),
        }
    }

    /// Reads more of the file after the buffered bytes; returns how many bytes were added
    /// (0 at the current end of the file).
    pub fn fill(&mut self) -> io::Result<usize> {
        if self.ended {
            return Ok(0);
        }
        // Drop consumed bytes so the buffer only ever holds one partial frame plus a chunk.
        if self.start > 0 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        let have = self.buf.len();
        let want = self.bytes_needed().max(READ_CHUNK);
        self.buf.resize(have + want, 0);
        let pos = self.offset + have as u64;
        let result = loop {
            match self.file.read_at(&mut self.buf[have..], pos) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                other => break other,
            }
        };
        let n = *result.as_ref().unwrap_or(&0);
        self.buf.truncate(have + n);
        result
    }

    /// Bytes still missing from the partial frame at the head of the buffer.
    fn bytes_needed(&self) -> usize {
        let pending = &self.buf[self.start..];
        if pending.len() < HEADER_LEN {
            return HEADER_LEN - pending.len();
        }
        let size = u32::from_be_bytes([pending[4], pending[5], pending[6], pending[7]]) as usize;
        (HEADER_LEN + size.min(MAX_FRAME_PAYLOAD)).saturating_sub(pending.len())
    }

    /// The next complete item, or `None` when the file holds no complete item past the current
    /// offset yet (at the end of the file, or a frame still being written, or after END).
    pub fn next_item(&mut self) -> io::Result<Option<LogItem>> {
        loop {
            if let Some(item) = self.decode_buffered()? {
                return Ok(Some(item));
            }
            if self.ended || self.fill()? == 0 {
                return Ok(None);
            }
        }
    }
}
