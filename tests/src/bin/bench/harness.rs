//! The plugins the sections measure, each with its own state and work directories.

use std::path::Path;
use std::time::{Duration, Instant};

use executor_host::process::{PluginProcess, SpawnOptions};
use executor_host::{Executor, PluginExecutor, PluginSpec};
use executor_schema::api::ExecutorApiClient;
use executor_schema::{PluginConfig, RunCommandRequest, RunCommandResult};
use serde_json::{json, Value};

use crate::Res;

pub(crate) fn plugin_config(state: &Path) -> PluginConfig {
    PluginConfig {
        state_dir: Some(state.to_path_buf()),
        max_retained: Some(100_000),
        kill_grace: Some(1.0),
        ..Default::default()
    }
}

/// A native request for `argv` whose results go to `work/<id>`.
pub(crate) fn request_in(
    work: &Path,
    id: &str,
    argv: &[&str],
    limits: Option<Value>,
) -> Res<RunCommandRequest> {
    let results = work.join(id);
    std::fs::create_dir_all(&results)?;
    let mut req = json!({
        "JobID": "bench",
        "ExecutionID": id,
        "ResultsDir": results,
        "EngineParams": {"Type": "native", "Params": {"Entrypoint": argv}},
    });
    if let Some(l) = limits {
        req["OutputLimits"] = l;
    }
    Ok(serde_json::from_value(req)?)
}

/// The host shim's supervised `PluginExecutor` over its own plugin, state and work directories:
/// what Bacalhau's compute node would call.
pub(crate) struct HostHarness {
    pub(crate) exec: PluginExecutor,
    pub(crate) state: tempfile::TempDir,
    pub(crate) work: tempfile::TempDir,
}

impl HostHarness {
    pub(crate) async fn start(exe: &Path) -> Res<HostHarness> {
        HostHarness::start_in(exe, &std::env::temp_dir()).await
    }

    /// With its state and work directories under `dir`.
    pub(crate) async fn start_in(exe: &Path, dir: &Path) -> Res<HostHarness> {
        let state = tempfile::Builder::new()
            .prefix("bench-state")
            .tempdir_in(dir)?;
        let work = tempfile::Builder::new()
            .prefix("bench-work")
            .tempdir_in(dir)?;
        let mut spec = PluginSpec::new("native", exe);
        spec.config = plugin_config(state.path());
        let exec = PluginExecutor::new(spec);
        // Started lazily on first use; started here so no figure includes the launch.
        exec.info().await?;
        Ok(HostHarness { exec, state, work })
    }

    pub(crate) fn request(&self, id: &str, argv: &[&str]) -> Res<RunCommandRequest> {
        request_in(self.work.path(), id, argv, None)
    }

    pub(crate) async fn run(&self, id: &str, argv: &[&str]) -> Res<RunCommandResult> {
        Ok(self.exec.run(self.request(id, argv)?, None).await?)
    }

    pub(crate) async fn stop(self) {
        // Cancels anything left and waits for the results before the plugin exits.
        self.exec.shutdown(true).await;
    }
}

/// A plugin with its own state and work directories, removed with it.
pub(crate) struct Harness {
    pub(crate) plugin: Option<PluginProcess>,
    pub(crate) state: tempfile::TempDir,
    pub(crate) work: tempfile::TempDir,
}

impl Harness {
    pub(crate) async fn start(exe: &Path) -> Res<Harness> {
        Harness::start_with(exe, |_| {}).await
    }

    /// With the bench's plugin configuration changed by `configure`.
    pub(crate) async fn start_with(
        exe: &Path,
        configure: impl FnOnce(&mut PluginConfig),
    ) -> Res<Harness> {
        let state = tempfile::Builder::new().prefix("bench-state").tempdir()?;
        let work = tempfile::Builder::new().prefix("bench-work").tempdir()?;
        let mut opts = SpawnOptions::new(exe);
        // Big enough that a fast log producer never overruns the host's subscription buffer.
        opts.subscription_buffer = 1 << 16;
        let plugin = PluginProcess::spawn(opts).await?;
        let mut config = plugin_config(state.path());
        configure(&mut config);
        plugin
            .client
            .initialize(vec!["1".into()], None, Some(config))
            .await?;
        Ok(Harness {
            plugin: Some(plugin),
            state,
            work,
        })
    }

    pub(crate) fn client(&self) -> &jsonrpsee::async_client::Client {
        // Only `stop` takes the plugin, and it consumes the harness.
        &self
            .plugin
            .as_ref()
            .expect("plugin present until stop")
            .client
    }

    pub(crate) fn pid(&self) -> i32 {
        self.plugin
            .as_ref()
            .and_then(|p| p.pid)
            .map(|p| p as i32)
            .unwrap_or(-1)
    }

    pub(crate) fn request(
        &self,
        id: &str,
        argv: &[&str],
        limits: Option<Value>,
    ) -> Res<RunCommandRequest> {
        request_in(self.work.path(), id, argv, limits)
    }

    /// Monitors of this harness still alive, with their execution ids.
    pub(crate) fn monitors(&self) -> Vec<(i32, String)> {
        executor_tests::harness::recorded_monitors(self.state.path())
    }

    /// Shut the plugin down, cancelling what runs, and kill any monitor of ours left behind.
    pub(crate) async fn stop(mut self) {
        if let Some(mut p) = self.plugin.take() {
            let _ =
                tokio::time::timeout(Duration::from_secs(20), p.client.shutdown(Some(true))).await;
            if tokio::time::timeout(Duration::from_secs(20), p.wait_exit())
                .await
                .is_err()
            {
                if let Some(pid) = p.pid {
                    // SAFETY: signalling the plugin process this harness spawned.
                    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
                }
            }
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let left = self.monitors();
            if left.is_empty() {
                break;
            }
            if Instant::now() > deadline {
                for (pid, _) in left {
                    // SAFETY: a monitor of this harness's state dir, started by our plugin.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}
