//! Start-to-result latency of `/bin/true`: through the plugin, bare, and in the same sandbox
//! without the plugin; by network type.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use executor_host::Executor;
use executor_plugin::monitor::host_sandbox::{Ahead, HostSandbox};
use executor_plugin::state::{MonitorSpec, RequestRecord};
use executor_schema::RunCommandResult;
use serde_json::json;

use crate::harness::HostHarness;
use crate::report::{percentile, sorted, Report};
use crate::{fail, Res};

pub(crate) fn bare_true() -> Res<()> {
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
pub(crate) fn sandboxed_true(spec: &MonitorSpec, i: usize) -> Res<f64> {
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

pub(crate) fn check_ok(what: &str, r: &RunCommandResult) -> Res<()> {
    if r.exit_code != 0 || !r.error_msg.is_empty() {
        return fail(format!(
            "{what}: exit {} error {:?}",
            r.exit_code, r.error_msg
        ));
    }
    Ok(())
}

/// Where a latency run keeps its state: a tmpfs and a disk, each judged by its own goal.
struct Place {
    /// `tmpfs`, or the disk's directory.
    label: String,
    dir: PathBuf,
    goal: (&'static str, f64),
}

/// Whether `dir` is on a tmpfs.
fn on_tmpfs(dir: &Path) -> Option<bool> {
    let st = nix::sys::statfs::statfs(dir).ok()?;
    Some(st.filesystem_type() == nix::sys::statfs::TMPFS_MAGIC)
}

/// `/dev/shm` (tmpfs), and `$TMPDIR`, else `/tmp`, else `/var/tmp`, whichever is not a tmpfs.
fn places() -> (Option<Place>, Option<Place>) {
    let tmpfs = [PathBuf::from("/dev/shm"), std::env::temp_dir()]
        .into_iter()
        .find(|d| on_tmpfs(d) == Some(true))
        .map(|dir| Place {
            label: "tmpfs".into(),
            dir,
            goal: ("<= 2.0x", 2.0),
        });
    let disk = [
        std::env::temp_dir(),
        PathBuf::from("/tmp"),
        PathBuf::from("/var/tmp"),
    ]
    .into_iter()
    .find(|d| on_tmpfs(d) == Some(false))
    .map(|dir| Place {
        label: dir.display().to_string(),
        dir,
        goal: ("<= 2.5x", 2.5),
    });
    (tmpfs, disk)
}

/// Latency with the state on a tmpfs and on a disk, each through its own plugin, interleaved
/// with the bare spawn and the isolation floor so all see the same background load. With
/// `breakdown`, only the first place is measured (the marks of two plugins would mix).
pub(crate) async fn latency(exe: &Path, n: usize, breakdown: bool, rep: &mut Report) -> Res<()> {
    rep.section("start-to-result latency of /bin/true (ms)");
    let (tmpfs, disk) = places();
    let mut chosen = Vec::new();
    let mut missing = Vec::new();
    for (place, name, goal) in [(tmpfs, "tmpfs", "<= 2.0x"), (disk, "a disk", "<= 2.5x")] {
        match place {
            Some(p) if !breakdown || chosen.is_empty() => chosen.push(p),
            Some(p) => missing.push((p.label, goal, "not measured with --breakdown".to_string())),
            None => missing.push((name.to_string(), goal, format!("no {name} for state here"))),
        }
    }
    let mut hs = Vec::new();
    for p in &chosen {
        hs.push(HostHarness::start_in(exe, &p.dir).await?);
    }
    let out = latency_in(&chosen, &hs, n, rep).await;
    for h in hs {
        h.stop().await;
    }
    for (label, goal, why) in missing {
        rep.skip(
            format!("Executor::run /bin/true p50, state on {label}"),
            Some(goal),
            why,
        );
    }
    out
}

async fn latency_in(places: &[Place], hs: &[HostHarness], n: usize, rep: &mut Report) -> Res<()> {
    let Some(h) = hs.first() else {
        return fail("no place for state to measure latency on");
    };
    for i in 0..10 {
        bare_true()?;
        // Ids differ between the plugins: job cgroups are named by execution id on the
        // host, and one plugin's teardown of an id would race the other's start of it.
        for (k, h) in hs.iter().enumerate() {
            check_ok(
                "warm-up",
                &h.run(&format!("warm-{k}-{i}"), &["/bin/true"]).await?,
            )?;
        }
    }
    // The spec the plugin resolved for a run like the measured ones, for the sandbox floor.
    let resolved = executor_plugin::state::read_json::<RequestRecord>(
        &executor_plugin::state::ExecDir::new(h.state.path(), "warm-0-0").request(),
    )
    .ok()
    .map(|r| r.monitor)
    .filter(|m| m.sandbox.filesystem.is_some() && nix::unistd::geteuid().is_root());
    if let Some(spec) = &resolved {
        // What the plugin's fork server learns from its first start, for [`Ahead::prepare`].
        HostSandbox::warm(spec);
    }
    let mut bare = Vec::with_capacity(n);
    let mut plug: Vec<Vec<f64>> = vec![Vec::with_capacity(n); hs.len()];
    let mut floor = Vec::with_capacity(n);
    // Interleaved so all see the same background load.
    for i in 0..n {
        let t = Instant::now();
        bare_true()?;
        bare.push(t.elapsed().as_secs_f64() * 1e3);
        if let Some(spec) = &resolved {
            floor.push(sandboxed_true(spec, i)?);
        }
        for (k, h) in hs.iter().enumerate() {
            let req = h.request(&format!("lat-{k}-{i}"), &["/bin/true"])?;
            let t = Instant::now();
            let r = h.exec.run(req, None).await?;
            plug[k].push(t.elapsed().as_secs_f64() * 1e3);
            check_ok("latency run", &r)?;
        }
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
            "state": places[0].label,
            "start_until_running": percentile(&sorted(starts), 0.5),
            "running_until_result": percentile(&sorted(waits), 0.5),
        }),
    );
    let bare = sorted(bare);
    let b50 = percentile(&bare, 0.5);
    let f50 = (!floor.is_empty()).then(|| percentile(&sorted(floor), 0.5));
    for (place, times) in places.iter().zip(plug) {
        let times = sorted(times);
        let p50 = percentile(&times, 0.5);
        let (goal, ratio) = place.goal;
        rep.add(
            format!("Executor::run /bin/true p50, state on {}", place.label),
            p50,
            "ms",
            "Command::status p50",
            b50,
            Some((goal, p50 <= ratio * b50)),
        );
        rep.add(
            format!("Executor::run /bin/true p99, state on {}", place.label),
            percentile(&times, 0.99),
            "ms",
            "Command::status p99",
            percentile(&bare, 0.99),
            None,
        );
        if let Some(f50) = f50 {
            rep.add(
                format!("Executor::run p50 on {}, to the floor", place.label),
                p50,
                "ms",
                "same sandbox in-process p50",
                f50,
                None,
            );
        }
    }
    match f50 {
        Some(f50) => rep.add(
            "isolation floor: same sandbox, no plugin, p50",
            f50,
            "ms",
            "Command::status p50",
            b50,
            Some((FLOOR_GOAL.0, f50 <= FLOOR_GOAL.1 * b50)),
        ),
        None => rep.skip(
            "isolation floor: same sandbox, no plugin, p50",
            Some(FLOOR_GOAL.0),
            "needs root and a plugin that gives jobs a private root",
        ),
    }
    rep.note("latency_runs", json!(n));
    if let Some(log) = std::env::var_os(executor_plugin::timing::ENV) {
        rep.section(&format!(
            "where the time of a start goes, state on {} (medians; timing marks on, which slow it)",
            places[0].label
        ));
        let printed = crate::breakdown::print_breakdown(Path::new(&log), rep);
        // Like the state and work directories, nothing of the run is left behind.
        let _ = std::fs::remove_file(&log);
        printed?;
    }
    Ok(())
}

/// The isolation floor's goal is to stay where it is: within this ratio of the bare spawn.
const FLOOR_GOAL: (&str, f64) = ("keep <= 1.25x", 1.25);

/// What each network type adds to a start: `/bin/true` with `Host`, `None` (a namespace with
/// `lo`) and `Bridge` (a namespace, a veth on the bridge, the shared nftables table reloaded),
/// interleaved. Bridge only where the plugin is root with `nft`.
pub(crate) async fn network_latency(h: &HostHarness, n: usize, rep: &mut Report) -> Res<()> {
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
