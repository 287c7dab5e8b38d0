//! Issue 4 over the plugin's stdio: capabilities, bids, live stats and an enforced limit.

use std::time::Duration;

use executor_tests::RawPlugin;
use serde_json::{json, Value};

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

fn job(engine_params: Value, extra: Value) -> Value {
    let mut task = json!({"Name": "t", "Engine": {"Type": "native", "Params": engine_params}});
    for (k, v) in extra.as_object().unwrap() {
        task[k] = v.clone();
    }
    json!({"Job": {"ID": "j-1", "Type": "batch", "Tasks": [task]}})
}

fn request(results: &std::path::Path, exec: &str, argv: &[&str], extra: Value) -> Value {
    let mut req = json!({
        "JobID": "j-1", "ExecutionID": exec, "ResultsDir": results.join(exec),
        "EngineParams": {"Type": "native", "Params": {"Entrypoint": argv}},
    });
    for (k, v) in extra.as_object().unwrap() {
        req[k] = v.clone();
    }
    req
}

#[test]
fn capabilities_bids_stats_and_limits() {
    if !is_root() {
        eprintln!("skipped: needs root for cgroups and namespaces");
        return;
    }
    let state = tempfile::tempdir().unwrap();
    let results = tempfile::tempdir().unwrap();
    let mut p = RawPlugin::spawn();
    let init = p.initialize(state.path());
    let caps = &init["result"]["capabilities"];
    let mode = caps["cgroupMode"].as_str().unwrap();
    assert!(["v2", "v1", "hybrid"].contains(&mode), "{caps}");
    assert_eq!(caps["limits"]["memory"], true, "{caps}");
    assert_eq!(caps["limits"]["cpu"], true, "{caps}");
    assert_eq!(caps["networkIsolation"], true, "{caps}");

    // Semantic bids.
    let ok = p.call(
        1,
        "executor_shouldBid",
        json!([job(json!({"Entrypoint": ["sh", "-c", "true"]}), json!({}))]),
    );
    assert_eq!(ok["result"]["ShouldBid"], true, "{ok}");
    let missing = p.call(
        2,
        "executor_shouldBid",
        json!([job(json!({"Entrypoint": ["no-such-prog-xyz"]}), json!({}))]),
    );
    assert_eq!(missing["result"]["ShouldBid"], false, "{missing}");
    let reason = missing["result"]["Reason"].as_str().unwrap();
    assert!(
        reason.starts_with("this node does not have the program \"no-such-prog-xyz\" installed"),
        "{reason}"
    );
    let http = p.call(
        3,
        "executor_shouldBid",
        json!([job(
            json!({"Entrypoint": ["true"]}),
            json!({"Network": {"Type": "HTTP", "Domains": ["a.com"]}})
        )]),
    );
    assert_eq!(http["result"]["ShouldBid"], false, "{http}");
    assert!(
        http["result"]["Reason"].as_str().unwrap().contains("HTTP"),
        "{http}"
    );

    // Resource bids: too big declines, fits bids, fits-later waits.
    let any_job = job(json!({"Entrypoint": ["true"]}), json!({}));
    let huge = p.call(
        4,
        "executor_shouldBidBasedOnUsage",
        json!([any_job, {"Memory": 1u64 << 50}]),
    );
    assert_eq!(huge["result"]["ShouldBid"], false, "{huge}");
    assert!(
        huge["result"]["ShouldWait"].is_null(),
        "never fits: no wait {huge}"
    );
    let cores = std::thread::available_parallelism().unwrap().get() as f64;
    let hold = request(
        results.path(),
        "holder",
        &["sleep", "30"],
        json!({"Resources": {"CPU": cores - 0.25}}),
    );
    let started = p.call(5, "executor_start", json!([hold]));
    assert_eq!(started["result"], Value::Null, "{started}");
    let later = p.call(
        6,
        "executor_shouldBidBasedOnUsage",
        json!([any_job, {"CPU": 0.5}]),
    );
    assert_eq!(
        (
            &later["result"]["ShouldBid"],
            &later["result"]["ShouldWait"]
        ),
        (&json!(false), &json!(true)),
        "{later}"
    );
    let small = p.call(
        7,
        "executor_shouldBidBasedOnUsage",
        json!([any_job, {"CPU": 0.2}]),
    );
    assert_eq!(small["result"]["ShouldBid"], true, "{small}");

    // Live stats of the running job.
    let stats = p.call(8, "executor_stats", json!(["holder"]));
    assert!(stats["result"]["pids"].as_u64().unwrap() >= 1, "{stats}");
    assert!(stats["result"]["memoryCurrentBytes"].is_u64(), "{stats}");
    p.call(9, "executor_cancel", json!(["holder"]));
    let r = p.call(10, "executor_wait", json!(["holder"]));
    assert_eq!(r["result"]["ErrorMsg"], "execution already cancelled");
    // After the end: the totals the monitor read before removing the cgroup.
    let after = p.call(11, "executor_stats", json!(["holder"]));
    assert!(
        after["result"]["memoryPeakBytes"].as_u64().unwrap() > 0,
        "{after}"
    );
    assert_eq!(
        after["result"]["memoryCurrentBytes"],
        Value::Null,
        "{after}"
    );

    // An enforced memory limit, reported as Bacalhau does, with the files still written.
    let oom = request(
        results.path(),
        "oom",
        &[
            "sh",
            "-c",
            "echo before; head -c 209715200 /dev/zero | tail > /dev/null; echo after",
        ],
        json!({"Resources": {"Memory": 64u64 << 20}}),
    );
    let r = p.call(12, "executor_run", json!([oom]));
    // `tail` holds the last lines in memory: with no newline in 200 MiB of zeros it holds it all.
    assert_eq!(r["result"]["ErrorMsg"], "memory limit exceeded", "{r}");
    assert_eq!(
        std::fs::read(results.path().join("oom/stdout")).unwrap(),
        b"before\nafter\n"
    );
    assert!(results.path().join("oom/exitCode").exists());
    p.call(13, "shutdown", json!([]));
    p.wait_exit(Duration::from_secs(10));
}

#[test]
fn a_short_job_reports_its_final_usage_after_the_end() {
    if !is_root() {
        eprintln!("skipped: needs root for cgroups");
        return;
    }
    let state = tempfile::tempdir().unwrap();
    let results = tempfile::tempdir().unwrap();
    let mut p = RawPlugin::spawn();
    p.initialize(state.path());
    // Over in a moment, far too short to be sampled while running: `tail` holds all 48 MiB of
    // a file without newlines, and burns some CPU reading them.
    let req = request(
        results.path(),
        "short",
        &["sh", "-c", "head -c 50331648 /dev/zero | tail > /dev/null"],
        json!({}),
    );
    let r = p.call(1, "executor_run", json!([req]));
    assert_eq!(r["result"]["ExitCode"], 0, "{r}");
    let stats = p.call(2, "executor_stats", json!(["short"]));
    let s = &stats["result"];
    let peak = s["memoryPeakBytes"].as_u64().unwrap_or(0);
    assert!(
        (48 << 20..1 << 30).contains(&peak),
        "peak memory {peak} for a job that held 48 MiB: {stats}"
    );
    let cpu = s["cpuSeconds"].as_f64().unwrap_or(-1.0);
    assert!(cpu > 0.0 && cpu < 60.0, "cpu {cpu}: {stats}");
    assert_eq!(s["pids"], 0, "nothing left in the cgroup: {stats}");
    assert_eq!(s["memoryCurrentBytes"], Value::Null, "{stats}");
    assert_eq!(s["executionId"], "short", "{stats}");
    // Old records without usage still load, and answer as before.
    let rec_path = state.path().join("executions/short/result.json");
    let mut rec: Value = serde_json::from_slice(&std::fs::read(&rec_path).unwrap()).unwrap();
    assert!(rec["usage"].is_object(), "{rec}");
    rec.as_object_mut().unwrap().remove("usage");
    std::fs::write(&rec_path, serde_json::to_vec(&rec).unwrap()).unwrap();
    p.call(3, "shutdown", json!([]));
    let mut p = RawPlugin::spawn();
    p.initialize(state.path());
    let old = p.call(4, "executor_stats", json!(["short"]));
    assert_eq!(old["error"]["code"], -32002, "{old}");
    let w = p.call(5, "executor_wait", json!(["short"]));
    assert_eq!(w["result"]["ExitCode"], 0, "{w}");
    p.call(6, "shutdown", json!([]));
}
