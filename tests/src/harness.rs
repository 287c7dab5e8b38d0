//! Shared pieces of the fault and bad-input suites: a plugin on a private state root with
//! request builders, process bookkeeping from `/proc`, and a client that reads the protocol
//! only when asked (a slow host).

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::{native_plugin, RawPlugin};

/// A plugin initialized on its own state root, with a scratch directory for results.
pub struct Env {
    pub state: tempfile::TempDir,
    pub work: tempfile::TempDir,
    pub plugin: RawPlugin,
    /// The `capabilities` the plugin announced at `initialize`.
    pub capabilities: Value,
    next_id: u64,
}

impl Default for Env {
    fn default() -> Self {
        Self::new()
    }
}

impl Env {
    pub fn new() -> Env {
        let state = tempfile::tempdir().expect("state dir");
        let mut plugin = RawPlugin::spawn();
        let init = plugin.initialize(state.path());
        Env {
            state,
            work: tempfile::tempdir().expect("work dir"),
            plugin,
            capabilities: init["result"]["capabilities"].clone(),
            next_id: 1000,
        }
    }

    pub fn id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    /// kill -9 the plugin and start a new one on the same state root.
    pub fn replace_plugin(&mut self) {
        let _ = self.plugin.child.kill();
        let _ = self.plugin.child.wait();
        self.restart_plugin();
    }

    /// Start a new plugin on the same state root (the old one must be gone).
    pub fn restart_plugin(&mut self) {
        let mut plugin = RawPlugin::spawn();
        plugin.initialize(self.state.path());
        self.plugin = plugin;
    }

    pub fn results(&self, exec: &str) -> PathBuf {
        self.work.path().join(exec)
    }

    pub fn exec_dir(&self, exec: &str) -> PathBuf {
        self.state.path().join("executions").join(exec)
    }

    /// A directory the job and the test both see at the same path, with or without filesystem
    /// isolation: the `scratch` output, whose `Path` is its own host path under the results.
    pub fn scratch(&self, exec: &str) -> PathBuf {
        self.results(exec).join("scratch")
    }

    /// A request running `sh -c script`, with `extra` keys merged over it. It has a `scratch`
    /// output (see [`Env::scratch`]) unless `extra` sets `Outputs`.
    pub fn request(&self, exec: &str, script: &str, extra: Value) -> Value {
        std::fs::create_dir_all(self.results(exec)).expect("results dir");
        let mut req = json!({
            "JobID": "job-1",
            "ExecutionID": exec,
            "ResultsDir": self.results(exec),
            "EngineParams": {"Type": "native", "Params": {"Entrypoint": ["sh", "-c", script]}},
            "Outputs": [{"Name": "scratch", "Path": self.scratch(exec)}],
        });
        if let Some(extra) = extra.as_object() {
            for (k, v) in extra {
                req[k] = v.clone();
            }
        }
        req
    }

    pub fn call(&mut self, method: &str, params: Value) -> Value {
        let id = self.id();
        self.plugin.call(id, method, params)
    }

    pub fn start(&mut self, exec: &str, script: &str, extra: Value) {
        let req = self.request(exec, script, extra);
        let msg = self.call("executor_start", json!([req]));
        assert_eq!(msg["result"], Value::Null, "start {exec}: {msg}");
    }

    pub fn run(&mut self, exec: &str, script: &str, extra: Value) -> Value {
        let req = self.request(exec, script, extra);
        let msg = self.call("executor_run", json!([req]));
        msg.get("result")
            .cloned()
            .unwrap_or_else(|| panic!("run {exec} failed: {msg}"))
    }

    pub fn wait(&mut self, exec: &str) -> Value {
        let msg = self.call("executor_wait", json!([exec]));
        msg.get("result")
            .cloned()
            .unwrap_or_else(|| panic!("wait {exec} failed: {msg}"))
    }

    pub fn file(&self, exec: &str, name: &str) -> Vec<u8> {
        std::fs::read(self.results(exec).join(name)).unwrap_or_default()
    }

    /// The monitor's pid from `monitor.json`, once it has written it.
    pub fn monitor_pid(&self, exec: &str) -> Option<i32> {
        record_pid(&self.exec_dir(exec), "monitor")
    }

    /// The job's pid from `monitor.json`, once the job runs.
    pub fn job_pid(&self, exec: &str) -> Option<i32> {
        record_pid(&self.exec_dir(exec), "job")
    }

    /// Monitors of this state root still running - to check that nothing is left behind at
    /// the end of a test: those their `monitor.json` names (monitors forked by the plugin's
    /// fork server carry the plugin's command line), and any process whose command line
    /// mentions the state root (monitors started as `executor-native __monitor <dir>`).
    pub fn monitors_alive(&self) -> Vec<i32> {
        let mut pids: Vec<i32> = recorded_monitors(self.state.path())
            .into_iter()
            .map(|(pid, _)| pid)
            .collect();
        for pid in processes_mentioning(&self.state.path().to_string_lossy()) {
            if !pids.contains(&pid) {
                pids.push(pid);
            }
        }
        pids
    }
}

fn record_pid(dir: &Path, key: &str) -> Option<i32> {
    let rec: Value = serde_json::from_slice(&std::fs::read(dir.join("monitor.json")).ok()?).ok()?;
    rec[key]["pid"].as_i64().map(|p| p as i32)
}

/// Live monitors named by the `monitor.json` records under `state_root`, with their execution
/// ids (pid and start time must both match, so a reused pid is not mistaken for a monitor).
pub fn recorded_monitors(state_root: &Path) -> Vec<(i32, String)> {
    let Ok(entries) = std::fs::read_dir(state_root.join("executions")) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| {
            let rec: Value =
                serde_json::from_slice(&std::fs::read(e.path().join("monitor.json")).ok()?).ok()?;
            let pid = rec["monitor"]["pid"].as_i64()? as i32;
            let start = rec["monitor"]["startTime"].as_u64()?;
            (alive(pid) && start_time(pid) == Some(start))
                .then(|| (pid, e.file_name().to_string_lossy().into_owned()))
        })
        .collect()
}

/// Field 22 of `/proc/<pid>/stat`: start time in clock ticks since boot.
pub fn start_time(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// Live (non-zombie) processes whose argv contains `needle`.
pub fn processes_mentioning(needle: &str) -> Vec<i32> {
    let me = std::process::id() as i32;
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| pid != me && alive(pid))
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|c| String::from_utf8_lossy(&c).contains(needle))
                .unwrap_or(false)
        })
        .collect()
}

/// Alive and not a zombie (a zombie only waits to be reaped by its parent).
pub fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat
            .rsplit(')')
            .next()
            .unwrap_or("")
            .trim_start()
            .starts_with('Z'),
        Err(_) => false,
    }
}

/// Pids a job wrote to `file`, one per line.
pub fn pids_in(file: &Path) -> Vec<i32> {
    std::fs::read_to_string(file)
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

/// Poll `cond` every 10 ms until it holds; panics with `what` after `timeout`.
pub fn wait_until(timeout: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Wait (bounded) for every pid to be gone; returns those still alive.
pub fn survivors(pids: &[i32], timeout: Duration) -> Vec<i32> {
    let deadline = Instant::now() + timeout;
    loop {
        let left: Vec<i32> = pids.iter().copied().filter(|p| alive(*p)).collect();
        if left.is_empty() || Instant::now() >= deadline {
            return left;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// SIGKILL whatever a failed test would otherwise leak.
pub fn kill_all(pids: &[i32]) {
    for &p in pids {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(p),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// Every path under `root`, relative, for before/after comparisons.
pub fn tree(root: &Path) -> BTreeSet<PathBuf> {
    let mut out = BTreeSet::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if let Ok(rel) = p.strip_prefix(root) {
                out.insert(rel.to_path_buf());
            }
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                stack.push(p);
            }
        }
    }
    out
}

pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// A plugin whose protocol output is read only when the test asks: a host that falls behind.
/// The reader thread holds at most one line (a rendezvous channel), so the pipe fills up.
pub struct SlowHost {
    pub child: Child,
    stdin: Option<ChildStdin>,
    lines: std::sync::mpsc::Receiver<String>,
}

impl SlowHost {
    pub fn spawn() -> SlowHost {
        let mut child = Command::new(native_plugin())
            .env("EXECUTOR_PLUGIN_COOKIE", "executor-plugin")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn executor-native");
        let stdout = child.stdout.take().expect("stdout");
        let stdin = child.stdin.take();
        let (tx, lines) = std::sync::mpsc::sync_channel(0);
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        SlowHost {
            child,
            stdin,
            lines,
        }
    }

    pub fn send_call(&mut self, id: u64, method: &str, params: Value) {
        let mut line = serde_json::to_vec(
            &json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}),
        )
        .expect("json");
        line.push(b'\n');
        let stdin = self.stdin.as_mut().expect("stdin open");
        stdin.write_all(&line).expect("write to plugin");
        stdin.flush().expect("flush");
    }

    /// The next message; panics if none comes within 30 s.
    pub fn recv(&mut self) -> Value {
        let line = self
            .lines
            .recv_timeout(Duration::from_secs(30))
            .expect("a message from the plugin in time");
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("non-JSON line {line:?}: {e}"))
    }

    /// Read until the response to `id`; returns it and the messages before it.
    pub fn response(&mut self, id: u64) -> (Value, Vec<Value>) {
        let mut before = Vec::new();
        loop {
            let m = self.recv();
            if m.get("id") == Some(&json!(id)) && m.get("method").is_none() {
                return (m, before);
            }
            before.push(m);
        }
    }
}

impl Drop for SlowHost {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Serializes the tests that take it: fault tests load a 2-core machine enough (1000 executions,
/// a 1 GiB writer) that their timeouts would measure each other rather than the plugin.
pub fn serial() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|p| p.into_inner())
}
