//! `ExecutorProvider`: engines by key, with Bacalhau's `MappedProvider` behaviour.
//!
//! Keys are trimmed and lower-cased; the error texts are Bacalhau's. One difference: a "not
//! installed" answer is asked again after `reprobe_after` instead of being cached for the life
//! of the process (in Bacalhau a daemon that is down at the first check stays "not installed"
//! until restart). A positive answer is cached, as there.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Mutex;

use crate::error::HostError;
use crate::executor::Executor;

#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    #[error("no matching key found on this server: {key}. Only supports [{}]", .keys.join(" "))]
    NoMatchingKey { key: String, keys: Vec<String> },
    #[error("key is not installed: {key}")]
    NotInstalled { key: String },
    /// Bacalhau's exact text: its `ConfiguredProvider` prints the key's Go type (`%T` of a
    /// string), so callers matching on it keep working.
    #[error("string is disabled: {key}")]
    Disabled { key: String },
    /// `is_installed` itself failed; not cached.
    #[error("checking whether {key} is installed: {source}")]
    Check { key: String, source: HostError },
}

/// Bacalhau's `sanitizeKey`.
pub fn sanitize_key(key: &str) -> String {
    key.trim().to_lowercase()
}

struct Entry {
    executor: Arc<dyn Executor>,
    installed: Option<(bool, Instant)>,
}

pub struct ExecutorProvider {
    entries: Mutex<BTreeMap<String, Entry>>,
    disabled: BTreeSet<String>,
    reprobe_after: Duration,
}

impl Default for ExecutorProvider {
    fn default() -> Self {
        Self::new(Duration::from_secs(30))
    }
}

impl ExecutorProvider {
    pub fn new(reprobe_after: Duration) -> Self {
        ExecutorProvider {
            entries: Mutex::new(BTreeMap::new()),
            disabled: BTreeSet::new(),
            reprobe_after,
        }
    }

    /// Engines that `get` refuses and `keys` leaves out, whatever is registered.
    pub fn with_disabled<I, S>(mut self, keys: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        self.disabled
            .extend(keys.into_iter().map(|k| sanitize_key(k.as_ref())));
        self
    }

    pub fn is_disabled(&self, key: &str) -> bool {
        self.disabled.contains(&sanitize_key(key))
    }

    /// Register (or replace) the executor for `key`.
    pub async fn add(&self, key: &str, executor: Arc<dyn Executor>) {
        self.entries.lock().await.insert(
            sanitize_key(key),
            Entry {
                executor,
                installed: None,
            },
        );
    }

    pub async fn get(&self, key: &str) -> Result<Arc<dyn Executor>, ProviderError> {
        let key = sanitize_key(key);
        if self.disabled.contains(&key) {
            return Err(ProviderError::Disabled { key });
        }
        let executor = {
            let entries = self.entries.lock().await;
            let Some(entry) = entries.get(&key) else {
                let keys = entries
                    .keys()
                    .filter(|k| !self.disabled.contains(*k))
                    .cloned()
                    .collect();
                return Err(ProviderError::NoMatchingKey { key, keys });
            };
            match entry.installed {
                Some((true, _)) => return Ok(entry.executor.clone()),
                Some((false, at)) if at.elapsed() < self.reprobe_after => {
                    return Err(ProviderError::NotInstalled { key })
                }
                _ => entry.executor.clone(),
            }
        };
        // Asked without holding the lock: starting a plugin can take a while.
        let installed = executor
            .is_installed()
            .await
            .map_err(|source| ProviderError::Check {
                key: key.clone(),
                source,
            })?;
        if let Some(entry) = self.entries.lock().await.get_mut(&key) {
            if Arc::ptr_eq(&entry.executor, &executor) {
                entry.installed = Some((installed, Instant::now()));
            }
        }
        if installed {
            Ok(executor)
        } else {
            Err(ProviderError::NotInstalled { key })
        }
    }

    pub async fn has(&self, key: &str) -> bool {
        self.get(key).await.is_ok()
    }

    /// Keys of the installed, enabled engines, sorted.
    pub async fn keys(&self) -> Vec<String> {
        let all: Vec<String> = self.entries.lock().await.keys().cloned().collect();
        let mut keys = Vec::new();
        for key in all {
            if self.has(&key).await {
                keys.push(key);
            }
        }
        keys
    }
}
