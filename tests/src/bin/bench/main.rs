//! `bench`: the performance goals of docs/PERFORMANCE.md, measured against baselines in the
//! same run.
//!
//! ```text
//! cargo build --release -p executor-plugin --bin executor-native -p executor-host --bin executor-host
//! cargo run --release -p executor-tests --bin bench [-- --quick] [-- --json]
//! ```
//!
//! Every figure is printed with the baseline it is judged against, the ratio and, where it has
//! one, PASS or FAIL against its goal. Latency, throughput, the peers and log follow go through
//! the host shim's `Executor` trait (`PluginExecutor`: host -> plugin -> monitor -> job), as
//! Bacalhau would call it (the log as stdcopy frames); the other sections use the typed
//! `ExecutorApiClient` over a `PluginProcess`, to measure the plugin without the host's resume
//! machinery. One module per section.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::json;

mod breakdown;
mod concurrent;
mod follow;
mod harness;
mod latency;
mod limits;
mod memory;
mod peers;
mod procfs;
mod report;
mod results;
mod throughput;

use harness::{Harness, HostHarness};
use procfs::load_average;
use report::Report;

const GIB: u64 = 1 << 30;
const MIB: f64 = 1024.0 * 1024.0;
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
    /// Running `sleep`s while the plugin's and monitors' memory is sampled.
    concurrent: usize,
    flood_bytes: u64,
    /// Rounds of the interleaved peers (one-shot CLI, `runc`, `crun`, `bwrap`, ...).
    peer_rounds: usize,
    /// Concurrent `sleep` executions of the scale section (`--concurrent N`).
    scale: usize,
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
            peer_rounds: 40,
            scale: concurrent::GOAL,
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
            peer_rounds: 10,
            scale: 200,
        }
    }
}

/// The sections, in the order they run.
const SECTIONS: &str = "latency,throughput,peers,follow,results,memory,concurrent";

struct Options {
    quick: bool,
    /// Run only these sections (of [`SECTIONS`]).
    only: Vec<String>,
    /// `--concurrent N`: executions of the scale section, instead of the size's.
    concurrent: Option<usize>,
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
    let mut concurrent = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--quick" => quick = true,
            "--json" => json = true,
            "--breakdown" => breakdown = true,
            "--plugin" => plugin = args.next().map(PathBuf::from),
            "--concurrent" => {
                let n = args
                    .next()
                    .and_then(|n| n.replace('_', "").parse::<usize>().ok());
                match n {
                    Some(n) if n > 0 => concurrent = Some(n),
                    _ => return fail("--concurrent takes a positive number of executions"),
                }
            }
            "--only" => only.extend(
                args.next()
                    .iter()
                    .flat_map(|s| s.split(',').map(str::to_string).collect::<Vec<_>>()),
            ),
            "-h" | "--help" => {
                println!(
                    "usage: bench [--quick] [--json] [--only {SECTIONS}] \
                     [--plugin PATH-TO-executor-native] [--breakdown] [--concurrent N]\n\
                     --breakdown: the plugin and its monitors mark each step of a start (which \
                     costs ~0.2 ms per run); the latency section prints the median time of each\n\
                     --concurrent N: the scale section starts N `sleep` executions in one plugin \
                     (default {} for a full run), then cancels them all",
                    concurrent::GOAL
                );
                std::process::exit(0);
            }
            other => return fail(format!("unknown argument {other:?} (try --help)")),
        }
    }
    if let Some(bad) = only
        .iter()
        .find(|s| !SECTIONS.split(',').any(|k| k == s.as_str()))
    {
        return fail(format!("--only {bad:?}: the sections are {SECTIONS}"));
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
        concurrent,
        json,
        plugin,
        breakdown,
    })
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

async fn bench(opts: &Options, rep: &mut Report) -> Res<()> {
    let mut sz = if opts.quick {
        Sizes::quick()
    } else {
        Sizes::full()
    };
    if let Some(n) = opts.concurrent {
        sz.scale = n;
    }
    rep.note("load_average_before", json!(load_average()));
    rep.note("plugin", json!(opts.plugin.display().to_string()));
    if opts.wants("latency") {
        within(
            "latency",
            600,
            latency::latency(&opts.plugin, sz.latency_runs, opts.breakdown.is_some(), rep),
        )
        .await?;
    }
    if opts.wants("latency") || opts.wants("throughput") {
        let h = HostHarness::start(&opts.plugin).await?;
        let out = async {
            if opts.wants("latency") {
                let runs = (sz.latency_runs / 4).max(20);
                within(
                    "network latency",
                    300,
                    latency::network_latency(&h, runs, rep),
                )
                .await?;
            }
            if opts.wants("throughput") {
                within(
                    "throughput",
                    300,
                    throughput::throughput(&h, sz.throughput_jobs, rep),
                )
                .await?;
            }
            Ok::<(), BoxError>(())
        }
        .await;
        h.stop().await;
        out?;
    }
    if opts.wants("peers") {
        within(
            "peers",
            600,
            peers::peers(&opts.plugin, sz.peer_rounds, rep),
        )
        .await?;
    }
    if opts.wants("follow") {
        let h = HostHarness::start(&opts.plugin).await?;
        let out = within(
            "log follow",
            300,
            follow::log_follow(&h, sz.follow_bytes, rep),
        )
        .await;
        h.stop().await;
        out?;
    }
    if opts.wants("results") {
        let h = Harness::start(&opts.plugin).await?;
        let out = within(
            "results",
            300,
            results::results_write(&h, sz.results_bytes, rep),
        )
        .await;
        h.stop().await;
        out?;
    }
    if opts.wants("memory") {
        within("memory", 600, memory::memory(&opts.plugin, &sz, rep)).await?;
    }
    if opts.wants("concurrent") {
        within(
            "concurrent",
            1200,
            concurrent::concurrent(&opts.plugin, sz.scale, rep),
        )
        .await?;
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
            "  {:<44} {:>12} {:<6} | {:<34} {:>12} | {:<9} goal",
            "figure", "value", "unit", "baseline", "value", "ratio"
        );
    }
    let t = Instant::now();
    let outcome = runtime.block_on(bench(&opts, &mut rep));
    // Plugins started after the latency section read its marks still write them: nothing of
    // the run is left behind.
    if let Some(log) = &opts.breakdown {
        let _ = std::fs::remove_file(log);
    }
    rep.notes
        .insert("total_seconds".into(), json!(t.elapsed().as_secs_f64()));
    let failed_budgets = rep.figures.iter().filter(|f| f.pass == Some(false)).count();
    let skipped = rep.figures.iter().filter(|f| f.skipped.is_some()).count();
    if opts.json {
        let doc = json!({
            "quick": opts.quick,
            "figures": rep.figures,
            "notes": rep.notes,
            "error": outcome.as_ref().err().map(|e| e.to_string()),
            "failed_budgets": failed_budgets,
            "skipped": skipped,
        });
        println!("{doc:#}");
    } else {
        println!(
            "\n{} figures, {failed_budgets} short of their goal, {skipped} skipped, {:.0} s",
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
