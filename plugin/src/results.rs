//! Streaming results writer (docs/ARCHITECTURE.md, "Semantics"; Bacalhau's `WriteJobResults` done right).
//!
//! Each stream goes through an [`OutputSink`] as it is produced: the file keeps the head of the
//! stream up to the file limit, the summary is the head up to the return limit, and everything
//! beyond both is only counted. `*Truncated` is decided from the total length, not from the size
//! of one read as Bacalhau does.

use std::ffi::CString;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::DirBuilderExt;
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
    /// Create the results file `name` afresh in `dir` (see [`CheckedDir::create_file`]).
    pub fn create(
        dir: &CheckedDir,
        name: &str,
        file_limit: u64,
        return_limit: u64,
    ) -> io::Result<Self> {
        let file = dir.create_file(name)?;
        let path = dir.path().join(name);
        let head = (return_limit > file_limit).then(|| {
            // Bounded by the return limit, which the result has to carry anyway; capped so an
            // absurd limit doesn't allocate up front.
            Vec::with_capacity(return_limit.min(64 * 1024) as usize)
        });
        Ok(OutputSink {
            path,
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
pub fn write_exit_code(results_dir: &CheckedDir, exit_code: i64) -> io::Result<()> {
    let mut f = results_dir.create_file(EXIT_CODE_FILE)?;
    write!(f, "{exit_code}")
}

/// Why a results (or log) directory cannot be written into.
#[derive(Debug, thiserror::Error)]
pub enum DirError {
    #[error("cannot create or open the directory {path}: {source}")]
    Open { path: PathBuf, source: io::Error },
    #[error("{path} is a symbolic link or not a directory: results and logs are written only into a real directory")]
    NotADirectory { path: PathBuf },
    #[error("{path} belongs to uid {uid}: results and logs are written only into a directory owned by root or by the plugin's own user (uid {me})")]
    NotOurs { path: PathBuf, uid: u32, me: u32 },
    #[error("{path} is writable by other users (mode {mode:o}, or a group not the plugin's) without the sticky bit: give it to the plugin's user with mode 0755 or 0700")]
    Shared { path: PathBuf, mode: u32 },
    #[error("{path} is in use by another execution: each execution needs a results directory of its own")]
    InUse { path: PathBuf },
}

impl DirError {
    /// The caller named a directory that cannot be used as it is (as opposed to an I/O failure).
    pub fn is_callers(&self) -> bool {
        !matches!(self, DirError::Open { .. })
    }
}

/// A directory results or a log are written into, opened once and checked: not a symlink, owned
/// by root or by us, and not open to other users' renames (writable by others, or by a group
/// other than ours or root's, only with the sticky bit). Every file in it is made relative to this descriptor, never through a path, so
/// nothing planted in it (or swapped for one of its parents later) redirects a write.
#[derive(Debug)]
pub struct CheckedDir {
    fd: OwnedFd,
    path: PathBuf,
}

impl CheckedDir {
    /// Create `path` (its parents are the host's, created as needed) unless it exists, and open it.
    pub fn create(path: &Path) -> Result<Self, DirError> {
        let open_err = |source| DirError::Open {
            path: path.to_path_buf(),
            source,
        };
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(open_err)?;
        }
        // 0755 whatever the umask: a directory open to other users' renames is refused below.
        match std::fs::DirBuilder::new().mode(0o755).create(path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(open_err(e)),
        }
        Self::open(path)
    }

    /// Open an existing directory and check it.
    pub fn open(path: &Path) -> Result<Self, DirError> {
        let c = cstring(path.as_os_str().as_bytes()).map_err(|source| DirError::Open {
            path: path.to_path_buf(),
            source,
        })?;
        // SAFETY: a NUL-terminated path; the descriptor returned is owned below.
        let fd = unsafe {
            libc::open(
                c.as_ptr(),
                libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
            )
        };
        if fd < 0 {
            let e = io::Error::last_os_error();
            return Err(match e.raw_os_error() {
                Some(libc::ELOOP) | Some(libc::ENOTDIR) => DirError::NotADirectory {
                    path: path.to_path_buf(),
                },
                _ => DirError::Open {
                    path: path.to_path_buf(),
                    source: e,
                },
            });
        }
        // SAFETY: `fd` was just opened and nothing else owns it.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let st = fstat(fd.as_fd()).map_err(|source| DirError::Open {
            path: path.to_path_buf(),
            source,
        })?;
        // SAFETY: geteuid cannot fail.
        let me = unsafe { libc::geteuid() };
        if st.st_uid != 0 && st.st_uid != me {
            return Err(DirError::NotOurs {
                path: path.to_path_buf(),
                uid: st.st_uid,
                me,
            });
        }
        let mode = st.st_mode & 0o7777;
        // Group-writable is fine for our own group or root's (a umask of 002 with a group per
        // user makes every directory so).
        // SAFETY: getegid cannot fail.
        let our_group = st.st_gid == 0 || st.st_gid == unsafe { libc::getegid() };
        let others_write = mode & 0o002 != 0 || (mode & 0o020 != 0 && !our_group);
        if others_write && mode & libc::S_ISVTX == 0 {
            return Err(DirError::Shared {
                path: path.to_path_buf(),
                mode,
            });
        }
        Ok(CheckedDir {
            fd,
            path: path.to_path_buf(),
        })
    }

    /// Hold this directory for one execution: an exclusive `flock` on it, kept until this
    /// descriptor (the process) goes. A second execution on the same directory is refused.
    pub fn lock(&self) -> Result<(), DirError> {
        let Err(e) = crate::fds::flock(&self.fd, libc::LOCK_EX | libc::LOCK_NB) else {
            return Ok(());
        };
        Err(if e.kind() == io::ErrorKind::WouldBlock {
            DirError::InUse {
                path: self.path.clone(),
            }
        } else {
            DirError::Open {
                path: self.path.clone(),
                source: e,
            }
        })
    }

    /// Let the next execution have the directory (this one is done with it: its outputs are
    /// handed back and its results written). A failure leaves the lock to the process's exit.
    pub fn unlock(&self) {
        // SAFETY: flock on a descriptor we own.
        unsafe { libc::flock(self.fd.as_raw_fd(), libc::LOCK_UN) };
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Another descriptor of the same checked directory (its `flock` is shared with this one).
    pub fn try_clone(&self) -> io::Result<CheckedDir> {
        Ok(CheckedDir {
            fd: self.fd.try_clone()?,
            path: self.path.clone(),
        })
    }

    pub fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// A new, empty regular file `name` (read-write). Whatever had that name (an earlier run's
    /// file, a symlink or a hard link someone planted) is unlinked first, which never touches
    /// what it pointed to; the file is then made with `O_CREAT|O_EXCL|O_NOFOLLOW`, so it is
    /// ours whatever races us.
    pub fn create_file(&self, name: &str) -> io::Result<File> {
        let c = cstring(name.as_bytes())?;
        // A few rounds: someone re-creating the name between our unlink and create each time
        // can only make this fail, never redirect it.
        for _ in 0..4 {
            // SAFETY: openat relative to our directory with a NUL-terminated name.
            let fd = unsafe {
                libc::openat(
                    self.fd.as_raw_fd(),
                    c.as_ptr(),
                    libc::O_RDWR
                        | libc::O_CREAT
                        | libc::O_EXCL
                        | libc::O_NOFOLLOW
                        | libc::O_CLOEXEC,
                    0o666 as libc::c_uint,
                )
            };
            if fd >= 0 {
                // SAFETY: a descriptor we just opened.
                return Ok(unsafe { File::from_raw_fd(fd) });
            }
            let e = io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EEXIST) {
                return Err(e);
            }
            // SAFETY: unlinkat relative to our directory; flags 0 refuses directories.
            if unsafe { libc::unlinkat(self.fd.as_raw_fd(), c.as_ptr(), 0) } != 0 {
                let e = io::Error::last_os_error();
                if e.raw_os_error() != Some(libc::ENOENT) {
                    return Err(e);
                }
            }
        }
        Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            format!("{name} kept being re-created by someone else"),
        ))
    }

    /// Open the existing regular file `name` for reading, never through a symlink.
    pub fn open_file(&self, name: &str) -> io::Result<File> {
        let c = cstring(name.as_bytes())?;
        // SAFETY: openat relative to our directory with a NUL-terminated name.
        let fd = unsafe {
            libc::openat(
                self.fd.as_raw_fd(),
                c.as_ptr(),
                libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a descriptor we just opened.
        Ok(unsafe { File::from_raw_fd(fd) })
    }

    /// Make the directory `name` unless it exists; an existing one must be a real directory.
    pub fn make_subdir(&self, name: &str) -> io::Result<()> {
        let c = cstring(name.as_bytes())?;
        // SAFETY: mkdirat relative to our directory with a NUL-terminated name.
        if unsafe { libc::mkdirat(self.fd.as_raw_fd(), c.as_ptr(), 0o755) } == 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EEXIST) {
            return Err(e);
        }
        let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
        // SAFETY: fstatat without following a symlink, into a stat buffer of the right type.
        let rc = unsafe {
            libc::fstatat(
                self.fd.as_raw_fd(),
                c.as_ptr(),
                st.as_mut_ptr(),
                libc::AT_SYMLINK_NOFOLLOW,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fstatat succeeded and filled the buffer.
        let st = unsafe { st.assume_init() };
        match st.st_mode & libc::S_IFMT {
            libc::S_IFDIR => Ok(()),
            libc::S_IFLNK => Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!(
                    "{name} is a symbolic link, and an output is never followed: remove it, or \
                     use a fresh results directory"
                ),
            )),
            _ => Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("{name} exists and is not a directory"),
            )),
        }
    }
}

fn cstring(bytes: &[u8]) -> io::Result<CString> {
    CString::new(bytes).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

/// `fstat` of a descriptor.
pub fn fstat(fd: BorrowedFd<'_>) -> io::Result<libc::stat> {
    let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
    // SAFETY: fstat into a stat buffer of the right type.
    if unsafe { libc::fstat(fd.as_raw_fd(), st.as_mut_ptr()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fstat succeeded and filled the buffer.
    Ok(unsafe { st.assume_init() })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(input: &[u8], file_limit: u64, return_limit: u64) -> (Vec<u8>, StreamSummary) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("stdout");
        let checked = CheckedDir::open(dir.path()).unwrap();
        let mut sink = OutputSink::create(&checked, "stdout", file_limit, return_limit).unwrap();
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
        let checked = CheckedDir::open(dir.path()).unwrap();
        for (code, text) in [(123, "123"), (-1, "-1"), (12345, "12345"), (0, "0")] {
            write_exit_code(&checked, code).unwrap();
            let got = std::fs::read_to_string(dir.path().join(EXIT_CODE_FILE)).unwrap();
            assert_eq!(got, text);
        }
    }

    #[test]
    fn a_planted_symlink_or_hard_link_is_replaced_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let victim = outside.path().join("victim");
        std::fs::write(&victim, "precious").unwrap();
        std::os::unix::fs::symlink(&victim, dir.path().join("stdout")).unwrap();
        std::fs::hard_link(&victim, dir.path().join("stderr")).unwrap();
        let checked = CheckedDir::open(dir.path()).unwrap();
        for name in ["stdout", "stderr"] {
            let mut f = checked.create_file(name).unwrap();
            f.write_all(b"job").unwrap();
            assert_eq!(std::fs::read(dir.path().join(name)).unwrap(), b"job");
        }
        assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
        // A symlinked directory is refused, not entered.
        let link = outside.path().join("results-link");
        std::os::unix::fs::symlink(dir.path(), &link).unwrap();
        assert!(matches!(
            CheckedDir::open(&link),
            Err(DirError::NotADirectory { .. })
        ));
        assert!(checked.open_file("stdout").is_ok());
        std::os::unix::fs::symlink(&victim, dir.path().join("exitCode")).unwrap();
        assert!(
            checked.open_file("exitCode").is_err(),
            "never read through a link"
        );
    }

    #[test]
    fn directories_open_to_other_users_are_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let set = |mode| {
            std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(mode)).unwrap()
        };
        // Our own group (the tempdir's) may write: a umask of 002.
        for ok in [0o700, 0o755, 0o775, 0o1777] {
            set(ok);
            assert!(CheckedDir::open(dir.path()).is_ok(), "{ok:o}");
        }
        set(0o777);
        assert!(matches!(
            CheckedDir::open(dir.path()),
            Err(DirError::Shared { .. })
        ));
        set(0o700);
    }

    #[test]
    fn one_execution_at_a_time() {
        let dir = tempfile::tempdir().unwrap();
        let first = CheckedDir::open(dir.path()).unwrap();
        first.lock().unwrap();
        let second = CheckedDir::open(dir.path()).unwrap();
        assert!(matches!(second.lock(), Err(DirError::InUse { .. })));
        first.unlock();
        second.lock().unwrap();
    }

    #[test]
    fn a_file_that_cannot_be_written_still_counts_and_reports() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("stdout");
        let checked = CheckedDir::open(dir.path()).unwrap();
        let mut sink = OutputSink::create(&checked, "stdout", 100, 4).unwrap();
        // Swap in a read-only handle so the write fails like a full disk would.
        sink.file = Some(File::open(&path).unwrap());
        sink.write(b"hello");
        let got = sink.finish();
        assert_eq!(got.total, 5);
        assert!(got.truncated);
        assert!(got.error.is_some());
    }
}
