//! The `executor-wasm` binary as a person meets it. Being an integration test of this package,
//! it also makes `cargo test --workspace` build the binary, which the end-to-end tests in
//! `tests/tests/wasm.rs` drive.

use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_executor-wasm");

#[test]
fn version_names_the_plugin() {
    let out = Command::new(BIN).arg("--version").output().unwrap();
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.starts_with("executor-wasm "), "{text}");
}

#[test]
fn started_by_hand_it_explains_and_exits_1() {
    let out = Command::new(BIN)
        .env_remove("EXECUTOR_PLUGIN_COOKIE")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(text.contains("executor-host"), "{text}");
    assert!(out.stdout.is_empty(), "{out:?}");
}
