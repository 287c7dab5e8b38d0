pub mod logstore;
pub mod monitor;
pub mod registry;
pub mod results;
pub mod rpc;
pub mod server;
pub mod state;
pub mod stdio;
