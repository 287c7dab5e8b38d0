//! One job's cgroup: the directories it has in each hierarchy, how the job joins them, its
//! stats, the kill of everything in it, its removal, and the record another process reads it
//! back from.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

use super::{
    fsio, v1, v2, validate_name, CgroupError, CgroupStats, Mode, Reading, KILL_PATIENCE,
    RMDIR_PATIENCE,
};

#[derive(Debug, Clone)]
pub(super) enum DirKind {
    /// A v2 leaf (pure v2, or the tracking tree of a hybrid host).
    V2,
    /// A v1 leaf in the hierarchy carrying these controllers.
    V1(Vec<String>),
}

#[derive(Debug, Clone)]
pub(super) struct LeafDir {
    pub(super) dir: PathBuf,
    pub(super) kind: DirKind,
}

/// A job cgroup as written down in the execution's state, so another process (the plugin) can
/// read its stats or kill and remove it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CgroupRecord {
    pub name: String,
    pub mode: String,
    pub dirs: Vec<RecordedDir>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RecordedDir {
    pub path: PathBuf,
    /// The v1 controllers of this hierarchy; `None` for a v2 directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub v1_controllers: Option<Vec<String>>,
}

/// One execution's cgroup (a directory in each hierarchy). Not removed on drop: the owner kills
/// and removes it explicitly, after reading [`oom_killed`](Self::oom_killed).
#[derive(Debug)]
pub struct JobCgroup {
    pub(super) name: String,
    pub(super) mode: Mode,
    pub(super) dirs: Vec<LeafDir>,
}

/// Open `cgroup.procs` descriptors of a job cgroup, to join it between `fork` and `exec`.
#[derive(Debug)]
pub struct JoinFds {
    fds: Vec<OwnedFd>,
}

impl JoinFds {
    /// Moves the calling process into the job cgroup in every hierarchy. Async-signal-safe: one
    /// `write(2)` of "0" per descriptor, no allocation; meant for `CommandExt::pre_exec`.
    pub fn join_self(&self) -> io::Result<()> {
        for fd in &self.fds {
            // SAFETY: the descriptor is open for the lifetime of `self`; the buffer is static.
            let n = unsafe { libc::write(fd.as_raw_fd(), b"0".as_ptr().cast(), 1) };
            if n < 0 {
                return Err(io::Error::last_os_error());
            }
        }
        Ok(())
    }
}

impl JobCgroup {
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn record(&self) -> CgroupRecord {
        CgroupRecord {
            name: self.name.clone(),
            mode: self.mode.as_str().to_owned(),
            dirs: self
                .dirs
                .iter()
                .map(|d| RecordedDir {
                    path: d.dir.clone(),
                    v1_controllers: match &d.kind {
                        DirKind::V2 => None,
                        DirKind::V1(c) => Some(c.clone()),
                    },
                })
                .collect(),
        }
    }

    /// The cgroup a record names. Only directories that are absolute, end in the job's name and
    /// still exist are taken: a record is never a way to reach some other cgroup.
    pub fn from_record(record: &CgroupRecord) -> Result<JobCgroup, CgroupError> {
        validate_name(&record.name)?;
        let mode = Mode::parse(&record.mode).ok_or_else(|| CgroupError::Config {
            detail: format!("unknown cgroup mode {:?} in a job record", record.mode),
        })?;
        let mut dirs = Vec::new();
        for d in &record.dirs {
            let plain = d.path.is_absolute()
                && d.path
                    .file_name()
                    .is_some_and(|n| n == record.name.as_str())
                && d.path.components().all(|c| {
                    matches!(
                        c,
                        std::path::Component::RootDir | std::path::Component::Normal(_)
                    )
                });
            if !plain {
                return Err(CgroupError::Config {
                    detail: format!(
                        "job record names {} for cgroup {}",
                        d.path.display(),
                        record.name
                    ),
                });
            }
            if d.path.is_dir() {
                dirs.push(LeafDir {
                    dir: d.path.clone(),
                    kind: match &d.v1_controllers {
                        None => DirKind::V2,
                        Some(c) => DirKind::V1(c.clone()),
                    },
                });
            }
        }
        Ok(JobCgroup {
            name: record.name.clone(),
            mode,
            dirs,
        })
    }

    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// The job's directories, one per hierarchy.
    pub fn dirs(&self) -> Vec<&Path> {
        self.dirs.iter().map(|d| d.dir.as_path()).collect()
    }

    fn v2_dir(&self) -> Option<&Path> {
        self.dirs
            .iter()
            .find(|d| matches!(d.kind, DirKind::V2))
            .map(|d| d.dir.as_path())
    }

    pub(super) fn v1_dir(&self, controller: &str) -> Option<&Path> {
        self.dirs
            .iter()
            .find(|d| matches!(&d.kind, DirKind::V1(c) if c.iter().any(|c| c == controller)))
            .map(|d| d.dir.as_path())
    }

    /// Opens the `cgroup.procs` files to write from the child. Call before spawning; the
    /// descriptors are close-on-exec, so the job never inherits them.
    pub fn join_handle(&self) -> Result<JoinFds, CgroupError> {
        let fds = self
            .dirs
            .iter()
            .map(|d| {
                let path = d.dir.join("cgroup.procs");
                OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .map(|f: File| OwnedFd::from(f))
                    .map_err(|e| fsio::io_err("open", &path, e))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(JoinFds { fds })
    }

    /// Every process in the job cgroup, in any hierarchy.
    pub fn pids(&self) -> Result<Vec<i32>, CgroupError> {
        let mut all = Vec::new();
        for d in &self.dirs {
            all.extend(fsio::read_pids(&d.dir.join("cgroup.procs"))?);
        }
        all.sort_unstable();
        all.dedup();
        Ok(all)
    }

    /// Kills every process of the job and returns once none is left. `cgroup.kill` where the
    /// kernel has it (v2 and the v2 tree of a hybrid host, 5.14+); otherwise freeze, SIGKILL
    /// each process, thaw, until the cgroup is empty.
    pub fn kill_all(&self) -> Result<(), CgroupError> {
        let start = Instant::now();
        if let Some(dir) = self.v2_dir() {
            let kill_file = dir.join("cgroup.kill");
            if kill_file.exists() {
                fsio::write_value(&kill_file, "1")?;
                while start.elapsed() < Duration::from_secs(2) {
                    if self.pids()?.is_empty() {
                        return Ok(());
                    }
                    thread::sleep(Duration::from_millis(5));
                }
            }
        }
        loop {
            let pids = self.pids()?;
            if pids.is_empty() {
                return Ok(());
            }
            if start.elapsed() > KILL_PATIENCE {
                return Err(CgroupError::KillIncomplete {
                    name: self.name.clone(),
                    pids,
                });
            }
            self.set_frozen(true)?;
            // Frozen, the cgroup can't fork, so this list is complete.
            let pids = self.pids();
            if let Ok(pids) = &pids {
                for &pid in pids {
                    // A kill that fails shows up as a survivor on the next pass, and as
                    // `KillIncomplete` once patience runs out.
                    let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
                }
            }
            // Thaw even when listing failed, or the job would stay frozen forever.
            self.set_frozen(false)?;
            pids?;
            thread::sleep(Duration::from_millis(5));
        }
    }

    fn set_frozen(&self, frozen: bool) -> Result<(), CgroupError> {
        if let Some(dir) = self.v1_dir("freezer") {
            return v1::set_frozen(dir, frozen);
        }
        if let Some(dir) = self.v2_dir() {
            let file = dir.join("cgroup.freeze");
            if file.exists() {
                return fsio::write_value(&file, if frozen { "1" } else { "0" });
            }
        }
        Ok(())
    }

    /// Whether the kernel OOM-killed a process of the job. Read it before [`remove`](Self::remove).
    /// Without a memory controller nothing can be OOM-killed by a job limit: `false`.
    pub fn oom_killed(&self) -> Result<bool, CgroupError> {
        if let Some(dir) = self.v1_dir("memory") {
            return Ok(v1::oom_kills(dir)? > 0);
        }
        match self.v2_dir() {
            Some(dir) if self.mode == Mode::V2 && dir.join("memory.events").exists() => {
                Ok(v2::oom_kills(dir)? > 0)
            }
            _ => Ok(false),
        }
    }

    pub fn stats(&self) -> Result<CgroupStats, CgroupError> {
        self.read_stats(Reading::All)
    }

    /// What a finished job's totals need (peak memory, CPU time and throttling, processes
    /// left), read once everything of it has exited: none of the figures that only mean
    /// something while it runs. Each file less is one read less between the job's exit and
    /// its result.
    pub fn final_stats(&self) -> Result<CgroupStats, CgroupError> {
        self.read_stats(Reading::Totals)
    }

    fn read_stats(&self, reading: Reading) -> Result<CgroupStats, CgroupError> {
        let mut stats = CgroupStats::default();
        v1::stats(
            |c| self.v1_dir(c).map(Path::to_path_buf),
            &mut stats,
            reading,
        )?;
        if let Some(dir) = self.v2_dir() {
            v2::stats(dir, &mut stats, reading)?;
        }
        Ok(stats)
    }

    /// Removes the job's directories; they must hold no live process (see
    /// [`kill_all`](Self::kill_all)).
    pub fn remove(self) -> Result<(), CgroupError> {
        let mut first_err = None;
        for d in self.dirs.iter().rev() {
            if let Err(e) = fsio::rmdir_retry(&d.dir, RMDIR_PATIENCE) {
                first_err.get_or_insert(e);
            }
        }
        match first_err {
            None => Ok(()),
            Some(e) => Err(e),
        }
    }
}
