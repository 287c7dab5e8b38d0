//! Engine `wasm` end to end: `executor-wasm` serves the protocol, each module runs as the
//! plugin's own binary in run mode under the monitor, in the job's sandbox. Modules are the WAT
//! texts under `engines/wasm/testdata/`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use executor_schema::{LogEvent, LogStream};
use executor_tests::harness::{alive, is_root, serial, wait_until};
use executor_tests::{bin_path, RawPlugin};
use serde_json::{json, Value};

struct Wasm {
    state: tempfile::TempDir,
    work: tempfile::TempDir,
    plugin: RawPlugin,
    capabilities: Value,
    next_id: u64,
}

fn spawn() -> RawPlugin {
    RawPlugin::spawn_program(&bin_path("executor-wasm"), |_| {})
}

/// The plugin, or `None` (with the reason printed) where wasm jobs cannot run here.
fn setup() -> Option<Wasm> {
    if !is_root() {
        eprintln!("skipping: wasm jobs need a root plugin (filesystem isolation)");
        return None;
    }
    let state = tempfile::tempdir().unwrap();
    let mut plugin = spawn();
    let init = plugin.initialize(state.path());
    let capabilities = init["result"]["capabilities"].clone();
    if capabilities["filesystemIsolation"] != true {
        eprintln!("skipping: no filesystem isolation here: {capabilities}");
        return None;
    }
    assert_eq!(init["result"]["engine"], "wasm", "{init}");
    assert_eq!(init["result"]["plugin"]["name"], "executor-wasm", "{init}");
    Some(Wasm {
        state,
        work: tempfile::tempdir().unwrap(),
        plugin,
        capabilities,
        next_id: 1,
    })
}

fn wat(name: &str) -> Vec<u8> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../engines/wasm/testdata")
        .join(format!("{name}.wat"));
    wat::parse_file(path).unwrap()
}

impl Wasm {
    fn call(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        self.plugin.call(self.next_id, method, params)
    }

    fn results(&self, exec: &str) -> PathBuf {
        self.work.path().join(exec).join("results")
    }

    /// `name.wat` as a module file on the host.
    fn module(&self, name: &str) -> PathBuf {
        let dir = self.work.path().join("modules");
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(format!("{name}.wasm"));
        std::fs::write(&path, wat(name)).unwrap();
        path
    }

    /// A request running module `name`, an input at `/app/<name>.wasm` (alias `main`), with
    /// `extra` merged over it.
    fn request(&self, exec: &str, name: &str, extra: Value) -> Value {
        std::fs::create_dir_all(self.results(exec)).unwrap();
        let target = format!("/app/{name}.wasm");
        let mut req = json!({
            "JobID": "job-w",
            "ExecutionID": exec,
            "ResultsDir": self.results(exec),
            "Network": {"Type": "None"},
            "Inputs": [input(&self.module(name), &target, "main")],
            "EngineParams": {"Type": "wasm", "Params": {"EntryModule": target}},
        });
        for (k, v) in extra.as_object().unwrap() {
            req[k] = v.clone();
        }
        req
    }

    fn run(&mut self, exec: &str, name: &str, extra: Value) -> Value {
        let req = self.request(exec, name, extra);
        let msg = self.call("executor_run", json!([req]));
        msg.get("result")
            .cloned()
            .unwrap_or_else(|| panic!("run {exec} failed: {msg}"))
    }

    fn file(&self, exec: &str, name: &str) -> Vec<u8> {
        std::fs::read(self.results(exec).join(name)).unwrap_or_default()
    }
}

fn input(source: &Path, target: &str, alias: &str) -> Value {
    json!({
        "InputSource": {"Source": {"Type": "inline", "Params": {}}, "Alias": alias, "Target": target},
        "Volume": {"type": 1, "readOnly": true, "source": source, "target": target},
    })
}

#[test]
fn hello_world_on_stdout_and_stderr() {
    let _serial = serial();
    let Some(mut w) = setup() else { return };
    let r = w.run("w-hello", "hello", json!({}));
    assert_eq!(r["ExitCode"], 0, "{r}");
    assert_eq!(r["ErrorMsg"], "", "{r}");
    assert_eq!(r["Stdout"], "hello\n");
    assert_eq!(r["stderr"], "oops\n");
    assert_eq!(w.file("w-hello", "stdout"), b"hello\n");
    assert_eq!(w.file("w-hello", "stderr"), b"oops\n");
    assert_eq!(w.file("w-hello", "exitCode"), b"0");
    // The module is the input's alias too, and a second run finds it compiled.
    let mut req = w.request("w-hello2", "hello", json!({}));
    req["EngineParams"]["Params"]["EntryModule"] = json!("main");
    let msg = w.call("executor_run", json!([req]));
    assert_eq!(msg["result"]["Stdout"], "hello\n", "{msg}");
    let cached = std::fs::read_dir(w.state.path().join("wasm-cache"))
        .unwrap()
        .count();
    assert_eq!(cached, 1, "one module, compiled once");
    // Only None networks.
    assert_eq!(w.capabilities["networks"], json!(["None"]));
}

#[test]
fn proc_exit_is_the_exit_code_and_a_trap_fails_with_its_name() {
    let _serial = serial();
    let Some(mut w) = setup() else { return };
    let r = w.run("w-exit", "exit7", json!({}));
    assert_eq!(
        (r["ExitCode"].clone(), r["ErrorMsg"].clone()),
        (json!(7), json!(""))
    );
    assert_eq!(w.file("w-exit", "exitCode"), b"7");
    let r = w.run("w-trap", "trap", json!({}));
    assert_eq!(r["ExitCode"], 1, "{r}");
    assert_eq!(
        r["ErrorMsg"], "wasm trap: wasm `unreachable` instruction executed",
        "{r}"
    );
    let list = w.call("executor_list", json!([]));
    let trap = list["result"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["executionId"] == "w-trap")
        .cloned()
        .unwrap_or_default();
    assert_eq!(trap["state"], "failed", "{list}");
    assert_eq!(trap["errorMsg"], r["ErrorMsg"], "{list}");
    // Asked again (and by a restarted plugin), the same result.
    w.plugin.child.kill().unwrap();
    let _ = w.plugin.child.wait();
    w.plugin = spawn();
    w.plugin.initialize(w.state.path());
    let again = w.call("executor_wait", json!(["w-trap"]));
    assert_eq!(again["result"], r, "{again}");
}

#[test]
fn an_unknown_entrypoint_and_a_missing_module() {
    let _serial = serial();
    let Some(mut w) = setup() else { return };
    let mut req = w.request("w-entry", "hello", json!({}));
    req["EngineParams"]["Params"]["Entrypoint"] = json!("nope");
    let r = w.call("executor_run", json!([req]));
    assert_eq!(
        r["result"]["ErrorMsg"], "unable to find the entrypoint 'nope' in the WASM module",
        "{r}"
    );
    let mut req = w.request("w-missing", "hello", json!({}));
    req["EngineParams"]["Params"]["EntryModule"] = json!("/elsewhere/x.wasm");
    let r = w.call("executor_start", json!([req]));
    let message = r["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("failed to load entry module /elsewhere/x.wasm"),
        "{r}"
    );
    let req = json!({"ExecutionID": "w-empty", "ResultsDir": "/tmp/x",
        "EngineParams": {"Type": "wasm", "Params": {}}});
    let r = w.call("executor_start", json!([req]));
    assert!(
        r["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("invalid wasm engine entry module. target path cannot be empty"),
        "{r}"
    );
}

#[test]
fn args_and_env_reach_the_module() {
    let _serial = serial();
    let Some(mut w) = setup() else { return };
    let mut req = w.request("w-args", "argsenv", json!({"Env": {"FROM_REQUEST": "1"}}));
    req["EngineParams"]["Params"]["Parameters"] = json!(["a", "b c"]);
    req["EngineParams"]["Params"]["EnvironmentVariables"] = json!(["AWESOME=definitely"]);
    let r = w.call("executor_run", json!([req]));
    let out = r["result"]["Stdout"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(out.starts_with("\na\nb c\n"), "{r}");
    for want in [
        "AWESOME=definitely\n",
        "FROM_REQUEST=1\n",
        "BACALHAU_EXECUTION_ID=w-args\n",
    ] {
        assert!(out.contains(want), "{want:?} missing: {out}");
    }
    assert!(!out.contains("PATH="), "{out}");
}

#[test]
fn inputs_are_preopened_read_only_and_outputs_read_write() {
    let _serial = serial();
    let Some(mut w) = setup() else { return };
    let data = w.work.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("data.txt"), b"from the input\n").unwrap();
    // The module is a file inside the input directory (fd 3); the output is fd 4.
    std::fs::copy(w.module("copy"), data.join("copy.wasm")).unwrap();
    let mut req = w.request("w-copy", "copy", json!({}));
    req["Inputs"] = json!([input(&data, "/in", "data")]);
    req["Outputs"] = json!([{"Name": "out", "Path": "/out"}]);
    req["EngineParams"]["Params"]["EntryModule"] = json!("/in/copy.wasm");
    let r = w.call("executor_run", json!([req]));
    assert_eq!(r["result"]["ExitCode"], 0, "{r}");
    assert_eq!(
        std::fs::read(w.results("w-copy").join("out/copy.txt")).unwrap(),
        b"from the input\n"
    );
    assert!(!data.join("evil.txt").exists());
}

#[test]
fn memory_growth_past_the_limit_is_refused_and_over_4_gib_is_too() {
    let _serial = serial();
    let Some(mut w) = setup() else { return };
    if w.capabilities["limits"]["memory"] != true {
        eprintln!("skipping: memory limits are not enforced here");
        return;
    }
    let r = w.run(
        "w-grow",
        "grow",
        json!({"Resources": {"Memory": 64u64 << 20}}),
    );
    assert_eq!(r["ExitCode"], 3, "{r}");
    let r = w.run(
        "w-grow2",
        "grow",
        json!({"Resources": {"Memory": 512u64 << 20}}),
    );
    assert_eq!(r["ExitCode"], 0, "{r}");
    let req = w.request(
        "w-big",
        "grow",
        json!({"Resources": {"Memory": 5u64 << 30}}),
    );
    let r = w.call("executor_start", json!([req]));
    assert!(
        r["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("requested memory exceeds the wasm limit - 5.00 GB > 4.00 GB"),
        "{r}"
    );
}

#[test]
fn an_import_module_is_linked_by_name() {
    let _serial = serial();
    let Some(mut w) = setup() else { return };
    let mut req = w.request("w-lib", "uselib", json!({}));
    req["Inputs"]
        .as_array_mut()
        .unwrap()
        .push(input(&w.module("lib"), "/mods/lib.wasm", "lib"));
    req["EngineParams"]["Params"]["ImportModules"] = json!(["lib"]);
    let r = w.call("executor_run", json!([req]));
    assert_eq!(r["result"]["ExitCode"], 7, "{r}");
}

#[test]
fn an_endless_module_is_cancelled_and_timed_out() {
    let _serial = serial();
    let Some(mut w) = setup() else { return };
    let r = w.run("w-deadline", "loop", json!({"ExecutionTimeout": 1}));
    assert_eq!(r["ExitCode"], -1, "{r}");
    assert!(
        r["ErrorMsg"]
            .as_str()
            .unwrap()
            .contains("context deadline exceeded"),
        "{r}"
    );
    let req = w.request("w-cancel", "loop", json!({}));
    let msg = w.call("executor_start", json!([req]));
    assert_eq!(msg["result"], Value::Null, "{msg}");
    std::thread::sleep(Duration::from_millis(300));
    let msg = w.call("executor_cancel", json!(["w-cancel"]));
    assert_eq!(msg["result"], Value::Null, "{msg}");
    let r = w.call("executor_wait", json!(["w-cancel"]));
    assert_eq!(
        r["result"]["ErrorMsg"], "execution already cancelled",
        "{r}"
    );
    assert_eq!(r["result"]["ExitCode"], -1, "{r}");
}

#[test]
fn a_non_none_network_is_declined_with_a_reason() {
    let _serial = serial();
    let Some(mut w) = setup() else { return };
    let req = w.request("w-net", "hello", json!({"Network": {"Type": "Host"}}));
    let r = w.call("executor_start", json!([req]));
    assert!(
        r["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("runs modules without a network"),
        "{r}"
    );
    let job = json!({"Job": {"ID": "j", "Type": "batch", "Count": 1, "Tasks": [{"Name": "t",
        "Engine": {"Type": "wasm", "Params": {"EntryModule": "/app/m.wasm"}},
        "Network": {"Type": "Bridge"}, "Resources": {}}]}});
    let r = w.call("executor_shouldBid", json!([job]));
    assert_eq!(r["result"]["ShouldBid"], false, "{r}");
    assert!(
        r["result"]["Reason"]
            .as_str()
            .unwrap()
            .contains("without a network"),
        "{r}"
    );
    let job = json!({"Job": {"ID": "j", "Type": "batch", "Count": 1, "Tasks": [{"Name": "t",
        "Engine": {"Type": "native", "Params": {"Entrypoint": ["true"]}}, "Resources": {}}]}});
    let r = w.call("executor_shouldBid", json!([job]));
    assert_eq!(r["result"]["ShouldBid"], false, "{r}");
}

/// kill -9 the plugin while a module writes; a new plugin re-attaches, and a log follow
/// resumed at the last position loses and repeats nothing.
#[test]
fn plugin_killed_mid_run_reattaches_and_logs_resume() {
    let _serial = serial();
    let Some(mut w) = setup() else { return };
    let req = w.request("w-kill", "ticks", json!({}));
    let msg = w.call("executor_start", json!([req]));
    assert_eq!(msg["result"], Value::Null, "{msg}");
    let sub = w.call(
        "executor_subscribeLogs",
        json!([{"ExecutionID": "w-kill", "Follow": true}]),
    )["result"]
        .clone();
    let (mut got, mut next) = (Vec::new(), 0);
    while got.len() < 500 {
        let ev: LogEvent =
            serde_json::from_value(w.plugin.log_event(&sub, Duration::from_secs(20))).unwrap();
        if let LogEvent::Data { next: n, .. } = &ev {
            next = *n;
        }
        assert!(!matches!(ev, LogEvent::End { .. }), "ended too early");
        got.extend(ev.data_bytes());
    }
    w.plugin.child.kill().unwrap();
    let _ = w.plugin.child.wait();
    w.plugin = spawn();
    w.plugin.initialize(w.state.path());
    let sub = w.call(
        "executor_subscribeLogs",
        json!([{"ExecutionID": "w-kill", "Follow": true, "Position": next}]),
    )["result"]
        .clone();
    loop {
        let ev: LogEvent =
            serde_json::from_value(w.plugin.log_event(&sub, Duration::from_secs(20))).unwrap();
        match &ev {
            LogEvent::Data {
                stream: LogStream::Stdout,
                ..
            } => got.extend(ev.data_bytes()),
            LogEvent::Data { .. } => {}
            LogEvent::End { .. } => break,
        }
    }
    let want = "tick\n".repeat(300);
    assert_eq!(String::from_utf8_lossy(&got), want);
    let r = w.call("executor_wait", json!(["w-kill"]));
    assert_eq!(r["result"]["ExitCode"], 3, "{r}");
    assert_eq!(w.file("w-kill", "stdout"), want.as_bytes());
    let monitor = executor_tests::harness::recorded_monitors(w.state.path());
    for (pid, _) in monitor {
        wait_until(Duration::from_secs(10), "the monitor exits", || !alive(pid));
    }
}

/// `executor-host run --engine wasm -f req.json`: discovery finds executor-wasm beside
/// executor-native, and the host runs the plugin from its sealed copy (a memfd), which the
/// job's run mode re-executes through `/proc/self/exe`.
#[test]
fn the_host_cli_runs_a_module_with_engine_wasm() {
    let _serial = serial();
    let Some(w) = setup() else { return };
    let dir = w.work.path();
    let module = w.module("hello");
    let req =
        json!({"EngineParams": {"Type": "wasm", "Params": {"EntryModule": "/app/hello.wasm"}}});
    std::fs::write(dir.join("req.json"), req.to_string()).unwrap();
    let bin_dir = bin_path("executor-wasm").parent().unwrap().to_path_buf();
    let out = std::process::Command::new(bin_path("executor-host"))
        .current_dir(dir)
        .arg("--plugin-dir")
        .arg(&bin_dir)
        .arg("--state-dir")
        .arg(w.state.path().join("cli"))
        .args(["run", "--engine", "wasm", "--json", "-f", "req.json", "-i"])
        .arg(format!("{}:/app/hello.wasm", module.display()))
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(
        (r["Stdout"].clone(), r["ExitCode"].clone()),
        (json!("hello\n"), json!(0)),
        "{r}"
    );
    let plugins = std::process::Command::new(bin_path("executor-host"))
        .arg("--plugin-dir")
        .arg(&bin_dir)
        .arg("plugins")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&plugins.stdout);
    assert!(
        text.contains("engine wasm") && text.contains("engine native"),
        "{text}"
    );
}
