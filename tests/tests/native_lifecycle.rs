//! Issue 3's acceptance: the native engine's lifecycle driven over the real plugin's stdio.

use std::path::Path;
use std::time::{Duration, Instant};

use executor_schema::LogEvent;
use executor_tests::harness::{alive, pids_in, rss_kib};
use executor_tests::RawPlugin;
use serde_json::{json, Value};

struct Env {
    state: tempfile::TempDir,
    work: tempfile::TempDir,
    plugin: RawPlugin,
    next_id: u64,
}

impl Env {
    fn new() -> Env {
        let state = tempfile::tempdir().unwrap();
        let mut plugin = RawPlugin::spawn();
        plugin.initialize(state.path());
        Env {
            state,
            work: tempfile::tempdir().unwrap(),
            plugin,
            next_id: 100,
        }
    }

    fn id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    fn results(&self, exec: &str) -> std::path::PathBuf {
        self.work.path().join(exec)
    }

    fn request(&self, exec: &str, script: &str, extra: Value) -> Value {
        std::fs::create_dir_all(self.results(exec)).unwrap();
        let mut req = json!({
            "JobID": "job-1",
            "ExecutionID": exec,
            "ResultsDir": self.results(exec),
            "EngineParams": {"Type": "native", "Params": {"Entrypoint": ["sh", "-c", script]}},
        });
        for (k, v) in extra.as_object().unwrap() {
            req[k] = v.clone();
        }
        req
    }

    fn run(&mut self, exec: &str, script: &str, extra: Value) -> Value {
        let req = self.request(exec, script, extra);
        let id = self.id();
        let msg = self.plugin.call(id, "executor_run", json!([req]));
        msg.get("result")
            .cloned()
            .unwrap_or_else(|| panic!("run failed: {msg}"))
    }

    fn start(&mut self, exec: &str, script: &str, extra: Value) {
        let req = self.request(exec, script, extra);
        let id = self.id();
        let msg = self.plugin.call(id, "executor_start", json!([req]));
        assert_eq!(msg["result"], Value::Null, "start: {msg}");
    }

    fn wait(&mut self, exec: &str) -> Value {
        let id = self.id();
        let msg = self.plugin.call(id, "executor_wait", json!([exec]));
        msg.get("result")
            .cloned()
            .unwrap_or_else(|| panic!("wait failed: {msg}"))
    }

    /// An output the job can leave its pids in, and the file it has them in. Its `Path` is the
    /// host path of `results/pids` itself, so it is the same with or without filesystem
    /// isolation (a jailed job has a private `/tmp` and would hide files written elsewhere).
    fn pids_output(&self, exec: &str) -> (Value, std::path::PathBuf) {
        let dir = self.results(exec).join("pids");
        (json!([{"Name": "pids", "Path": dir}]), dir.join("pids"))
    }

    fn file(&self, exec: &str, name: &str) -> Vec<u8> {
        std::fs::read(self.results(exec).join(name)).unwrap()
    }
}

fn limits(file: u64, ret: u64) -> Value {
    json!({"OutputLimits": {
        "MaxStdoutFileLength": file, "MaxStdoutReturnLength": ret,
        "MaxStderrFileLength": file, "MaxStderrReturnLength": ret,
    }})
}

#[test]
fn bacalhau_result_cases() {
    let mut env = Env::new();
    // reference §7.1: "hello world" under four limit pairs.
    for (i, (file, ret, want_file, want_summary, truncated)) in [
        (0, 0, "", "", true),
        (5, 11, "hello", "hello world", false),
        (11, 5, "hello world", "hello", true),
        (100, 100, "hello world", "hello world", false),
    ]
    .into_iter()
    .enumerate()
    {
        let exec = format!("limits-{i}");
        let r = env.run(&exec, "printf 'hello world'", limits(file, ret));
        assert_eq!(env.file(&exec, "stdout"), want_file.as_bytes(), "{exec}");
        assert_eq!(r["Stdout"], want_summary, "{exec}");
        assert_eq!(r["StdoutTruncated"], truncated, "{exec}");
        assert_eq!(r["ExitCode"], 0);
    }

    let r = env.run(
        "e123",
        "printf 'standard output'; printf 'standard error' >&2; exit 123",
        json!({}),
    );
    assert_eq!(
        (&r["Stdout"], &r["stderr"], &r["ExitCode"], &r["ErrorMsg"]),
        (
            &json!("standard output"),
            &json!("standard error"),
            &json!(123),
            &json!("")
        )
    );
    assert_eq!(env.file("e123", "stdout"), b"standard output");
    assert_eq!(env.file("e123", "stderr"), b"standard error");
    assert_eq!(env.file("e123", "exitCode"), b"123");

    let r = env.run(
        "e19",
        "printf apples; printf oranges >&2; exit 19",
        json!({}),
    );
    assert_eq!(
        (&r["Stdout"], &r["stderr"], &r["ExitCode"]),
        (&json!("apples"), &json!("oranges"), &json!(19))
    );
    assert_eq!(r["ErrorMsg"], "", "a non-zero exit is not an error");

    let r = env.run("big", "head -c 3000 /dev/zero | tr '\\0' x", json!({}));
    assert_eq!(r["Stdout"].as_str().unwrap().len(), 2048);
    assert_eq!(r["StdoutTruncated"], true);
    assert_eq!(env.file("big", "stdout").len(), 3000);

    let r = env.run(
        "utf8",
        "printf 'a\\377\\376b'; printf '\\300' >&2",
        json!({}),
    );
    assert_eq!(env.file("utf8", "stdout"), b"a\xff\xfeb");
    assert_eq!(env.file("utf8", "stderr"), b"\xc0");
    assert_eq!(r["Stdout"], "a\u{fffd}\u{fffd}b");

    let r = env.run("sig", "kill -9 $$", json!({}));
    assert_eq!(r["ExitCode"], 128 + 9);

    let r = env.run("nope", "exit 0", json!({"EngineParams": {"Type": "native", "Params": {"Entrypoint": ["no-such-program-xyz"]}}}));
    assert_eq!(r["ExitCode"], -1);
    assert!(
        r["ErrorMsg"]
            .as_str()
            .unwrap()
            .contains("no-such-program-xyz"),
        "{r}"
    );
}

#[test]
fn state_machine_errors_over_the_wire() {
    let mut env = Env::new();
    env.start("sm", "sleep 30", json!({}));
    let req = env.request("sm", "true", json!({}));
    let msg = env.plugin.call(1, "executor_start", json!([req]));
    assert_eq!(msg["error"]["code"], -32001, "{msg}");
    assert_eq!(msg["error"]["message"], "execution already started");
    assert_eq!(msg["error"]["data"]["executionId"], "sm");
    let msg = env.plugin.call(2, "executor_cancel", json!(["sm"]));
    assert_eq!(msg["result"], Value::Null);
    let r = env.wait("sm");
    assert_eq!(
        (&r["ExitCode"], &r["ErrorMsg"]),
        (&json!(-1), &json!("execution already cancelled"))
    );
    let msg = env.plugin.call(3, "executor_start", json!([req]));
    assert_eq!(msg["error"]["code"], -32002, "{msg}");
    let msg = env.plugin.call(4, "executor_cancel", json!(["sm"]));
    assert_eq!(
        msg["result"],
        Value::Null,
        "cancel of a finished execution is null: {msg}"
    );
    for (i, method) in ["executor_wait", "executor_cancel"].into_iter().enumerate() {
        let msg = env.plugin.call(10 + i as u64, method, json!(["unknown"]));
        assert_eq!(msg["error"]["code"], -32003, "{method}: {msg}");
        assert_eq!(msg["error"]["message"], "execution not found");
    }
    let msg = env.plugin.call(
        20,
        "executor_subscribeLogs",
        json!([{"ExecutionID": "unknown"}]),
    );
    assert_eq!(msg["error"]["code"], -32003, "{msg}");
    // Wait on a finished id, again and again.
    assert_eq!(env.wait("sm"), r);
    let bad = json!({"ExecutionID": "../x", "ResultsDir": "rel", "EngineParams": {"Type": "native", "Params": {}}});
    let msg = env.plugin.call(21, "executor_start", json!([bad]));
    assert_eq!(msg["error"]["code"], -32602, "{msg}");
    let problems = msg["error"]["data"]["problems"].as_array().unwrap();
    assert!(problems.len() >= 3, "every problem is reported: {msg}");
}

#[test]
fn cancel_kills_a_tree_that_ignores_sigterm() {
    let mut env = Env::new();
    let (outputs, pids) = env.pids_output("tree");
    let script = format!(
        "trap '' TERM; echo $$ >> {p}; \
         sh -c 'trap \"\" TERM; echo $$ >> {p}; sleep 1000 & echo $! >> {p}; wait' & \
         setsid sh -c 'trap \"\" TERM; echo $$ >> {p}; sleep 1000 & echo $! >> {p}; wait' & \
         wait",
        p = pids.display()
    );
    env.start("tree", &script, json!({ "Outputs": outputs }));
    let deadline = Instant::now() + Duration::from_secs(10);
    while pids_in(&pids).len() < 5 {
        assert!(
            Instant::now() < deadline,
            "tree did not start: {:?}",
            pids_in(&pids)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let t = Instant::now();
    env.plugin.call(1, "executor_cancel", json!(["tree"]));
    let r = env.wait("tree");
    let took = t.elapsed();
    assert_eq!(
        (&r["ExitCode"], &r["ErrorMsg"]),
        (&json!(-1), &json!("execution already cancelled"))
    );
    // Default grace is 2 s.
    assert!(took < Duration::from_secs(3), "result after {took:?}");
    let left: Vec<i32> = pids_in(&pids).into_iter().filter(|p| alive(*p)).collect();
    assert!(left.is_empty(), "processes of the job survived: {left:?}");
}

#[test]
fn deadline_ends_a_job_with_context_deadline_exceeded() {
    let mut env = Env::new();
    let (outputs, pids) = env.pids_output("slow");
    let t = Instant::now();
    let r = env.run(
        "slow",
        &format!("echo $$ > {}; sleep 30", pids.display()),
        json!({"ExecutionTimeout": 1, "Outputs": outputs}),
    );
    let took = t.elapsed();
    assert!(
        took < Duration::from_secs(2) + Duration::from_millis(500),
        "took {took:?}"
    );
    assert_eq!(r["ExitCode"], -1);
    assert!(
        r["ErrorMsg"]
            .as_str()
            .unwrap()
            .contains("context deadline exceeded"),
        "{r}"
    );
    let written = pids_in(&pids);
    assert_eq!(written.len(), 1, "the job wrote its pid");
    assert!(written.iter().all(|p| !alive(*p)));
}

fn monitor_pid(state: &Path, exec: &str) -> Option<u32> {
    let rec: Value = serde_json::from_slice(
        &std::fs::read(state.join("executions").join(exec).join("monitor.json")).ok()?,
    )
    .ok()?;
    rec["monitor"]["pid"].as_u64().map(|p| p as u32)
}

#[test]
fn one_gib_of_output_keeps_plugin_and_monitor_memory_flat() {
    let mut env = Env::new();
    env.start("gib", "head -c 1073741824 /dev/zero", json!({}));
    let plugin_pid = env.plugin.child.id();
    let (mut plugin_rss, mut monitor_rss) = (Vec::new(), Vec::new());
    let started = Instant::now();
    let stdout = env.results("gib").join("stdout");
    // Sample while the job runs (the stdout file grows to 1 GiB).
    while std::fs::metadata(&stdout).map(|m| m.len()).unwrap_or(0) < (1 << 30)
        && started.elapsed() < Duration::from_secs(120)
    {
        plugin_rss.extend(rss_kib(plugin_pid));
        if let Some(m) = monitor_pid(env.state.path(), "gib") {
            monitor_rss.extend(rss_kib(m));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let r = env.wait("gib");
    assert_eq!(r["ExitCode"], 0, "{r}");
    assert_eq!(std::fs::metadata(&stdout).unwrap().len(), 1 << 30);
    assert_eq!(r["Stdout"].as_str().unwrap().len(), 2048);
    let spread = |v: &[u64]| v.iter().max().unwrap_or(&0) - v.iter().min().unwrap_or(&0);
    println!(
        "plugin VmRSS KiB min {:?} max {:?}; monitor VmRSS KiB min {:?} max {:?}; {} samples",
        plugin_rss.iter().min(),
        plugin_rss.iter().max(),
        monitor_rss.iter().min(),
        monitor_rss.iter().max(),
        monitor_rss.len()
    );
    assert!(monitor_rss.len() >= 3, "too few samples to judge");
    assert!(
        spread(&plugin_rss) < 5 * 1024,
        "plugin memory grew: {plugin_rss:?}"
    );
    // Rises only, judged before and after the monitor's trim: after 1 s of running job it gives
    // back its start-up code pages (a drop of several MiB that says nothing about growth with
    // the output), and its loop then faults back the code it still runs (a rise of up to
    // ~2 MiB in a debug build, over a few samples). So: the samples before the lowest one, and
    // those from 300 ms after it, each must not rise; growth with the output would show in both.
    let rise = |v: &[u64]| {
        let mut low = u64::MAX;
        v.iter().fold(0, |worst, &x| {
            low = low.min(x);
            worst.max(x - low)
        })
    };
    let lowest = (0..monitor_rss.len())
        .min_by_key(|&i| monitor_rss[i])
        .unwrap_or(0);
    let windows = [
        &monitor_rss[..lowest],
        &monitor_rss[(lowest + 6).min(monitor_rss.len())..],
    ];
    assert!(
        windows.iter().any(|w| w.len() >= 3),
        "too few samples around the trim: {monitor_rss:?}"
    );
    for w in windows {
        assert!(rise(w) < 1024, "monitor memory grew: {monitor_rss:?}");
    }
}

fn subscribe(env: &mut Env, id: u64, req: Value) -> Value {
    let msg = env.plugin.call(id, "executor_subscribeLogs", json!([req]));
    msg.get("result")
        .cloned()
        .unwrap_or_else(|| panic!("subscribe failed: {msg}"))
}

/// Collect a subscription's events until `end`; returns (stdout bytes, stderr bytes, last next).
fn drain(env: &mut Env, sub: &Value, timeout: Duration) -> (Vec<u8>, Vec<u8>, u64) {
    let (mut out, mut err, mut next) = (Vec::new(), Vec::new(), 0);
    loop {
        let ev: LogEvent = serde_json::from_value(env.plugin.log_event(sub, timeout)).unwrap();
        match &ev {
            LogEvent::Data {
                stream, next: n, ..
            } => {
                next = *n;
                match stream {
                    executor_schema::LogStream::Stdout => out.extend(ev.data_bytes()),
                    executor_schema::LogStream::Stderr => err.extend(ev.data_bytes()),
                }
            }
            LogEvent::End { .. } => return (out, err, next),
        }
    }
}

#[test]
fn log_follow_streams_live_and_history_is_byte_exact() {
    let mut env = Env::new();
    env.start(
        "follow",
        "echo hello; sleep 2; printf 'bye\\377'; printf 'e' >&2",
        json!({}),
    );
    let sub = subscribe(
        &mut env,
        1,
        json!({"ExecutionID": "follow", "Follow": true}),
    );
    let first: LogEvent =
        serde_json::from_value(env.plugin.log_event(&sub, Duration::from_secs(5))).unwrap();
    assert_eq!(first.data_bytes(), b"hello\n");
    // It arrived while the job still runs.
    let list = env.plugin.call(2, "executor_list", json!([]));
    assert_eq!(list["result"][0]["state"], "running", "{list}");
    let (out, err, _) = drain(&mut env, &sub, Duration::from_secs(10));
    assert_eq!(out, b"bye\xff");
    assert_eq!(err, b"e");
    env.wait("follow");
    let sub = subscribe(&mut env, 3, json!({"ExecutionID": "follow"}));
    let (out, err, _) = drain(&mut env, &sub, Duration::from_secs(5));
    assert_eq!(out, env.file("follow", "stdout"));
    assert_eq!(err, env.file("follow", "stderr"));
}

#[test]
fn a_killed_plugin_is_replaced_and_reattaches_without_losing_anything() {
    let mut env = Env::new();
    let script =
        |n: u32| format!("for i in 1 2 3 4 5 6; do echo job{n}-line$i; sleep 0.3; done; exit {n}");
    for n in 1..=3 {
        env.start(&format!("ra-{n}"), &script(n), json!({}));
    }
    let sub = subscribe(&mut env, 1, json!({"ExecutionID": "ra-1", "Follow": true}));
    let mut got = Vec::new();
    let mut next = 0;
    for _ in 0..2 {
        let ev: LogEvent =
            serde_json::from_value(env.plugin.log_event(&sub, Duration::from_secs(5))).unwrap();
        if let LogEvent::Data { next: n, .. } = &ev {
            next = *n;
        }
        got.extend(ev.data_bytes());
    }
    // kill -9 the plugin while all three run.
    env.plugin.child.kill().unwrap();
    env.plugin.child.wait().unwrap();
    let mut plugin = RawPlugin::spawn();
    plugin.initialize(env.state.path());
    env.plugin = plugin;
    // Still running under its monitor: a new plugin knows it.
    let again = env.request("ra-3", "true", json!({}));
    let msg = env.plugin.call(7, "executor_start", json!([again]));
    assert_eq!(
        msg["error"]["code"], -32001,
        "start of a running id after restart: {msg}"
    );
    for n in 1..=3 {
        let exec = format!("ra-{n}");
        let r = env.wait(&exec);
        assert_eq!(r["ExitCode"], n, "{exec}: {r}");
        let want: String = (1..=6).map(|i| format!("job{n}-line{i}\n")).collect();
        assert_eq!(env.file(&exec, "stdout"), want.as_bytes());
    }
    let sub = subscribe(
        &mut env,
        2,
        json!({"ExecutionID": "ra-1", "Follow": true, "Position": next}),
    );
    let (rest, _, _) = drain(&mut env, &sub, Duration::from_secs(10));
    got.extend(rest);
    let want: String = (1..=6).map(|i| format!("job1-line{i}\n")).collect();
    assert_eq!(
        String::from_utf8_lossy(&got),
        want,
        "resumed log misses or repeats nothing"
    );
}

#[test]
fn allocated_gpus_and_host_ports_reach_the_job_environment() {
    let mut env = Env::new();
    let r = env.run(
        "envs",
        "echo $BACALHAU_HOST_PORT_web $BACALHAU_PORT_web $BACALHAU_EXECUTION_ID",
        json!({
            "Network": {"Type": "Host", "Ports": [{"Name": "web", "Static": 20080}]},
        }),
    );
    assert_eq!(r["Stdout"], "20080 20080 envs\n", "{r}");
    // GPUs the node does not have are refused, never run without them. (A job allocated GPUs
    // this node has sees them in CUDA_VISIBLE_DEVICES: native_sandbox.rs, with fake GPUs.)
    let req = env.request(
        "gpus",
        "true",
        json!({"Resources": {"GPU": 2, "GPUs": [
            {"Index": 1000, "Name": "H100", "Vendor": "NVIDIA"},
            {"Index": 1001, "Name": "H100", "Vendor": "NVIDIA"}
        ]}}),
    );
    let id = env.id();
    let msg = env.plugin.call(id, "executor_start", json!([req]));
    assert_eq!(msg["error"]["code"], -32010, "{msg}");
    assert!(msg.to_string().contains("GPU 1000"), "{msg}");
}
