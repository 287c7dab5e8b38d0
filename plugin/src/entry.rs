//! The body of every engine's plugin binary: started by a host with the cookie in its
//! environment, it serves JSON-RPC on stdin/stdout for its [`Engine`].

use std::os::fd::AsFd;
use std::process::ExitCode;
use std::sync::Arc;

use executor_schema::api::ExecutorApiServer;

use crate::engine::Engine;
use crate::outlet;
use crate::rpc::Plugin;
use crate::server::{self, Exit, ServerConfig};
use crate::stdio;

/// Serve `engine` on stdin/stdout: the monitor mode, `--version`, the cookie check, the
/// protocol descriptors, the monitors' fork server, then the JSON-RPC server until shutdown or
/// end of input. An engine's binary calls this first thing in `main` (after any run mode of its
/// own), while the process is still single-threaded: the descriptor juggling, the environment
/// change and the fork server rely on that.
pub fn plugin_main(engine: Arc<dyn Engine>) -> ExitCode {
    // Monitor mode must be decided before any async runtime or thread exists.
    let argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if argv
        .get(1)
        .is_some_and(|a| a == crate::monitor::MONITOR_ARG)
    {
        std::process::exit(crate::monitor::main_from_args(argv));
    }
    let mut args = argv.into_iter();
    let program = args
        .next()
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_else(|| engine.plugin_name().to_string());
    match args.next().as_ref().and_then(|a| a.to_str()) {
        Some("--version") | Some("-V") => {
            println!("{} {}", engine.plugin_name(), env!("CARGO_PKG_VERSION"));
            return ExitCode::SUCCESS;
        }
        _ => {}
    }
    if !stdio::cookie_present() {
        eprintln!("{}", stdio::cookie_missing_message(&program));
        return ExitCode::from(1);
    }
    // Before any thread exists: the descriptor juggling and the environment change are only
    // sound single-threaded.
    let fds = stdio::take_protocol_stdin().and_then(|i| Ok((i, stdio::take_protocol_stdout()?)));
    let (input, output) = match fds {
        Ok(fds) => fds,
        Err(e) => {
            eprintln!("{program}: cannot set up the protocol descriptors: {e}");
            return ExitCode::from(1);
        }
    };
    // Jobs must not look like they were started by a host.
    // SAFETY: no other thread exists yet (the fork server and the runtime are started below),
    // so nothing reads the environment while it changes.
    unsafe { std::env::remove_var(stdio::COOKIE_KEY) };
    stdio::init_tracing();
    if std::env::var_os("EXECUTOR_PLUGIN_SELFTEST_STRAY_PRINT").is_some() {
        // Self-test of the descriptor swap: this must land on stderr, not the protocol pipe.
        println!("a stray print that must not reach the host");
    }

    // Each running execution holds descriptors here: the soft limit a service manager leaves
    // (often 1024) would cap how many run at once; the hard limit is ours to take. Jobs get
    // their own limit from the sandbox either way.
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        if soft < hard {
            if let Err(e) = setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
                tracing::warn!(error = %e, soft, hard, "cannot raise the open-file limit");
            }
        }
    }

    // The monitors' fork server must be forked while this process is still single-threaded.
    // Without it monitors are started by re-executing this binary, which works, only slower.
    // SAFETY: no thread has been started yet (the runtime is built below).
    match unsafe { crate::monitor::launcher::Launcher::start() } {
        Ok(l) => crate::monitor::launcher::install(l),
        Err(e) => tracing::warn!(error = %e, "cannot fork the monitor fork server"),
    }

    // One thread: the plugin's own work is short (decode, route, hand a request to the fork
    // server); what can block runs on the blocking pool. A request then never hops between
    // worker threads (what that saved per start is in docs/PERFORMANCE.md).
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(error = %e, "cannot start the async runtime");
            return ExitCode::from(1);
        }
    };
    server::widen_pipe(output.as_fd(), server::OUTPUT_PIPE_SIZE);
    let result = runtime.block_on(async move {
        let input = stdio::ProtocolInput::from_fd(input)?;
        let output = stdio::ProtocolOutput::from_fd(output)?;
        let (outlet, bulk) = outlet::outlet(server::BULK_BUDGET);
        let methods = Plugin::new(engine).with_outlet(outlet).into_rpc();
        server::serve_with_outlet(
            methods.into(),
            input,
            output,
            ServerConfig::default(),
            Some(bulk),
        )
        .await
        .map_err(std::io::Error::other)
    });
    // Pending calls (a `wait` on a running job) are abandoned: executions live on in their
    // monitors and a new plugin re-attaches to them.
    runtime.shutdown_background();
    match result {
        Ok(Exit::Shutdown) | Ok(Exit::InputClosed) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{program}: {e}");
            ExitCode::from(1)
        }
    }
}
