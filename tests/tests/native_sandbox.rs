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
    // HTTP needs a network namespace: bid where the plugin can make one (root).
    let root = nix::unistd::geteuid().is_root();
    assert_eq!(http["result"]["ShouldBid"], root, "{http}");
    if !root {
        assert!(
            http["result"]["Reason"].as_str().unwrap().contains("HTTP"),
            "{http}"
        );
    }

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
    let after = p.call(11, "executor_stats", json!(["holder"]));
    // After the end: the totals the monitor read before removing the cgroup.
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

/// A fake NVIDIA host: `nvidia-smi` is a script, the nodes are real char devices made with mknod
/// in a temp dir (index 0, 1, 2 have minors 12, 10, 11, so index and minor differ).
fn fake_gpu_host(dir: &std::path::Path) -> (std::path::PathBuf, std::path::PathBuf) {
    use nix::sys::stat::{makedev, mknod, Mode, SFlag};
    use std::os::unix::fs::PermissionsExt;
    let dev = dir.join("dev");
    std::fs::create_dir(&dev).unwrap();
    for (name, major, minor) in [
        ("nvidiactl", 195, 255),
        ("nvidia-uvm", 511, 0),
        ("nvidia10", 195, 10),
        ("nvidia11", 195, 11),
        ("nvidia12", 195, 12),
    ] {
        mknod(
            &dev.join(name),
            SFlag::S_IFCHR,
            Mode::from_bits_truncate(0o666),
            makedev(major, minor),
        )
        .unwrap();
    }
    let smi = dir.join("nvidia-smi");
    std::fs::write(
        &smi,
        "#!/bin/sh\nprintf '0, Fake GPU, 1024, 00000000:01:00.0, 12\\n\
         1, Fake GPU, 1024, 00000000:02:00.0, 10\\n2, Fake GPU, 1024, 00000000:03:00.0, 11\\n'\n",
    )
    .unwrap();
    std::fs::set_permissions(&smi, std::fs::Permissions::from_mode(0o755)).unwrap();
    (smi, dev)
}

/// The job's v1 devices cgroup directory, from the monitor's record, once it is there.
fn devices_dir(state: &std::path::Path, exec: &str) -> Option<std::path::PathBuf> {
    let path = state.join("executions").join(exec).join("monitor.json");
    let record: Value = serde_json::from_slice(&std::fs::read(path).ok()?).ok()?;
    record["cgroup"]["dirs"]
        .as_array()?
        .iter()
        .find(|d| {
            d["v1Controllers"]
                .as_array()
                .is_some_and(|c| c.iter().any(|c| c == "devices"))
        })
        .and_then(|d| d["path"].as_str())
        .map(std::path::PathBuf::from)
}

/// Reads the running job's `devices.list`, cancels the job and returns the list and the result.
fn devices_list_of(
    p: &mut RawPlugin,
    state: &std::path::Path,
    exec: &str,
    id: u64,
) -> (Option<(std::path::PathBuf, String)>, Value) {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let mut found = None;
    while std::time::Instant::now() < deadline {
        let ready = state.join("executions").join(exec).join("monitor.json");
        let job_known = std::fs::read(&ready)
            .ok()
            .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
            .is_some_and(|v| !v["job"].is_null());
        if job_known {
            found = devices_dir(state, exec).and_then(|d| {
                Some((
                    d.clone(),
                    std::fs::read_to_string(d.join("devices.list")).ok()?,
                ))
            });
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    // The job prints before it waits: give it a moment, then stop it.
    std::thread::sleep(Duration::from_millis(300));
    p.call(id, "executor_cancel", json!([exec]));
    let r = p.call(id + 1, "executor_wait", json!([exec]));
    (found, r["result"].clone())
}

#[test]
fn gpu_nodes_in_the_jail_and_a_devices_cgroup_for_the_rest() {
    if !is_root() {
        eprintln!("skipped: needs root for mknod, mounts and cgroups");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (smi, dev) = fake_gpu_host(tmp.path());
    let state = tmp.path().join("state");
    let results = tmp.path().join("results");
    let mut p = RawPlugin::spawn();
    let init = p.call(
        0,
        "initialize",
        json!({"protocolVersions": ["1"], "config": {
            "stateDir": state, "nvidiaSmi": smi, "gpuDeviceDir": dev,
        }}),
    );
    let caps = init["result"]["capabilities"].clone();
    assert_eq!(caps["gpus"].as_array().map(Vec::len), Some(3), "{caps}");
    assert_eq!(caps["gpus"][1]["Index"], 1, "{caps}");
    let control: Vec<&str> = caps["gpuDeviceControl"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let jail = caps["filesystemIsolation"] == true;
    assert_eq!(control.contains(&"privateDev"), jail, "{caps}");
    let v1_devices = std::path::Path::new("/sys/fs/cgroup/devices/devices.list").exists()
        && ["v1", "hybrid"].contains(&caps["cgroupMode"].as_str().unwrap_or(""));
    if v1_devices {
        assert!(control.contains(&"devicesCgroup"), "{caps}");
    }

    // Bids: more GPUs than the node has is declined.
    let gpus = |n: &str| {
        job(
            json!({"Entrypoint": ["true"]}),
            json!({"Resources": {"GPU": n}}),
        )
    };
    let r = p.call(1, "executor_shouldBid", json!([gpus("3")]));
    assert_eq!(r["result"]["ShouldBid"], true, "{r}");
    let r = p.call(2, "executor_shouldBid", json!([gpus("4")]));
    assert_eq!(r["result"]["ShouldBid"], false, "{r}");
    assert!(
        r["result"]["Reason"]
            .as_str()
            .unwrap()
            .contains("4 NVIDIA GPUs (it has 3)"),
        "{r}"
    );
    // ...and refused at start, naming what exists.
    let too_many = request(
        &results,
        "too-many",
        &["true"],
        json!({"Resources": {"GPU": 4}}),
    );
    let r = p.call(3, "executor_start", json!([too_many]));
    assert_eq!(r["error"]["code"], -32010, "{r}");
    let msg = r["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains("asks for 4 GPUs") && msg.contains("has 3"),
        "{msg}"
    );
    let absent = request(
        &results,
        "absent",
        &["true"],
        json!({"Resources": {"GPU": 1, "GPUs": [{"Index": 7, "Vendor": "NVIDIA"}]}}),
    );
    let r = p.call(4, "executor_start", json!([absent]));
    assert_eq!(r["error"]["code"], -32010, "{r}");
    assert!(
        r["error"]["message"].as_str().unwrap().contains("GPU 7"),
        "{r}"
    );

    // Allocated GPU index 1 = minor 10: the job sees nvidia10 and the control nodes only.
    let script =
        "ls /dev | grep nvidia | tr '\\n' ' '; echo; echo $CUDA_VISIBLE_DEVICES $NVIDIA_VISIBLE_DEVICES; exec sleep 30";
    let gpu_job = request(
        &results,
        "gpu",
        &["sh", "-c", script],
        json!({"Resources": {"GPU": 1, "GPUs": [{"Index": 1, "Name": "Fake GPU", "Vendor": "NVIDIA"}]}}),
    );
    let r = p.call(5, "executor_start", json!([gpu_job]));
    assert!(r["error"].is_null(), "{r}");
    let (list, result) = devices_list_of(&mut p, &state, "gpu", 6);
    let stdout = result["Stdout"].as_str().unwrap_or_default();
    if jail {
        assert_eq!(stdout, "nvidia-uvm nvidia10 nvidiactl \n1 1\n", "{result}");
    }
    if v1_devices {
        let (dir, list) = list.expect("the job has a devices cgroup");
        let lines: Vec<&str> = list.lines().collect();
        let nvidia: Vec<&str> = lines
            .iter()
            .copied()
            .filter(|l| l.starts_with("c 195:"))
            .collect();
        assert_eq!(nvidia, ["c 195:10 rwm", "c 195:255 rwm"], "{list}");
        assert!(
            lines.contains(&"b *:* rwm") && lines.contains(&"c 1:* rwm"),
            "{list}"
        );
        assert!(!lines.contains(&"a *:* rwm"), "{list}");
        // Removed by the monitor right after it reported the result.
        wait_until(
            Duration::from_secs(10),
            "the devices cgroup removed",
            || !dir.exists(),
        );
    }

    // A count without a list: the first GPU by index (index 0 = minor 12), as docker's --gpus 1.
    let counted = request(
        &results,
        "counted",
        &[
            "sh",
            "-c",
            "ls /dev | grep 'nvidia[0-9]'; echo $CUDA_VISIBLE_DEVICES",
        ],
        json!({"Resources": {"GPU": 1}}),
    );
    let r = p.call(12, "executor_run", json!([counted]));
    if jail {
        assert_eq!(r["result"]["Stdout"], "nvidia12\n0\n", "{r}");
    } else {
        assert_eq!(r["result"]["ExitCode"], 0, "{r}");
    }

    // A job with no GPU on a GPU host: no node in its /dev, every NVIDIA minor denied.
    let plain = request(
        &results,
        "plain",
        &["sh", "-c", "ls /dev | grep -c nvidia; exec sleep 30"],
        json!({}),
    );
    let r = p.call(8, "executor_start", json!([plain]));
    assert!(r["error"].is_null(), "{r}");
    let (list, result) = devices_list_of(&mut p, &state, "plain", 9);
    if jail {
        assert_eq!(result["Stdout"], "0\n", "{result}");
    }
    if v1_devices {
        let (dir, list) = list.expect("the job has a devices cgroup");
        assert!(!list.contains("c 195:"), "{list}");
        assert!(list.contains("c 1:* rwm"), "{list}");
        // Removed by the monitor right after it reported the result.
        wait_until(
            Duration::from_secs(10),
            "the devices cgroup removed",
            || !dir.exists(),
        );
    }
    p.call(11, "shutdown", json!([]));
    p.wait_exit(Duration::from_secs(10));
}

// ---- Per-execution uids: one job cannot reach another --------------------------------------

use executor_tests::harness::{wait_until, Env};
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// Root and a private root per job (hidepid `/proc`), or `None` with the reason printed.
fn isolated_env(test: &str) -> Option<Env> {
    if !is_root() {
        eprintln!("skipping {test}: needs root to switch users");
        return None;
    }
    let env = Env::new();
    if env.capabilities["filesystemIsolation"] != true {
        eprintln!(
            "skipping {test}: no filesystem isolation here: {}",
            env.capabilities
        );
        return None;
    }
    Some(env)
}

/// A job that records who it is in its scratch output, tries its working directory and `/tmp`,
/// says it is ready, and ends normally once the test creates `go` there (at most 60 s).
const WAITER: &str = r#"S="$1"; id -u > "$S/uid"; id -G > "$S/groups"; echo "$HOME $USER" > "$S/env"
echo secret-output > "$S/out.txt"; touch ./w /tmp/t && echo yes > "$S/writable"; touch "$S/ready"
i=0; while [ ! -e "$S/go" ] && [ $i -lt 600 ]; do sleep 0.1; i=$((i+1)); done
echo "A ended normally""#;

fn start_waiter(env: &mut Env, exec: &str, extra: Value) -> u32 {
    let mut req = env.request(exec, WAITER, extra);
    let scratch = env.scratch(exec);
    req["EngineParams"]["Params"]["Parameters"] = json!(["waiter", scratch]);
    req["EngineParams"]["Params"]["WorkingDirectory"] = json!("/job-work");
    let msg = env.call("executor_start", json!([req]));
    assert_eq!(msg["result"], Value::Null, "start {exec}: {msg}");
    wait_until(Duration::from_secs(30), "the job to be ready", || {
        scratch.join("ready").exists()
    });
    read_id(&scratch.join("uid"))
}

fn read_id(file: &Path) -> u32 {
    std::fs::read_to_string(file)
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

#[test]
fn concurrent_jobs_get_uids_of_their_own_and_cannot_reach_each_other() {
    let Some(mut env) = isolated_env("concurrent_jobs_get_uids_of_their_own") else {
        return;
    };
    let caps = &env.capabilities;
    assert_eq!(
        caps["runAsUser"], "a uid of its own per execution (70000-79999)",
        "{caps}"
    );
    let a_uid = start_waiter(&mut env, "uid-a", json!({"Env": {"A_SECRET": "hunter2"}}));
    let a_pid = env.job_pid("uid-a").expect("job A's pid");
    let a_scratch = env.scratch("uid-a");
    assert!((70_000..=79_999).contains(&a_uid), "{a_uid}");
    // No supplementary groups beyond its own gid (= uid); HOME and USER as for any unknown uid.
    assert_eq!(
        std::fs::read_to_string(a_scratch.join("groups"))
            .unwrap()
            .trim(),
        a_uid.to_string()
    );
    assert_eq!(
        std::fs::read_to_string(a_scratch.join("env")).unwrap(),
        format!("/tmp {a_uid}\n")
    );
    assert!(
        a_scratch.join("writable").exists(),
        "the working directory or /tmp is not writable"
    );

    // Job B looks for A from every side, then kills everything it may signal.
    let probe = format!(
        r#"id -u; ls /proc | grep -qx {a_pid} && echo "sees A in /proc"
cat /proc/{a_pid}/environ 2>/dev/null | tr '\0' '\n' | grep A_SECRET && echo "read A's environ"
ls /proc/{a_pid}/root/ >/dev/null 2>&1 && echo "reached A's root"
ls /proc/{a_pid}/cwd/ >/dev/null 2>&1 && echo "reached A's cwd"
for p in /proc/[0-9]*; do [ -r "$p/environ" ] && grep -q A_SECRET "$p/environ" 2>/dev/null && echo "found A's secret in $p"; done
kill -9 -1; echo "B done""#
    );
    let b = env.run("uid-b", &probe, json!({}));
    assert_eq!(b["ExitCode"], 0, "{b}");
    assert_eq!(b["ErrorMsg"], "", "{b}");
    let out = b["Stdout"].as_str().unwrap();
    let mut lines = out.lines();
    let b_uid: u32 = lines.next().unwrap().parse().unwrap();
    assert!((70_000..=79_999).contains(&b_uid), "{out}");
    assert_ne!(a_uid, b_uid, "two running jobs share a uid");
    assert_eq!(lines.collect::<Vec<_>>(), ["B done"], "{out}");

    // A survived B's `kill -9 -1` and ends to a normal result.
    std::fs::write(a_scratch.join("go"), "").unwrap();
    let a = env.wait("uid-a");
    assert_eq!(
        (&a["ExitCode"], &a["ErrorMsg"], &a["Stdout"]),
        (&json!(0), &json!(""), &json!("A ended normally\n")),
        "{a}"
    );
    // Its output landed, readable, and is root's again: a later job given A's uid cannot
    // alter it.
    let out_file = a_scratch.join("out.txt");
    assert_eq!(std::fs::read(&out_file).unwrap(), b"secret-output\n");
    assert_eq!(std::fs::metadata(&out_file).unwrap().uid(), 0);
    assert_eq!(std::fs::metadata(&a_scratch).unwrap().uid(), 0);
    assert_eq!(env.file("uid-a", "exitCode"), b"0");
}

#[test]
fn a_restarted_plugin_does_not_hand_out_a_running_jobs_uid() {
    let Some(mut env) = isolated_env("a_restarted_plugin_does_not_hand_out") else {
        return;
    };
    let a_uid = start_waiter(&mut env, "keep-a", json!({}));
    env.replace_plugin();
    // The new plugin starts allocating from the bottom of the range again: it must skip A's.
    let b_uid = start_waiter(&mut env, "keep-b", json!({}));
    assert_ne!(a_uid, b_uid);
    for exec in ["keep-a", "keep-b"] {
        std::fs::write(env.scratch(exec).join("go"), "").unwrap();
        let r = env.wait(exec);
        assert_eq!(
            (&r["ExitCode"], &r["ErrorMsg"]),
            (&json!(0), &json!("")),
            "{r}"
        );
    }
}

#[test]
fn a_configured_run_as_user_is_shared_by_every_job_and_says_so() {
    if !is_root() {
        eprintln!("skipping a_configured_run_as_user: needs root to switch users");
        return;
    }
    let state = tempfile::tempdir().unwrap();
    let results = tempfile::tempdir().unwrap();
    let mut p = RawPlugin::spawn();
    let init = p.call(
        0,
        "initialize",
        json!({"protocolVersions": ["1"], "config": {"stateDir": state.path(), "runAsUser": "4242:4343"}}),
    );
    let caps = &init["result"]["capabilities"];
    assert_eq!(caps["runAsUser"], "4242:4343", "{caps}");
    let notes = caps["notes"].to_string();
    assert!(
        notes.contains("every job runs as the one configured user 4242:4343"),
        "{caps}"
    );
    for (n, exec) in ["shared-1", "shared-2"].iter().enumerate() {
        let mut req = request(
            results.path(),
            exec,
            &["sh", "-c", r#"id -u; id -G; echo x > "$0/o/f""#],
            json!({"Outputs": [{"Name": "o", "Path": results.path().join(exec).join("o")}]}),
        );
        req["EngineParams"]["Params"]["Parameters"] = json!([results.path().join(exec)]);
        let r = p.call(1 + n as u64, "executor_run", json!([req]));
        assert_eq!(r["result"]["Stdout"], "4242\n4343\n", "{r}");
        let o = results.path().join(exec).join("o");
        assert_eq!(std::fs::read(o.join("f")).unwrap(), b"x\n");
        // Unchanged from before per-execution uids: the output stays the job user's.
        assert_eq!(std::fs::metadata(&o).unwrap().uid(), 4242);
    }
    p.call(9, "shutdown", json!([]));
    p.wait_exit(Duration::from_secs(10));
}

#[test]
fn job_uid_ranges_are_configurable_and_checked() {
    if !is_root() {
        eprintln!("skipping job_uid_ranges: the range only applies to a root plugin");
        return;
    }
    let state = tempfile::tempdir().unwrap();
    let init = |range: Value| {
        let mut p = RawPlugin::spawn();
        let msg = p.call(
            0,
            "initialize",
            json!({"protocolVersions": ["1"], "config": {"stateDir": state.path(), "jobUidRange": range}}),
        );
        (p, msg)
    };
    let (_p, bad) = init(json!({"min": 0, "max": 10}));
    assert_eq!(bad["error"]["code"], -32602, "{bad}");
    assert!(
        bad["error"]["message"]
            .as_str()
            .unwrap()
            .contains("config.jobUidRange"),
        "{bad}"
    );
    // One id: the second concurrent job is refused with the reason, and gets it once the
    // first has ended.
    let (mut p, ok) = init(json!({"min": 79_990, "max": 79_990}));
    assert_eq!(
        ok["result"]["capabilities"]["runAsUser"], "a uid of its own per execution (79990-79990)",
        "{ok}"
    );
    let results = tempfile::tempdir().unwrap();
    let hold = request(results.path(), "one", &["sleep", "30"], json!({}));
    assert_eq!(
        p.call(1, "executor_start", json!([hold]))["result"],
        Value::Null
    );
    // The bid says so before a start would fail: wait for the uid.
    let bid = p.call(
        20,
        "executor_shouldBidBasedOnUsage",
        json!({"request": {"Job": {"ID": "j"}}, "usage": {"CPU": 0.1}}),
    );
    assert_eq!(
        (&bid["result"]["ShouldBid"], &bid["result"]["ShouldWait"]),
        (&json!(false), &json!(true)),
        "{bid}"
    );
    assert!(
        bid["result"]["Reason"]
            .as_str()
            .unwrap_or_default()
            .contains("job uid"),
        "{bid}"
    );
    let second = request(results.path(), "two", &["id", "-u"], json!({}));
    let refused = p.call(2, "executor_run", json!([second.clone()]));
    let msg = refused["error"]["message"].as_str().unwrap_or_default();
    assert!(
        msg.contains("no free job uid") && msg.contains("79990-79990"),
        "{refused}"
    );
    p.call(3, "executor_cancel", json!(["one"]));
    p.call(4, "executor_wait", json!(["one"]));
    // The result is reported before the monitor hands the outputs back and lets the uid go
    // (so the disk and the teardown are not on the result's path): a host that was told to
    // wait asks again, as this does, and the uid comes free within moments.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let bid = loop {
        let bid = p.call(
            21,
            "executor_shouldBidBasedOnUsage",
            json!({"request": {"Job": {"ID": "j"}}, "usage": {"CPU": 0.1}}),
        );
        if bid["result"]["ShouldBid"] == true || std::time::Instant::now() > deadline {
            break bid;
        }
        assert_eq!(bid["result"]["ShouldWait"], true, "{bid}");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(bid["result"]["ShouldBid"], true, "{bid}");
    let r = p.call(5, "executor_run", json!([second]));
    assert_eq!(r["result"]["Stdout"], "79990\n", "{r}");
    p.call(6, "shutdown", json!([]));
    p.wait_exit(Duration::from_secs(10));
}

#[test]
fn outputs_of_a_job_whose_monitor_died_go_back_to_root() {
    let Some(mut env) = isolated_env("outputs_of_a_job_whose_monitor_died") else {
        return;
    };
    let uid = start_waiter(&mut env, "orphan", json!({}));
    let scratch = env.scratch("orphan");
    assert_eq!(std::fs::metadata(&scratch).unwrap().uid(), uid);
    let monitor = env.monitor_pid("orphan").expect("monitor pid");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(monitor),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let r = env.wait("orphan");
    assert!(
        r["ErrorMsg"]
            .as_str()
            .unwrap()
            .contains("execution monitor exited unexpectedly"),
        "{r}"
    );
    for f in [scratch.clone(), scratch.join("out.txt")] {
        assert_eq!(std::fs::metadata(&f).unwrap().uid(), 0, "{}", f.display());
    }
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

/// Issue 12 item 6: a job that sets no `Resources.Memory` gets `defaultMemory`; a request's own
/// `Memory` wins over it.
#[test]
fn default_memory_caps_a_job_without_memory_and_a_requested_limit_wins() {
    if !is_root() {
        eprintln!("skipped: needs root for cgroups");
        return;
    }
    let state = tempfile::tempdir().unwrap();
    let results = tempfile::tempdir().unwrap();
    let mut p = RawPlugin::spawn();
    let init = p.call(
        0,
        "initialize",
        json!({
            "protocolVersions": ["1"],
            "config": {"stateDir": state.path(), "defaultMemory": "32MB"},
        }),
    );
    if init["result"]["capabilities"]["limits"]["memory"] != true {
        eprintln!("skipped: this host enforces no memory limit: {init}");
        return;
    }
    // `tail` holds its whole input when it has no newline: 100 MiB of zeros.
    let hog = [
        "sh",
        "-c",
        "head -c 104857600 /dev/zero | tail > /dev/null; echo done",
    ];
    let r = p.call(
        1,
        "executor_run",
        json!([request(results.path(), "mem-default", &hog, json!({}))]),
    );
    assert_eq!(r["result"]["ErrorMsg"], "memory limit exceeded", "{r}");
    let r = p.call(
        2,
        "executor_run",
        json!([request(
            results.path(),
            "mem-requested",
            &hog,
            json!({"Resources": {"Memory": 512u64 << 20}})
        )]),
    );
    assert_eq!(
        (&r["result"]["ErrorMsg"], &r["result"]["Stdout"]),
        (&json!(""), &json!("done\n")),
        "{r}"
    );
    p.call(3, "shutdown", json!([]));
    p.wait_exit(Duration::from_secs(10));
}

/// What a job leaves in its outputs is handed back to root without what a host must not get
/// (issue 12, items 4 and 6): its FIFOs are dropped (a host reading one would block), setuid and
/// setgid bits are cleared, symlinks stay symlinks (owned by root, never followed).
#[test]
fn outputs_come_back_without_fifos_or_special_bits() {
    let Some(mut env) = isolated_env("outputs_come_back_without_fifos_or_special_bits") else {
        return;
    };
    let exec = "handback-fifo";
    let scratch = env.scratch(exec);
    let shadow = std::fs::metadata("/etc/shadow").ok();
    // Under the job's system-call filter the set-id modes are refused outright; without one
    // they are made, and must be cleared on the way back.
    let script = r#"S="$1"; mkfifo "$S/fifo" && echo x > "$S/suid" \
        && { chmod 4755 "$S/suid" 2>/dev/null || chmod 755 "$S/suid"; } \
        && mkdir "$S/sgid" && { chmod 2775 "$S/sgid" 2>/dev/null || chmod 775 "$S/sgid"; } \
        && mkfifo "$S/sgid/fifo" && ln -s /etc/shadow "$S/shadow" && id -u"#;
    let mut req = env.request(exec, script, json!({}));
    req["EngineParams"]["Params"]["Parameters"] = json!(["job", scratch]);
    let msg = env.call("executor_run", json!([req]));
    let r = &msg["result"];
    assert_eq!(r["ExitCode"], 0, "{msg}");
    let job_uid: u32 = r["Stdout"].as_str().unwrap().trim().parse().unwrap();
    assert_ne!(job_uid, 0);
    assert!(!scratch.join("fifo").exists() && !scratch.join("sgid/fifo").exists());
    assert!(
        std::fs::symlink_metadata(scratch.join("fifo")).is_err(),
        "FIFO dropped"
    );
    assert!(std::fs::symlink_metadata(scratch.join("sgid/fifo")).is_err());
    let meta = |p: &str| std::fs::symlink_metadata(scratch.join(p)).unwrap();
    assert_eq!(meta("suid").mode() & 0o7777, 0o755);
    // Group write is cleared too: nothing handed back stays writable by other users.
    assert_eq!(meta("sgid").mode() & 0o7777, 0o755);
    assert!(meta("shadow").file_type().is_symlink());
    for p in ["suid", "sgid", "shadow", "."] {
        assert_eq!(
            (meta(p).uid(), meta(p).gid()),
            (0, 0),
            "{p} is root's again"
        );
    }
    if let (Some(before), Ok(after)) = (shadow, std::fs::metadata("/etc/shadow")) {
        assert_eq!((before.uid(), before.mode()), (after.uid(), after.mode()));
    }
}
