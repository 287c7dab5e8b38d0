//! Finding plugin binaries and building the provider from them.
//!
//! A plugin is an executable file named `executor-<something>` (not `executor-host`) in one of
//! the configured directories, or a path named explicitly. Its engine is what it declares in
//! `initialize`: each candidate is probed once with a throw-away state directory and shut down
//! again; the plugin that serves jobs is started on first use, with that engine's
//! configuration.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use executor_schema::{InitializeResult, PluginConfig};

use crate::executor::Executor;
use crate::provider::{sanitize_key, ExecutorProvider};
use crate::supervisor::{PluginExecutor, PluginSpec, Supervision};

#[derive(Debug, Clone)]
pub struct HostConfig {
    /// Directories searched for plugins; empty means the directory of the running binary.
    pub plugin_dirs: Vec<PathBuf>,
    /// Plugin binaries named explicitly (any file name).
    pub plugins: Vec<PathBuf>,
    /// sha256 pins (hex) by plugin path.
    pub pins: BTreeMap<PathBuf, String>,
    /// Engines not offered (Bacalhau's `Engines.Disabled`).
    pub disabled: Vec<String>,
    /// `initialize.config` per engine.
    pub engines: BTreeMap<String, PluginConfig>,
    pub supervision: Supervision,
    /// When a negative `is_installed` is asked again.
    pub reprobe_after: Duration,
}

impl Default for HostConfig {
    fn default() -> Self {
        HostConfig {
            plugin_dirs: Vec::new(),
            plugins: Vec::new(),
            pins: BTreeMap::new(),
            disabled: Vec::new(),
            engines: BTreeMap::new(),
            supervision: Supervision::default(),
            reprobe_after: Duration::from_secs(30),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(
        "two plugins claim engine {engine}: {first} and {second}; remove one of them or pass \
         only one plugin directory"
    )]
    DuplicateEngine {
        engine: String,
        first: PathBuf,
        second: PathBuf,
    },
    #[error("cannot read plugin directory {dir}: {source}")]
    ReadDir {
        dir: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot find the directory of this program to look for plugins next to it: {0}; pass a plugin directory")]
    NoDefaultDir(std::io::Error),
}

/// One candidate plugin and what probing it found.
#[derive(Debug, Clone)]
pub struct DiscoveredPlugin {
    pub path: PathBuf,
    /// The `initialize` answer of the probe.
    pub info: Option<InitializeResult>,
    /// Why the probe failed (pin mismatch, crash, no handshake).
    pub error: Option<String>,
    pub disabled: bool,
}

impl DiscoveredPlugin {
    pub fn engine(&self) -> Option<&str> {
        self.info.as_ref().map(|i| i.engine.as_str())
    }
}

fn is_candidate_name(name: &str) -> bool {
    name.starts_with("executor-") && name != "executor-host" && !name.contains('.')
}

fn is_executable_file(path: &Path) -> bool {
    std::fs::metadata(path)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// Candidate plugin paths, in directory order then explicit ones, without repeats.
pub fn candidates(config: &HostConfig) -> Result<Vec<PathBuf>, ConfigError> {
    let dirs = if config.plugin_dirs.is_empty() && config.plugins.is_empty() {
        let exe = std::env::current_exe().map_err(ConfigError::NoDefaultDir)?;
        exe.parent().map(Path::to_path_buf).into_iter().collect()
    } else {
        config.plugin_dirs.clone()
    };
    let mut found = Vec::new();
    for dir in dirs {
        let read = std::fs::read_dir(&dir).map_err(|source| ConfigError::ReadDir {
            dir: dir.clone(),
            source,
        })?;
        let mut here: Vec<PathBuf> = read
            .filter_map(Result::ok)
            .filter(|e| e.file_name().to_str().is_some_and(is_candidate_name))
            .map(|e| e.path())
            .filter(|p| is_executable_file(p))
            .collect();
        here.sort();
        found.extend(here);
    }
    found.extend(config.plugins.iter().cloned());
    let mut seen = std::collections::BTreeSet::new();
    found.retain(|p| seen.insert(std::fs::canonicalize(p).unwrap_or_else(|_| p.clone())));
    Ok(found)
}

fn pin_for<'a>(config: &'a HostConfig, path: &Path) -> Option<&'a String> {
    config.pins.get(path).or_else(|| {
        let canon = std::fs::canonicalize(path).ok()?;
        config
            .pins
            .iter()
            .find(|(p, _)| std::fs::canonicalize(p).ok().as_ref() == Some(&canon))
            .map(|(_, pin)| pin)
    })
}

/// Start one candidate with a scratch state directory, ask its engine, stop it.
async fn probe(config: &HostConfig, path: PathBuf) -> DiscoveredPlugin {
    let scratch = match tempfile::Builder::new()
        .prefix("executor-host-probe")
        .tempdir()
    {
        Ok(d) => d,
        Err(e) => {
            return DiscoveredPlugin {
                path,
                info: None,
                error: Some(format!("cannot create a scratch state directory: {e}")),
                disabled: false,
            }
        }
    };
    let mut spec = PluginSpec::new("", &path);
    spec.sha256 = pin_for(config, &path).cloned();
    spec.config.state_dir = Some(scratch.path().to_path_buf());
    spec.supervision = Supervision {
        max_crashes: 1,
        ..config.supervision.clone()
    };
    let plugin = PluginExecutor::new(spec);
    let result = plugin.info().await;
    plugin.shutdown(false).await;
    let (info, error) = match result {
        Ok(info) => (Some(info), None),
        Err(e) => (None, Some(e.to_string())),
    };
    let disabled = info.as_ref().is_some_and(|i| {
        config
            .disabled
            .iter()
            .any(|d| sanitize_key(d) == sanitize_key(&i.engine))
    });
    DiscoveredPlugin {
        path,
        info,
        error,
        disabled,
    }
}

/// Probe every candidate; two that declare one engine are a configuration error.
pub async fn discover(config: &HostConfig) -> Result<Vec<DiscoveredPlugin>, ConfigError> {
    let paths = candidates(config)?;
    let found = futures::future::join_all(paths.into_iter().map(|p| probe(config, p))).await;
    let mut by_engine: BTreeMap<String, &Path> = BTreeMap::new();
    for plugin in &found {
        let Some(engine) = plugin.engine() else {
            continue;
        };
        if let Some(first) = by_engine.insert(sanitize_key(engine), &plugin.path) {
            return Err(ConfigError::DuplicateEngine {
                engine: engine.to_string(),
                first: first.to_path_buf(),
                second: plugin.path.clone(),
            });
        }
    }
    Ok(found)
}

/// The discovered plugins, wired into a provider.
pub struct Host {
    pub provider: ExecutorProvider,
    pub plugins: Vec<DiscoveredPlugin>,
    executors: BTreeMap<String, PluginExecutor>,
}

impl Host {
    pub async fn from_config(config: &HostConfig) -> Result<Host, ConfigError> {
        let plugins = discover(config).await?;
        let provider = ExecutorProvider::new(config.reprobe_after)
            .with_disabled(config.disabled.iter().map(String::as_str));
        let mut executors = BTreeMap::new();
        for plugin in &plugins {
            let Some(engine) = plugin.engine() else {
                tracing::warn!(plugin = %plugin.path.display(), error = ?plugin.error, "plugin left out");
                continue;
            };
            if plugin.disabled {
                continue;
            }
            let key = sanitize_key(engine);
            let mut spec = PluginSpec::new(engine, &plugin.path);
            spec.sha256 = pin_for(config, &plugin.path).cloned();
            spec.config = config
                .engines
                .iter()
                .find(|(k, _)| sanitize_key(k) == key)
                .map(|(_, c)| c.clone())
                .unwrap_or_default();
            spec.supervision = config.supervision.clone();
            let executor = PluginExecutor::new(spec);
            provider
                .add(&key, Arc::new(executor.clone()) as Arc<dyn Executor>)
                .await;
            executors.insert(key, executor);
        }
        Ok(Host {
            provider,
            plugins,
            executors,
        })
    }

    /// The plugin serving `engine`, for what the trait does not cover (list, stats, pid).
    pub fn plugin(&self, engine: &str) -> Option<&PluginExecutor> {
        self.executors.get(&sanitize_key(engine))
    }

    /// Shut every started plugin down (executions keep running under their monitors).
    pub async fn shutdown(&self) {
        futures::future::join_all(self.executors.values().map(|e| e.shutdown(false))).await;
    }
}
