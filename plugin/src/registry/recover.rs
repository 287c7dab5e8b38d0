//! After a restart, or when a monitor dies: rebuild the executions from their state
//! directories, re-attach to live monitors, and bury the dead (a failed result made durable, the
//! log ended, what is left of the job killed, its outputs handed back).

use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;
use std::sync::Arc;

use super::{lock, Exec, Phase};
use crate::monitor::pidfd;
use crate::sandbox::cgroup::{CgroupRecord, JobCgroup};
use crate::sandbox::uids::UidLease;
use crate::sandbox::user::UserPlan;
use crate::state::{self, ExecDir, MonitorRecord, MonitorSpec, RequestRecord, ResultRecord};
use executor_schema::RunCommandResult;

pub(super) fn failed_record(reason: &str) -> ResultRecord {
    ResultRecord {
        result: RunCommandResult::failed(reason),
        finished_at_ms: state::now_ms(),
        stdout_bytes: 0,
        stderr_bytes: 0,
        notes: Default::default(),
        usage: None,
    }
}

/// Kill and remove the job cgroup `monitor.json` names, if it is still there (its monitor died
/// before removing it).
pub(super) fn remove_leftover_cgroup(dir: &ExecDir) {
    let Ok(mon) = state::read_json::<MonitorRecord>(&dir.monitor()) else {
        return;
    };
    let Some(record) = &mon.cgroup else {
        return;
    };
    if record.dirs.iter().any(|d| d.path.exists()) {
        kill_and_remove(record);
    }
}

/// Kill whatever the recorded cgroup still holds and remove it (its monitor is gone).
fn kill_and_remove(record: &CgroupRecord) {
    let removed = JobCgroup::from_record(record)
        .and_then(|cg| cg.kill_all().map(|()| cg))
        .and_then(JobCgroup::remove);
    if let Err(e) = removed {
        tracing::warn!("cleaning up the cgroup of a dead monitor: {e}");
    }
}

/// The monitor is gone: its result, or - if it died without writing one - a failed result made
/// durable, the log ended, and whatever is left of the job killed, so nothing waits for ever.
pub(super) fn load_or_bury(dir: &ExecDir, log_path: &Path, status: Option<&str>) -> ResultRecord {
    match state::read_json::<ResultRecord>(&dir.result()) {
        Ok(r) => {
            // The monitor reported, then died before its cleanup.
            remove_leftover_cgroup(dir);
            return r;
        }
        Err(e) if !e.is_not_found() => {
            tracing::warn!("unreadable result: {e}");
        }
        Err(_) => {}
    }
    if let Ok(mon) = state::read_json::<MonitorRecord>(&dir.monitor()) {
        if let Some(job) = mon.job.filter(|j| j.is_alive()) {
            // The job leads its own process group; the monitor that would have killed it is gone.
            // Its descendants are collected first: one that left the group (`setsid`) is only
            // found through its parent, which the group kill is about to take away.
            let tree = crate::monitor::tree::descendants(job.pid);
            // SAFETY: plain syscalls; the start time check above guards against pid reuse of the
            // job, and the descendants were children of that verified process a moment ago.
            unsafe {
                libc::kill(-job.pid, libc::SIGKILL);
                for pid in tree {
                    libc::kill(pid, libc::SIGKILL);
                }
            }
        }
        // The cgroup holds the rest of the tree, whatever groups and sessions it moved into.
        if let Some(record) = &mon.cgroup {
            kill_and_remove(record);
        }
    }
    hand_outputs_back(dir);
    let reason = format!(
        "execution monitor exited unexpectedly{} without writing a result; see {}",
        status.map(|s| format!(" ({s})")).unwrap_or_default(),
        dir.monitor_log().display()
    );
    let record = failed_record(&reason);
    if let Err(e) = state::write_json_atomic(&dir.result(), &record) {
        tracing::warn!("recording the failed result: {e}");
    }
    if let Err(e) = crate::logstore::append_end_frame(log_path) {
        if e.kind() != std::io::ErrorKind::NotFound {
            tracing::warn!("ending the log of a dead monitor: {e}");
        }
    }
    record
}

/// The monitor that would have given a per-execution uid's outputs back to root died: do it
/// here, once nothing of the job runs, before the uid can go to another job.
fn hand_outputs_back(dir: &ExecDir) {
    let Ok(req) = state::read_json::<RequestRecord>(&dir.request()) else {
        return;
    };
    let spec = &req.monitor;
    if !spec
        .sandbox
        .run_as
        .as_ref()
        .is_some_and(UserPlan::is_per_execution)
    {
        return;
    }
    let Some(job_uid) = spec.sandbox.run_as.as_ref().map(|u| u.uid) else {
        return;
    };
    // Through the checked directory and a descriptor walk (see `outputs`); and not while
    // another execution holds the directory (the lock is the dead monitor's no more).
    let results = match crate::results::CheckedDir::open(&spec.results_dir) {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!("handing outputs back: {e}");
            return;
        }
    };
    if let Err(e) = results.lock() {
        tracing::warn!("handing outputs back: {e}");
        return;
    }
    let (uid, gid) = (nix::unistd::geteuid(), nix::unistd::getegid());
    for name in &spec.output_names {
        let direction = crate::outputs::Direction::ToHost { job_uid };
        if let Err(e) =
            crate::outputs::hand_over(results.as_fd(), name, uid.as_raw(), gid.as_raw(), direction)
        {
            tracing::warn!("handing {} back: {e}", spec.results_dir.display());
        }
    }
}

/// A monitor that holds the start lock but has not written `monitor.json` yet (a plugin died
/// while launching it): wait for the record and attach. `None` when nobody holds the lock, i.e.
/// nobody can still start the job.
pub(super) fn starting_monitor(dir: &ExecDir) -> Option<OwnedFd> {
    const PATIENCE: std::time::Duration = std::time::Duration::from_secs(10);
    let deadline = std::time::Instant::now() + PATIENCE;
    loop {
        let Ok(lock) = dir.open_start_lock() else {
            return None;
        };
        // SAFETY: flock on a descriptor we own; closing it drops our lock again.
        let free = unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0;
        drop(lock);
        if free {
            // Nobody holds it now; a monitor that got the record written in between is alive.
            return state::read_json::<MonitorRecord>(&dir.monitor())
                .ok()
                .and_then(|m| pidfd::open_verified(&m.monitor));
        }
        if let Some(fd) = state::read_json::<MonitorRecord>(&dir.monitor())
            .ok()
            .and_then(|m| pidfd::open_verified(&m.monitor))
        {
            return Some(fd);
        }
        if std::time::Instant::now() >= deadline {
            tracing::warn!(dir = %dir.dir.display(), "a monitor holds the start lock but wrote no record in {PATIENCE:?}");
            return None;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

/// A running execution found after a restart keeps its own uid taken (its monitor holds it
/// too; this covers the monitor dying before the plugin has killed what is left of the job).
fn hold_job_uid(exec: &Exec, spec: &MonitorSpec) {
    let Some(user) = &spec.sandbox.run_as else {
        return;
    };
    let Some(path) = &user.uid_lock else {
        return;
    };
    match UidLease::hold(user.uid, path) {
        Ok(lease) => *lock(&exec.uid_lease) = Some(lease),
        Err(e) => tracing::warn!(execution = %exec.id, "holding the job's uid {}: {e}", user.uid),
    }
}

/// Rebuild executions from the state root: finished ones with their result, running ones with a
/// pidfd on their (verified) monitor, dead ones buried.
pub(super) fn scan(root: &Path) -> Vec<(Exec, Option<OwnedFd>)> {
    let Ok(entries) = std::fs::read_dir(root) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for entry in entries.flatten() {
        let Some(id) = entry.file_name().to_str().map(str::to_string) else {
            continue;
        };
        if id.starts_with(".evicted.") {
            // An eviction interrupted by a crash.
            let _ = std::fs::remove_dir_all(entry.path());
            continue;
        }
        if id.starts_with('.') {
            continue;
        }
        if !entry.path().is_dir() {
            continue;
        }
        let dir = ExecDir::at(entry.path());
        let Ok(req) = state::read_json::<RequestRecord>(&dir.request()) else {
            // Not an execution we wrote (or a start that never got as far as its request).
            tracing::warn!(execution = %id, "ignoring a state directory without a readable request.json");
            continue;
        };
        let exec = Exec::new(
            &id,
            &req.monitor.job_id,
            dir.clone(),
            req.monitor.log_path.clone(),
            req.created_at_ms,
        );
        if dir.result().exists() {
            let r = load_or_bury(&dir, &exec.log_path, None);
            exec.phase.send_replace(Phase::Finished(Arc::new(r)));
            out.push((exec, None));
            continue;
        }
        let live = state::read_json::<MonitorRecord>(&dir.monitor())
            .ok()
            .and_then(|m| pidfd::open_verified(&m.monitor))
            .or_else(|| starting_monitor(&dir));
        match live {
            Some(fd) => {
                hold_job_uid(&exec, &req.monitor);
                out.push((exec, Some(fd)))
            }
            None => {
                let r = load_or_bury(&dir, &exec.log_path, None);
                exec.phase.send_replace(Phase::Finished(Arc::new(r)));
                out.push((exec, None));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::spec::{build_spec, SpecInput};
    use crate::sandbox::uids::{UidPool, UidRange};

    #[test]
    fn a_running_execution_found_at_restart_keeps_its_uid_taken() {
        let tmp = tempfile::tempdir().unwrap();
        let range = UidRange::new(100, 101).unwrap();
        let allocated = UidPool::new(range, tmp.path().join("locks"))
            .allocate_where(|_| true)
            .unwrap();
        // The record a plugin wrote for it, as a restarted plugin reads it back.
        let mut spec = build_spec(
            tmp.path(),
            SpecInput {
                execution_id: "e".into(),
                ..SpecInput::default()
            },
        )
        .unwrap();
        spec.sandbox.run_as = Some(UserPlan::per_execution(
            allocated.uid(),
            allocated.path().to_owned(),
        ));
        let record: MonitorSpec =
            serde_json::from_str(&serde_json::to_string(&spec).unwrap()).unwrap();
        let exec = Exec::new("e", "j", ExecDir::at(tmp.path()), "/log".into(), 0);
        hold_job_uid(&exec, &record);
        // The plugin that allocated it is gone; a new one must pass the id over...
        drop(allocated);
        let mut pool = UidPool::new(range, tmp.path().join("locks"));
        let next = pool.allocate_where(|_| true).unwrap();
        assert_eq!(next.uid(), 101);
        drop(next);
        // ...until the execution has ended.
        lock(&exec.uid_lease).take();
        assert!(pool.allocate_where(|_| true).is_ok_and(|l| l.uid() == 100));
    }
}
