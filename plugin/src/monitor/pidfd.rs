//! Process file descriptors: a handle on one process that can never refer to a reused pid.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use crate::state::ProcId;

/// `pidfd_open(pid)`. For a process that is not our child, pair it with [`open_verified`] so a pid
/// reused between reading a record and opening the descriptor is caught.
pub fn open(pid: i32) -> io::Result<OwnedFd> {
    // SAFETY: plain syscall; on success it returns a new descriptor we own.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fresh descriptor; pidfds are close-on-exec by default.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Open a pidfd on the recorded process, or `None` if that process (same pid *and* start time)
/// is gone. The start time is checked after opening, so the descriptor is known to name it.
pub fn open_verified(id: &ProcId) -> Option<OwnedFd> {
    let fd = open(id.pid).ok()?;
    id.is_alive().then_some(fd)
}

/// `pidfd_send_signal`. `Ok(false)` when the process has already exited.
pub fn send_signal(fd: &OwnedFd, sig: i32) -> io::Result<bool> {
    // SAFETY: plain syscall on a descriptor we own; no siginfo.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            fd.as_raw_fd(),
            sig,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    if rc < 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::ESRCH) {
            return Ok(false);
        }
        return Err(e);
    }
    Ok(true)
}
