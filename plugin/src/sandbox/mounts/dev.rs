//! The job's `/dev`: a small tmpfs with the harmless device nodes made in it, the allocated
//! devices (GPUs) bound from descriptors checked once, `/dev/shm`, the `/proc/self/fd` links;
//! read-only once made.

use std::fs;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use super::child::Step;
use super::plan::attach_steps;
use super::source::{
    detached_bind, file_type_name, fstat_mode, open_path_fd, BindFlags, SourceError,
};
use super::{check_clean, cstring, tmpfs_options, FsError, DEVICES};

/// The [`DEVICES`] this host has, as character devices: (name, device number). Looked up once.
pub(super) fn standard_devices() -> &'static [(&'static str, libc::dev_t)] {
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
pub(super) fn dev_steps(
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
