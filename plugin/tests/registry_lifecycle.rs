//! The execution registry and monitor, driven with real processes: outcomes, results files,
//! cancel and deadline of process trees, the state machine, re-attach and retention.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use executor_plugin::registry::{Registry, RegistryConfig};
use executor_plugin::state::{self, ExecDir, Limits, MonitorRecord, MonitorSpec, ProcId};
use executor_schema::ErrorCode;

const EXE: &str = env!("CARGO_BIN_EXE_executor-native");

struct Env {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    work: PathBuf,
}

fn env() -> Env {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("state");
    let work = tmp.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    Env {
        _tmp: tmp,
        root,
        work,
    }
}

fn config(root: &Path) -> RegistryConfig {
    let mut c = RegistryConfig::new(root, EXE);
    c.kill_grace = Duration::from_secs(1);
    c
}

fn spec(e: &Env, id: &str, argv: &[&str]) -> MonitorSpec {
    let exec_dir = e.work.join(id);
    MonitorSpec {
        execution_id: id.into(),
        job_id: format!("job-{id}"),
        argv: argv.iter().map(|s| s.to_string()).collect(),
        env: vec![(
            "P".into(),
            e.work.join(format!("{id}.pids")).display().to_string(),
        )],
        working_dir: None,
        results_dir: exec_dir.join("results"),
        output_names: vec!["out".into()],
        log_path: exec_dir.join("logs/raw_container_logs"),
        limits: Limits::default(),
        timeout_secs: None,
        kill_grace_ms: 0,
        sandbox: Default::default(),
    }
}

fn sh(e: &Env, id: &str, script: &str) -> MonitorSpec {
    spec(e, id, &["sh", "-c", script])
}

async fn run(reg: &Registry, s: MonitorSpec) -> state::ResultRecord {
    let id = s.execution_id.clone();
    reg.start_spec(serde_json::Value::Null, s).await.unwrap();
    (*reg.wait_record(&id).await.unwrap()).clone()
}

fn read(p: &Path) -> Vec<u8> {
    std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// Pids (with start times) a job wrote to its `$P` file, once `n` are there.
fn recorded_pids(path: &Path, n: usize) -> Vec<ProcId> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let pids: Vec<i32> = text.lines().filter_map(|l| l.trim().parse().ok()).collect();
        if pids.len() >= n {
            return pids
                .into_iter()
                .filter_map(|p| ProcId::of(p).ok())
                .collect();
        }
        assert!(
            Instant::now() < deadline,
            "job never recorded {n} pids: {text:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn assert_all_gone(ids: &[ProcId]) {
    let alive: Vec<_> = ids.iter().filter(|p| p.is_alive()).collect();
    assert!(alive.is_empty(), "processes of the job survive: {alive:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exit_code_and_both_streams_with_files() {
    let e = env();
    let reg = Registry::open(config(&e.root)).await.unwrap();
    let s = sh(
        &e,
        "e123",
        "printf 'standard output'; printf 'standard error' >&2; exit 123",
    );
    let results = s.results_dir.clone();
    let r = run(&reg, s).await;
    assert_eq!(r.result.stdout, "standard output");
    assert_eq!(r.result.stderr, "standard error");
    assert!(!r.result.stdout_truncated && !r.result.stderr_truncated);
    assert_eq!(r.result.exit_code, 123);
    assert_eq!(r.result.error_msg, "");
    assert_eq!(read(&results.join("stdout")), b"standard output");
    assert_eq!(read(&results.join("stderr")), b"standard error");
    assert_eq!(read(&results.join("exitCode")), b"123");
    assert!(results.join("out").is_dir());

    let r = run(
        &reg,
        sh(&e, "e19", "echo -n apples; echo -n oranges >&2; exit 19"),
    )
    .await;
    assert_eq!(
        (r.result.stdout.as_str(), r.result.stderr.as_str()),
        ("apples", "oranges")
    );
    assert_eq!((r.result.exit_code, r.result.error_msg.as_str()), (19, ""));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_truncation_and_invalid_utf8() {
    let e = env();
    let reg = Registry::open(config(&e.root)).await.unwrap();
    let s = sh(&e, "big", "head -c 3000 /dev/zero | tr '\\0' a");
    let results = s.results_dir.clone();
    let r = run(&reg, s).await;
    assert_eq!(r.result.stdout, "a".repeat(2048));
    assert!(r.result.stdout_truncated);
    assert_eq!(read(&results.join("stdout")).len(), 3000);
    assert_eq!(r.stdout_bytes, 3000);

    let mut s = sh(&e, "hello", "printf 'hello world'");
    s.limits = Limits {
        stdout_file: 5,
        stdout_return: 11,
        stderr_file: 0,
        stderr_return: 0,
        ..Limits::default()
    };
    let results = s.results_dir.clone();
    let r = run(&reg, s).await;
    assert_eq!(read(&results.join("stdout")), b"hello");
    assert_eq!(r.result.stdout, "hello world");
    assert!(!r.result.stdout_truncated);

    let s = sh(&e, "utf8", "printf 'a\\377\\376b'; printf '\\000\\001' >&2");
    let results = s.results_dir.clone();
    let r = run(&reg, s).await;
    assert_eq!(read(&results.join("stdout")), b"a\xff\xfeb");
    assert_eq!(read(&results.join("stderr")), b"\x00\x01");
    assert_eq!(r.result.stdout, "a\u{fffd}\u{fffd}b");
    assert_eq!(r.result.stderr, "\u{0}\u{1}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signal_exit_and_program_not_found() {
    let e = env();
    let reg = Registry::open(config(&e.root)).await.unwrap();
    let r = run(&reg, sh(&e, "sig", "kill -TERM $$")).await;
    assert_eq!(r.result.exit_code, 128 + 15);
    assert_eq!(r.result.error_msg, "");

    let s = spec(&e, "nf", &["no-such-program-4711", "x"]);
    let results = s.results_dir.clone();
    let r = run(&reg, s).await;
    assert_eq!(r.result.exit_code, -1);
    assert!(
        r.result.error_msg.contains("no-such-program-4711"),
        "{}",
        r.result.error_msg
    );
    assert_eq!(read(&results.join("exitCode")), b"-1");

    let plain = e.work.join("not-executable");
    std::fs::write(&plain, "echo hi\n").unwrap();
    let plain = plain.display().to_string();
    let r = run(&reg, spec(&e, "noexec", &[&plain])).await;
    assert!(
        r.result.error_msg.contains(&plain),
        "{}",
        r.result.error_msg
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn environment_and_working_directory() {
    let e = env();
    let reg = Registry::open(config(&e.root)).await.unwrap();
    let mut s = sh(
        &e,
        "envwd",
        "echo \"$A $B $BACALHAU_EXECUTION_ID $BACALHAU_JOB_ID $(pwd)\"; ls /proc/self/fd | wc -l",
    );
    s.env.extend([
        ("A".to_string(), "request".to_string()),
        ("B".to_string(), "b".to_string()),
        ("A".to_string(), "engine".to_string()),
        ("BACALHAU_EXECUTION_ID".to_string(), "envwd".to_string()),
        ("BACALHAU_JOB_ID".to_string(), "job-envwd".to_string()),
    ]);
    s.working_dir = Some("/tmp".into());
    let r = run(&reg, s).await;
    let mut lines = r.result.stdout.lines();
    assert_eq!(lines.next(), Some("engine b envwd job-envwd /tmp"));
    // stdin, stdout, stderr and the directory ls reads: nothing of the monitor's leaked in.
    assert_eq!(lines.next(), Some("4"), "{}", r.result.stdout);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_kills_a_tree_that_ignores_sigterm() {
    let e = env();
    let reg = Registry::open(config(&e.root)).await.unwrap();
    let inner = e.work.join("inner.sh");
    std::fs::write(
        &inner,
        "trap '' TERM; echo $$ >> \"$P\"; sleep 1000 & echo $! >> \"$P\"; wait\n",
    )
    .unwrap();
    let script = format!(
        "trap '' TERM; echo $$ >> \"$P\"; sh {i} & setsid sh {i} & \
         (sleep 1000 & echo $! >> \"$P\"; wait) & wait",
        i = inner.display()
    );
    let s = sh(&e, "cancel", &script);
    reg.start_spec(serde_json::Value::Null, s).await.unwrap();
    let pids = recorded_pids(&e.work.join("cancel.pids"), 6);
    let t = Instant::now();
    reg.cancel("cancel").await.unwrap();
    let r = reg.wait_record("cancel").await.unwrap();
    let took = t.elapsed();
    println!("cancel: result after {took:?} (grace 1 s)");
    assert!(took < Duration::from_secs(2), "took {took:?}");
    assert_eq!(r.result.exit_code, -1);
    assert_eq!(r.result.error_msg, "execution already cancelled");
    assert_all_gone(&pids);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deadline_stops_the_job() {
    let e = env();
    let reg = Registry::open(config(&e.root)).await.unwrap();
    let mut s = sh(&e, "late", "echo $$ >> $P; sleep 30 & echo $! >> $P; wait");
    s.timeout_secs = Some(1.0);
    let t = Instant::now();
    reg.start_spec(serde_json::Value::Null, s).await.unwrap();
    let pids = recorded_pids(&e.work.join("late.pids"), 2);
    let r = reg.wait_record("late").await.unwrap();
    let took = t.elapsed();
    println!("deadline: result after {took:?} (timeout 1 s)");
    assert!(took < Duration::from_secs(2), "took {took:?}");
    assert_eq!(r.result.exit_code, -1);
    assert!(
        r.result.error_msg.contains("context deadline exceeded"),
        "{}",
        r.result.error_msg
    );
    assert_all_gone(&pids);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_background_child_holding_stdout_does_not_delay_the_result() {
    let e = env();
    let reg = Registry::open(config(&e.root)).await.unwrap();
    let t = Instant::now();
    let s = sh(
        &e,
        "bg",
        "sleep 60 & echo $! >> $P; setsid sleep 60 & echo $! >> $P; echo hi",
    );
    let r = run(&reg, s).await;
    let took = t.elapsed();
    assert_eq!(r.result.stdout, "hi\n");
    assert_eq!(r.result.exit_code, 0);
    // The sleeps would hold the pipe for 60 s.
    assert!(took < Duration::from_secs(30), "took {took:?}");
    let text = std::fs::read_to_string(e.work.join("bg.pids")).unwrap();
    for pid in text.lines().filter_map(|l| l.parse::<i32>().ok()) {
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists(),
            "{pid} survives"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_machine_codes() {
    let e = env();
    let reg = Registry::open(config(&e.root)).await.unwrap();
    let s = sh(&e, "sm", "sleep 1; echo done");
    reg.start_spec(serde_json::Value::Null, s.clone())
        .await
        .unwrap();
    let again = reg.start_spec(serde_json::Value::Null, s.clone()).await;
    assert_eq!(again.unwrap_err().code, ErrorCode::ExecutionAlreadyStarted);
    assert!(!reg.log_source("sm").unwrap().ended);

    // Many concurrent waiters all get the result.
    let waiters: Vec<_> = (0..8)
        .map(|_| {
            let reg = reg.clone();
            tokio::spawn(async move { reg.wait_record("sm").await })
        })
        .collect();
    for w in waiters {
        assert_eq!(w.await.unwrap().unwrap().result.stdout, "done\n");
    }
    let again = reg.start_spec(serde_json::Value::Null, s).await;
    assert_eq!(again.unwrap_err().code, ErrorCode::ExecutionAlreadyComplete);
    assert_eq!(reg.wait_record("sm").await.unwrap().result.stdout, "done\n");
    reg.cancel("sm").await.unwrap();
    assert!(reg.log_source("sm").unwrap().ended);
    assert_eq!(
        reg.wait_record("nope").await.unwrap_err().code,
        ErrorCode::ExecutionNotFound
    );
    assert_eq!(
        reg.cancel("nope").await.unwrap_err().code,
        ErrorCode::ExecutionNotFound
    );
    assert_eq!(
        reg.log_source("nope").unwrap_err().code,
        ErrorCode::ExecutionNotFound
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_registry_reattaches_to_running_monitors() {
    let e = env();
    let reg = Registry::open(config(&e.root)).await.unwrap();
    for i in 0..3 {
        let s = sh(&e, &format!("r{i}"), &format!("sleep 2; echo done {i}"));
        reg.start_spec(serde_json::Value::Null, s).await.unwrap();
    }
    drop(reg);
    let reg = Registry::open(config(&e.root)).await.unwrap();
    let again = reg
        .start_spec(serde_json::Value::Null, sh(&e, "r0", "true"))
        .await;
    assert_eq!(again.unwrap_err().code, ErrorCode::ExecutionAlreadyStarted);
    for i in 0..3 {
        let r = reg.wait_record(&format!("r{i}")).await.unwrap();
        assert_eq!(r.result.stdout, format!("done {i}\n"));
        assert_eq!(r.result.exit_code, 0);
    }
    // And a third registry serves them from disk.
    drop(reg);
    let reg = Registry::open(config(&e.root)).await.unwrap();
    let r = reg.wait_record("r1").await.unwrap();
    assert_eq!(r.result.stdout, "done 1\n");
    let again = reg
        .start_spec(serde_json::Value::Null, sh(&e, "r1", "true"))
        .await;
    assert_eq!(again.unwrap_err().code, ErrorCode::ExecutionAlreadyComplete);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_monitor_killed_outright_gives_a_failed_result_and_ends_the_log() {
    let e = env();
    let reg = Registry::open(config(&e.root)).await.unwrap();
    let s = sh(&e, "dead", "echo $$ >> $P; sleep 1000");
    let log = s.log_path.clone();
    reg.start_spec(serde_json::Value::Null, s).await.unwrap();
    let job = recorded_pids(&e.work.join("dead.pids"), 1);
    let mon: MonitorRecord = state::read_json(&ExecDir::new(&e.root, "dead").monitor()).unwrap();
    // SAFETY: a plain system call on the monitor this test started.
    unsafe { libc::kill(mon.monitor.pid, libc::SIGKILL) };
    let r = reg.wait_record("dead").await.unwrap();
    assert_eq!(r.result.exit_code, -1);
    assert!(
        r.result.error_msg.contains("monitor exited unexpectedly"),
        "{}",
        r.result.error_msg
    );
    assert!(read(&log).ends_with(&[4, 0, 0, 0, 0, 0, 0, 0]));
    // The orphaned job is killed too (its start time guards against pid reuse).
    let t = Instant::now();
    while job.iter().any(ProcId::is_alive) && t.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_all_gone(&job);
    // Durable: a new registry sees the same failure.
    drop(reg);
    let reg = Registry::open(config(&e.root)).await.unwrap();
    let again = reg.wait_record("dead").await.unwrap();
    assert_eq!(again.result, r.result);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_evicts_by_age_and_count() {
    let e = env();
    let mut c = config(&e.root);
    c.max_retained = 2;
    let reg = Registry::open(c).await.unwrap();
    for i in 0..3 {
        run(&reg, sh(&e, &format!("k{i}"), "true")).await;
        // Distinct finish times, so "oldest" is well defined.
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    evict_until_gone(&reg, "k0").await;
    assert!(!ExecDir::new(&e.root, "k0").dir.exists());
    assert!(reg.wait_record("k2").await.is_ok());

    let e = env();
    let mut c = config(&e.root);
    c.retention = Duration::ZERO;
    let reg = Registry::open(c).await.unwrap();
    run(&reg, sh(&e, "old", "true")).await;
    evict_until_gone(&reg, "old").await;
    // An evicted id is free again.
    run(&reg, sh(&e, "old", "true")).await;
}

/// An execution is evicted only once its monitor has exited (it cleans up after reporting):
/// evict until `id` is gone, within a bound.
async fn evict_until_gone(reg: &Registry, id: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        reg.evict().await;
        match reg.wait_record(id).await {
            Err(e) if e.code == ErrorCode::ExecutionNotFound => return,
            _ if std::time::Instant::now() > deadline => panic!("{id} was never evicted"),
            _ => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    }
}

fn vm_rss_kib(pid: i32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_gib_of_stdout_keeps_the_monitor_small() {
    let e = env();
    let reg: Arc<Registry> = Registry::open(config(&e.root)).await.unwrap();
    let s = spec(&e, "gib", &["head", "-c", "1073741824", "/dev/zero"]);
    let results = s.results_dir.clone();
    let t = Instant::now();
    reg.start_spec(serde_json::Value::Null, s).await.unwrap();
    let mon: MonitorRecord = state::read_json(&ExecDir::new(&e.root, "gib").monitor()).unwrap();
    let mut samples = Vec::new();
    let sampler = {
        let reg = reg.clone();
        tokio::spawn(async move { reg.wait_record("gib").await })
    };
    while !sampler.is_finished() {
        if let Some(kib) = vm_rss_kib(mon.monitor.pid) {
            samples.push(kib);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let r = sampler.await.unwrap().unwrap();
    let took = t.elapsed();
    let (min, max) = (
        samples.iter().min().copied().unwrap_or(0),
        samples.iter().max().copied().unwrap_or(0),
    );
    println!(
        "1 GiB: {took:?}, monitor VmRSS min {min} KiB max {max} KiB over {} samples",
        samples.len()
    );
    assert_eq!(
        std::fs::metadata(results.join("stdout")).unwrap().len(),
        1 << 30
    );
    assert_eq!(r.stdout_bytes, 1 << 30);
    assert_eq!(r.result.stdout.len(), 2048);
    assert!(r.result.stdout_truncated);
    assert!(samples.len() >= 2, "too few samples: {samples:?}");
    // Flat: what the job writes does not grow the monitor. Only rises count: after a second the
    // monitor gives back its start-up code pages, a drop that is not growth.
    let rise = samples
        .iter()
        .scan(u64::MAX, |low, &kib| {
            *low = (*low).min(kib);
            Some(kib - *low)
        })
        .max()
        .unwrap_or(0);
    assert!(
        rise < 5 * 1024,
        "monitor RSS grew by {rise} KiB (min {min}, max {max})"
    );
}
