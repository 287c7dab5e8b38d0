//! Resident memory of the plugin and its monitors: idle, with many running, and flat while a
//! job writes a lot.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use executor_schema::api::ExecutorApiClient;
use executor_schema::{ExecutionState, RunCommandRequest};
use futures::StreamExt;
use serde_json::json;

use crate::follow::follow_log;
use crate::harness::Harness;
use crate::latency::check_ok;
use crate::procfs::{job_rss_of, pss, rss};
use crate::report::Report;
use crate::{Res, Sizes, GIB, MIB};

/// How long after the last start the monitors are sampled: past their start-up trim.
pub(crate) const MONITOR_SETTLE: Duration = Duration::from_secs(2);

pub(crate) async fn memory(exe: &Path, sz: &Sizes, rep: &mut Report) -> Res<()> {
    rep.section("resident memory (MiB)");
    let h = Harness::start(exe).await?;
    let out = memory_in(&h, sz, rep).await;
    h.stop().await;
    out
}

pub(crate) async fn memory_in(h: &Harness, sz: &Sizes, rep: &mut Report) -> Res<()> {
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

/// A job writing `bytes` to stdout with default limits, followed by the host from the start;
/// plugin and monitor sampled throughout.
pub(crate) async fn flood(h: &Harness, bytes: u64, rep: &mut Report) -> Res<()> {
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
