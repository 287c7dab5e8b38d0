//! `bench`: the performance budget of docs/PERFORMANCE.md, measured against baselines in the same run.
//!
//! ```text
//! cargo build --release -p executor-plugin --bin executor-native
//! cargo run --release -p executor-tests --bin bench [-- --quick] [-- --json]
//! ```
//!
//! Every figure is printed with the baseline it is judged against and the ratio. Latency,
//! throughput and log follow go through the host shim's `Executor` trait (`PluginExecutor`:
//! host -> plugin -> monitor -> job), as Bacalhau would call it (the log as stdcopy frames);
//! the other sections use the typed `ExecutorApiClient` over a `PluginProcess`, to measure the
//! plugin without the host's resume machinery.

use std::collections::{BTreeMap, HashMap};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use executor_host::process::{PluginProcess, SpawnOptions};
use executor_host::{Executor, PluginExecutor, PluginSpec};
use executor_plugin::monitor::host_sandbox::{Ahead, HostSandbox};
use executor_plugin::state::{MonitorSpec, RequestRecord};
use executor_schema::api::ExecutorApiClient;
use executor_schema::{
    ExecutionState, LogEvent, LogStream, LogStreamRequest, PluginConfig, RunCommandRequest,
    RunCommandResult,
};
use futures::StreamExt;
use serde_json::{json, Value};

const GIB: u64 = 1 << 30;
const MIB: f64 = 1024.0 * 1024.0;
/// The known content of the log-follow job, repeated: each received byte is compared with it.
const PATTERN: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ\n";

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type Res<T> = Result<T, BoxError>;

fn fail<T>(msg: impl Into<String>) -> Res<T> {
    Err(msg.into().into())
}

struct Sizes {
    latency_runs: usize,
    throughput_jobs: usize,
    follow_bytes: u64,
    results_bytes: u64,
    concurrent: usize,
    flood_bytes: u64,
}

impl Sizes {
    fn full() -> Self {
        Sizes {
            latency_runs: 400,
            throughput_jobs: 256,
            follow_bytes: GIB,
            results_bytes: GIB,
            concurrent: 1000,
            flood_bytes: 10 * GIB,
        }
    }
    fn quick() -> Self {
        Sizes {
            latency_runs: 60,
            throughput_jobs: 64,
            follow_bytes: 64 << 20,
            results_bytes: 64 << 20,
            concurrent: 100,
            flood_bytes: GIB,
        }
    }
}

/// One measured figure, judged against its baseline.
#[derive(serde::Serialize)]
struct Figure {
    name: String,
    value: f64,
    unit: &'static str,
    baseline_name: String,
    baseline: f64,
    /// value / baseline.
    ratio: f64,
    /// The budget (docs/PERFORMANCE.md) this figure is held to, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    budget: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pass: Option<bool>,
}

#[derive(Default)]
struct Report {
    figures: Vec<Figure>,
    notes: BTreeMap<String, Value>,
    json: bool,
}

impl Report {
    fn add(
        &mut self,
        name: impl Into<String>,
        value: f64,
        unit: &'static str,
        baseline_name: impl Into<String>,
        baseline: f64,
        budget: Option<(&str, bool)>,
    ) {
        let fig = Figure {
            name: name.into(),
            value,
            unit,
            baseline_name: baseline_name.into(),
            baseline,
            ratio: if baseline != 0.0 {
                value / baseline
            } else {
                f64::NAN
            },
            budget: budget.map(|(b, _)| b.to_string()),
            pass: budget.map(|(_, p)| p),
        };
        if !self.json {
            println!(
                "  {:<44} {:>12} {:<6} | {:<34} {:>12} | x{:<8.3} {}",
                fig.name,
                fmt_num(fig.value),
                fig.unit,
                fig.baseline_name,
                fmt_num(fig.baseline),
                fig.ratio,
                match (&fig.budget, fig.pass) {
                    (Some(b), Some(true)) => format!("PASS ({b})"),
                    (Some(b), _) => format!("FAIL ({b})"),
                    _ => String::new(),
                }
            );
        }
        self.figures.push(fig);
    }

    fn note(&mut self, key: &str, value: Value) {
        if !self.json {
            println!("    {key}: {value}");
        }
        self.notes.insert(key.into(), value);
    }

    fn section(&self, title: &str) {
        if !self.json {
            println!("\n{title}");
        }
    }
}

fn fmt_num(v: f64) -> String {
    if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else if v.abs() >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.4}")
    }
}

struct Options {
    quick: bool,
    /// Run only these sections (latency, throughput, follow, results, memory).
    only: Vec<String>,
    json: bool,
    plugin: PathBuf,
    /// Where the plugin and its monitors write timing marks (`--breakdown`).
    breakdown: Option<PathBuf>,
}

impl Options {
    fn wants(&self, section: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|s| s == section)
    }
}

fn parse_args() -> Res<Options> {
    let mut quick = false;
    let mut json = false;
    let mut plugin = None;
    let mut breakdown = false;
    let mut only = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--quick" => quick = true,
            "--json" => json = true,
            "--breakdown" => breakdown = true,
            "--plugin" => plugin = args.next().map(PathBuf::from),
            "--only" => only.extend(
                args.next()
                    .iter()
                    .flat_map(|s| s.split(',').map(str::to_string).collect::<Vec<_>>()),
            ),
            "-h" | "--help" => {
                println!(
                    "usage: bench [--quick] [--json] [--only latency,throughput,follow,results,memory] \
                     [--plugin PATH-TO-executor-native] [--breakdown]\n\
                     --breakdown: the plugin and its monitors mark each step of a start (which \
                     costs ~0.2 ms per run); the latency section prints the median time of each"
                );
                std::process::exit(0);
            }
            other => return fail(format!("unknown argument {other:?} (try --help)")),
        }
    }
    let plugin = match plugin {
        Some(p) => p,
        None => {
            // The plugin binary lives beside this one in the same target profile directory.
            let me = std::env::current_exe()?;
            me.with_file_name("executor-native")
        }
    };
    if !plugin.exists() {
        return fail(format!(
            "{} is missing: build it first with \
             `cargo build --release -p executor-plugin --bin executor-native`",
            plugin.display()
        ));
    }
    let breakdown = breakdown.then(|| {
        std::env::temp_dir().join(format!("executor-bench-timing-{}.log", std::process::id()))
    });
    Ok(Options {
        quick,
        only,
        json,
        plugin,
        breakdown,
    })
}

fn plugin_config(state: &Path) -> PluginConfig {
    PluginConfig {
        state_dir: Some(state.to_path_buf()),
        max_retained: Some(100_000),
        kill_grace: Some(1.0),
        ..Default::default()
    }
}

/// A native request for `argv` whose results go to `work/<id>`.
fn request_in(
    work: &Path,
    id: &str,
    argv: &[&str],
    limits: Option<Value>,
) -> Res<RunCommandRequest> {
    let results = work.join(id);
    std::fs::create_dir_all(&results)?;
    let mut req = json!({
        "JobID": "bench",
        "ExecutionID": id,
        "ResultsDir": results,
        "EngineParams": {"Type": "native", "Params": {"Entrypoint": argv}},
    });
    if let Some(l) = limits {
        req["OutputLimits"] = l;
    }
    Ok(serde_json::from_value(req)?)
}

/// The host shim's supervised `PluginExecutor` over its own plugin, state and work directories:
/// what Bacalhau's compute node would call.
struct HostHarness {
    exec: PluginExecutor,
    state: tempfile::TempDir,
    work: tempfile::TempDir,
}

impl HostHarness {
    async fn start(exe: &Path) -> Res<HostHarness> {
        let state = tempfile::Builder::new().prefix("bench-state").tempdir()?;
        let work = tempfile::Builder::new().prefix("bench-work").tempdir()?;
        let mut spec = PluginSpec::new("native", exe);
        spec.config = plugin_config(state.path());
        let exec = PluginExecutor::new(spec);
        // Started lazily on first use; started here so no figure includes the launch.
        exec.info().await?;
        Ok(HostHarness { exec, state, work })
    }

    fn request(&self, id: &str, argv: &[&str]) -> Res<RunCommandRequest> {
        request_in(self.work.path(), id, argv, None)
    }

    async fn run(&self, id: &str, argv: &[&str]) -> Res<RunCommandResult> {
        Ok(self.exec.run(self.request(id, argv)?, None).await?)
    }

    async fn stop(self) {
        // Cancels anything left and waits for the results before the plugin exits.
        self.exec.shutdown(true).await;
    }
}

/// A plugin with its own state and work directories, removed with it.
struct Harness {
    plugin: Option<PluginProcess>,
    state: tempfile::TempDir,
    work: tempfile::TempDir,
}

impl Harness {
    async fn start(exe: &Path) -> Res<Harness> {
        let state = tempfile::Builder::new().prefix("bench-state").tempdir()?;
        let work = tempfile::Builder::new().prefix("bench-work").tempdir()?;
        let mut opts = SpawnOptions::new(exe);
        // Big enough that a fast log producer never overruns the host's subscription buffer.
        opts.subscription_buffer = 1 << 16;
        let plugin = PluginProcess::spawn(opts).await?;
        let config = plugin_config(state.path());
        plugin
            .client
            .initialize(vec!["1".into()], None, Some(config))
            .await?;
        Ok(Harness {
            plugin: Some(plugin),
            state,
            work,
        })
    }

    fn client(&self) -> &jsonrpsee::async_client::Client {
        // Only `stop` takes the plugin, and it consumes the harness.
        &self
            .plugin
            .as_ref()
            .expect("plugin present until stop")
            .client
    }

    fn pid(&self) -> i32 {
        self.plugin
            .as_ref()
            .and_then(|p| p.pid)
            .map(|p| p as i32)
            .unwrap_or(-1)
    }

    fn request(&self, id: &str, argv: &[&str], limits: Option<Value>) -> Res<RunCommandRequest> {
        request_in(self.work.path(), id, argv, limits)
    }

    /// Monitors of this harness still alive, with their execution ids.
    fn monitors(&self) -> Vec<(i32, String)> {
        executor_tests::harness::recorded_monitors(self.state.path())
    }

    /// Shut the plugin down, cancelling what runs, and kill any monitor of ours left behind.
    async fn stop(mut self) {
        if let Some(mut p) = self.plugin.take() {
            let _ =
                tokio::time::timeout(Duration::from_secs(20), p.client.shutdown(Some(true))).await;
            if tokio::time::timeout(Duration::from_secs(20), p.wait_exit())
                .await
                .is_err()
            {
                if let Some(pid) = p.pid {
                    // SAFETY: signalling the plugin process this harness spawned.
                    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
                }
            }
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let left = self.monitors();
            if left.is_empty() {
                break;
            }
            if Instant::now() > deadline {
                for (pid, _) in left {
                    // SAFETY: a monitor of this harness's state dir, started by our plugin.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// VmRSS and RssAnon of a process, in bytes.
fn rss(pid: i32) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| -> Option<u64> {
        let line = status.lines().find(|l| l.starts_with(name))?;
        let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kb * 1024)
    };
    Some((field("VmRSS:")?, field("RssAnon:")?))
}

/// Pss and Private_Clean + Private_Dirty of a process, in bytes.
fn pss(pid: i32) -> Option<(u64, u64)> {
    let rollup = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
    let field = |name: &str| -> Option<u64> {
        let line = rollup.lines().find(|l| l.starts_with(name))?;
        let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kb * 1024)
    };
    Some((
        field("Pss:")?,
        field("Private_Clean:")? + field("Private_Dirty:")?,
    ))
}

/// User plus system CPU seconds of a process (all its threads).
fn cpu_secs(pid: i32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the parenthesised command name, which may contain spaces.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    Some(ticks as f64 / hz)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

fn sorted(mut v: Vec<f64>) -> Vec<f64> {
    v.sort_by(|a, b| a.total_cmp(b));
    v
}

fn bare_true() -> Res<()> {
    let st = Command::new("/bin/true").status()?;
    if !st.success() {
        return fail(format!("/bin/true: {st}"));
    }
    Ok(())
}

/// `/bin/true` in the same sandbox a job of the plugin gets (its cgroup, private root and own
/// uid, from a request the plugin resolved), by the plugin's own sandbox code in this process:
/// what the isolation costs without the plugin, its monitor process, its records and JSON-RPC.
/// As in the plugin, what a spare monitor makes while it waits (the root template, cgroup
/// directories) is made before the clock starts, and the teardown (after the plugin's report)
/// happens after it stops. Returns the milliseconds on the clock.
fn sandboxed_true(spec: &MonitorSpec, i: usize) -> Res<f64> {
    use executor_plugin::monitor::spawn::{spawn_job, JobSandbox};
    let mut spec = spec.clone();
    spec.execution_id = format!("floor-{i}");
    let mut sandbox = HostSandbox::with_ahead(Ahead::prepare());
    let t = Instant::now();
    let run = (|| -> Res<i32> {
        // As the monitor does before it prepares the sandbox.
        let results = executor_plugin::monitor::open_results(&spec).map_err(|e| e.to_string())?;
        sandbox
            .prepare(&spec, &results)
            .map_err(|e| e.to_string())?;
        let job = spawn_job(&spec, &mut sandbox).map_err(|e| e.to_string())?;
        drop((job.stdout, job.stderr));
        let mut status = 0;
        // SAFETY: waiting for our own child with a valid status pointer.
        if unsafe { libc::waitpid(job.pid, &mut status, 0) } != job.pid {
            return Err(std::io::Error::last_os_error().into());
        }
        Ok(status)
    })();
    let ms = t.elapsed().as_secs_f64() * 1e3;
    sandbox.cleanup();
    match run? {
        0 => Ok(ms),
        st => fail(format!("sandboxed /bin/true: wait status {st}")),
    }
}

fn check_ok(what: &str, r: &RunCommandResult) -> Res<()> {
    if r.exit_code != 0 || !r.error_msg.is_empty() {
        return fail(format!(
            "{what}: exit {} error {:?}",
            r.exit_code, r.error_msg
        ));
    }
    Ok(())
}

/// The timing marks of `executor_plugin::timing`, in the order a start normally passes them,
/// with what happens between the previous mark and this one.
const MARKS: [(&str, &str); 19] = [
    ("p.start_request", "plugin: request read and decoded"),
    ("p.uid_leased", "validate, lease a job uid"),
    (
        "p.before_launch",
        "build the monitor spec, register the execution",
    ),
    (
        "p.files",
        "state dir (its flock is the start lock), request.json, monitor log",
    ),
    (
        "m.main",
        "handed straight to the spare monitor, which takes it",
    ),
    (
        "m.request_read",
        "monitor: read request.json, write monitor.json",
    ),
    (
        "m.cgroup_made",
        "job cgroup: v1 directories made ahead renamed, the v2 one made, limits",
    ),
    (
        "m.before_fsplan",
        "outputs, uid lock, handing outputs to the job's uid",
    ),
    ("m.fsplan", "plan the private root"),
    ("m.prepared", "monitor.json with the cgroup"),
    ("m.files_ready", "results files, log, signalfd"),
    (
        "m.spawned",
        "clone the job; it joins its cgroups, enters its root made ahead, binds, user; until execve",
    ),
    (
        "m.running_sent",
        "monitor.json with the job, `running` report",
    ),
    ("p.launched", "plugin reads the report"),
    ("m.supervised", "the job runs and exits; reaped"),
    ("m.cleaned", "OOM flag and final usage from the cgroup"),
    (
        "m.reported",
        "result files, result.json, `finished` report with the record",
    ),
    ("p.finished_line", "plugin reads it"),
    ("p.result", "published; executor_run answers"),
];

/// Median time of each step over the complete starts in the timing log (the first 10 skipped).
fn print_breakdown(log: &Path, rep: &mut Report) -> Res<()> {
    let text = std::fs::read_to_string(log)?;
    let mut runs: Vec<HashMap<String, u64>> = Vec::new();
    for line in text.lines() {
        let mut f = line.split(' ');
        let (Some(_pid), Some(step), Some(ns)) = (f.next(), f.next(), f.next()) else {
            continue;
        };
        let Ok(ns) = ns.parse::<u64>() else { continue };
        if step == MARKS[0].0 {
            runs.push(HashMap::new());
        }
        if let Some(run) = runs.last_mut() {
            run.entry(step.to_owned()).or_insert(ns);
        }
    }
    let runs: Vec<_> = runs
        .into_iter()
        .filter(|r| MARKS.iter().all(|(m, _)| r.contains_key(*m)))
        .skip(10)
        .collect();
    if runs.is_empty() {
        return fail("no complete start in the timing log");
    }
    let ms = |a: u64, b: u64| (b as f64 - a as f64) / 1e6;
    let mut rows = Vec::new();
    for (i, (mark, what)) in MARKS.iter().enumerate() {
        let prev = MARKS[i.saturating_sub(1)].0;
        let at = sorted(runs.iter().map(|r| ms(r[MARKS[0].0], r[*mark])).collect());
        let step = sorted(runs.iter().map(|r| ms(r[prev], r[*mark])).collect());
        if !rep.json {
            println!(
                "    {:>6.3} ms  (+{:.3})  {mark:<16} {what}",
                percentile(&at, 0.5),
                percentile(&step, 0.5)
            );
        }
        rows.push(json!({"mark": mark, "at_ms": percentile(&at, 0.5),
            "step_ms": percentile(&step, 0.5), "what": what}));
    }
    rep.notes
        .insert("latency_breakdown_p50".into(), json!(rows));
    rep.note("latency_breakdown_runs", json!(runs.len()));
    Ok(())
}

async fn latency(h: &HostHarness, n: usize, rep: &mut Report) -> Res<()> {
    rep.section("start-to-result latency of /bin/true (ms)");
    for i in 0..10 {
        bare_true()?;
        check_ok(
            "warm-up",
            &h.run(&format!("warm-{i}"), &["/bin/true"]).await?,
        )?;
    }
    // The spec the plugin resolved for a run like the measured ones, for the sandbox floor.
    let resolved = executor_plugin::state::read_json::<RequestRecord>(
        &executor_plugin::state::ExecDir::new(h.state.path(), "warm-0").request(),
    )
    .ok()
    .map(|r| r.monitor)
    .filter(|m| m.sandbox.filesystem.is_some() && nix::unistd::geteuid().is_root());
    if let Some(spec) = &resolved {
        // What the plugin's fork server learns from its first start, for [`Ahead::prepare`].
        HostSandbox::warm(spec);
    }
    let mut bare = Vec::with_capacity(n);
    let mut plug = Vec::with_capacity(n);
    let mut floor = Vec::with_capacity(n);
    // Interleaved so all see the same background load.
    for i in 0..n {
        let t = Instant::now();
        bare_true()?;
        bare.push(t.elapsed().as_secs_f64() * 1e3);
        if let Some(spec) = &resolved {
            floor.push(sandboxed_true(spec, i)?);
        }
        let req = h.request(&format!("lat-{i}"), &["/bin/true"])?;
        let t = Instant::now();
        let r = h.exec.run(req, None).await?;
        plug.push(t.elapsed().as_secs_f64() * 1e3);
        check_ok("latency run", &r)?;
    }
    let mut nulls = Vec::new();
    for _ in 0..400 {
        let t = Instant::now();
        h.exec.is_installed().await?;
        nulls.push(t.elapsed().as_secs_f64() * 1e3);
    }
    rep.note("null_rpc_p50_ms", json!(percentile(&sorted(nulls), 0.5)));
    // Where the time goes: executor_start answers once the monitor reports the job running,
    // executor_wait once the monitor has written the result and exited.
    let mut starts = Vec::new();
    let mut waits = Vec::new();
    for i in 0..(n / 3).max(10) {
        let id = format!("split-{i}");
        let req = h.request(&id, &["/bin/true"])?;
        let t = Instant::now();
        h.exec.start(req, None).await?;
        starts.push(t.elapsed().as_secs_f64() * 1e3);
        let t = Instant::now();
        check_ok("split run", &h.exec.wait(&id).await?)?;
        waits.push(t.elapsed().as_secs_f64() * 1e3);
    }
    rep.note(
        "latency_split_p50_ms",
        json!({
            "start_until_running": percentile(&sorted(starts), 0.5),
            "running_until_result": percentile(&sorted(waits), 0.5),
        }),
    );
    let (bare, plug) = (sorted(bare), sorted(plug));
    let (b50, p50) = (percentile(&bare, 0.5), percentile(&plug, 0.5));
    rep.add(
        "Executor::run /bin/true p50",
        p50,
        "ms",
        "Command::status p50",
        b50,
        Some(("<= 3x", p50 <= 3.0 * b50)),
    );
    if !floor.is_empty() {
        let f50 = percentile(&sorted(floor), 0.5);
        rep.add(
            "same sandbox in-process (no plugin) p50",
            f50,
            "ms",
            "Command::status p50",
            b50,
            None,
        );
        rep.add(
            "Executor::run /bin/true p50",
            p50,
            "ms",
            "same sandbox in-process p50",
            f50,
            None,
        );
    } else {
        rep.note(
            "sandbox_floor",
            json!("not measured: needs root and a plugin that gives jobs a private root"),
        );
    }
    rep.add(
        "Executor::run /bin/true p99",
        percentile(&plug, 0.99),
        "ms",
        "Command::status p99",
        percentile(&bare, 0.99),
        None,
    );
    rep.note("latency_runs", json!(n));
    if let Some(log) = std::env::var_os(executor_plugin::timing::ENV) {
        rep.section("where the time of a start goes (medians; timing marks on, which slow it)");
        let printed = print_breakdown(Path::new(&log), rep);
        // Like the state and work directories, nothing of the run is left behind.
        let _ = std::fs::remove_file(&log);
        printed?;
    }
    Ok(())
}

/// What each network type adds to a start: `/bin/true` with `Host`, `None` (a namespace with
/// `lo`) and `Bridge` (a namespace, a veth on the bridge, the shared nftables table reloaded),
/// interleaved. Bridge only where the plugin is root with `nft`.
async fn network_latency(h: &HostHarness, n: usize, rep: &mut Report) -> Res<()> {
    use executor_schema::{Network, NetworkConfig};
    rep.section("start-to-result latency of /bin/true by network type (ms)");
    let mut kinds = vec![Network::Host, Network::None];
    match executor_plugin::sandbox::bridge::unavailable() {
        None => kinds.push(Network::Bridge),
        Some(why) => rep.note("bridge_latency", json!(format!("not measured: {why}"))),
    }
    let mut times: Vec<Vec<f64>> = vec![Vec::with_capacity(n); kinds.len()];
    for i in 0..n {
        for (k, kind) in kinds.iter().enumerate() {
            let mut req = h.request(&format!("net-{kind}-{i}"), &["/bin/true"])?;
            req.network = Some(NetworkConfig {
                network_type: *kind,
                ..NetworkConfig::default()
            });
            let t = Instant::now();
            let r = h.exec.run(req, None).await?;
            times[k].push(t.elapsed().as_secs_f64() * 1e3);
            check_ok("network latency run", &r)?;
        }
    }
    let host = percentile(&sorted(times[0].clone()), 0.5);
    for (kind, t) in kinds.iter().zip(times).skip(1) {
        rep.add(
            format!("Executor::run /bin/true, Network {kind}, p50"),
            percentile(&sorted(t), 0.5),
            "ms",
            "Network Host p50",
            host,
            None,
        );
    }
    Ok(())
}

async fn throughput(h: &HostHarness, jobs: usize, rep: &mut Report) -> Res<()> {
    rep.section("throughput of trivial jobs (jobs/s)");
    for conc in [1usize, 8, 64] {
        let t = Instant::now();
        let threads: Vec<_> = (0..conc)
            .map(|k| {
                let mine = (jobs + conc - 1 - k) / conc;
                std::thread::spawn(move || -> Result<(), String> {
                    for _ in 0..mine {
                        bare_true().map_err(|e| e.to_string())?;
                    }
                    Ok(())
                })
            })
            .collect();
        for th in threads {
            th.join().map_err(|_| "bare spawn thread panicked")??;
        }
        let bare = jobs as f64 / t.elapsed().as_secs_f64();

        let reqs: Vec<RunCommandRequest> = (0..jobs)
            .map(|i| h.request(&format!("tp{conc}-{i}"), &["/bin/true"]))
            .collect::<Res<_>>()?;
        let t = Instant::now();
        let results: Vec<_> = futures::stream::iter(reqs)
            .map(|r| h.exec.run(r, None))
            .buffer_unordered(conc)
            .collect()
            .await;
        let plug = jobs as f64 / t.elapsed().as_secs_f64();
        for r in results {
            check_ok("throughput run", &r?)?;
        }
        rep.add(
            format!("Executor::run at concurrency {conc}"),
            plug,
            "jobs/s",
            format!("{conc} threads of Command::status"),
            bare,
            None,
        );
    }
    rep.note("throughput_jobs_per_level", json!(jobs));
    Ok(())
}

/// Compares `data`, found at stream position `pos`, with the known content.
fn matches_pattern(data: &[u8], pos: u64) -> bool {
    let mut off = (pos % PATTERN.len() as u64) as usize;
    let mut rest = data;
    while !rest.is_empty() {
        let take = (PATTERN.len() - off).min(rest.len());
        if rest[..take] != PATTERN[off..off + take] {
            return false;
        }
        rest = &rest[take..];
        off = 0;
    }
    true
}

fn pattern_script(bytes: u64) -> String {
    let line = std::str::from_utf8(&PATTERN[..PATTERN.len() - 1]).unwrap_or("x");
    format!("yes {line} | head -c {bytes}")
}

/// Drains the same program through a bare pipe in this process; bytes/s.
fn bare_pipe(bytes: u64) -> Res<f64> {
    let t = Instant::now();
    let mut child = Command::new("sh")
        .args(["-c", &pattern_script(bytes)])
        .stdout(Stdio::piped())
        .spawn()?;
    let mut out = child.stdout.take().ok_or("no stdout pipe")?;
    let mut buf = vec![0u8; 256 * 1024];
    let mut pos = 0u64;
    loop {
        let n = out.read(&mut buf)?;
        if n == 0 {
            break;
        }
        if !matches_pattern(&buf[..n], pos) {
            return fail(format!("bare pipe: wrong bytes near {pos}"));
        }
        pos += n as u64;
    }
    child.wait()?;
    if pos != bytes {
        return fail(format!("bare pipe: {pos} bytes, expected {bytes}"));
    }
    Ok(bytes as f64 / t.elapsed().as_secs_f64())
}

/// Counters of one followed log.
#[derive(Default, Debug)]
struct Followed {
    bytes: u64,
    events: u64,
    resumes: u64,
    ended: bool,
    mismatch: Option<u64>,
}

/// Follows an execution's log from `Position` 0 to its end event, resuming after a dropped
/// subscription, checking the stdout bytes against the pattern when `verify`.
async fn follow_log(
    client: &jsonrpsee::async_client::Client,
    id: &str,
    verify: bool,
    received: &AtomicU64,
) -> Res<Followed> {
    let mut f = Followed::default();
    let mut position = 0u64;
    while !f.ended {
        let req = LogStreamRequest {
            execution_id: id.into(),
            follow: true,
            position: Some(position),
            ..Default::default()
        };
        let mut sub = client.subscribe_logs(req).await?;
        while let Some(ev) = sub.next().await {
            let ev = ev?;
            match &ev {
                LogEvent::Data { stream, next, .. } => {
                    f.events += 1;
                    position = *next;
                    if *stream != LogStream::Stdout {
                        continue;
                    }
                    let bytes = ev.data_bytes();
                    if verify && f.mismatch.is_none() && !matches_pattern(&bytes, f.bytes) {
                        f.mismatch = Some(f.bytes);
                    }
                    f.bytes += bytes.len() as u64;
                    received.store(f.bytes, Ordering::Relaxed);
                }
                LogEvent::End { .. } => {
                    f.ended = true;
                    break;
                }
            }
        }
        if !f.ended {
            f.resumes += 1;
            if f.resumes > 100 {
                return fail("log subscription keeps dropping");
            }
        }
    }
    Ok(f)
}

/// Follows an execution's log the way Bacalhau's compute node reads it: `get_log_stream` of the
/// supervised `PluginExecutor`, as Docker stdcopy frames (`into_stdcopy`), every stdout byte
/// checked against the pattern as it arrives.
async fn follow_stdcopy(exec: &PluginExecutor, id: &str) -> Res<Followed> {
    use executor_host::logs::STDCOPY_HEADER;
    use tokio::io::AsyncReadExt;
    let req = LogStreamRequest {
        execution_id: id.into(),
        follow: true,
        position: Some(0),
        ..Default::default()
    };
    let mut reader = exec.get_log_stream(req).await?.into_stdcopy();
    let mut f = Followed::default();
    let mut buf = vec![0u8; 256 * 1024];
    let (mut header, mut have) = ([0u8; STDCOPY_HEADER], 0usize);
    // Body bytes of the current frame still to come, and whether it is stdout.
    let (mut left, mut stdout) = (0usize, false);
    loop {
        let n = reader.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        let mut chunk = &buf[..n];
        while !chunk.is_empty() {
            if left == 0 {
                let take = (STDCOPY_HEADER - have).min(chunk.len());
                header[have..have + take].copy_from_slice(&chunk[..take]);
                have += take;
                chunk = &chunk[take..];
                if have == STDCOPY_HEADER {
                    have = 0;
                    f.events += 1;
                    stdout = header[0] == 1;
                    left =
                        u32::from_be_bytes([header[4], header[5], header[6], header[7]]) as usize;
                }
                continue;
            }
            let take = left.min(chunk.len());
            if stdout {
                if f.mismatch.is_none() && !matches_pattern(&chunk[..take], f.bytes) {
                    f.mismatch = Some(f.bytes);
                }
                f.bytes += take as u64;
            }
            left -= take;
            chunk = &chunk[take..];
        }
    }
    // The reader ends cleanly only after the END event.
    f.ended = left == 0 && have == 0;
    Ok(f)
}

async fn log_follow(h: &HostHarness, bytes: u64, rep: &mut Report) -> Res<()> {
    rep.section("log follow of a job writing to stdout (MiB/s)");
    // The bare pipe swings with the load other processes put on the CPUs; measured before and
    // after the follow, their mean is the baseline.
    let bare_before = bare_pipe(bytes)?;
    let script = pattern_script(bytes);
    let req = h.request("follow", &["sh", "-c", &script])?;
    let plugin_pid = h.exec.pid().await.map(|p| p as i32).unwrap_or(-1);
    let (plugin_cpu0, host_cpu0) = (cpu_secs(plugin_pid), cpu_secs(std::process::id() as i32));
    let t = Instant::now();
    h.exec.start(req, None).await?;
    // The monitor's CPU time, last seen before it exits.
    let monitor = executor_tests::harness::recorded_monitors(h.state.path())
        .into_iter()
        .find(|(_, e)| e == "follow");
    let monitor_cpu = std::sync::Arc::new(std::sync::Mutex::new(0.0f64));
    let sampler = monitor.map(|(pid, _)| {
        let last = monitor_cpu.clone();
        tokio::spawn(async move {
            while let Some(c) = cpu_secs(pid) {
                if let Ok(mut l) = last.lock() {
                    *l = c;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    });
    let f = follow_stdcopy(&h.exec, "follow").await?;
    let secs = t.elapsed().as_secs_f64();
    if let Some(s) = sampler {
        s.abort();
    }
    let cpu = |a: Option<f64>, b: Option<f64>| b.unwrap_or(0.0) - a.unwrap_or(0.0);
    rep.note(
        "follow_cpu_seconds",
        json!({
            "wall": secs,
            "plugin": cpu(plugin_cpu0, cpu_secs(plugin_pid)),
            "host": cpu(host_cpu0, cpu_secs(std::process::id() as i32)),
            "monitor": monitor_cpu.lock().map(|c| *c).unwrap_or(0.0),
        }),
    );
    let r = h.exec.wait("follow").await?;
    check_ok("follow job", &r)?;
    let bare_after = bare_pipe(bytes)?;
    let bare = (bare_before + bare_after) / 2.0;
    rep.note(
        "bare_pipe_MiB_per_s_before_after",
        json!([bare_before / MIB, bare_after / MIB]),
    );
    if f.bytes != bytes || f.mismatch.is_some() || !f.ended {
        return fail(format!(
            "log follow not byte-exact: {} of {bytes} bytes, first mismatch at {:?}, ended: {}",
            f.bytes, f.mismatch, f.ended
        ));
    }
    let plug = bytes as f64 / secs;
    rep.add(
        format!("follow {} MiB, byte-exact", bytes >> 20),
        plug / MIB,
        "MiB/s",
        "bare pipe drain (mean of 2)",
        bare / MIB,
        Some((">= 0.25x", plug >= 0.25 * bare)),
    );
    rep.note(
        "follow_events",
        json!({"events": f.events, "avg_event_bytes": f.bytes / f.events.max(1)}),
    );
    let _ = std::fs::remove_dir_all(h.work.path().join("follow"));
    Ok(())
}

async fn results_write(h: &Harness, bytes: u64, rep: &mut Report) -> Res<()> {
    rep.section("results writing (MiB/s, start-to-result)");
    let script = format!("head -c {bytes} /dev/zero");
    let direct = h.work.path().join("direct-out");
    let t = Instant::now();
    let st = Command::new("sh")
        .args(["-c", &script])
        .stdout(std::fs::File::create(&direct)?)
        .status()?;
    let bare = bytes as f64 / t.elapsed().as_secs_f64();
    if !st.success() || std::fs::metadata(&direct)?.len() != bytes {
        return fail("direct file write failed");
    }
    std::fs::remove_file(&direct)?;

    let limits = json!({"MaxStdoutFileLength": bytes, "MaxStderrFileLength": bytes});
    let req = h.request("results", &["sh", "-c", &script], Some(limits))?;
    let t = Instant::now();
    let r = h.client().run(req).await?;
    let plug = bytes as f64 / t.elapsed().as_secs_f64();
    check_ok("results job", &r)?;
    let out = h.work.path().join("results").join("stdout");
    let len = std::fs::metadata(&out)?.len();
    if len != bytes {
        return fail(format!(
            "results stdout holds {len} bytes, expected {bytes}"
        ));
    }
    rep.add(
        format!("executor_run writing {} MiB results", bytes >> 20),
        plug / MIB,
        "MiB/s",
        "same program > file",
        bare / MIB,
        None,
    );
    let _ = std::fs::remove_dir_all(h.work.path().join("results"));
    Ok(())
}

/// How long after the last start the monitors are sampled: past their start-up trim.
const MONITOR_SETTLE: Duration = Duration::from_secs(2);

async fn memory(exe: &Path, sz: &Sizes, rep: &mut Report) -> Res<()> {
    rep.section("resident memory (MiB)");
    let h = Harness::start(exe).await?;
    let out = memory_in(&h, sz, rep).await;
    h.stop().await;
    out
}

async fn memory_in(h: &Harness, sz: &Sizes, rep: &mut Report) -> Res<()> {
    // Let the runtime settle after initialize.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (idle, idle_anon) = rss(h.pid()).ok_or("plugin has no /proc status")?;
    rep.note(
        "plugin_idle",
        json!({"VmRSS_MiB": idle as f64 / MIB, "RssAnon_MiB": idle_anon as f64 / MIB}),
    );

    // N concurrent sleeps.
    let n = sz.concurrent;
    let ids: Vec<String> = (0..n).map(|i| format!("sleep-{i}")).collect();
    let reqs: Vec<RunCommandRequest> = ids
        .iter()
        .map(|id| h.request(id, &["sleep", "30"], None))
        .collect::<Res<_>>()?;
    let t = Instant::now();
    let started: Vec<_> = futures::stream::iter(reqs)
        .map(|r| h.client().start(r))
        .buffer_unordered(64)
        .collect()
        .await;
    let start_secs = t.elapsed().as_secs_f64();
    let start_errors: Vec<String> = started
        .into_iter()
        .filter_map(|r| r.err().map(|e| e.to_string()))
        .collect();
    let running = h
        .client()
        .list()
        .await?
        .iter()
        .filter(|e| e.state == ExecutionState::Running)
        .count();
    // A monitor gives back its start-up code pages once its job has run 1 s; sampling before
    // that would measure start-up, not what a monitor holds for the life of a long job.
    tokio::time::sleep(MONITOR_SETTLE).await;
    let monitors = h.monitors();
    let (busy, busy_anon) = rss(h.pid()).ok_or("plugin has no /proc status")?;
    let mut mon_rss: Vec<(u64, u64)> = monitors.iter().filter_map(|(p, _)| rss(*p)).collect();
    // Shared pages (the binary's text, libc) dominate VmRSS; Pss and the private pages say what
    // one more monitor really costs, with all of them alive.
    let mut mon_pss: Vec<(u64, u64)> = monitors.iter().filter_map(|(p, _)| pss(*p)).collect();
    mon_pss.sort();
    mon_rss.sort();
    let sleep_rss = job_rss_of(&monitors);
    // Cancel every one, then wait every one: each must come back cancelled.
    let t = Instant::now();
    let cancels: Vec<_> = futures::stream::iter(ids.clone())
        .map(|id| h.client().cancel(id))
        .buffer_unordered(64)
        .collect()
        .await;
    let cancel_errors = cancels.iter().filter(|r| r.is_err()).count();
    let waits: Vec<_> = futures::stream::iter(ids.clone())
        .map(|id| async move {
            tokio::time::timeout(Duration::from_secs(120), h.client().wait(id)).await
        })
        .buffer_unordered(256)
        .collect()
        .await;
    let cancelled = waits
        .iter()
        .filter(|w| matches!(w, Ok(Ok(r)) if r.error_msg.contains("cancelled")))
        .count();
    let cancel_secs = t.elapsed().as_secs_f64();
    let (after, after_anon) = rss(h.pid()).ok_or("plugin has no /proc status")?;
    rep.add(
        format!("plugin VmRSS, {n} concurrent sleeps"),
        busy as f64 / MIB,
        "MiB",
        "plugin VmRSS idle",
        idle as f64 / MIB,
        None,
    );
    rep.add(
        format!("plugin RssAnon, {n} concurrent sleeps"),
        busy_anon as f64 / MIB,
        "MiB",
        "plugin RssAnon idle",
        idle_anon as f64 / MIB,
        None,
    );
    let none_lost = start_errors.is_empty()
        && running == n
        && monitors.len() == n
        && cancel_errors == 0
        && cancelled == n;
    rep.add(
        format!("{n} concurrent: cancelled results back"),
        cancelled as f64,
        "execs",
        "started",
        n as f64,
        Some(("none lost", none_lost)),
    );
    rep.note(
        "concurrent",
        json!({
            "start_seconds": start_secs,
            "start_errors": start_errors.len(),
            "first_start_error": start_errors.first(),
            "running_in_list": running,
            "monitor_processes": monitors.len(),
            "cancel_errors": cancel_errors,
            "cancel_until_all_results_seconds": cancel_secs,
            "plugin_after_cancel_VmRSS_MiB": after as f64 / MIB,
            "plugin_after_cancel_RssAnon_MiB": after_anon as f64 / MIB,
        }),
    );
    if let (Some(min), Some(max)) = (mon_rss.first(), mon_rss.last()) {
        let med = mon_rss[mon_rss.len() / 2];
        let (job, _) = sleep_rss.unwrap_or((0, 0));
        rep.note(
            "monitors_sampled",
            json!(format!(
                "{} s after the last start (a monitor trims at 1 s of running job)",
                MONITOR_SETTLE.as_secs()
            )),
        );
        rep.add(
            "one monitor VmRSS (median)",
            med.0 as f64 / MIB,
            "MiB",
            "its job (sleep) VmRSS",
            job as f64 / MIB,
            Some(("< 2 MiB", (max.0 as f64) < 2.0 * MIB)),
        );
        rep.add(
            "one monitor RssAnon (median)",
            med.1 as f64 / MIB,
            "MiB",
            "its job (sleep) RssAnon",
            sleep_rss.map(|(_, a)| a).unwrap_or(0) as f64 / MIB,
            None,
        );
        if !mon_pss.is_empty() {
            let (pss_med, private_med) = mon_pss[mon_pss.len() / 2];
            rep.add(
                format!("one monitor Pss (median, {n} alive)"),
                pss_med as f64 / MIB,
                "MiB",
                "its private pages",
                private_med as f64 / MIB,
                None,
            );
        }
        rep.note(
            "monitor_VmRSS_MiB_min_max",
            json!([min.0 as f64 / MIB, max.0 as f64 / MIB]),
        );
    }

    flood(h, sz.flood_bytes, rep).await
}

/// RSS of one job process supervised by one of these monitors.
fn job_rss_of(monitors: &[(i32, String)]) -> Option<(u64, u64)> {
    for (pid, _) in monitors {
        let children = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).ok()?;
        if let Some(child) = children
            .split_whitespace()
            .next()
            .and_then(|c| c.parse().ok())
        {
            return rss(child);
        }
    }
    None
}

/// A job writing `bytes` to stdout with default limits, followed by the host from the start;
/// plugin and monitor sampled throughout.
async fn flood(h: &Harness, bytes: u64, rep: &mut Report) -> Res<()> {
    let script = format!("head -c {bytes} /dev/zero");
    let req = h.request("flood", &["sh", "-c", &script], None)?;
    let t = Instant::now();
    h.client().start(req).await?;
    let monitor = h
        .monitors()
        .into_iter()
        .find(|(_, e)| e == "flood")
        .map(|(p, _)| p);
    let plugin = h.pid();
    // What the follower got so far, also when it is still behind at the time cap.
    let received = AtomicU64::new(0);
    let follower = follow_log(h.client(), "flood", false, &received);
    let waiter = h.client().wait("flood".into());
    futures::pin_mut!(follower, waiter);
    let mut plugin_samples: Vec<(u64, u64)> = Vec::new();
    let mut monitor_samples: Vec<(u64, u64)> = Vec::new();
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    let mut result = None;
    let mut followed = None;
    // Sampled until the job ends; the follower then runs on, still sampled, until it has
    // everything or a time cap (it reads far behind a writer of /dev/zero).
    let cap = Duration::from_secs(if bytes > GIB { 60 } else { 30 });
    let mut job_secs = 0.0;
    loop {
        tokio::select! {
            r = &mut waiter, if result.is_none() => {
                job_secs = t.elapsed().as_secs_f64();
                result = Some(r?);
            }
            f = &mut follower, if followed.is_none() => followed = Some(f?),
            _ = tick.tick() => {
                if let Some(s) = rss(plugin) { plugin_samples.push(s); }
                if let Some(s) = monitor.and_then(rss) { monitor_samples.push(s); }
            }
        }
        if result.is_some() && (followed.is_some() || t.elapsed() > cap) {
            break;
        }
    }
    let r = result.ok_or("no result")?;
    check_ok("flood job", &r)?;
    let span = |v: &[(u64, u64)], anon: bool| -> (f64, f64) {
        let it = v.iter().map(|s| if anon { s.1 } else { s.0 });
        (
            it.clone().min().unwrap_or(0) as f64 / MIB,
            it.max().unwrap_or(0) as f64 / MIB,
        )
    };
    let gib = bytes as f64 / GIB as f64;
    let (pmin, pmax) = span(&plugin_samples, false);
    rep.add(
        format!("plugin VmRSS max, job writing {gib:.0} GiB"),
        pmax,
        "MiB",
        "plugin VmRSS min, same run",
        pmin,
        Some(("flat +-5 MiB", pmax - pmin <= 5.0)),
    );
    let (amin, amax) = span(&plugin_samples, true);
    rep.add(
        format!("plugin RssAnon max, job writing {gib:.0} GiB"),
        amax,
        "MiB",
        "plugin RssAnon min, same run",
        amin,
        None,
    );
    let (mmin, mmax) = span(&monitor_samples, false);
    rep.add(
        format!("monitor VmRSS max, job writing {gib:.0} GiB"),
        mmax,
        "MiB",
        "monitor VmRSS min, same run",
        mmin,
        // Its size is judged by the monitor figures above; this one is about flatness.
        Some((
            "flat +-5 MiB",
            mmax - mmin <= 5.0 && !monitor_samples.is_empty(),
        )),
    );
    let f = followed.unwrap_or_default();
    rep.note(
        "flood",
        json!({
            "job_seconds": job_secs,
            "job_MiB_per_s": bytes as f64 / MIB / job_secs.max(1e-9),
            "plugin_samples": plugin_samples.len(),
            "monitor_samples": monitor_samples.len(),
            "follower_MiB_received": received.load(Ordering::Relaxed) as f64 / MIB,
            "follower_finished": f.ended,
            "monitor_RssAnon_MiB_min_max": span(&monitor_samples, true),
        }),
    );
    let _ = std::fs::remove_dir_all(h.work.path().join("flood"));
    let _ = std::fs::remove_dir_all(h.state.path().join("executions").join("flood"));
    Ok(())
}

/// A section that hangs is a finding, not a reason to hang the whole run.
async fn within<T>(
    what: &str,
    secs: u64,
    fut: impl std::future::Future<Output = Res<T>>,
) -> Res<T> {
    match tokio::time::timeout(Duration::from_secs(secs), fut).await {
        Ok(r) => r.map_err(|e| format!("{what}: {e}").into()),
        Err(_) => fail(format!("{what}: did not finish within {secs} s")),
    }
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

async fn bench(opts: &Options, rep: &mut Report) -> Res<()> {
    let sz = if opts.quick {
        Sizes::quick()
    } else {
        Sizes::full()
    };
    rep.note("load_average_before", json!(load_average()));
    rep.note("plugin", json!(opts.plugin.display().to_string()));
    if opts.wants("latency") || opts.wants("throughput") {
        let h = HostHarness::start(&opts.plugin).await?;
        let out = async {
            if opts.wants("latency") {
                within("latency", 300, latency(&h, sz.latency_runs, rep)).await?;
                let runs = (sz.latency_runs / 4).max(20);
                within("network latency", 300, network_latency(&h, runs, rep)).await?;
            }
            if opts.wants("throughput") {
                within("throughput", 300, throughput(&h, sz.throughput_jobs, rep)).await?;
            }
            Ok::<(), BoxError>(())
        }
        .await;
        h.stop().await;
        out?;
    }
    if opts.wants("follow") {
        let h = HostHarness::start(&opts.plugin).await?;
        let out = within("log follow", 300, log_follow(&h, sz.follow_bytes, rep)).await;
        h.stop().await;
        out?;
    }
    if opts.wants("results") {
        let h = Harness::start(&opts.plugin).await?;
        let out = within("results", 300, results_write(&h, sz.results_bytes, rep)).await;
        h.stop().await;
        out?;
    }
    if opts.wants("memory") {
        within("memory", 600, memory(&opts.plugin, &sz, rep)).await?;
    }
    rep.note("load_average_after", json!(load_average()));
    Ok(())
}

fn main() -> std::process::ExitCode {
    let opts = match parse_args() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("bench: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    if let Some(log) = &opts.breakdown {
        let _ = std::fs::remove_file(log);
        // SAFETY: no other thread exists yet; the plugin this starts inherits the variable.
        unsafe { std::env::set_var(executor_plugin::timing::ENV, log) };
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("bench: cannot start the async runtime: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    let mut rep = Report {
        json: opts.json,
        ..Default::default()
    };
    if !opts.json {
        println!(
            "  {:<44} {:>12} {:<6} | {:<34} {:>12} | {:<9} budget",
            "figure", "value", "unit", "baseline", "value", "ratio"
        );
    }
    let t = Instant::now();
    let outcome = runtime.block_on(bench(&opts, &mut rep));
    rep.notes
        .insert("total_seconds".into(), json!(t.elapsed().as_secs_f64()));
    let failed_budgets = rep.figures.iter().filter(|f| f.pass == Some(false)).count();
    if opts.json {
        let doc = json!({
            "quick": opts.quick,
            "figures": rep.figures,
            "notes": rep.notes,
            "error": outcome.as_ref().err().map(|e| e.to_string()),
            "failed_budgets": failed_budgets,
        });
        println!("{doc:#}");
    } else {
        println!(
            "\n{} figures, {failed_budgets} over budget, {:.0} s",
            rep.figures.len(),
            t.elapsed().as_secs_f64()
        );
    }
    runtime.shutdown_timeout(Duration::from_secs(5));
    match outcome {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench: {e}");
            std::process::ExitCode::from(1)
        }
    }
}
