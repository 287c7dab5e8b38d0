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
//!
//! The files: this one holds the spec, its errors and the path checks every part shares;
//! `source` resolves bind sources to descriptors; `plan` is the planner; `template` is what is
//! known or made ahead of any job; `dev` is the job's `/dev`; `child` is what runs after the
//! fork; `sys` wraps the mount system calls.

mod child;
mod dev;
mod plan;
mod source;
mod sys;
mod template;

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};
use std::ptr;

pub use plan::FsPlan;
pub use source::{open_source, HeldSource, SourceError};
pub use template::{warm, RootTemplate};

use super::{unclean, Unclean};

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
    /// The request fields this bind came from, named in an error about its source or target.
    #[serde(default)]
    pub fields: BindFields,
}

/// The request fields a [`Bind`]'s source and target came from (`Inputs[0].Volume.source`,
/// `Outputs[1].Path`); empty for a bind that no request field names.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BindFields {
    pub source: String,
    pub target: String,
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
/// Looked up once per process.
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
    match unclean(path) {
        Some(Unclean::NotAbsolute) => {
            return Some(format!("{} must be an absolute path", path.display()));
        }
        Some(Unclean::ParentComponent) => {
            return Some(format!(
                "{} contains `..`, which could escape where it is meant to be",
                path.display()
            ));
        }
        None => {}
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

fn cstring(what: &'static str, path: &Path) -> Result<CString, FsError> {
    CString::new(path.as_os_str().as_bytes()).map_err(|_| FsError::Nul {
        what,
        path: path.to_owned(),
    })
}

fn check_clean(what: &'static str, path: &Path) -> Result<(), FsError> {
    let path_buf = || path.to_owned();
    match unclean(path) {
        Some(Unclean::NotAbsolute) => Err(FsError::NotAbsolute {
            what,
            path: path_buf(),
        }),
        Some(Unclean::ParentComponent) => Err(FsError::ParentComponent {
            what,
            path: path_buf(),
        }),
        None => cstring(what, path).map(drop),
    }
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
