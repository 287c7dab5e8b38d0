//! The `executor-host` CLI, run as a user would.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use executor_tests::bin_path;

struct Env {
    cwd: tempfile::TempDir,
    state: tempfile::TempDir,
}

impl Env {
    fn new() -> Env {
        Env {
            cwd: tempfile::tempdir().unwrap(),
            state: tempfile::tempdir().unwrap(),
        }
    }

    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(bin_path("executor-host"));
        c.current_dir(self.cwd.path())
            .arg("--state-dir")
            .arg(self.state.path())
            .args(args)
            .stdin(Stdio::null());
        c
    }

    fn output(&self, args: &[&str]) -> Output {
        let mut child = self
            .cmd(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        while child.try_wait().unwrap().is_none() {
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("executor-host {args:?} did not finish");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        child.wait_with_output().unwrap()
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// The results directory the summary names.
fn results_dir(stderr: &str) -> PathBuf {
    let line = stderr
        .lines()
        .find_map(|l| l.strip_prefix("--- results: "))
        .unwrap_or_else(|| panic!("no results line in {stderr:?}"));
    PathBuf::from(line)
}

#[test]
fn run_streams_output_exits_with_the_code_and_leaves_result_files() {
    let env = Env::new();
    let out = env.output(&["run", "--", "sh", "-c", "echo out; echo err >&2; exit 3"]);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(3), "stderr: {stderr}");
    assert_eq!(stdout, "out\n");
    assert!(stderr.contains("\nerr\n"), "{stderr}");
    assert!(stderr.contains("exit code 3"), "{stderr}");
    let dir = results_dir(&stderr);
    assert!(dir.starts_with(env.cwd.path()), "{}", dir.display());
    assert_eq!(std::fs::read(dir.join("stdout")).unwrap(), b"out\n");
    assert_eq!(std::fs::read(dir.join("stderr")).unwrap(), b"err\n");
    assert_eq!(std::fs::read(dir.join("exitCode")).unwrap(), b"3");
    if nix::unistd::geteuid().is_root() {
        // With a cgroup, even a job this short reports its final usage.
        assert!(stderr.contains(", cpu "), "{stderr}");
        assert!(stderr.contains(", peak memory "), "{stderr}");
    }
}

#[test]
fn output_arrives_while_the_job_still_runs() {
    let env = Env::new();
    // The flag lives in an output directory: the job sees it at the same path whether or not
    // it runs in a private root.
    let results = env.cwd.path().join("results");
    let shared = results.join("shared");
    let flag = shared.join("go-on");
    let script = format!(
        "echo early; while [ ! -e {} ]; do sleep 0.05; done; echo late",
        flag.display()
    );
    let output = format!("shared:{}", shared.display());
    let mut child = env
        .cmd(&[
            "run",
            "--results",
            results.to_str().unwrap(),
            "--output",
            &output,
            "--",
            "sh",
            "-c",
            &script,
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut first = String::new();
    stdout.read_line(&mut first).unwrap();
    assert_eq!(first, "early\n");
    // The job is blocked on the flag, so this line came out while it ran.
    assert!(child.try_wait().unwrap().is_none());
    std::fs::write(&flag, "").unwrap();
    let mut rest = String::new();
    stdout.read_to_string(&mut rest).unwrap();
    assert_eq!(rest, "late\n");
    assert_eq!(child.wait().unwrap().code(), Some(0));
}

#[test]
fn json_result_limits_and_results_dir() {
    let env = Env::new();
    let results = env.cwd.path().join("my-results");
    let out = env.output(&[
        "run",
        "--json",
        "--memory",
        "256MiB",
        "--cpu",
        "0.5",
        "--timeout",
        "1m",
        "--env",
        "GREETING=hi there",
        "--results",
        results.to_str().unwrap(),
        "--",
        "sh",
        "-c",
        "printf \"$GREETING\"",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["Stdout"], "hi there");
    assert_eq!(r["ExitCode"], 0);
    assert_eq!(std::fs::read(results.join("stdout")).unwrap(), b"hi there");
}

#[test]
fn a_timeout_fails_the_job_with_a_deadline_error() {
    let env = Env::new();
    let out = env.output(&["run", "--timeout", "500ms", "--", "sleep", "30"]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("context deadline exceeded"), "{stderr}");
}

#[test]
fn run_from_a_request_file() {
    let env = Env::new();
    let results = env.cwd.path().join("r");
    std::fs::create_dir(&results).unwrap();
    let req = serde_json::json!({
        "ExecutionID": "from-file",
        "ResultsDir": results,
        "EngineParams": {"Type": "native", "Params": {"Entrypoint": ["sh", "-c", "echo filed; exit 4"]}},
    });
    let file = env.cwd.path().join("req.json");
    std::fs::write(&file, req.to_string()).unwrap();
    let out = env.output(&["run", "-f", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(4), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "filed\n");
    assert_eq!(std::fs::read(results.join("exitCode")).unwrap(), b"4");
}

#[test]
fn list_logs_and_cancel_work_across_invocations() {
    let env = Env::new();
    let mut first = env
        .cmd(&[
            "run",
            "--id",
            "long-one",
            "--",
            "sh",
            "-c",
            "echo started; sleep 60",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(first.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line, "started\n");

    let list = env.output(&["list"]);
    let listed = text(&list.stdout);
    assert!(
        listed
            .lines()
            .any(|l| l.starts_with("long-one") && l.contains("running")),
        "{listed}"
    );
    let logs = env.output(&["logs", "long-one"]);
    assert_eq!(text(&logs.stdout), "started\n");

    let cancel = env.output(&["cancel", "long-one"]);
    assert_eq!(cancel.status.code(), Some(0), "{}", text(&cancel.stderr));
    let status = first.wait().unwrap();
    let mut stderr = String::new();
    first
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("--- long-one: cancelled,"), "{stderr}");

    let json = env.output(&["list", "--json"]);
    let execs: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(execs[0]["executionId"], "long-one");
    assert_eq!(execs[0]["state"], "cancelled");
}

#[test]
fn errors_say_what_to_do() {
    let env = Env::new();
    let out = env.output(&["run"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("after --"),
        "{}",
        text(&out.stderr)
    );

    let out = env.output(&["logs", "no-such-execution"]);
    assert_eq!(out.status.code(), Some(1));
    let e = text(&out.stderr);
    assert!(
        e.contains("execution not found") && e.contains("executor-host list"),
        "{e}"
    );

    let out = env.output(&["run", "--engine", "Docker", "--", "true"]);
    let e = text(&out.stderr);
    let dir = bin_path("executor-host");
    let dir = dir.parent().unwrap().display().to_string();
    assert!(
        e.contains(&format!("no plugin for engine docker found in {dir}")),
        "{e}"
    );

    let out = env.output(&["run", "--memory", "lots", "--", "true"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("256MiB"),
        "{}",
        text(&out.stderr)
    );

    let empty = tempfile::tempdir().unwrap();
    let out = env.output(&[
        "--plugin-dir",
        empty.path().to_str().unwrap(),
        "run",
        "--",
        "true",
    ]);
    let e = text(&out.stderr);
    assert!(e.contains("--plugin-dir"), "{e}");
}

#[test]
fn plugins_lists_the_native_engine() {
    let env = Env::new();
    let out = env.output(&["plugins", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let native = rows
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["engine"] == "native")
        .unwrap_or_else(|| panic!("{rows}"));
    assert_eq!(native["installed"], true);
    assert_eq!(native["plugin"]["name"], "executor-native");
    assert!(Path::new(native["path"].as_str().unwrap()).ends_with("executor-native"));
    assert!(native["capabilities"]["cgroupMode"].is_string());
}

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Skip (with the reason printed) a test whose job needs a private root to see its inputs.
fn needs_root(test: &str) -> bool {
    if is_root() {
        return true;
    }
    eprintln!("skipping {test}: inputs are mounted into a private root, which needs root");
    false
}

/// Read `child`'s stderr up to the start line; the rest keeps arriving on the returned reader.
fn wait_for_start(
    child: &mut std::process::Child,
) -> (String, BufReader<std::process::ChildStderr>) {
    let mut err = BufReader::new(child.stderr.take().unwrap());
    let mut seen = String::new();
    loop {
        let mut line = String::new();
        if err.read_line(&mut line).unwrap() == 0 {
            panic!("no start line on stderr: {seen}");
        }
        seen.push_str(&line);
        if line.starts_with("--- follow: ") {
            return (seen, err);
        }
    }
}

fn entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn an_input_works_with_no_config_and_is_read_only_unless_rw() {
    if !needs_root("an_input_works_with_no_config_and_is_read_only_unless_rw") {
        return;
    }
    let env = Env::new();
    let data = env.cwd.path().join("data");
    std::fs::create_dir(&data).unwrap();
    std::fs::write(data.join("in.txt"), "from the host\n").unwrap();
    // The job runs as a uid of its own: let it write here, so that only the mount decides.
    std::fs::set_permissions(&data, std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();

    // A relative source, as a person types it, with -i.
    let out = env.output(&["run", "-i", "data:/data", "cat", "/data/in.txt"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "from the host\n");

    let out = env.output(&[
        "run",
        "--input",
        "data:/data",
        "sh",
        "-c",
        "echo x > /data/new",
    ]);
    assert_ne!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("Read-only"),
        "{}",
        text(&out.stderr)
    );
    assert!(!data.join("new").exists());

    let out = env.output(&[
        "run",
        "-i",
        "data:/data:rw",
        "sh",
        "-c",
        "echo x > /data/new",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(std::fs::read(data.join("new")).unwrap(), b"x\n");

    // A name with glob syntax is allowed as itself, not read as a pattern.
    let odd = env.cwd.path().join("odd[1]*{a,b}?\\");
    std::fs::create_dir(&odd).unwrap();
    std::fs::write(odd.join("f"), "odd\n").unwrap();
    let spec = format!("{}:/odd", odd.display());
    let out = env.output(&["run", "-i", &spec, "cat", "/odd/f"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "odd\n");
}

#[test]
fn docker_style_flags_and_a_command_without_double_dash() {
    let env = Env::new();
    let out = env
        .cmd(&[
            "run",
            "--cpus",
            "500m",
            "-m",
            "256Mi",
            "-w",
            "/",
            "-e",
            "CLI_TEST_PASSED",
            "-e",
            "SET=here",
            "--timeout",
            "0",
            "--json",
            "sh",
            "-c",
            "echo \"$CLI_TEST_PASSED $SET $(pwd)\"",
        ])
        .env("CLI_TEST_PASSED", "through")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["Stdout"], "through here /\n", "{r}");

    // `--cpu` is the same flag; an option-like argument after the program is the program's.
    let out = env.output(&["run", "--cpu", "0.5", "ls", "-d", "/"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "/\n");
}

#[test]
fn an_output_flag_keeps_the_directory_in_the_results() {
    if !needs_root("an_output_flag_keeps_the_directory_in_the_results") {
        return;
    }
    let env = Env::new();
    let out = env.output(&["run", "-o", "out:/out", "sh", "-c", "echo kept > /out/f"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let dir = results_dir(&text(&out.stderr));
    assert_eq!(std::fs::read(dir.join("out/f")).unwrap(), b"kept\n");
}

#[test]
fn impossible_requests_are_refused_with_a_message_and_leave_nothing() {
    let env = Env::new();
    let before = entries(env.cwd.path());
    let out = env.output(&["run", "--memory", "100", "true"]);
    let e = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{e}");
    assert!(e.contains("--memory") && e.contains("too small"), "{e}");

    let out = env.output(&["run", "--cpus", "100000", "true"]);
    let e = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{e}");
    assert!(e.contains("--cpus") && e.contains("this host has"), "{e}");

    let out = env
        .cmd(&["run", "-e", "CLI_TEST_UNSET", "true"])
        .env_remove("CLI_TEST_UNSET")
        .output()
        .unwrap();
    let e = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{e}");
    assert!(e.contains("CLI_TEST_UNSET is not set"), "{e}");

    // The same for a request file's limits, named as its fields.
    let req = serde_json::json!({
        "EngineParams": {"Type": "native", "Params": {"Entrypoint": ["true"]}},
        "Resources": {"Memory": 4096},
    });
    let small = env.state.path().join("small.json");
    std::fs::write(&small, req.to_string()).unwrap();
    let out = env.output(&["run", "-f", small.to_str().unwrap()]);
    let e = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{e}");
    assert!(
        e.contains("Resources.Memory") && e.contains("too small"),
        "{e}"
    );

    // A request the plugin refuses: the results directory made for it goes again.
    let req = serde_json::json!({
        "EngineParams": {"Type": "native", "Params": {"Entrypoint": ["true"]}},
        "Inputs": [{"InputSource": {"Source": {"Type": "local", "Params": {"SourcePath": "/etc"}}, "Target": "/etc-in"},
                    "Volume": {"Type": 1, "ReadOnly": true, "Source": "/etc", "Target": "/etc-in"}}],
    });
    let file = env.state.path().join("req.json");
    std::fs::write(&file, req.to_string()).unwrap();
    let out = env.output(&["run", "-f", file.to_str().unwrap()]);
    let e = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{e}");
    assert!(e.contains("not allow-listed"), "{e}");
    assert_eq!(entries(env.cwd.path()), before, "{e}");
}

#[test]
fn detach_then_logs_follow_then_cancel() {
    let env = Env::new();
    let out = env.output(&["run", "-d", "sh", "-c", "echo begun; sleep 60"]);
    let e = text(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{e}");
    let id = text(&out.stdout).trim().to_string();
    assert!(id.starts_with("run-"), "{id:?}");
    // The start line says how to reach it.
    assert!(
        e.contains(&format!("--- started {id} (network none); results in ")),
        "{e}"
    );
    assert!(
        e.contains(&format!("logs -f {id}")) && e.contains(&format!("cancel {id}")),
        "{e}"
    );

    let mut follow = env
        .cmd(&["logs", "-f", &id])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(follow.stdout.take().unwrap());
    let mut first = String::new();
    stdout.read_line(&mut first).unwrap();
    assert_eq!(first, "begun\n");
    assert!(follow.try_wait().unwrap().is_none(), "logs -f ended early");

    let cancel = env.output(&["cancel", &id]);
    assert_eq!(cancel.status.code(), Some(0), "{}", text(&cancel.stderr));
    // The follower ends with the execution.
    assert_eq!(follow.wait().unwrap().code(), Some(0));
    let list = env.output(&["list"]);
    assert!(
        text(&list.stdout)
            .lines()
            .any(|l| l.starts_with(&id) && l.contains("cancelled")),
        "{}",
        text(&list.stdout)
    );
}

#[test]
fn sigterm_and_sighup_cancel_the_job_and_exit_130() {
    for (signal, name) in [
        (nix::sys::signal::Signal::SIGTERM, "SIGTERM"),
        (nix::sys::signal::Signal::SIGHUP, "SIGHUP"),
        (nix::sys::signal::Signal::SIGINT, "Ctrl-C"),
    ] {
        let env = Env::new();
        let id = format!("cli-signal-{}", name.to_lowercase());
        let mut child = env
            .cmd(&["run", "--id", &id, "sleep", "60"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let (_, mut err) = wait_for_start(&mut child);
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), signal).unwrap();
        let mut rest = String::new();
        err.read_to_string(&mut rest).unwrap();
        let status = child.wait().unwrap();
        assert_eq!(status.code(), Some(130), "{name}: {rest}");
        assert!(
            rest.contains(&format!("{name} received; cancelling {id}")),
            "{rest}"
        );
        assert!(
            rest.contains(&format!("--- {id}: cancelled ({name})")),
            "{rest}"
        );
        let list = env.output(&["list", "--json"]);
        let execs: serde_json::Value = serde_json::from_slice(&list.stdout).unwrap();
        assert_eq!(execs[0]["state"], "cancelled", "{name}: {execs}");
    }
}

/// A config file the host accepts: private to its owner.
fn write_config(dir: &Path, body: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join("host.toml");
    std::fs::write(&path, body).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    path
}

#[test]
fn config_file_keys_reach_initialize_and_config_prints_them() {
    let env = Env::new();
    let conf_dir = tempfile::tempdir().unwrap();
    let state = conf_dir.path().join("state");
    let allowed = env.cwd.path().join("allowed");
    std::fs::create_dir(&allowed).unwrap();
    std::fs::write(allowed.join("f"), "allowed by the file\n").unwrap();
    let config = write_config(
        conf_dir.path(),
        &format!(
            "[engines.native]\nstateDir = {state:?}\nallowListedLocalPaths = [\"{}:ro\"]\n\
             jobUidRange = {{ min = 71717, max = 71717 }}\nretention = 120\n",
            allowed.display()
        ),
    );
    let config = config.to_str().unwrap();
    // No --state-dir: the file's stateDir is used.
    let host = |args: &[&str]| {
        Command::new(bin_path("executor-host"))
            .current_dir(env.cwd.path())
            .stdin(Stdio::null())
            .arg("--config")
            .arg(config)
            .args(args)
            .output()
            .unwrap()
    };
    let out = host(&["run", "--id", "cli-config-uid", "id", "-u"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    if is_root() {
        assert_eq!(text(&out.stdout), "71717\n", "jobUidRange did not arrive");
    }
    assert!(
        state.join("executions").exists(),
        "stateDir did not arrive: {:?}",
        entries(conf_dir.path())
    );

    // allowListedLocalPaths: a request file's local input (never allowed by the CLI itself).
    if is_root() {
        let req = serde_json::json!({
            "EngineParams": {"Type": "native", "Params": {"Entrypoint": ["cat", "/in/f"]}},
            "Inputs": [{"InputSource": {"Source": {"Type": "local", "Params": {"SourcePath": allowed}}, "Target": "/in"},
                        "Volume": {"Type": 1, "ReadOnly": true, "Source": allowed, "Target": "/in"}}],
        });
        let file = conf_dir.path().join("req.json");
        std::fs::write(&file, req.to_string()).unwrap();
        let out = host(&["run", "-f", file.to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
        assert_eq!(text(&out.stdout), "allowed by the file\n");
    }

    let out = host(&["config"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let printed = text(&out.stdout);
    for key in [
        "stateDir",
        "allowListedLocalPaths",
        "retention = 120",
        "min = 71717",
        "callTimeout = \"30s\"",
        "pluginDirs",
    ] {
        assert!(printed.contains(key), "{key} missing from:\n{printed}");
    }

    // A file others could write is not read: it decides which programs run.
    std::fs::set_permissions(
        conf_dir.path().join("host.toml"),
        std::os::unix::fs::PermissionsExt::from_mode(0o666),
    )
    .unwrap();
    let out = host(&["list"]);
    let e = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{e}");
    assert!(e.contains("writable by group or others"), "{e}");
}

#[test]
fn a_bad_state_dir_is_one_line_naming_the_flag() {
    let env = Env::new();
    let file = env.cwd.path().join("not-a-dir");
    std::fs::write(&file, "").unwrap();
    let out = Command::new(bin_path("executor-host"))
        .current_dir(env.cwd.path())
        .stdin(Stdio::null())
        .args(["--state-dir", file.to_str().unwrap(), "run", "true"])
        .output()
        .unwrap();
    let e = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{e}");
    assert_eq!(e.lines().count(), 1, "{e}");
    assert!(e.contains("--state-dir"), "{e}");
    for noise in ["ErrorObject", "crashed", "config.stateDir", "\x1b["] {
        assert!(!e.contains(noise), "{noise:?} in {e}");
    }
}

/// The README's quickstart, run as written: the commands must be in README.md verbatim, and
/// work. `executor-host` is found on PATH as a wrapper that adds a private --state-dir.
#[test]
fn the_readme_commands_work() {
    if !needs_root("the_readme_commands_work") {
        return;
    }
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md"))
            .unwrap();
    let env = Env::new();
    let bin = tempfile::tempdir().unwrap();
    let wrapper = bin.path().join("executor-host");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\nexec {} --state-dir {} \"$@\"\n",
            bin_path("executor-host").display(),
            env.state.path().display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(
        &wrapper,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let path = format!(
        "{}:{}",
        bin.path().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let sh = |script: &str| {
        assert!(readme.contains(script), "README.md no longer has: {script}");
        Command::new("sh")
            .arg("-c")
            .arg(script)
            .current_dir(env.cwd.path())
            .env("PATH", &path)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    };
    let out = sh("executor-host run sh -c 'echo hello; echo oops >&2; exit 3'");
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "hello\n");

    std::fs::create_dir(env.cwd.path().join("data")).unwrap();
    std::fs::write(env.cwd.path().join("data/a.txt"), "1\n2\n").unwrap();
    let out = sh("executor-host run --cpus 500m -m 256Mi --timeout 1m -i ./data:/data -o out:/out \\\n    sh -c 'wc -l /data/* > /out/counts'");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let dir = results_dir(&text(&out.stderr));
    assert_eq!(
        text(&std::fs::read(dir.join("out/counts")).unwrap()),
        "2 /data/a.txt\n"
    );

    let out = sh("id=$(executor-host run -d sh -c 'echo started; sleep 600')\nexecutor-host logs \"$id\"\nexecutor-host cancel \"$id\"");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
}

#[test]
fn a_second_signal_stops_waiting_for_a_job_that_ignores_the_first() {
    let env = Env::new();
    let conf_dir = tempfile::tempdir().unwrap();
    // A grace far longer than the test needs: the cancel is still under way at the second one.
    let config = write_config(conf_dir.path(), "[engines.native]\nkillGrace = 10\n");
    let id = "cli-signal-twice";
    let mut child = env
        .cmd(&[
            "--config",
            config.to_str().unwrap(),
            "run",
            "--id",
            id,
            "sh",
            "-c",
            "trap '' TERM; sleep 60",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (_, mut err) = wait_for_start(&mut child);
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let mut line = String::new();
    err.read_line(&mut line).unwrap();
    assert!(line.contains("SIGTERM received; cancelling"), "{line}");
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT).unwrap();
    let mut rest = String::new();
    err.read_to_string(&mut rest).unwrap();
    assert_eq!(child.wait().unwrap().code(), Some(130), "{rest}");
    assert!(
        rest.contains("Ctrl-C again; not waiting for cli-signal-twice"),
        "{rest}"
    );
    // The cancel goes on without us: the job is killed at the end of its grace.
    let follow = env.output(&["logs", "-f", id]);
    assert_eq!(follow.status.code(), Some(0), "{}", text(&follow.stderr));
    let list = env.output(&["list", "--json"]);
    let execs: serde_json::Value = serde_json::from_slice(&list.stdout).unwrap();
    assert_eq!(execs[0]["state"], "cancelled", "{execs}");
}

#[test]
fn the_default_config_file_is_read_for_a_user() {
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::process::CommandExt;
    let top = tempfile::tempdir().unwrap();
    std::fs::set_permissions(top.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let home = top.path().join("home");
    let dir = home.join(".config/executor-plugins");
    std::fs::create_dir_all(&dir).unwrap();
    let file = write_config(&dir, "disabled = [\"cli-default-location\"]\n");
    let mut cmd = Command::new(bin_path("executor-host"));
    cmd.arg("config")
        .env_clear()
        .env("HOME", &home)
        .stdin(Stdio::null());
    if is_root() {
        // Root's file is /etc/executor-plugins/host.toml: look as an ordinary user instead.
        let nobody = 65534;
        for p in [&home, &home.join(".config"), &dir, &file] {
            std::os::unix::fs::chown(p, Some(nobody), Some(nobody)).unwrap();
        }
        cmd.uid(nobody).gid(nobody);
    }
    let out = match cmd.output() {
        Ok(out) => out,
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
            eprintln!("skipping: an ordinary user cannot run the binary where it was built: {e}");
            return;
        }
        Err(e) => panic!("{e}"),
    };
    let printed = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(
        printed.contains(&format!("# config file: {}", file.display())),
        "{printed}"
    );
    assert!(printed.contains("cli-default-location"), "{printed}");
}

/// The CLI's default network is None, as `bacalhau docker run`'s: it asks for it by name, so a
/// plugin whose `Default` is Bridge (a way out) does not give a job a network nobody asked for.
/// `--network bridge` asks for one.
#[test]
fn the_cli_default_network_is_none_and_bridge_is_asked_for() {
    if !needs_root("the_cli_default_network_is_none_and_bridge_is_asked_for") {
        return;
    }
    let env = Env::new();
    let out = env.output(&["run", "cat", "/proc/net/dev"]);
    let e = text(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{e}");
    let interfaces: Vec<String> = text(&out.stdout)
        .lines()
        .skip(2)
        .filter_map(|l| l.split(':').next().map(|n| n.trim().to_string()))
        .collect();
    assert_eq!(interfaces, ["lo"], "{e}");
    assert!(e.contains("(network none)"), "{e}");
    let plugins = env.output(&["plugins", "--json"]);
    if !text(&plugins.stdout).contains("\"Bridge\"") {
        eprintln!("skipped the bridge half: this host has no Bridge");
        return;
    }
    let out = env.output(&["run", "--network", "bridge", "cat", "/proc/net/dev"]);
    let e = text(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{e}");
    assert!(text(&out.stdout).contains("eth0"), "{e}");
    assert!(e.contains("(network bridge)"), "{e}");
}
