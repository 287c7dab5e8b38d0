pub mod bid;
pub mod capabilities;
pub mod fds;
pub mod logstore;
pub mod memo;
pub mod monitor;
pub mod outlet;
pub mod outputs;
pub mod registry;
pub mod results;
pub mod rpc;
pub mod sandbox;
pub mod server;
pub mod state;
pub mod stdio;
pub mod timing;

/// The engine type this plugin serves (`EngineSpec.Type`).
pub const ENGINE: &str = "native";
/// The plugin's name in `initialize` and in its messages.
pub const PLUGIN_NAME: &str = "executor-native";
