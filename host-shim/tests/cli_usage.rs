//! The CLI's usage text. Being an integration test of this package, it also makes
//! `cargo test --workspace` build the `executor-host` binary that the end-to-end tests run.

use std::process::Command;

#[test]
fn help_names_every_command_and_version_prints() {
    let exe = env!("CARGO_BIN_EXE_executor-host");
    let out = Command::new(exe).arg("--help").output().unwrap();
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for cmd in ["run", "plugins", "logs", "list", "cancel", "config"] {
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

#[test]
fn run_help_separates_run_options_describes_each_and_shows_examples() {
    let exe = env!("CARGO_BIN_EXE_executor-host");
    let out = Command::new(exe).args(["run", "--help"]).output().unwrap();
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    let run_at = help.find("Run options:").expect("a Run options heading");
    let global_at = help
        .find("Global options:")
        .expect("a Global options heading");
    let (run, global) = if run_at < global_at {
        (&help[run_at..global_at], &help[global_at..])
    } else {
        (&help[run_at..], &help[global_at..run_at])
    };
    for flag in [
        "--engine",
        "--cpus",
        "--memory",
        "-m,",
        "--workdir",
        "-w,",
        "--detach",
        "-d,",
        "-i,",
        "-o,",
    ] {
        assert!(
            run.contains(flag),
            "{flag} missing from the run options:\n{help}"
        );
    }
    for flag in ["--state-dir", "--config", "--plugin-dir"] {
        assert!(
            global.contains(flag),
            "{flag} not among the global options:\n{help}"
        );
        assert!(!run.contains(flag), "{flag} among the run options:\n{help}");
    }
    // Every option says what it is: no line of an option without text after it.
    for line in help.lines().filter(|l| l.trim_start().starts_with('-')) {
        let words = line.split_whitespace().count();
        assert!(words > 3, "undescribed option: {line:?}");
    }
    for must in [
        "[default: native]",
        "Default: none",
        "Examples:",
        "/dev/null",
        "executor-host run -d",
        "(schema/PROTOCOL.md)",
    ] {
        assert!(help.contains(must), "{must:?} missing from:\n{help}");
    }
    let out = Command::new(exe).args(["list", "--help"]).output().unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(help.contains("(schema/PROTOCOL.md)"), "{help}");
}
