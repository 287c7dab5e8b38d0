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
    let r = p.call(
        4,
        "executor_run",
        json!([request("good", local_input(&data, "/data"), &script)]),
    );
    let r = &r["result"];
    assert_eq!(r["ErrorMsg"], "", "{r}");
    assert_eq!(
        r["Stdout"], "4242\n/outputs\ninput data\nread-only\nstate-hidden\n",
        "{r}"
    );
    assert_eq!(
        std::fs::read_to_string(results.join("good/out/made.txt")).unwrap(),
        "made here\n"
    );
    assert!(!data.join("g").exists());
    assert!(!state.join("executions/good/root").exists());
}
