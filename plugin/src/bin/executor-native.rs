//! `executor-native`: the executor plugin for engine `native`. Started by a host with the
//! cookie in its environment, it serves JSON-RPC on stdin/stdout.

use std::process::ExitCode;
use std::sync::Arc;

fn main() -> ExitCode {
    executor_plugin::entry::plugin_main(Arc::new(executor_plugin::engine::Native))
}
