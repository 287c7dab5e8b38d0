//! The host's client transport over a child's pipes, against scripted fake plugins.

use std::time::Duration;

use executor_host::process::{PluginProcess, SpawnOptions};
use jsonrpsee::core::client::ClientT;
use jsonrpsee::rpc_params;

fn fake_plugin(script: &str) -> SpawnOptions {
    let mut opts = SpawnOptions::new("/bin/sh");
    opts.args = vec!["-c".into(), script.into()];
    opts
}

#[tokio::test]
async fn stray_lines_are_skipped_and_a_dying_plugin_fails_pending_calls_clearly() {
    // Answers the first request after a line of garbage, then dies while the second pends.
    let script = r#"
        read -r first
        echo 'not json at all'
        echo '{not json either'
        echo '{"jsonrpc":"2.0","id":0,"result":true}'
        read -r second
        echo 'fatal: out of cheese' >&2
        exit 3
    "#;
    let plugin = PluginProcess::spawn(fake_plugin(script)).await.unwrap();
    let first: bool = tokio::time::timeout(
        Duration::from_secs(10),
        plugin.client.request("executor_isInstalled", rpc_params![]),
    )
    .await
    .expect("answered in time")
    .expect("the garbage lines are skipped, the answer gets through");
    assert!(first);

    let second: Result<bool, _> = tokio::time::timeout(
        Duration::from_secs(10),
        plugin.client.request("executor_isInstalled", rpc_params![]),
    )
    .await
    .expect("the pending call fails instead of hanging");
    let err = second.expect_err("the plugin died").to_string();
    assert!(
        err.contains("exit status: 3"),
        "names the exit status: {err}"
    );
    assert!(
        err.contains("out of cheese"),
        "carries the last stderr line: {err}"
    );
    let tail = plugin.stderr_tail();
    assert_eq!(tail, vec!["fatal: out of cheese".to_string()]);
}

#[tokio::test]
async fn the_real_plugin_answers_the_typed_client() {
    use executor_schema::api::ExecutorApiClient;
    let exe =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/debug/executor-native");
    if !exe.exists() {
        eprintln!(
            "skipped: {} not built (cargo build --workspace)",
            exe.display()
        );
        return;
    }
    let state = tempfile::tempdir().unwrap();
    let mut plugin = PluginProcess::spawn(SpawnOptions::new(&exe)).await.unwrap();
    let config = executor_schema::PluginConfig {
        state_dir: Some(state.path().to_path_buf()),
        ..Default::default()
    };
    let init = plugin
        .client
        .initialize(vec!["1".into()], None, Some(config))
        .await
        .unwrap();
    assert_eq!(init.engine, "native");
    assert!(plugin.client.is_installed().await.unwrap());
    let err = plugin.client.wait("nope".into()).await.unwrap_err();
    let jsonrpsee::core::ClientError::Call(obj) = &err else {
        panic!("expected a call error, got {err}");
    };
    let typed = executor_schema::ExecutorError::from_error_object(obj).unwrap();
    assert_eq!(typed.code, executor_schema::ErrorCode::ExecutionNotFound);
    plugin.client.shutdown(None).await.unwrap();
    let status = tokio::time::timeout(Duration::from_secs(10), plugin.wait_exit())
        .await
        .unwrap();
    assert_eq!(status, "exit status: 0");
}

/// Answers `executor_subscribeLogs` with subscription `s1`, then prints `lines`.
fn fake_log_plugin(lines: &[&str]) -> SpawnOptions {
    let mut script =
        String::from("read -r req\necho '{\"jsonrpc\":\"2.0\",\"id\":0,\"result\":\"s1\"}'\n");
    for l in lines {
        script.push_str(&format!("echo '{l}'\n"));
    }
    // Stays up (until the host closes stdin) so that the end of the output is not the reason.
    script.push_str("cat >/dev/null\n");
    fake_plugin(&script)
}

const DATA: &str = r#"{"jsonrpc":"2.0","method":"executor_logs","params":{"subscription":"s1","result":{"type":"data","stream":"stdout","timestamp":"t","data":"aGk=","offset":0,"next":2}}}"#;
const END: &str = r#"{"jsonrpc":"2.0","method":"executor_logs","params":{"subscription":"s1","result":{"type":"end","offset":2}}}"#;

#[tokio::test]
async fn log_notifications_get_through_and_json_looking_garbage_is_still_skipped() {
    use executor_schema::api::ExecutorApiClient;
    use executor_schema::{LogEvent, LogStreamRequest};
    let plugin = PluginProcess::spawn(fake_log_plugin(&[
        r#"{"oops": }"#,
        DATA,
        r#"{"jsonrpc":"2.0","method":"executor_logs"} trailing"#,
        "not json between events",
        END,
    ]))
    .await
    .unwrap();
    let mut sub = plugin
        .client
        .subscribe_logs(LogStreamRequest::default())
        .await
        .unwrap();
    let mut got = Vec::new();
    while let Some(ev) = tokio::time::timeout(Duration::from_secs(10), sub.next())
        .await
        .expect("events in time")
    {
        got.push(ev.expect("a decodable event"));
        if matches!(got.last(), Some(LogEvent::End { .. })) {
            break;
        }
    }
    assert_eq!(got.len(), 2, "{got:?}");
    assert_eq!(got[0].data_bytes(), b"hi");
    assert_eq!(got[1], LogEvent::End { offset: 2 });
    assert!(
        plugin.client.is_connected(),
        "garbage lines did not end the client"
    );
}

#[tokio::test]
async fn a_broken_line_in_the_log_notification_shape_ends_the_client_instead_of_hanging() {
    use executor_schema::api::ExecutorApiClient;
    use executor_schema::LogStreamRequest;
    // Only the plugin's notification writer produces this start, so such a line is not checked
    // before jsonrpsee parses it; a broken one is a protocol failure, like a broken answer.
    let broken =
        r#"{"jsonrpc":"2.0","method":"executor_logs","params":{"subscription":"s1","result":{]}}}"#;
    let plugin = PluginProcess::spawn(fake_log_plugin(&[DATA, broken, END]))
        .await
        .unwrap();
    let mut sub = plugin
        .client
        .subscribe_logs(LogStreamRequest::default())
        .await
        .unwrap();
    let first = tokio::time::timeout(Duration::from_secs(10), sub.next())
        .await
        .expect("first event in time");
    assert_eq!(first.unwrap().unwrap().data_bytes(), b"hi");
    let next = tokio::time::timeout(Duration::from_secs(10), sub.next())
        .await
        .expect("the subscription ends instead of hanging");
    assert!(next.is_none(), "no event after the broken line: {next:?}");
    tokio::time::timeout(Duration::from_secs(10), plugin.client.on_disconnect())
        .await
        .expect("the client ends");
}

#[tokio::test]
async fn valid_json_that_is_no_message_for_us_is_skipped_and_the_connection_stays() {
    // Before each answer: JSON that is no message, a response to an id never asked, a batch,
    // a request from the plugin, and an error for no request.
    let noise = [
        r#"{"foo":1}"#,
        r#"{"jsonrpc":"2.0","id":999,"result":true}"#,
        r#"[{"jsonrpc":"2.0","id":0,"result":true}]"#,
        r#"{"jsonrpc":"2.0","id":5,"method":"executor_list"}"#,
        r#"{"jsonrpc":"2.0","id":null,"error":{"code":-32700,"message":"x"}}"#,
        r#"{"jsonrpc":"2.0","id":0,"result":true,"error":{"code":1,"message":"both"}}"#,
    ];
    let mut script = String::new();
    for id in 0..2 {
        script.push_str("read -r req\n");
        for n in noise {
            script.push_str(&format!("echo '{n}'\n"));
        }
        script.push_str(&format!(
            "echo '{{\"jsonrpc\":\"2.0\",\"id\":{id},\"result\":true}}'\n"
        ));
    }
    // An answer repeated: the id is no longer pending.
    script.push_str("read -r req\necho '{\"jsonrpc\":\"2.0\",\"id\":1,\"result\":true}'\n");
    script.push_str("echo '{\"jsonrpc\":\"2.0\",\"id\":2,\"result\":false}'\ncat >/dev/null\n");
    let plugin = PluginProcess::spawn(fake_plugin(&script)).await.unwrap();
    for want in [true, true, false] {
        let got: bool = tokio::time::timeout(
            Duration::from_secs(10),
            plugin.client.request("executor_isInstalled", rpc_params![]),
        )
        .await
        .expect("answered in time")
        .expect("the noise is skipped, the answer gets through");
        assert_eq!(got, want);
    }
    assert!(plugin.client.is_connected());
}
