//! `executor-host`: run jobs through executor plugins from a shell.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::{Args, Parser, Subcommand};
use executor_host::human::{
    escape, escape_lines, format_duration, format_size, parse_duration, parse_size,
};
use executor_host::{Executor, Host, HostConfig, HostError, PluginExecutor};
use executor_schema::{
    ErrorCode, InputSource, LogEvent, LogStream as StreamKind, LogStreamRequest, Network,
    NetworkConfig, PluginConfig, PreparedStorage, Resources, ResultPath, RunCommandRequest,
    RunCommandResult, SpecConfig, StorageVolume,
};
use futures::StreamExt;
use tokio::io::AsyncWriteExt;

#[derive(Parser)]
#[command(
    name = "executor-host",
    version,
    about = "Run jobs through executor plugins"
)]
struct Cli {
    /// Directory to look for plugin binaries (`executor-*`) in; repeatable. Default: the
    /// directory of this program.
    #[arg(long = "plugin-dir", global = true, value_name = "DIR")]
    plugin_dirs: Vec<PathBuf>,
    /// Use this plugin binary (a path; never looked up on PATH); repeatable.
    #[arg(long = "plugin", global = true, value_name = "PATH")]
    plugins: Vec<PathBuf>,
    /// Only run a plugin whose sha256 is HEX: `--pin PATH=HEX`; repeatable.
    #[arg(long = "pin", global = true, value_name = "PATH=HEX")]
    pins: Vec<String>,
    /// Do not offer this engine; repeatable.
    #[arg(long = "disable", global = true, value_name = "ENGINE")]
    disabled: Vec<String>,
    /// State root of the engine's plugin (where executions are recorded). Default: the
    /// plugin's own (/var/lib/executor-plugins/<engine> as root).
    #[arg(long = "state-dir", global = true, value_name = "DIR")]
    state_dir: Option<PathBuf>,
    /// How long a plugin gets to answer a call that needs no time (isInstalled, bids, start,
    /// cancel, list, stats) before it is restarted: 30s, 2m, ... Waiting for a job is never
    /// limited by this.
    #[arg(long = "call-timeout", global = true, value_name = "DURATION", value_parser = parse_duration, default_value = "30s")]
    call_timeout: Duration,
    /// Log what the host and plugins do (to stderr).
    #[arg(long, short, global = true)]
    verbose: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run one job and wait for it: output streams live, results go to a new directory.
    Run(RunArgs),
    /// Show the plugins found, their engines, versions and what they can enforce here.
    Plugins {
        #[arg(long)]
        json: bool,
    },
    /// Show the output of an execution (started earlier, perhaps by another invocation).
    Logs {
        #[arg(long, default_value = "native")]
        engine: String,
        /// Keep streaming until the execution ends.
        #[arg(long, short)]
        follow: bool,
        /// Only output written from now on.
        #[arg(long)]
        tail: bool,
        execution_id: String,
    },
    /// List the executions the engine knows.
    List {
        #[arg(long, default_value = "native")]
        engine: String,
        #[arg(long)]
        json: bool,
    },
    /// Cancel a running execution.
    Cancel {
        #[arg(long, default_value = "native")]
        engine: String,
        execution_id: String,
    },
}

#[derive(Args)]
struct RunArgs {
    #[arg(long, default_value = "native")]
    engine: String,
    /// CPU cores, fractions allowed (0.5).
    #[arg(long)]
    cpu: Option<f64>,
    /// Memory limit: 256MiB, 1.5GB, ...
    #[arg(long, value_parser = parse_size)]
    memory: Option<u64>,
    /// Time limit: 30s, 2m, 1h30m, ...
    #[arg(long, value_parser = parse_duration)]
    timeout: Option<Duration>,
    /// `none` (a network namespace of the job's own with only loopback: the default) or `host`
    /// (the host's network).
    #[arg(long, value_parser = parse_network)]
    network: Option<Network>,
    /// Host path SRC at DST in the job, read-only with `:ro`; repeatable.
    #[arg(long = "input", value_name = "SRC:DST[:ro]")]
    inputs: Vec<String>,
    /// Output NAME written by the job at PATH, kept in the results; repeatable.
    #[arg(long = "output", value_name = "NAME:PATH")]
    outputs: Vec<String>,
    /// Environment variable for the job; repeatable.
    #[arg(long = "env", short = 'e', value_name = "K=V")]
    env: Vec<String>,
    /// Results directory (default: a new directory under the current one).
    #[arg(long)]
    results: Option<PathBuf>,
    /// Execution id (default: generated).
    #[arg(long)]
    id: Option<String>,
    /// Print the RunCommandResult as JSON instead of the output and a summary.
    #[arg(long)]
    json: bool,
    /// Run this RunCommandRequest (JSON) instead of building one from the flags.
    #[arg(short = 'f', long = "file", value_name = "REQUEST.json")]
    file: Option<PathBuf>,
    /// The program and its arguments.
    #[arg(last = true)]
    command: Vec<String>,
}

fn parse_network(s: &str) -> Result<Network, String> {
    match s.trim().to_ascii_lowercase().as_str() {
        "none" => Ok(Network::None),
        "host" => Ok(Network::Host),
        _ => Err(format!(
            "unknown network {s:?}: use none (no network) or host"
        )),
    }
}

/// An error for the user: what went wrong and, where known, what to do.
struct Failure(String);

impl<E: std::fmt::Display> From<E> for Failure {
    fn from(e: E) -> Self {
        Failure(e.to_string())
    }
}

fn fail<T>(msg: impl Into<String>) -> Result<T, Failure> {
    Err(Failure(msg.into()))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = if cli.verbose { "info" } else { "error" };
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        // Colours only for a terminal: a log file gets no escape sequences at all.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(filter)),
        )
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("executor-host: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(real_main(cli)) {
        Ok(code) => ExitCode::from(code),
        Err(Failure(msg)) => {
            // Error text carries request- and plugin-supplied parts: nothing reaches the
            // terminal as a control sequence.
            eprintln!("executor-host: error: {}", escape_lines(&msg));
            ExitCode::from(1)
        }
    }
}

fn host_config(cli: &Cli) -> Result<HostConfig, Failure> {
    let mut config = HostConfig {
        plugin_dirs: cli.plugin_dirs.clone(),
        plugins: cli.plugins.clone(),
        disabled: cli.disabled.clone(),
        ..HostConfig::default()
    };
    config.supervision.call_timeout = cli.call_timeout;
    for plugin in &cli.plugins {
        if !plugin.as_os_str().as_encoded_bytes().contains(&b'/') {
            return fail(format!(
                "--plugin {}: give a path to the plugin binary (./{} for one in the current \
                 directory); plugins are not looked up on PATH",
                escape(&plugin.display().to_string()),
                escape(&plugin.display().to_string())
            ));
        }
    }
    for pin in &cli.pins {
        let Some((path, hex)) = pin.rsplit_once('=') else {
            return fail(format!("--pin {pin:?}: write PATH=SHA256HEX"));
        };
        config.pins.insert(PathBuf::from(path), hex.to_string());
    }
    if let Some(dir) = &cli.state_dir {
        let dir = absolute(dir)?;
        let engine = match &cli.command {
            Command::Run(r) => r.engine.clone(),
            Command::Logs { engine, .. }
            | Command::List { engine, .. }
            | Command::Cancel { engine, .. } => engine.clone(),
            Command::Plugins { .. } => "native".to_string(),
        };
        config.engines.insert(
            engine.trim().to_lowercase(),
            PluginConfig {
                state_dir: Some(dir),
                ..Default::default()
            },
        );
    }
    Ok(config)
}

fn absolute(p: &Path) -> Result<PathBuf, Failure> {
    if p.is_absolute() {
        return Ok(p.to_path_buf());
    }
    Ok(std::env::current_dir()
        .map_err(|e| Failure(format!("cannot read the current directory: {e}")))?
        .join(p))
}

async fn real_main(cli: Cli) -> Result<u8, Failure> {
    let config = host_config(&cli)?;
    let host = Host::from_config(&config).await?;
    let outcome = match &cli.command {
        Command::Plugins { json } => plugins(&host, *json).await,
        Command::Run(args) => run(&host, args).await,
        Command::Logs {
            engine,
            follow,
            tail,
            execution_id,
        } => logs(&host, engine, *follow, *tail, execution_id).await,
        Command::List { engine, json } => list(&host, engine, *json).await,
        Command::Cancel {
            engine,
            execution_id,
        } => cancel(&host, engine, execution_id).await,
    };
    host.shutdown().await;
    outcome
}

/// The engine's executor, with the provider's checks and a hint when it is missing.
async fn engine<'h>(host: &'h Host, engine: &str) -> Result<&'h PluginExecutor, Failure> {
    if let Err(e) = host.provider.get(engine).await {
        let mut msg = e.to_string();
        let broken: Vec<String> = host
            .plugins
            .iter()
            .filter_map(|p| {
                p.error
                    .as_ref()
                    .map(|e| format!("{}: {e}", p.path.display()))
            })
            .collect();
        if !broken.is_empty() {
            msg.push_str(&format!("\nplugins that failed: {}", broken.join("\n")));
        }
        if host.plugins.is_empty() {
            msg.push_str(
                "\nno plugin binaries were found; put executor-native next to executor-host or \
                 pass --plugin-dir DIR",
            );
        } else {
            msg.push_str("\nrun `executor-host plugins` to see what was found");
        }
        return fail(msg);
    }
    host.plugin(engine)
        .ok_or_else(|| Failure(format!("engine {engine} is not served by a plugin")))
}

fn explain(e: HostError) -> Failure {
    let hint = match e.code() {
        Some(ErrorCode::ExecutionNotFound) => {
            "; check the id with `executor-host list` (and the same --state-dir)"
        }
        Some(ErrorCode::ExecutionAlreadyStarted | ErrorCode::ExecutionAlreadyComplete) => {
            "; pick another --id"
        }
        _ => "",
    };
    Failure(format!("{e}{hint}"))
}

fn new_execution_id() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    format!("run-{secs}-{}", std::process::id())
}

fn build_request(args: &RunArgs) -> Result<RunCommandRequest, Failure> {
    let mut req = match &args.file {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| Failure(format!("cannot read {}: {e}", path.display())))?;
            let req: RunCommandRequest = serde_json::from_str(&text).map_err(|e| {
                Failure(format!(
                    "{} is not a RunCommandRequest: {e} (see schema/json for its shape)",
                    path.display()
                ))
            })?;
            if !args.command.is_empty() {
                return fail("give either -f REQUEST.json or a command after --, not both");
            }
            req
        }
        None => {
            if args.command.is_empty() {
                return fail(
                    "nothing to run: put the command after --, e.g. `executor-host run -- echo hi`",
                );
            }
            let env: Vec<serde_json::Value> = args
                .env
                .iter()
                .map(|kv| {
                    if kv.contains('=') {
                        Ok(serde_json::Value::from(kv.as_str()))
                    } else {
                        fail(format!("--env {kv:?}: write K=V"))
                    }
                })
                .collect::<Result<_, _>>()?;
            let mut params = serde_json::Map::new();
            params.insert("Entrypoint".into(), serde_json::json!(args.command));
            if !env.is_empty() {
                params.insert("EnvironmentVariables".into(), env.into());
            }
            RunCommandRequest {
                engine_params: Some(SpecConfig {
                    spec_type: args.engine.trim().to_lowercase(),
                    params,
                }),
                ..Default::default()
            }
        }
    };
    if req.execution_id.is_empty() {
        req.execution_id = args.id.clone().unwrap_or_else(new_execution_id);
    }
    // Before anything is made from it.
    if let Some(why) = id_problem(&req.execution_id) {
        return fail(format!("execution id {why}; pick another --id"));
    }
    if req.job_id.is_empty() {
        req.job_id = req.execution_id.clone();
    }
    if args.cpu.is_some() || args.memory.is_some() {
        let r = req.resources.get_or_insert_with(Resources::default);
        if let Some(cpu) = args.cpu {
            r.cpu = cpu;
        }
        if let Some(memory) = args.memory {
            r.memory = memory;
        }
    }
    if let Some(network) = args.network {
        req.network = Some(NetworkConfig {
            network_type: network,
            ..Default::default()
        });
    }
    for spec in &args.inputs {
        req.inputs.push(parse_input(spec)?);
    }
    for spec in &args.outputs {
        let Some((name, path)) = spec.split_once(':') else {
            return fail(format!(
                "--output {spec:?}: write NAME:PATH (PATH as the job sees it)"
            ));
        };
        req.outputs.push(ResultPath {
            name: name.to_string(),
            path: path.to_string(),
        });
    }
    if req.results_dir.is_empty() && req.execution_dir.is_empty() {
        let dir = match &args.results {
            Some(d) => new_results_dir(&absolute(d)?)?,
            None => fresh_results_dir(&req.execution_id)?,
        };
        req.results_dir = dir.display().to_string();
    }
    Ok(req)
}

/// Why an execution id is refused before anything is made from it: the schema's rule (it
/// becomes directory and cgroup names), and a letter or digit first so it never reads as an
/// option or a hidden or relative name.
fn id_problem(id: &str) -> Option<String> {
    if let Some(why) = executor_schema::validate::id_problem(id) {
        return Some(why);
    }
    if !id.starts_with(|c: char| c.is_ascii_alphanumeric()) {
        return Some(format!("{id:?} must start with a letter or a digit"));
    }
    None
}

/// `--results DIR`: made here, private (0700), and never one that already exists (a directory
/// someone else made, or a symlink, could send the job's results anywhere).
fn new_results_dir(dir: &Path) -> Result<PathBuf, Failure> {
    use std::os::unix::fs::DirBuilderExt;
    if let Some(parent) = dir.parent() {
        std::fs::create_dir_all(parent).map_err(|e| {
            Failure(format!(
                "cannot create {}, the parent of the results directory: {e}",
                parent.display()
            ))
        })?;
    }
    // mkdir: fails on anything already there, a symlink included, and follows none.
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => Ok(dir.to_path_buf()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => fail(format!(
            "the results directory {} already exists; pass a new path (it is created, private \
             to you) or leave --results out",
            dir.display()
        )),
        Err(e) => fail(format!(
            "cannot create the results directory {}: {e}; pass --results DIR",
            dir.display()
        )),
    }
}

/// Without `--results`: a new private directory `<id>-<random>` under the current one. The
/// random part makes the name unguessable, so nobody can have made it (or a symlink by that
/// name) beforehand; a name that exists is never used.
fn fresh_results_dir(id: &str) -> Result<PathBuf, Failure> {
    use std::os::unix::fs::PermissionsExt;
    let cwd = std::env::current_dir()
        .map_err(|e| Failure(format!("cannot read the current directory: {e}")))?;
    let dir = tempfile::Builder::new()
        .prefix(&format!("{id}-"))
        .rand_bytes(8)
        .permissions(std::fs::Permissions::from_mode(0o700))
        .tempdir_in(&cwd)
        .map_err(|e| {
            Failure(format!(
                "cannot create a results directory in {}: {e}; pass --results DIR",
                cwd.display()
            ))
        })?;
    Ok(dir.keep())
}

fn parse_input(spec: &str) -> Result<PreparedStorage, Failure> {
    let (rest, read_only) = match spec.strip_suffix(":ro") {
        Some(r) => (r, true),
        None => (spec.strip_suffix(":rw").unwrap_or(spec), false),
    };
    let Some((src, dst)) = rest.split_once(':') else {
        return fail(format!(
            "--input {spec:?}: write SRC:DST or SRC:DST:ro (host path, then the path in the job)"
        ));
    };
    let src =
        std::fs::canonicalize(src).map_err(|e| Failure(format!("--input {spec:?}: {src}: {e}")))?;
    let src = src.display().to_string();
    let mut params = serde_json::Map::new();
    params.insert("SourcePath".into(), src.clone().into());
    params.insert("ReadWrite".into(), (!read_only).into());
    Ok(PreparedStorage {
        input_source: InputSource {
            source: Some(SpecConfig {
                spec_type: "localDirectory".into(),
                params,
            }),
            alias: String::new(),
            target: dst.to_string(),
        },
        volume: StorageVolume {
            volume_type: StorageVolume::BIND,
            read_only,
            source: src,
            target: dst.to_string(),
        },
    })
}

#[derive(Default, Clone, Copy)]
struct Usage {
    peak_memory: Option<u64>,
    cpu_seconds: Option<f64>,
}

/// Sample live usage while the execution runs.
fn sample_usage(
    plugin: PluginExecutor,
    id: String,
) -> (Arc<Mutex<Usage>>, tokio::task::JoinHandle<()>) {
    let usage = Arc::new(Mutex::new(Usage::default()));
    let shared = usage.clone();
    let task = tokio::spawn(async move {
        loop {
            match plugin.stats(&id).await {
                Ok(s) => {
                    if let Ok(mut u) = shared.lock() {
                        let peak = s.memory_peak_bytes.or(s.memory_current_bytes);
                        u.peak_memory = u.peak_memory.max(peak);
                        u.cpu_seconds = s.cpu_seconds.or(u.cpu_seconds);
                    }
                }
                Err(_) => return,
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    (usage, task)
}

async fn run(host: &Host, args: &RunArgs) -> Result<u8, Failure> {
    let plugin = engine(host, &args.engine).await?;
    let req = build_request(args)?;
    let id = req.execution_id.clone();
    let results = req.results_path();
    let began = Instant::now();
    let deadline = args.timeout.map(|t| began + t);
    plugin.start(req, deadline).await.map_err(explain)?;
    let (usage, sampler) = sample_usage(plugin.clone(), id.clone());

    let stream_output = async {
        if args.json {
            return Ok::<(), Failure>(());
        }
        print_logs(
            plugin,
            LogStreamRequest {
                execution_id: id.clone(),
                follow: true,
                ..Default::default()
            },
        )
        .await
    };
    let finished = async {
        stream_output.await?;
        plugin.wait(&id).await.map_err(explain)
    };
    tokio::pin!(finished);
    let result = tokio::select! {
        r = &mut finished => r?,
        _ = tokio::signal::ctrl_c() => {
            eprintln!("executor-host: interrupted; cancelling {}", escape(&id));
            plugin.cancel(&id).await.map_err(explain)?;
            plugin.wait(&id).await.map_err(explain)?
        }
    };
    let wall = began.elapsed();
    sampler.abort();
    let mut usage = usage.lock().map(|u| *u).unwrap_or_default();
    // The totals the monitor read from the cgroup at the end: the only figures of a job too
    // short to be sampled, and the exact CPU time of any job. Older plugins answer
    // AlreadyComplete here, which leaves the samples.
    if let Ok(s) = plugin.stats(&id).await {
        usage.peak_memory = usage.peak_memory.max(s.memory_peak_bytes);
        usage.cpu_seconds = s.cpu_seconds.or(usage.cpu_seconds);
    }

    if args.json {
        println!("{}", serde_json::to_string_pretty(&result)?);
    } else {
        eprint!("{}", summary(&id, &result, &results, wall, usage));
    }
    Ok(exit_status(&result))
}

fn exit_status(result: &RunCommandResult) -> u8 {
    match u8::try_from(result.exit_code) {
        Ok(code) if result.error_msg.is_empty() || code != 0 => code,
        _ => 1,
    }
}

fn summary(id: &str, r: &RunCommandResult, results: &Path, wall: Duration, usage: Usage) -> String {
    let mut s = format!("--- {}: exit code {}", escape(id), r.exit_code);
    s.push_str(&format!(", wall {}", format_duration(wall)));
    if let Some(cpu) = usage.cpu_seconds {
        s.push_str(&format!(
            ", cpu {}",
            format_duration(Duration::from_secs_f64(cpu.max(0.0)))
        ));
    }
    if let Some(peak) = usage.peak_memory {
        s.push_str(&format!(", peak memory {}", format_size(peak)));
    }
    s.push('\n');
    if !r.error_msg.is_empty() {
        s.push_str(&format!("--- error: {}\n", escape(&r.error_msg)));
    }
    for (name, truncated) in [
        ("stdout", r.stdout_truncated),
        ("stderr", r.stderr_truncated),
    ] {
        if truncated {
            s.push_str(&format!(
                "--- {name} was longer than the result keeps; the file in the results has more\n"
            ));
        }
    }
    s.push_str(&format!(
        "--- results: {}\n",
        escape(&results.display().to_string())
    ));
    s
}

async fn plugins(host: &Host, json: bool) -> Result<u8, Failure> {
    let mut rows = Vec::new();
    for p in &host.plugins {
        let installed = match p.engine() {
            Some(engine) if !p.disabled => Some(host.provider.has(engine).await),
            _ => None,
        };
        rows.push(serde_json::json!({
            "path": p.path,
            "engine": p.engine(),
            "plugin": p.info.as_ref().map(|i| &i.plugin),
            "protocolVersion": p.info.as_ref().map(|i| &i.protocol_version),
            "installed": installed,
            "disabled": p.disabled,
            "capabilities": p.info.as_ref().map(|i| &i.capabilities),
            "error": p.error,
        }));
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(0);
    }
    if host.plugins.is_empty() {
        println!("no plugins found; put executor-* binaries next to executor-host or pass --plugin-dir DIR");
    }
    for p in &host.plugins {
        println!("{}", escape(&p.path.display().to_string()));
        let Some(info) = &p.info else {
            println!(
                "  error: {}",
                escape_lines(p.error.as_deref().unwrap_or("unknown"))
            );
            continue;
        };
        let c = &info.capabilities;
        let state = if p.disabled {
            "disabled"
        } else if host.provider.has(&info.engine).await {
            "installed"
        } else {
            "not installed"
        };
        println!(
            "  engine {} ({state}), {} {}, protocol {}",
            escape(&info.engine),
            escape(&info.plugin.name),
            escape(&info.plugin.version),
            escape(&info.protocol_version)
        );
        let limits: Vec<&str> = [
            ("cpu", c.limits.cpu),
            ("memory", c.limits.memory),
            ("pids", c.limits.pids),
            ("disk", c.limits.disk),
        ]
        .into_iter()
        .filter_map(|(n, on)| on.then_some(n))
        .collect();
        println!(
            "  cgroups {}, enforced limits [{}], network isolation {}, filesystem isolation {}, GPUs {}",
            serde_json::to_value(c.cgroup_mode)?.as_str().unwrap_or("?"),
            limits.join(" "),
            c.network_isolation,
            c.filesystem_isolation,
            c.gpus.len()
        );
        for note in &c.notes {
            println!("  note: {}", escape(note));
        }
    }
    Ok(0)
}

async fn logs(
    host: &Host,
    engine_key: &str,
    follow: bool,
    tail: bool,
    id: &str,
) -> Result<u8, Failure> {
    let plugin = engine(host, engine_key).await?;
    print_logs(
        plugin,
        LogStreamRequest {
            execution_id: id.to_string(),
            follow,
            tail,
            ..Default::default()
        },
    )
    .await?;
    Ok(0)
}

/// Copy an execution's log to our stdout and stderr, each stream to its own, as it arrives.
async fn print_logs(plugin: &PluginExecutor, req: LogStreamRequest) -> Result<(), Failure> {
    let mut stream = plugin.get_log_stream(req).await.map_err(explain)?;
    let (mut out, mut err) = (tokio::io::stdout(), tokio::io::stderr());
    while let Some(ev) = stream.next().await {
        let ev = ev.map_err(explain)?;
        let w: &mut (dyn tokio::io::AsyncWrite + Unpin + Send) = match &ev {
            LogEvent::Data {
                stream: StreamKind::Stdout,
                ..
            } => &mut out,
            LogEvent::Data { .. } => &mut err,
            LogEvent::End { .. } => break,
        };
        w.write_all(&ev.data_bytes()).await?;
        w.flush().await?;
    }
    Ok(())
}

async fn list(host: &Host, engine_key: &str, json: bool) -> Result<u8, Failure> {
    let plugin = engine(host, engine_key).await?;
    let execs = plugin.list().await.map_err(explain)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&execs)?);
        return Ok(0);
    }
    println!(
        "{:<28} {:<10} {:<25} {:>5}  ERROR",
        "EXECUTION", "STATE", "STARTED", "EXIT"
    );
    for e in execs {
        let state = serde_json::to_value(e.state)?
            .as_str()
            .unwrap_or_default()
            .to_string();
        println!(
            "{:<28} {:<10} {:<25} {:>5}  {}",
            escape(&e.execution_id),
            escape(&state),
            escape(e.started_at.as_deref().unwrap_or("-")),
            e.exit_code
                .map(|c| c.to_string())
                .unwrap_or_else(|| "-".into()),
            escape(e.error_msg.as_deref().unwrap_or(""))
        );
    }
    Ok(0)
}

async fn cancel(host: &Host, engine_key: &str, id: &str) -> Result<u8, Failure> {
    let plugin = engine(host, engine_key).await?;
    plugin.cancel(id).await.map_err(explain)?;
    eprintln!("cancelled {}", escape(id));
    Ok(0)
}
