//! The provider registry and plugin discovery, with the real plugin binary and fakes.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use executor_host::{
    async_trait, Executor, ExecutorProvider, Host, HostConfig, HostError, LogStream,
    PluginExecutor, PluginSpec, ProviderError,
};
use executor_schema::{
    BidStrategyRequest, BidStrategyResponse, LogStreamRequest, PluginConfig, Resources,
    RunCommandRequest, RunCommandResult,
};
use executor_tests::host::sh_request;
use executor_tests::native_plugin;

/// An executor whose installed state the test flips, counting the checks.
#[derive(Default)]
struct Fake {
    installed: AtomicBool,
    checks: AtomicUsize,
}

#[async_trait]
impl Executor for Fake {
    async fn is_installed(&self) -> Result<bool, HostError> {
        self.checks.fetch_add(1, Ordering::SeqCst);
        Ok(self.installed.load(Ordering::SeqCst))
    }
    async fn should_bid(&self, _: BidStrategyRequest) -> Result<BidStrategyResponse, HostError> {
        Ok(BidStrategyResponse::new(true, "fake"))
    }
    async fn should_bid_based_on_usage(
        &self,
        _: BidStrategyRequest,
        _: Resources,
    ) -> Result<BidStrategyResponse, HostError> {
        Ok(BidStrategyResponse::new(true, "fake"))
    }
    async fn start(
        &self,
        _: RunCommandRequest,
        _: Option<std::time::Instant>,
    ) -> Result<(), HostError> {
        Ok(())
    }
    async fn run(
        &self,
        _: RunCommandRequest,
        _: Option<std::time::Instant>,
    ) -> Result<RunCommandResult, HostError> {
        Ok(RunCommandResult::default())
    }
    async fn wait(&self, _: &str) -> Result<RunCommandResult, HostError> {
        Ok(RunCommandResult::default())
    }
    async fn cancel(&self, _: &str) -> Result<(), HostError> {
        Ok(())
    }
    async fn get_log_stream(&self, _: LogStreamRequest) -> Result<LogStream, HostError> {
        Err(HostError::ShuttingDown)
    }
}

fn fake(installed: bool) -> Arc<Fake> {
    let f = Fake::default();
    f.installed.store(installed, Ordering::SeqCst);
    Arc::new(f)
}

#[tokio::test]
async fn keys_are_trimmed_and_lower_cased() {
    let provider = ExecutorProvider::default();
    provider.add(" Docker ", fake(true)).await;
    provider.add("WASM", fake(true)).await;
    assert!(provider.get("docker").await.is_ok());
    assert!(provider.get("  DOCKER").await.is_ok());
    assert!(provider.has("Wasm ").await);
    assert_eq!(provider.keys().await, vec!["docker", "wasm"]);
}

#[tokio::test]
async fn unknown_key_gets_bacalhaus_text() {
    let provider = ExecutorProvider::default();
    provider.add("docker", fake(true)).await;
    provider.add("wasm", fake(false)).await;
    let err = provider.get(" Native").await.err().unwrap();
    assert_eq!(
        err.to_string(),
        "no matching key found on this server: native. Only supports [docker wasm]"
    );
    assert!(!provider.has("native").await);
}

#[tokio::test]
async fn not_installed_is_asked_again_after_a_while() {
    let provider = ExecutorProvider::new(Duration::from_millis(200));
    let f = fake(false);
    provider.add("native", f.clone()).await;
    let err = provider.get("native").await.err().unwrap();
    assert_eq!(err.to_string(), "key is not installed: native");
    assert!(provider.keys().await.is_empty());
    // Within the re-probe interval the answer is remembered.
    let checks = f.checks.load(Ordering::SeqCst);
    assert!(!provider.has("native").await);
    assert_eq!(f.checks.load(Ordering::SeqCst), checks);
    // The daemon came up: after the interval it is found installed.
    f.installed.store(true, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(250)).await;
    assert!(provider.get("native").await.is_ok());
    assert_eq!(provider.keys().await, vec!["native"]);
    // A positive answer is kept.
    let checks = f.checks.load(Ordering::SeqCst);
    f.installed.store(false, Ordering::SeqCst);
    assert!(provider.has("native").await);
    assert_eq!(f.checks.load(Ordering::SeqCst), checks);
}

#[tokio::test]
async fn disabled_engines_are_refused_and_not_listed() {
    let provider = ExecutorProvider::default().with_disabled([" WASM"]);
    provider.add("wasm", fake(true)).await;
    provider.add("docker", fake(true)).await;
    let err = provider.get("Wasm").await.err().unwrap();
    assert!(matches!(err, ProviderError::Disabled { .. }), "{err}");
    assert_eq!(err.to_string(), "string is disabled: wasm");
    assert_eq!(provider.keys().await, vec!["docker"]);
    let err = provider.get("x").await.err().unwrap();
    assert_eq!(
        err.to_string(),
        "no matching key found on this server: x. Only supports [docker]"
    );
}

fn copy_plugin(dir: &Path, name: &str) -> PathBuf {
    let to = dir.join(name);
    std::fs::copy(native_plugin(), &to).unwrap();
    to
}

fn config_for(dirs: &[&Path], state: &Path) -> HostConfig {
    let mut config = HostConfig {
        plugin_dirs: dirs.iter().map(|d| d.to_path_buf()).collect(),
        ..HostConfig::default()
    };
    config.engines.insert(
        "native".into(),
        PluginConfig {
            state_dir: Some(state.to_path_buf()),
            ..Default::default()
        },
    );
    config
}

#[tokio::test]
async fn discovery_finds_the_plugin_and_runs_a_job_through_the_provider() {
    let dir = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    copy_plugin(dir.path(), "executor-native");
    // Not plugins: no prefix, not executable, a build artefact.
    std::fs::write(dir.path().join("README"), "x").unwrap();
    std::fs::write(dir.path().join("executor-native.d"), "x").unwrap();
    let host = Host::from_config(&config_for(&[dir.path()], state.path()))
        .await
        .unwrap();
    assert_eq!(host.plugins.len(), 1, "{:?}", host.plugins);
    assert_eq!(host.plugins[0].engine(), Some("native"));
    assert_eq!(host.provider.keys().await, vec!["native"]);
    let exec = host.provider.get(" Native ").await.unwrap();
    let r = exec
        .run(sh_request(work.path(), "d1", "echo hi"), None)
        .await
        .unwrap();
    assert_eq!(r.stdout, "hi\n");
    // The per-engine configuration reached the plugin: its state is under our root.
    assert!(std::fs::read_dir(state.path()).unwrap().next().is_some());
    host.shutdown().await;
}

#[tokio::test]
async fn a_one_shot_host_starts_the_plugin_it_uses_once() {
    let dir = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    copy_plugin(dir.path(), "executor-native");
    // Without adopt_probe the probe is stopped and nothing serves until first use.
    let config = config_for(&[dir.path()], state.path());
    let host = Host::from_config(&config).await.unwrap();
    assert_eq!(host.plugin("native").unwrap().pid().await, None);
    host.shutdown().await;
    // With it, the probe is the plugin: already running, on the engine's own state directory.
    let mut config = config_for(&[dir.path()], state.path());
    config.adopt_probe = Some("Native".into());
    let host = Host::from_config(&config).await.unwrap();
    let serving = host.plugin("native").unwrap();
    let pid = serving
        .pid()
        .await
        .expect("the probed plugin keeps running");
    let exec = host.provider.get("native").await.unwrap();
    let r = exec
        .run(sh_request(work.path(), "once", "echo hi"), None)
        .await
        .unwrap();
    assert_eq!(r.stdout, "hi\n");
    assert_eq!(
        serving.pid().await,
        Some(pid),
        "no second plugin was started"
    );
    assert!(state.path().join("executions").join("once").exists());
    host.shutdown().await;
}

#[tokio::test]
async fn a_probe_refused_its_engine_configuration_falls_back_to_a_scratch_probe() {
    let dir = tempfile::tempdir().unwrap();
    copy_plugin(dir.path(), "executor-native");
    // A relative state directory: the plugin refuses it in its handshake.
    let mut config = config_for(&[dir.path()], Path::new("relative/state"));
    config.adopt_probe = Some("native".into());
    let host = Host::from_config(&config).await.unwrap();
    // Found as before (the scratch probe answered), and refused as before on use.
    assert_eq!(host.plugins[0].engine(), Some("native"));
    assert_eq!(host.plugin("native").unwrap().pid().await, None);
    let err = host.provider.get("native").await.err().expect("refused");
    assert!(err.to_string().contains("stateDir"), "{err}");
    host.shutdown().await;
}

#[tokio::test]
async fn of_two_plugins_for_one_engine_the_preferred_serves_and_the_other_says_why() {
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    // Both owned alike: the one named for its engine serves, though found second.
    let other = copy_plugin(a.path(), "executor-native-copy");
    let named = copy_plugin(b.path(), "executor-native");
    let host = Host::from_config(&config_for(&[a.path(), b.path()], state.path()))
        .await
        .expect("a second claimant is no configuration error");
    let serving = host.plugin("native").expect("native is served");
    assert_eq!(serving.program(), named.as_path());
    let passed = host.plugins.iter().find(|p| p.path == other).unwrap();
    let text = passed.error.clone().unwrap_or_default();
    assert!(passed.info.is_none(), "{text}");
    assert!(text.contains(&named.display().to_string()), "{text}");
    assert!(text.contains("native"), "{text}");
    host.shutdown().await;

    // A pin outweighs the name.
    let mut config = config_for(&[a.path(), b.path()], state.path());
    config.pins.insert(other.clone(), sha256_of(&other));
    config.pins.insert(named.clone(), sha256_of(&named));
    let host = Host::from_config(&config).await.unwrap();
    assert_eq!(host.plugin("native").unwrap().program(), named.as_path());
    host.shutdown().await;
    config.pins.remove(&named);
    // Unpinned now, the named one is not even started: the pinned one serves.
    let host = Host::from_config(&config).await.unwrap();
    assert_eq!(host.plugin("native").unwrap().program(), other.as_path());
    host.shutdown().await;
}

#[tokio::test]
async fn a_disabled_engine_is_not_offered() {
    let dir = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    copy_plugin(dir.path(), "executor-native");
    let mut config = config_for(&[dir.path()], state.path());
    config.disabled = vec!["NATIVE".into()];
    let host = Host::from_config(&config).await.unwrap();
    assert!(host.plugins[0].disabled);
    assert!(host.provider.keys().await.is_empty());
    let err = host.provider.get("native").await.err().unwrap();
    assert!(matches!(err, ProviderError::Disabled { .. }), "{err}");
}

fn sha256_of(path: &Path) -> String {
    executor_host::pin::sha256_file(path).unwrap()
}

#[tokio::test]
async fn a_pinned_plugin_with_another_checksum_never_runs() {
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("ran");
    let plugin = dir.path().join("executor-evil");
    std::fs::write(
        &plugin,
        format!("#!/bin/sh\ntouch {}\nexit 1\n", marker.display()),
    )
    .unwrap();
    let mut perms = std::fs::metadata(&plugin).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o755);
    std::fs::set_permissions(&plugin, perms).unwrap();
    let mut config = HostConfig {
        plugin_dirs: vec![dir.path().to_path_buf()],
        ..HostConfig::default()
    };
    config.pins.insert(plugin.clone(), "ab".repeat(32));
    let host = Host::from_config(&config).await.unwrap();
    let found = &host.plugins[0];
    assert!(found.info.is_none());
    let error = found.error.clone().unwrap();
    assert!(
        error.contains("sha256") && error.contains(&"ab".repeat(32)),
        "{error}"
    );
    assert!(host.provider.keys().await.is_empty());

    // The same through a PluginExecutor directly.
    let mut spec = PluginSpec::new("evil", &plugin);
    spec.sha256 = Some("cd".repeat(32));
    let err = PluginExecutor::new(spec).is_installed().await.unwrap_err();
    assert!(matches!(err, HostError::Pin(_)), "{err}");
    assert!(!marker.exists(), "the plugin ran despite its checksum");
    // Sanity: without the pin it does run (so the marker check above can fail).
    let spec = PluginSpec::new("evil", &plugin);
    let _ = PluginExecutor::new(spec).is_installed().await;
    assert!(marker.exists());
}

#[tokio::test]
async fn a_pinned_plugin_runs_from_the_checked_descriptor() {
    let dir = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let plugin = copy_plugin(dir.path(), "executor-native");
    let mut config = config_for(&[dir.path()], state.path());
    config.pins.insert(plugin.clone(), sha256_of(&plugin));
    let host = Host::from_config(&config).await.unwrap();
    let exec = host.provider.get("native").await.unwrap();
    let r = exec
        .run(sh_request(work.path(), "p1", "echo pinned"), None)
        .await
        .unwrap();
    assert_eq!(r.stdout, "pinned\n");
    let pid = host.plugin("native").unwrap().pid().await.unwrap();
    // It runs from the sealed in-memory copy that was hashed, not from the file.
    let exe = std::fs::read_link(format!("/proc/{pid}/exe")).unwrap();
    assert!(
        exe.to_string_lossy().starts_with("/memfd:executor-native"),
        "{}",
        exe.display()
    );
    host.shutdown().await;
}
