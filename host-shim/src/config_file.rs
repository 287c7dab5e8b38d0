//! The host's configuration file: TOML with the same keys a host sends in `initialize.config`
//! (per engine), plus where plugins are found, their pins and the engines left out.
//!
//! ```toml
//! pluginDirs = ["/usr/local/libexec/executor-plugins"]
//! disabled = ["docker"]
//! callTimeout = "30s"
//!
//! [pins]
//! "/usr/local/libexec/executor-plugins/executor-native" = "<sha256 hex>"
//!
//! [engines.native]
//! stateDir = "/var/lib/executor-plugins/native"
//! allowListedLocalPaths = ["/data:ro", "/scratch/**:rw"]
//! jobUidRange = { min = 70000, max = 79999 }
//! retention = 3600
//! ```
//!
//! The file decides which programs the host starts as plugins, so it is read only when it
//! passes the same ownership rule as a plugin binary: owned by root or this user, writable by
//! nobody else, in directories that pass it too.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use executor_schema::PluginConfig;
use serde::{Deserialize, Serialize};

/// What a config file holds. Unknown top-level keys are refused (a typo would otherwise be a
/// setting silently not applied); keys inside an engine's table go to its plugin as given.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ConfigFile {
    /// Directories searched for `executor-*` plugin binaries.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub plugin_dirs: Vec<PathBuf>,
    /// Plugin binaries named explicitly.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub plugins: Vec<PathBuf>,
    /// sha256 (hex) by plugin path: with any pin set, only pinned plugins are started.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub pins: BTreeMap<PathBuf, String>,
    /// Engines not offered.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub disabled: Vec<String>,
    /// How long a plugin gets to answer a prompt call (`30s`, `2m`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub call_timeout: Option<String>,
    /// `initialize.config` per engine.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub engines: BTreeMap<String, PluginConfig>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigFileError {
    #[error("cannot read the config file {path}: {source}; fix it or pass --config FILE")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path} refused: {why}; make it owned by root or you and writable only by its owner")]
    Untrusted { path: PathBuf, why: String },
    #[error("config file {path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

/// Where the host looks for its config file when no `--config` is given: as root
/// `/etc/executor-plugins/host.toml`, else `$XDG_CONFIG_HOME/executor-plugins/host.toml`
/// (`~/.config/...`).
pub fn default_path() -> Option<PathBuf> {
    if nix::unistd::geteuid().is_root() {
        return Some(PathBuf::from("/etc/executor-plugins/host.toml"));
    }
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .or_else(|| {
            std::env::var_os("HOME")
                .map(PathBuf::from)
                .filter(|p| p.is_absolute())
                .map(|h| h.join(".config"))
        })?;
    Some(base.join("executor-plugins").join("host.toml"))
}

impl ConfigFile {
    /// Read and check `path`.
    pub fn load(path: &Path) -> Result<ConfigFile, ConfigFileError> {
        let mut file = crate::pin::open_trusted(path).map_err(|e| match e {
            crate::pin::PinError::Untrusted { why, .. } => ConfigFileError::Untrusted {
                path: path.to_path_buf(),
                why,
            },
            crate::pin::PinError::Open { source, .. }
            | crate::pin::PinError::Read { source, .. } => ConfigFileError::Read {
                path: path.to_path_buf(),
                source,
            },
            other => ConfigFileError::Invalid {
                path: path.to_path_buf(),
                message: other.to_string(),
            },
        })?;
        let mut text = String::new();
        file.read_to_string(&mut text)
            .map_err(|source| ConfigFileError::Read {
                path: path.to_path_buf(),
                source,
            })?;
        Self::parse(&text).map_err(|message| ConfigFileError::Invalid {
            path: path.to_path_buf(),
            message,
        })
    }

    /// The file at the default location, when there is one.
    pub fn load_default() -> Result<Option<(PathBuf, ConfigFile)>, ConfigFileError> {
        let Some(path) = default_path() else {
            return Ok(None);
        };
        match std::fs::symlink_metadata(&path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            _ => Ok(Some((path.clone(), Self::load(&path)?))),
        }
    }

    /// Parse TOML text and check what the host itself uses.
    pub fn parse(text: &str) -> Result<ConfigFile, String> {
        let file: ConfigFile = toml::from_str(text).map_err(|e| {
            // toml's message spans several lines (the offending line, a caret); one is enough.
            e.to_string().lines().next().unwrap_or_default().to_string()
                + &format!(": {}", e.message())
        })?;
        file.check()?;
        Ok(file)
    }

    fn check(&self) -> Result<(), String> {
        let relative = |what: &str, p: &Path| {
            (!p.is_absolute()).then(|| format!("{what} {} must be an absolute path", p.display()))
        };
        let mut problems: Vec<String> = Vec::new();
        problems.extend(
            self.plugin_dirs
                .iter()
                .filter_map(|p| relative("pluginDirs:", p)),
        );
        problems.extend(self.plugins.iter().filter_map(|p| relative("plugins:", p)));
        problems.extend(self.pins.keys().filter_map(|p| relative("pins:", p)));
        for (engine, config) in &self.engines {
            if let Some(dir) = &config.state_dir {
                problems.extend(relative(&format!("engines.{engine}.stateDir:"), dir));
            }
        }
        if let Some(t) = &self.call_timeout {
            if let Err(e) = crate::human::parse_duration(t) {
                problems.push(format!("callTimeout: {e}"));
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems.join("; "))
        }
    }

    /// The file as TOML, as `executor-host config` prints it.
    pub fn to_toml(&self) -> Result<String, String> {
        toml::to_string_pretty(self).map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_key_reads_and_prints_back() {
        let text = r#"
pluginDirs = ["/opt/plugins"]
plugins = ["/opt/other/executor-x"]
disabled = ["docker"]
callTimeout = "45s"

[pins]
"/opt/plugins/executor-native" = "00"

[engines.native]
stateDir = "/srv/state"
allowListedLocalPaths = ["/data:ro"]
jobUidRange = { min = 71000, max = 71999 }
retention = 60
killGrace = 1.5
defaultPidsMax = 200
someOtherKey = "kept"
"#;
        let file = ConfigFile::parse(text).unwrap();
        let native = &file.engines["native"];
        assert_eq!(native.state_dir.as_deref(), Some(Path::new("/srv/state")));
        assert_eq!(native.job_uid_range.unwrap().min, 71000);
        assert_eq!(native.retention, Some(60.0));
        assert_eq!(native.default_pids_max, Some(200));
        assert_eq!(native.extra["someOtherKey"], "kept");
        let again = ConfigFile::parse(&file.to_toml().unwrap()).unwrap();
        assert_eq!(again, file);
    }

    #[test]
    fn typos_and_relative_paths_are_refused() {
        let e = ConfigFile::parse("pluginDir = [\"/x\"]").unwrap_err();
        assert!(e.contains("pluginDir"), "{e}");
        let e = ConfigFile::parse("[engines.native]\nstateDir = \"state\"").unwrap_err();
        assert!(e.contains("absolute"), "{e}");
        let e = ConfigFile::parse("callTimeout = \"soon\"").unwrap_err();
        assert!(e.contains("callTimeout"), "{e}");
    }
}
