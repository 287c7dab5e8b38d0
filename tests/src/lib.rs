//! Helpers shared by the end-to-end tests: where the real binaries are, and a raw line-level
//! connection to a plugin for protocol tests that must send what a well-behaved client never
//! would.

pub mod host;

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

pub mod harness;

/// Path of a binary of this workspace, built by `cargo build` (tests depend on the crates, so
/// `cargo test` builds them; the target dir is the one the test binary runs from).
pub fn bin_path(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    // target/<profile>/deps/<test> -> target/<profile>/<name>
    let dir = exe
        .parent()
        .and_then(|d| d.parent())
        .expect("target profile dir");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: run `cargo build --workspace` first (cargo test --workspace does)",
        path.display()
    );
    path
}

pub fn native_plugin() -> PathBuf {
    bin_path("executor-native")
}

/// A plugin process driven line by line.
pub struct RawPlugin {
    pub child: Child,
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<String>,
    /// Messages read while looking for another one.
    stash: std::collections::VecDeque<serde_json::Value>,
}

impl RawPlugin {
    pub fn spawn() -> RawPlugin {
        Self::spawn_with(|_| {})
    }

    pub fn spawn_with(configure: impl FnOnce(&mut Command)) -> RawPlugin {
        Self::spawn_program(&native_plugin(), configure)
    }

    /// A plugin binary of another engine (`bin_path("executor-wasm")`).
    pub fn spawn_program(
        program: &std::path::Path,
        configure: impl FnOnce(&mut Command),
    ) -> RawPlugin {
        let mut cmd = Command::new(program);
        cmd.env("EXECUTOR_PLUGIN_COOKIE", "executor-plugin")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        configure(&mut cmd);
        let mut child = cmd.spawn().expect("spawn the plugin");
        let stdout: ChildStdout = child.stdout.take().expect("stdout");
        let stdin = child.stdin.take();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                match line {
                    Ok(l) => {
                        if tx.send(l).is_err() {
                            break;
                        }
                    }
                    Err(_) => break,
                }
            }
        });
        RawPlugin {
            child,
            stdin,
            lines: rx,
            stash: Default::default(),
        }
    }

    pub fn send_raw(&mut self, bytes: &[u8]) {
        let stdin = self.stdin.as_mut().expect("stdin open");
        stdin.write_all(bytes).expect("write to plugin");
        stdin.flush().expect("flush");
    }

    pub fn send(&mut self, msg: &serde_json::Value) {
        let mut line = serde_json::to_vec(msg).expect("json");
        line.push(b'\n');
        self.send_raw(&line);
    }

    /// Next message from the plugin, parsed; panics after `timeout`.
    pub fn recv_timeout(&mut self, timeout: Duration) -> serde_json::Value {
        let line = self
            .lines
            .recv_timeout(timeout)
            .expect("a message from the plugin in time");
        serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("plugin wrote a non-JSON line {line:?}: {e}"))
    }

    pub fn recv(&mut self) -> serde_json::Value {
        match self.stash.pop_front() {
            Some(m) => m,
            None => self.recv_timeout(Duration::from_secs(30)),
        }
    }

    /// Nothing more arrives within `wait`.
    pub fn assert_silent(&mut self, wait: Duration) {
        if let Ok(line) = self.lines.recv_timeout(wait) {
            panic!("unexpected message from the plugin: {line}");
        }
    }

    pub fn call(&mut self, id: u64, method: &str, params: serde_json::Value) -> serde_json::Value {
        self.send_call(id, method, params);
        self.response(id)
    }

    pub fn send_call(&mut self, id: u64, method: &str, params: serde_json::Value) {
        self.send(
            &serde_json::json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}),
        );
    }

    /// The first message (stashed or new) matching `pred`; others are stashed in order.
    pub fn recv_matching(
        &mut self,
        timeout: Duration,
        pred: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        if let Some(i) = self.stash.iter().position(&pred) {
            return self.stash.remove(i).expect("stashed message");
        }
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let msg = self.recv_timeout(left);
            if pred(&msg) {
                return msg;
            }
            self.stash.push_back(msg);
        }
    }

    /// The response to call `id` (waits up to 60 s).
    pub fn response(&mut self, id: u64) -> serde_json::Value {
        self.recv_matching(Duration::from_secs(60), |m| {
            m.get("id") == Some(&serde_json::json!(id)) && m.get("method").is_none()
        })
    }

    /// The next `executor_logs` item of subscription `sub`.
    pub fn log_event(&mut self, sub: &serde_json::Value, timeout: Duration) -> serde_json::Value {
        let msg = self.recv_matching(timeout, |m| {
            m["method"] == "executor_logs" && &m["params"]["subscription"] == sub
        });
        msg["params"]["result"].clone()
    }

    pub fn initialize(&mut self, state_dir: &std::path::Path) -> serde_json::Value {
        let msg = self.call(
            0,
            "initialize",
            serde_json::json!({
                "protocolVersions": ["1"],
                "host": {"name": "executor-tests", "version": "0"},
                "config": {"stateDir": state_dir},
            }),
        );
        assert!(msg.get("result").is_some(), "initialize failed: {msg}");
        msg
    }

    pub fn close_stdin(&mut self) {
        self.stdin.take();
    }

    /// Wait for the process to exit (panics after `timeout`).
    pub fn wait_exit(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "plugin did not exit in {timeout:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for RawPlugin {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
