//! `Network: None`: the job gets a network namespace of its own whose only interface is a
//! loopback that is up.

use std::io;
use std::os::raw::{c_char, c_short};

/// Whether this process can create network namespaces (needs `CAP_SYS_ADMIN`; checked as root).
pub fn supported() -> bool {
    nix::unistd::geteuid().is_root() && std::path::Path::new("/proc/self/ns/net").exists()
}

/// Moves the calling process into a new network namespace and brings `lo` up. Async-signal-safe
/// (raw system calls, no allocation): meant for `CommandExt::pre_exec`.
pub fn enter_isolated_network() -> io::Result<()> {
    // SAFETY: plain system call with a constant flag.
    if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
        return Err(io::Error::last_os_error());
    }
    loopback_up()
}

fn loopback_up() -> io::Result<()> {
    // SAFETY: socket(2) with constant arguments; the descriptor is closed on every path below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    let result = set_up(fd);
    // SAFETY: `fd` is the socket opened above and not used after this.
    unsafe { libc::close(fd) };
    result
}

fn set_up(fd: libc::c_int) -> io::Result<()> {
    // SAFETY: ifreq is plain old data; all zeroes is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(b"lo\0") {
        *dst = *src as c_char;
    }
    // SAFETY: SIOCGIFFLAGS fills `req.ifr_ifru.ifru_flags` for the named interface.
    if unsafe { libc::ioctl(fd, libc::SIOCGIFFLAGS as _, &mut req) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the union field was just written by the kernel as flags.
    unsafe { req.ifr_ifru.ifru_flags |= libc::IFF_UP as c_short };
    // SAFETY: SIOCSIFFLAGS reads the name and flags from `req`.
    if unsafe { libc::ioctl(fd, libc::SIOCSIFFLAGS as _, &req) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
