//! cgroupfs file access with the path in every error.

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use super::CgroupError;

pub(crate) fn io_err(op: &'static str, path: &Path, source: io::Error) -> CgroupError {
    CgroupError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// One `write(2)` of `value` and a newline (as `echo` does; the kernel strips it), one value per
/// write as the kernel expects.
///
/// Opened with `O_APPEND | O_CREAT`: cgroupfs never creates files and ignores the offset, so on a
/// real host this is a plain write; in a fake tree made of plain files it records every value
/// written, which is what the tests assert.
pub(crate) fn write_value(path: &Path, value: &str) -> Result<(), CgroupError> {
    let mut file = OpenOptions::new()
        .append(true)
        .create(true)
        .open(path)
        .map_err(|e| io_err("open", path, e))?;
    file.write_all(format!("{value}\n").as_bytes())
        .map_err(|e| io_err("write", path, e))
}

pub(crate) fn read(path: &Path) -> Result<String, CgroupError> {
    fs::read_to_string(path).map_err(|e| io_err("read", path, e))
}

/// Reads a file that older kernels or unconfigured controllers may not have.
pub(crate) fn read_optional(path: &Path) -> Result<Option<String>, CgroupError> {
    match fs::read_to_string(path) {
        Ok(s) => Ok(Some(s)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_err("read", path, e)),
    }
}

pub(crate) fn read_u64(path: &Path) -> Result<Option<u64>, CgroupError> {
    match read_optional(path)? {
        None => Ok(None),
        Some(text) => text
            .trim()
            .parse::<u64>()
            .map(Some)
            .map_err(|_| parse_err(path, format!("expected an integer, got {:?}", text.trim()))),
    }
}

pub(crate) fn parse_err(path: &Path, detail: String) -> CgroupError {
    CgroupError::Parse {
        path: path.to_path_buf(),
        detail,
    }
}

/// The value of `key` in a flat keyed file (`memory.events`, `cpu.stat`, `memory.oom_control`).
pub(crate) fn keyed(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let mut it = line.split_whitespace();
        match (it.next(), it.next()) {
            (Some(k), Some(v)) if k == key => v.parse().ok(),
            _ => None,
        }
    })
}

/// The pids listed in a `cgroup.procs` file.
pub(crate) fn read_pids(path: &Path) -> Result<Vec<i32>, CgroupError> {
    let text = read(path)?;
    text.split_whitespace()
        .map(|tok| {
            tok.parse::<i32>()
                .map_err(|_| parse_err(path, format!("not a pid: {tok:?}")))
        })
        .collect()
}

/// `mkdir`, failing when the directory already exists.
pub(crate) fn mkdir_new(path: &Path) -> Result<(), CgroupError> {
    fs::create_dir(path).map_err(|e| io_err("mkdir", path, e))
}

/// `mkdir -p`.
pub(crate) fn mkdir_all(path: &Path) -> Result<(), CgroupError> {
    fs::create_dir_all(path).map_err(|e| io_err("mkdir", path, e))
}

/// Removes a cgroup directory. Processes that were just killed leave their cgroup a moment after
/// they die, so `EBUSY` is retried for a while; a directory that is already gone is fine.
pub(crate) fn rmdir_retry(path: &Path, patience: Duration) -> Result<(), CgroupError> {
    let start = Instant::now();
    loop {
        match fs::remove_dir(path) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) && start.elapsed() < patience => {
                thread::sleep(Duration::from_millis(10));
            }
            Err(e) => return Err(io_err("rmdir", path, e)),
        }
    }
}

/// Joins a cgroup path as printed in `/proc/self/cgroup` (absolute, `/`-rooted) onto a mount.
pub(crate) fn under(mount: &Path, cgroup_path: &Path) -> PathBuf {
    let rel = cgroup_path.strip_prefix("/").unwrap_or(cgroup_path);
    if rel.as_os_str().is_empty() {
        mount.to_path_buf()
    } else {
        mount.join(rel)
    }
}

pub(crate) fn is_permission(err: &CgroupError) -> bool {
    match err {
        CgroupError::Io { source, .. } => matches!(
            source.raw_os_error(),
            Some(libc::EACCES) | Some(libc::EPERM) | Some(libc::EROFS)
        ),
        _ => false,
    }
}
