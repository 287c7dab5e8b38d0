//! Streaming results writer (DESIGN.md "Results", Bacalhau's `WriteJobResults` done right).
//!
//! Each stream goes through an [`OutputSink`] as it is produced: the file keeps the head of the
//! stream up to the file limit, the summary is the head up to the return limit, and everything
//! beyond both is only counted. `*Truncated` is decided from the total length, not from the size
//! of one read as Bacalhau does.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

pub const STDOUT_FILE: &str = "stdout";
pub const STDERR_FILE: &str = "stderr";
pub const EXIT_CODE_FILE: &str = "exitCode";

/// What one stream amounted to once it ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamSummary {
    /// The head of the stream, up to the return limit (raw bytes).
    pub summary: Vec<u8>,
    /// The stream was longer than the return limit.
    pub truncated: bool,
    /// Every byte the stream carried.
    pub total: u64,
    /// Bytes kept in the file.
    pub file_len: u64,
    /// The first error writing the file; the stream was still drained and counted.
    pub error: Option<String>,
}

impl StreamSummary {
    /// The summary as the result carries it (JSON strings are UTF-8; files stay byte-exact).
    pub fn summary_lossy(&self) -> String {
        String::from_utf8_lossy(&self.summary).into_owned()
    }
}

/// One stream's results file and summary, fed chunk by chunk.
#[derive(Debug)]
pub struct OutputSink {
    path: PathBuf,
    file: Option<File>,
    file_limit: u64,
    return_limit: u64,
    file_len: u64,
    total: u64,
    /// Only when the summary reaches past what the file keeps; otherwise it is read back from
    /// the file at the end, so nothing is held in memory for the common case.
    head: Option<Vec<u8>>,
    error: Option<String>,
}

impl OutputSink {
    /// Create (truncating) the results file at `path`.
    pub fn create(path: &Path, file_limit: u64, return_limit: u64) -> io::Result<Self> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)?;
        let head = (return_limit > file_limit).then(|| {
            // Bounded by the return limit, which the result has to carry anyway; capped so an
            // absurd limit doesn't allocate up front.
            Vec::with_capacity(return_limit.min(64 * 1024) as usize)
        });
        Ok(OutputSink {
            path: path.to_path_buf(),
            file: Some(file),
            file_limit,
            return_limit,
            file_len: 0,
            total: 0,
            head,
            error: None,
        })
    }

    pub fn total(&self) -> u64 {
        self.total
    }

    pub fn write(&mut self, data: &[u8]) {
        if let Some(head) = self.head.as_mut() {
            let room = self.return_limit.saturating_sub(head.len() as u64);
            let take = room.min(data.len() as u64) as usize;
            head.extend_from_slice(&data[..take]);
        }
        let room = self.file_limit.saturating_sub(self.file_len);
        let take = room.min(data.len() as u64) as usize;
        if take > 0 {
            if let Some(file) = self.file.as_mut() {
                match file.write_all(&data[..take]) {
                    Ok(()) => self.file_len += take as u64,
                    Err(e) => {
                        self.error = Some(format!("writing {}: {e}", self.path.display()));
                        // Keep draining and counting, stop writing.
                        self.file = None;
                    }
                }
            }
        }
        self.total += data.len() as u64;
    }

    /// Flush the file and compute the summary.
    pub fn finish(mut self) -> StreamSummary {
        let want = self.return_limit.min(self.total);
        let summary = match self.head.take() {
            Some(head) => head,
            None => match self.read_back(want) {
                Ok(bytes) => bytes,
                Err(e) => {
                    self.error.get_or_insert_with(|| {
                        format!("reading back {}: {e}", self.path.display())
                    });
                    Vec::new()
                }
            },
        };
        // Made durable later (see `monitor::flush`), after the plugin has been told: a flush
        // can take milliseconds on a busy disk and must not delay the result.
        self.file = None;
        StreamSummary {
            summary,
            truncated: self.total > self.return_limit,
            total: self.total,
            file_len: self.file_len,
            error: self.error,
        }
    }

    fn read_back(&mut self, want: u64) -> io::Result<Vec<u8>> {
        // The file holds the head whenever return_limit <= file_limit, unless writing failed.
        let want = want.min(self.file_len);
        let file = self
            .file
            .as_mut()
            .ok_or_else(|| io::Error::other("the results file could not be written"))?;
        file.seek(SeekFrom::Start(0))?;
        let mut buf = Vec::with_capacity(want as usize);
        file.take(want).read_to_end(&mut buf)?;
        Ok(buf)
    }
}

/// The `exitCode` file: the full decimal exit code.
pub fn write_exit_code(results_dir: &Path, exit_code: i64) -> io::Result<()> {
    let path = results_dir.join(EXIT_CODE_FILE);
    let mut f = File::create(path)?;
    write!(f, "{exit_code}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(input: &[u8], file_limit: u64, return_limit: u64) -> (Vec<u8>, StreamSummary) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("stdout");
        let mut sink = OutputSink::create(&path, file_limit, return_limit).unwrap();
        // Feed in odd-sized chunks so limits fall inside chunks.
        for chunk in input.chunks(3) {
            sink.write(chunk);
        }
        let summary = sink.finish();
        (std::fs::read(&path).unwrap(), summary)
    }

    #[test]
    fn bacalhau_limits_table() {
        let cases: [(u64, u64, &str, &str, bool); 4] = [
            (0, 0, "", "", true),
            (5, 11, "hello", "hello world", false),
            (11, 5, "hello world", "hello", true),
            (100, 100, "hello world", "hello world", false),
        ];
        for (file_limit, return_limit, file, summary, truncated) in cases {
            let (got_file, got) = run(b"hello world", file_limit, return_limit);
            assert_eq!(
                got_file,
                file.as_bytes(),
                "file {file_limit}/{return_limit}"
            );
            assert_eq!(
                got.summary,
                summary.as_bytes(),
                "{file_limit}/{return_limit}"
            );
            assert_eq!(got.truncated, truncated, "{file_limit}/{return_limit}");
            assert_eq!(got.total, 11);
            assert_eq!(got.error, None);
        }
    }

    #[test]
    fn contents_round_trip_at_exact_limits() {
        for input in [&b"test"[..], b"", b"\x00\x01"] {
            let n = input.len() as u64;
            let (file, got) = run(input, n, n);
            assert_eq!(file, input);
            assert_eq!(got.summary, input);
            assert!(!got.truncated);
            assert_eq!(got.summary_lossy().as_bytes(), input);
        }
    }

    #[test]
    fn three_thousand_bytes_with_default_limits() {
        let input: Vec<u8> = (0..3000u32).map(|i| b'a' + (i % 26) as u8).collect();
        let (file, got) = run(&input, 1 << 30, 2048);
        assert_eq!(file, input);
        assert_eq!(got.summary, &input[..2048]);
        assert!(got.truncated);
        assert_eq!(got.total, 3000);
        assert_eq!(got.file_len, 3000);
    }

    #[test]
    fn invalid_utf8_is_exact_in_the_file_and_lossy_in_the_summary() {
        let input = b"ok \xff\xfe end";
        let (file, got) = run(input, 100, 100);
        assert_eq!(file, input);
        assert_eq!(got.summary_lossy(), "ok \u{fffd}\u{fffd} end");
    }

    #[test]
    fn exit_codes_are_written_in_full() {
        let dir = tempfile::tempdir().unwrap();
        for (code, text) in [(123, "123"), (-1, "-1"), (12345, "12345"), (0, "0")] {
            write_exit_code(dir.path(), code).unwrap();
            let got = std::fs::read_to_string(dir.path().join(EXIT_CODE_FILE)).unwrap();
            assert_eq!(got, text);
        }
    }

    #[test]
    fn a_file_that_cannot_be_written_still_counts_and_reports() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("stdout");
        let mut sink = OutputSink::create(&path, 100, 4).unwrap();
        // Swap in a read-only handle so the write fails like a full disk would.
        sink.file = Some(File::open(&path).unwrap());
        sink.write(b"hello");
        let got = sink.finish();
        assert_eq!(got.total, 5);
        assert!(got.truncated);
        assert!(got.error.is_some());
    }
}
