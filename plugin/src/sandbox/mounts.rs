//! Filesystem isolation for a job run as root: a private mount namespace whose root is assembled
//! from read-only binds of the host's system directories, a private `/tmp`, `/proc`, a minimal
//! `/dev`, and the job's inputs and outputs at their targets (the way Nomad's `exec` driver and
//! bubblewrap build a chroot).
//!
//! [`FsPlan::new`] validates the spec, creates the mount points that live in the execution's root
//! directory, and turns everything into a list of steps holding only `CString`s and descriptors
//! the plan keeps open. [`FsPlan::apply`] runs those steps in the child (`pre_exec`) with raw
//! system calls: no allocation, no locks. It must run before anything that drops privileges
//! (user switch) and after anything that needs the host's paths (joining cgroups through
//! `/sys/fs/cgroup`).
//!
//! Every input, output and device node is resolved once, in the monitor, to an `O_PATH`
//! descriptor ([`open_source`]; below [`Bind::untrusted_below`] without following any symlink),
//! checked, and mounted from that descriptor (an `open_tree` copy the child attaches onto a
//! target it opens with `RESOLVE_NO_SYMLINKS`): nothing a job renames or swaps between the check
//! and the mount changes what is mounted, or where.
//!
//! The fast path: a [`RootTemplate`] is a namespace with everything every job's root has, made
//! ahead of any job (a spare monitor makes one while it waits); [`FsPlan::on_template`] plans
//! only what is the job's own on top of it — enter it, attach the job's binds (made before the
//! fork as detached mounts), make the root read-only. Both paths give the job the same tree;
//! the tests run every case both ways.

use std::collections::HashSet;
use std::ffi::{CStr, CString};
use std::fs;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};
use std::ptr;
use std::sync::Arc;

use libc::c_ulong;

use crate::memo::LastFor;

/// The host directories a job sees read-only when the spec does not name others.
pub const DEFAULT_SYSTEM_DIRS: [&str; 6] = ["/usr", "/bin", "/sbin", "/lib", "/lib64", "/etc"];

/// Device nodes made in the job's `/dev` (those the host has, with the host's numbers).
const DEVICES: [&str; 6] = ["null", "zero", "full", "random", "urandom", "tty"];

/// Targets the sandbox sets up itself; a bind may not replace them or sit inside them.
const RESERVED: [&str; 2] = ["/proc", "/dev"];

/// One input or output visible to the job.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Bind {
    /// Host path (file or directory).
    pub source: PathBuf,
    /// Absolute path inside the job's root.
    pub target: PathBuf,
    pub read_only: bool,
    /// Where `source` stops being a path the host chose: every component below this directory
    /// may have been named, or can be swapped, by a job (a `local` input, an output in the
    /// results directory), so none of them may be a symbolic link. `None`: the host chose the
    /// whole path, and symlinks in it are followed. Either way the source is resolved once, to
    /// a descriptor, and the mount is made from that descriptor.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub untrusted_below: Option<PathBuf>,
}

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

fn open_path_fd(dir: RawFd, name: &CStr, flags: libc::c_int) -> io::Result<OwnedFd> {
    // SAFETY: a NUL-terminated name; the descriptor returned is ours alone.
    let fd = unsafe { libc::openat(dir, name.as_ptr(), flags | libc::O_PATH | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor owned by nothing else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn fstat_mode(fd: &OwnedFd) -> io::Result<libc::mode_t> {
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

fn file_type_name(mode: libc::mode_t) -> &'static str {
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
fn fd_path(fd: &OwnedFd) -> CString {
    // An integer's decimal digits never contain a NUL.
    CString::new(format!("/proc/self/fd/{}", fd.as_raw_fd())).unwrap_or_default()
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FsSpec {
    /// An empty directory made for this execution; becomes the job's `/`.
    pub root_dir: PathBuf,
    /// Host directories bound read-only at the same path (symlinks such as `/bin -> usr/bin`
    /// are reproduced as symlinks).
    pub system_ro: Vec<PathBuf>,
    /// Inputs at their targets, outputs (`results/<Name>`) read-write at their `Path`.
    pub binds: Vec<Bind>,
    /// Where the job starts; `/` when absent. Inside a bind it must exist in the bind's source;
    /// anywhere else it is a private writable tmpfs, and binds below it are mounted on top.
    pub working_dir: Option<PathBuf>,
    /// Host device nodes (absolute paths, e.g. the allocated GPUs) bound into the job's `/dev`
    /// under their own file names, besides the harmless ones every job gets.
    pub devices: Vec<PathBuf>,
    /// The size in bytes of each of the job's private tmpfs mounts (`/tmp`, `/dev/shm`, a
    /// scratch working directory); `None`: the kernel's default (half of the host's memory).
    pub tmpfs_size: Option<u64>,
}

impl FsSpec {
    /// A spec with the default system directories and no binds.
    pub fn new(root_dir: impl Into<PathBuf>) -> FsSpec {
        FsSpec {
            root_dir: root_dir.into(),
            system_ro: default_system_dirs(),
            binds: Vec::new(),
            working_dir: None,
            devices: Vec::new(),
            tmpfs_size: None,
        }
    }
}

/// The mount options of a job's private tmpfs.
fn tmpfs_options(size: Option<u64>) -> CString {
    let options = match size {
        Some(n) => format!("mode=1777,size={n}"),
        None => "mode=1777".to_owned(),
    };
    // Digits and ASCII letters only.
    CString::new(options).unwrap_or_default()
}

/// [`DEFAULT_SYSTEM_DIRS`] that exist on this host (as a directory or a symlink to one).
/// Looked up once per process (see [`resolve_system_dirs`]).
pub fn default_system_dirs() -> Vec<PathBuf> {
    static DIRS: std::sync::OnceLock<Vec<PathBuf>> = std::sync::OnceLock::new();
    DIRS.get_or_init(|| {
        DEFAULT_SYSTEM_DIRS
            .iter()
            .map(PathBuf::from)
            .filter(|p| p.is_dir())
            .collect()
    })
    .clone()
}

#[derive(Debug, thiserror::Error)]
pub enum FsError {
    #[error("{what} {path} is not an absolute path")]
    NotAbsolute { what: &'static str, path: PathBuf },
    #[error("{what} {path} contains `..`")]
    ParentComponent { what: &'static str, path: PathBuf },
    #[error("{what} {path} contains a NUL byte")]
    Nul { what: &'static str, path: PathBuf },
    #[error("root directory {path}: {detail}")]
    RootDir { path: PathBuf, detail: String },
    #[error("{what} {path} cannot be used: {source}")]
    Source {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{what} {path} cannot be used: {source}")]
    BadSource {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: SourceError,
    },
    #[error("bind target {target} is reserved: /, /proc and /dev are set up by the sandbox")]
    Reserved { target: PathBuf },
    #[error("two binds have the same target {target}")]
    DuplicateTarget { target: PathBuf },
    #[error(
        "bind target {target} lies inside the bind at {outer}, and {missing} does not exist there \
         as a {kind}; the outer bind would hide it (create it in the outer source or pick another \
         target)"
    )]
    NestedTargetMissing {
        target: PathBuf,
        outer: PathBuf,
        missing: PathBuf,
        kind: &'static str,
    },
    #[error("{what} {target}: the mount point {path} is a {found} but the source is a {expected}")]
    KindMismatch {
        what: &'static str,
        target: PathBuf,
        path: PathBuf,
        found: &'static str,
        expected: &'static str,
    },
    #[error("{what} {target}: {path} is a symbolic link, which could redirect the mount")]
    Symlink {
        what: &'static str,
        target: PathBuf,
        path: PathBuf,
    },
    #[error("preparing {path} in the job's root: {source}")]
    Prepare {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("preparing a job root ahead of time: {0}")]
    Template(String),
    #[error("reading the mount table: {source}")]
    MountTable {
        #[source]
        source: io::Error,
    },
}

/// Whether jobs can get a private filesystem: the plugin is root and a forked child can create a
/// mount namespace and make its mounts private (containers may forbid either).
pub fn supported() -> bool {
    if !nix::unistd::geteuid().is_root() {
        return false;
    }
    // The probe runs in a forked child so that the caller's mount namespace stays as it is.
    // SAFETY: the child makes only async-signal-safe system calls and leaves with `_exit`.
    match unsafe { libc::fork() } {
        -1 => false,
        0 => {
            // SAFETY: raw system calls with constant, NUL-terminated arguments.
            let ok = unsafe {
                libc::unshare(libc::CLONE_NEWNS) == 0
                    && libc::mount(
                        ptr::null(),
                        c"/".as_ptr(),
                        ptr::null(),
                        libc::MS_REC | libc::MS_PRIVATE,
                        ptr::null(),
                    ) == 0
            };
            // SAFETY: leaving the forked child without running the parent's destructors.
            unsafe { libc::_exit(if ok { 0 } else { 1 }) }
        }
        pid => {
            let mut status = 0;
            loop {
                // SAFETY: waits for the child forked above; `status` is a valid out-pointer.
                let r = unsafe { libc::waitpid(pid, &mut status, 0) };
                if r == pid {
                    return libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0;
                }
                if r == -1 && io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
                    return false;
                }
            }
        }
    }
}

/// What is wrong with `path` as a place in the job's root, checked before anything exists:
/// not absolute, `..` in it, or on a directory the sandbox sets up itself (a mount `target` may
/// not be `/` either; a working directory may).
pub fn layout_problem(path: &Path, is_target: bool) -> Option<String> {
    if !path.is_absolute() {
        return Some(format!("{} must be an absolute path", path.display()));
    }
    if path.components().any(|c| c == Component::ParentDir) {
        return Some(format!(
            "{} contains `..`, which could escape where it is meant to be",
            path.display()
        ));
    }
    if (is_target && path.components().count() == 1) || RESERVED.iter().any(|r| path.starts_with(r))
    {
        return Some(format!(
            "{} is reserved: /, /proc and /dev are set up by the sandbox",
            path.display()
        ));
    }
    None
}

/// One system call (or a tightly coupled pair) to run in the child.
#[derive(Debug, Clone)]
enum Step {
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

/// `struct mount_attr` of mount_setattr(2).
#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

const MOUNT_ATTR_RDONLY: u64 = 0x1;
const OPEN_TREE_CLONE: libc::c_uint = 1;
const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 0x4;
const MOUNT_ATTR_NOSUID: u64 = 0x2;
const MOUNT_ATTR_NODEV: u64 = 0x4;
const MOUNT_ATTR_NOEXEC: u64 = 0x8;
/// The access-time mode bits; relatime is their zero value.
const MOUNT_ATTR_ATIME_MASK: u64 = 0x70;
const MOUNT_ATTR_NODIRATIME: u64 = 0x80;
const MOUNT_ATTR_NOSYMFOLLOW: u64 = 0x0020_0000;

fn mount_setattr(dirfd: libc::c_int, path: &CStr, flags: libc::c_uint, attr: &MountAttr) -> i64 {
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

fn set_read_only_tree(target: &CStr) -> io::Result<()> {
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
fn has_mount_setattr() -> bool {
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

fn cvt(r: libc::c_int) -> io::Result<()> {
    if r == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

fn opt_ptr(c: &Option<CString>) -> *const libc::c_char {
    c.as_ref().map_or(ptr::null(), |c| c.as_ptr())
}

fn mount(
    source: *const libc::c_char,
    target: &CStr,
    fstype: *const libc::c_char,
    flags: c_ulong,
    data: *const libc::c_char,
) -> io::Result<()> {
    // SAFETY: every pointer is null or points at a NUL-terminated string that outlives the call.
    cvt(unsafe { libc::mount(source, target.as_ptr(), fstype, flags, data.cast()) })
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

/// `struct open_how` of openat2(2).
#[repr(C)]
struct OpenHow {
    flags: u64,
    mode: u64,
    resolve: u64,
}

const RESOLVE_NO_SYMLINKS: u64 = 0x04;
const MOVE_MOUNT_T_EMPTY_PATH: libc::c_uint = 0x40;

/// `move_mount` of the detached `tree` onto `target`, reached without following a symlink.
/// Async-signal-safe: raw system calls on data made before the fork.
fn attach(tree: RawFd, target: &CStr) -> io::Result<()> {
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

fn pivot_root(root: &CStr) -> io::Result<()> {
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

/// What a detached bind's mount flags become.
#[derive(Clone, Copy)]
enum BindFlags {
    /// A job's input or output: as the full plan's bind remount had them (nosuid, nodev,
    /// relatime, read-only when asked; whatever else the source mount had, such as noexec,
    /// cleared).
    Job { read_only: bool },
    /// A device node: usable (not nodev), nothing runs from it.
    Device,
}

impl BindFlags {
    fn attr(self) -> MountAttr {
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
    fn remount(self) -> c_ulong {
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
fn detached_bind(source: &Path, held: &OwnedFd, flags: BindFlags) -> Result<OwnedFd, FsError> {
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

/// The child's steps that attach a [`detached_bind`] at `target`. Without mount_setattr its
/// flags and propagation are set right after, through the tree's own descriptor (the mount
/// just attached, whatever the target's path names by then), before anything is mounted
/// inside it.
fn attach_steps(
    steps: &mut Vec<Step>,
    (source, tree): (&Path, &OwnedFd),
    target: CString,
    flags: BindFlags,
) -> Result<(), FsError> {
    steps.push(Step::Attach {
        tree: tree.as_raw_fd(),
        target,
        source: cstring("bind source", source)?,
    });
    if has_mount_setattr() {
        return Ok(());
    }
    for flags in [libc::MS_PRIVATE, flags.remount()] {
        steps.push(Step::Mount {
            source: None,
            target: fd_path(tree),
            fstype: None,
            flags,
            data: None,
        });
    }
    Ok(())
}

/// A mount namespace holding what every job's root has — the system directories read-only,
/// `/tmp`, `/proc`, `/dev` — already made its root, built before any job asks for it (a spare
/// monitor builds one while it waits). A job's child then enters it with one `setns` and adds
/// only its own binds ([`FsPlan::on_template`]), instead of copying the host's namespace and
/// making some twenty mounts, inodes and an unmount on the start path. The namespace lives as
/// long as this descriptor, so dropping it after the result is reported also moves its teardown
/// off the path. One template serves one job: the job's binds are added to it.
pub struct RootTemplate {
    ns: OwnedFd,
    root_dir: PathBuf,
    system_ro: Vec<PathBuf>,
}

impl RootTemplate {
    /// Build one in a forked child, which assembles the root, enters it and waits until this
    /// process holds its namespace.
    pub fn build(root_dir: &Path, system_ro: &[PathBuf]) -> Result<RootTemplate, FsError> {
        let fail = |what: &str, e: io::Error| FsError::Template(format!("{what}: {e}"));
        if !has_mount_setattr() {
            return Err(FsError::Template(
                "the kernel lacks mount_setattr (Linux 5.12) or refuses it".into(),
            ));
        }
        // As a monitor makes it for its job (shared by every job, never removed).
        match fs::create_dir(root_dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(fail(&format!("creating {}", root_dir.display()), e)),
        }
        let spec = FsSpec {
            root_dir: root_dir.to_owned(),
            system_ro: system_ro.to_vec(),
            binds: Vec::new(),
            working_dir: None,
            devices: Vec::new(),
            tmpfs_size: None,
        };
        let plan = FsPlan::build(&spec, Layout::Template)?;
        // One build at a time per process: a helper forked while another build's pipes are
        // open would hold copies of them.
        static BUILDING: std::sync::Mutex<()> = std::sync::Mutex::new(());
        let _one = BUILDING.lock().unwrap_or_else(|p| p.into_inner());
        let pipe = || crate::fds::pipe2(libc::O_CLOEXEC).map_err(|e| fail("pipe", e));
        let (ready_r, ready_w) = pipe()?;
        let (hold_r, hold_w) = pipe()?;
        // SAFETY: the child makes only async-signal-safe system calls on data prepared before
        // the fork, and leaves with `_exit`.
        let pid = unsafe { libc::fork() };
        if pid < 0 {
            return Err(fail("fork", io::Error::last_os_error()));
        }
        if pid == 0 {
            // SAFETY: the child's copies of the descriptors; raw system calls, then `_exit`.
            unsafe {
                // Nothing but its own two pipe ends: a copy of another process's pipe (a fork
                // of another thread) must not outlive that process's wait because of us.
                crate::fds::close_range_except(0, &mut [ready_w.as_raw_fd(), hold_r.as_raw_fd()]);
                let mut report = [0u8; 12];
                if let Err((i, e)) = plan.apply_at() {
                    report[..4].copy_from_slice(&1u32.to_ne_bytes());
                    report[4..8].copy_from_slice(&(i as u32).to_ne_bytes());
                    let errno = e.raw_os_error().unwrap_or(libc::EIO);
                    report[8..].copy_from_slice(&errno.to_ne_bytes());
                }
                libc::write(ready_w.as_raw_fd(), report.as_ptr().cast(), report.len());
                // Alive until the parent holds the namespace: it sends a byte (or is gone).
                let mut b = [0u8; 1];
                while libc::read(hold_r.as_raw_fd(), b.as_mut_ptr().cast(), 1) < 0
                    && *libc::__errno_location() == libc::EINTR
                {}
                libc::_exit(0)
            }
        }
        drop((ready_w, hold_r));
        let mut report = [0u8; 12];
        let n = loop {
            // SAFETY: reading into our own buffer.
            let n = unsafe { libc::read(ready_r.as_raw_fd(), report.as_mut_ptr().cast(), 12) };
            if n >= 0 || io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
                break n;
            }
        };
        let word = |i: usize| [report[i], report[i + 1], report[i + 2], report[i + 3]];
        let built = if n != 12 {
            Err(FsError::Template(
                "the child building it exited without a word".into(),
            ))
        } else if u32::from_ne_bytes(word(0)) != 0 {
            let step = plan.describe_step(u32::from_ne_bytes(word(4)) as usize);
            let e = io::Error::from_raw_os_error(i32::from_ne_bytes(word(8)));
            Err(FsError::Template(format!("{step}: {e}")))
        } else {
            fs::File::open(format!("/proc/{pid}/ns/mnt"))
                .map(OwnedFd::from)
                .map_err(|e| fail("opening its namespace", e))
        };
        // SAFETY: one byte from a local buffer to our own pipe.
        unsafe { libc::write(hold_w.as_raw_fd(), b"r".as_ptr().cast(), 1) };
        drop(hold_w);
        let mut status = 0;
        // SAFETY: our own child, which leaves now that its hold is closed.
        while unsafe { libc::waitpid(pid, &mut status, 0) } < 0
            && io::Error::last_os_error().kind() == io::ErrorKind::Interrupted
        {}
        Ok(RootTemplate {
            ns: built?,
            root_dir: root_dir.to_owned(),
            system_ro: system_ro.to_vec(),
        })
    }

    /// Whether it was made for jobs like `spec`'s: the same root directory and system
    /// directories, and no device nodes to add (its `/dev` is read-only).
    fn fits(&self, spec: &FsSpec) -> bool {
        spec.root_dir == self.root_dir
            && spec.system_ro == self.system_ro
            && spec.devices.is_empty()
    }
}

impl std::os::fd::AsFd for RootTemplate {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.ns.as_fd()
    }
}

impl std::fmt::Debug for RootTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RootTemplate")
            .field("root_dir", &self.root_dir)
            .finish_non_exhaustive()
    }
}

/// The validated, fully prepared filesystem of one job.
#[derive(Debug, Clone)]
pub struct FsPlan {
    steps: Vec<Step>,
    /// The descriptors [`Step::EnterTemplate`] and [`Step::Attach`] name by number (the
    /// template's namespace, the detached binds of the job's inputs, outputs and device
    /// nodes): held open here.
    _trees: Arc<Vec<OwnedFd>>,
}

/// What [`FsPlan::build`] plans.
#[derive(Clone, Copy)]
enum Layout<'a> {
    /// Everything, in a copy of the host's mount namespace: what a job's child does alone.
    Full,
    /// Only what every job gets (system directories, `/tmp`, `/proc`, `/dev`), ending in the
    /// root: the plan of a [`RootTemplate`].
    Template,
    /// Only the job's own mounts, inside a [`RootTemplate`].
    OnTemplate(&'a RootTemplate),
}

impl Layout<'_> {
    /// Whether this layout makes `entry`'s mount: a template holds what every job has, a job
    /// on a template adds the rest.
    fn plans(self, entry: &Entry) -> bool {
        match self {
            Layout::Full => true,
            Layout::Template => entry.in_template(),
            Layout::OnTemplate(_) => !entry.in_template(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Dir,
    File,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Dir => "directory",
            Kind::File => "file",
        }
    }

    fn of(meta: &fs::Metadata) -> Kind {
        if meta.is_dir() {
            Kind::Dir
        } else {
            Kind::File
        }
    }
}

/// What one mount in the job's tree is, before it becomes steps.
#[derive(Debug, Clone)]
enum Entry {
    Bind {
        what: &'static str,
        source: PathBuf,
        target: PathBuf,
        kind: Kind,
        read_only: bool,
        /// System directories carry their submounts (e.g. a container's /etc/hosts).
        recursive: bool,
        /// A job's input or output: its source resolved once ([`open_source`]), mounted from
        /// this descriptor. System directories (the host's, looked up once) have none.
        held: Option<Arc<OwnedFd>>,
    },
    /// A private, writable tmpfs: `/tmp`, and the working directory when no bind provides it.
    Tmpfs(PathBuf),
    Proc,
    Dev,
}

impl Entry {
    /// Whether every job has this mount (a system directory, `/tmp`, `/proc`, `/dev`): what a
    /// [`RootTemplate`] holds. Only system directories are bound recursively.
    fn in_template(&self) -> bool {
        match self {
            Entry::Bind { recursive, .. } => *recursive,
            Entry::Tmpfs(target) => target == Path::new("/tmp"),
            Entry::Proc | Entry::Dev => true,
        }
    }

    fn target(&self) -> &Path {
        match self {
            Entry::Bind { target, .. } => target,
            Entry::Tmpfs(target) => target,
            Entry::Proc => Path::new("/proc"),
            Entry::Dev => Path::new("/dev"),
        }
    }
}

fn cstring(what: &'static str, path: &Path) -> Result<CString, FsError> {
    CString::new(path.as_os_str().as_bytes()).map_err(|_| FsError::Nul {
        what,
        path: path.to_owned(),
    })
}

fn check_clean(what: &'static str, path: &Path) -> Result<(), FsError> {
    if !path.is_absolute() {
        return Err(FsError::NotAbsolute {
            what,
            path: path.to_owned(),
        });
    }
    if path.components().any(|c| c == Component::ParentDir) {
        return Err(FsError::ParentComponent {
            what,
            path: path.to_owned(),
        });
    }
    cstring(what, path).map(drop)
}

/// `path` below `/`, as components joinable onto another directory.
fn relative(path: &Path) -> PathBuf {
    path.components()
        .filter(|c| matches!(c, Component::Normal(_)))
        .collect()
}

fn depth(path: &Path) -> usize {
    relative(path).components().count()
}

/// `path` with `link` replaced by `resolved` when it starts with it.
fn rewrite(path: &Path, links: &[(PathBuf, PathBuf)]) -> PathBuf {
    for (link, resolved) in links {
        if let Ok(rest) = path.strip_prefix(link) {
            return resolved.join(rest);
        }
    }
    path.to_owned()
}

/// Checks that `rel` below `base` (held, for a job's bind, else opened by path) exists as
/// `kind` and no component of it is a symlink, opening one component at a time with
/// `O_NOFOLLOW`. What a job may still change after this is caught when the child attaches the
/// mount (its target is opened with `RESOLVE_NO_SYMLINKS`); this gives the caller a clear error.
fn check_existing(
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

/// Mount points of the host below `dir` (not `dir` itself), from `/proc/self/mountinfo`.
fn submounts(table: &str, dir: &Path) -> Vec<PathBuf> {
    table
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(|field| PathBuf::from(unescape_mountinfo(field)))
        .filter(|m| m != dir && m.starts_with(dir))
        .collect()
}

/// mountinfo writes space, tab, newline and backslash in paths as `\ooo`.
fn unescape_mountinfo(field: &str) -> std::ffi::OsString {
    let b = field.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|d| (b'0'..=b'7').contains(d))
        {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    std::ffi::OsString::from(std::ffi::OsStr::from_bytes(&out))
}

/// One system directory, as the host has it.
#[derive(Clone)]
struct SystemDir {
    dir: PathBuf,
    canon: PathBuf,
    how: SystemHow,
}

#[derive(Clone)]
enum SystemHow {
    /// A symlink to another bound system directory, reproduced with this text.
    Link(PathBuf),
    Bind(Kind),
}

/// Every job of a plugin asks for the same system directories, and the host's answer (which
/// are symlinks, where they lead) does not change under a running plugin: it is worked out
/// once per process, in the fork server before it forks monitors ([`warm`]).
static SYSTEM_DIRS: LastFor<Vec<PathBuf>, Vec<SystemDir>> = LastFor::new();

fn resolve_system_dirs(system_ro: &[PathBuf]) -> Result<Vec<SystemDir>, FsError> {
    SYSTEM_DIRS.get_or_try(system_ro, || resolve_system_dirs_now(system_ro))
}

/// Work out, in this process, what planning a job's root needs to know about the host, for the
/// processes it forks later.
pub fn warm(system_ro: &[PathBuf], root_dir: &Path) {
    let _ = has_mount_setattr();
    let _ = standard_devices();
    let _ = resolve_system_dirs(system_ro);
    if root_dir.is_dir() {
        let _ = prepare_root(root_dir);
    }
}

fn resolve_system_dirs_now(system_ro: &[PathBuf]) -> Result<Vec<SystemDir>, FsError> {
    let mut canon_dirs = Vec::new();
    for dir in system_ro {
        check_clean("system directory", dir)?;
        if dir == Path::new("/")
            || dir.starts_with("/tmp")
            || RESERVED.iter().any(|r| dir.starts_with(r))
        {
            return Err(FsError::Reserved {
                target: dir.clone(),
            });
        }
        let canon = fs::canonicalize(dir).map_err(|source| FsError::Source {
            what: "system directory",
            path: dir.clone(),
            source,
        })?;
        canon_dirs.push((dir.clone(), canon));
    }
    let mut out = Vec::new();
    for (dir, canon) in &canon_dirs {
        let is_link = fs::symlink_metadata(dir)
            .map(|m| m.file_type().is_symlink())
            .unwrap_or(false);
        let covered = canon_dirs
            .iter()
            .any(|(d, c)| d != dir && c == d && canon.starts_with(c));
        let how = if is_link && covered && depth(dir) == 1 {
            let text = fs::read_link(dir).map_err(|source| FsError::Source {
                what: "system directory",
                path: dir.clone(),
                source,
            })?;
            SystemHow::Link(text)
        } else {
            let meta = fs::metadata(canon).map_err(|source| FsError::Source {
                what: "system directory",
                path: dir.clone(),
                source,
            })?;
            SystemHow::Bind(Kind::of(&meta))
        };
        out.push(SystemDir {
            dir: dir.clone(),
            canon: canon.clone(),
            how,
        });
    }
    Ok(out)
}

const RO_BIND: c_ulong =
    libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV;

impl FsPlan {
    /// Validates `spec`, creates the mount points that belong in `root_dir` and plans every
    /// system call the child makes.
    pub fn new(spec: &FsSpec) -> Result<FsPlan, FsError> {
        FsPlan::build(spec, Layout::Full)
    }

    /// The plan for `spec` on top of `template`: the child enters the template's namespace and
    /// adds only what is the job's own (its binds, a scratch working directory). `None` when
    /// the template was not made for this spec (another root, other system directories, or
    /// device nodes to add to its read-only `/dev`): then [`FsPlan::new`] is the plan.
    pub fn on_template(spec: &FsSpec, template: &RootTemplate) -> Result<Option<FsPlan>, FsError> {
        if !template.fits(spec) {
            return Ok(None);
        }
        FsPlan::build(spec, Layout::OnTemplate(template)).map(Some)
    }

    fn build(spec: &FsSpec, layout: Layout<'_>) -> Result<FsPlan, FsError> {
        let root = prepare_root(&spec.root_dir)?;
        let on_template = matches!(layout, Layout::OnTemplate(_));
        // Where the child makes its mounts: below the root directory in a copy of the host's
        // namespace, or at the job's own paths once it is inside the template.
        let base = if on_template {
            PathBuf::from("/")
        } else {
            root.clone()
        };
        let table = if has_mount_setattr() {
            String::new()
        } else {
            fs::read_to_string("/proc/self/mountinfo")
                .map_err(|source| FsError::MountTable { source })?
        };

        // System directories: symlinks to another bound system directory are reproduced as
        // symlinks (`/bin -> usr/bin`), everything else is bound at its own path.
        let mut entries = Vec::new();
        let mut links: Vec<(PathBuf, PathBuf)> = Vec::new();
        let mut link_steps = Vec::new();
        for d in resolve_system_dirs(&spec.system_ro)? {
            match d.how {
                SystemHow::Link(text) => {
                    links.push((d.dir.clone(), d.canon));
                    link_steps.push((root.join(relative(&d.dir)), text));
                }
                SystemHow::Bind(kind) => entries.push(Entry::Bind {
                    what: "system directory",
                    source: d.canon,
                    target: d.dir,
                    kind,
                    read_only: true,
                    recursive: true,
                    held: None,
                }),
            }
        }
        entries.push(Entry::Tmpfs(PathBuf::from("/tmp")));
        entries.push(Entry::Proc);
        entries.push(Entry::Dev);

        let mut seen = HashSet::new();
        for bind in &spec.binds {
            check_clean("bind source", &bind.source)?;
            check_clean("bind target", &bind.target)?;
            let target = rewrite(&bind.target, &links);
            if target == Path::new("/") || RESERVED.iter().any(|r| target.starts_with(r)) {
                return Err(FsError::Reserved {
                    target: bind.target.clone(),
                });
            }
            if !seen.insert(target.clone()) {
                return Err(FsError::DuplicateTarget {
                    target: bind.target.clone(),
                });
            }
            let held =
                open_source(&bind.source, bind.untrusted_below.as_deref()).map_err(|source| {
                    FsError::BadSource {
                        what: "bind source",
                        path: bind.source.clone(),
                        source,
                    }
                })?;
            entries.push(Entry::Bind {
                what: "bind target",
                source: bind.source.clone(),
                target,
                kind: if held.is_dir { Kind::Dir } else { Kind::File },
                read_only: bind.read_only,
                recursive: false,
                held: Some(Arc::new(held.fd)),
            });
        }
        let workdir = match &spec.working_dir {
            None => PathBuf::from("/"),
            Some(w) => {
                check_clean("working directory", w)?;
                let w = rewrite(w, &links);
                if let Some(scratch) = working_dir_entry(&w, &entries)? {
                    entries.push(scratch);
                }
                w
            }
        };
        // Outer mounts first so that none hides one inside it; the sort is stable, so system
        // directories come before the sandbox's own mounts, which come before the job's binds.
        entries.sort_by_key(|e| depth(e.target()));

        let mut steps = Vec::new();
        let mut trees = Vec::new();
        if let Layout::OnTemplate(t) = layout {
            // The plan holds its own descriptor: it may outlive the template.
            let ns =
                t.ns.try_clone()
                    .map_err(|e| FsError::Template(format!("holding its namespace: {e}")))?;
            steps.push(Step::EnterTemplate { ns: ns.as_raw_fd() });
            trees.push(ns);
            // The template's tmpfs mounts were made before the job was known, unsized: given
            // the job's size now (a fresh tmpfs, nothing in it yet to exceed it).
            if let Some(n) = spec.tmpfs_size {
                let data = CString::new(format!("size={n}")).unwrap_or_default();
                for t in ["/tmp", "/dev/shm"] {
                    steps.push(Step::Mount {
                        source: None,
                        target: cstring("sandbox mount", Path::new(t))?,
                        fstype: None,
                        flags: libc::MS_REMOUNT | libc::MS_NOSUID | libc::MS_NODEV,
                        data: Some(data.clone()),
                    });
                }
            }
        } else {
            steps.extend([
                Step::Unshare,
                // Nothing mounted from here on may propagate back to the host.
                Step::Mount {
                    source: None,
                    target: c"/".to_owned(),
                    fstype: None,
                    flags: libc::MS_REC | libc::MS_PRIVATE,
                    data: None,
                },
                // The root is a fresh tmpfs that only this mount namespace sees: pivot_root
                // needs a mount point, and its mount points are made by the child in memory,
                // where making them costs nothing and leaves nothing to clean up, instead of as
                // a dozen inodes on the state directory's disk for every execution.
                Step::Mount {
                    source: Some(c"tmpfs".to_owned()),
                    target: cstring("root directory", &root)?,
                    fstype: Some(c"tmpfs".to_owned()),
                    flags: libc::MS_NOSUID | libc::MS_NODEV,
                    data: Some(c"mode=755,size=64k".to_owned()),
                },
            ]);
            for (link, text) in &link_steps {
                steps.push(Step::Symlink {
                    target: cstring("system directory", text)?,
                    link: cstring("system directory", link)?,
                });
            }
        }
        for (i, entry) in entries.iter().enumerate() {
            if !layout.plans(entry) {
                continue;
            }
            let target = entry.target();
            let host_target = base.join(relative(target));
            let host_c = cstring("bind target", &host_target)?;
            // Where the mount point lives: in the root or another of the child's tmpfs mounts
            // (made by the child), or inside an earlier bind (must already exist there).
            let outer = entries[..i]
                .iter()
                .filter(|e| target != e.target() && target.starts_with(e.target()))
                .max_by_key(|e| depth(e.target()));
            let (what, kind) = match entry {
                Entry::Bind { what, kind, .. } => (*what, *kind),
                _ => ("sandbox mount", Kind::Dir),
            };
            match outer {
                None => mount_point_steps(&mut steps, what, &base, &relative(target), kind)?,
                Some(Entry::Tmpfs(tmpfs)) => mount_point_steps(
                    &mut steps,
                    what,
                    &base.join(relative(tmpfs)),
                    &relative(target.strip_prefix(tmpfs).unwrap_or(target)),
                    kind,
                )?,
                Some(Entry::Bind {
                    source,
                    target: outer_target,
                    held,
                    ..
                }) => {
                    let rel = target.strip_prefix(outer_target).unwrap_or(target);
                    if !check_existing(what, target, source, held.as_deref(), rel, kind)? {
                        return Err(FsError::NestedTargetMissing {
                            target: target.to_owned(),
                            outer: outer_target.clone(),
                            missing: source.join(rel),
                            kind: kind.name(),
                        });
                    }
                }
                Some(_) => {
                    return Err(FsError::Reserved {
                        target: target.to_owned(),
                    })
                }
            }

            match entry {
                Entry::Bind {
                    source,
                    read_only,
                    held: Some(held),
                    ..
                } => {
                    // Made here from the held source, detached, and attached by the child.
                    let flags = BindFlags::Job {
                        read_only: *read_only,
                    };
                    let tree = detached_bind(source, held, flags)?;
                    attach_steps(&mut steps, (source, &tree), host_c, flags)?;
                    trees.push(tree);
                }
                Entry::Bind {
                    source,
                    read_only,
                    recursive,
                    held: None,
                    ..
                } => {
                    steps.push(Step::Mount {
                        source: Some(cstring("bind source", source)?),
                        target: host_c.clone(),
                        fstype: None,
                        flags: libc::MS_BIND | if *recursive { libc::MS_REC } else { 0 },
                        data: None,
                    });
                    let flags = if *read_only {
                        RO_BIND
                    } else {
                        RO_BIND & !libc::MS_RDONLY
                    };
                    if *recursive && *read_only && has_mount_setattr() {
                        steps.push(Step::ReadOnlyTree { target: host_c });
                        continue;
                    }
                    steps.push(Step::Mount {
                        source: None,
                        target: host_c,
                        fstype: None,
                        flags,
                        data: None,
                    });
                    if *recursive && *read_only {
                        // A recursive bind keeps each submount's own flags; make those
                        // read-only too.
                        for sub in submounts(&table, source) {
                            let rel = sub.strip_prefix(source).unwrap_or(&sub);
                            steps.push(Step::Mount {
                                source: None,
                                target: cstring("system directory", &host_target.join(rel))?,
                                fstype: None,
                                flags: RO_BIND,
                                data: None,
                            });
                        }
                    }
                }
                Entry::Tmpfs(_) => steps.push(Step::Mount {
                    source: Some(c"tmpfs".to_owned()),
                    target: host_c,
                    fstype: Some(c"tmpfs".to_owned()),
                    flags: libc::MS_NOSUID | libc::MS_NODEV,
                    // Pages written here are charged to the job's memory cgroup; the size also
                    // bounds a job without a memory limit, and a full tmpfs is ENOSPC, not OOM.
                    data: Some(tmpfs_options(spec.tmpfs_size)),
                }),
                Entry::Proc => {
                    steps.push(Step::Proc {
                        target: host_c.clone(),
                    });
                    // Without a pid or user namespace of its own a root job could otherwise
                    // write kernel settings for the whole host.
                    for p in ["sys", "sysrq-trigger"] {
                        steps.push(Step::ReadOnlyIfPresent {
                            path: cstring("sandbox mount", &host_target.join(p))?,
                        });
                    }
                }
                Entry::Dev => dev_steps(
                    &mut steps,
                    &mut trees,
                    &host_target,
                    &spec.devices,
                    spec.tmpfs_size,
                )?,
            }
        }

        // A template's root stays writable until a job's own mount points are made in it.
        // Otherwise every mount point exists now: the root becomes read-only, so a job running
        // as root cannot leave files in it (on a template, the job's child is already inside).
        if !matches!(layout, Layout::Template) {
            steps.push(Step::Mount {
                source: None,
                target: cstring("root directory", &base)?,
                fstype: None,
                flags: RO_BIND,
                data: None,
            });
        }
        if !on_template {
            steps.push(Step::PivotRoot {
                root: cstring("root directory", &root)?,
            });
        }
        steps.push(Step::Chdir {
            path: cstring("working directory", &workdir)?,
        });
        Ok(FsPlan {
            steps,
            _trees: Arc::new(trees),
        })
    }

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

/// The scratch tmpfs the working directory needs, if any. One that no bind or system directory
/// provides gets a writable tmpfs of its own (as a container's writable layer would be, and as
/// lost at the end); one inside a bind must exist in the bind's source.
fn working_dir_entry(w: &Path, entries: &[Entry]) -> Result<Option<Entry>, FsError> {
    if w == Path::new("/") {
        return Ok(None);
    }
    let outer = entries
        .iter()
        .filter(|e| w.starts_with(e.target()))
        .max_by_key(|e| depth(e.target()));
    match outer {
        None => Ok(Some(Entry::Tmpfs(w.to_owned()))),
        Some(e) if e.target() == w => Ok(None),
        Some(Entry::Tmpfs(_)) => Ok(Some(Entry::Tmpfs(w.to_owned()))),
        Some(Entry::Bind {
            source,
            target,
            held,
            ..
        }) => {
            let rel = w.strip_prefix(target).unwrap_or(w);
            let held = held.as_deref();
            if check_existing("working directory", w, source, held, rel, Kind::Dir)? {
                Ok(None)
            } else {
                Err(FsError::NestedTargetMissing {
                    target: w.to_owned(),
                    outer: target.clone(),
                    missing: source.join(rel),
                    kind: Kind::Dir.name(),
                })
            }
        }
        Some(_) => Err(FsError::Reserved {
            target: w.to_owned(),
        }),
    }
}

/// Steps that make the mount point `base/rel` (and its parents) in a tmpfs of the child's own:
/// directories, and a file for the last component when `kind` is one.
fn mount_point_steps(
    steps: &mut Vec<Step>,
    what: &'static str,
    base: &Path,
    rel: &Path,
    kind: Kind,
) -> Result<(), FsError> {
    let mut p = base.to_owned();
    let n = rel.components().count();
    for (j, c) in rel.components().enumerate() {
        p.push(c);
        let path = cstring(what, &p)?;
        if j + 1 == n && kind == Kind::File {
            steps.push(Step::Touch { path });
        } else {
            steps.push(Step::Mkdir { path, mode: 0o755 });
        }
    }
    Ok(())
}

fn prepare_root(root_dir: &Path) -> Result<PathBuf, FsError> {
    // Every job of a plugin shares one root directory (each mounts its own tmpfs on it): made
    // ready once per process.
    static PREPARED: LastFor<PathBuf, PathBuf> = LastFor::new();
    PREPARED.get_or_try(root_dir, || prepare_root_now(root_dir))
}

fn prepare_root_now(root_dir: &Path) -> Result<PathBuf, FsError> {
    check_clean("root directory", root_dir)?;
    let root = fs::canonicalize(root_dir).map_err(|e| FsError::RootDir {
        path: root_dir.to_owned(),
        detail: e.to_string(),
    })?;
    if root == Path::new("/") {
        return Err(FsError::RootDir {
            path: root_dir.to_owned(),
            detail: "the host's / cannot be the job's root".to_owned(),
        });
    }
    let meta = fs::metadata(&root).map_err(|e| FsError::RootDir {
        path: root_dir.to_owned(),
        detail: e.to_string(),
    })?;
    if !meta.is_dir() {
        return Err(FsError::RootDir {
            path: root_dir.to_owned(),
            detail: "not a directory".to_owned(),
        });
    }
    // It becomes `/`: an unprivileged job must be able to traverse it.
    fs::set_permissions(&root, fs::Permissions::from_mode(0o755)).map_err(|e| {
        FsError::RootDir {
            path: root_dir.to_owned(),
            detail: e.to_string(),
        }
    })?;
    Ok(root)
}

/// The [`DEVICES`] this host has, as character devices: (name, device number). Looked up once.
fn standard_devices() -> &'static [(&'static str, libc::dev_t)] {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    static NODES: std::sync::OnceLock<Vec<(&'static str, libc::dev_t)>> =
        std::sync::OnceLock::new();
    NODES.get_or_init(|| {
        DEVICES
            .iter()
            .filter_map(|name| {
                let meta = fs::metadata(Path::new("/dev").join(name)).ok()?;
                meta.file_type()
                    .is_char_device()
                    .then(|| (*name, meta.rdev() as libc::dev_t))
            })
            .collect()
    })
}

/// A minimal `/dev`: a tmpfs with the harmless device nodes (made) and any extra ones (bound
/// from the host), `/dev/shm`, and the `/proc/self/fd` symlinks; read-only afterwards so a job
/// cannot add nodes.
fn dev_steps(
    steps: &mut Vec<Step>,
    trees: &mut Vec<OwnedFd>,
    dev: &Path,
    extra: &[PathBuf],
    shm_size: Option<u64>,
) -> Result<(), FsError> {
    let dev_c = cstring("sandbox mount", dev)?;
    steps.push(Step::Mount {
        source: Some(c"tmpfs".to_owned()),
        target: dev_c.clone(),
        fstype: Some(c"tmpfs".to_owned()),
        flags: libc::MS_NOSUID | libc::MS_NOEXEC,
        data: Some(c"mode=755,size=64k".to_owned()),
    });
    // The harmless nodes are made, not bound: a node in a tmpfs costs nothing to make or to
    // drop, a bind is one more mount to create and to tear down with the job's namespace.
    for (name, rdev) in standard_devices() {
        steps.push(Step::CharDevice {
            path: cstring("sandbox mount", &dev.join(name))?,
            rdev: *rdev,
        });
    }
    for host in extra.iter().cloned() {
        check_clean("device node", &host)?;
        let Some(name) = host.file_name() else {
            return Err(FsError::NotAbsolute {
                what: "device node",
                path: host,
            });
        };
        // Resolved once and checked: a character device, bound from the descriptor held.
        let bad = |source: SourceError| FsError::BadSource {
            what: "device node",
            path: host.clone(),
            source,
        };
        let held = open_path_fd(libc::AT_FDCWD, &cstring("device node", &host)?, 0)
            .map_err(|e| bad(e.into()))?;
        match fstat_mode(&held).map_err(|e| bad(e.into()))? {
            libc::S_IFCHR => {}
            other => {
                return Err(bad(SourceError::Kind {
                    found: match other {
                        libc::S_IFDIR => "directory",
                        libc::S_IFREG => "regular file",
                        other => file_type_name(other),
                    },
                }))
            }
        }
        let node = cstring("sandbox mount", &dev.join(name))?;
        steps.push(Step::Touch { path: node.clone() });
        let tree = detached_bind(&host, &held, BindFlags::Device)?;
        attach_steps(steps, (&host, &tree), node, BindFlags::Device)?;
        trees.push(tree);
    }
    let shm = cstring("sandbox mount", &dev.join("shm"))?;
    steps.push(Step::Mkdir {
        path: shm.clone(),
        mode: 0o1777,
    });
    steps.push(Step::Mount {
        source: Some(c"tmpfs".to_owned()),
        target: shm,
        fstype: Some(c"tmpfs".to_owned()),
        flags: libc::MS_NOSUID | libc::MS_NODEV,
        data: Some(tmpfs_options(shm_size)),
    });
    for (name, to) in [
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ] {
        steps.push(Step::Symlink {
            target: cstring("sandbox mount", Path::new(to))?,
            link: cstring("sandbox mount", &dev.join(name))?,
        });
    }
    steps.push(Step::Mount {
        source: None,
        target: dev_c,
        fstype: None,
        flags: libc::MS_REMOUNT | libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NOEXEC,
        data: None,
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_escapes_are_decoded() {
        assert_eq!(unescape_mountinfo(r"/a\040b\134c"), "/a b\\c");
        assert_eq!(unescape_mountinfo(r"/plain\04"), r"/plain\04");
    }

    #[test]
    fn submounts_are_strictly_below() {
        let table = "1 0 0:1 / / rw - ext4 x rw\n\
                     2 1 0:2 / /etc rw - ext4 x rw\n\
                     3 1 0:3 /h /etc/hosts rw - ext4 x rw\n\
                     4 1 0:4 / /etcetera rw - ext4 x rw\n";
        assert_eq!(
            submounts(table, Path::new("/etc")),
            vec![PathBuf::from("/etc/hosts")]
        );
    }
}
