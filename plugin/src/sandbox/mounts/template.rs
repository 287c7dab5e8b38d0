//! What every job's root has, known or made ahead of any job: the host's system directories
//! as they resolve (once per process), the shared root mount point, the standard device nodes,
//! and the [`RootTemplate`] namespace a spare monitor builds while it waits.

use std::fs;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use super::dev::standard_devices;
use super::plan::{Kind, Layout};
use super::sys::has_mount_setattr;
use super::{check_clean, depth, FsError, FsPlan, FsSpec, RESERVED};
use crate::memo::LastFor;

/// A mount namespace holding what every job's root has — the system directories read-only,
/// `/tmp`, `/proc`, `/dev` — already made its root, built before any job asks for it (a spare
/// monitor builds one while it waits). A job's child then enters it with one `setns` and adds
/// only its own binds ([`FsPlan::on_template`]), instead of copying the host's namespace and
/// making some twenty mounts, inodes and an unmount on the start path. The namespace lives as
/// long as this descriptor, so dropping it after the result is reported also moves its teardown
/// off the path. One template serves one job: the job's binds are added to it.
pub struct RootTemplate {
    pub(super) ns: OwnedFd,
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
    pub(super) fn fits(&self, spec: &FsSpec) -> bool {
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

/// One system directory, as the host has it.
#[derive(Clone)]
pub(super) struct SystemDir {
    pub(super) dir: PathBuf,
    pub(super) canon: PathBuf,
    pub(super) how: SystemHow,
}

#[derive(Clone)]
pub(super) enum SystemHow {
    /// A symlink to another bound system directory, reproduced with this text.
    Link(PathBuf),
    Bind(Kind),
}

/// Every job of a plugin asks for the same system directories, and the host's answer (which
/// are symlinks, where they lead) does not change under a running plugin: it is worked out
/// once per process, in the fork server before it forks monitors ([`warm`]).
pub(super) static SYSTEM_DIRS: LastFor<Vec<PathBuf>, Vec<SystemDir>> = LastFor::new();

pub(super) fn resolve_system_dirs(system_ro: &[PathBuf]) -> Result<Vec<SystemDir>, FsError> {
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

pub(super) fn resolve_system_dirs_now(system_ro: &[PathBuf]) -> Result<Vec<SystemDir>, FsError> {
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

pub(super) fn prepare_root(root_dir: &Path) -> Result<PathBuf, FsError> {
    // Every job of a plugin shares one root directory (each mounts its own tmpfs on it): made
    // ready once per process.
    static PREPARED: LastFor<PathBuf, PathBuf> = LastFor::new();
    PREPARED.get_or_try(root_dir, || prepare_root_now(root_dir))
}

pub(super) fn prepare_root_now(root_dir: &Path) -> Result<PathBuf, FsError> {
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
