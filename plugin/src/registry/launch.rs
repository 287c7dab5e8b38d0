//! Starting a monitor and watching it: the execution's state directory and start lock, the
//! hand-over to the fork server (or a re-exec), the start report, and the watch that publishes
//! the result when the monitor says it is written or exits.

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use executor_schema::ExecutorError;
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

use super::recover::{failed_record, load_or_bury, remove_leftover_cgroup, starting_monitor};
use super::{lock, Exec, Phase};
use crate::monitor::launcher::{self, LaunchError};
use crate::monitor::{pidfd, MonitorReport, MONITOR_ARG};
use crate::state::{self, ExecDir, RequestRecord, ResultRecord};

/// Launch the monitor for `record` off the runtime's threads, then read its start report: the
/// monitor, once the job runs (or its failure to execute is known).
pub(super) async fn start(
    exe: PathBuf,
    dir: ExecDir,
    record: RequestRecord,
) -> Result<StartedMonitor, ExecutorError> {
    let report_dir = dir.clone();
    let launched = tokio::task::spawn_blocking(move || launch(&exe, &dir, &record))
        .await
        .map_err(|e| ExecutorError::internal(format!("launching the monitor: {e}")))
        .and_then(|r| r)?;
    start_report(&report_dir, launched).await
}

/// A started monitor: our child when it was exec'd, its pidfd, and its report channel (past the
/// start report; none when the monitor was found without one).
pub(super) struct StartedMonitor {
    pub(super) child: Option<Child>,
    pub(super) pidfd: OwnedFd,
    pub(super) reports: Option<ReportChannel>,
}

/// Start the monitor (handed to a spare, forked by the fork server, or exec'd); its start
/// report is read by [`start_report`]. It detaches into its own session so it outlives us.
fn launch(
    exe: &Path,
    dir: &ExecDir,
    record: &RequestRecord,
) -> Result<StartedMonitor, ExecutorError> {
    let io = |what: &str, e: std::io::Error| ExecutorError::internal(format!("{what}: {e}"));
    // A leftover directory of an execution nobody knows (a start that failed half-way).
    let _ = std::fs::remove_dir_all(&dir.dir);
    state::create_private_dir_all(&dir.dir).map_err(|e| io("creating execution state", e))?;
    // Locked before request.json exists, so a plugin scanning after a crash never mistakes a
    // monitor that is still starting for a dead one. The lock belongs to the open file, which
    // the monitor inherits as its stdin; ours closes when this function returns.
    let lock = dir
        .open_start_lock()
        .map_err(|e| io("opening the start lock", e))?;
    // SAFETY: flock on a descriptor we own. (nix's Flock guard would unlock on drop, which
    // would also unlock the monitor's shared open file.)
    if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        return Err(io("taking the start lock", std::io::Error::last_os_error()));
    }
    state::write_json_replace(&dir.request(), record)
        .map_err(|e| ExecutorError::internal(e.to_string()))?;
    let log = state::create_private_file(&dir.monitor_log())
        .map_err(|e| io("creating monitor.log", e))?;
    crate::timing::mark("p.files");
    match launcher::installed() {
        Some(l) => match ask_fork_server(l, dir, &lock, &log) {
            Err(LaunchError::Unavailable(e)) => {
                // The fork server is gone (it should live as long as we do): re-executing the
                // binary still works, only slower.
                tracing::warn!("{e}; starting the monitor by exec");
                exec_monitor(exe, dir, lock, log)
            }
            Err(LaunchError::Server(e)) => {
                // The server got the request but its answer was lost (the plugin out of
                // descriptors for the pidfd, the server dying): a monitor may be running. Find
                // it as a restarted plugin would: it holds the start lock until it has
                // recorded itself. Ours must go first, or the lock would look held by us.
                drop((lock, log));
                tracing::warn!(execution = %dir.dir.display(), "{e}; looking for its monitor");
                match starting_monitor(dir) {
                    Some(pidfd) => Ok(StartedMonitor {
                        child: None,
                        pidfd,
                        reports: None,
                    }),
                    None => Err(io("starting the monitor", std::io::Error::other(e))),
                }
            }
            Err(e) => Err(io("starting the monitor", std::io::Error::other(e))),
            Ok(started) => Ok(started),
        },
        None => exec_monitor(exe, dir, lock, log),
    }
}

/// Read the monitor's start report: the job runs (or could not be started, its outcome), or
/// the monitor says why it could not set the job up, or it died before saying anything.
/// Awaited on the runtime: the report wakes this task, with no thread in between.
async fn start_report(
    dir: &ExecDir,
    mut launched: StartedMonitor,
) -> Result<StartedMonitor, ExecutorError> {
    let Some(ch) = launched.reports.as_mut() else {
        // A monitor found after its answer was lost: it is past its start (it has written its
        // record), and its report goes to nobody.
        return Ok(launched);
    };
    let line = ch.next_line().await.unwrap_or_default();
    // A monitor that failed exits right after saying so: reaped off the runtime thread.
    let reap = |child: Option<Child>| async move {
        match child {
            Some(mut c) => tokio::task::spawn_blocking(move || c.wait().ok())
                .await
                .ok()
                .flatten()
                .map(|s| s.to_string()),
            None => None,
        }
    };
    match serde_json::from_slice::<MonitorReport>(line.trim_ascii()).map(|r| r.start_error()) {
        Ok(Some(error)) => {
            reap(launched.child).await;
            Err(error)
        }
        Ok(None) => Ok(launched),
        Err(_) => {
            let status = reap(launched.child)
                .await
                .unwrap_or_else(|| "exited".to_string());
            let log = std::fs::read_to_string(dir.monitor_log()).unwrap_or_default();
            Err(ExecutorError::internal(format!(
                "the execution monitor exited before the job started ({status}): {}",
                log.trim()
            )))
        }
    }
}

/// The monitor's report pipe: its start report, then (while we are the plugin that started it)
/// the news that the result is written. Read asynchronously; registered with the runtime at the
/// first read (it is made on a blocking thread).
pub(super) struct ReportChannel {
    fd: Option<OwnedFd>,
    rx: Option<tokio::net::unix::pipe::Receiver>,
    buf: Vec<u8>,
}

/// Longest report line taken: the `finished` line carries the record only when under 16 KiB.
const REPORT_LINE_MAX: usize = 64 * 1024;

impl ReportChannel {
    fn new(fd: OwnedFd) -> Self {
        ReportChannel {
            fd: Some(fd),
            rx: None,
            buf: Vec::new(),
        }
    }

    /// The next line without its newline; `None` at end-of-file, on an error, or past
    /// [`REPORT_LINE_MAX`].
    async fn next_line(&mut self) -> Option<Vec<u8>> {
        loop {
            if let Some(pos) = self.buf.iter().position(|b| *b == b'\n') {
                let mut line: Vec<u8> = self.buf.drain(..=pos).collect();
                line.pop();
                return Some(line);
            }
            if self.buf.len() > REPORT_LINE_MAX {
                return None;
            }
            if self.rx.is_none() {
                let fd = self.fd.take()?;
                self.rx = tokio::net::unix::pipe::Receiver::from_owned_fd(fd).ok();
            }
            let rx = self.rx.as_mut()?;
            let mut chunk = [0u8; 4096];
            match tokio::io::AsyncReadExt::read(rx, &mut chunk).await {
                Ok(0) | Err(_) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    /// Whether the monitor says its result is written, before it closes the pipe or exits;
    /// with the record when the monitor sent it along.
    async fn finished(mut self) -> Option<Option<ResultRecord>> {
        while let Some(line) = self.next_line().await {
            if let Ok(MonitorReport::Finished { record }) = serde_json::from_slice(&line) {
                crate::timing::mark("p.finished_line");
                return Some(record.map(|r| *r));
            }
        }
        None
    }
}

/// Start the monitor through the fork server.
fn ask_fork_server(
    l: &launcher::Launcher,
    dir: &ExecDir,
    lock: &std::fs::File,
    log: &std::fs::File,
) -> Result<StartedMonitor, LaunchError> {
    let (read, write) = std::io::pipe().map_err(LaunchError::Fork)?;
    let launched = l.launch(&dir.dir, lock.as_fd(), write.as_fd(), log.as_fd())?;
    // Ours must close, or a read would never see the monitor close its end.
    drop(write);
    Ok(StartedMonitor {
        child: None,
        pidfd: launched.pidfd,
        reports: Some(ReportChannel::new(read.into())),
    })
}

/// Start the monitor by re-executing this binary as `<exe> __monitor <dir>`.
fn exec_monitor(
    exe: &Path,
    dir: &ExecDir,
    lock: std::fs::File,
    log: std::fs::File,
) -> Result<StartedMonitor, ExecutorError> {
    let io = |what: &str, e: std::io::Error| ExecutorError::internal(format!("{what}: {e}"));
    let mut child = Command::new(exe)
        .arg(MONITOR_ARG)
        .arg(&dir.dir)
        .stdin(lock)
        .stdout(Stdio::piped())
        .stderr(log)
        .spawn()
        .map_err(|e| io(&format!("starting the monitor {}", exe.display()), e))?;
    // Our unreaped child: its pid cannot be reused, so this pidfd names it.
    let fd = match pidfd::open(child.id() as i32) {
        Ok(fd) => fd,
        Err(e) => {
            let _ = child.kill();
            let _ = child.wait();
            return Err(io("pidfd_open on the monitor", e));
        }
    };
    let report = child
        .stdout
        .take()
        .map(|out| ReportChannel::new(OwnedFd::from(out)));
    Ok(StartedMonitor {
        child: Some(child),
        pidfd: fd,
        reports: report,
    })
}

/// Wait for the monitor's result — told on its report channel, or found when it exits (pidfd
/// readable) — and publish it, or a failed result if it died without one. A monitor that is our
/// child is reaped once it exits.
pub(super) async fn watch_monitor(
    exec: Arc<Exec>,
    fd: Arc<OwnedFd>,
    child: Option<Child>,
    channel: Option<ReportChannel>,
) {
    let exited = monitor_exit(&exec.id, &fd);
    tokio::pin!(exited);
    // (told the result is written, the monitor has exited)
    let (told, gone) = match channel {
        Some(ch) => tokio::select! {
            _ = &mut exited => (None, true),
            told = ch.finished() => (told, false),
        },
        None => (None, false),
    };
    if let Some(record) = told {
        // The monitor has killed the job's tree and handed its outputs back; it still holds the
        // job's uid (its own lease) while it removes the cgroup and flushes, then exits.
        match record {
            Some(r) => {
                crate::timing::mark("p.published");
                exec.phase.send_replace(Phase::Finished(Arc::new(r)));
            }
            None => publish(&exec, None).await,
        }
        // The uid is the monitor's until it exits: released here only then, so a bid that
        // counts held uids never promises one a start would not get.
        exited.await;
        lock(&exec.uid_lease).take();
        // A monitor killed between its report and its cleanup leaves the (empty) cgroup.
        let dir = exec.dir.clone();
        let _ = tokio::task::spawn_blocking(move || {
            if let Some(mut c) = child {
                let _ = c.wait();
            }
            remove_leftover_cgroup(&dir);
        })
        .await;
    } else {
        if !gone {
            exited.await;
        }
        let status = match child {
            Some(mut c) => {
                tokio::task::spawn_blocking(move || c.wait().ok().map(|s| s.to_string()))
                    .await
                    .ok()
                    .flatten()
            }
            None => None,
        };
        publish(&exec, status).await;
        // Only now is nothing of the job left running as its uid (load_or_bury kills what a
        // dead monitor left behind).
        lock(&exec.uid_lease).take();
    }
    exec.settled.store(true, Ordering::Release);
}

/// Resolves when the monitor behind `fd` has exited.
async fn monitor_exit(id: &str, fd: &Arc<OwnedFd>) {
    let registered = fd.try_clone().and_then(|own| {
        // SAFETY: the AsyncFd owns this duplicate and nothing else closes or replaces it.
        unsafe { AsyncFd::register_with_interest(own, Interest::READABLE) }
            .map_err(|e| std::io::Error::other(e.to_string()))
    });
    match registered {
        Ok(afd) => {
            let _ = afd.readable().await;
        }
        Err(e) => {
            // No reactor registration: fall back to polling the process identity.
            tracing::warn!(execution = %id, "watching the monitor by pidfd failed: {e}");
            while pidfd::send_signal(fd, 0).unwrap_or(false) {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// Load the result the monitor wrote (or bury the execution) and make it the execution's phase.
async fn publish(exec: &Arc<Exec>, status: Option<String>) {
    let exec2 = exec.clone();
    let record = tokio::task::spawn_blocking(move || {
        load_or_bury(&exec2.dir, &exec2.log_path, status.as_deref())
    })
    .await
    .unwrap_or_else(|e| failed_record(&format!("execution monitor watcher failed: {e}")));
    crate::timing::mark("p.published");
    exec.phase.send_replace(Phase::Finished(Arc::new(record)));
}
