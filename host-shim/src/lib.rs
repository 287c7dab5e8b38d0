//! The host side of executor plugins: the `Executor` trait, a supervised plugin client, the
//! provider registry with discovery, and log adapters.

pub mod config_file;
pub mod discovery;
pub mod error;
pub mod executor;
pub mod human;
pub mod log_routes;
pub mod logs;
pub mod pin;
pub mod plugin_executor;
pub mod process;
pub mod provider;
pub mod transport;

pub use config_file::{ConfigFile, ConfigFileError};
pub use discovery::{ConfigError, DiscoveredPlugin, Host, HostConfig};
pub use error::HostError;
pub use executor::Executor;
/// For implementing [`Executor`] outside this crate.
pub use jsonrpsee::core::async_trait;
pub use logs::{demux_stdcopy, LogStream, StdcopyReader};
pub use plugin_executor::{PluginExecutor, PluginSpec, Supervision};
pub use provider::{ExecutorProvider, ProviderError};
