//! Jobs under the real sandbox, through the registry and the real `executor-native` monitor:
//! memory and pids limits, CPU throttling seen in live stats, network isolation, whole-tree
//! cancel with cgroups, refusals. Tests needing root or usable cgroups skip with the reason.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use executor_plugin::registry::{build_spec, Registry, RegistryConfig, SpecInput};
use executor_plugin::sandbox::cgroup::{CgroupConfig, CgroupManager, Mode};
use executor_plugin::state::{self, ExecDir, MonitorRecord, MonitorSpec, ProcId, ResultRecord};
use executor_schema::{CgroupMode, ErrorCode, Network, PluginConfig, Resources};

const EXE: &str = env!("CARGO_BIN_EXE_executor-native");

struct Env {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    work: PathBuf,
    reg: Arc<Registry>,
}

async fn env() -> Env {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("state");
    let work = tmp.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    // As root, jobs run as an unprivileged user: it must reach `work` to leave its pid files.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&work, std::fs::Permissions::from_mode(0o1777)).unwrap();
    let mut c = RegistryConfig::new(&root, EXE);
    c.kill_grace = Duration::from_millis(500);
    let reg = Registry::open(c).await.unwrap();
    Env {
        _tmp: tmp,
        root,
        work,
        reg,
    }
}

/// A unique id per test process, so parallel runs never share a cgroup name.
fn id(name: &str) -> String {
    format!("sbx-{}-{name}", std::process::id())
}

fn input(e: &Env, name: &str, script: &str) -> SpecInput {
    let id = id(name);
    SpecInput {
        execution_id: id.clone(),
        job_id: format!("job-{id}"),
        entrypoint: vec!["sh".into(), "-c".into()],
        parameters: vec![script.into()],
        request_env: vec![
            (
                "P".into(),
                e.work.join(format!("{id}.pids")).display().to_string(),
            ),
            // Every process of the job inherits it: how the tests find survivors.
            ("SANDBOX_TEST_MARK".into(), id.clone()),
        ],
        execution_dir: Some(e.work.join(&id)),
        ..SpecInput::default()
    }
}

fn spec(e: &Env, i: SpecInput) -> MonitorSpec {
    build_spec(&e.root, i).unwrap()
}

async fn run(e: &Env, s: MonitorSpec) -> ResultRecord {
    let id = s.execution_id.clone();
    e.reg.start_spec(serde_json::Value::Null, s).await.unwrap();
    let r = tokio::time::timeout(Duration::from_secs(60), e.reg.wait_record(&id))
        .await
        .expect("no result within 60 s")
        .unwrap();
    (*r).clone()
}

fn monitor_record(e: &Env, id: &str) -> MonitorRecord {
    state::read_json(&ExecDir::new(&e.root, id).monitor()).unwrap()
}

fn cgroup_dirs(e: &Env, id: &str) -> Vec<PathBuf> {
    let rec = monitor_record(e, id)
        .cgroup
        .expect("monitor.json records the job's cgroup");
    assert!(!rec.dirs.is_empty());
    rec.dirs.into_iter().map(|d| d.path).collect()
}

/// The monitor removes the job's cgroup right after reporting the result: gone within moments
/// of the result, never left behind.
fn assert_cgroups_gone(dirs: &[PathBuf]) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    for d in dirs {
        while d.exists() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(!d.exists(), "cgroup {} left behind", d.display());
    }
}

/// Live processes (not zombies) whose environment carries the test's mark.
fn marked_processes(mark: &str) -> Vec<i32> {
    let needle = format!("SANDBOX_TEST_MARK={mark}\0");
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
        else {
            continue;
        };
        let Ok(env) = std::fs::read(format!("/proc/{pid}/environ")) else {
            continue;
        };
        let zombie = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|s| {
                s.rsplit(')')
                    .next()
                    .and_then(|r| r.split_whitespace().next())
                    .map(|st| st == "Z")
            })
            .unwrap_or(true);
        if !zombie && env.windows(needle.len()).any(|w| w == needle.as_bytes()) {
            found.push(pid);
        }
    }
    found
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn results_dir(e: &Env, name: &str) -> PathBuf {
    e.work.join(id(name)).join("results")
}

async fn wait_for(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_limit_exceeded_writes_files_and_removes_the_cgroup() {
    if common::cgroups_or_skip("oom").is_none() {
        return;
    }
    let e = env().await;
    let mut i = input(
        &e,
        "oom",
        // tail holds a newline-free stream whole: 200 MiB under a 64 MiB limit.
        "printf before; echo err >&2; head -c 209715200 /dev/zero | tail > /dev/null",
    );
    i.resources = Resources {
        memory: 64 << 20,
        ..Resources::default()
    };
    let r = run(&e, spec(&e, i)).await;
    assert_eq!(r.result.error_msg, "memory limit exceeded", "{r:?}");
    assert_eq!(r.result.exit_code, 137, "{r:?}");
    assert_eq!(r.result.stdout, "before");
    let results = results_dir(&e, "oom");
    assert_eq!(read(&results.join("stdout")), "before");
    // The shell may add its own "Killed" line.
    assert!(read(&results.join("stderr")).starts_with("err\n"));
    assert_eq!(read(&results.join("exitCode")), "137");
    assert_cgroups_gone(&cgroup_dirs(&e, &id("oom")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fork_bomb_is_contained_and_nothing_of_it_remains() {
    if common::cgroups_or_skip("forkbomb").is_none() {
        return;
    }
    let e = env().await;
    // The bomb forks until pids.max; the main shell then waits without forking.
    let mut i = input(&e, "forkbomb", "b() { b | b & }; b; exec sleep 2");
    i.default_pids_max = Some(64);
    // Keep the bomb from taking the machine's CPUs while it runs.
    i.resources.cpu = 0.5;
    let s = spec(&e, i);
    let exec_id = s.execution_id.clone();
    e.reg.start_spec(serde_json::Value::Null, s).await.unwrap();
    let dirs = cgroup_dirs(&e, &exec_id);
    let mut max_seen = 0;
    for _ in 0..10 {
        match e.reg.stats(&exec_id).await {
            Ok(st) => max_seen = max_seen.max(st.pids.expect("pids are accounted")),
            Err(err) => {
                assert_eq!(err.code, ErrorCode::ExecutionAlreadyComplete);
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(max_seen <= 64, "{max_seen} processes under pids.max 64");
    let r = tokio::time::timeout(Duration::from_secs(60), e.reg.wait_record(&exec_id))
        .await
        .expect("the bomb's result never came")
        .unwrap();
    assert!(r.result.exit_code >= 0 || !r.result.error_msg.is_empty());
    assert_eq!(marked_processes(&exec_id), Vec::<i32>::new());
    assert_cgroups_gone(&dirs);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_a_cpu_is_throttled_and_live_stats_show_it() {
    if common::cgroups_or_skip("cpu").is_none() {
        return;
    }
    let e = env().await;
    let mut i = input(&e, "cpu", "while :; do :; done");
    i.resources.cpu = 0.5;
    let s = spec(&e, i);
    let exec_id = s.execution_id.clone();
    let started = Instant::now();
    e.reg.start_spec(serde_json::Value::Null, s).await.unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let st = e.reg.stats(&exec_id).await.unwrap();
    let wall = started.elapsed().as_secs_f64();
    let cpu = st.cpu_seconds.expect("cpu usage is accounted");
    eprintln!("cpu {cpu:.3} s in {wall:.3} s wall; {st:?}");
    assert!(cpu > 0.0);
    assert!(
        cpu <= 0.5 * wall * 1.1,
        "{cpu} s of CPU in {wall} s under a 0.5 CPU limit"
    );
    assert!(
        st.throttled_periods.unwrap_or(0) > 0,
        "no throttling reported: {st:?}"
    );
    assert!(st.throttled_seconds.unwrap_or(0.0) > 0.0, "{st:?}");
    assert!(
        st.memory_current_bytes.is_some() && st.pids == Some(1),
        "{st:?}"
    );
    let dirs = cgroup_dirs(&e, &exec_id);
    e.reg.cancel(&exec_id).await.unwrap();
    let r = e.reg.wait_record(&exec_id).await.unwrap();
    assert_eq!(r.result.error_msg, "execution already cancelled");
    assert_cgroups_gone(&dirs);

    // After the end: the totals the monitor read before it removed the cgroup.
    let st = e.reg.stats(&exec_id).await.unwrap();
    assert!(st.cpu_seconds.unwrap_or(0.0) > 0.0, "{st:?}");
    assert_eq!(st.memory_current_bytes, None, "{st:?}");
    let err = e.reg.stats("no-such-execution").await.unwrap_err();
    assert_eq!(err.code, ErrorCode::ExecutionNotFound);
}

fn interfaces(text: &str) -> BTreeSet<String> {
    text.lines()
        .skip(2)
        .filter_map(|l| l.split(':').next())
        .map(|n| n.trim().to_owned())
        .filter(|n| !n.is_empty())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn network_none_and_default_see_only_loopback_and_host_sees_the_host() {
    if common::skip_unless_root("network test") {
        return;
    }
    let e = env().await;
    let script = "cat /proc/net/dev";
    // `Default` is never the host's network: a namespace of its own, as `None`.
    for net in [Network::None, Network::Default] {
        let name = format!("net-{}", net.as_str());
        let mut own = input(&e, &name, script);
        own.network = net;
        let r = run(&e, spec(&e, own)).await;
        assert_eq!(r.result.error_msg, "");
        let seen = interfaces(&read(&results_dir(&e, &name).join("stdout")));
        assert_eq!(seen, BTreeSet::from(["lo".to_owned()]), "{net:?}");
    }

    let host_ifaces = interfaces(&std::fs::read_to_string("/proc/net/dev").unwrap());
    let mut host = input(&e, "net-host", script);
    host.network = Network::Host;
    let r = run(&e, spec(&e, host)).await;
    assert_eq!(r.result.error_msg, "");
    let seen = interfaces(&read(&results_dir(&e, "net-host").join("stdout")));
    assert_eq!(seen, host_ifaces);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_of_a_setsid_tree_leaves_no_process() {
    if common::cgroups_or_skip("setsid").is_none() {
        return;
    }
    let e = env().await;
    let i = input(
        &e,
        "setsid",
        "setsid sh -c 'trap \"\" TERM; echo $$ >> \"$P\"; while :; do sleep 1; done' & \
         trap '' TERM; echo $$ >> \"$P\"; wait",
    );
    let pids_file = e.work.join(format!("{}.pids", id("setsid")));
    let s = spec(&e, i);
    let exec_id = s.execution_id.clone();
    e.reg.start_spec(serde_json::Value::Null, s).await.unwrap();
    let mut pids: Vec<ProcId> = Vec::new();
    wait_for("two recorded pids", Duration::from_secs(20), || {
        let text = std::fs::read_to_string(&pids_file).unwrap_or_default();
        pids = text
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .filter_map(|p| ProcId::of(p).ok())
            .collect();
        pids.len() >= 2
    })
    .await;
    let dirs = cgroup_dirs(&e, &exec_id);
    e.reg.cancel(&exec_id).await.unwrap();
    let r = tokio::time::timeout(Duration::from_secs(30), e.reg.wait_record(&exec_id))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(r.result.error_msg, "execution already cancelled");
    let alive: Vec<_> = pids.iter().filter(|p| p.is_alive()).collect();
    assert!(alive.is_empty(), "survivors: {alive:?}");
    assert_eq!(marked_processes(&exec_id), Vec::<i32>::new());
    assert_cgroups_gone(&dirs);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_monitors_cgroup_is_killed_and_removed_by_the_plugin() {
    if common::cgroups_or_skip("dead").is_none() {
        return;
    }
    let e = env().await;
    // A setsid'd child escapes the process-group kill: only the cgroup still holds it.
    let i = input(
        &e,
        "dead",
        "setsid sh -c 'echo $$ >> \"$P\"; exec sleep 60' & echo $$ >> \"$P\"; wait",
    );
    let pids_file = e.work.join(format!("{}.pids", id("dead")));
    let s = spec(&e, i);
    let exec_id = s.execution_id.clone();
    e.reg.start_spec(serde_json::Value::Null, s).await.unwrap();
    wait_for("two recorded pids", Duration::from_secs(20), || {
        std::fs::read_to_string(&pids_file)
            .unwrap_or_default()
            .lines()
            .count()
            >= 2
    })
    .await;
    let mon = monitor_record(&e, &exec_id);
    let dirs = cgroup_dirs(&e, &exec_id);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(mon.monitor.pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let r = tokio::time::timeout(Duration::from_secs(30), e.reg.wait_record(&exec_id))
        .await
        .unwrap()
        .unwrap();
    assert!(r.result.error_msg.contains("exited unexpectedly"), "{r:?}");
    wait_for("the escaped child to die", Duration::from_secs(10), || {
        marked_processes(&exec_id).is_empty()
    })
    .await;
    assert_cgroups_gone(&dirs);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_job_is_in_its_cgroup_with_rlimits_and_no_new_privs() {
    if common::cgroups_or_skip("rlimits").is_none() {
        return;
    }
    let e = env().await;
    let mut i = input(
        &e,
        "rlimits",
        "cat /proc/self/cgroup; echo nofile=$(ulimit -n) core=$(ulimit -c); grep NoNewPrivs /proc/self/status",
    );
    i.nofile = Some(1000);
    let r = run(&e, spec(&e, i)).await;
    assert_eq!((r.result.exit_code, r.result.error_msg.as_str()), (0, ""));
    let out = read(&results_dir(&e, "rlimits").join("stdout"));
    let exec_id = id("rlimits");
    let own = std::fs::read_to_string("/proc/self/cgroup").unwrap();
    // Every hierarchy the test process sees has the job in a cgroup named for the execution,
    // except the ones this sandbox does not use.
    let in_job = out
        .lines()
        .filter(|l| l.ends_with(&format!("/{exec_id}")))
        .count();
    assert!(in_job >= 3, "job not in its cgroup:\n{out}\n(own:\n{own})");
    assert!(out.contains("nofile=1000 core=0"), "{out}");
    assert!(out.contains("NoNewPrivs:\t1"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_are_unsupported_and_leave_nothing() {
    let e = env().await;
    // HTTP and Bridge are planned (a host that cannot make them is refused by the monitor).
    for net in [Network::Http, Network::Bridge] {
        let mut i = input(&e, "http", "true");
        i.network = net;
        let s = build_spec(&e.root, i).unwrap().sandbox;
        assert!(s.http.is_some() || s.bridge.is_some(), "{net}: {s:?}");
    }

    if common::skip_unless_root("the rest of refusals") {
        return;
    }
    // A base that cannot be prepared: the host is as good as one without cgroups.
    let mut i = input(&e, "nocg", "echo ran");
    i.cgroup_base = Some("relative/base".into());
    i.resources.memory = 64 << 20;
    let s = spec(&e, i.clone());
    let exec_id = s.execution_id.clone();
    let err = e
        .reg
        .start_spec(serde_json::Value::Null, s)
        .await
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::Unsupported, "{err:?}");
    assert!(
        err.message.contains("memory limit cannot be enforced"),
        "{}",
        err.message
    );
    assert!(!ExecDir::new(&e.root, &exec_id).dir.exists());

    // The same request without limits runs, with rlimits and no cgroup.
    i.resources = Resources::default();
    let r = run(&e, spec(&e, i)).await;
    assert_eq!((r.result.exit_code, r.result.stdout.as_str()), (0, "ran\n"));
    assert!(monitor_record(&e, &exec_id).cgroup.is_none());
    let st = e.reg.stats(&exec_id).await.unwrap_err();
    assert_eq!(st.code, ErrorCode::ExecutionAlreadyComplete);
}

#[test]
fn capabilities_tell_the_truth_here() {
    let caps = executor_plugin::capabilities::detect(&PluginConfig::default());
    eprintln!("{}", serde_json::to_string_pretty(&caps).unwrap());
    assert_eq!(
        caps.filesystem_isolation,
        executor_plugin::sandbox::mounts::supported()
    );
    assert_eq!(caps.run_as_user.is_some(), nix::unistd::geteuid().is_root());
    assert!(!caps.limits.disk);
    assert!(!caps.notes.is_empty());
    let root = nix::unistd::geteuid().is_root();
    assert_eq!(caps.network_isolation, root);
    let m = CgroupManager::detect(&CgroupConfig::default()).unwrap();
    let want = match m.mode() {
        Mode::V2 => CgroupMode::V2,
        Mode::V1 => CgroupMode::V1,
        Mode::Hybrid => CgroupMode::Hybrid,
        Mode::None => CgroupMode::None,
    };
    assert_eq!(caps.cgroup_mode, want);
    let e = m.enforces();
    assert_eq!(
        (caps.limits.cpu, caps.limits.memory, caps.limits.pids),
        (e.cpu, e.memory, e.pids)
    );
}

/// `defaultMemory` (default 1 GiB) reaches the sandbox only for a request without its own
/// `Memory`; 0 turns it off.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_default_memory_cap_applies_only_without_a_requested_one() {
    let e = env().await;
    let with = |memory: u64, default: Option<u64>| {
        let mut i = input(&e, "mem-default", "true");
        i.resources.memory = memory;
        i.default_memory = default;
        spec(&e, i).sandbox
    };
    let s = with(0, None);
    assert_eq!(
        (s.memory_bytes, s.default_memory_bytes),
        (None, Some(1 << 30))
    );
    let s = with(0, Some(64 << 20));
    assert_eq!(s.default_memory_bytes, Some(64 << 20));
    let s = with(256 << 20, Some(64 << 20));
    assert_eq!(
        (s.memory_bytes, s.default_memory_bytes),
        (Some(256 << 20), None)
    );
    assert_eq!(with(0, Some(0)).default_memory_bytes, None);
}
