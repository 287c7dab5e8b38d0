//! Thin wrappers of the mount system calls libc has no wrapper for (`mount_setattr`,
//! `open_tree`, `move_mount`, `openat2`, `pivot_root`) and of `mount(2)`. Each is one or two raw
//! calls: async-signal-safe, for the child's steps as much as for the monitor.

use std::ffi::{CStr, CString};
use std::io;
use std::os::fd::RawFd;
use std::ptr;

use libc::c_ulong;

/// `struct mount_attr` of mount_setattr(2).
#[repr(C)]
pub(super) struct MountAttr {
    pub(super) attr_set: u64,
    pub(super) attr_clr: u64,
    pub(super) propagation: u64,
    pub(super) userns_fd: u64,
}

pub(super) const MOUNT_ATTR_RDONLY: u64 = 0x1;
pub(super) const OPEN_TREE_CLONE: libc::c_uint = 1;
pub(super) const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 0x4;
pub(super) const MOUNT_ATTR_NOSUID: u64 = 0x2;
pub(super) const MOUNT_ATTR_NODEV: u64 = 0x4;
pub(super) const MOUNT_ATTR_NOEXEC: u64 = 0x8;
/// The access-time mode bits; relatime is their zero value.
pub(super) const MOUNT_ATTR_ATIME_MASK: u64 = 0x70;
pub(super) const MOUNT_ATTR_NODIRATIME: u64 = 0x80;
pub(super) const MOUNT_ATTR_NOSYMFOLLOW: u64 = 0x0020_0000;

pub(super) fn mount_setattr(
    dirfd: libc::c_int,
    path: &CStr,
    flags: libc::c_uint,
    attr: &MountAttr,
) -> i64 {
    // SAFETY: a NUL-terminated path and a mount_attr that outlive the call, with its size.
    unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            dirfd,
            path.as_ptr(),
            flags,
            attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    }
}

pub(super) fn set_read_only_tree(target: &CStr) -> io::Result<()> {
    let attr = MountAttr {
        attr_set: MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV,
        attr_clr: 0,
        propagation: 0,
        userns_fd: 0,
    };
    let r = mount_setattr(
        libc::AT_FDCWD,
        target,
        libc::AT_RECURSIVE as libc::c_uint,
        &attr,
    );
    if r == -1 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Whether this kernel has mount_setattr(2): then a read-only system directory is one call,
/// whatever is mounted below it, and the plan needs no copy of the host's mount table (which
/// could go stale in a cache).
pub(super) fn has_mount_setattr() -> bool {
    static HAS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *HAS.get_or_init(|| {
        let attr = MountAttr {
            attr_set: 0,
            attr_clr: 0,
            propagation: 0,
            userns_fd: 0,
        };
        // Changing nothing on `/`: 0 only where the call exists and is allowed (not ENOSYS, not
        // EPERM from a seccomp filter or a caller without CAP_SYS_ADMIN).
        mount_setattr(libc::AT_FDCWD, c"/", 0, &attr) == 0
    })
}

pub(super) fn cvt(r: libc::c_int) -> io::Result<()> {
    if r == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

pub(super) fn opt_ptr(c: &Option<CString>) -> *const libc::c_char {
    c.as_ref().map_or(ptr::null(), |c| c.as_ptr())
}

pub(super) fn mount(
    source: *const libc::c_char,
    target: &CStr,
    fstype: *const libc::c_char,
    flags: c_ulong,
    data: *const libc::c_char,
) -> io::Result<()> {
    // SAFETY: every pointer is null or points at a NUL-terminated string that outlives the call.
    cvt(unsafe { libc::mount(source, target.as_ptr(), fstype, flags, data.cast()) })
}

/// `struct open_how` of openat2(2).
#[repr(C)]
pub(super) struct OpenHow {
    flags: u64,
    mode: u64,
    resolve: u64,
}

pub(super) const RESOLVE_NO_SYMLINKS: u64 = 0x04;
pub(super) const MOVE_MOUNT_T_EMPTY_PATH: libc::c_uint = 0x40;

/// `move_mount` of the detached `tree` onto `target`, reached without following a symlink.
/// Async-signal-safe: raw system calls on data made before the fork.
pub(super) fn attach(tree: RawFd, target: &CStr) -> io::Result<()> {
    let how = OpenHow {
        flags: (libc::O_PATH | libc::O_CLOEXEC) as u64,
        mode: 0,
        resolve: RESOLVE_NO_SYMLINKS,
    };
    // SAFETY: a NUL-terminated path and an open_how that outlive the call, with its size.
    let at = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            libc::AT_FDCWD,
            target.as_ptr(),
            &how as *const OpenHow,
            std::mem::size_of::<OpenHow>(),
        )
    } as libc::c_int;
    if at < 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::ENOSYS) {
            return Err(e);
        }
        // openat2 filtered out (a seccomp profile older than it): by path, as before it.
        // SAFETY: a detached mount the plan keeps open, a NUL-terminated target.
        let r = unsafe {
            libc::syscall(
                libc::SYS_move_mount,
                tree,
                c"".as_ptr(),
                libc::AT_FDCWD,
                target.as_ptr(),
                MOVE_MOUNT_F_EMPTY_PATH,
            )
        };
        return if r == -1 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        };
    }
    // SAFETY: the detached mount the plan keeps open, onto the descriptor just opened.
    let r = unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            tree,
            c"".as_ptr(),
            at,
            c"".as_ptr(),
            MOVE_MOUNT_F_EMPTY_PATH | MOVE_MOUNT_T_EMPTY_PATH,
        )
    };
    let e = io::Error::last_os_error();
    // SAFETY: the descriptor opened above, not used again.
    unsafe { libc::close(at) };
    if r == -1 {
        Err(e)
    } else {
        Ok(())
    }
}

pub(super) fn pivot_root(root: &CStr) -> io::Result<()> {
    // SAFETY: `root` is NUL-terminated.
    cvt(unsafe { libc::chdir(root.as_ptr()) })?;
    // pivot_root(".", ".") stacks the old root on top of the new one, so no directory for it is
    // needed in the job's root; unmounting "." then removes the old root and every host mount
    // with it (pivot_root(2), NOTES).
    // SAFETY: both arguments are NUL-terminated constants.
    let pivoted = unsafe { libc::syscall(libc::SYS_pivot_root, c".".as_ptr(), c".".as_ptr()) } == 0;
    if pivoted {
        // SAFETY: constant NUL-terminated path.
        cvt(unsafe { libc::umount2(c".".as_ptr(), libc::MNT_DETACH) })?;
    } else {
        // pivot_root is refused when the current root is the initial ramfs. Moving the new root
        // over / and chrooting into it hides the host's tree just as well for a process that
        // cannot mount (it keeps no descriptor to anything outside).
        mount(c".".as_ptr(), c"/", ptr::null(), libc::MS_MOVE, ptr::null())?;
        // SAFETY: constant NUL-terminated path.
        cvt(unsafe { libc::chroot(c".".as_ptr()) })?;
    }
    // SAFETY: constant NUL-terminated path.
    cvt(unsafe { libc::chdir(c"/".as_ptr()) })
}

/// A bind made read-only, `nosuid` and `nodev` (a remount of it).
pub(super) const RO_BIND: c_ulong =
    libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV;
