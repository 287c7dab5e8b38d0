//! `executor-wasm`: the executor plugin for engine `wasm`. Started by a host with the cookie in
//! its environment, it serves JSON-RPC on stdin/stdout; started by its monitor as
//! `executor-wasm __wasm-run <config>`, it is the job and runs one module.

use std::process::ExitCode;

fn main() -> ExitCode {
    let argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if argv
        .get(1)
        .is_some_and(|a| a == executor_wasm::runner::RUN_ARG)
    {
        std::process::exit(executor_wasm::runner::main_from_args(argv));
    }
    executor_plugin::entry::plugin_main(executor_wasm::engine::engine())
}
