//! Issue 4's filesystem and run-as-user acceptance over the plugin's stdio: capabilities, the
//! allow-list at bid and start, and a job with a read-only input, an output at its `Path`, its
//! working directory, the configured user and no view of the state root.

use std::os::unix::fs::PermissionsExt;

use executor_tests::RawPlugin;
use serde_json::{json, Value};

fn bid_job(inputs: Value) -> Value {
    json!({"Job": {"ID": "j-1", "Type": "batch", "Tasks": [{
        "Name": "t",
        "Engine": {"Type": "native", "Params": {"Entrypoint": ["sh", "-c", "true"]}},
        "InputSources": inputs,
        "ResultPaths": [{"Name": "out", "Path": "/outputs"}],
    }]}})
}

fn local_input(source: &std::path::Path, target: &str) -> Value {
    json!({
        "InputSource": {"Source": {"Type": "local", "Params": {"SourcePath": source}}, "Target": target},
        "Volume": {"type": 1, "readOnly": true, "source": source, "target": target},
    })
}

#[test]
fn jailed_job_over_stdio() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: needs root for mount namespaces and a user switch");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("state");
    let results = tmp.path().join("results");
    let data = tmp.path().join("data");
    let other = tmp.path().join("other");
    for d in [&data, &other] {
        std::fs::create_dir_all(d).unwrap();
        std::fs::write(d.join("f"), "input data\n").unwrap();
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let mut p = RawPlugin::spawn();
    let init = p.call(
        0,
        "initialize",
        json!({
            "protocolVersions": ["1"],
            "config": {
                "stateDir": state,
                "runAsUser": "4242:4343",
                "allowListedLocalPaths": [data],
            },
        }),
    );
    let caps = &init["result"]["capabilities"];
    if caps["filesystemIsolation"] != true {
        eprintln!("skipped: no filesystem isolation here: {caps}");
        return;
    }
    assert_eq!(caps["runAsUser"], "4242:4343", "{caps}");

    let ok = p.call(
        1,
        "executor_shouldBid",
        json!([bid_job(json!([{"Source": {"Type": "local", "Params": {"SourcePath": data}}, "Target": "/data"}]))]),
    );
    assert_eq!(ok["result"]["ShouldBid"], true, "{ok}");
    let no = p.call(
        2,
        "executor_shouldBid",
        json!([bid_job(json!([{"Source": {"Type": "local", "Params": {"SourcePath": other}}, "Target": "/data"}]))]),
    );
    assert_eq!(no["result"]["ShouldBid"], false, "{no}");
    let reason = no["result"]["Reason"].as_str().unwrap();
    assert!(
        reason.starts_with("this node does not") && reason.contains("not allow-listed"),
        "{reason}"
    );

    let request = |exec: &str, input: Value, script: &str| {
        json!({
            "JobID": "j-1", "ExecutionID": exec, "ResultsDir": results.join(exec),
            "Inputs": [input],
            "Outputs": [{"Name": "out", "Path": "/outputs"}],
            "EngineParams": {"Type": "native", "Params": {
                "Entrypoint": ["sh", "-c", script], "WorkingDirectory": "/outputs",
            }},
        })
    };
    let refused = p.call(
        3,
        "executor_start",
        json!([request("bad", local_input(&other, "/data"), "true")]),
    );
    assert_eq!(refused["error"]["code"], -32602, "{refused}");
    let msg = refused["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains("Inputs[0]") && msg.contains(&data.display().to_string()),
        "{msg}"
    );

    let script = format!(
        "id -u; pwd; cat /data/f; touch /data/g 2>/dev/null || echo read-only; \
         echo made here > made.txt; test -e {} || echo state-hidden",
        state.display()
    );
    // The plugin's first monitor assembles the job's root; the next ones have one made ahead
    // (a template their job's child enters and adds its binds to): the same job sees the same
    // filesystem either way.
    for (id, exec) in [(4, "good"), (5, "again"), (6, "and-again")] {
        let r = p.call(
            id,
            "executor_run",
            json!([request(exec, local_input(&data, "/data"), &script)]),
        );
        let r = &r["result"];
        assert_eq!(r["ErrorMsg"], "", "{exec}: {r}");
        assert_eq!(
            r["Stdout"], "4242\n/outputs\ninput data\nread-only\nstate-hidden\n",
            "{exec}: {r}"
        );
        assert_eq!(
            std::fs::read_to_string(results.join(exec).join("out/made.txt")).unwrap(),
            "made here\n"
        );
    }
    assert!(!data.join("g").exists());
    assert!(!state.join("executions/good/root").exists());
}

/// The field problems of an `InvalidParams` answer, as `field: message` lines.
fn problems(msg: &Value) -> Vec<String> {
    assert_eq!(msg["error"]["code"], -32602, "{msg}");
    msg["error"]["data"]["problems"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|p| format!("{}: {}", p["field"].as_str().unwrap_or(""), p["message"]))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn layout_errors_are_the_callers_invalid_params() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut p = RawPlugin::spawn();
    let init = p.call(
        0,
        "initialize",
        json!({"protocolVersions": ["1"], "config": {"stateDir": tmp.path().join("state")}}),
    );
    let jail = init["result"]["capabilities"]["filesystemIsolation"] == true;
    let volume = |source: &std::path::Path, target: &str| json!({"Volume": {"type": 1, "readOnly": true, "source": source, "target": target}});
    let request = |exec: &str, inputs: Value, outputs: Value, workdir: &str| {
        let mut params = json!({"Entrypoint": ["true"]});
        if !workdir.is_empty() {
            params["WorkingDirectory"] = json!(workdir);
        }
        json!({
            "ExecutionID": exec, "ResultsDir": tmp.path().join("results").join(exec),
            "Inputs": inputs, "Outputs": outputs,
            "EngineParams": {"Type": "native", "Params": params},
        })
    };
    let cases = [
        (
            request(
                "dotdot",
                json!([volume(&data, "/data/../etc")]),
                json!([]),
                "",
            ),
            "Inputs[0].Volume.target",
            "`..`",
        ),
        (
            request("proc", json!([volume(&data, "/proc/x")]), json!([]), ""),
            "Inputs[0].Volume.target",
            "reserved",
        ),
        (
            request(
                "twice",
                json!([volume(&data, "/data"), volume(&data, "/data/")]),
                json!([]),
                "",
            ),
            "Inputs[1].Volume.target",
            "also the target of Inputs[0]",
        ),
        (
            request(
                "collide",
                json!([volume(&data, "/data")]),
                json!([{"Name": "out", "Path": "/data"}]),
                "",
            ),
            "Outputs[0].Path",
            "also the target of Inputs[0]",
        ),
        (
            request(
                "escape",
                json!([]),
                json!([{"Name": "out", "Path": "/out/../../x"}]),
                "",
            ),
            "Outputs[0].Path",
            "`..`",
        ),
        (
            request("wd", json!([]), json!([]), "/work/../dev"),
            "EngineParams.Params.WorkingDirectory",
            "`..`",
        ),
    ];
    for (i, (req, field, what)) in cases.into_iter().enumerate() {
        let msg = p.call(1 + i as u64, "executor_start", json!([req]));
        let found = problems(&msg);
        assert!(
            found
                .iter()
                .any(|f| f.starts_with(field) && f.contains(what)),
            "{field} / {what}: {found:?}"
        );
    }

    if !jail {
        eprintln!("skipped the rest: the layout found while mounting needs filesystem isolation");
        return;
    }
    // Found only while the monitor assembles the root: still the caller's, on the right field.
    let gone = tmp.path().join("no-such-source");
    let msg = p.call(
        20,
        "executor_start",
        json!([request(
            "nosource",
            json!([volume(&gone, "/in")]),
            json!([]),
            ""
        )]),
    );
    let found = problems(&msg);
    assert!(
        found
            .iter()
            .any(|f| f.starts_with("Inputs[0].Volume.source")),
        "{found:?}"
    );
    let msg = p.call(
        21,
        "executor_start",
        json!([request(
            "nested",
            json!([
                volume(&data, "/data"),
                volume(&data, "/data/missing/deeper")
            ]),
            json!([]),
            "",
        )]),
    );
    let found = problems(&msg);
    assert!(
        found
            .iter()
            .any(|f| f.starts_with("Inputs[1].Volume.target")),
        "{found:?}"
    );
}

/// Issue 12, item 7: allow-list entries written as Bacalhau operators write them (doublestar
/// globs) match as Bacalhau matches them, and an entry that could never match is refused at
/// `initialize` instead of silently refusing every input.
#[test]
fn bacalhau_glob_entries_match_and_malformed_ones_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    std::fs::create_dir_all(data.join("set-1/deeper")).unwrap();
    std::fs::write(data.join("set-1/f"), "glob input\n").unwrap();
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).unwrap();

    let mut p = RawPlugin::spawn();
    let bad = p.call(
        0,
        "initialize",
        json!({"protocolVersions": ["1"], "config": {
            "stateDir": tmp.path().join("state"),
            "allowListedLocalPaths": [format!("{}/[ab", data.display()), "relative/*"],
        }}),
    );
    let found = problems(&bad);
    assert!(
        found
            .iter()
            .any(|f| f.starts_with("config.allowListedLocalPaths")
                && f.contains("[ab")
                && f.contains("relative/*")),
        "{found:?}"
    );

    let mut p = RawPlugin::spawn();
    let init = p.call(
        0,
        "initialize",
        json!({"protocolVersions": ["1"], "config": {
            "stateDir": tmp.path().join("state"),
            "allowListedLocalPaths": [format!("{}/set-*", data.display())],
        }}),
    );
    assert!(init.get("result").is_some(), "{init}");
    let bid = |source: &std::path::Path| {
        json!([bid_job(
            json!([{"Source": {"Type": "local", "Params": {"SourcePath": source}}, "Target": "/data"}])
        )])
    };
    let ok = p.call(1, "executor_shouldBid", bid(&data.join("set-1")));
    let no = p.call(2, "executor_shouldBid", bid(&data.join("set-1/deeper")));
    if init["result"]["capabilities"]["filesystemIsolation"] != true {
        eprintln!("skipped the rest: no filesystem isolation here");
        return;
    }
    assert_eq!(ok["result"]["ShouldBid"], true, "{ok}");
    assert_eq!(no["result"]["ShouldBid"], false, "{no}");
    let r = p.call(
        3,
        "executor_run",
        json!([{
            "JobID": "j-1", "ExecutionID": "binds-glob",
            "ResultsDir": tmp.path().join("results"),
            "Inputs": [local_input(&data.join("set-1"), "/data")],
            "EngineParams": {"Type": "native", "Params": {"Entrypoint": ["cat", "/data/f"]}},
        }]),
    );
    assert_eq!(r["result"]["Stdout"], "glob input\n", "{r}");
}
