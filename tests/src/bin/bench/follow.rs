//! Log follow: a job's stdout followed byte-exact, against a bare pipe drain.

use std::io::Read;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use executor_host::{Executor, PluginExecutor};
use executor_schema::api::ExecutorApiClient;
use executor_schema::{LogEvent, LogStream, LogStreamRequest};
use serde_json::json;

use crate::harness::HostHarness;
use crate::latency::check_ok;
use crate::procfs::cpu_secs;
use crate::report::Report;
use crate::{fail, Res, MIB};

/// The known content of the log-follow job, repeated: each received byte is compared with it.
pub(crate) const PATTERN: &[u8] =
    b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ\n";

/// Compares `data`, found at stream position `pos`, with the known content.
pub(crate) fn matches_pattern(data: &[u8], pos: u64) -> bool {
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

pub(crate) fn pattern_script(bytes: u64) -> String {
    let line = std::str::from_utf8(&PATTERN[..PATTERN.len() - 1]).unwrap_or("x");
    format!("yes {line} | head -c {bytes}")
}

/// Drains the same program through a bare pipe in this process; bytes/s.
pub(crate) fn bare_pipe(bytes: u64) -> Res<f64> {
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
pub(crate) struct Followed {
    pub(crate) bytes: u64,
    pub(crate) events: u64,
    pub(crate) resumes: u64,
    pub(crate) ended: bool,
    pub(crate) mismatch: Option<u64>,
}

/// Follows an execution's log from `Position` 0 to its end event, resuming after a dropped
/// subscription, checking the stdout bytes against the pattern when `verify`.
pub(crate) async fn follow_log(
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
pub(crate) async fn follow_stdcopy(exec: &PluginExecutor, id: &str) -> Res<Followed> {
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

pub(crate) async fn log_follow(h: &HostHarness, bytes: u64, rep: &mut Report) -> Res<()> {
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
        Some((">= 0.5x", plug >= 0.5 * bare)),
    );
    rep.note(
        "follow_events",
        json!({"events": f.events, "avg_event_bytes": f.bytes / f.events.max(1)}),
    );
    let _ = std::fs::remove_dir_all(h.work.path().join("follow"));
    Ok(())
}
