//! Bad-input suite (issue 6) over the real plugin's stdio: garbage, random and deeply nested
//! JSON, hostile ids and names, absurd resources and limits, huge environments.

use std::time::Duration;

use executor_tests::harness::{tree, Env};
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::TestRunner;
use serde_json::{json, Value};

fn alive_and_answering(env: &mut Env) {
    let msg = env.call("executor_isInstalled", json!([]));
    assert_eq!(msg["result"], json!(true), "{msg}");
}

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(|f| json!(f)),
        ".{0,20}".prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 32, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(
                prop_oneof![
                    Just("id".to_string()),
                    Just("jsonrpc".to_string()),
                    Just("method".to_string()),
                    Just("params".to_string()),
                    "[a-z]{1,6}"
                ],
                inner,
                0..6
            )
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// A JSON-RPC message either answered once, or (a notification) never. Methods never name a
/// real one, so nothing random can start or stop anything.
fn expected_answers(v: &Value) -> usize {
    match v {
        Value::Object(o) if o.contains_key("method") && !o.contains_key("id") => 0,
        _ => 1,
    }
}

fn sample<S: Strategy>(s: &S, runner: &mut TestRunner) -> S::Value {
    s.new_tree(runner).expect("a value").current()
}

#[test]
fn garbage_random_json_and_deep_nesting_are_answered_and_the_plugin_stays_up() {
    let mut env = Env::new();
    let mut runner = TestRunner::deterministic();
    let mut expected = 0usize;

    // Random bytes: one parse error each (or an answer as JSON when they happen to be JSON).
    let bytes = prop::collection::vec(
        any::<u8>().prop_filter("no newline", |b| *b != b'\n'),
        1..200,
    );
    for _ in 0..200 {
        let mut line: Vec<u8> = sample(&bytes, &mut runner);
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        if let Ok(v) = serde_json::from_slice::<Value>(&line) {
            expected += expected_answers(&v);
        } else {
            expected += 1;
        }
        line.push(b'\n');
        env.plugin.send_raw(&line);
    }
    // Random JSON, biased towards the keys of a request, with methods that do not exist.
    let values = json_value();
    for _ in 0..300 {
        let mut v = sample(&values, &mut runner);
        if let Some(o) = v.as_object_mut() {
            if let Some(m) = o.get_mut("method") {
                if m.is_string() {
                    *m = json!(format!("x_{}", m.as_str().unwrap_or_default()));
                }
            }
        }
        expected += expected_answers(&v);
        env.plugin.send(&v);
    }
    // Nesting far past any recursion limit, open and balanced, alone and inside a request.
    let deep = 100_000;
    let lines: Vec<Vec<u8>> = vec![
        "[".repeat(deep).into_bytes(),
        format!("{}{}", "[".repeat(deep), "]".repeat(deep)).into_bytes(),
        format!("{}1{}", "{\"a\":".repeat(deep), "}".repeat(deep)).into_bytes(),
        format!(
            r#"{{"jsonrpc":"2.0","id":77,"method":"executor_wait","params":{}{}}}"#,
            "[".repeat(deep),
            "]".repeat(deep)
        )
        .into_bytes(),
        format!(
            r#"{{"jsonrpc":"2.0","id":78,"method":"executor_start","params":[{{"ExecutionID":"d","Env":{}1{}}}]}}"#,
            "{\"a\":".repeat(deep),
            "}".repeat(deep)
        )
        .into_bytes(),
    ];
    for mut line in lines {
        expected += 1;
        line.push(b'\n');
        env.plugin.send_raw(&line);
    }

    let mut got = 0;
    while got < expected {
        let msg = env.plugin.recv_timeout(Duration::from_secs(30));
        assert!(
            msg.get("error").is_some() || msg.get("result").is_some(),
            "an answer: {msg}"
        );
        got += 1;
    }
    env.plugin.assert_silent(Duration::from_millis(300));
    alive_and_answering(&mut env);
    assert!(
        env.plugin.child.try_wait().unwrap().is_none(),
        "still running"
    );
    assert!(
        tree(&env.state.path().join("executions")).is_empty(),
        "no garbage started anything"
    );
}

const HOSTILE: &[&str] = &[
    "../x",
    "..",
    ".",
    "/",
    "/etc/passwd",
    "a/b",
    "a\0b",
    "e\u{0}",
    "e\u{202e}1",
    "e\u{200b}",
    "ｅ1",
    "e\n1",
    " e",
    "",
    ".evicted.x",
    "-rf",
    "_e",
];

fn hostile_ids() -> Vec<String> {
    let mut v: Vec<String> = HOSTILE.iter().map(|s| s.to_string()).collect();
    v.push("x".repeat(10 * 1024));
    v
}

fn assert_invalid_params(msg: &Value, field: &str, what: &str) {
    assert_eq!(msg["error"]["code"], -32602, "{what}: {msg}");
    let problems = msg["error"]["data"]["problems"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert!(
        problems
            .iter()
            .any(|p| p["field"].as_str().is_some_and(|f| f.starts_with(field))),
        "{what}: the problem names {field}: {msg}"
    );
}

#[test]
fn hostile_ids_and_names_are_refused_before_any_path_exists() {
    let mut env = Env::new();
    let before_state = tree(env.state.path());
    let results = env.work.path().join("r");
    std::fs::create_dir_all(&results).unwrap();
    let base = json!({
        "JobID": "j", "ExecutionID": "ok-1", "ResultsDir": results,
        "EngineParams": {"Type": "native", "Params": {"Entrypoint": ["true"]}},
    });
    for id in hostile_ids() {
        let shown = id.escape_debug().to_string();
        let shown = &shown[..shown.len().min(40)];
        for method in ["executor_start", "executor_run"] {
            let mut req = base.clone();
            req["ExecutionID"] = json!(id);
            let msg = env.call(method, json!([req]));
            assert_invalid_params(&msg, "ExecutionID", &format!("{method} id {shown}"));
            // An empty JobID is allowed (Bacalhau's tests send none).
            if !id.is_empty() {
                let mut req = base.clone();
                req["JobID"] = json!(id);
                let msg = env.call(method, json!([req]));
                assert_invalid_params(&msg, "JobID", &format!("{method} job id {shown}"));
            }
            // Output names are trimmed first (as Bacalhau does), so " e" is the name "e".
            if id.trim() == id {
                let mut req = base.clone();
                req["Outputs"] = json!([{"Name": id, "Path": results.join("out")}]);
                let msg = env.call(method, json!([req]));
                assert_invalid_params(&msg, "Outputs[0].Name", &format!("{method} output {shown}"));
            }
        }
        for method in ["executor_wait", "executor_cancel"] {
            let msg = env.call(method, json!([id]));
            assert_eq!(msg["error"]["code"], -32003, "{method} {shown}: {msg}");
        }
        let msg = env.call("executor_subscribeLogs", json!([{"ExecutionID": id}]));
        assert_eq!(msg["error"]["code"], -32003, "subscribe {shown}: {msg}");
    }
    assert_eq!(
        tree(env.state.path()),
        before_state,
        "the state root is untouched"
    );
    assert!(tree(&results).is_empty(), "the results dir is untouched");

    // A finished execution is not reachable through a path-like id.
    let r = env.run("victim", "echo secret", json!({}));
    assert_eq!(r["Stdout"], "secret\n");
    for id in [
        "../executions/victim",
        "./victim",
        "victim/",
        "victim/../victim",
    ] {
        let msg = env.call("executor_wait", json!([id]));
        assert_eq!(msg["error"]["code"], -32003, "{id}: {msg}");
    }
    alive_and_answering(&mut env);
}

/// Issue 12 item 7: an environment error names the variable, never its value (a secret, as
/// often as not), neither in the answer nor in the plugin's log.
#[test]
fn environment_errors_never_carry_a_value() {
    let secret = "proc-s3cr3t-value";
    let state = tempfile::tempdir().unwrap();
    let results = tempfile::tempdir().unwrap();
    let log = state.path().join("plugin.log");
    let log_file = std::fs::File::create(&log).unwrap();
    let mut p = executor_tests::RawPlugin::spawn_with(|cmd| {
        cmd.env(executor_plugin::stdio::LOG_ENV, "trace")
            .stderr(log_file);
    });
    p.initialize(&state.path().join("state"));
    let req = json!({
        "JobID": "j", "ExecutionID": "env-secret", "ResultsDir": results.path().join("r"),
        "EngineParams": {"Type": "native", "Params": {"Entrypoint": ["true"],
            "EnvironmentVariables": [
                format!("BACALHAU_TEST={secret}"),
                format!("={secret}"),
                format!("OK={secret}\0"),
                secret,
            ]}},
    });
    for (id, method) in [(1, "executor_start"), (2, "executor_run")] {
        let msg = p.call(id, method, json!([req]));
        assert_invalid_params(&msg, "EngineParams.Params.EnvironmentVariables", method);
        let text = msg.to_string();
        assert!(
            !text.contains(secret),
            "{method}: the answer carries the value: {text}"
        );
        assert!(
            text.contains("environment variable 'BACALHAU_TEST' cannot start with BACALHAU_"),
            "{text}"
        );
    }
    p.call(3, "shutdown", json!([]));
    p.wait_exit(Duration::from_secs(10));
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(
        !logged.contains(secret),
        "the log carries the value: {logged}"
    );
}

#[test]
fn result_path_names_escaping_the_results_dir_are_refused() {
    let mut env = Env::new();
    let results = env.results("esc");
    for name in ["../escape", "..", "/abs", "a/../../b", "stdout", "exitCode"] {
        let req = env.request(
            "esc",
            "true",
            json!({"Outputs": [{"Name": name, "Path": results.join("x")}]}),
        );
        let msg = env.call("executor_start", json!([req]));
        assert_invalid_params(&msg, "Outputs[0].Name", name);
    }
    assert!(!env.work.path().join("escape").exists());
    assert!(tree(&results).is_empty());
}

#[test]
fn a_working_directory_that_does_not_exist_is_a_result_naming_it() {
    let mut env = Env::new();
    let missing = env.work.path().join("no-such-dir");
    let mut req = env.request("wd", "pwd", json!({}));
    req["EngineParams"]["Params"]["WorkingDirectory"] = json!(missing);
    let msg = env.call("executor_run", json!([req]));
    if env.capabilities["filesystemIsolation"] == true {
        // In its private root the job gets a scratch directory there, as a container would.
        assert_eq!(msg["result"]["ExitCode"], 0, "{msg}");
        assert_eq!(
            msg["result"]["Stdout"],
            format!("{}\n", missing.display()),
            "{msg}"
        );
        assert!(!missing.exists(), "nothing is created on the host");
    } else {
        assert!(
            msg.to_string().contains("no-such-dir"),
            "the answer names the directory: {msg}"
        );
        assert_eq!(msg["result"]["ExitCode"], -1, "{msg}");
    }
    // Relative: refused up front.
    let mut req = env.request("wd2", "true", json!({}));
    req["EngineParams"]["Params"]["WorkingDirectory"] = json!("relative/dir");
    let msg = env.call("executor_start", json!([req]));
    assert_eq!(msg["error"]["code"], -32602, "{msg}");
    alive_and_answering(&mut env);
}

#[test]
fn negative_nan_and_absurd_resources() {
    let mut env = Env::new();
    // Refused as invalid params: negative, not a number, not representable.
    for (i, res) in [
        json!({"CPU": -1}),
        json!({"CPU": "NaN"}),
        json!({"CPU": "1"}),
        json!({"Memory": -1}),
        json!({"Memory": 1e30}),
        json!({"Memory": "lots"}),
        json!({"Disk": -5}),
        json!({"GPU": -1}),
    ]
    .into_iter()
    .enumerate()
    {
        let req = env.request(&format!("res-{i}"), "true", json!({"Resources": res}));
        let msg = env.call("executor_start", json!([req]));
        assert_eq!(msg["error"]["code"], -32602, "{res}: {msg}");
    }
    // Raw NaN is not JSON at all.
    env.plugin.send_raw(
        br#"{"jsonrpc":"2.0","id":5,"method":"executor_start","params":[{"ExecutionID":"nan","Resources":{"CPU":NaN}}]}
"#,
    );
    let msg = env.plugin.recv();
    assert_eq!(msg["error"]["code"], -32700, "{msg}");
    // Huge but well-formed: run (nothing here enforces them yet) or refuse clearly - no hang.
    for (i, res) in [
        json!({"CPU": 1e308, "Memory": u64::MAX, "Disk": u64::MAX}),
        json!({"CPU": 0, "Memory": 0, "Disk": 0, "GPU": 0}),
    ]
    .into_iter()
    .enumerate()
    {
        let req = env.request(&format!("big-{i}"), "echo ran", json!({"Resources": res}));
        let msg = env.call("executor_run", json!([req]));
        match msg.get("result") {
            Some(r) => assert_eq!((&r["ExitCode"], &r["Stdout"]), (&json!(0), &json!("ran\n"))),
            None => assert!(
                msg["error"]["message"]
                    .as_str()
                    .is_some_and(|m| !m.is_empty()),
                "{msg}"
            ),
        }
    }
    alive_and_answering(&mut env);
}

#[test]
fn limits_of_zero() {
    let mut env = Env::new();
    let r = env.run(
        "zero",
        "head -c 1048576 /dev/zero; echo e >&2",
        json!({
            "OutputLimits": {"MaxStdoutFileLength": 0, "MaxStdoutReturnLength": "0B",
                             "MaxStderrFileLength": "0", "MaxStderrReturnLength": 0},
            "ExecutionTimeout": 0,
        }),
    );
    assert_eq!(
        (&r["ExitCode"], &r["Stdout"], &r["stderr"], &r["ErrorMsg"]),
        (&json!(0), &json!(""), &json!(""), &json!(""))
    );
    assert_eq!(
        (&r["StdoutTruncated"], &r["StderrTruncated"]),
        (&json!(true), &json!(true))
    );
    assert!(env.file("zero", "stdout").is_empty());
    assert!(env.file("zero", "stderr").is_empty());
    // The log still has everything.
    let sub = env.call("executor_subscribeLogs", json!([{"ExecutionID": "zero"}]));
    let sub = sub["result"].clone();
    let mut n = 0usize;
    loop {
        let ev: executor_schema::LogEvent =
            serde_json::from_value(env.plugin.log_event(&sub, Duration::from_secs(10))).unwrap();
        if matches!(ev, executor_schema::LogEvent::End { .. }) {
            break;
        }
        n += ev.data_bytes().len();
    }
    assert_eq!(n, 1048576 + 2);
}

#[test]
fn an_environment_of_ten_thousand_variables() {
    let mut env = Env::new();
    let vars: serde_json::Map<String, Value> = (0..10_000)
        .map(|i| (format!("V{i}"), json!(format!("value-{i}"))))
        .collect();
    let r = env.run(
        "env10k",
        "env | grep -c '^V[0-9]*=value-'; echo \"$V9999\"",
        json!({"Env": vars}),
    );
    assert_eq!(
        (&r["ExitCode"], &r["Stdout"]),
        (&json!(0), &json!("10000\nvalue-9999\n")),
        "{r}"
    );
    // Engine variables too, 10 000 of them.
    let mut req = env.request("env10k-engine", "echo \"$E0 $E9999\"", json!({}));
    req["EngineParams"]["Params"]["EnvironmentVariables"] = json!((0..10_000)
        .map(|i| format!("E{i}=e{i}"))
        .collect::<Vec<_>>());
    let msg = env.call("executor_run", json!([req]));
    assert_eq!(msg["result"]["Stdout"], "e0 e9999\n", "{msg}");
    // Past the kernel's limit (10 000 x 1 KiB > ARG_MAX): a clear error, not a hang.
    let big: serde_json::Map<String, Value> = (0..10_000)
        .map(|i| (format!("B{i}"), json!("x".repeat(1024))))
        .collect();
    let req = env.request("env-huge", "true", json!({"Env": big}));
    let msg = env.call("executor_run", json!([req]));
    let text = msg.to_string();
    match msg.get("result") {
        Some(r) => assert!(
            r["ExitCode"] == 0 || r["ErrorMsg"].as_str().is_some_and(|m| !m.is_empty()),
            "{text:.300}"
        ),
        None => assert!(msg["error"]["message"].is_string(), "{text:.300}"),
    }
    println!(
        "10 000 x 1 KiB variables: {}",
        msg.get("result")
            .map(|r| r["ErrorMsg"].to_string())
            .unwrap_or_else(|| msg["error"].to_string())
    );
    alive_and_answering(&mut env);
}

/// A results directory (and a log directory) made beforehand with the result files planted as
/// symlinks to a host file (issue 12, item 3): the host file is untouched and the results are
/// written as new files in their place.
#[test]
fn planted_symlinks_in_the_results_and_log_dirs_never_redirect_a_write() {
    let mut env = Env::new();
    let victim = env.work.path().join("victim");
    std::fs::write(&victim, "precious").unwrap();
    let exec_dir = env.work.path().join("planted-exec");
    let results = exec_dir.join("results");
    let logs = exec_dir.join("logs");
    std::fs::create_dir_all(&results).unwrap();
    std::fs::create_dir_all(&logs).unwrap();
    for name in ["stdout", "stderr", "exitCode"] {
        std::os::unix::fs::symlink(&victim, results.join(name)).unwrap();
    }
    std::os::unix::fs::symlink(&victim, logs.join("raw_container_logs")).unwrap();
    let req = json!({
        "JobID": "j", "ExecutionID": "planted", "ExecutionDir": exec_dir,
        "EngineParams": {"Type": "native", "Params": {"Entrypoint": ["sh", "-c", "echo out; echo err >&2; exit 3"]}},
    });
    let msg = env.call("executor_run", json!([req]));
    assert_eq!(
        std::fs::read_to_string(&victim).unwrap(),
        "precious",
        "the host file was written through a planted symlink: {msg}"
    );
    let r = msg["result"].clone();
    assert_eq!(
        (&r["ExitCode"], &r["Stdout"]),
        (&json!(3), &json!("out\n")),
        "{msg}"
    );
    for (name, want) in [("stdout", "out\n"), ("stderr", "err\n"), ("exitCode", "3")] {
        let meta = std::fs::symlink_metadata(results.join(name)).unwrap();
        assert!(meta.file_type().is_file(), "{name} is a file of its own");
        assert_eq!(std::fs::read_to_string(results.join(name)).unwrap(), want);
    }
    let log = std::fs::symlink_metadata(logs.join("raw_container_logs")).unwrap();
    assert!(
        log.file_type().is_file() && log.len() > 0,
        "the log is a file of its own"
    );
    alive_and_answering(&mut env);
}

/// A results directory that another user made (and could fill with links) is refused before
/// anything is written in it.
#[test]
fn a_results_dir_of_another_user_is_refused() {
    if !executor_tests::harness::is_root() {
        println!("skipped: giving a directory to another user needs root");
        return;
    }
    use std::os::unix::fs::PermissionsExt;
    let mut env = Env::new();
    let victim = env.work.path().join("victim");
    std::fs::write(&victim, "precious").unwrap();
    let results = env.work.path().join("foreign");
    std::fs::create_dir_all(&results).unwrap();
    std::os::unix::fs::symlink(&victim, results.join("stdout")).unwrap();
    std::os::unix::fs::lchown(&results, Some(65534), Some(65534)).unwrap();
    let mut req = env.request("foreign", "echo out", json!({"ResultsDir": results}));
    req["Outputs"] = json!([]);
    let msg = env.call("executor_run", json!([req]));
    assert_invalid_params(&msg, "ResultsDir", "a results dir of uid 65534");
    assert!(msg.to_string().contains("65534"), "names the owner: {msg}");
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");

    // Ours, but open to everyone's renames: refused too; with the sticky bit (as /tmp): used.
    std::os::unix::fs::lchown(&results, Some(0), Some(0)).unwrap();
    std::fs::set_permissions(&results, std::fs::Permissions::from_mode(0o777)).unwrap();
    let mut req = env.request("shared", "echo out", json!({"ResultsDir": results}));
    req["Outputs"] = json!([]);
    let msg = env.call("executor_run", json!([req]));
    assert_invalid_params(&msg, "ResultsDir", "a world-writable results dir");
    std::fs::set_permissions(&results, std::fs::Permissions::from_mode(0o1777)).unwrap();
    let mut req = env.request("sticky", "echo out", json!({"ResultsDir": results}));
    req["Outputs"] = json!([]);
    let msg = env.call("executor_run", json!([req]));
    assert_eq!(msg["result"]["Stdout"], "out\n", "{msg}");
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");
    alive_and_answering(&mut env);
}

/// Two executions never share a results directory: the second is refused while the first runs.
#[test]
fn a_results_dir_in_use_by_another_execution_is_refused() {
    let mut env = Env::new();
    env.start("inuse-first", "sleep 30", json!({}));
    let shared = env.results("inuse-first");
    let mut req = env.request("inuse-second", "echo out", json!({"ResultsDir": shared}));
    req["Outputs"] = json!([]);
    let msg = env.call("executor_start", json!([req]));
    assert_invalid_params(&msg, "ResultsDir", "a results dir in use");
    assert!(msg.to_string().contains("in use"), "{msg}");
    let msg = env.call("executor_cancel", json!(["inuse-first"]));
    assert!(msg.get("error").is_none(), "{msg}");
    env.wait("inuse-first");
    // Free again once the first has ended.
    let r = env.run(
        "inuse-third",
        "echo out",
        json!({"ResultsDir": shared, "Outputs": []}),
    );
    assert_eq!(r["Stdout"], "out\n");
    alive_and_answering(&mut env);
}

/// A state root another local user can write, or rename or replace (it or a directory above
/// it is theirs, or open to all without the sticky bit), is refused at `initialize`: that user
/// could read `request.json` (the job's `Env`) through files of their own, or point the root
/// plugin's writes elsewhere with symlinks. Before, any existing directory was taken as it was.
#[test]
fn a_state_root_other_users_can_write_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().unwrap();
    let init = |state: &std::path::Path| {
        let mut p = executor_tests::RawPlugin::spawn();
        p.call(
            0,
            "initialize",
            json!({"protocolVersions": ["1"], "config": {"stateDir": state}}),
        )
    };
    let mode = |p: &std::path::Path, m: u32| {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).unwrap()
    };
    let ok = tmp.path().join("ok");
    let msg = init(&ok);
    assert!(msg.get("result").is_some(), "a fresh state root: {msg}");

    let open = tmp.path().join("open");
    std::fs::create_dir(&open).unwrap();
    mode(&open, 0o777);
    assert_invalid_params(&init(&open), "config.stateDir", "a state root open to all");

    let open_parent = tmp.path().join("open-parent");
    std::fs::create_dir(&open_parent).unwrap();
    mode(&open_parent, 0o777);
    assert_invalid_params(
        &init(&open_parent.join("state")),
        "config.stateDir",
        "a state root in a directory open to all",
    );

    let link = open_parent.join("link");
    std::os::unix::fs::symlink(&ok, &link).unwrap();
    assert_invalid_params(
        &init(&link),
        "config.stateDir",
        "a state root named by a symlink others can replace",
    );

    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped the cases of another user's directories: needs root to chown");
        return;
    }
    let theirs = tmp.path().join("theirs");
    std::fs::create_dir(&theirs).unwrap();
    std::os::unix::fs::chown(&theirs, Some(65534), Some(65534)).unwrap();
    assert_invalid_params(
        &init(&theirs),
        "config.stateDir",
        "another user's state root",
    );
    assert_invalid_params(
        &init(&theirs.join("state")),
        "config.stateDir",
        "a state root in another user's directory",
    );
}

/// In a private root, the program is looked up as the job will see it; `..` must not take that
/// lookup, made as root on the host, outside the job's root: a request naming
/// `/usr/../<host path>` learnt from the error whether a host file exists (`permission denied`,
/// `is a directory`) or not (`no such file or directory`).
#[test]
fn a_program_path_with_dotdot_tells_nothing_about_host_files() {
    let tmp = tempfile::tempdir().unwrap();
    let secret = tmp.path().join("host-only-file");
    std::fs::write(&secret, "x").unwrap();
    let mut p = executor_tests::RawPlugin::spawn();
    let init = p.call(
        0,
        "initialize",
        json!({"protocolVersions": ["1"], "config": {"stateDir": tmp.path().join("state")}}),
    );
    if init["result"]["capabilities"]["filesystemIsolation"] != true {
        eprintln!("skipped: no private root here: {init}");
        return;
    }
    let mut errors = Vec::new();
    for (i, target) in [
        secret.clone(),
        tmp.path().join("no-such-file"),
        tmp.path().to_path_buf(),
    ]
    .iter()
    .enumerate()
    {
        let program = format!("/usr/..{}", target.display());
        let exec = format!("oracle-{i}");
        let msg = p.call(
            1 + i as u64,
            "executor_run",
            json!([{"JobID": "j-oracle", "ExecutionID": exec,
                    "ResultsDir": tmp.path().join("results").join(&exec),
                    "EngineParams": {"Type": "native", "Params": {"Entrypoint": [program]}}}]),
        );
        let text = msg["result"]["ErrorMsg"]
            .as_str()
            .map(str::to_owned)
            .unwrap_or_else(|| msg.to_string());
        errors.push(text.replace(&program, "PROGRAM"));
    }
    assert!(
        errors.iter().all(|e| *e == errors[0]),
        "the answers differ with what exists on the host: {errors:#?}"
    );
}

/// A state root below a directory writable by the plugin's own group (a umask of 002 with a
/// group per user) is the plugin's as much as one that is not: accepted.
#[test]
fn a_state_root_below_a_directory_of_our_own_group_is_fine() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    std::fs::create_dir(&home).unwrap();
    std::fs::set_permissions(&home, std::fs::Permissions::from_mode(0o775)).unwrap();
    let mut p = executor_tests::RawPlugin::spawn();
    let msg = p.call(
        0,
        "initialize",
        json!({"protocolVersions": ["1"], "config": {"stateDir": home.join("state")}}),
    );
    assert!(msg.get("result").is_some(), "{msg}");
}
