//! Real cgroups on this host, as root: jobs spawned with `Command` + `pre_exec` join their
//! cgroup, limits hold, `kill_all` leaves nothing, `remove` leaves no directory. Each test skips
//! with a printed reason when not root or when the host has no usable cgroups.

mod common;

use std::fs;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use executor_plugin::sandbox::cgroup::{
    CgroupConfig, CgroupLimits, CgroupManager, HostView, JobCgroup, Mode,
};

/// A cgroup name unique to this test run.
fn name(test: &str) -> String {
    format!("t-{}-{test}", std::process::id())
}

/// Kills and removes the cgroup if a test fails half-way, so a failure leaves no runaway job.
struct Guard(Option<JobCgroup>);

impl Guard {
    fn take(mut self) -> JobCgroup {
        self.0.take().unwrap()
    }
}

impl std::ops::Deref for Guard {
    type Target = JobCgroup;
    fn deref(&self) -> &JobCgroup {
        self.0.as_ref().unwrap()
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(job) = self.0.take() {
            let _ = job.kill_all();
            let _ = job.remove();
        }
    }
}

fn create(m: &CgroupManager, test: &str, limits: CgroupLimits) -> Guard {
    Guard(Some(m.create(&name(test), &limits).unwrap()))
}

/// A `sleep 60` in `job`, once the cgroup lists it: (child, pid).
fn sleeper(job: &JobCgroup) -> (Child, i32) {
    let child = spawn(job, "exec sleep 60");
    let pid = child.id() as i32;
    wait_until("the job", Duration::from_secs(10), || {
        job.pids().unwrap().contains(&pid)
    });
    (child, pid)
}

fn spawn(job: &JobCgroup, script: &str) -> Child {
    let join = job.join_handle().unwrap();
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(script)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    // SAFETY: join_self only makes write(2) calls on descriptors opened before fork.
    unsafe {
        cmd.pre_exec(move || join.join_self());
    }
    cmd.spawn().unwrap()
}

fn wait_until(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        thread::sleep(Duration::from_millis(20));
    }
}

/// Kills, reaps the direct child, removes, and checks nothing is left.
fn finish(job: Guard, mut child: Child) {
    let job = job.take();
    job.kill_all().unwrap();
    assert_eq!(job.pids().unwrap(), Vec::<i32>::new());
    child.wait().unwrap();
    let dirs: Vec<_> = job.dirs().iter().map(|p| p.to_path_buf()).collect();
    job.remove().unwrap();
    for d in dirs {
        assert!(!d.exists(), "{} left behind", d.display());
    }
}

/// Dead or a zombie waiting for a reaper that is not ours.
fn gone(pid: i32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => {
            stat.rsplit(')')
                .next()
                .and_then(|rest| rest.split_whitespace().next())
                == Some("Z")
        }
    }
}

#[test]
fn job_joins_every_hierarchy_before_exec() {
    let Some(m) = common::cgroups_or_skip("join") else {
        return;
    };
    let job = create(&m, "join", CgroupLimits::default());
    let child = spawn(&job, "ls -l /proc/self/fd; exec sleep 60");
    let pid = child.id() as i32;
    wait_until("the job in its cgroup", Duration::from_secs(10), || {
        job.pids().unwrap().contains(&pid)
    });
    for dir in job.dirs() {
        let procs = fs::read_to_string(dir.join("cgroup.procs")).unwrap();
        assert!(
            procs.lines().any(|l| l == pid.to_string()),
            "{pid} not in {}: {procs:?}",
            dir.display()
        );
    }
    let own = fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    if m.mode() != Mode::V2 {
        assert!(
            own.lines()
                .any(|l| l.contains(":memory:") && l.ends_with(&format!("/{}", job.name()))),
            "{own}"
        );
    }
    assert!(
        own.lines()
            .any(|l| l.starts_with("0::") && l.ends_with(job.name())),
        "{own}"
    );
    // Not OOM-killed, stats readable while running.
    assert!(!job.oom_killed().unwrap());
    let stats = job.stats().unwrap();
    assert_eq!(stats.pids_current.map(|n| n >= 1), Some(true), "{stats:?}");
    finish(job, child);
}

#[test]
fn join_descriptors_do_not_leak_into_the_job() {
    let Some(m) = common::cgroups_or_skip("noleak") else {
        return;
    };
    let job = create(&m, "noleak", CgroupLimits::default());
    let child = spawn(&job, "ls -l /proc/self/fd");
    let out = child.wait_with_output().unwrap();
    let listing = String::from_utf8_lossy(&out.stdout);
    assert!(listing.contains("/proc/"), "ls ran: {listing}");
    assert!(!listing.contains("cgroup.procs"), "{listing}");
    job.take().remove().unwrap();
}

#[test]
fn memory_limit_oom_kills_and_is_reported() {
    let Some(m) = common::cgroups_or_skip("oom") else {
        return;
    };
    let limits = CgroupLimits {
        memory: Some(64 << 20),
        ..Default::default()
    };
    let job = create(&m, "oom", limits);
    // tail keeps its last lines in memory and /dev/zero has no newline: it grows until killed.
    let mut child = spawn(&job, "head -c 200M /dev/zero | tail >/dev/null");
    let status = child.wait().unwrap();
    assert!(!status.success(), "{status:?}");
    assert!(job.oom_killed().unwrap(), "oom_kill counter stayed at 0");
    let peak = job.stats().unwrap().memory_peak;
    if let Some(peak) = peak {
        assert!(peak <= 64 << 20, "peak {peak} above the limit");
    }
    finish(job, child);
}

#[test]
fn fork_bomb_is_contained_by_pids_max_and_killed_completely() {
    let Some(m) = common::cgroups_or_skip("bomb") else {
        return;
    };
    if Command::new("python3").arg("-V").output().is_err() {
        eprintln!("skipping fork bomb: no python3");
        return;
    }
    let limits = CgroupLimits {
        pids: Some(64),
        cpu: Some(0.5),
        memory: Some(256 << 20),
    };
    let job = create(&m, "bomb", limits);
    // Every process forks forever and keeps going when a fork fails, so they pile up at the cap.
    let child = spawn(
        &job,
        "exec python3 -c 'import os, time\nwhile True:\n try:\n  os.fork()\n except OSError:\n  time.sleep(0.01)'",
    );
    wait_until(
        "the bomb to reach pids.max",
        Duration::from_secs(30),
        || job.pids().unwrap().len() >= 48,
    );
    for _ in 0..10 {
        let n = job.pids().unwrap().len();
        assert!(n <= 64, "{n} processes under pids.max 64");
        thread::sleep(Duration::from_millis(100));
    }
    let stats = job.stats().unwrap();
    if let Some(current) = stats.pids_current {
        assert!(current <= 64, "pids.current {current}");
    }
    assert!(stats.fork_failures.unwrap_or(0) > 0, "{stats:?}");
    finish(job, child);
}

#[test]
fn cpu_half_core_is_throttled() {
    let Some(m) = common::cgroups_or_skip("cpu") else {
        return;
    };
    let limits = CgroupLimits {
        cpu: Some(0.5),
        ..Default::default()
    };
    let job = create(&m, "cpu", limits);
    let start = Instant::now();
    let child = spawn(&job, "while :; do :; done");
    thread::sleep(Duration::from_secs(3));
    let stats = job.stats().unwrap();
    let wall = start.elapsed();
    finish(job, child);

    let usage = stats.cpu_usage_usec.expect("cpu usage accounted") as f64 / 1e6;
    eprintln!(
        "cpu 0.5: {usage:.3}s used in {:.3}s wall, {stats:?}",
        wall.as_secs_f64()
    );
    let allowed = 0.5 * wall.as_secs_f64() * 1.1;
    assert!(
        usage <= allowed,
        "used {usage:.3}s of CPU in {:.3}s wall",
        wall.as_secs_f64()
    );
    assert!(usage > 0.0, "{stats:?}");
    assert!(stats.nr_throttled.unwrap_or(0) > 0, "{stats:?}");
    assert!(stats.throttled_usec.unwrap_or(0) > 0, "{stats:?}");
}

#[test]
fn kill_all_reaches_a_setsid_grandchild() {
    let Some(m) = common::cgroups_or_skip("setsid") else {
        return;
    };
    let job = create(&m, "setsid", CgroupLimits::default());
    let child = spawn(
        &job,
        "setsid sh -c 'trap \"\" TERM HUP; sleep 300' & sleep 300",
    );
    let escaped = || -> Vec<i32> {
        let main_sid = nix::unistd::getsid(Some(nix::unistd::Pid::from_raw(child.id() as i32)));
        job.pids()
            .unwrap()
            .into_iter()
            .filter(|&p| {
                nix::unistd::getsid(Some(nix::unistd::Pid::from_raw(p))).ok() != main_sid.ok()
            })
            .collect()
    };
    // Three processes exist before the grandchild has called setsid: wait for that too.
    wait_until(
        "a process to leave the job's session",
        Duration::from_secs(10),
        || job.pids().unwrap().len() >= 3 && !escaped().is_empty(),
    );
    let pids = job.pids().unwrap();
    finish(job, child);
    for pid in pids {
        wait_until("the grandchild to die", Duration::from_secs(5), || {
            gone(pid)
        });
    }
}

#[test]
fn exit_status_of_a_killed_job_is_sigkill() {
    let Some(m) = common::cgroups_or_skip("status") else {
        return;
    };
    let job = create(&m, "status", CgroupLimits::default());
    let (mut child, _) = sleeper(&job);
    job.kill_all().unwrap();
    let status = child.wait().unwrap();
    assert_eq!(status.signal(), Some(9));
    job.take().remove().unwrap();
}

#[test]
fn remove_refuses_while_processes_live() {
    let Some(m) = common::cgroups_or_skip("busy") else {
        return;
    };
    let job = create(&m, "busy", CgroupLimits::default());
    let dirs: Vec<_> = job.dirs().iter().map(|p| p.to_path_buf()).collect();
    let (mut child, _) = sleeper(&job);
    // Keep a handle on the directories to clean up after the expected failure.
    let err = job.take().remove().unwrap_err();
    assert!(err.to_string().contains("rmdir"), "{err}");
    child.kill().unwrap();
    child.wait().unwrap();
    for d in dirs.iter().rev() {
        let start = Instant::now();
        while d.exists() && fs::remove_dir(d).is_err() {
            assert!(start.elapsed() < Duration::from_secs(5), "{}", d.display());
            thread::sleep(Duration::from_millis(10));
        }
        assert!(!Path::new(d).exists());
    }
}

/// The v1 kill path for real: the same host seen without its v2 tree (a `/proc/self/cgroup`
/// without the `0::` line), so `kill_all` must freeze, kill and thaw.
#[test]
fn v1_freeze_kill_thaw_without_the_unified_tree() {
    let Some(real) = common::cgroups_or_skip("v1kill") else {
        return;
    };
    if real.mode() == Mode::V2 {
        eprintln!("skipping v1kill: pure v2 host");
        return;
    }
    let mut host = HostView::current().unwrap();
    host.proc_self_cgroup = host
        .proc_self_cgroup
        .lines()
        .filter(|l| !l.starts_with("0::"))
        .map(|l| format!("{l}\n"))
        .collect();
    let m = CgroupManager::detect_in(&host, &CgroupConfig::default()).unwrap();
    assert_eq!(m.mode(), Mode::V1);
    let job = create(&m, "v1kill", CgroupLimits::default());
    assert!(
        job.dirs().iter().any(|d| d.join("freezer.state").exists()),
        "no freezer hierarchy: {:?}",
        job.dirs()
    );
    let child = spawn(
        &job,
        "setsid sh -c 'while :; do sleep 1 & done' & while :; do sleep 1 & done",
    );
    wait_until("a busy tree", Duration::from_secs(10), || {
        job.pids().unwrap().len() >= 4
    });
    let pids = job.pids().unwrap();
    finish(job, child);
    for pid in pids {
        wait_until("every process to die", Duration::from_secs(5), || gone(pid));
    }
}

/// A job cgroup left behind by a process that died is found again, killed and removed.
#[test]
fn a_leftover_job_cgroup_is_reopened_and_cleaned() {
    let Some(m) = common::cgroups_or_skip("reopen") else {
        return;
    };
    let job = create(&m, "reopen", CgroupLimits::default());
    let (mut child, pid) = sleeper(&job);
    let dirs: Vec<_> = job.dirs().iter().map(|p| p.to_path_buf()).collect();
    // Forget the handle as a crashed monitor would.
    std::mem::forget(job.take());

    let again = m.open_existing(&name("reopen")).unwrap().unwrap();
    assert_eq!(
        again.dirs(),
        dirs.iter().map(|d| d.as_path()).collect::<Vec<_>>()
    );
    assert_eq!(again.pids().unwrap(), vec![pid]);
    again.kill_all().unwrap();
    child.wait().unwrap();
    again.remove().unwrap();
    assert!(dirs.iter().all(|d| !d.exists()));
    assert!(m.open_existing(&name("reopen")).unwrap().is_none());
}

/// Creating a job cgroup where a leftover of the same name still holds a process (a rerun of an
/// execution whose monitor died) kills that process first and starts from fresh directories.
#[test]
fn creating_over_a_leftover_kills_what_it_holds() {
    let Some(m) = common::cgroups_or_skip("replace") else {
        return;
    };
    let job = create(&m, "replace", CgroupLimits::default());
    let (mut child, _) = sleeper(&job);
    std::mem::forget(job.take());

    let fresh = Guard(Some(
        m.create_replacing(&name("replace"), &CgroupLimits::default())
            .unwrap(),
    ));
    let status = child.wait().unwrap();
    assert!(
        status.code().is_none(),
        "the leftover's process was not killed: {status}"
    );
    assert!(fresh.pids().unwrap().is_empty());
}

/// Directories made ahead (a spare monitor's) become a job's: renamed to its name, limits
/// written as usual, a leftover of the same name still found and killed; what no job takes is
/// removed on drop, by its owner's pid, or by a sweep.
#[test]
fn directories_made_ahead_become_the_jobs() {
    let Some(m) = common::cgroups_or_skip("ahead") else {
        return;
    };
    // An owner no process of this test is: the directories are only named for it.
    let owner = 4_000_000 + (std::process::id() % 100_000) as i32;
    let made = |owner: i32| -> Vec<std::path::PathBuf> {
        m.base_dirs()
            .iter()
            .map(|b| b.join(format!(".ahead-{owner}")))
            .filter(|d| d.is_dir())
            .collect()
    };
    let mut ahead = m.make_ahead(owner);
    let first = made(owner);
    if m.mode() == Mode::V2 {
        // v2 directories cannot be renamed: nothing is made ahead there.
        assert!(first.is_empty(), "{first:?}");
        return;
    }
    assert!(
        !first.is_empty(),
        "nothing made ahead in {:?}",
        m.base_dirs()
    );
    let limits = CgroupLimits {
        memory: Some(64 << 20),
        ..CgroupLimits::default()
    };
    let job = Guard(Some(
        m.create_replacing_with(&name("ahead"), &limits, Some(&mut ahead))
            .unwrap(),
    ));
    assert!(made(owner).is_empty(), "not taken: {:?}", made(owner));
    let memory = job
        .dirs()
        .into_iter()
        .find(|d| d.join("memory.limit_in_bytes").exists())
        .expect("a memory directory");
    assert_eq!(
        fs::read_to_string(memory.join("memory.limit_in_bytes"))
            .unwrap()
            .trim(),
        (64u64 << 20).to_string()
    );
    let (mut child, _) = sleeper(&job);
    drop(ahead);

    // Its monitor died: a rerun renaming fresh directories onto the name finds the leftover.
    std::mem::forget(job.take());
    let mut again = m.make_ahead(owner);
    let rerun = Guard(Some(
        m.create_replacing_with(&name("ahead"), &limits, Some(&mut again))
            .unwrap(),
    ));
    let status = child.wait().unwrap();
    assert!(
        status.code().is_none(),
        "the leftover's process lives: {status}"
    );
    assert!(rerun.pids().unwrap().is_empty());
    drop(again);
    assert!(made(owner).is_empty(), "left: {:?}", made(owner));

    // What no job took is removed by whoever outlives its maker.
    let kept = m.make_ahead(owner);
    assert!(!made(owner).is_empty());
    std::mem::forget(kept);
    m.remove_ahead(owner);
    assert!(made(owner).is_empty(), "left: {:?}", made(owner));
    std::mem::forget(m.make_ahead(owner));
    m.sweep_ahead();
    assert!(made(owner).is_empty(), "left: {:?}", made(owner));
}

/// A v1 devices cgroup denies every device but the allowed ones; one left by an earlier attempt
/// of the execution whose removal was cut short (its other directories gone) is replaced.
#[test]
fn devices_cgroup_allows_only_its_devices_and_replaces_a_leftover() {
    let Some(m) = common::cgroups_or_skip("devices") else {
        return;
    };
    if !m.has_devices() {
        eprintln!("skipping devices cgroup: no writable v1 devices hierarchy");
        return;
    }
    let allow = ["c 1:3 rwm".to_string()]; // /dev/null
    let mut job = m
        .create(&name("devices"), &CgroupLimits::default())
        .unwrap();
    m.restrict_devices(&mut job, &allow).unwrap();
    let child = spawn(
        &job,
        "head -c1 /dev/zero >/dev/null 2>&1 && echo zero-ok; echo x > /dev/null && echo null-ok",
    );
    let out = child.wait_with_output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "null-ok\n");

    // Cut short: every directory but the devices one removed.
    let dirs: Vec<_> = job.dirs().iter().map(|d| d.to_path_buf()).collect();
    for d in dirs
        .iter()
        .filter(|d| !d.to_string_lossy().contains("/devices/"))
    {
        fs::remove_dir(d).unwrap();
    }
    std::mem::forget(job);
    let mut again = m
        .create_replacing(&name("devices"), &CgroupLimits::default())
        .unwrap();
    let restricted = m.restrict_devices(&mut again, &allow);
    let _ = again.kill_all();
    let removed = again.remove();
    restricted.unwrap();
    removed.unwrap();
    assert!(dirs.iter().all(|d| !d.exists()), "left: {dirs:?}");
}

/// Unprivileged, cgroups are either really writable (delegated) or reported as unusable.
#[test]
fn unprivileged_detect_never_claims_what_it_cannot_create() {
    if nix::unistd::geteuid().is_root() {
        eprintln!("skipping unprivileged detect: running as root");
        return;
    }
    let m = CgroupManager::detect(&CgroupConfig::default()).unwrap();
    match m.mode() {
        Mode::None => assert!(m.unavailable_reason().is_some()),
        _ => {
            let job = m.create(&name("unpriv"), &CgroupLimits::default()).unwrap();
            job.remove().unwrap();
        }
    }
}
