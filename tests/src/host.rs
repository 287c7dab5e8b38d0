//! Helpers for tests that drive the real plugin through the host shim.

use std::path::{Path, PathBuf};

use executor_host::{PluginExecutor, PluginSpec, Supervision};
use executor_schema::{RunCommandRequest, SpecConfig};

/// A supervised `executor-native` with its own state root.
pub fn native_executor(state_dir: &Path) -> PluginExecutor {
    native_executor_with(state_dir, Supervision::default())
}

pub fn native_executor_with(state_dir: &Path, supervision: Supervision) -> PluginExecutor {
    let mut spec = PluginSpec::new("native", crate::native_plugin());
    spec.config.state_dir = Some(state_dir.to_path_buf());
    spec.supervision = supervision;
    PluginExecutor::new(spec)
}

/// A request running `sh -c script`, results in `results_root/<exec>` (created).
pub fn sh_request(results_root: &Path, exec: &str, script: &str) -> RunCommandRequest {
    let results: PathBuf = results_root.join(exec);
    std::fs::create_dir_all(&results).expect("results dir");
    let params = serde_json::json!({"Entrypoint": ["sh", "-c", script]});
    RunCommandRequest {
        job_id: format!("job-{exec}"),
        execution_id: exec.to_string(),
        results_dir: results.display().to_string(),
        engine_params: Some(SpecConfig {
            spec_type: "native".to_string(),
            params: params.as_object().cloned().unwrap_or_default(),
        }),
        ..Default::default()
    }
}

/// Kill a process with SIGKILL.
pub fn kill9(pid: u32) {
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    );
}
