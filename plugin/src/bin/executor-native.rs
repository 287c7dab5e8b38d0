fn main() {
    // Monitor mode must be decided before any async runtime or thread exists.
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if args.get(1).is_some_and(|a| a == executor_plugin::monitor::MONITOR_ARG) {
        std::process::exit(executor_plugin::monitor::main_from_args(args));
    }
}
