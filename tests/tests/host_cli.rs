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
    assert!(stderr.starts_with("err\n"), "{stderr}");
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
    assert!(stderr.contains("execution already cancelled"), "{stderr}");

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
    assert!(
        e.contains("no matching key found on this server: docker. Only supports [native]"),
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
