//! Process-level plumbing of a plugin: the cookie guard, the private protocol descriptor, and
//! diagnostics as JSON lines on stderr.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::unix::pipe;

/// Environment variable a host sets when it starts a plugin (as go-plugin's magic cookie).
pub const COOKIE_KEY: &str = "EXECUTOR_PLUGIN_COOKIE";
pub const COOKIE_VALUE: &str = "executor-plugin";
/// Log filter for the plugin's own diagnostics (tracing `EnvFilter` syntax).
pub const LOG_ENV: &str = "EXECUTOR_PLUGIN_LOG";

/// The one line a person sees when starting the plugin by hand.
pub fn cookie_missing_message(program: &str) -> String {
    format!(
        "{program} is an executor plugin: it speaks JSON-RPC on stdin/stdout and is started by an \
         executor host, not by hand. Use `executor-host run -- CMD` to run a job, or `executor-host \
         plugins` to see this plugin (to talk to it directly anyway, set {COOKIE_KEY}={COOKIE_VALUE})."
    )
}

pub fn cookie_present() -> bool {
    std::env::var_os(COOKIE_KEY).is_some_and(|v| v == COOKIE_VALUE)
}

/// Move the protocol off fd 1: returns a private close-on-exec copy of the original stdout and
/// points fd 1 at stderr, so a stray print (ours, a library's) can never corrupt the stream.
pub fn take_protocol_stdout() -> io::Result<OwnedFd> {
    // SAFETY: fd 1 is open for the whole life of the process (the host gave it); it is only
    // borrowed here to be duplicated.
    let stdout = unsafe { BorrowedFd::borrow_raw(libc::STDOUT_FILENO) };
    let private = stdout.try_clone_to_owned()?; // F_DUPFD_CLOEXEC
                                                // SAFETY: dup2 on two descriptors this process owns for its whole life.
    if unsafe { libc::dup2(libc::STDERR_FILENO, libc::STDOUT_FILENO) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(private)
}

/// Take fd 0 for the protocol: children never inherit it (they get /dev/null).
pub fn take_protocol_stdin() -> io::Result<OwnedFd> {
    // SAFETY: fd 0 is open for the whole life of the process (the host gave it); it is only
    // borrowed here to be duplicated.
    let stdin = unsafe { BorrowedFd::borrow_raw(libc::STDIN_FILENO) };
    let private = stdin.try_clone_to_owned()?;
    let devnull = std::fs::File::open("/dev/null")?;
    // SAFETY: as above.
    if unsafe { libc::dup2(devnull.as_raw_fd(), libc::STDIN_FILENO) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(private)
}

fn is_fifo(fd: BorrowedFd<'_>) -> bool {
    nix::sys::stat::fstat(fd).is_ok_and(|st| (st.st_mode & libc::S_IFMT) == libc::S_IFIFO)
}

/// Async reader over the protocol input: a real non-blocking pipe when it is one (the normal
/// case, and cancellable, unlike tokio's stdin), else a blocking-thread file (a redirect).
pub enum ProtocolInput {
    Pipe(pipe::Receiver),
    File(tokio::fs::File),
}

pub enum ProtocolOutput {
    Pipe(pipe::Sender),
    File(tokio::fs::File),
}

impl ProtocolInput {
    pub fn from_fd(fd: OwnedFd) -> io::Result<Self> {
        if is_fifo(fd.as_fd()) {
            Ok(ProtocolInput::Pipe(pipe::Receiver::from_owned_fd(fd)?))
        } else {
            Ok(ProtocolInput::File(tokio::fs::File::from_std(
                std::fs::File::from(fd),
            )))
        }
    }
}

impl ProtocolOutput {
    pub fn from_fd(fd: OwnedFd) -> io::Result<Self> {
        if is_fifo(fd.as_fd()) {
            Ok(ProtocolOutput::Pipe(pipe::Sender::from_owned_fd(fd)?))
        } else {
            Ok(ProtocolOutput::File(tokio::fs::File::from_std(
                std::fs::File::from(fd),
            )))
        }
    }
}

impl AsyncRead for ProtocolInput {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ProtocolInput::Pipe(p) => Pin::new(p).poll_read(cx, buf),
            ProtocolInput::File(f) => Pin::new(f).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for ProtocolOutput {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            ProtocolOutput::Pipe(p) => Pin::new(p).poll_write(cx, buf),
            ProtocolOutput::File(f) => Pin::new(f).poll_write(cx, buf),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ProtocolOutput::Pipe(p) => Pin::new(p).poll_flush(cx),
            ProtocolOutput::File(f) => Pin::new(f).poll_flush(cx),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ProtocolOutput::Pipe(p) => Pin::new(p).poll_shutdown(cx),
            ProtocolOutput::File(f) => Pin::new(f).poll_shutdown(cx),
        }
    }
}

/// Diagnostics as JSON lines on stderr, which the host re-emits through its own `tracing`.
pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env(LOG_ENV)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .json()
        .with_env_filter(filter)
        .with_writer(io::stderr)
        .with_current_span(false)
        .try_init();
}
