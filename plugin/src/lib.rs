
pub mod server;
pub mod stdio;
