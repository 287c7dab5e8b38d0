//! Finding and killing what is left of the job's process tree.
//!
//! The monitor is a child subreaper, so every orphan of the job (double-forked, `setsid`'d,
//! daemonised) is re-parented to it rather than to init: all of the job is always among the
//! monitor's descendants, and a `/proc` ppid walk finds it whatever process groups or sessions it
//! moved into.

use std::collections::HashMap;
use std::fs;

use crate::state::parse_stat_field;

/// Every live descendant of `root` (not `root` itself), from one scan of `/proc`.
pub fn descendants(root: i32) -> Vec<i32> {
    let mut children: HashMap<i32, Vec<i32>> = HashMap::new();
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
        else {
            continue;
        };
        // A process may vanish between listing and reading: skip it.
        let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        if let Some(ppid) = parse_stat_field(&stat, 4).and_then(|v| i32::try_from(v).ok()) {
            children.entry(ppid).or_default().push(pid);
        }
    }
    let mut found = Vec::new();
    let mut stack = vec![root];
    while let Some(p) = stack.pop() {
        if let Some(kids) = children.get(&p) {
            for &k in kids {
                found.push(k);
                stack.push(k);
            }
        }
    }
    found
}

/// SIGKILL the process group `pgid` and every descendant of this process. Returns how many
/// descendants were signalled. Callers repeat this (and reap) until no child remains, because a
/// process can fork between the scan and the kill.
pub fn kill_descendants(pgid: Option<i32>) -> usize {
    if let Some(pgid) = pgid.filter(|p| *p > 1) {
        // SAFETY: plain syscall; ESRCH (group already gone) is expected and harmless.
        unsafe { libc::kill(-pgid, libc::SIGKILL) };
    }
    let me = std::process::id() as i32;
    let pids = descendants(me);
    for &pid in &pids {
        // SAFETY: plain syscall. Every pid here is our descendant; an unreaped zombie child
        // cannot be reused, and a grandchild that exits and is reused in this instant would
        // have to be re-parented to us, which only our own descendants are.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
    pids.len()
}

/// Send `sig` to the job's process group (the graceful-stop signal).
pub fn signal_group(pgid: i32, sig: i32) {
    if pgid > 1 {
        // SAFETY: plain syscall.
        unsafe { libc::kill(-pgid, sig) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    #[test]
    fn finds_a_grandchild() {
        let mut child = Command::new("sh")
            .args(["-c", "sleep 30 & wait"])
            .spawn()
            .unwrap();
        let me = std::process::id() as i32;
        let child_pid = child.id() as i32;
        let mut found = Vec::new();
        for _ in 0..200 {
            found = descendants(me);
            if found.len() >= 2 {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert!(found.contains(&child_pid), "{found:?}");
        let grandchildren: Vec<_> = descendants(child_pid);
        assert_eq!(grandchildren.len(), 1, "{found:?}");
        for p in grandchildren {
            // SAFETY: a plain system call on a process this test started.
            unsafe { libc::kill(p, libc::SIGKILL) };
        }
        let status = child.wait().unwrap();
        assert!(status.success() || status.code().is_some());
    }
}
