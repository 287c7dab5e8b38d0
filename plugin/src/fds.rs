//! Descriptor plumbing shared by the plugin and the processes it forks: pipes, closing what
//! a process inherited, and lock files. The first two are only system calls, so they may run in
//! a child forked from a multi-threaded process.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// Open (making it, 0600) a lock file: the `flock` on it, not its contents, is what counts, so
/// it is never truncated or removed (removing a lock file races with its next user).
pub fn open_lock(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(path)
}

/// `flock(2)` with `op`, retried when a signal interrupts it. With `LOCK_NB`, a lock somebody
/// else holds is an error of kind `WouldBlock`.
pub fn flock(fd: impl AsFd, op: libc::c_int) -> io::Result<()> {
    loop {
        // SAFETY: flock on a descriptor the caller keeps open across the call.
        if unsafe { libc::flock(fd.as_fd().as_raw_fd(), op) } == 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// A pipe with `flags` (`pipe2(2)`): (read end, write end).
pub fn pipe2(flags: libc::c_int) -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills the two descriptors, which we own from here on.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), flags) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fresh descriptors from pipe2, owned by nothing else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Close every descriptor from `first` up but those in `keep` (sorted in place; no allocation),
/// with `close_range(2)`. False where the kernel lacks it (before Linux 5.9): the caller closes
/// what is left some other way.
pub fn close_range_except(first: libc::c_uint, keep: &mut [RawFd]) -> bool {
    let close = |from: libc::c_uint, to: libc::c_uint| {
        // SAFETY: closing descriptors the caller says nothing of its own uses.
        unsafe { libc::syscall(libc::SYS_close_range, from, to, 0) == 0 }
    };
    keep.sort_unstable();
    let mut from = first;
    let mut closed = true;
    for &k in keep.iter() {
        let Ok(k) = libc::c_uint::try_from(k) else {
            continue;
        };
        if k < from {
            continue;
        }
        if k > from {
            closed &= close(from, k - 1);
        }
        from = k.saturating_add(1);
    }
    closed & close(from, libc::c_uint::MAX)
}
