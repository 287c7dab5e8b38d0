pub mod rpc;
pub mod server;
pub mod stdio;
