//! Bind sources resolved once, to descriptors: what is checked is what is mounted. And the
//! detached copies of them (`open_tree`) the child attaches.

use std::ffi::{CStr, CString};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use libc::c_ulong;

use super::plan::Kind;
use super::sys::{
    has_mount_setattr, mount_setattr, MountAttr, MOUNT_ATTR_ATIME_MASK, MOUNT_ATTR_NODEV,
    MOUNT_ATTR_NODIRATIME, MOUNT_ATTR_NOEXEC, MOUNT_ATTR_NOSUID, MOUNT_ATTR_NOSYMFOLLOW,
    MOUNT_ATTR_RDONLY, OPEN_TREE_CLONE, RO_BIND,
};
use super::{cstring, FsError};

/// A bind source resolved once: the descriptor the mount is made from.
#[derive(Debug)]
pub struct HeldSource {
    pub fd: OwnedFd,
    pub is_dir: bool,
}

/// Why a bind source was refused while resolving it.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("{0}")]
    Io(#[from] io::Error),
    /// The directory below which nothing may be a symlink is not one the plugin can trust as
    /// it finds it now (swapped for a symlink or another user's directory since it was made).
    #[error("{0}")]
    Below(#[from] crate::results::DirError),
    #[error(
        "{path} is a symbolic link; no component below {below} may be one (a job could have \
         planted it there)"
    )]
    Symlink { path: PathBuf, below: PathBuf },
    #[error("it is not below {below}")]
    NotBelow { below: PathBuf },
    #[error("it is a {found}; only a directory or a regular file can be mounted")]
    Kind { found: &'static str },
}

pub(super) fn open_path_fd(dir: RawFd, name: &CStr, flags: libc::c_int) -> io::Result<OwnedFd> {
    // SAFETY: a NUL-terminated name; the descriptor returned is ours alone.
    let fd = unsafe { libc::openat(dir, name.as_ptr(), flags | libc::O_PATH | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor owned by nothing else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

pub(super) fn fstat_mode(fd: &OwnedFd) -> io::Result<libc::mode_t> {
    let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
    // SAFETY: a descriptor we hold and a buffer of the right size.
    if unsafe { libc::fstat(fd.as_raw_fd(), st.as_mut_ptr()) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fstat succeeded and filled it in.
    Ok(unsafe { st.assume_init() }.st_mode & libc::S_IFMT)
}

/// Resolves a bind source once, to an `O_PATH` descriptor, and checks what it holds: a
/// directory or a regular file. With `untrusted_below`, that directory is opened as the host
/// named it and every component below it is opened one at a time with `O_NOFOLLOW` (as
/// `openat2(RESOLVE_NO_SYMLINKS)` would, on any kernel): a symlink a job planted, or swapped in
/// while this runs, is refused, never followed. That directory itself must pass the results
/// directory's check ([`crate::results::CheckedDir::open`]: not a symlink, root's or ours, not
/// open to others' renames): the results directory was checked when it was made, but whoever
/// can rename entries beside it could have swapped it for a symlink since, and its path is
/// resolved again here. The caller mounts from the descriptor, so what was checked is what the
/// job gets.
pub fn open_source(
    source: &Path,
    untrusted_below: Option<&Path>,
) -> Result<HeldSource, SourceError> {
    let c = |p: &Path| {
        CString::new(p.as_os_str().as_bytes())
            .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
    };
    let fd = match untrusted_below {
        None => open_path_fd(libc::AT_FDCWD, &c(source)?, 0)?,
        Some(below) => {
            let rest = source
                .strip_prefix(below)
                .map_err(|_| SourceError::NotBelow {
                    below: below.to_owned(),
                })?;
            let checked = crate::results::CheckedDir::open(below)?;
            let mut fd = open_path_fd(checked.as_fd().as_raw_fd(), c".", libc::O_DIRECTORY)?;
            let mut walked = below.to_owned();
            for part in rest.components() {
                let Component::Normal(name) = part else {
                    return Err(SourceError::NotBelow {
                        below: below.to_owned(),
                    });
                };
                walked.push(name);
                let next = open_path_fd(fd.as_raw_fd(), &c(Path::new(name))?, libc::O_NOFOLLOW)?;
                if fstat_mode(&next)? == libc::S_IFLNK {
                    return Err(SourceError::Symlink {
                        path: walked,
                        below: below.to_owned(),
                    });
                }
                fd = next;
            }
            fd
        }
    };
    let is_dir = match fstat_mode(&fd)? {
        libc::S_IFDIR => true,
        libc::S_IFREG => false,
        other => {
            return Err(SourceError::Kind {
                found: file_type_name(other),
            })
        }
    };
    Ok(HeldSource { fd, is_dir })
}

pub(super) fn file_type_name(mode: libc::mode_t) -> &'static str {
    match mode {
        libc::S_IFLNK => "symbolic link",
        libc::S_IFCHR => "character device",
        libc::S_IFBLK => "block device",
        libc::S_IFIFO => "FIFO",
        libc::S_IFSOCK => "socket",
        _ => "special file",
    }
}

/// `/proc/self/fd/N`: the path through which mount(2) reaches the object a descriptor holds.
pub(super) fn fd_path(fd: &OwnedFd) -> CString {
    // An integer's decimal digits never contain a NUL.
    CString::new(format!("/proc/self/fd/{}", fd.as_raw_fd())).unwrap_or_default()
}

/// What a detached bind's mount flags become.
#[derive(Clone, Copy)]
pub(super) enum BindFlags {
    /// A job's input or output: as the full plan's bind remount had them (nosuid, nodev,
    /// relatime, read-only when asked; whatever else the source mount had, such as noexec,
    /// cleared).
    Job { read_only: bool },
    /// A device node: usable (not nodev), nothing runs from it.
    Device,
}

impl BindFlags {
    pub(super) fn attr(self) -> MountAttr {
        let (set, clear) = match self {
            BindFlags::Job { read_only } => (
                MOUNT_ATTR_NOSUID
                    | MOUNT_ATTR_NODEV
                    | if read_only { MOUNT_ATTR_RDONLY } else { 0 },
                MOUNT_ATTR_NOEXEC
                    | MOUNT_ATTR_NOSYMFOLLOW
                    | MOUNT_ATTR_NODIRATIME
                    | MOUNT_ATTR_ATIME_MASK
                    | if read_only { 0 } else { MOUNT_ATTR_RDONLY },
            ),
            BindFlags::Device => (MOUNT_ATTR_NOSUID | MOUNT_ATTR_NOEXEC, MOUNT_ATTR_NODEV),
        };
        MountAttr {
            attr_set: set,
            attr_clr: clear,
            // A copy of a shared mount would stay a peer of the host's: a bind mounted inside
            // it later would appear on the host.
            propagation: libc::MS_PRIVATE,
            userns_fd: 0,
        }
    }

    /// The same by a bind remount, where the kernel lacks mount_setattr.
    pub(super) fn remount(self) -> c_ulong {
        match self {
            BindFlags::Job { read_only: true } => RO_BIND,
            BindFlags::Job { read_only: false } => RO_BIND & !libc::MS_RDONLY,
            BindFlags::Device => {
                libc::MS_BIND | libc::MS_REMOUNT | libc::MS_NOSUID | libc::MS_NOEXEC
            }
        }
    }
}

/// A copy of the mount at the held `source` as a detached mount
/// (`open_tree(fd, "", AT_EMPTY_PATH | OPEN_TREE_CLONE)`: the object the descriptor holds, not
/// whatever its path names now), private and with `flags` where the kernel has mount_setattr
/// (else [`attach_steps`] sets them once it is attached). It is attached by the job's child,
/// in a [`RootTemplate`] or in its own copy of the host's namespace: a mount of the host's
/// namespace cannot be bound from a descriptor once the child has a namespace of its own.
/// A failure is the host's (the source was checked): [`FsError::Template`], and on a template
/// the full plan is tried instead.
pub(super) fn detached_bind(
    source: &Path,
    held: &OwnedFd,
    flags: BindFlags,
) -> Result<OwnedFd, FsError> {
    let fail = |what: &str, e: io::Error| {
        FsError::Template(format!("{what} of {}: {e}", source.display()))
    };
    // SAFETY: a descriptor we hold and an empty NUL-terminated path; the descriptor returned
    // is ours.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_open_tree,
            held.as_raw_fd(),
            c"".as_ptr(),
            OPEN_TREE_CLONE | libc::O_CLOEXEC as libc::c_uint | libc::AT_EMPTY_PATH as libc::c_uint,
        )
    };
    if fd < 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::ENOSYS) {
            // Binding by path instead would resolve the source again, after it was checked.
            return Err(FsError::Template(format!(
                "mounting {} needs open_tree(2) (Linux 5.2), which this kernel lacks or refuses",
                source.display()
            )));
        }
        return Err(fail("a detached copy", e));
    }
    // SAFETY: a fresh descriptor from open_tree, owned by nothing else.
    let tree = unsafe { OwnedFd::from_raw_fd(fd as RawFd) };
    if has_mount_setattr() {
        let attr = flags.attr();
        let at = libc::AT_EMPTY_PATH as libc::c_uint;
        if mount_setattr(tree.as_raw_fd(), c"", at, &attr) == -1 {
            return Err(fail("setting the flags", io::Error::last_os_error()));
        }
    }
    Ok(tree)
}

/// Checks that `rel` below `base` (held, for a job's bind, else opened by path) exists as
/// `kind` and no component of it is a symlink, opening one component at a time with
/// `O_NOFOLLOW`. What a job may still change after this is caught when the child attaches the
/// mount (its target is opened with `RESOLVE_NO_SYMLINKS`); this gives the caller a clear error.
pub(super) fn check_existing(
    what: &'static str,
    target: &Path,
    base: &Path,
    held: Option<&OwnedFd>,
    rel: &Path,
    kind: Kind,
) -> Result<bool, FsError> {
    let prepare = |path: &Path, source: io::Error| FsError::Prepare {
        path: path.to_owned(),
        source,
    };
    let opened = match held {
        Some(fd) => fd.try_clone(),
        None => open_path_fd(libc::AT_FDCWD, &cstring(what, base)?, libc::O_DIRECTORY),
    };
    let mut cur = match opened {
        Ok(fd) => fd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(prepare(base, e)),
    };
    let mut p = base.to_owned();
    let n = rel.components().count();
    for (i, c) in rel.components().enumerate() {
        p.push(c);
        let name = cstring(what, Path::new(c.as_os_str()))?;
        let next = match open_path_fd(cur.as_raw_fd(), &name, libc::O_NOFOLLOW) {
            Ok(fd) => fd,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(prepare(&p, e)),
        };
        let mode = fstat_mode(&next).map_err(|e| prepare(&p, e))?;
        if mode == libc::S_IFLNK {
            return Err(FsError::Symlink {
                what,
                target: target.to_owned(),
                path: p,
            });
        }
        let found = if mode == libc::S_IFDIR {
            Kind::Dir
        } else {
            Kind::File
        };
        let want = if i + 1 == n { kind } else { Kind::Dir };
        if found != want {
            return Err(FsError::KindMismatch {
                what,
                target: target.to_owned(),
                path: p,
                found: found.name(),
                expected: want.name(),
            });
        }
        cur = next;
    }
    Ok(true)
}
