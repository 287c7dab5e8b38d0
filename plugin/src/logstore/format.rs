//! Frame layout shared by the writer and the reader, plus Docker's plain stdcopy framing.

use super::timestamp::TIMESTAMP_LEN;

/// Bytes in a frame header: `[stream][0][0][0][size u32 BE]`.
pub const HEADER_LEN: usize = 8;
/// Timestamp plus the separating space that precede a frame's data.
pub const PREFIX_LEN: usize = TIMESTAMP_LEN + 1;
/// Largest data slice the writer puts in one frame; larger writes are split so a reader never
/// has to buffer an unbounded frame.
pub const MAX_FRAME_DATA: usize = 1 << 20;
/// Stream byte of the END frame.
pub const END_STREAM: u8 = 4;
/// Stream byte Docker uses for daemon errors (never written by us, rejected when read).
pub const SYSTEMERR_STREAM: u8 = 3;
/// The END frame in full.
pub const END_FRAME: [u8; HEADER_LEN] = [END_STREAM, 0, 0, 0, 0, 0, 0, 0];

/// Which output a frame carries; the discriminant is the header's stream byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Stream {
    Stdout = 1,
    Stderr = 2,
}

impl Stream {
    pub fn from_byte(b: u8) -> Option<Stream> {
        match b {
            1 => Some(Stream::Stdout),
            2 => Some(Stream::Stderr),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }
}

/// Writes a frame header into `out`.
pub fn header(stream_byte: u8, size: u32) -> [u8; HEADER_LEN] {
    let s = size.to_be_bytes();
    [stream_byte, 0, 0, 0, s[0], s[1], s[2], s[3]]
}

/// Appends one Docker stdcopy frame (header + data, no timestamp) to `out`, the framing that
/// Bacalhau's log consumers (`logger.DataFrame`, `stdcopy.StdCopy`) read. Data longer than
/// `u32::MAX` is split into several frames so the size field never wraps.
pub fn stdcopy_frame(stream: Stream, data: &[u8], out: &mut Vec<u8>) {
    let max = u32::MAX as usize;
    let mut chunks = data.chunks(max).peekable();
    if chunks.peek().is_none() {
        out.extend_from_slice(&header(stream as u8, 0));
        return;
    }
    for chunk in chunks {
        out.extend_from_slice(&header(stream as u8, chunk.len() as u32));
        out.extend_from_slice(chunk);
    }
}
