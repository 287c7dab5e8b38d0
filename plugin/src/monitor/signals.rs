//! The monitor's signals as a readable descriptor (signalfd), so the event loop waits on pipes,
//! signals and the deadline with one poll(2).

use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

pub const HANDLED: [i32; 4] = [libc::SIGCHLD, libc::SIGTERM, libc::SIGINT, libc::SIGHUP];

/// Block the handled signals for this (single-threaded) process. Done first thing at start, so a
/// cancel that arrives early is queued rather than killing the monitor. The job's spawn clears
/// the mask again (std does not).
pub fn block() -> io::Result<()> {
    let set = handled_set()?;
    // SAFETY: a valid sigset; the old mask isn't needed.
    let rc = unsafe { libc::sigprocmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn handled_set() -> io::Result<libc::sigset_t> {
    let mut set = MaybeUninit::<libc::sigset_t>::uninit();
    // SAFETY: sigemptyset initialises the set; sigaddset on valid signal numbers.
    unsafe {
        if libc::sigemptyset(set.as_mut_ptr()) < 0 {
            return Err(io::Error::last_os_error());
        }
        for sig in HANDLED {
            libc::sigaddset(set.as_mut_ptr(), sig);
        }
        Ok(set.assume_init())
    }
}

pub struct SignalFd {
    fd: OwnedFd,
}

impl SignalFd {
    /// A non-blocking, close-on-exec signalfd for the handled (already blocked) signals.
    pub fn open() -> io::Result<Self> {
        let set = handled_set()?;
        // SAFETY: valid set; -1 asks for a new descriptor.
        let fd = unsafe { libc::signalfd(-1, &set, libc::SFD_NONBLOCK | libc::SFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a fresh descriptor we own.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(SignalFd { fd })
    }

    /// The next pending signal number, or None when none is queued.
    pub fn next(&self) -> io::Result<Option<i32>> {
        let mut info = MaybeUninit::<libc::signalfd_siginfo>::uninit();
        let size = std::mem::size_of::<libc::signalfd_siginfo>();
        // SAFETY: reading at most `size` bytes into the struct.
        let n = unsafe { libc::read(self.fd.as_raw_fd(), info.as_mut_ptr().cast(), size) };
        if n < 0 {
            let e = io::Error::last_os_error();
            return match e.kind() {
                io::ErrorKind::WouldBlock => Ok(None),
                io::ErrorKind::Interrupted => self.next(),
                _ => Err(e),
            };
        }
        if n as usize != size {
            return Ok(None);
        }
        // SAFETY: the kernel filled the whole struct.
        Ok(Some(unsafe { info.assume_init() }.ssi_signo as i32))
    }
}

impl AsRawFd for SignalFd {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}
