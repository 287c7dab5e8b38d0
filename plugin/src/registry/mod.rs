//! The plugin side of executions: the state machine (starting, running, finished), waiting,
//! cancelling, retention, and the uids jobs run as.
//!
//! A start reads top-down through the files of this folder: [`spec`] turns the request into the
//! monitor's [`MonitorSpec`], [`Registry::start_spec_as`] records it and `launch` starts its
//! monitor and watches it to the end; `recover` rebuilds the map from the state directories
//! after a restart and buries executions whose monitor died.
//!
//! Everything durable lives in the execution's state directory (see [`crate::state`]); the
//! in-memory map is rebuilt from it by [`Registry::open`].

mod launch;
mod recover;
pub mod spec;

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use executor_schema::{ExecutionStats, ExecutorError};
use tokio::sync::watch;

use crate::monitor::pidfd;
use crate::sandbox::cgroup::JobCgroup;
use crate::sandbox::uids::{self, UidLease, UidPool, UidRange};
use crate::state::{self, ExecDir, MonitorRecord, MonitorSpec, RequestRecord, ResultRecord};

use launch::{watch_monitor, StartedMonitor};

pub use spec::{build_spec, InputSpec, OutputSpec, SpecInput, DEFAULT_TMPFS_SIZE, JOB_ROOT_DIR};

pub const DEFAULT_RETENTION: Duration = Duration::from_secs(3600);
pub const DEFAULT_MAX_RETAINED: usize = 1000;
pub const DEFAULT_KILL_GRACE: Duration = Duration::from_secs(2);

#[derive(Debug, Clone)]
pub struct RegistryConfig {
    pub state_root: PathBuf,
    /// The `executor-native` binary, re-executed as `<exe> __monitor <dir>` when there is no
    /// fork server ([`crate::monitor::launcher`]) to fork monitors from.
    pub monitor_exe: PathBuf,
    /// How long a finished execution stays queryable.
    pub retention: Duration,
    /// How many finished executions are kept at most (the oldest go first).
    pub max_retained: usize,
    /// Between the graceful SIGTERM and the kill of the whole tree on cancel or deadline.
    pub kill_grace: Duration,
    /// Where running executions get a uid of their own from (see [`crate::sandbox::user::job_uid_range`]); `None`:
    /// jobs run as the user `build_spec` resolves.
    pub job_uids: Option<UidRange>,
    /// The host-wide locks that mark job uids taken ([`uids::DEFAULT_LOCK_DIR`]).
    pub job_uid_lock_dir: PathBuf,
}

impl RegistryConfig {
    pub fn new(state_root: impl Into<PathBuf>, monitor_exe: impl Into<PathBuf>) -> Self {
        RegistryConfig {
            state_root: state_root.into(),
            monitor_exe: monitor_exe.into(),
            retention: DEFAULT_RETENTION,
            max_retained: DEFAULT_MAX_RETAINED,
            kill_grace: DEFAULT_KILL_GRACE,
            job_uids: None,
            job_uid_lock_dir: PathBuf::from(uids::DEFAULT_LOCK_DIR),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("state root {path}: {source}")]
    StateRoot {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Where an execution's log is, and whether it has ended (no more frames will be appended).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogSource {
    pub path: PathBuf,
    pub ended: bool,
}

/// The lifecycle of one execution as the registry sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Phase {
    /// The monitor is being launched; `start` has not returned yet.
    Starting,
    Running,
    Finished(Arc<ResultRecord>),
}

/// A snapshot of one execution for listings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecInfo {
    pub execution_id: String,
    pub job_id: String,
    pub phase: Phase,
    pub created_at_ms: u64,
    pub log_path: PathBuf,
}

struct Exec {
    id: String,
    job_id: String,
    dir: ExecDir,
    log_path: PathBuf,
    created_at_ms: u64,
    phase: watch::Sender<Phase>,
    /// The monitor, once launched; for cancel.
    monitor: Mutex<Option<Arc<OwnedFd>>>,
    /// Cancel arrived before the monitor reported: signal it once it has.
    cancel_pending: AtomicBool,
    /// The plugin's hold on the job's own uid, dropped once the job is known to be gone.
    uid_lease: Mutex<Option<UidLease>>,
    /// The monitor has exited and what it left is cleaned up. A monitor cleans up after it has
    /// reported the result: until then its execution is not evicted, so its id cannot be
    /// started again while its cgroup (named after the id) may still be removed.
    settled: AtomicBool,
}

impl Exec {
    fn new(id: &str, job_id: &str, dir: ExecDir, log_path: PathBuf, created_at_ms: u64) -> Self {
        Exec {
            id: id.to_string(),
            job_id: job_id.to_string(),
            dir,
            log_path,
            created_at_ms,
            phase: watch::Sender::new(Phase::Starting),
            monitor: Mutex::new(None),
            cancel_pending: AtomicBool::new(false),
            uid_lease: Mutex::new(None),
            settled: AtomicBool::new(false),
        }
    }

    /// Finished, and nothing of its monitor is left: it may be evicted.
    fn evictable(&self) -> Option<Arc<ResultRecord>> {
        self.finished()
            .filter(|_| self.settled.load(Ordering::Acquire))
    }

    fn phase(&self) -> Phase {
        self.phase.borrow().clone()
    }

    fn finished(&self) -> Option<Arc<ResultRecord>> {
        match &*self.phase.borrow() {
            Phase::Finished(r) => Some(r.clone()),
            _ => None,
        }
    }

    fn monitor_fd(&self) -> Option<Arc<OwnedFd>> {
        lock(&self.monitor).clone()
    }

    fn signal_monitor(&self) -> Result<(), ExecutorError> {
        let Some(fd) = self.monitor_fd() else {
            return Ok(());
        };
        pidfd::send_signal(&fd, libc::SIGTERM)
            .map(|_| ())
            .map_err(|e| {
                ExecutorError::internal(format!("signalling the execution monitor: {e}"))
                    .with_execution(self.id.clone())
            })
    }
}

pub struct Registry {
    config: RegistryConfig,
    /// Per-execution uids, when jobs get one.
    uids: Option<Arc<Mutex<UidPool>>>,
    /// A look-ahead of uid verdicts is running ([`Registry::look_up_uids_ahead`]).
    uid_lookahead: Arc<AtomicBool>,
    execs: Mutex<HashMap<String, Arc<Exec>>>,
    shutting_down: AtomicBool,
    janitor: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock leaves plain data behind; keep serving.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Registry {
    /// Open the state root, re-attach to running monitors and load finished results.
    pub async fn open(config: RegistryConfig) -> Result<Arc<Registry>, RegistryError> {
        let root = state::executions_root(&config.state_root);
        state::create_private_dir_all(&root).map_err(|e| RegistryError::StateRoot {
            path: root.clone(),
            source: e,
        })?;
        let uids = config
            .job_uids
            .map(|r| Arc::new(Mutex::new(UidPool::new(r, &config.job_uid_lock_dir))));
        let reg = Arc::new(Registry {
            uids,
            uid_lookahead: Arc::new(AtomicBool::new(false)),
            config,
            execs: Mutex::new(HashMap::new()),
            shutting_down: AtomicBool::new(false),
            janitor: Mutex::new(None),
        });
        let found = {
            let root = root.clone();
            tokio::task::spawn_blocking(move || recover::scan(&root))
                .await
                .unwrap_or_default()
        };
        for (exec, monitor) in found {
            let exec = Arc::new(exec);
            if let Some(fd) = monitor {
                let fd = Arc::new(fd);
                *lock(&exec.monitor) = Some(fd.clone());
                exec.phase.send_replace(Phase::Running);
                tokio::spawn(watch_monitor(exec.clone(), fd, None, None));
            } else {
                exec.settled.store(true, Ordering::Release);
            }
            lock(&reg.execs).insert(exec.id.clone(), exec);
        }
        reg.evict().await;
        if let Some(pool) = &reg.uids {
            reg.look_up_uids_ahead(pool);
        }
        let weak = Arc::downgrade(&reg);
        let period =
            (reg.config.retention / 4).clamp(Duration::from_secs(1), Duration::from_secs(60));
        *lock(&reg.janitor) = Some(tokio::spawn(janitor(weak, period)));
        Ok(reg)
    }

    pub fn config(&self) -> &RegistryConfig {
        &self.config
    }

    /// A uid of its own for the next execution, when jobs get one (`job_uids` configured); it
    /// stays taken until the lease is dropped or, passed to [`Registry::start_spec_as`], the
    /// execution has ended.
    pub async fn lease_job_uid(&self) -> Result<Option<UidLease>, ExecutorError> {
        let Some(pool) = self.uids.clone() else {
            return Ok(None);
        };
        // Usually the next ids were looked up in the user databases ahead of time (below), and
        // the lease is a few non-blocking calls on a tmpfs: no trip to the blocking pool.
        // Never wait for the pool on the runtime's thread: whoever holds it may be in a slow
        // user-database lookup.
        let cached = match pool.try_lock() {
            Ok(mut p) => p.allocate_cached(),
            Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner().allocate_cached(),
            Err(std::sync::TryLockError::WouldBlock) => None,
        };
        let lease = match cached {
            Some(lease) => lease,
            None => {
                let pool = pool.clone();
                tokio::task::spawn_blocking(move || lock(&pool).allocate())
                    .await
                    .map_err(|e| ExecutorError::internal(format!("allocating a job uid: {e}")))?
            }
        };
        self.look_up_uids_ahead(&pool);
        lease
            .map(Some)
            .map_err(|e| ExecutorError::internal(e.to_string()))
    }

    /// Look the next candidate ids up in the user and group databases off the start path (a
    /// lookup is NSS work, and may block on a directory service). One at a time.
    fn look_up_uids_ahead(&self, pool: &Arc<Mutex<UidPool>>) {
        const AHEAD: usize = 16;
        if self.uid_lookahead.swap(true, Ordering::AcqRel) {
            return;
        }
        // Only once fewer than half of the next AHEAD ids are known, then all of them: one
        // batch per AHEAD/2 allocations.
        // Not waiting for the pool here either (a blocking allocation may hold it).
        let ids = match pool.try_lock() {
            Ok(p) if !p.unchecked_ahead(AHEAD / 2).is_empty() => p.unchecked_ahead(AHEAD),
            _ => Vec::new(),
        };
        if ids.is_empty() {
            self.uid_lookahead.store(false, Ordering::Release);
            return;
        }
        let pool = pool.clone();
        let busy = self.uid_lookahead.clone();
        tokio::task::spawn_blocking(move || {
            // Cleared however this ends (a lookup that panics included).
            struct Done(Arc<AtomicBool>);
            impl Drop for Done {
                fn drop(&mut self) {
                    self.0.store(false, Ordering::Release);
                }
            }
            let _done = Done(busy);
            // Looked up without the pool's lock: a slow directory service delays no start.
            let verdicts: Vec<(u32, bool)> = ids
                .into_iter()
                .map(|id| (id, uids::unknown_to_system(id)))
                .collect();
            lock(&pool).record_verdicts(verdicts);
        });
    }

    /// Launch a monitor for a resolved spec. `request` is the wire request, kept for inspection.
    /// Returns once the job is running (or its failure to execute is known).
    pub async fn start_spec(
        &self,
        request: serde_json::Value,
        spec: MonitorSpec,
    ) -> Result<(), ExecutorError> {
        self.start_spec_as(request, spec, None).await
    }

    /// [`Registry::start_spec`] for a spec whose job runs as the uid `uid_lease` holds (from
    /// [`Registry::lease_job_uid`]); the registry releases it when the execution has ended.
    pub async fn start_spec_as(
        &self,
        request: serde_json::Value,
        mut spec: MonitorSpec,
        uid_lease: Option<UidLease>,
    ) -> Result<(), ExecutorError> {
        if self.shutting_down.load(Ordering::SeqCst) {
            return Err(ExecutorError::unsupported("the plugin is shutting down"));
        }
        let id = spec.execution_id.clone();
        check_execution_id(&id)?;
        spec.kill_grace_ms = self.config.kill_grace.as_millis() as u64;
        let dir = ExecDir::new(&self.config.state_root, &id);
        let exec = {
            let mut execs = lock(&self.execs);
            if let Some(existing) = execs.get(&id) {
                return Err(match existing.phase() {
                    Phase::Finished(_) => ExecutorError::already_complete(id),
                    _ => ExecutorError::already_started(id),
                });
            }
            let exec = Arc::new(Exec::new(
                &id,
                &spec.job_id,
                dir.clone(),
                spec.log_path.clone(),
                state::now_ms(),
            ));
            *lock(&exec.uid_lease) = uid_lease;
            execs.insert(id.clone(), exec.clone());
            exec
        };
        // Only the count can be over on a start; age is the janitor's, every few seconds. Not
        // a pass over every retained execution (there can be a thousand) on every start.
        if lock(&self.execs).len() > self.config.max_retained {
            self.evict().await;
        }

        let record = RequestRecord {
            request,
            monitor: spec,
            created_at_ms: exec.created_at_ms,
        };
        crate::timing::mark("p.before_launch");
        let launched = launch::start(self.config.monitor_exe.clone(), dir, record).await;
        match launched {
            Ok(StartedMonitor {
                child,
                pidfd,
                reports,
            }) => {
                crate::timing::mark("p.launched");
                let fd = Arc::new(pidfd);
                *lock(&exec.monitor) = Some(fd.clone());
                exec.phase.send_replace(Phase::Running);
                tokio::spawn(watch_monitor(exec.clone(), fd, child, reports));
                if exec.cancel_pending.load(Ordering::SeqCst) {
                    exec.signal_monitor()?;
                }
                Ok(())
            }
            Err(e) => {
                // A start error leaves nothing behind: the id may be started again.
                lock(&self.execs).remove(&id);
                let dir = exec.dir.dir.clone();
                let _ = tokio::task::spawn_blocking(move || std::fs::remove_dir_all(dir)).await;
                Err(e.with_execution(id))
            }
        }
    }

    /// Wait for the execution to finish; the stored result once it has, as often as asked.
    pub async fn wait_record(
        &self,
        execution_id: &str,
    ) -> Result<Arc<ResultRecord>, ExecutorError> {
        let exec = self.get(execution_id)?;
        let mut rx = exec.phase.subscribe();
        let phase = rx
            .wait_for(|p| matches!(p, Phase::Finished(_)))
            .await
            .map_err(|_| ExecutorError::internal("execution state lost"))?;
        match &*phase {
            Phase::Finished(r) => Ok(r.clone()),
            _ => Err(ExecutorError::internal("execution state lost")),
        }
    }

    /// Unknown: NotFound; finished: Ok; running: SIGTERM to the monitor (which stops the job
    /// gracefully) and return once it is sent.
    pub async fn cancel(&self, execution_id: &str) -> Result<(), ExecutorError> {
        let exec = self.get(execution_id)?;
        match exec.phase() {
            Phase::Finished(_) => Ok(()),
            Phase::Starting => {
                exec.cancel_pending.store(true, Ordering::SeqCst);
                // The monitor may have reported between the phase read and the flag.
                if exec.phase() == Phase::Running {
                    exec.signal_monitor()?;
                }
                Ok(())
            }
            Phase::Running => exec.signal_monitor(),
        }
    }

    /// Job uids: (how many the range has, how many this plugin's executions hold now); `None`
    /// when jobs do not get a uid of their own.
    pub fn job_uid_room(&self) -> Option<(u64, u64)> {
        let pool = self.uids.as_ref()?;
        let total = lock(pool).range().size();
        let held = lock(&self.execs)
            .values()
            .filter(|e| lock(&e.uid_lease).is_some())
            .count() as u64;
        Some((total, held))
    }

    pub fn infos(&self) -> Vec<ExecInfo> {
        let mut v: Vec<ExecInfo> = lock(&self.execs)
            .values()
            .map(|e| ExecInfo {
                execution_id: e.id.clone(),
                job_id: e.job_id.clone(),
                phase: e.phase(),
                created_at_ms: e.created_at_ms,
                log_path: e.log_path.clone(),
            })
            .collect();
        v.sort_by(|a, b| {
            (a.created_at_ms, &a.execution_id).cmp(&(b.created_at_ms, &b.execution_id))
        });
        v
    }

    /// Live usage of a running execution, from its cgroup. Fields this host cannot measure (no
    /// cgroup, no such controller) are `None`. Unknown id: NotFound; finished: the totals the
    /// monitor recorded at the end, or AlreadyComplete when it recorded none.
    pub async fn stats(&self, execution_id: &str) -> Result<ExecutionStats, ExecutorError> {
        let exec = self.get(execution_id)?;
        if let Some(rec) = exec.finished() {
            // What the monitor read from the cgroup at the end; without it (no cgroup, or a
            // record of an older plugin) the sentinel "execution already complete".
            return match &rec.usage {
                Some(u) => Ok(final_stats(execution_id, u)),
                None => Err(ExecutorError::already_complete(execution_id)),
            };
        }
        let dir = exec.dir.clone();
        let id = execution_id.to_string();
        tokio::task::spawn_blocking(move || read_stats(&dir, &id))
            .await
            .map_err(|e| ExecutorError::internal(format!("reading stats: {e}")))?
    }

    /// Where the execution's log is and whether it has ended.
    pub fn log_source(&self, execution_id: &str) -> Result<LogSource, ExecutorError> {
        let exec = self.get(execution_id)?;
        Ok(LogSource {
            path: exec.log_path.clone(),
            ended: exec.finished().is_some(),
        })
    }

    /// Stop accepting work. With `cancel_running`, cancel every running execution and wait
    /// (bounded) for their results; otherwise they keep running under their monitors.
    pub async fn shutdown(&self, cancel_running: bool) {
        self.shutting_down.store(true, Ordering::SeqCst);
        if let Some(j) = lock(&self.janitor).take() {
            j.abort();
        }
        if !cancel_running {
            return;
        }
        let running: Vec<Arc<Exec>> = lock(&self.execs)
            .values()
            .filter(|e| e.finished().is_none())
            .cloned()
            .collect();
        for e in &running {
            e.cancel_pending.store(true, Ordering::SeqCst);
            let _ = e.signal_monitor();
        }
        let bound = self.config.kill_grace + Duration::from_secs(5);
        let waits = running.iter().map(|e| {
            let mut rx = e.phase.subscribe();
            async move {
                let _ = rx.wait_for(|p| matches!(p, Phase::Finished(_))).await;
            }
        });
        let _ = tokio::time::timeout(bound, futures::future::join_all(waits)).await;
    }

    fn get(&self, execution_id: &str) -> Result<Arc<Exec>, ExecutorError> {
        lock(&self.execs)
            .get(execution_id)
            .cloned()
            .ok_or_else(|| ExecutorError::not_found(execution_id))
    }

    /// Drop finished executions past the retention time, then the oldest beyond the count.
    pub async fn evict(&self) {
        let now = state::now_ms();
        let retention_ms = self.config.retention.as_millis() as u64;
        let gone: Vec<PathBuf> = {
            let mut execs = lock(&self.execs);
            // Called on every start: first a pass that allocates nothing, and most of the time
            // finds nothing to evict.
            let (count, oldest) = execs
                .values()
                .filter_map(|e| e.evictable().map(|r| r.finished_at_ms))
                .fold((0usize, u64::MAX), |(n, old), at| (n + 1, old.min(at)));
            if count <= self.config.max_retained
                && (count == 0 || now.saturating_sub(oldest) < retention_ms)
            {
                return;
            }
            let mut finished: Vec<(u64, String)> = execs
                .values()
                .filter_map(|e| e.evictable().map(|r| (r.finished_at_ms, e.id.clone())))
                .collect();
            finished.sort();
            let over = finished.len().saturating_sub(self.config.max_retained);
            let doomed: Vec<String> = finished
                .iter()
                .enumerate()
                .filter(|(i, (at, _))| *i < over || now.saturating_sub(*at) >= retention_ms)
                .map(|(_, (_, id))| id.clone())
                .collect();
            // Renamed aside while the map is locked, so a new start of the same id can never
            // have its fresh directory deleted by this eviction.
            doomed
                .iter()
                .filter_map(|id| execs.remove(id))
                .filter_map(|e| {
                    let aside =
                        e.dir
                            .dir
                            .with_file_name(format!(".evicted.{}.{}", e.id, state::now_ms()));
                    match std::fs::rename(&e.dir.dir, &aside) {
                        Ok(()) => Some(aside),
                        Err(err) if err.kind() == std::io::ErrorKind::NotFound => None,
                        Err(err) => {
                            tracing::warn!(execution = %e.id, "evicting execution state: {err}");
                            None
                        }
                    }
                })
                .collect::<Vec<PathBuf>>()
        };
        if gone.is_empty() {
            return;
        }
        let _ = tokio::task::spawn_blocking(move || {
            for dir in gone {
                if let Err(err) = std::fs::remove_dir_all(&dir) {
                    tracing::warn!("removing evicted state {}: {err}", dir.display());
                }
            }
        })
        .await;
    }
}

/// The id names a directory under the state root: it must be one plain path component.
fn check_execution_id(id: &str) -> Result<(), ExecutorError> {
    let bad = if id.is_empty() {
        Some("cannot be empty")
    } else if id.starts_with('.') || id.contains(['/', '\0']) {
        Some("must not start with '.' or contain '/' or NUL")
    } else if id.len() > 200 {
        Some("must be at most 200 bytes")
    } else {
        None
    };
    match bad {
        Some(message) => Err(ExecutorError::invalid_params(vec![
            executor_schema::FieldProblem {
                field: "ExecutionID".into(),
                message: message.into(),
            },
        ])),
        None => Ok(()),
    }
}

async fn janitor(reg: Weak<Registry>, period: Duration) {
    loop {
        tokio::time::sleep(period).await;
        let Some(reg) = reg.upgrade() else {
            return;
        };
        reg.evict().await;
    }
}

/// Stats from the cgroup the monitor recorded; all `None` while it has recorded none.
fn read_stats(dir: &ExecDir, id: &str) -> Result<ExecutionStats, ExecutorError> {
    let mut out = ExecutionStats {
        execution_id: id.to_string(),
        ..ExecutionStats::default()
    };
    let record = match state::read_json::<MonitorRecord>(&dir.monitor()) {
        Ok(m) => m.cgroup,
        Err(e) if e.is_not_found() => None,
        Err(e) => return Err(ExecutorError::internal(e.to_string()).with_execution(id)),
    };
    let Some(record) = record else {
        return Ok(out);
    };
    let internal = |e: crate::sandbox::cgroup::CgroupError| {
        ExecutorError::internal(format!("reading the job's cgroup: {e}")).with_execution(id)
    };
    let s = JobCgroup::from_record(&record)
        .and_then(|cg| cg.stats())
        .map_err(internal)?;
    out.memory_current_bytes = s.memory_current;
    out.memory_peak_bytes = s.memory_peak;
    out.cpu_seconds = s.cpu_usage_usec.map(|u| u as f64 / 1e6);
    out.pids = s.pids_current;
    out.throttled_periods = s.nr_throttled;
    out.throttled_seconds = s.throttled_usec.map(|u| u as f64 / 1e6);
    Ok(out)
}

/// A finished execution's stats: its totals at the end, nothing current.
fn final_stats(id: &str, u: &state::FinalUsage) -> ExecutionStats {
    ExecutionStats {
        execution_id: id.to_string(),
        memory_current_bytes: None,
        memory_peak_bytes: u.memory_peak_bytes,
        cpu_seconds: u.cpu_usec.map(|us| us as f64 / 1e6),
        pids: u.pids,
        throttled_periods: u.throttled_periods,
        throttled_seconds: u.throttled_usec.map(|us| us as f64 / 1e6),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn execution_ids_must_be_one_path_component() {
        for bad in ["", ".", "..", "../x", "a/b", ".evicted.x", "a\0b"] {
            let err = check_execution_id(bad).unwrap_err();
            assert_eq!(
                err.code,
                executor_schema::ErrorCode::InvalidParams,
                "{bad:?}"
            );
        }
        assert!(check_execution_id("e-7f3a_1.b").is_ok());
    }
}
