//! `--breakdown`: the median time of each step of a start, from the plugin's timing marks.

use std::collections::HashMap;
use std::path::Path;

use serde_json::json;

use crate::report::{percentile, sorted, Report};
use crate::{fail, Res};

/// The timing marks of `executor_plugin::timing`, in the order a start normally passes them,
/// with what happens between the previous mark and this one.
pub(crate) const MARKS: [(&str, &str); 19] = [
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
pub(crate) fn print_breakdown(log: &Path, rep: &mut Report) -> Res<()> {
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
