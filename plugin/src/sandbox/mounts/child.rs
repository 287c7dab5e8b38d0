//! The child's side: the [`Step`]s a plan made, run in `pre_exec` between `fork` and `execve`.
//! Async-signal-safe: raw system calls on data made before the fork, no allocation, no locks.
//! This is where reviewers look for `unsafe`.

use std::ffi::{CStr, CString};
use std::io;
use std::os::fd::RawFd;
use std::ptr;

use libc::c_ulong;

use super::sys::{attach, cvt, mount, opt_ptr, pivot_root, set_read_only_tree, RO_BIND};
use super::FsPlan;

/// One system call (or a tightly coupled pair) to run in the child.
#[derive(Debug, Clone)]
pub(super) enum Step {
    Unshare,
    Mount {
        source: Option<CString>,
        target: CString,
        fstype: Option<CString>,
        flags: c_ulong,
        data: Option<CString>,
    },
    /// Creates a mount point in a tmpfs the child mounted itself; an existing one is fine.
    Mkdir {
        path: CString,
        mode: libc::mode_t,
    },
    /// Creates an empty file as the mount point for a file bind.
    Touch {
        path: CString,
    },
    /// A character device node in the child's own `/dev` tmpfs, readable and writable by all.
    CharDevice {
        path: CString,
        rdev: libc::dev_t,
    },
    /// A symlink in the child's own `/dev` tmpfs.
    Symlink {
        target: CString,
        link: CString,
    },
    /// Binds `path` onto itself read-only; skipped when the kernel does not have it.
    ReadOnlyIfPresent {
        path: CString,
    },
    /// Makes the mount at `target` and every mount below it read-only, nosuid and nodev in
    /// one call (`mount_setattr(AT_RECURSIVE)`, Linux 5.12).
    ReadOnlyTree {
        target: CString,
    },
    /// A fresh `proc` at `target`, or the host's read-only where that is refused.
    Proc {
        target: CString,
    },
    /// Makes `root` the job's `/` and drops every other mount of the namespace.
    PivotRoot {
        root: CString,
    },
    Chdir {
        path: CString,
    },
    /// Enters the mount namespace of a [`RootTemplate`] (`setns`): its root becomes ours.
    EnterTemplate {
        ns: RawFd,
    },
    /// Attaches a detached bind (made with `open_tree` before the fork, its flags already set)
    /// at `target` (`move_mount`). The target is opened first with `RESOLVE_NO_SYMLINKS`: a
    /// mount point inside another bind lies in a tree a job may write, and a symlink planted
    /// there must not move the mount elsewhere.
    Attach {
        tree: RawFd,
        target: CString,
        /// What was copied, for messages.
        source: CString,
    },
}

impl Step {
    fn run(&self) -> io::Result<()> {
        match self {
            // SAFETY: plain system call with a constant flag.
            Step::Unshare => cvt(unsafe { libc::unshare(libc::CLONE_NEWNS) }),
            Step::Mount {
                source,
                target,
                fstype,
                flags,
                data,
            } => mount(
                opt_ptr(source),
                target,
                opt_ptr(fstype),
                *flags,
                opt_ptr(data),
            ),
            Step::Mkdir { path, mode } => {
                // SAFETY: `path` is NUL-terminated.
                match cvt(unsafe { libc::mkdir(path.as_ptr(), *mode) }) {
                    Err(e) if e.raw_os_error() == Some(libc::EEXIST) => Ok(()),
                    r => r,
                }
            }
            Step::CharDevice { path, rdev } => {
                // SAFETY: `path` is NUL-terminated.
                cvt(unsafe { libc::mknod(path.as_ptr(), libc::S_IFCHR | 0o666, *rdev) })?;
                // mknod applied the umask.
                // SAFETY: as above.
                cvt(unsafe { libc::chmod(path.as_ptr(), 0o666) })
            }
            Step::Touch { path } => {
                // SAFETY: `path` is NUL-terminated; the descriptor is closed right away.
                let fd = unsafe {
                    libc::open(
                        path.as_ptr(),
                        libc::O_CREAT | libc::O_WRONLY | libc::O_CLOEXEC | libc::O_NOFOLLOW,
                        0o644 as libc::c_uint,
                    )
                };
                if fd < 0 {
                    return Err(io::Error::last_os_error());
                }
                // SAFETY: `fd` was opened above and is not used again.
                unsafe { libc::close(fd) };
                Ok(())
            }
            Step::Symlink { target, link } => {
                // SAFETY: both strings are NUL-terminated.
                cvt(unsafe { libc::symlink(target.as_ptr(), link.as_ptr()) })
            }
            Step::Proc { target } => {
                // Without a pid namespace a fresh proc lists every process on the host; with
                // hidepid an unprivileged job sees only its own user's processes, and cannot reach
                // another job's files through /proc/<pid>/root. Kernels before 5.8 know only the
                // numeric form, older ones neither.
                let mut fresh = Err(io::Error::from_raw_os_error(libc::EINVAL));
                for data in [
                    c"hidepid=invisible".as_ptr(),
                    c"hidepid=2".as_ptr(),
                    ptr::null(),
                ] {
                    fresh = mount(
                        c"proc".as_ptr(),
                        target,
                        c"proc".as_ptr(),
                        libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
                        data,
                    );
                    if !matches!(&fresh, Err(e) if e.raw_os_error() == Some(libc::EINVAL)) {
                        break;
                    }
                }
                if fresh.is_ok() {
                    return Ok(());
                }
                // A new proc instance can be refused without a pid namespace of our own (e.g.
                // inside a container whose /proc has masked entries). The host's /proc bound
                // read-only still gives /proc/self and friends, and shows the host's processes.
                mount(
                    c"/proc".as_ptr(),
                    target,
                    ptr::null(),
                    libc::MS_BIND | libc::MS_REC,
                    ptr::null(),
                )?;
                mount(
                    ptr::null(),
                    target,
                    ptr::null(),
                    libc::MS_BIND
                        | libc::MS_REMOUNT
                        | libc::MS_RDONLY
                        | libc::MS_NOSUID
                        | libc::MS_NODEV
                        | libc::MS_NOEXEC,
                    ptr::null(),
                )
            }
            Step::ReadOnlyTree { target } => set_read_only_tree(target),
            Step::ReadOnlyIfPresent { path } => {
                match mount(
                    path.as_ptr(),
                    path,
                    ptr::null(),
                    libc::MS_BIND | libc::MS_REC,
                    ptr::null(),
                ) {
                    Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(()),
                    r => r?,
                }
                mount(
                    ptr::null(),
                    path,
                    ptr::null(),
                    RO_BIND | libc::MS_NOEXEC,
                    ptr::null(),
                )
            }
            Step::PivotRoot { root } => pivot_root(root),
            // SAFETY: `path` is NUL-terminated.
            Step::Chdir { path } => cvt(unsafe { libc::chdir(path.as_ptr()) }),
            // SAFETY: a namespace descriptor the plan's template keeps open.
            Step::EnterTemplate { ns } => cvt(unsafe { libc::setns(*ns, libc::CLONE_NEWNS) }),
            Step::Attach { tree, target, .. } => attach(*tree, target),
        }
    }
}

impl FsPlan {
    /// Builds the job's filesystem and makes it the calling process's root. Async-signal-safe
    /// (raw system calls, no allocation): meant for `CommandExt::pre_exec`, as root, before any
    /// user switch.
    pub fn apply(&self) -> io::Result<()> {
        self.apply_at().map_err(|(_, e)| e)
    }

    /// As [`apply`](Self::apply), with the index of the step that failed, for
    /// [`describe_step`](Self::describe_step).
    pub fn apply_at(&self) -> Result<(), (usize, io::Error)> {
        for (i, step) in self.steps.iter().enumerate() {
            step.run().map_err(|e| (i, e))?;
        }
        Ok(())
    }

    /// What step `i` does, for an error message ("mount /a on /b").
    pub fn describe_step(&self, i: usize) -> String {
        let show = |c: &CStr| c.to_string_lossy().into_owned();
        let Some(step) = self.steps.get(i) else {
            return String::new();
        };
        match step {
            Step::Unshare => "creating a mount namespace".into(),
            Step::Mount {
                source,
                target,
                fstype,
                flags,
                ..
            } => {
                if flags & libc::MS_REMOUNT != 0 && flags & libc::MS_RDONLY == 0 {
                    format!("remounting {}", show(target))
                } else if flags & libc::MS_REMOUNT != 0 {
                    format!("remounting {} read-only", show(target))
                } else if flags & (libc::MS_PRIVATE | libc::MS_SLAVE) != 0 {
                    format!("making the mounts under {} private", show(target))
                } else {
                    let what = source
                        .as_deref()
                        .or(fstype.as_deref())
                        .map_or_else(|| "?".into(), show);
                    format!("mount {what} on {}", show(target))
                }
            }
            Step::Mkdir { path, .. } | Step::Touch { path } => {
                format!("creating the mount point {}", show(path))
            }
            Step::Symlink { link, .. } => format!("creating the symlink {}", show(link)),
            Step::CharDevice { path, .. } => format!("creating the device node {}", show(path)),
            Step::ReadOnlyIfPresent { path } => format!("making {} read-only", show(path)),
            Step::ReadOnlyTree { target } => {
                format!("making {} and the mounts below it read-only", show(target))
            }
            Step::Proc { target } => format!("mount proc on {}", show(target)),
            Step::PivotRoot { root } => format!("entering the job's root {}", show(root)),
            Step::Chdir { path } => format!("changing into the working directory {}", show(path)),
            Step::EnterTemplate { .. } => "entering the job's prepared root".into(),
            Step::Attach { target, source, .. } => {
                format!("mount {} on {}", show(source), show(target))
            }
        }
    }
}
