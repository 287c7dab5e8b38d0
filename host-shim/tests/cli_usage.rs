//! The CLI's usage text. Being an integration test of this package, it also makes
//! `cargo test --workspace` build the `executor-host` binary that the end-to-end tests run.

use std::process::Command;

#[test]
fn help_names_every_command_and_version_prints() {
    let exe = env!("CARGO_BIN_EXE_executor-host");
    let out = Command::new(exe).arg("--help").output().unwrap();
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for cmd in ["run", "plugins", "logs", "list", "cancel"] {
        assert!(help.contains(cmd), "{cmd} missing from:\n{help}");
    }
    let out = Command::new(exe).args(["run", "--help"]).output().unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--memory",
        "--timeout",
        "--network",
        "--input",
        "--output",
        "--env",
        "--json",
    ] {
        assert!(help.contains(flag), "{flag} missing from:\n{help}");
    }
    let out = Command::new(exe).arg("--version").output().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("executor-host "));
}
