//! The execution monitor: a fork of the plugin's fork server ([`launcher`]), or, without one,
//! `executor-native __monitor <exec-state-dir>`.
//!
//! One small process per execution, with no async runtime. It detaches into its own session,
//! becomes a child subreaper, spawns the job, drains its pipes into the log and the results files,
//! enforces the deadline, turns SIGTERM into a graceful stop, kills whatever the job leaves behind,
//! and writes `result.json`. Its state directory is the whole interface with the plugin, so it
//! does not depend on the plugin staying alive.

pub mod host_sandbox;
pub mod launcher;
mod log;
pub mod pidfd;
mod report;
pub mod signals;
pub mod spawn;
pub mod supervise;
pub mod tree;

use std::ffi::OsStr;
use std::fs::File;
use std::io;
use std::os::fd::{OwnedFd, RawFd};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use executor_schema::RunCommandResult;
use serde::Deserialize;

use crate::results::{self, OutputSink, StreamSummary};
use crate::state::{self, ExecDir, MonitorRecord, MonitorSpec, ProcId, ResultRecord};
use host_sandbox::{Ahead, HostSandbox};
use spawn::{JobSandbox, SpawnError};
use supervise::{Outcome, Stop, Supervisor};

pub use log::{JobLog, RawLog, COALESCE};
pub use report::{MonitorError, MonitorReport, Reporter, INLINE_RESULT_MAX};

/// Set in the plugin's environment, every monitor exits right after reporting its result,
/// before its cleanup: the self-test of the plugin removing what such a monitor leaves.
pub const SELFTEST_DIE_AFTER_REPORT: &str = "EXECUTOR_PLUGIN_SELFTEST_DIE_AFTER_REPORT";

/// `argv[1]` that selects monitor mode in `executor-native`.
pub const MONITOR_ARG: &str = "__monitor";

pub const CANCELLED_MSG: &str = "execution already cancelled";
pub const OOM_MSG: &str = "memory limit exceeded";

fn setup(what: impl Into<String>) -> impl FnOnce(io::Error) -> MonitorError {
    move |source| MonitorError::Setup {
        what: what.into(),
        source,
    }
}

/// Entry point of monitor mode; `args` is the whole argv. Returns the process exit code.
pub fn main_from_args<I, S>(args: I) -> i32
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let Some(dir) = args.into_iter().nth(2).map(|a| PathBuf::from(a.as_ref())) else {
        let e = MonitorError::Usage;
        eprintln!("{e}");
        Reporter::stdout().send(&e.report());
        return 2;
    };
    main_in_dir(dir, Ahead::default(), Early::default())
}

/// The monitor of the execution whose state directory is `dir`, with its report channel on fd 1
/// and its own log on fd 2; whether it was exec'd or forked by the [`launcher`]. Returns the
/// process exit code.
pub fn main_in_dir(dir: PathBuf, ahead: Ahead, early: Early) -> i32 {
    // A forked monitor carries the plugin's command line: its name tells them apart in `ps`.
    // SAFETY: PR_SET_NAME with a NUL-terminated string of at most 16 bytes.
    unsafe { libc::prctl(libc::PR_SET_NAME, c"exec-monitor".as_ptr(), 0, 0, 0) };
    crate::timing::mark("m.main");
    // First, so a cancel that arrives while we start up is queued, not fatal.
    if let Err(e) = signals::block() {
        eprintln!("monitor: blocking signals: {e}");
    }
    let mut reporter = Reporter::stdout();
    match run(
        &ExecDir::at(dir),
        &mut HostSandbox::with_ahead(ahead),
        &mut reporter,
        early,
    ) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("monitor: {e}");
            reporter.send(&e.report());
            1
        }
    }
}

/// Run one execution to its end. Errors are setup errors (reported as start errors); everything
/// after the job started ends in `result.json`.
pub fn run(
    dir: &ExecDir,
    sandbox: &mut dyn JobSandbox,
    reporter: &mut Reporter,
    early: Early,
) -> Result<(), MonitorError> {
    if !early.detached {
        detach_session();
    }
    close_from(3, &sandbox.kept_fds());
    let spec = state::read_json::<MonitorPart>(&dir.request())?.monitor;
    let me = match early.me {
        Some(me) => me,
        None => ProcId::of(std::process::id() as i32).map_err(setup("reading own start time"))?,
    };
    let mut mon = MonitorRecord {
        monitor: me,
        job: None,
        log_path: spec.log_path.clone(),
        cgroup: None,
    };
    // Recorded before the sandbox is prepared, which can take long (a leftover cgroup of the
    // same execution to kill, outputs of a rerun to chown): a restarted plugin waits only so
    // long for a monitor that holds the start lock to record itself.
    state::write_json_replace(&dir.monitor(), &mon)?;
    crate::timing::mark("m.request_read");
    // Held (and locked) until the result is written, past the outputs' hand-back: every
    // results file is made relative to it, and no other execution uses the directory meanwhile.
    let mut held = None;
    let prepared = match open_results(&spec) {
        Err(e) => Err(e),
        Ok(r) => {
            let r = &*held.insert(r);
            match sandbox.prepare(&spec, r) {
                Err(e) => Err(MonitorError::from(e)),
                Ok(()) => {
                    mon.cgroup = sandbox.cgroup_record();
                    state::write_json_replace(&dir.monitor(), &mon)
                        .map(|()| r)
                        .map_err(MonitorError::from)
                }
            }
        }
    };
    crate::timing::mark("m.prepared");
    let setup_done = prepared
        .and_then(|r| supervise_job(dir, &spec, r, &mut mon, sandbox, reporter).map(|s| (r, s)));
    // The OOM counter lives in the cgroup: read before cleanup removes it.
    crate::timing::mark("m.supervised");
    let oom_killed = sandbox.oom_killed();
    let usage = sandbox.final_usage();
    crate::timing::mark("m.cleaned");
    // When supervision ended normally the supervisor has killed and reaped the whole job.
    // Otherwise (its loop failed, or the job never ran) kill through the cgroup now and wait
    // for it to empty: nothing of the job may run once its outputs are handed back and its
    // result reported. Outputs are root's again before anyone is told they are there. The rest
    // of the cleanup (removing the cgroup, releasing the uid) waits until the result is
    // reported: none of it can change the result, and the job's uid stays held until it is done.
    if !matches!(&setup_done, Ok((_, (_, _, Ok(_))))) {
        sandbox.kill_all();
    }
    sandbox.reclaim_outputs();
    let reported = setup_done.and_then(|(r, (sinks, mut log, outcome))| {
        finish(dir, r, sinks, &mut log, outcome, oom_killed, usage).map(|rec| (r, rec))
    });
    if let Ok((results, record)) = &reported {
        // Before the report: a host that starts the next execution on this directory as soon
        // as it has this one's result must find it free.
        results.unlock();
        reporter.finished(record);
        if std::env::var_os(SELFTEST_DIE_AFTER_REPORT).is_some() {
            // Self-test: killed between the report and the cleanup.
            // SAFETY: leaving at once, as a SIGKILL would.
            unsafe { libc::_exit(0) };
        }
    }
    crate::timing::mark("m.reported");
    sandbox.cleanup();
    let (results, _) = reported?;
    crate::timing::mark("m.flushed");
    flush(dir, results);
    Ok(())
}

/// The log, made afresh in its directory (created unless it exists, and checked like the
/// results directory: the log may go into a host's `ExecutionDir/logs`).
fn open_log(spec: &MonitorSpec) -> Result<RawLog, MonitorError> {
    let path = &spec.log_path;
    let (Some(parent), Some(name)) = (path.parent(), path.file_name().and_then(|n| n.to_str()))
    else {
        return Err(MonitorError::Setup {
            what: format!("creating log {}", path.display()),
            source: io::Error::from_raw_os_error(libc::EINVAL),
        });
    };
    // Only a host's `ExecutionDir/logs` can be the caller's fault (the default is ours).
    let dir = results::CheckedDir::create(parent).map_err(|e| match e {
        e if e.is_callers() => MonitorError::InvalidParams {
            field: "ExecutionDir".into(),
            message: e.to_string(),
        },
        e => MonitorError::Dir(e),
    })?;
    RawLog::create_in(&dir, name, spec.limits.log)
        .map_err(setup(format!("creating log {}", path.display())))
}

/// The results directory, created unless it exists, checked ([`results::CheckedDir`]) and
/// locked for this execution, with `results/<Name>` for every output: what
/// [`JobSandbox::prepare`] is given.
pub fn open_results(spec: &MonitorSpec) -> Result<results::CheckedDir, MonitorError> {
    let results = results::CheckedDir::create(&spec.results_dir)?;
    results.lock()?;
    for name in &spec.output_names {
        results.make_subdir(name).map_err(setup(format!(
            "creating output {}",
            spec.results_dir.join(name).display()
        )))?;
    }
    Ok(results)
}

/// Make the result durable: the results files, `result.json` and the directories holding them.
/// Done after the plugin was told, so the disk's latency is not the job's: a plugin that crashes
/// meanwhile still finds everything (the page cache has it); only a power loss within these
/// milliseconds could lose a result that was already reported, as it would lose the job itself.
/// A failure here can no longer change the reported result; it is logged.
fn flush(dir: &ExecDir, results: &results::CheckedDir) {
    let names = [
        results::STDOUT_FILE,
        results::STDERR_FILE,
        results::EXIT_CODE_FILE,
    ];
    let files = names
        .iter()
        .map(|n| (results.path().join(n), results.open_file(n)))
        .chain([
            (dir.result(), File::open(dir.result())),
            (results.path().to_path_buf(), results.open_file(".")),
            (dir.dir.clone(), File::open(&dir.dir)),
        ]);
    for (path, file) in files {
        let synced = file.and_then(|f| {
            // An empty file has no data to flush (its directory entry is covered below).
            let meta = f.metadata()?;
            if meta.is_file() && meta.len() == 0 {
                return Ok(());
            }
            f.sync_all()
        });
        if let Err(e) = synced {
            eprintln!("monitor: flushing {} to disk: {e}", path.display());
        }
    }
}

type Supervised = ([OutputSink; 2], RawLog, Result<Outcome, String>);

/// Create the outputs, spawn the job and supervise it to its end. Errors are setup errors.
fn supervise_job(
    dir: &ExecDir,
    spec: &MonitorSpec,
    results: &results::CheckedDir,
    mon: &mut MonitorRecord,
    sandbox: &mut dyn JobSandbox,
    reporter: &mut Reporter,
) -> Result<Supervised, MonitorError> {
    let l = spec.limits;
    let sink = |name: &str, file: u64, ret: u64| {
        OutputSink::create(results, name, file, ret).map_err(setup(format!(
            "creating {}",
            results.path().join(name).display()
        )))
    };
    let mut sinks = [
        sink(results::STDOUT_FILE, l.stdout_file, l.stdout_return)?,
        sink(results::STDERR_FILE, l.stderr_file, l.stderr_return)?,
    ];
    let mut log = open_log(spec)?;
    let sigfd = signals::SignalFd::open().map_err(setup("opening signalfd"))?;

    let started = Instant::now();
    crate::timing::mark("m.files_ready");
    let outcome = match spawn::spawn_job(spec, sandbox) {
        Ok(job) => {
            crate::timing::mark("m.spawned");
            mon.job = ProcId::of(job.pid).ok();
            if let Err(e) = state::write_json_replace(&dir.monitor(), &*mon) {
                eprintln!("monitor: recording the job pid: {e}");
            }
            reporter.send(&MonitorReport::Running { job_pid: job.pid });
            crate::timing::mark("m.running_sent");
            let deadline = spec
                .timeout_secs
                .filter(|t| t.is_finite() && *t > 0.0)
                .map(|t| (started + Duration::from_secs_f64(t), t));
            let sup = Supervisor {
                job_pid: job.pid,
                sigfd: &sigfd,
                pipes: [
                    Some(OwnedFd::from(job.stdout)),
                    Some(OwnedFd::from(job.stderr)),
                ],
                sinks: &mut sinks,
                log: &mut log,
                sandbox,
                deadline,
                grace: Duration::from_millis(spec.kill_grace_ms),
            };
            sup.run().map_err(|e| {
                // The loop itself failed (poll/signalfd): stop the job rather than orphan it.
                tree::kill_descendants(Some(job.pid));
                format!("execution monitor failed while supervising the job: {e}")
            })
        }
        Err(SpawnError::Exec(reason)) => {
            reporter.send(&MonitorReport::NotStarted {
                reason: reason.clone(),
            });
            Err(format!("failed to start job: {reason}"))
        }
        Err(SpawnError::Setup(e)) => return Err(setup("spawning the job")(e)),
        Err(e @ SpawnError::Step(_)) => return Err(MonitorError::Sandbox(e.to_string())),
    };
    Ok((sinks, log, outcome))
}

/// Own session (the plugin's signals and terminal don't reach us), child subreaper (orphans of
/// the job come to us), and nothing inherited from the plugin kept open.
fn detach_session() {
    // SAFETY: plain syscalls. setsid fails only if we already lead a group, which is fine.
    unsafe {
        libc::setsid();
        if libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) < 0 {
            eprintln!(
                "monitor: PR_SET_CHILD_SUBREAPER: {}",
                io::Error::last_os_error()
            );
        }
    }
}

/// What a spare monitor does for itself before its request comes: its own session (and
/// subreaper role), and its start time read once.
#[derive(Debug, Default)]
pub struct Early {
    detached: bool,
    me: Option<ProcId>,
}

impl Early {
    pub fn now() -> Early {
        detach_session();
        Early {
            detached: true,
            me: ProcId::of(std::process::id() as i32).ok(),
        }
    }
}

/// The part of `request.json` the monitor reads: the wire request in it is only skipped over.
#[derive(Deserialize)]
struct MonitorPart {
    monitor: MonitorSpec,
}

/// Close every descriptor from `first` up, whatever the plugin left open: an inherited copy of
/// the plugin's protocol pipe would keep its host from ever seeing EOF, and nothing of it may
/// reach the job. Everything the monitor needs is opened after this, but for `keep`: what its
/// sandbox made ahead (a spare's).
fn close_from(first: u32, keep: &[RawFd]) {
    if crate::fds::close_range_except(first, &mut keep.to_vec()) {
        return;
    }
    // Older kernels: walk our descriptors (collected first: read_dir holds one itself).
    if let Ok(entries) = std::fs::read_dir("/proc/self/fd") {
        let fds: Vec<i32> = entries
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse().ok())
            .filter(|fd| *fd >= first as i32 && !keep.contains(fd))
            .collect();
        for fd in fds {
            // SAFETY: closing a descriptor nothing of ours uses; a stale one just fails.
            unsafe { libc::close(fd) };
        }
    }
}

fn finish(
    dir: &ExecDir,
    results_dir: &results::CheckedDir,
    sinks: [OutputSink; 2],
    log: &mut dyn JobLog,
    outcome: Result<Outcome, String>,
    oom_killed: bool,
    usage: Option<state::FinalUsage>,
) -> Result<ResultRecord, MonitorError> {
    let [out, err] = sinks;
    let (out, err) = (out.finish(), err.finish());
    let mut result = match &outcome {
        Ok(o) => outcome_result(o, oom_killed),
        Err(reason) => RunCommandResult::failed(reason.clone()),
    };
    result.stdout = out.summary_lossy();
    result.stdout_truncated = out.truncated;
    result.stderr = err.summary_lossy();
    result.stderr_truncated = err.truncated;
    let mut errors: Vec<String> = Vec::new();
    if !result.error_msg.is_empty() {
        errors.push(std::mem::take(&mut result.error_msg));
    }
    errors.extend(stream_errors(&out, &err));
    if let Err(e) = results::write_exit_code(results_dir, result.exit_code) {
        errors.push(format!("writing exitCode: {e}"));
    }
    // errors.Join semantics, as Bacalhau's WriteJobResults.
    result.error_msg = errors.join("\n");
    log.end();

    let mut notes = std::collections::BTreeMap::new();
    if let Ok(o) = &outcome {
        if o.killed_after_grace {
            notes.insert("killedAfterGrace".into(), "true".into());
        }
        if o.pipes_abandoned {
            notes.insert("pipesAbandoned".into(), "true".into());
        }
    }
    if let Some(e) = log.error() {
        notes.insert("logError".into(), e);
    }
    if let Some(d) = log.dropped() {
        notes.insert("logDropped".into(), d);
    }
    let rec = ResultRecord {
        result,
        finished_at_ms: state::now_ms(),
        stdout_bytes: out.total,
        stderr_bytes: err.total,
        notes,
        usage,
    };
    state::write_json_replace(&dir.result(), &rec)?;
    Ok(rec)
}

fn stream_errors(out: &StreamSummary, err: &StreamSummary) -> Vec<String> {
    [out, err].iter().filter_map(|s| s.error.clone()).collect()
}

/// The result for a job that ran: exit status, or the reason it was stopped.
pub fn outcome_result(o: &Outcome, oom_killed: bool) -> RunCommandResult {
    match o.stop {
        Some(Stop::Cancelled) => return RunCommandResult::failed(CANCELLED_MSG),
        Some(Stop::Deadline(secs)) => {
            return RunCommandResult::failed(format!(
                "context deadline exceeded: execution timed out after {}",
                go_duration(secs)
            ))
        }
        None => {}
    }
    let Some(status) = o.main_status else {
        return RunCommandResult::failed("execution monitor lost the job's exit status");
    };
    let exit_code = if libc::WIFEXITED(status) {
        i64::from(libc::WEXITSTATUS(status))
    } else if libc::WIFSIGNALED(status) {
        128 + i64::from(libc::WTERMSIG(status))
    } else {
        -1
    };
    RunCommandResult {
        exit_code,
        error_msg: if oom_killed {
            OOM_MSG.into()
        } else {
            String::new()
        },
        ..RunCommandResult::default()
    }
}

/// Seconds as Go's `time.Duration` prints them for whole and fractional seconds (`1s`, `1.5s`).
fn go_duration(secs: f64) -> String {
    if secs >= 1.0 || secs == 0.0 {
        format!("{secs}s")
    } else {
        format!("{}ms", secs * 1000.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_map_like_docker() {
        let exited = |code: i32| Outcome {
            main_status: Some(code << 8),
            ..Outcome::default()
        };
        assert_eq!(outcome_result(&exited(0), false).exit_code, 0);
        let r = outcome_result(&exited(123), false);
        assert_eq!((r.exit_code, r.error_msg.as_str()), (123, ""));
        let killed = Outcome {
            main_status: Some(libc::SIGKILL),
            ..Outcome::default()
        };
        assert_eq!(outcome_result(&killed, false).exit_code, 137);
        assert_eq!(
            outcome_result(&killed, true).error_msg,
            "memory limit exceeded"
        );
        let cancelled = Outcome {
            stop: Some(Stop::Cancelled),
            ..exited(0)
        };
        let r = outcome_result(&cancelled, false);
        assert_eq!((r.exit_code, r.error_msg.as_str()), (-1, CANCELLED_MSG));
        let late = Outcome {
            stop: Some(Stop::Deadline(1.0)),
            ..exited(0)
        };
        assert_eq!(
            outcome_result(&late, false).error_msg,
            "context deadline exceeded: execution timed out after 1s"
        );
        assert_eq!(go_duration(0.25), "250ms");
        assert_eq!(go_duration(1.5), "1.5s");
    }
}
