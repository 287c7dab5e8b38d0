//! NDJSON framing: one compact JSON message per line, as MCP's stdio transport.
//!
//! The decoder never fails on content: an oversized line is reported as [`Frame::Oversized`]
//! (and skipped up to its newline) and a line that is not JSON is handed on as bytes, so the
//! reader can answer it with a JSON-RPC error and go on with the next line. Only I/O errors end
//! a stream.

use bytes::{Buf, BytesMut};
use tokio_util::codec::{Decoder, Encoder};

/// Largest message either side accepts or sends, newline excluded.
pub const MAX_MESSAGE_SIZE: usize = 16 * 1024 * 1024;

/// One unit read off the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// A line's bytes without its newline (and without a trailing `\r`). Never empty or blank.
    Line(Vec<u8>),
    /// A line longer than the limit; its bytes were dropped. `len` counts what was seen of it.
    Oversized { len: usize },
}

/// Codec for newline-delimited JSON with a size cap.
#[derive(Debug, Clone)]
pub struct NdjsonCodec {
    max_len: usize,
    /// How far the buffer has been searched for `\n` already.
    scanned: usize,
    /// Bytes of an oversized line dropped so far (`Some` while discarding).
    discarding: Option<usize>,
}

impl Default for NdjsonCodec {
    fn default() -> Self {
        Self::new(MAX_MESSAGE_SIZE)
    }
}

impl NdjsonCodec {
    pub fn new(max_len: usize) -> Self {
        NdjsonCodec {
            max_len,
            scanned: 0,
            discarding: None,
        }
    }

    pub fn max_len(&self) -> usize {
        self.max_len
    }
}

fn is_blank(line: &[u8]) -> bool {
    line.iter().all(u8::is_ascii_whitespace)
}

impl Decoder for NdjsonCodec {
    type Item = Frame;
    type Error = std::io::Error;

    fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Frame>, Self::Error> {
        loop {
            let newline = memchr::memchr(b'\n', &buf[self.scanned..]).map(|i| self.scanned + i);
            match (newline, self.discarding) {
                (Some(end), Some(dropped)) => {
                    buf.advance(end + 1);
                    self.scanned = 0;
                    self.discarding = None;
                    return Ok(Some(Frame::Oversized { len: dropped + end }));
                }
                (Some(end), None) => {
                    let mut line = buf.split_to(end + 1);
                    self.scanned = 0;
                    line.truncate(end);
                    if line.last() == Some(&b'\r') {
                        line.truncate(end - 1);
                    }
                    if line.len() > self.max_len {
                        return Ok(Some(Frame::Oversized { len: line.len() }));
                    }
                    if is_blank(&line) {
                        continue;
                    }
                    return Ok(Some(Frame::Line(line.to_vec())));
                }
                (None, Some(dropped)) => {
                    // Still inside an oversized line: drop what arrived, keep nothing.
                    self.discarding = Some(dropped + buf.len());
                    buf.clear();
                    self.scanned = 0;
                    return Ok(None);
                }
                (None, None) => {
                    // +1 leaves room for a trailing `\r` on a line of exactly max_len.
                    if buf.len() > self.max_len + 1 {
                        self.discarding = Some(buf.len());
                        buf.clear();
                        self.scanned = 0;
                    } else {
                        self.scanned = buf.len();
                    }
                    return Ok(None);
                }
            }
        }
    }

    fn decode_eof(&mut self, buf: &mut BytesMut) -> Result<Option<Frame>, Self::Error> {
        if let Some(frame) = self.decode(buf)? {
            return Ok(Some(frame));
        }
        if let Some(dropped) = self.discarding.take() {
            return Ok(Some(Frame::Oversized { len: dropped }));
        }
        // A last line without its newline still counts.
        self.scanned = 0;
        if buf.is_empty() || is_blank(buf) {
            buf.clear();
            return Ok(None);
        }
        let line = buf.split_to(buf.len());
        if line.len() > self.max_len {
            return Ok(Some(Frame::Oversized { len: line.len() }));
        }
        Ok(Some(Frame::Line(line.to_vec())))
    }
}

/// Errors the encoder reports instead of writing a broken frame.
#[derive(Debug, thiserror::Error)]
pub enum EncodeError {
    #[error("message of {len} bytes exceeds the {max}-byte limit")]
    TooLarge { len: usize, max: usize },
    #[error("message is not valid JSON: {0}")]
    NotJson(#[from] serde_json::Error),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Make `msg` safe for one line: compact JSON has no raw newline, but a hand-built raw value
/// may (pretty-printed JSON), so such a message is re-serialized compactly.
pub fn single_line(msg: &str) -> Result<std::borrow::Cow<'_, str>, serde_json::Error> {
    if memchr::memchr2(b'\n', b'\r', msg.as_bytes()).is_some() {
        let value: serde_json::Value = serde_json::from_str(msg)?;
        Ok(std::borrow::Cow::Owned(serde_json::to_string(&value)?))
    } else {
        Ok(std::borrow::Cow::Borrowed(msg))
    }
}

impl<T: AsRef<str>> Encoder<T> for NdjsonCodec {
    type Error = EncodeError;

    fn encode(&mut self, msg: T, dst: &mut BytesMut) -> Result<(), EncodeError> {
        let line = single_line(msg.as_ref())?;
        if line.len() > self.max_len {
            return Err(EncodeError::TooLarge {
                len: line.len(),
                max: self.max_len,
            });
        }
        dst.reserve(line.len() + 1);
        dst.extend_from_slice(line.as_bytes());
        dst.extend_from_slice(b"\n");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(codec: &mut NdjsonCodec, chunks: &[&[u8]]) -> Vec<Frame> {
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        for chunk in chunks {
            buf.extend_from_slice(chunk);
            while let Some(f) = codec.decode(&mut buf).unwrap() {
                out.push(f);
            }
        }
        while let Some(f) = codec.decode_eof(&mut buf).unwrap() {
            out.push(f);
        }
        out
    }

    #[test]
    fn splits_lines_across_chunks_and_skips_blank_ones() {
        let mut c = NdjsonCodec::new(64);
        let frames = decode_all(&mut c, &[b"{\"a\"", b":1}\r\n\n  \n{\"b\":2}\n{\"c\":3}"]);
        assert_eq!(
            frames,
            vec![
                Frame::Line(b"{\"a\":1}".to_vec()),
                Frame::Line(b"{\"b\":2}".to_vec()),
                Frame::Line(b"{\"c\":3}".to_vec()),
            ]
        );
    }

    #[test]
    fn oversized_line_is_reported_once_and_the_next_line_is_read() {
        let mut c = NdjsonCodec::new(8);
        let frames = decode_all(&mut c, &[b"0123456789", b"abcdef", b"ghi\n{\"x\":1}\n"]);
        assert_eq!(
            frames,
            vec![
                Frame::Oversized { len: 19 },
                Frame::Line(b"{\"x\":1}".to_vec())
            ]
        );
    }

    #[test]
    fn line_of_exactly_the_limit_passes() {
        let mut c = NdjsonCodec::new(7);
        let frames = decode_all(&mut c, &[b"{\"x\":1}\r\n", b"{\"x\":12}\n"]);
        assert_eq!(
            frames,
            vec![
                Frame::Line(b"{\"x\":1}".to_vec()),
                Frame::Oversized { len: 8 }
            ]
        );
    }

    #[test]
    fn non_utf8_is_passed_on_as_bytes() {
        let mut c = NdjsonCodec::new(64);
        let frames = decode_all(&mut c, &[b"\xff\xfe\n"]);
        assert_eq!(frames, vec![Frame::Line(vec![0xff, 0xfe])]);
    }

    #[test]
    fn encoder_never_emits_a_raw_newline_inside_a_message() {
        let mut c = NdjsonCodec::new(1024);
        let mut dst = BytesMut::new();
        c.encode("{\n  \"a\": \"x\\ny\"\n}", &mut dst).unwrap();
        assert_eq!(&dst[..], b"{\"a\":\"x\\ny\"}\n");
        assert!(c.encode("{\n", &mut dst).is_err());
        let big = format!("\"{}\"", "a".repeat(2000));
        assert!(matches!(
            c.encode(big, &mut dst),
            Err(EncodeError::TooLarge { .. })
        ));
    }
}
