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
