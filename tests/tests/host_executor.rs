//! The host shim's `Executor` trait against the real `executor-native` plugin.

use std::time::{Duration, Instant};

use executor_host::error::HostError;
use executor_host::{demux_stdcopy, Executor, PluginExecutor, Supervision};
use executor_schema::{
    ErrorCode, ExecutorError, LogEvent, LogStreamRequest, Network, NetworkConfig, RunCommandResult,
};
use executor_tests::host::{kill9, native_executor, native_executor_with, sh_request};
use futures::StreamExt;
use tokio::io::AsyncReadExt;

struct Env {
    _state: tempfile::TempDir,
    work: tempfile::TempDir,
    exec: PluginExecutor,
}

impl Env {
    fn new() -> Env {
        let state = tempfile::tempdir().unwrap();
        let exec = native_executor(state.path());
        Env {
            _state: state,
            work: tempfile::tempdir().unwrap(),
            exec,
        }
    }

    fn req(&self, id: &str, script: &str) -> executor_schema::RunCommandRequest {
        sh_request(self.work.path(), id, script)
    }

    fn file(&self, id: &str, name: &str) -> Vec<u8> {
        std::fs::read(self.work.path().join(id).join(name)).unwrap()
    }
}

const LONG: Duration = Duration::from_secs(60);

async fn within<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(LONG, f)
        .await
        .unwrap_or_else(|_| panic!("{what} did not finish in {LONG:?}"))
}

fn code(r: Result<impl std::fmt::Debug, HostError>) -> Option<ErrorCode> {
    match r {
        Ok(v) => panic!("expected an error, got {v:?}"),
        Err(e) => e.code(),
    }
}

#[tokio::test]
async fn run_returns_the_result_and_writes_the_files() {
    let env = Env::new();
    assert!(env.exec.is_installed().await.unwrap());
    let r = within(
        "run",
        env.exec
            .run(env.req("run-1", "echo out; echo err >&2; exit 3"), None),
    )
    .await
    .unwrap();
    assert_eq!(
        r,
        RunCommandResult {
            stdout: "out\n".into(),
            stdout_truncated: false,
            stderr: "err\n".into(),
            stderr_truncated: false,
            exit_code: 3,
            error_msg: String::new(),
        }
    );
    assert_eq!(env.file("run-1", "stdout"), b"out\n");
    assert_eq!(env.file("run-1", "stderr"), b"err\n");
    assert_eq!(env.file("run-1", "exitCode"), b"3");
}

#[tokio::test]
async fn start_then_wait_and_wait_again() {
    let env = Env::new();
    env.exec
        .start(env.req("sw", "sleep 0.3; printf done"), None)
        .await
        .unwrap();
    let first = within("wait", env.exec.wait("sw")).await.unwrap();
    assert_eq!((first.stdout.as_str(), first.exit_code), ("done", 0));
    let again = env.exec.wait("sw").await.unwrap();
    assert_eq!(first, again);
}

#[tokio::test]
async fn a_deadline_becomes_the_execution_timeout() {
    let env = Env::new();
    let r = within(
        "run with deadline",
        env.exec.run(
            env.req("dl", "sleep 30"),
            Some(Instant::now() + Duration::from_millis(500)),
        ),
    )
    .await
    .unwrap();
    assert_eq!(r.exit_code, -1, "{r:?}");
    assert!(r.error_msg.contains("context deadline exceeded"), "{r:?}");
}

#[tokio::test]
async fn cancel_ends_a_running_job_as_cancelled() {
    let env = Env::new();
    env.exec
        .start(env.req("c", "sleep 30"), None)
        .await
        .unwrap();
    env.exec.cancel("c").await.unwrap();
    let r = within("wait after cancel", env.exec.wait("c"))
        .await
        .unwrap();
    assert_eq!(r.exit_code, -1, "{r:?}");
    assert_eq!(
        r.error_msg,
        ErrorCode::ExecutionAlreadyCancelled.sentinel().unwrap()
    );
    // Cancel of a finished execution is not an error.
    env.exec.cancel("c").await.unwrap();
}

#[tokio::test]
async fn every_error_code_reaches_the_caller_distinguishable() {
    let env = Env::new();
    assert_eq!(
        code(env.exec.wait("nope").await),
        Some(ErrorCode::ExecutionNotFound)
    );
    assert_eq!(
        code(env.exec.cancel("nope").await),
        Some(ErrorCode::ExecutionNotFound)
    );
    let err = env
        .exec
        .get_log_stream(LogStreamRequest {
            execution_id: "nope".into(),
            ..Default::default()
        })
        .await
        .err()
        .expect("log stream of an unknown id fails");
    assert_eq!(err.code(), Some(ErrorCode::ExecutionNotFound), "{err}");

    env.exec
        .start(env.req("dup", "sleep 30"), None)
        .await
        .unwrap();
    assert_eq!(
        code(env.exec.start(env.req("dup", "true"), None).await),
        Some(ErrorCode::ExecutionAlreadyStarted)
    );
    env.exec.cancel("dup").await.unwrap();
    within("wait", env.exec.wait("dup")).await.unwrap();
    assert_eq!(
        code(env.exec.start(env.req("dup", "true"), None).await),
        Some(ErrorCode::ExecutionAlreadyComplete)
    );

    let mut bad = env.req("bad", "true");
    bad.engine_params = None;
    let err = env.exec.start(bad, None).await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::InvalidParams), "{err}");
    match err {
        HostError::Executor(e) => assert!(!e.problems.is_empty(), "{e:?}"),
        other => panic!("{other}"),
    }

    // A Bridge port on an IPv6 host address cannot be published (IPv4 DNAT only).
    let mut bridge = env.req("bridge", "true");
    bridge.network = Some(NetworkConfig {
        network_type: Network::Bridge,
        ports: vec![executor_schema::Port {
            name: "p".into(),
            static_port: 20081,
            host_network: "::1".into(),
            ..Default::default()
        }],
        ..Default::default()
    });
    let err = env.exec.start(bridge, None).await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::Unsupported), "{err}");
    assert!(err.to_string().contains("Bridge"), "{err}");

    // The plugin reports a cancel in the result (see the cancel test); the code stays apart.
    let cancelled = HostError::from(ExecutorError::already_cancelled("x"));
    assert!(cancelled.is_code(ErrorCode::ExecutionAlreadyCancelled));
    assert!(!cancelled.is_code(ErrorCode::ExecutionAlreadyComplete));
}

#[tokio::test]
async fn log_stream_decodes_to_the_exact_output() {
    let env = Env::new();
    let script =
        "for i in 1 2 3; do echo out$i; echo err$i >&2; sleep 0.1; done; printf '\\001\\377'";
    env.exec.start(env.req("logs", script), None).await.unwrap();
    let stream = env
        .exec
        .get_log_stream(LogStreamRequest {
            execution_id: "logs".into(),
            follow: true,
            ..Default::default()
        })
        .await
        .unwrap();
    let mut frames = Vec::new();
    within(
        "stdcopy read",
        stream.into_stdcopy().read_to_end(&mut frames),
    )
    .await
    .unwrap();
    let (out, err) = demux_stdcopy(&frames).unwrap();
    within("wait", env.exec.wait("logs")).await.unwrap();
    assert_eq!(out, b"out1\nout2\nout3\n\x01\xff");
    assert_eq!(err, b"err1\nerr2\nerr3\n");
    assert_eq!(out, env.file("logs", "stdout"));

    // History of a finished execution, as typed events ending in `end`.
    let events: Vec<_> = env
        .exec
        .get_log_stream(LogStreamRequest {
            execution_id: "logs".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .collect()
        .await;
    let events: Vec<LogEvent> = events.into_iter().map(Result::unwrap).collect();
    assert!(matches!(events.last(), Some(LogEvent::End { .. })));
    let all: Vec<u8> = events.iter().flat_map(LogEvent::data_bytes).collect();
    assert_eq!(all.len(), out.len() + err.len());
}

fn quick_restarts() -> Supervision {
    Supervision {
        backoff_initial: Duration::from_millis(50),
        ..Supervision::default()
    }
}

#[tokio::test]
async fn run_survives_a_killed_plugin() {
    let state = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let exec = native_executor_with(state.path(), quick_restarts());
    let script = "for i in 1 2 3 4 5; do echo line$i; sleep 0.2; done; exit 7";
    let runner = {
        let exec = exec.clone();
        let req = sh_request(work.path(), "r9", script);
        tokio::spawn(async move { exec.run(req, None).await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let first_pid = exec.pid().await.expect("plugin running");
    kill9(first_pid);
    let r = within("run across a restart", runner)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(r.exit_code, 7, "{r:?}");
    assert_eq!(r.stdout, "line1\nline2\nline3\nline4\nline5\n");
    assert_ne!(exec.pid().await.expect("a new plugin serves"), first_pid);
}

#[tokio::test]
async fn wait_survives_a_killed_plugin() {
    let state = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let exec = native_executor_with(state.path(), quick_restarts());
    let script = "for i in 1 2 3 4 5; do echo line$i; sleep 0.2; done; exit 7";
    exec.start(sh_request(work.path(), "w9", script), None)
        .await
        .unwrap();
    let waiter = {
        let exec = exec.clone();
        tokio::spawn(async move { exec.wait("w9").await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let first_pid = exec.pid().await.expect("plugin running");
    kill9(first_pid);
    let r = within("wait across a restart", waiter)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(r.exit_code, 7, "{r:?}");
    assert_eq!(r.stdout, "line1\nline2\nline3\nline4\nline5\n");
    let second_pid = exec.pid().await.expect("a new plugin serves");
    assert_ne!(first_pid, second_pid);
}

#[tokio::test]
async fn a_followed_log_survives_a_killed_plugin_without_loss_or_repeat() {
    let state = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let exec = native_executor_with(state.path(), quick_restarts());
    let script =
        "i=1; while [ $i -le 20 ]; do echo out$i; echo err$i >&2; i=$((i+1)); sleep 0.05; done";
    exec.start(sh_request(work.path(), "l9", script), None)
        .await
        .unwrap();
    let mut stream = exec
        .get_log_stream(LogStreamRequest {
            execution_id: "l9".into(),
            follow: true,
            ..Default::default()
        })
        .await
        .unwrap();
    let mut events = Vec::new();
    // Some output before the kill, the rest after.
    while events.len() < 4 {
        let ev = within("first events", stream.next())
            .await
            .unwrap()
            .unwrap();
        events.push(ev);
    }
    let killed = exec.pid().await.expect("plugin running");
    kill9(killed);
    while let Some(ev) = within("events after the kill", stream.next()).await {
        events.push(ev.unwrap());
    }
    assert!(matches!(events.last(), Some(LogEvent::End { .. })));
    let mut expected_offset = 0;
    let (mut out, mut err) = (Vec::new(), Vec::new());
    for ev in &events {
        if let LogEvent::Data {
            stream,
            offset,
            next,
            ..
        } = ev
        {
            assert_eq!(
                *offset, expected_offset,
                "events are contiguous: {events:?}"
            );
            expected_offset = *next;
            match stream {
                executor_schema::LogStream::Stdout => out.extend(ev.data_bytes()),
                executor_schema::LogStream::Stderr => err.extend(ev.data_bytes()),
            }
        }
    }
    let want = |s: &str| -> Vec<u8> {
        (1..=20)
            .flat_map(|i| format!("{s}{i}\n").into_bytes())
            .collect()
    };
    assert_eq!(
        String::from_utf8_lossy(&out),
        String::from_utf8_lossy(&want("out"))
    );
    assert_eq!(
        String::from_utf8_lossy(&err),
        String::from_utf8_lossy(&want("err"))
    );
    let r = within("wait", exec.wait("l9")).await.unwrap();
    assert_eq!(r.exit_code, 0);
    assert_ne!(
        exec.pid().await,
        Some(killed),
        "a new plugin served the rest"
    );
}

#[tokio::test]
async fn a_plugin_that_keeps_crashing_is_unhealthy_with_its_last_words() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("executor-crashy");
    std::fs::write(
        &path,
        "#!/bin/sh\necho 'crashy: cannot read /etc/crashy.conf' >&2\nexit 2\n",
    )
    .unwrap();
    let mut perms = std::fs::metadata(&path).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o755);
    std::fs::set_permissions(&path, perms).unwrap();
    let mut spec = executor_host::PluginSpec::new("crashy", &path);
    spec.supervision = Supervision {
        backoff_initial: Duration::from_millis(10),
        max_crashes: 3,
        ..Supervision::default()
    };
    let exec = PluginExecutor::new(spec);
    let err = within("unhealthy", exec.is_installed()).await.unwrap_err();
    match &err {
        HostError::Unhealthy { stderr, .. } => {
            assert!(
                stderr
                    .iter()
                    .any(|l| l.contains("cannot read /etc/crashy.conf")),
                "{err}"
            );
        }
        other => panic!("expected Unhealthy, got {other}"),
    }
    assert!(err.to_string().contains("crashy.conf"), "{err}");
    // It stays unhealthy for a while instead of being restarted on every call.
    assert!(matches!(
        exec.is_installed().await,
        Err(HostError::Unhealthy { .. })
    ));
}

#[tokio::test]
async fn shutdown_stops_the_plugin_and_leaves_jobs_running() {
    let state = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let exec = native_executor(state.path());
    exec.start(
        sh_request(work.path(), "sd", "sleep 0.5; echo survived"),
        None,
    )
    .await
    .unwrap();
    let pid = exec.pid().await.unwrap();
    exec.shutdown(false).await;
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}")).exists()
            || std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .map(|s| s.contains(") Z "))
                .unwrap_or(true),
        "plugin {pid} still running after shutdown"
    );
    assert!(matches!(
        exec.wait("sd").await,
        Err(HostError::ShuttingDown)
    ));
    // A new host on the same state root finds the job's result.
    let again = native_executor(state.path());
    let r = within("wait on a new plugin", again.wait("sd"))
        .await
        .unwrap();
    assert_eq!(r.stdout, "survived\n");
}

/// Thousands of events, read only after they have all been sent: more than the host buffers
/// for one reader, so its direct route closes and the stream resumes from its position; the
/// handover from what jsonrpsee received before the route existed is in there too.
#[tokio::test]
async fn a_log_read_late_and_in_full_keeps_order_without_loss_or_repeat() {
    let env = Env::new();
    // One byte per write: the monitor reads far more often than a shell loop lets it.
    let script =
        "i=1; while [ $i -le 16000 ]; do echo line$i; i=$((i+1)); done | dd bs=1 status=none";
    env.exec.start(env.req("many", script), None).await.unwrap();
    let mut stream = env
        .exec
        .get_log_stream(LogStreamRequest {
            execution_id: "many".into(),
            follow: true,
            position: Some(0),
            ..Default::default()
        })
        .await
        .unwrap();
    within("wait", env.exec.wait("many")).await.unwrap();
    // Let the plugin send everything while nobody reads.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (mut out, mut expected_offset, mut events) = (Vec::new(), 0, 0);
    while let Some(ev) = within("events", stream.next()).await {
        match ev.unwrap() {
            ev @ LogEvent::Data { offset, next, .. } => {
                assert_eq!(offset, expected_offset, "contiguous after {events} events");
                expected_offset = next;
                events += 1;
                out.extend(ev.data_bytes());
            }
            LogEvent::End { .. } => break,
        }
    }
    let want: Vec<u8> = (1..=16000)
        .flat_map(|i| format!("line{i}\n").into_bytes())
        .collect();
    assert!(out == want, "{} bytes in {events} events", out.len());
    eprintln!("{events} events");
}
