//! The plugin's stdio JSON-RPC contract, driven over the real binary's pipes.

use std::process::{Command, Stdio};
use std::time::Duration;

use executor_tests::{native_plugin, RawPlugin};
use serde_json::json;

fn error_code(msg: &serde_json::Value) -> i64 {
    msg["error"]["code"]
        .as_i64()
        .unwrap_or_else(|| panic!("expected an error, got {msg}"))
}

#[test]
fn handshake_then_bad_input_is_answered_and_the_connection_stays_up() {
    let state = tempfile::tempdir().unwrap();
    let mut p = RawPlugin::spawn();
    let init = p.initialize(state.path());
    assert_eq!(init["result"]["protocolVersion"], "1");
    assert_eq!(init["result"]["engine"], "native");
    assert_eq!(init["result"]["plugin"]["name"], "executor-native");
    assert!(init["result"]["capabilities"].is_object());

    // Garbage: parse error, id null.
    p.send_raw(b"this is not json\n");
    let msg = p.recv();
    assert_eq!(error_code(&msg), -32700, "{msg}");
    assert_eq!(msg["id"], json!(null));
    assert_eq!(
        p.call(1, "executor_isInstalled", json!([]))["result"],
        json!(true)
    );

    // 20 MiB line: invalid request, id null, and the next line is read normally.
    let mut big = Vec::with_capacity(20 << 20);
    big.extend_from_slice(br#"{"jsonrpc":"2.0","id":99,"method":"executor_wait","params":[""#);
    big.resize(20 << 20, b'a');
    big.extend_from_slice(b"\"]}\n");
    p.send_raw(&big);
    let msg = p.recv();
    assert_eq!(error_code(&msg), -32600, "{msg}");
    assert_eq!(msg["id"], json!(null));
    assert_eq!(
        p.call(2, "executor_isInstalled", json!([]))["result"],
        json!(true)
    );

    // A batch is refused as a whole.
    p.send(&json!([
        {"jsonrpc": "2.0", "id": 10, "method": "executor_isInstalled"},
        {"jsonrpc": "2.0", "id": 11, "method": "executor_isInstalled"}
    ]));
    let msg = p.recv();
    assert_eq!(error_code(&msg), -32600, "{msg}");
    assert!(msg["error"]["message"].as_str().unwrap().contains("batch"));
    assert_eq!(
        p.call(3, "executor_isInstalled", json!([]))["result"],
        json!(true)
    );

    // Unknown method.
    let msg = p.call(4, "executor_frobnicate", json!([]));
    assert_eq!(error_code(&msg), -32601, "{msg}");

    // Wrong params: by position and by name.
    let msg = p.call(5, "executor_wait", json!([42]));
    assert_eq!(error_code(&msg), -32602, "{msg}");
    let msg = p.call(6, "executor_wait", json!({"nope": "x"}));
    assert_eq!(error_code(&msg), -32602, "{msg}");

    // Not a request object / wrong version: invalid request with the id echoed.
    p.send(&json!({"jsonrpc": "1.0", "id": 7, "method": "executor_isInstalled"}));
    let msg = p.recv();
    assert_eq!(error_code(&msg), -32600, "{msg}");
    assert_eq!(msg["id"], json!(7));

    // Params must be structured.
    let msg = p.call(71, "executor_list", json!(5));
    assert_eq!(error_code(&msg), -32600, "{msg}");

    // A notification is never answered; the next call is.
    p.send(&json!({"jsonrpc": "2.0", "method": "executor_isInstalled"}));
    assert_eq!(
        p.call(8, "executor_isInstalled", json!([]))["result"],
        json!(true)
    );

    // Shutdown answers null, then the plugin exits 0.
    let msg = p.call(9, "shutdown", json!({}));
    assert_eq!(msg["result"], json!(null), "{msg}");
    let status = p.wait_exit(Duration::from_secs(10));
    assert!(status.success(), "exit status {status}");
}

#[test]
fn calls_before_initialize_are_refused_and_versions_must_overlap() {
    let mut p = RawPlugin::spawn();
    let msg = p.call(1, "executor_isInstalled", json!([]));
    assert_eq!(error_code(&msg), -32011, "{msg}");
    assert_eq!(msg["error"]["data"]["code"], "NotInitialized");

    let msg = p.call(2, "initialize", json!({"protocolVersions": ["7", "8"]}));
    assert_eq!(error_code(&msg), -32010, "{msg}");
    let text = msg["error"]["message"].as_str().unwrap();
    assert!(
        text.contains("\"7\"") && text.contains("\"1\""),
        "names both sides: {text}"
    );

    // Params by position work too.
    let state = tempfile::tempdir().unwrap();
    let msg = p.call(
        3,
        "initialize",
        json!([["1"], null, {"stateDir": state.path()}]),
    );
    assert_eq!(msg["result"]["protocolVersion"], "1", "{msg}");
}

/// The (soft, hard) open-file limit `/proc/<pid>/limits` shows.
fn nofile_of(pid: u32) -> (String, String) {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap_or_else(|| panic!("no open-file line in {limits}"));
    let f: Vec<&str> = line.split_whitespace().collect();
    (f[3].to_string(), f[4].to_string())
}

#[test]
fn the_plugin_takes_its_hard_open_file_limit() {
    use nix::sys::resource::{getrlimit, Resource};
    use std::os::unix::process::CommandExt;
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    if hard <= 64 {
        eprintln!("skipped: the hard open-file limit here ({hard}) leaves nothing to raise");
        return;
    }
    let state = tempfile::tempdir().unwrap();
    // Started as a service manager often starts it: a low soft limit under a higher hard one.
    let mut p = RawPlugin::spawn_with(|cmd| {
        // SAFETY: only setrlimit, which is async-signal-safe, between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                nix::sys::resource::setrlimit(Resource::RLIMIT_NOFILE, 64, hard)
                    .map_err(std::io::Error::from)
            });
        }
    });
    p.initialize(state.path());
    assert_eq!(
        nofile_of(p.child.id()),
        (hard.to_string(), hard.to_string()),
        "the plugin runs at its hard open-file limit"
    );
    p.close_stdin();
    assert!(p.wait_exit(Duration::from_secs(10)).success());
}

#[test]
fn stdin_eof_makes_the_plugin_exit_cleanly() {
    let state = tempfile::tempdir().unwrap();
    let mut p = RawPlugin::spawn();
    p.initialize(state.path());
    p.close_stdin();
    let status = p.wait_exit(Duration::from_secs(10));
    assert!(status.success(), "exit status {status}");
}

#[test]
fn started_by_hand_without_the_cookie_it_explains_and_exits_1() {
    let out = Command::new(native_plugin())
        .env_remove("EXECUTOR_PLUGIN_COOKIE")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty());
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr:?}");
    assert!(stderr.contains("executor plugin"), "{stderr}");
    assert!(stderr.contains("EXECUTOR_PLUGIN_COOKIE"), "{stderr}");
}

#[test]
fn stray_prints_never_reach_the_protocol_stream() {
    // The plugin's fd 1 points at stderr after start-up: anything written there (a library's
    // println) must not appear on the protocol pipe. Diagnostics land on stderr as JSON lines.
    let state = tempfile::tempdir().unwrap();
    let mut p = RawPlugin::spawn_with(|c| {
        c.env("EXECUTOR_PLUGIN_LOG", "debug")
            .env("EXECUTOR_PLUGIN_SELFTEST_STRAY_PRINT", "1");
    });
    p.initialize(state.path());
    p.send_raw(b"garbage\n");
    let msg = p.recv();
    assert_eq!(error_code(&msg), -32700);
    p.call(1, "shutdown", json!([]));
    p.wait_exit(Duration::from_secs(10));
    p.assert_silent(Duration::from_millis(100));
}
