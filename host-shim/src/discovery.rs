//! Finding plugin binaries and building the provider from them.
//!
//! A plugin is an executable file named `executor-<something>` (not `executor-host`) in one of
//! the configured directories, or a path named explicitly. Its engine is what it declares in
//! `initialize`: each candidate is probed once with a throw-away state directory and shut down
//! again; the plugin that serves jobs is started on first use, with that engine's
//! configuration. A caller about to use one engine right away (the one-shot CLI) names it in
//! [`HostConfig::adopt_probe`]: the candidate named for it is then probed with the engine's own
//! configuration and, when it is the one that serves the engine, keeps running as its plugin,
//! so the plugin starts once instead of twice.
//!
//! What gets executed at all: a plugin directory must be one only root or the host's user can
//! write; with any pin configured, only pinned files run (a pin naming no candidate is an
//! error); a file named `executor-<engine>` for a `--disable`d engine is never run. When two
//! files declare one engine, the one a pin, then root's ownership, then its name vouch for
//! serves it, else the first found; the others are listed as passed over.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use executor_schema::{InitializeResult, PluginConfig};

use crate::executor::Executor;
use crate::plugin_executor::{PluginExecutor, PluginSpec, Supervision};
use crate::provider::{sanitize_key, ExecutorProvider};

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
    /// An engine the caller uses right away: its candidate named `executor-<engine>` is probed
    /// with that engine's configuration (not a scratch state directory) and, when it serves the
    /// engine, the probed process serves it. Any failure of that probe falls back to the
    /// scratch probe, so what is found and reported is the same either way.
    pub adopt_probe: Option<String>,
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
            adopt_probe: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read plugin directory {dir}: {source}")]
    ReadDir {
        dir: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot find the directory of this program to look for plugins next to it: {0}; pass a plugin directory")]
    NoDefaultDir(std::io::Error),
    /// A plugin directory someone else could drop an `executor-*` file into.
    #[error("plugin directory refused: {0}")]
    UntrustedDir(crate::pin::PinError),
    #[error(
        "--pin names {path}, which is not among the plugins found; pass it with --plugin or its \
         directory with --plugin-dir, or remove the pin"
    )]
    UnmatchedPin { path: PathBuf },
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

/// The engine a file's name promises: `executor-<engine>`.
fn engine_from_name(path: &Path) -> Option<String> {
    let name = path.file_name()?.to_str()?;
    name.strip_prefix("executor-")
        .filter(|e| !e.is_empty())
        .map(sanitize_key)
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
        crate::pin::check_trusted_dir(&dir).map_err(ConfigError::UntrustedDir)?;
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

fn is_disabled(config: &HostConfig, engine: &str) -> bool {
    config
        .disabled
        .iter()
        .any(|d| sanitize_key(d) == sanitize_key(engine))
}

/// The configuration `initialize` gets for `engine`: the engine table's, matched as the
/// provider matches keys.
fn engine_config(config: &HostConfig, engine: &str) -> PluginConfig {
    let key = sanitize_key(engine);
    config
        .engines
        .iter()
        .find(|(k, _)| sanitize_key(k) == key)
        .map(|(_, c)| c.clone())
        .unwrap_or_default()
}

/// A probed plugin kept running to serve its engine.
type Adopted = Option<PluginExecutor>;

/// [`probe`], but for the candidate named for [`HostConfig::adopt_probe`]'s engine: started
/// with that engine's own configuration and kept running when it answers. Anything else (its
/// handshake fails, it declares another engine, its configuration is refused) is left to the
/// scratch probe, whose answer is then the one reported.
async fn probe_or_adopt(config: &HostConfig, path: PathBuf) -> (DiscoveredPlugin, Adopted) {
    let adopt = config
        .adopt_probe
        .as_deref()
        .map(sanitize_key)
        .filter(|e| engine_from_name(&path).as_deref() == Some(e.as_str()))
        .filter(|e| !is_disabled(config, e))
        .filter(|_| config.pins.is_empty() || pin_for(config, &path).is_some());
    if let Some(engine) = adopt {
        let mut spec = PluginSpec::new(engine.as_str(), &path);
        spec.sha256 = pin_for(config, &path).cloned();
        spec.config = engine_config(config, &engine);
        spec.supervision = probe_supervision(config, config.supervision.max_crashes);
        let plugin = PluginExecutor::new(spec);
        match plugin.info().await {
            Ok(info) => {
                let found = DiscoveredPlugin {
                    path,
                    info: Some(info),
                    error: None,
                    disabled: false,
                };
                return (found, Some(plugin));
            }
            Err(e) => {
                tracing::info!(plugin = %path.display(), error = %e, "probing with the engine's own configuration failed; probing again with a scratch state directory");
                plugin.shutdown(false).await;
            }
        }
    }
    (probe(config, path).await, None)
}

/// Supervision for a probe: its handshake may delay a command only as long as any other
/// prompt call.
fn probe_supervision(config: &HostConfig, max_crashes: usize) -> Supervision {
    Supervision {
        max_crashes,
        handshake_timeout: config
            .supervision
            .handshake_timeout
            .min(config.supervision.call_timeout),
        ..config.supervision.clone()
    }
}

/// Start one candidate with a scratch state directory, ask its engine, stop it; or leave it
/// alone when the configuration already says it must not run.
async fn probe(config: &HostConfig, path: PathBuf) -> DiscoveredPlugin {
    let refused = |error: String, disabled: bool| DiscoveredPlugin {
        path: path.clone(),
        info: None,
        error: Some(error),
        disabled,
    };
    if engine_from_name(&path).is_some_and(|e| is_disabled(config, &e)) {
        return refused("its engine is disabled; not started".into(), true);
    }
    if !config.pins.is_empty() && pin_for(config, &path).is_none() {
        return refused(
            "not pinned; with pins configured, only pinned plugins are started".into(),
            false,
        );
    }
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
    // A probe runs for every command: see [`probe_supervision`].
    spec.supervision = probe_supervision(config, 1);
    let plugin = PluginExecutor::new(spec);
    let result = plugin.info().await;
    plugin.shutdown(false).await;
    let (info, error) = match result {
        Ok(info) => (Some(info), None),
        Err(e) => (None, Some(e.to_string())),
    };
    let disabled = info
        .as_ref()
        .is_some_and(|i| is_disabled(config, &i.engine));
    DiscoveredPlugin {
        path,
        info,
        error,
        disabled,
    }
}

/// Probe every candidate. Of several that declare one engine, one serves it (see
/// [`preference`]); the others keep their probe answer and say why they were passed over.
pub async fn discover(config: &HostConfig) -> Result<Vec<DiscoveredPlugin>, ConfigError> {
    let (found, adopted) = discover_adopting(config).await?;
    shut_down(adopted.into_iter().flatten()).await;
    Ok(found)
}

async fn shut_down(plugins: impl Iterator<Item = PluginExecutor>) {
    let plugins: Vec<_> = plugins.collect();
    futures::future::join_all(plugins.iter().map(|p| p.shutdown(false))).await;
}

/// [`discover`], with the plugins probed under [`HostConfig::adopt_probe`] still running, by
/// the index of their candidate.
async fn discover_adopting(
    config: &HostConfig,
) -> Result<(Vec<DiscoveredPlugin>, Vec<Adopted>), ConfigError> {
    let paths = candidates(config)?;
    for pinned in config.pins.keys() {
        let canon = std::fs::canonicalize(pinned).ok();
        let matched = paths
            .iter()
            .any(|p| p == pinned || (canon.is_some() && std::fs::canonicalize(p).ok() == canon));
        if !matched {
            return Err(ConfigError::UnmatchedPin {
                path: pinned.clone(),
            });
        }
    }
    let (mut found, adopted): (Vec<_>, Vec<_>) =
        futures::future::join_all(paths.into_iter().map(|p| probe_or_adopt(config, p)))
            .await
            .into_iter()
            .unzip();
    let mut by_engine: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for (i, plugin) in found.iter().enumerate() {
        if let Some(engine) = plugin.engine() {
            by_engine.entry(sanitize_key(engine)).or_default().push(i);
        }
    }
    for (engine, claimants) in by_engine {
        if claimants.len() < 2 {
            continue;
        }
        let Some(&chosen) = claimants
            .iter()
            .max_by_key(|&&i| (preference(config, &found[i].path, &engine), usize::MAX - i))
        else {
            continue;
        };
        let winner = found[chosen].path.clone();
        tracing::warn!(%engine, plugin = %winner.display(), "several plugins declare this engine; using one");
        for i in claimants.into_iter().filter(|&i| i != chosen) {
            found[i].info = None;
            found[i].error = Some(format!(
                "it also declares engine {engine}, which {} serves (preferred: pinned, then \
                 owned by root, then named executor-{engine}, then found first)",
                winner.display()
            ));
        }
    }
    Ok((found, adopted))
}

/// How strongly the configuration vouches for `path` serving `engine`: a pin, then root
/// owning the file, then its name.
fn preference(config: &HostConfig, path: &Path, engine: &str) -> (bool, bool, bool) {
    use std::os::unix::fs::MetadataExt;
    (
        pin_for(config, path).is_some(),
        std::fs::metadata(path).is_ok_and(|m| m.uid() == 0),
        engine_from_name(path).as_deref() == Some(engine),
    )
}

/// The discovered plugins, wired into a provider.
pub struct Host {
    pub provider: ExecutorProvider,
    pub plugins: Vec<DiscoveredPlugin>,
    executors: BTreeMap<String, PluginExecutor>,
}

impl Host {
    pub async fn from_config(config: &HostConfig) -> Result<Host, ConfigError> {
        let (plugins, mut adopted) = discover_adopting(config).await?;
        let provider = ExecutorProvider::new(config.reprobe_after)
            .with_disabled(config.disabled.iter().map(String::as_str));
        let mut executors = BTreeMap::new();
        for (i, plugin) in plugins.iter().enumerate() {
            let Some(engine) = plugin.engine() else {
                tracing::warn!(plugin = %plugin.path.display(), error = ?plugin.error, "plugin left out");
                continue;
            };
            if plugin.disabled {
                continue;
            }
            let key = sanitize_key(engine);
            // Probed with this engine's own configuration: it serves as it is.
            let probed = adopted
                .get_mut(i)
                .and_then(Option::take)
                .filter(|p| sanitize_key(p.engine()) == key);
            let executor = match probed {
                Some(p) => {
                    tracing::info!(%engine, plugin = %plugin.path.display(), "the probed plugin serves the engine");
                    p
                }
                None => {
                    let mut spec = PluginSpec::new(engine, &plugin.path);
                    spec.sha256 = pin_for(config, &plugin.path).cloned();
                    spec.config = engine_config(config, &key);
                    spec.supervision = config.supervision.clone();
                    PluginExecutor::new(spec)
                }
            };
            provider
                .add(&key, Arc::new(executor.clone()) as Arc<dyn Executor>)
                .await;
            executors.insert(key, executor);
        }
        // Probed with an engine's configuration but passed over (disabled, or another file
        // serves that engine).
        shut_down(adopted.into_iter().flatten()).await;
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
