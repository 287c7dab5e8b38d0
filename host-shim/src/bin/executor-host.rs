//! `executor-host`: run jobs through executor plugins from a shell.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::{Args, Parser, Subcommand};
use executor_host::config_file::{self, ConfigFile};
use executor_host::human::{
    escape, escape_lines, format_duration, format_size, parse_cpus, parse_duration, parse_size,
};
use executor_host::provider::sanitize_key;
use executor_host::{Executor, Host, HostConfig, HostError, PluginExecutor, ProviderError};
use executor_schema::{
    ErrorCode, InputSource, LogEvent, LogStream as StreamKind, LogStreamRequest, Network,
    NetworkConfig, PreparedStorage, Resources, ResultPath, RunCommandRequest, RunCommandResult,
    SpecConfig, StorageVolume,
};
use futures::StreamExt;
use tokio::io::AsyncWriteExt;
use tokio::signal::unix::{signal, Signal, SignalKind};

const GLOBAL: &str = "Global options";

#[derive(Parser)]
#[command(
    name = "executor-host",
    version,
    about = "Run jobs through executor plugins",
    after_help = "Settings come from the config file, then from these flags; \
                  `executor-host config` prints what results."
)]
struct Cli {
    /// Config file (TOML): plugin dirs, pins, disabled engines and each engine's settings.
    /// Default: /etc/executor-plugins/host.toml as root, else
    /// ~/.config/executor-plugins/host.toml; read when it exists.
    #[arg(long, global = true, value_name = "FILE", help_heading = GLOBAL)]
    config: Option<PathBuf>,
    /// Directory to look for plugin binaries (`executor-*`) in; repeatable; replaces the config
    /// file's. Default: the directory of this program.
    #[arg(long = "plugin-dir", global = true, value_name = "DIR", help_heading = GLOBAL)]
    plugin_dirs: Vec<PathBuf>,
    /// Use this plugin binary (a path; never looked up on PATH); repeatable.
    #[arg(long = "plugin", global = true, value_name = "PATH", help_heading = GLOBAL)]
    plugins: Vec<PathBuf>,
    /// Only run a plugin whose sha256 is HEX: `--pin PATH=HEX`; repeatable.
    #[arg(long = "pin", global = true, value_name = "PATH=HEX", help_heading = GLOBAL)]
    pins: Vec<String>,
    /// Do not offer this engine; repeatable.
    #[arg(long = "disable", global = true, value_name = "ENGINE", help_heading = GLOBAL)]
    disabled: Vec<String>,
    /// State root of the engine's plugin (where executions are recorded); `logs`, `list` and
    /// `cancel` need the same one as `run`. Default: the config file's, else the plugin's own
    /// (/var/lib/executor-plugins/<engine> as root).
    #[arg(long = "state-dir", global = true, value_name = "DIR", help_heading = GLOBAL)]
    state_dir: Option<PathBuf>,
    /// How long a plugin gets to answer a call that needs no time (isInstalled, bids, start,
    /// cancel, list, stats) before it is restarted: 30s, 2m, ... Waiting for a job is never
    /// limited by this. Default: the config file's, else 30s.
    #[arg(long = "call-timeout", global = true, value_name = "DURATION", value_parser = parse_duration, help_heading = GLOBAL)]
    call_timeout: Option<Duration>,
    /// Log what the host and plugins do (to stderr).
    #[arg(long, short, global = true, help_heading = GLOBAL)]
    verbose: bool,
    #[command(subcommand)]
    command: Command,
}

const RUN_EXAMPLES: &str = "\
Examples:
  # A command, its output live, its exit code as ours:
  executor-host run sh -c 'echo hello; exit 3'
  # Limits, a read-only input, an output kept in the results:
  executor-host run --cpus 500m -m 256Mi --timeout 1m -i ./data:/data -o out:/out \\
      sh -c 'wc -l /data/* > /out/counts'
  # In the background: print the id, then show its output so far and stop it:
  id=$(executor-host run -d sh -c 'while sleep 1; do date; done')
  executor-host logs \"$id\"; executor-host cancel \"$id\"

The job's stdin is /dev/null. Ctrl-C, SIGTERM and SIGHUP cancel the job (exit status 130).";

#[derive(Subcommand)]
enum Command {
    /// Run one job and wait for it: output streams live, results go to a new directory.
    #[command(after_help = RUN_EXAMPLES)]
    Run(Box<RunArgs>),
    /// Show the plugins found, their engines, versions and what they can enforce here.
    Plugins {
        /// Print what each plugin answered as JSON, in the protocol's own keys
        /// (schema/PROTOCOL.md), instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Show the output of an execution (started earlier, perhaps by another invocation).
    Logs {
        /// The engine that runs the execution.
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
        /// The engine whose executions to list.
        #[arg(long, default_value = "native")]
        engine: String,
        /// Print the plugin's answer as JSON, in the protocol's own keys (schema/PROTOCOL.md),
        /// instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Cancel a running execution.
    Cancel {
        /// The engine that runs the execution.
        #[arg(long, default_value = "native")]
        engine: String,
        execution_id: String,
    },
    /// Print the effective configuration (config file and flags), as a config file.
    Config,
}

#[derive(Args)]
#[command(next_help_heading = "Run options")]
struct RunArgs {
    /// The engine (plugin) to run the job with; `executor-host plugins` lists those found.
    #[arg(long, default_value = "native")]
    engine: String,
    /// CPU cores: 0.5, 2, or thousandths of a core (500m); at most the host's. Default: no
    /// limit.
    #[arg(long = "cpus", visible_alias = "cpu", value_name = "CORES", value_parser = parse_cpus)]
    cpus: Option<f64>,
    /// Memory limit: 256Mi, 256MiB, 1.5GB, ... (1024-based). Default: the engine's (1GiB for
    /// native).
    #[arg(long, short = 'm', value_name = "SIZE", value_parser = parse_size)]
    memory: Option<u64>,
    /// Time limit: 30s, 2m, 1h30m, ...; 0 for none. Default: none.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    timeout: Option<Duration>,
    /// `none` (a network namespace of the job's own with only loopback), `bridge` (its own
    /// namespace on the plugin's bridge, NAT to the outside, nothing of the host reachable) or
    /// `host` (the host's network). Default: none, as `bacalhau docker run`'s.
    #[arg(long, value_name = "none|bridge|host", value_parser = parse_network)]
    network: Option<Network>,
    /// Host path SRC (a file or directory) at DST in the job, read-only; `:rw` at the end to
    /// let the job write to it. Naming it here allows it. Repeatable.
    #[arg(long = "input", short = 'i', value_name = "SRC:DST[:rw]")]
    inputs: Vec<String>,
    /// Directory PATH in the job whose contents are kept in the results as NAME (default: the
    /// last part of PATH); repeatable.
    #[arg(long = "output", short = 'o', value_name = "[NAME:]PATH")]
    outputs: Vec<String>,
    /// Environment variable for the job: K=V, or K for this environment's value; repeatable.
    /// Jobs get no other variables from here.
    #[arg(long = "env", short = 'e', value_name = "K=V|K")]
    env: Vec<String>,
    /// Working directory of the job (an absolute path in the job). Default: the engine's.
    #[arg(long, short = 'w', value_name = "DIR")]
    workdir: Option<String>,
    /// Start the job, print its id and return; follow it with `logs -f`, stop it with `cancel`.
    #[arg(long, short = 'd', conflicts_with = "json")]
    detach: bool,
    /// Results directory, created here (must not exist). Default: a new `<id>-<random>`
    /// directory under the current one.
    #[arg(long, value_name = "DIR")]
    results: Option<PathBuf>,
    /// Execution id. Default: generated (run-<time>-<pid>).
    #[arg(long)]
    id: Option<String>,
    /// Print the plugin's RunCommandResult as JSON, in the protocol's own keys
    /// (schema/PROTOCOL.md), instead of the output and a summary.
    #[arg(long)]
    json: bool,
    /// Run this RunCommandRequest (JSON) instead of building one from the flags.
    #[arg(short = 'f', long = "file", value_name = "REQUEST.json")]
    file: Option<PathBuf>,
    /// The program and its arguments (after `--` when an argument could be read as an
    /// option of ours).
    #[arg(trailing_var_arg = true, value_name = "COMMAND")]
    command: Vec<String>,
}

fn parse_network(s: &str) -> Result<Network, String> {
    match s.trim().to_ascii_lowercase().as_str() {
        "none" => Ok(Network::None),
        "bridge" => Ok(Network::Bridge),
        "host" => Ok(Network::Host),
        _ => Err(format!(
            "unknown network {s:?}: use none (no network), bridge (out through NAT) or host"
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

/// The engine a command works on.
fn command_engine(cli: &Cli) -> String {
    let engine = match &cli.command {
        Command::Run(r) => r.engine.as_str(),
        Command::Logs { engine, .. }
        | Command::List { engine, .. }
        | Command::Cancel { engine, .. } => engine.as_str(),
        Command::Plugins { .. } | Command::Config => "native",
    };
    sanitize_key(engine)
}

/// The config file named by `--config`, else the one at the default location if any.
fn load_config_file(cli: &Cli) -> Result<(Option<PathBuf>, ConfigFile), Failure> {
    match &cli.config {
        Some(path) => Ok((Some(path.clone()), ConfigFile::load(path)?)),
        None => Ok(match ConfigFile::load_default()? {
            Some((path, file)) => (Some(path), file),
            None => (None, ConfigFile::default()),
        }),
    }
}

/// The config file with the flags applied over it: what this invocation runs with.
fn effective_config(
    cli: &Cli,
    file: ConfigFile,
    inputs: &[InputSpec],
) -> Result<ConfigFile, Failure> {
    let mut config = file;
    if !cli.plugin_dirs.is_empty() {
        config.plugin_dirs = cli
            .plugin_dirs
            .iter()
            .map(|d| absolute(d))
            .collect::<Result<_, _>>()?;
    }
    for plugin in &cli.plugins {
        if !plugin.as_os_str().as_encoded_bytes().contains(&b'/') {
            return fail(format!(
                "--plugin {}: give a path to the plugin binary (./{} for one in the current \
                 directory); plugins are not looked up on PATH",
                escape(&plugin.display().to_string()),
                escape(&plugin.display().to_string())
            ));
        }
        config.plugins.push(plugin.clone());
    }
    for pin in &cli.pins {
        let Some((path, hex)) = pin.rsplit_once('=') else {
            return fail(format!("--pin {pin:?}: write PATH=SHA256HEX"));
        };
        config.pins.insert(PathBuf::from(path), hex.to_string());
    }
    config.disabled.extend(cli.disabled.iter().cloned());
    if let Some(t) = cli.call_timeout {
        config.call_timeout = Some(format_duration_setting(t));
    }
    let engine = command_engine(cli);
    // Engine tables are matched as the provider matches keys.
    let key = config
        .engines
        .keys()
        .find(|k| sanitize_key(k) == engine)
        .cloned()
        .unwrap_or_else(|| engine.clone());
    if let Some(dir) = &cli.state_dir {
        let dir = absolute(dir)?;
        config.engines.entry(key.clone()).or_default().state_dir = Some(dir);
    }
    // Whoever names a path on their own command line allows it; nothing else is allowed by it.
    if !inputs.is_empty() {
        let entries = &mut config
            .engines
            .entry(key)
            .or_default()
            .allow_listed_local_paths;
        for input in inputs {
            let entry = input.allow_list_entry();
            if !entries.contains(&entry) {
                entries.push(entry);
            }
        }
    }
    Ok(config)
}

/// `30s`, `1.5s`: a duration as the config file and `--call-timeout` read it.
fn format_duration_setting(d: Duration) -> String {
    if d.subsec_nanos() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}ms", d.as_millis())
    }
}

fn host_config(config: &ConfigFile) -> Result<HostConfig, Failure> {
    let mut host = HostConfig {
        plugin_dirs: config.plugin_dirs.clone(),
        plugins: config.plugins.clone(),
        pins: config.pins.clone(),
        disabled: config.disabled.clone(),
        engines: config
            .engines
            .iter()
            .map(|(k, v)| (sanitize_key(k), v.clone()))
            .collect(),
        ..HostConfig::default()
    };
    host.supervision.call_timeout = match &config.call_timeout {
        Some(t) => parse_duration(t)?,
        None => DEFAULT_CALL_TIMEOUT,
    };
    Ok(host)
}

const DEFAULT_CALL_TIMEOUT: Duration = Duration::from_secs(30);

fn absolute(p: &Path) -> Result<PathBuf, Failure> {
    if p.is_absolute() {
        return Ok(p.to_path_buf());
    }
    Ok(std::env::current_dir()
        .map_err(|e| Failure(format!("cannot read the current directory: {e}")))?
        .join(p))
}

/// Where plugins are looked for: the configured directories, else this program's own.
fn plugin_dirs_searched(config: &ConfigFile) -> Vec<PathBuf> {
    if !config.plugin_dirs.is_empty() || !config.plugins.is_empty() {
        return config.plugin_dirs.clone();
    }
    std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(Path::to_path_buf))
        .into_iter()
        .collect()
}

/// `executor-host config`: the effective configuration, defaults filled in, as a config file.
fn print_config(path: Option<&Path>, config: &ConfigFile) -> Result<u8, Failure> {
    let mut shown = config.clone();
    shown.plugin_dirs = plugin_dirs_searched(config);
    if shown.call_timeout.is_none() {
        shown.call_timeout = Some(format_duration_setting(DEFAULT_CALL_TIMEOUT));
    }
    match path {
        Some(p) => println!("# config file: {}", escape(&p.display().to_string())),
        None => println!(
            "# no config file ({} does not exist); defaults and flags",
            config_file::default_path()
                .map(|p| p.display().to_string())
                .unwrap_or_else(|| "the default location".into())
        ),
    }
    println!("# keys not shown take the plugin's defaults (schema/PROTOCOL.md, initialize.config)");
    print!("{}", shown.to_toml()?);
    Ok(0)
}

async fn real_main(cli: Cli) -> Result<u8, Failure> {
    let (path, file) = load_config_file(&cli)?;
    // Inputs are resolved before anything starts: they are allow-listed for the plugin.
    let inputs = match &cli.command {
        Command::Run(args) => args
            .inputs
            .iter()
            .map(|s| parse_input(s))
            .collect::<Result<Vec<_>, _>>()?,
        _ => Vec::new(),
    };
    let config = effective_config(&cli, file, &inputs)?;
    if let Command::Config = cli.command {
        return print_config(path.as_deref(), &config);
    }
    let mut host_config = host_config(&config)?;
    // A command that works on one engine uses its plugin right away: the probe that finds it
    // is that plugin, started once.
    if !matches!(cli.command, Command::Plugins { .. }) {
        host_config.adopt_probe = Some(command_engine(&cli));
    }
    let host = Host::from_config(&host_config).await?;
    let ctx = Context {
        host: &host,
        config: &config,
        hint: HintPrefix::new(&cli),
    };
    let outcome = match &cli.command {
        Command::Plugins { json } => plugins(&host, *json).await,
        Command::Run(args) => run(&ctx, args, inputs).await,
        Command::Logs {
            engine,
            follow,
            tail,
            execution_id,
        } => logs(&ctx, engine, *follow, *tail, execution_id).await,
        Command::List { engine, json } => list(&ctx, engine, *json).await,
        Command::Cancel {
            engine,
            execution_id,
        } => cancel(&ctx, engine, execution_id).await,
        Command::Config => Ok(0),
    };
    host.shutdown().await;
    outcome
}

/// What a command needs besides its own arguments.
struct Context<'a> {
    host: &'a Host,
    config: &'a ConfigFile,
    hint: HintPrefix,
}

/// The global flags a later `logs` or `cancel` needs to reach the same plugin and state, for
/// the commands the run prints.
struct HintPrefix(String);

impl HintPrefix {
    fn new(cli: &Cli) -> HintPrefix {
        let mut words = vec!["executor-host".to_string()];
        let mut flag = |name: &str, value: &Path| {
            let value = absolute(value).unwrap_or_else(|_| value.to_path_buf());
            words.push(name.to_string());
            words.push(shell_word(&value.display().to_string()));
        };
        if let Some(c) = &cli.config {
            flag("--config", c);
        }
        for d in &cli.plugin_dirs {
            flag("--plugin-dir", d);
        }
        for p in &cli.plugins {
            flag("--plugin", p);
        }
        if let Some(d) = &cli.state_dir {
            flag("--state-dir", d);
        }
        for p in &cli.pins {
            words.push("--pin".into());
            words.push(shell_word(p));
        }
        HintPrefix(words.join(" "))
    }

    /// `executor-host [globals] <command> [--engine E] <id>`.
    fn command(&self, command: &str, engine: &str, id: &str) -> String {
        let engine = if sanitize_key(engine) == "native" {
            String::new()
        } else {
            format!(" --engine {}", shell_word(engine))
        };
        format!("{} {command}{engine} {}", self.0, shell_word(id))
    }
}

/// `word` as one shell word: as is when it is plain, else single-quoted.
fn shell_word(word: &str) -> String {
    let plain = !word.is_empty()
        && word
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:@%+,".contains(c));
    if plain {
        word.to_string()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

/// The engine's executor, with the provider's checks and what to do when it is missing.
async fn engine<'h>(ctx: &Context<'h>, engine: &str) -> Result<&'h PluginExecutor, Failure> {
    let host = ctx.host;
    let key = sanitize_key(engine);
    match host.provider.get(engine).await {
        Ok(_) => {}
        Err(ProviderError::Check { source, .. }) => return Err(explain_config(source, &key)),
        Err(ProviderError::Disabled { .. }) => {
            return fail(format!(
                "engine {} is disabled (by --disable or `disabled` in the config file)",
                escape(&key)
            ))
        }
        Err(e @ ProviderError::NotInstalled { .. }) => {
            return fail(format!(
                "{e}: its plugin says it cannot run jobs here; `executor-host plugins` shows \
                 what it needs"
            ))
        }
        Err(ProviderError::NoMatchingKey { .. }) => {
            let dirs = plugin_dirs_searched(ctx.config);
            let mut places: Vec<String> = dirs.iter().map(|d| d.display().to_string()).collect();
            places.extend(ctx.config.plugins.iter().map(|p| p.display().to_string()));
            let mut msg = format!(
                "no plugin for engine {} found in {}",
                escape(&key),
                if places.is_empty() {
                    "no place (no plugin directory or plugin configured)".to_string()
                } else {
                    places.join(", ")
                }
            );
            let broken: Vec<String> = host
                .plugins
                .iter()
                .filter_map(|p| {
                    p.error
                        .as_ref()
                        .map(|e| format!("{}: {e}", p.path.display()))
                })
                .collect();
            let engines: Vec<&str> = host.plugins.iter().filter_map(|p| p.engine()).collect();
            if !engines.is_empty() {
                msg.push_str(&format!(" (engines found: {})", engines.join(", ")));
            }
            msg.push_str(&format!(
                "; put executor-{key} there or pass --plugin-dir DIR or --plugin PATH"
            ));
            if !broken.is_empty() {
                msg.push_str(&format!("\nplugins that failed: {}", broken.join("\n")));
            }
            return fail(msg);
        }
    }
    host.plugin(engine)
        .ok_or_else(|| Failure(format!("engine {engine} is not served by a plugin")))
}

/// A plugin that cannot start: its own words, with the setting it names turned into the flag
/// or config file key that changes it.
fn explain_config(e: HostError, engine: &str) -> Failure {
    let msg = match &e {
        HostError::Refused { message, .. } => {
            format!("the {engine} plugin refused its configuration: {message}")
        }
        other => other.to_string(),
    };
    Failure(name_settings(&msg, engine))
}

/// Plugins name their settings as `config.<key>`; a person sets them with a flag or in the
/// config file.
fn name_settings(msg: &str, engine: &str) -> String {
    let mut out = String::new();
    let mut rest = msg;
    while let Some(at) = rest.find("config.") {
        out.push_str(&rest[..at]);
        let after = &rest[at + "config.".len()..];
        let len = after
            .find(|c: char| !c.is_ascii_alphanumeric())
            .unwrap_or(after.len());
        let key = &after[..len];
        match key {
            "" => out.push_str("config."),
            "stateDir" => out.push_str(&format!(
                "--state-dir DIR (or stateDir in [engines.{engine}] of the config file)"
            )),
            "allowListedLocalPaths" => out.push_str(&format!(
                "allowListedLocalPaths in [engines.{engine}] of the config file (an --input \
                 path is allowed by naming it)"
            )),
            key => out.push_str(&format!("{key} in [engines.{engine}] of the config file")),
        }
        rest = &after[len..];
    }
    out.push_str(rest);
    out
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

/// The smallest memory limit a job is started with. Below it the job's first process is
/// killed (or cannot even be set up) before it runs the command, which reads as a failure of
/// the command; a shell was measured to need about half of it just to start.
const MIN_MEMORY: u64 = 1 << 20;

/// CPUs the host has online: a job can use no more, whatever its limit says.
fn host_cpus() -> Option<f64> {
    // SAFETY: sysconf reads a system value; no memory is handed over.
    let n = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
    (n > 0).then_some(n as f64)
}

/// A request the host cannot satisfy, said before anything is made for it, naming the flag or
/// (for a limit from a request file) the field.
fn impossible(resources: Option<&Resources>, args: &RunArgs) -> Result<(), Failure> {
    let Some(r) = resources else {
        return Ok(());
    };
    let cpu_name = if args.cpus.is_some() {
        "--cpus"
    } else {
        "Resources.CPU"
    };
    let memory_name = if args.memory.is_some() {
        "--memory"
    } else {
        "Resources.Memory"
    };
    if let Some(host) = host_cpus() {
        if r.cpu > host {
            return fail(format!(
                "{cpu_name} {}: this host has {host} CPUs; ask for at most {host}",
                r.cpu
            ));
        }
    }
    // Zero is no limit.
    if r.memory != 0 && r.memory < MIN_MEMORY {
        return fail(format!(
            "{memory_name} {}: too small to start a process; give at least {}",
            format_size(r.memory),
            format_size(MIN_MEMORY)
        ));
    }
    Ok(())
}

/// The job's environment from `-e`: `K=V` as given, `K` with this environment's value.
fn job_env(args: &RunArgs) -> Result<Vec<serde_json::Value>, Failure> {
    args.env
        .iter()
        .map(|kv| {
            if kv.contains('=') {
                return Ok(serde_json::Value::from(kv.as_str()));
            }
            if kv.is_empty() {
                return fail("--env \"\": write K=V, or K to pass this environment's value");
            }
            match std::env::var(kv) {
                Ok(v) => Ok(format!("{kv}={v}").into()),
                Err(std::env::VarError::NotPresent) => fail(format!(
                    "--env {kv}: {kv} is not set here; write {kv}=VALUE"
                )),
                Err(std::env::VarError::NotUnicode(_)) => fail(format!(
                    "--env {kv}: its value here is not UTF-8; write {kv}=VALUE"
                )),
            }
        })
        .collect()
}

/// The request, checked, without its results directory (made only once nothing more can be
/// refused here).
fn build_request(args: &RunArgs, inputs: Vec<InputSpec>) -> Result<RunCommandRequest, Failure> {
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
                return fail("give either -f REQUEST.json or a command, not both");
            }
            if !args.env.is_empty() || args.workdir.is_some() {
                return fail(
                    "--env and --workdir build a request; with -f REQUEST.json set them in the \
                     file's EngineParams",
                );
            }
            req
        }
        None => {
            if args.command.is_empty() {
                return fail(
                    "nothing to run: give the command, e.g. `executor-host run echo hi` (after \
                     -- when its arguments look like options: `executor-host run -- ls -l`)",
                );
            }
            let env = job_env(args)?;
            let mut params = serde_json::Map::new();
            params.insert("Entrypoint".into(), serde_json::json!(args.command));
            if !env.is_empty() {
                params.insert("EnvironmentVariables".into(), env.into());
            }
            if let Some(dir) = &args.workdir {
                params.insert("WorkingDirectory".into(), dir.as_str().into());
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
    if args.cpus.is_some() || args.memory.is_some() {
        let r = req.resources.get_or_insert_with(Resources::default);
        if let Some(cpu) = args.cpus {
            r.cpu = cpu;
        }
        if let Some(memory) = args.memory {
            r.memory = memory;
        }
    }
    // The CLI asks for None unless told otherwise: a request without a Network means Default,
    // which a plugin may make Bridge (a way out); a person who wants one says so. A request
    // file keeps its own Network unless the flag is given.
    if let Some(network) = args
        .network
        .or(args.file.is_none().then_some(Network::None))
    {
        req.network = Some(NetworkConfig {
            network_type: network,
            ..Default::default()
        });
    }
    impossible(req.resources.as_ref(), args)?;
    req.inputs
        .extend(inputs.into_iter().map(InputSpec::into_storage));
    for spec in &args.outputs {
        let (name, path) = match spec.split_once(':') {
            Some((name, path)) => (name.to_string(), path),
            None => {
                let name = Path::new(spec)
                    .file_name()
                    .and_then(|n| n.to_str())
                    .unwrap_or_default()
                    .to_string();
                (name, spec.as_str())
            }
        };
        if name.is_empty() || !path.starts_with('/') {
            return fail(format!(
                "--output {spec:?}: write PATH or NAME:PATH, PATH absolute as the job sees it \
                 (-o out:/out)"
            ));
        }
        req.outputs.push(ResultPath {
            name,
            path: path.to_string(),
        });
    }
    Ok(req)
}

/// Make the results directory unless the request names one; whether it was made here.
fn make_results_dir(args: &RunArgs, req: &mut RunCommandRequest) -> Result<bool, Failure> {
    if !req.results_dir.is_empty() || !req.execution_dir.is_empty() {
        return Ok(false);
    }
    let dir = match &args.results {
        Some(d) => new_results_dir(&absolute(d)?)?,
        None => fresh_results_dir(&req.execution_id)?,
    };
    req.results_dir = dir.display().to_string();
    Ok(true)
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

/// One `--input SRC:DST[:rw]`, its source resolved.
struct InputSpec {
    /// Absolute, with symlinks resolved: the path the plugin opens without following any.
    source: String,
    target: String,
    read_write: bool,
}

impl InputSpec {
    /// The allow-list entry that admits exactly this input: the path with glob syntax escaped
    /// (so it matches itself, not a pattern) and its access spelled out.
    fn allow_list_entry(&self) -> PathBuf {
        let mut entry = String::with_capacity(self.source.len() + 4);
        for c in self.source.chars() {
            if matches!(c, '*' | '?' | '[' | ']' | '{' | '}' | ',' | '\\') {
                entry.push('\\');
            }
            entry.push(c);
        }
        entry.push_str(if self.read_write { ":rw" } else { ":ro" });
        PathBuf::from(entry)
    }

    fn into_storage(self) -> PreparedStorage {
        let mut params = serde_json::Map::new();
        params.insert("SourcePath".into(), self.source.clone().into());
        params.insert("ReadWrite".into(), self.read_write.into());
        PreparedStorage {
            input_source: InputSource {
                source: Some(SpecConfig {
                    spec_type: "localDirectory".into(),
                    params,
                }),
                alias: String::new(),
                target: self.target.clone(),
            },
            volume: StorageVolume {
                volume_type: StorageVolume::BIND,
                read_only: !self.read_write,
                source: self.source,
                target: self.target,
            },
        }
    }
}

/// `SRC:DST`, `SRC:DST:ro` (the default) or `SRC:DST:rw`.
fn parse_input(spec: &str) -> Result<InputSpec, Failure> {
    let (rest, read_write) = if let Some(r) = spec.strip_suffix(":rw") {
        (r, true)
    } else {
        (spec.strip_suffix(":ro").unwrap_or(spec), false)
    };
    let usage = || {
        Failure(format!(
            "--input {spec:?}: write SRC:DST, or SRC:DST:rw to let the job write to it (SRC a \
             host path, DST the absolute path in the job)"
        ))
    };
    let Some((src, dst)) = rest.split_once(':') else {
        return Err(usage());
    };
    if src.is_empty() || !dst.starts_with('/') {
        return Err(usage());
    }
    let source =
        std::fs::canonicalize(src).map_err(|e| Failure(format!("--input {spec:?}: {src}: {e}")))?;
    let Some(source) = source.to_str().map(str::to_string) else {
        return fail(format!(
            "--input {spec:?}: {} is not UTF-8, which a request cannot carry",
            source.display()
        ));
    };
    Ok(InputSpec {
        source,
        target: dst.to_string(),
        read_write,
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

/// Ctrl-C, SIGTERM and SIGHUP: each cancels the job, as a person closing the terminal or a
/// service manager stopping us means it.
struct Interrupts {
    int: Signal,
    term: Signal,
    hup: Signal,
}

impl Interrupts {
    fn new() -> Result<Interrupts, Failure> {
        let on = |kind: SignalKind, name: &str| {
            signal(kind).map_err(|e| Failure(format!("cannot handle {name}: {e}")))
        };
        Ok(Interrupts {
            int: on(SignalKind::interrupt(), "SIGINT")?,
            term: on(SignalKind::terminate(), "SIGTERM")?,
            hup: on(SignalKind::hangup(), "SIGHUP")?,
        })
    }

    /// The name of the next one that arrives.
    async fn next(&mut self) -> &'static str {
        tokio::select! {
            _ = self.int.recv() => "Ctrl-C",
            _ = self.term.recv() => "SIGTERM",
            _ = self.hup.recv() => "SIGHUP",
        }
    }
}

/// The exit status after an interrupt, as a shell reports a command stopped by Ctrl-C.
const INTERRUPTED: u8 = 130;

async fn run(ctx: &Context<'_>, args: &RunArgs, inputs: Vec<InputSpec>) -> Result<u8, Failure> {
    let plugin = engine(ctx, &args.engine).await?;
    let mut req = build_request(args, inputs)?;
    // Handled from here on: one that arrives while the job starts cancels it once it has.
    let mut interrupts = Interrupts::new()?;
    let made_results = make_results_dir(args, &mut req)?;
    let id = req.execution_id.clone();
    let results = req.results_path();
    let network = network_name(req.network.as_ref());
    let timeout = args.timeout.filter(|t| !t.is_zero());
    let began = Instant::now();
    let deadline = timeout.map(|t| began + t);
    if let Err(e) = plugin.start(req, deadline).await {
        // A refused run leaves nothing behind; rmdir removes only a directory still empty.
        // Only on the plugin's answer: when it went away during the start, the job may yet
        // write its results there.
        if made_results && e.code().is_some() {
            let _ = std::fs::remove_dir(&results);
        }
        // Settings a plugin checks only at start are named as a person sets them.
        let Failure(msg) = explain(e);
        return fail(name_settings(&msg, &sanitize_key(&args.engine)));
    }
    eprintln!(
        "--- started {} (network {network}); results in {}\n--- follow: {}; cancel: {}",
        escape(&id),
        escape(&results.display().to_string()),
        escape(&ctx.hint.command("logs -f", &args.engine, &id)),
        escape(&ctx.hint.command("cancel", &args.engine, &id)),
    );
    if args.detach {
        println!("{id}");
        return Ok(0);
    }
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
    let mut interrupted = None;
    let result = tokio::select! {
        r = &mut finished => r?,
        how = interrupts.next() => {
            eprintln!("executor-host: {how} received; cancelling {}", escape(&id));
            interrupted = Some(how);
            // The cancel itself is a prompt call and always completes: only the wait for the
            // job to stop (its grace period) is given up on a second signal.
            plugin.cancel(&id).await.map_err(explain)?;
            tokio::select! {
                r = plugin.wait(&id) => r.map_err(explain)?,
                // A second one: the person wants their shell back, not the job's grace period.
                again = interrupts.next() => {
                    sampler.abort();
                    eprintln!(
                        "executor-host: {again} again; not waiting for {} to stop \
                         (`executor-host list` shows when it has)",
                        escape(&id)
                    );
                    return Ok(INTERRUPTED);
                }
            }
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
        let end = Ending {
            network: &network,
            interrupted,
            wall,
            usage,
        };
        eprint!("{}", summary(&id, &result, &results, &end));
    }
    if interrupted.is_some() {
        return Ok(INTERRUPTED);
    }
    Ok(exit_status(&result))
}

fn network_name(network: Option<&NetworkConfig>) -> String {
    match network.map(|n| n.network_type) {
        // What a request file may leave to the plugin: Bridge where it works, else None.
        None | Some(Network::Default) => "default".into(),
        Some(n) => serde_json::to_value(n)
            .ok()
            .and_then(|v| v.as_str().map(str::to_lowercase))
            .unwrap_or_else(|| "?".into()),
    }
}

fn exit_status(result: &RunCommandResult) -> u8 {
    match u8::try_from(result.exit_code) {
        Ok(code) if result.error_msg.is_empty() || code != 0 => code,
        _ => 1,
    }
}

/// How a run ended, besides its result.
struct Ending<'a> {
    network: &'a str,
    /// The signal that cancelled it here.
    interrupted: Option<&'static str>,
    wall: Duration,
    usage: Usage,
}

/// Whether the result is that of a cancelled execution (the wire's text for it).
fn was_cancelled(r: &RunCommandResult) -> bool {
    Some(r.error_msg.as_str()) == ErrorCode::ExecutionAlreadyCancelled.sentinel()
}

fn summary(id: &str, r: &RunCommandResult, results: &Path, end: &Ending) -> String {
    let cancelled = end.interrupted.is_some() || was_cancelled(r);
    let mut s = match (end.interrupted, cancelled) {
        (Some(how), _) => format!("--- {}: cancelled ({how})", escape(id)),
        (None, true) => format!("--- {}: cancelled", escape(id)),
        (None, false) => format!("--- {}: exit code {}", escape(id), r.exit_code),
    };
    s.push_str(&format!(", wall {}", format_duration(end.wall)));
    if let Some(cpu) = end.usage.cpu_seconds {
        s.push_str(&format!(
            ", cpu {}",
            format_duration(Duration::from_secs_f64(cpu.max(0.0)))
        ));
    }
    if let Some(peak) = end.usage.peak_memory {
        s.push_str(&format!(", peak memory {}", format_size(peak)));
    }
    s.push_str(&format!(", network {}", end.network));
    s.push('\n');
    if !r.error_msg.is_empty() && !cancelled {
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
    ctx: &Context<'_>,
    engine_key: &str,
    follow: bool,
    tail: bool,
    id: &str,
) -> Result<u8, Failure> {
    let plugin = engine(ctx, engine_key).await?;
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

async fn list(ctx: &Context<'_>, engine_key: &str, json: bool) -> Result<u8, Failure> {
    let plugin = engine(ctx, engine_key).await?;
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

async fn cancel(ctx: &Context<'_>, engine_key: &str, id: &str) -> Result<u8, Failure> {
    let plugin = engine(ctx, engine_key).await?;
    plugin.cancel(id).await.map_err(explain)?;
    eprintln!("cancelled {}", escape(id));
    Ok(0)
}
