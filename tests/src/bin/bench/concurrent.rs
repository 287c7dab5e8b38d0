//! Scale: N concurrent `sleep` executions in one plugin, then all cancelled. What was started,
//! refused and lost, what one execution costs (memory, the plugin's descriptors), and what
//! bounds how many this host can take.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use executor_schema::api::ExecutorApiClient;
use executor_schema::{IdRange, Network, NetworkConfig, RunCommandRequest};
use futures::StreamExt;
use serde_json::json;

use crate::harness::Harness;
use crate::limits::{raise_nofile, PidMax};
use crate::procfs::{meminfo_used, pss, rss};
use crate::report::Report;
use crate::{Res, MIB};

/// The goal: this many at once, none refused, none lost.
pub(crate) const GOAL: usize = 10_000;

/// The first job uid of the range the scale run gives its plugin (the plugin's default range
/// holds 10,000).
const UID_BASE: u32 = 70_000;

/// Descriptors per execution allowed for when the limit is raised: the plugin holds a few per
/// running execution, plus room for everything else.
const FDS_PER_EXECUTION: u64 = 8;

fn open_fds(pid: i32) -> Option<usize> {
    Some(std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count())
}

fn processes() -> u64 {
    std::fs::read_dir("/proc")
        .map(|d| {
            d.filter_map(Result::ok)
                .filter(|e| {
                    e.file_name()
                        .to_str()
                        .is_some_and(|n| n.parse::<u32>().is_ok())
                })
                .count() as u64
        })
        .unwrap_or(0)
}

pub(crate) async fn concurrent(exe: &Path, n: usize, rep: &mut Report) -> Res<()> {
    rep.section(&format!(
        "{n} concurrent `sleep` executions in one plugin, then all cancelled"
    ));
    // Each execution is a monitor and its job; the rest of the host keeps running too.
    let pid_max = PidMax::at_least(processes() + 3 * n as u64 + 4096);
    let (soft, hard) = raise_nofile(FDS_PER_EXECUTION * n as u64 + 4096);
    rep.note(
        "scale_limits",
        json!({
            "pid_max": pid_max.now,
            "pid_max_raised_for_the_run": pid_max.raised(),
            "plugin_RLIMIT_NOFILE": [soft, hard],
        }),
    );
    let uid_max = uid_max_of(n);
    let h = Harness::start_with(exe, |c| {
        c.job_uid_range = Some(IdRange {
            min: UID_BASE,
            max: uid_max,
        })
    })
    .await?;
    let out = run(&h, n, rep, (soft, hard), pid_max.now).await;
    h.stop().await;
    // Put back only once every execution and its monitor are gone.
    drop(pid_max);
    out
}

async fn run(h: &Harness, n: usize, rep: &mut Report, nofile: (u64, u64), pid_max: u64) -> Res<()> {
    tokio::time::sleep(Duration::from_millis(300)).await;
    let plugin = h.pid();
    let fds_idle = open_fds(plugin).unwrap_or(0);
    let used_before = meminfo_used();
    let ids: Vec<String> = (0..n).map(|i| format!("scale-{i}")).collect();
    // Network None, as the CLI asks: a Bridge job takes a port of the plugin's bridge, and a
    // Linux bridge has at most 1024 ports (the kernel answers EXFULL past them), which would
    // bound this run at about 1000 whatever else the plugin holds.
    let reqs: Vec<RunCommandRequest> = ids
        .iter()
        .map(|id| {
            let mut req = h.request(id, &["sleep", "3600"], None)?;
            req.network = Some(NetworkConfig {
                network_type: Network::None,
                ..Default::default()
            });
            Ok(req)
        })
        .collect::<Res<_>>()?;
    let t = Instant::now();
    let started: Vec<_> = futures::stream::iter(reqs)
        .map(|r| h.client().start(r))
        .buffer_unordered(64)
        .collect()
        .await;
    let start_secs = t.elapsed().as_secs_f64();
    let mut refused: BTreeMap<String, usize> = BTreeMap::new();
    let mut running_ids = Vec::new();
    for (id, r) in ids.iter().zip(started) {
        match r {
            Ok(()) => running_ids.push(id.clone()),
            Err(e) => *refused.entry(error_kind(&e)).or_default() += 1,
        }
    }
    // Past each monitor's start-up trim, as the memory section samples.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let monitors = h.monitors();
    let fds_busy = open_fds(plugin).unwrap_or(0);
    let plugin_rss = rss(plugin).map(|r| r.0).unwrap_or(0);
    let used_busy = meminfo_used();
    // Pss of each monitor and its job: what one more execution costs in processes, shared
    // pages split among all of them.
    let t_pss = Instant::now();
    let mut pss_total = 0u64;
    let mut sampled = 0u64;
    for (pid, _) in &monitors {
        let Some((m, _)) = pss(*pid) else { continue };
        let children =
            std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
        let job: u64 = children
            .split_whitespace()
            .filter_map(|c| c.parse().ok())
            .filter_map(|c| pss(c).map(|p| p.0))
            .sum();
        pss_total += m + job;
        sampled += 1;
    }
    let pss_secs = t_pss.elapsed().as_secs_f64();
    let t = Instant::now();
    let cancels: Vec<_> = futures::stream::iter(running_ids.clone())
        .map(|id| h.client().cancel(id))
        .buffer_unordered(64)
        .collect()
        .await;
    let cancel_errors = cancels.iter().filter(|r| r.is_err()).count();
    let waits: Vec<_> = futures::stream::iter(running_ids.clone())
        .map(|id| async move {
            tokio::time::timeout(Duration::from_secs(300), h.client().wait(id)).await
        })
        .buffer_unordered(256)
        .collect()
        .await;
    let back = waits
        .iter()
        .filter(|w| matches!(w, Ok(Ok(r)) if r.error_msg.contains("cancelled")))
        .count();
    // What the others ended with instead.
    let mut other_ends: BTreeMap<String, usize> = BTreeMap::new();
    for w in &waits {
        let kind = match w {
            Ok(Ok(r)) if r.error_msg.contains("cancelled") => continue,
            Ok(Ok(r)) => format!("exit {}: {}", r.exit_code, without_numbers(&r.error_msg)),
            Ok(Err(e)) => error_kind(e),
            Err(_) => "no result within 300 s".into(),
        };
        *other_ends.entry(kind).or_default() += 1;
    }
    let mut cancel_failures: BTreeMap<String, usize> = BTreeMap::new();
    for e in cancels.iter().filter_map(|r| r.as_ref().err()) {
        *cancel_failures.entry(error_kind(e)).or_default() += 1;
    }
    let cancel_secs = t.elapsed().as_secs_f64();
    let started = running_ids.len();
    let refused_total: usize = refused.values().sum();
    let lost = started - back;
    let per_exec = |total: f64| total / started.max(1) as f64;
    let fds_per = per_exec(fds_busy.saturating_sub(fds_idle) as f64);
    let machine_per = per_exec(used_busy.saturating_sub(used_before) as f64);
    let pss_per = pss_total as f64 / sampled.max(1) as f64;
    rep.add(
        format!("{n} concurrent sleeps: cancelled results back"),
        back as f64,
        "execs",
        "requested",
        n as f64,
        (n >= GOAL).then_some((
            "10,000, none refused or lost",
            refused_total == 0 && lost == 0 && back == n,
        )),
    );
    if n < GOAL {
        rep.note(
            "scale_goal",
            json!(format!("judged at {GOAL} only (--concurrent {GOAL})")),
        );
    }
    rep.add(
        "one execution: Pss of its monitor and sleep",
        pss_per / 1024.0,
        "KiB",
        "machine memory used / execution",
        machine_per / 1024.0,
        None,
    );
    rep.add(
        "plugin descriptors per running execution",
        fds_per,
        "fds",
        "plugin descriptors idle",
        fds_idle as f64,
        None,
    );
    // What bounds how many this host takes, each as a count of executions.
    let mem_available = crate::procfs::meminfo_available();
    let mut bounds = vec![
        (
            "plugin's RLIMIT_NOFILE",
            (nofile.0 as f64 / fds_per.max(0.1)) as u64,
        ),
        ("pid_max (a monitor and a job each)", pid_max / 2),
        ("jobUidRange", (uid_max_of(n) - UID_BASE + 1) as u64),
        // The kernel's BR_MAX_PORTS: Network Bridge jobs only.
        ("ports of the plugin's bridge (Network Bridge jobs)", 1024),
    ];
    if machine_per > 0.0 {
        bounds.push((
            "memory available now",
            started as u64 + (mem_available as f64 / machine_per) as u64,
        ));
    }
    bounds.sort_by_key(|b| b.1);
    rep.note(
        "scale",
        json!({
            "requested": n,
            "started": started,
            "refused": refused_total,
            "refused_by_error": refused,
            "lost": lost,
            "cancel_errors": cancel_errors,
            "cancel_errors_by_kind": cancel_failures,
            "not_cancelled_results_by_kind": other_ends,
            "start_seconds": start_secs,
            "cancel_until_all_results_seconds": cancel_secs,
            "monitor_processes": monitors.len(),
            "plugin_fds_idle_busy": [fds_idle, fds_busy],
            "plugin_VmRSS_MiB": plugin_rss as f64 / MIB,
            "machine_MiB_used_before_busy": [used_before as f64 / MIB, used_busy as f64 / MIB],
            "pss_sampled": sampled,
            "pss_sampling_seconds": pss_secs,
            "executions_this_host_takes_by_bound": bounds
                .iter()
                .map(|(what, k)| json!({"bound": what, "executions": k}))
                .collect::<Vec<_>>(),
        }),
    );
    Ok(())
}

fn uid_max_of(n: usize) -> u32 {
    UID_BASE + (n as u32).max(10_000) + 1000
}

/// An error's message with its numbers (ids, interface names) left out, to count errors by kind.
fn error_kind(e: &impl std::fmt::Display) -> String {
    let text = e.to_string();
    // A JSON-RPC error object prints its message between the first pair of quotes.
    let message = text
        .split_once("message: \"")
        .and_then(|(_, rest)| rest.split_once('"'))
        .map(|(m, _)| m.to_string())
        .unwrap_or(text);
    without_numbers(&message)
}

fn without_numbers(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if c.is_ascii_digit() {
            if !out.ends_with('#') {
                out.push('#');
            }
        } else {
            out.push(c);
        }
    }
    out
}
