//! The plugin side of executions: the state machine, one monitor process per execution, waiting,
//! cancelling, re-attaching to monitors after a plugin restart, and retention.
//!
//! Everything durable lives in the execution's state directory (see [`crate::state`]); the
//! in-memory map is rebuilt from it by [`Registry::open`].

use std::collections::HashMap;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use executor_schema::{ExecutionStats, ExecutorError, Network, Resources, RunCommandResult};
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tokio::sync::watch;

use crate::monitor::launcher::{self, LaunchError};
use crate::monitor::{pidfd, MonitorReport, MONITOR_ARG};
use crate::sandbox::allowlist::AllowList;
use crate::sandbox::bridge::BridgePlan;
use crate::sandbox::cgroup::{CgroupRecord, JobCgroup, DEFAULT_MEMORY, DEFAULT_PIDS_MAX};
use crate::sandbox::gpu::{self, HostGpu};
use crate::sandbox::http_proxy::{self, HttpPlan};
use crate::sandbox::mounts::{self, Bind};
use crate::sandbox::uids::{self, UidLease, UidPool, UidRange};
use crate::sandbox::user::{self, UserPlan};
use crate::state::{
    self, ExecDir, FsSandbox, MonitorRecord, MonitorSpec, RequestRecord, ResultRecord, SandboxSpec,
};

pub const DEFAULT_RETENTION: Duration = Duration::from_secs(3600);
pub const DEFAULT_MAX_RETAINED: usize = 1000;
pub const DEFAULT_KILL_GRACE: Duration = Duration::from_secs(2);

#[derive(Debug, Clone)]
pub struct RegistryConfig {
    pub state_root: PathBuf,
    /// The `executor-native` binary, re-executed as `<exe> __monitor <dir>` when there is no
    /// fork server ([`launcher`]) to fork monitors from.
    pub monitor_exe: PathBuf,
    /// How long a finished execution stays queryable.
    pub retention: Duration,
    /// How many finished executions are kept at most (the oldest go first).
    pub max_retained: usize,
    /// Between the graceful SIGTERM and the kill of the whole tree on cancel or deadline.
    pub kill_grace: Duration,
    /// Where running executions get a uid of their own from (see [`job_uid_range`]); `None`:
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
            tokio::task::spawn_blocking(move || scan(&root))
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
    /// lookup is ~0.2 ms of NSS work, and may block on a directory service). One at a time.
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
        let exe = self.config.monitor_exe.clone();
        let report_dir = dir.clone();
        let launched = tokio::task::spawn_blocking(move || launch(&exe, &dir, &record))
            .await
            .map_err(|e| ExecutorError::internal(format!("launching the monitor: {e}")))
            .and_then(|r| r);
        let launched = match launched {
            Ok(l) => start_report(&report_dir, l).await,
            Err(e) => Err(e),
        };
        match launched {
            Ok((child, fd, channel)) => {
                crate::timing::mark("p.launched");
                let fd = Arc::new(fd);
                *lock(&exec.monitor) = Some(fd.clone());
                exec.phase.send_replace(Phase::Running);
                tokio::spawn(watch_monitor(exec.clone(), fd, child, channel));
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

/// The parts of a validated request the monitor needs, as plain values.
#[derive(Debug, Clone, Default)]
pub struct SpecInput {
    pub execution_id: String,
    pub job_id: String,
    pub entrypoint: Vec<String>,
    pub parameters: Vec<String>,
    /// The request's `Env` (lower precedence than the engine's variables).
    pub request_env: Vec<(String, String)>,
    /// The engine's `EnvironmentVariables`, `K=V` each.
    pub engine_env: Vec<String>,
    pub working_dir: Option<PathBuf>,
    pub results_dir: Option<PathBuf>,
    pub execution_dir: Option<PathBuf>,
    /// Outputs that only need `results/<Name>` created (no `Path`).
    pub output_names: Vec<String>,
    /// Outputs with the `Path` the job writes them at.
    pub outputs: Vec<OutputSpec>,
    /// Bind volumes.
    pub inputs: Vec<InputSpec>,
    pub limits: crate::state::Limits,
    pub timeout_secs: Option<f64>,
    /// The request's `Resources`: `CPU` and `Memory` become cgroup limits (0 = none).
    pub resources: Resources,
    /// The request's `Network.Type` (`Default` when the request has no `Network`).
    pub network: Network,
    /// The request's `Network.Ports` with a host port, for Bridge.
    pub ports: Vec<crate::sandbox::bridge::Publish>,
    /// `PluginConfig.bridgeSubnet`; `None`: [`crate::sandbox::bridge::DEFAULT_SUBNET`].
    pub bridge_subnet: Option<String>,
    /// Bridge works on this host (capabilities' `networks`): `Default` means Bridge, else None.
    pub default_bridge: bool,
    /// The request's `Network.Domains`, for HTTP.
    pub domains: Vec<String>,
    /// `PluginConfig.httpHostsFile`.
    pub http_hosts_file: Option<PathBuf>,
    /// `PluginConfig.cgroupBase`.
    pub cgroup_base: Option<PathBuf>,
    /// `PluginConfig.defaultPidsMax`; `None`: [`DEFAULT_PIDS_MAX`], `Some(0)`: no cap.
    pub default_pids_max: Option<u64>,
    /// `PluginConfig.defaultMemory` in bytes; `None`: [`DEFAULT_MEMORY`], `Some(0)`: no cap.
    pub default_memory: Option<u64>,
    /// `PluginConfig.nofileLimit`; `None`: the sandbox default.
    pub nofile: Option<u64>,
    /// The job gets a private root with its inputs and outputs mounted (capabilities'
    /// `filesystemIsolation`). Without it, a job whose inputs or outputs would need a mount is
    /// refused.
    pub isolate_filesystem: bool,
    /// `PluginConfig.runAsUser`: who jobs run as when the plugin is root (default
    /// [`UserPlan::default_unprivileged`]). Ignored when the plugin is not root.
    pub run_as_user: Option<String>,
    /// A uid allocated to this execution alone ([`UserPlan::per_execution`]); when the plugin
    /// is root it wins over `run_as_user`.
    pub job_user: Option<UserPlan>,
    /// `PluginConfig.allowListedLocalPaths` (see [`crate::sandbox::allowlist`]).
    pub allow_listed_local_paths: Vec<PathBuf>,
    /// `PluginConfig.tmpfsSize`: the size of each of a jailed job's private tmpfs mounts.
    pub tmpfs_size: Option<u64>,
    /// The GPUs detected at `initialize`, with their device minors.
    pub host_gpus: Vec<HostGpu>,
    /// `PluginConfig.gpuDeviceDir`; `None`: `/dev`.
    pub gpu_device_dir: Option<PathBuf>,
}

/// An output: `results/<name>` is created and the job sees it read-write at `path`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutputSpec {
    pub name: String,
    pub path: PathBuf,
}

/// A bind volume: the host's `source` at `target`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InputSpec {
    pub source: PathBuf,
    pub target: PathBuf,
    pub read_only: bool,
    /// Its source type is `local`: the path came from the job's spec and must be allow-listed.
    pub local: bool,
}

/// Resolve where everything goes and what the job sees:
/// results in `ResultsDir`, else `ExecutionDir/results`, else the state directory's `results`;
/// the log at `ExecutionDir/logs/raw_container_logs`, else in the state directory; environment =
/// `HOME`/`USER`/`LOGNAME` of the job's user, request `Env`, then engine variables (engine wins),
/// then `BACALHAU_EXECUTION_ID`/`_JOB_ID`.
/// A network type this plugin cannot provide is refused (`Unsupported`, naming it), as are
/// inputs and outputs that need mounts where the filesystem is not isolated, and `local` inputs
/// outside the allow-list (`InvalidParams`).
pub fn build_spec(state_root: &Path, input: SpecInput) -> Result<MonitorSpec, ExecutorError> {
    let mut sandbox = sandbox_spec(&input)?;
    let dir = ExecDir::new(state_root, &input.execution_id);
    let results_dir = input
        .results_dir
        .clone()
        .or_else(|| input.execution_dir.as_ref().map(|d| d.join("results")))
        .unwrap_or_else(|| dir.dir.join("results"));
    let log_path = input
        .execution_dir
        .as_ref()
        .map(|d| d.join("logs").join(state::LOG_FILE))
        .unwrap_or_else(|| dir.default_log());
    let id = input.execution_id.clone();
    check_layout(&input).map_err(|e| e.with_execution(id.clone()))?;
    let allowed = check_allow_list(&input).map_err(|e| e.with_execution(id.clone()))?;
    let binds = binds(&input, &results_dir, &allowed).map_err(|e| e.with_execution(id.clone()))?;
    if input.isolate_filesystem {
        sandbox.filesystem = Some(FsSandbox {
            root_dir: state_root.join(JOB_ROOT_DIR),
            binds,
            tmpfs_size: tmpfs_size(&input),
        });
    }
    if user::running_as_root() {
        sandbox.run_as = Some(match input.job_user.clone() {
            Some(own) => own,
            None => job_user(input.run_as_user.as_deref())?,
        });
    }
    let mut env = user_env(sandbox.run_as.as_ref(), input.isolate_filesystem);
    env.extend(count_only_gpu_env(&input));
    env.extend(input.request_env);
    for kv in &input.engine_env {
        let (k, v) = kv.split_once('=').unwrap_or((kv.as_str(), ""));
        env.push((k.to_string(), v.to_string()));
    }
    if sandbox.http.is_some() {
        // Last, so the job's own values cannot point its clients elsewhere.
        env.extend(http_proxy::proxy_env());
    }
    env.push(("BACALHAU_EXECUTION_ID".into(), input.execution_id.clone()));
    env.push(("BACALHAU_JOB_ID".into(), input.job_id.clone()));
    let mut argv = input.entrypoint;
    argv.extend(input.parameters);
    let mut output_names = input.output_names;
    for o in &input.outputs {
        if !output_names.contains(&o.name) {
            output_names.push(o.name.clone());
        }
    }
    Ok(MonitorSpec {
        execution_id: input.execution_id,
        job_id: input.job_id,
        argv,
        env,
        working_dir: input.working_dir,
        results_dir,
        output_names,
        log_path,
        limits: input.limits,
        timeout_secs: input.timeout_secs,
        kill_grace_ms: DEFAULT_KILL_GRACE.as_millis() as u64,
        sandbox,
    })
}

/// `CUDA_VISIBLE_DEVICES`/`NVIDIA_VISIBLE_DEVICES` for a job that asked for a GPU count without
/// an allocation list (the request's `Env` has them for a listed allocation): the GPUs
/// [`gpu::allocated`] picks.
fn count_only_gpu_env(input: &SpecInput) -> Vec<(String, String)> {
    if !input.resources.gpus.is_empty() || input.resources.gpu == 0 {
        return Vec::new();
    }
    let Ok(gpus) = gpu::allocated(&input.resources, &input.host_gpus) else {
        return Vec::new();
    };
    let list: Vec<String> = gpus.iter().map(|g| g.gpu.index.to_string()).collect();
    let list = list.join(",");
    vec![
        ("CUDA_VISIBLE_DEVICES".into(), list.clone()),
        ("NVIDIA_VISIBLE_DEVICES".into(), list),
    ]
}

/// The job's root under its state directory (`<state>/executions/<id>/root`).
/// Under the state root: the mount point of every job's root. Each job mounts a tmpfs of its
/// own there in its own mount namespace, so one empty directory serves them all (no directory
/// to make and remove per execution).
pub const JOB_ROOT_DIR: &str = ".job-root";

/// The size of each of a jailed job's private tmpfs mounts (`/tmp`, `/dev/shm`) when it has no
/// memory limit and `tmpfsSize` is not configured: room for scratch files, not a way to fill
/// the host's memory (the kernel's default is half of it, per mount).
pub const DEFAULT_TMPFS_SIZE: u64 = 1 << 30;

/// The range each running execution gets a uid of its own from: when the plugin is root and no
/// single `runAsUser` is configured (that mode, kept for hosts that need a known user, runs
/// every job as the same uid, so jobs can see and signal each other).
pub fn job_uid_range(
    config: &executor_schema::PluginConfig,
) -> Result<Option<UidRange>, ExecutorError> {
    let explicit = config
        .run_as_user
        .as_deref()
        .is_some_and(|u| !u.trim().is_empty());
    if !user::running_as_root() || explicit {
        return Ok(None);
    }
    match config.job_uid_range {
        None => Ok(Some(uids::DEFAULT_RANGE)),
        Some(r) => UidRange::new(r.min, r.max).map(Some).map_err(|e| {
            ExecutorError::invalid_params(vec![executor_schema::FieldProblem {
                field: "config.jobUidRange".into(),
                message: e.to_string(),
            }])
        }),
    }
}

/// The user jobs switch to when the plugin is root. Root itself is refused: without a pid or
/// user namespace a root job could reach the host through `/proc/1/root` and undo every mount.
pub fn job_user(configured: Option<&str>) -> Result<UserPlan, ExecutorError> {
    let problem = |message: String| {
        ExecutorError::invalid_params(vec![executor_schema::FieldProblem {
            field: "config.runAsUser".into(),
            message,
        }])
    };
    let plan = match configured.map(str::trim).filter(|u| !u.is_empty()) {
        Some(u) => UserPlan::resolve(u).map_err(|e| problem(e.to_string()))?,
        None => UserPlan::default_unprivileged().map_err(|e| problem(e.to_string()))?,
    };
    if plan.is_root() {
        return Err(problem(format!(
            "{} is root: jobs of a root plugin must run as an unprivileged user",
            plan.describe()
        )));
    }
    Ok(plan)
}

/// `HOME`, `USER` and `LOGNAME` for a job that switches user; the request and the engine may
/// override them. In a private root `HOME` is the job's own writable `/tmp` (the user's home
/// from the user database is usually `/nonexistent` and never writable).
fn user_env(user: Option<&UserPlan>, isolated: bool) -> Vec<(String, String)> {
    let Some(u) = user else {
        return Vec::new();
    };
    let home = if isolated {
        "/tmp".to_owned()
    } else {
        u.home
            .as_ref()
            .filter(|h| h.is_dir())
            .map_or_else(|| "/".to_owned(), |h| h.display().to_string())
    };
    let name = u.name.clone().unwrap_or_else(|| u.uid.to_string());
    vec![
        ("HOME".into(), home),
        ("USER".into(), name.clone()),
        ("LOGNAME".into(), name),
    ]
}

/// Where inputs, outputs and the working directory go is the caller's to get right: a path with
/// `..`, one on a directory the sandbox owns (`/`, `/proc`, `/dev`), or two mounts on one path
/// are `InvalidParams` on the field, whatever this host can isolate.
fn check_layout(input: &SpecInput) -> Result<(), ExecutorError> {
    let mut problems = Vec::new();
    let mut seen: Vec<(PathBuf, String)> = Vec::new();
    let targets = input
        .inputs
        .iter()
        .enumerate()
        .map(|(i, v)| (format!("Inputs[{i}].Volume.target"), &v.target))
        .chain(
            input
                .outputs
                .iter()
                .enumerate()
                .map(|(i, o)| (format!("Outputs[{i}].Path"), &o.path)),
        );
    for (field, path) in targets {
        if let Some(message) = mounts::layout_problem(path, true) {
            problems.push(executor_schema::FieldProblem { field, message });
            continue;
        }
        let normal: PathBuf = path.components().collect();
        match seen.iter().find(|(p, _)| *p == normal) {
            Some((_, other)) => problems.push(executor_schema::FieldProblem {
                message: format!("{} is also the target of {other}", path.display()),
                field,
            }),
            None => seen.push((normal, field)),
        }
    }
    if let Some(w) = &input.working_dir {
        if let Some(message) = mounts::layout_problem(w, false) {
            problems.push(executor_schema::FieldProblem {
                field: "EngineParams.Params.WorkingDirectory".into(),
                message,
            });
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(ExecutorError::invalid_params(problems))
    }
}

/// `local` inputs must come from an allow-listed path (see [`crate::sandbox::allowlist`]): for
/// each input, the path its bind is opened at (`None` for inputs that are not `local`).
fn check_allow_list(input: &SpecInput) -> Result<Vec<Option<PathBuf>>, ExecutorError> {
    if !input.inputs.iter().any(|i| i.local) {
        return Ok(vec![None; input.inputs.len()]);
    }
    let list = AllowList::parse(&input.allow_listed_local_paths);
    let mut problems = Vec::new();
    let mut allowed = Vec::with_capacity(input.inputs.len());
    for (n, i) in input.inputs.iter().enumerate() {
        if !i.local {
            allowed.push(None);
            continue;
        }
        match list.check(&i.source, !i.read_only) {
            Ok(path) => allowed.push(Some(path)),
            Err(e) => {
                problems.push(executor_schema::FieldProblem {
                    field: format!("Inputs[{n}].Volume.source"),
                    message: e.to_string(),
                });
                allowed.push(None);
            }
        }
    }
    if problems.is_empty() {
        Ok(allowed)
    } else {
        Err(ExecutorError::invalid_params(problems))
    }
}

/// Inputs, then outputs, as mounts. Without filesystem isolation only what the job already
/// finds at the promised path is accepted: an output whose `Path` is `results/<Name>` itself,
/// an input whose target is its (writable) source; anything else is refused, never run with
/// the wrong paths.
///
/// Whatever a job could have named or can change is marked so that the monitor opens it without
/// following a symlink: a `local` input all the way from `/` (its allow-listed directory
/// resolved, `allowed`), an output below the results directory. The monitor opens each source
/// once and mounts from that descriptor.
fn binds(
    input: &SpecInput,
    results_dir: &Path,
    allowed: &[Option<PathBuf>],
) -> Result<Vec<Bind>, ExecutorError> {
    let mut binds = Vec::new();
    for (i, v) in input.inputs.iter().enumerate() {
        if !input.isolate_filesystem && (v.source != v.target || v.read_only) {
            return Err(ExecutorError::unsupported(format!(
                "input {i} ({} at {}{}) needs a bind mount, and this node has no filesystem \
                 isolation (it needs a root plugin and mount namespaces); only writable inputs \
                 whose target is their source work here",
                v.source.display(),
                v.target.display(),
                if v.read_only { ", read-only" } else { "" }
            )));
        }
        let (source, untrusted_below) = match allowed.get(i).cloned().flatten() {
            Some(path) => (path, Some(PathBuf::from("/"))),
            None => (v.source.clone(), None),
        };
        binds.push(Bind {
            source,
            target: v.target.clone(),
            read_only: v.read_only,
            untrusted_below,
        });
    }
    for o in &input.outputs {
        let at = results_dir.join(&o.name);
        if !input.isolate_filesystem && o.path != at {
            return Err(ExecutorError::unsupported(format!(
                "output '{}' wants to be written at {}, which needs a bind mount, and this node \
                 has no filesystem isolation (it needs a root plugin and mount namespaces); set \
                 its Path to {} where the job writes it directly",
                o.name,
                o.path.display(),
                at.display()
            )));
        }
        binds.push(Bind {
            source: at,
            target: o.path.clone(),
            read_only: false,
            untrusted_below: Some(results_dir.to_owned()),
        });
    }
    Ok(binds)
}

/// Without a configured `tmpfsSize`, each of the job's private tmpfs mounts is as large as
/// its memory limit (its pages are charged to the job's memory cgroup, so it can never hold
/// more; a full tmpfs is then ENOSPC rather than an OOM kill), or [`DEFAULT_TMPFS_SIZE`]
/// without one. `tmpfsSize: 0` leaves them at the kernel's default (half of the host's memory).
fn tmpfs_size(input: &SpecInput) -> Option<u64> {
    match input.tmpfs_size {
        Some(0) => None,
        Some(n) => Some(n),
        None if input.resources.memory > 0 => Some(input.resources.memory),
        None => Some(DEFAULT_TMPFS_SIZE),
    }
}

fn sandbox_spec(input: &SpecInput) -> Result<SandboxSpec, ExecutorError> {
    let (mut bridge, mut http) = (None, None);
    let isolate_network = match input.network {
        // `Default` (also a request without a `Network`) is Bridge where Bridge works, else
        // None: never the host's network, which a job must ask for by name.
        Network::None => true,
        Network::Default if !input.default_bridge => true,
        Network::Host | Network::Full => false,
        Network::Bridge | Network::Default => {
            bridge = Some(BridgePlan {
                subnet: input
                    .bridge_subnet
                    .clone()
                    .unwrap_or_else(|| crate::sandbox::bridge::DEFAULT_SUBNET.into()),
                ports: input.ports.clone(),
            });
            false
        }
        Network::Http => {
            http = Some(HttpPlan {
                domains: input.domains.clone(),
                hosts_file: input.http_hosts_file.clone(),
                bridge_subnet: input.bridge_subnet.clone(),
            });
            false
        }
    };
    let cpu = input.resources.cpu;
    if !cpu.is_finite() || cpu < 0.0 {
        return Err(ExecutorError::invalid_params(vec![
            executor_schema::FieldProblem {
                field: "Resources.CPU".into(),
                message: format!("must be a non-negative number of cores, got {cpu}"),
            },
        ]));
    }
    let device_dir = input
        .gpu_device_dir
        .clone()
        .unwrap_or_else(|| PathBuf::from(gpu::DEFAULT_DEVICE_DIR));
    let gpu = gpu::plan(&input.resources, &input.host_gpus, &device_dir).map_err(|why| {
        ExecutorError::unsupported(format!("this node cannot give the job its GPUs: {why}"))
            .with_execution(input.execution_id.clone())
    })?;
    Ok(SandboxSpec {
        gpu,
        cgroup_base: input.cgroup_base.clone(),
        cpu_cores: (cpu > 0.0).then_some(cpu),
        memory_bytes: (input.resources.memory > 0).then_some(input.resources.memory),
        default_memory_bytes: Some(input.default_memory.unwrap_or(DEFAULT_MEMORY))
            .filter(|n| *n > 0 && input.resources.memory == 0),
        pids_max: Some(input.default_pids_max.unwrap_or(DEFAULT_PIDS_MAX)).filter(|n| *n > 0),
        nofile: input.nofile,
        isolate_network,
        bridge,
        http,
        filesystem: None,
        run_as: None,
        self_exec: false,
    })
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

/// A started monitor: our child when it was exec'd, its pidfd, and its report channel (past the
/// start report; none when the monitor was found without one).
type Launch = (Option<Child>, OwnedFd, Option<ReportChannel>);

/// Start the monitor (handed to a spare, forked by the fork server, or exec'd); its start
/// report is read by [`start_report`]. It detaches into its own session so it outlives us.
fn launch(exe: &Path, dir: &ExecDir, record: &RequestRecord) -> Result<Launch, ExecutorError> {
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
    let (child, fd, channel) = match launcher::installed() {
        Some(l) => match fork_monitor(l, dir, &lock, &log) {
            Err(LaunchError::Unavailable(e)) => {
                // The fork server is gone (it should live as long as we do): re-executing the
                // binary still works, only slower.
                tracing::warn!("{e}; starting the monitor by exec");
                exec_monitor(exe, dir, lock, log)?
            }
            Err(LaunchError::Server(e)) => {
                // The server got the request but its answer was lost (the plugin out of
                // descriptors for the pidfd, the server dying): a monitor may be running. Find
                // it as a restarted plugin would: it holds the start lock until it has
                // recorded itself. Ours must go first, or the lock would look held by us.
                drop((lock, log));
                tracing::warn!(execution = %dir.dir.display(), "{e}; looking for its monitor");
                return match starting_monitor(dir) {
                    Some(fd) => Ok((None, fd, None)),
                    None => Err(io("starting the monitor", std::io::Error::other(e))),
                };
            }
            Err(e) => return Err(io("starting the monitor", std::io::Error::other(e))),
            Ok((fd, channel)) => (None, fd, channel),
        },
        None => exec_monitor(exe, dir, lock, log)?,
    };
    Ok((child, fd, channel))
}

/// Read the monitor's start report: the job runs (or could not be started, its outcome), or
/// the monitor says why it could not set the job up, or it died before saying anything.
/// Awaited on the runtime: the report wakes this task, with no thread in between.
async fn start_report(dir: &ExecDir, launched: Launch) -> Result<Launch, ExecutorError> {
    let (child, fd, mut channel) = launched;
    let Some(ch) = channel.as_mut() else {
        // A monitor found after its answer was lost: it is past its start (it has written its
        // record), and its report goes to nobody.
        return Ok((child, fd, channel));
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
    match serde_json::from_slice::<MonitorReport>(line.trim_ascii()) {
        Ok(MonitorReport::Failed { error, code, field }) => {
            reap(child).await;
            Err(match code.as_deref() {
                Some("Unsupported") => ExecutorError::unsupported(error),
                Some("InvalidParams") => {
                    ExecutorError::invalid_params(vec![executor_schema::FieldProblem {
                        field: field.unwrap_or_default(),
                        message: error,
                    }])
                }
                _ => ExecutorError::internal(error),
            })
        }
        Ok(_) => Ok((child, fd, channel)),
        Err(_) => {
            let status = reap(child).await.unwrap_or_else(|| "exited".to_string());
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
pub struct ReportChannel {
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

/// Start the monitor through the fork server; returns its pidfd and report channel.
fn fork_monitor(
    l: &launcher::Launcher,
    dir: &ExecDir,
    lock: &std::fs::File,
    log: &std::fs::File,
) -> Result<(OwnedFd, Option<ReportChannel>), LaunchError> {
    let (read, write) = std::io::pipe().map_err(LaunchError::Fork)?;
    let launched = l.launch(&dir.dir, lock.as_fd(), write.as_fd(), log.as_fd())?;
    // Ours must close, or a read would never see the monitor close its end.
    drop(write);
    Ok((launched.pidfd, Some(ReportChannel::new(read.into()))))
}

type Started = (Option<Child>, OwnedFd, Option<ReportChannel>);

/// Start the monitor by re-executing this binary as `<exe> __monitor <dir>`.
fn exec_monitor(
    exe: &Path,
    dir: &ExecDir,
    lock: std::fs::File,
    log: std::fs::File,
) -> Result<Started, ExecutorError> {
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
    Ok((Some(child), fd, report))
}

/// Wait for the monitor's result — told on its report channel, or found when it exits (pidfd
/// readable) — and publish it, or a failed result if it died without one. A monitor that is our
/// child is reaped once it exits.
async fn watch_monitor(
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
        lock(&exec.uid_lease).take();
        exited.await;
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

fn failed_record(reason: &str) -> ResultRecord {
    ResultRecord {
        result: RunCommandResult::failed(reason),
        finished_at_ms: state::now_ms(),
        stdout_bytes: 0,
        stderr_bytes: 0,
        notes: Default::default(),
        usage: None,
    }
}

/// The monitor is gone: its result, or - if it died without writing one - a failed result made
/// durable, the log ended, and whatever is left of the job killed, so nothing waits for ever.
/// Kill and remove the job cgroup `monitor.json` names, if it is still there (its monitor died
/// before removing it).
fn remove_leftover_cgroup(dir: &ExecDir) {
    let Ok(mon) = state::read_json::<MonitorRecord>(&dir.monitor()) else {
        return;
    };
    let Some(record) = &mon.cgroup else {
        return;
    };
    if record.dirs.iter().any(|d| d.path.exists()) {
        kill_and_remove(record);
    }
}

/// Kill whatever the recorded cgroup still holds and remove it (its monitor is gone).
fn kill_and_remove(record: &CgroupRecord) {
    let removed = JobCgroup::from_record(record)
        .and_then(|cg| cg.kill_all().map(|()| cg))
        .and_then(JobCgroup::remove);
    if let Err(e) = removed {
        tracing::warn!("cleaning up the cgroup of a dead monitor: {e}");
    }
}

fn load_or_bury(dir: &ExecDir, log_path: &Path, status: Option<&str>) -> ResultRecord {
    match state::read_json::<ResultRecord>(&dir.result()) {
        Ok(r) => {
            // The monitor reported, then died before its cleanup.
            remove_leftover_cgroup(dir);
            return r;
        }
        Err(e) if !e.is_not_found() => {
            tracing::warn!("unreadable result: {e}");
        }
        Err(_) => {}
    }
    if let Ok(mon) = state::read_json::<MonitorRecord>(&dir.monitor()) {
        if let Some(job) = mon.job.filter(|j| j.is_alive()) {
            // The job leads its own process group; the monitor that would have killed it is gone.
            // Its descendants are collected first: one that left the group (`setsid`) is only
            // found through its parent, which the group kill is about to take away.
            let tree = crate::monitor::tree::descendants(job.pid);
            // SAFETY: plain syscalls; the start time check above guards against pid reuse of the
            // job, and the descendants were children of that verified process a moment ago.
            unsafe {
                libc::kill(-job.pid, libc::SIGKILL);
                for pid in tree {
                    libc::kill(pid, libc::SIGKILL);
                }
            }
        }
        // The cgroup holds the rest of the tree, whatever groups and sessions it moved into.
        if let Some(record) = &mon.cgroup {
            kill_and_remove(record);
        }
    }
    hand_outputs_back(dir);
    let reason = format!(
        "execution monitor exited unexpectedly{} without writing a result; see {}",
        status.map(|s| format!(" ({s})")).unwrap_or_default(),
        dir.monitor_log().display()
    );
    let record = failed_record(&reason);
    if let Err(e) = state::write_json_atomic(&dir.result(), &record) {
        tracing::warn!("recording the failed result: {e}");
    }
    if let Err(e) = crate::logstore::append_end_frame(log_path) {
        if e.kind() != std::io::ErrorKind::NotFound {
            tracing::warn!("ending the log of a dead monitor: {e}");
        }
    }
    record
}

/// The monitor that would have given a per-execution uid's outputs back to root died: do it
/// here, once nothing of the job runs, before the uid can go to another job.
fn hand_outputs_back(dir: &ExecDir) {
    let Ok(req) = state::read_json::<RequestRecord>(&dir.request()) else {
        return;
    };
    let spec = &req.monitor;
    if !spec
        .sandbox
        .run_as
        .as_ref()
        .is_some_and(UserPlan::is_per_execution)
    {
        return;
    }
    let Some(job_uid) = spec.sandbox.run_as.as_ref().map(|u| u.uid) else {
        return;
    };
    // Through the checked directory and a descriptor walk (see `outputs`); and not while
    // another execution holds the directory (the lock is the dead monitor's no more).
    let results = match crate::results::CheckedDir::open(&spec.results_dir) {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!("handing outputs back: {e}");
            return;
        }
    };
    if let Err(e) = results.lock() {
        tracing::warn!("handing outputs back: {e}");
        return;
    }
    let (uid, gid) = (nix::unistd::geteuid(), nix::unistd::getegid());
    for name in &spec.output_names {
        let direction = crate::outputs::Direction::ToHost { job_uid };
        if let Err(e) =
            crate::outputs::hand_over(results.as_fd(), name, uid.as_raw(), gid.as_raw(), direction)
        {
            tracing::warn!("handing {} back: {e}", spec.results_dir.display());
        }
    }
}

/// A monitor that holds the start lock but has not written `monitor.json` yet (a plugin died
/// while launching it): wait for the record and attach. `None` when nobody holds the lock, i.e.
/// nobody can still start the job.
fn starting_monitor(dir: &ExecDir) -> Option<OwnedFd> {
    const PATIENCE: std::time::Duration = std::time::Duration::from_secs(10);
    let deadline = std::time::Instant::now() + PATIENCE;
    loop {
        let Ok(lock) = dir.open_start_lock() else {
            return None;
        };
        // SAFETY: flock on a descriptor we own; closing it drops our lock again.
        let free = unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0;
        drop(lock);
        if free {
            // Nobody holds it now; a monitor that got the record written in between is alive.
            return state::read_json::<MonitorRecord>(&dir.monitor())
                .ok()
                .and_then(|m| pidfd::open_verified(&m.monitor));
        }
        if let Some(fd) = state::read_json::<MonitorRecord>(&dir.monitor())
            .ok()
            .and_then(|m| pidfd::open_verified(&m.monitor))
        {
            return Some(fd);
        }
        if std::time::Instant::now() >= deadline {
            tracing::warn!(dir = %dir.dir.display(), "a monitor holds the start lock but wrote no record in {PATIENCE:?}");
            return None;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

/// A running execution found after a restart keeps its own uid taken (its monitor holds it
/// too; this covers the monitor dying before the plugin has killed what is left of the job).
fn hold_job_uid(exec: &Exec, spec: &MonitorSpec) {
    let Some(user) = &spec.sandbox.run_as else {
        return;
    };
    let Some(path) = &user.uid_lock else {
        return;
    };
    match UidLease::hold(user.uid, path) {
        Ok(lease) => *lock(&exec.uid_lease) = Some(lease),
        Err(e) => tracing::warn!(execution = %exec.id, "holding the job's uid {}: {e}", user.uid),
    }
}

/// Rebuild executions from the state root: finished ones with their result, running ones with a
/// pidfd on their (verified) monitor, dead ones buried.
fn scan(root: &Path) -> Vec<(Exec, Option<OwnedFd>)> {
    let Ok(entries) = std::fs::read_dir(root) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for entry in entries.flatten() {
        let Some(id) = entry.file_name().to_str().map(str::to_string) else {
            continue;
        };
        if id.starts_with(".evicted.") {
            // An eviction interrupted by a crash.
            let _ = std::fs::remove_dir_all(entry.path());
            continue;
        }
        if id.starts_with('.') {
            continue;
        }
        if !entry.path().is_dir() {
            continue;
        }
        let dir = ExecDir::at(entry.path());
        let Ok(req) = state::read_json::<RequestRecord>(&dir.request()) else {
            // Not an execution we wrote (or a start that never got as far as its request).
            tracing::warn!(execution = %id, "ignoring a state directory without a readable request.json");
            continue;
        };
        let exec = Exec::new(
            &id,
            &req.monitor.job_id,
            dir.clone(),
            req.monitor.log_path.clone(),
            req.created_at_ms,
        );
        if dir.result().exists() {
            let r = load_or_bury(&dir, &exec.log_path, None);
            exec.phase.send_replace(Phase::Finished(Arc::new(r)));
            out.push((exec, None));
            continue;
        }
        let live = state::read_json::<MonitorRecord>(&dir.monitor())
            .ok()
            .and_then(|m| pidfd::open_verified(&m.monitor))
            .or_else(|| starting_monitor(&dir));
        match live {
            Some(fd) => {
                hold_job_uid(&exec, &req.monitor);
                out.push((exec, Some(fd)))
            }
            None => {
                let r = load_or_bury(&dir, &exec.log_path, None);
                exec.phase.send_replace(Phase::Finished(Arc::new(r)));
                out.push((exec, None));
            }
        }
    }
    out
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

    #[test]
    fn a_running_execution_found_at_restart_keeps_its_uid_taken() {
        let tmp = tempfile::tempdir().unwrap();
        let range = UidRange::new(100, 101).unwrap();
        let allocated = UidPool::new(range, tmp.path().join("locks"))
            .allocate_where(|_| true)
            .unwrap();
        // The record a plugin wrote for it, as a restarted plugin reads it back.
        let mut spec = build_spec(
            tmp.path(),
            SpecInput {
                execution_id: "e".into(),
                ..SpecInput::default()
            },
        )
        .unwrap();
        spec.sandbox.run_as = Some(UserPlan::per_execution(
            allocated.uid(),
            allocated.path().to_owned(),
        ));
        let record: MonitorSpec =
            serde_json::from_str(&serde_json::to_string(&spec).unwrap()).unwrap();
        let exec = Exec::new("e", "j", ExecDir::at(tmp.path()), "/log".into(), 0);
        hold_job_uid(&exec, &record);
        // The plugin that allocated it is gone; a new one must pass the id over...
        drop(allocated);
        let mut pool = UidPool::new(range, tmp.path().join("locks"));
        let next = pool.allocate_where(|_| true).unwrap();
        assert_eq!(next.uid(), 101);
        drop(next);
        // ...until the execution has ended.
        lock(&exec.uid_lease).take();
        assert!(pool.allocate_where(|_| true).is_ok_and(|l| l.uid() == 100));
    }

    #[test]
    fn paths_follow_results_dir_then_execution_dir() {
        let root = Path::new("/state");
        let base = SpecInput {
            execution_id: "e1".into(),
            job_id: "j1".into(),
            entrypoint: vec!["sh".into(), "-c".into()],
            parameters: vec!["echo hi".into()],
            ..SpecInput::default()
        };
        let s = build_spec(root, base.clone()).unwrap();
        assert_eq!(s.results_dir, Path::new("/state/executions/e1/results"));
        assert_eq!(
            s.log_path,
            Path::new("/state/executions/e1/raw_container_logs")
        );
        assert_eq!(s.argv, ["sh", "-c", "echo hi"]);

        let s = build_spec(
            root,
            SpecInput {
                execution_dir: Some("/exec/e1".into()),
                ..base.clone()
            },
        )
        .unwrap();
        assert_eq!(s.results_dir, Path::new("/exec/e1/results"));
        assert_eq!(s.log_path, Path::new("/exec/e1/logs/raw_container_logs"));

        let s = build_spec(
            root,
            SpecInput {
                execution_dir: Some("/exec/e1".into()),
                results_dir: Some("/r".into()),
                ..base
            },
        )
        .unwrap();
        assert_eq!(s.results_dir, Path::new("/r"));
        assert_eq!(s.log_path, Path::new("/exec/e1/logs/raw_container_logs"));
    }

    #[test]
    fn what_a_job_can_name_is_opened_without_symlinks_and_tmpfs_is_sized() {
        let tmp = tempfile::tempdir().unwrap();
        let data = std::fs::canonicalize(tmp.path()).unwrap().join("data");
        std::fs::create_dir_all(data.join("x")).unwrap();
        let input = SpecInput {
            execution_id: "e".into(),
            isolate_filesystem: true,
            results_dir: Some("/r".into()),
            allow_listed_local_paths: vec![data.clone()],
            inputs: vec![
                InputSpec {
                    source: data.join("x"),
                    target: "/in".into(),
                    read_only: true,
                    local: true,
                },
                InputSpec {
                    source: "/staged".into(),
                    target: "/staged".into(),
                    read_only: true,
                    local: false,
                },
            ],
            outputs: vec![OutputSpec {
                name: "out".into(),
                path: "/out".into(),
            }],
            ..SpecInput::default()
        };
        let fs = |input: SpecInput| {
            build_spec(Path::new("/s"), input)
                .unwrap()
                .sandbox
                .filesystem
                .unwrap()
        };
        let below: Vec<_> = fs(input.clone())
            .binds
            .iter()
            .map(|b| b.untrusted_below.clone())
            .collect();
        assert_eq!(
            below,
            [Some("/".into()), None, Some(PathBuf::from("/r"))],
            "a local input from /, a staged one as the host named it, an output below results"
        );

        let sized = |tmpfs_size: Option<u64>, memory: u64| {
            fs(SpecInput {
                tmpfs_size,
                resources: Resources {
                    memory,
                    ..Resources::default()
                },
                ..input.clone()
            })
            .tmpfs_size
        };
        assert_eq!(sized(None, 0), Some(DEFAULT_TMPFS_SIZE));
        assert_eq!(sized(None, 64 << 20), Some(64 << 20));
        assert_eq!(sized(Some(1 << 20), 64 << 20), Some(1 << 20));
        assert_eq!(sized(Some(0), 64 << 20), None);
    }

    #[test]
    fn sandbox_settings_come_from_resources_network_and_config() {
        let input = SpecInput {
            execution_id: "e".into(),
            resources: Resources {
                cpu: 0.5,
                memory: 64 << 20,
                ..Resources::default()
            },
            network: Network::None,
            cgroup_base: Some("/delegated".into()),
            nofile: Some(1024),
            ..SpecInput::default()
        };
        let s = build_spec(Path::new("/s"), input.clone()).unwrap().sandbox;
        assert_eq!(s.cpu_cores, Some(0.5));
        assert_eq!(s.memory_bytes, Some(64 << 20));
        assert_eq!(s.pids_max, Some(DEFAULT_PIDS_MAX));
        assert_eq!(s.nofile, Some(1024));
        assert_eq!(s.cgroup_base.as_deref(), Some(Path::new("/delegated")));
        assert!(s.isolate_network);

        let s = build_spec(
            Path::new("/s"),
            SpecInput {
                resources: Resources::default(),
                network: Network::Full,
                default_pids_max: Some(0),
                ..input.clone()
            },
        )
        .unwrap()
        .sandbox;
        assert_eq!(
            (s.cpu_cores, s.memory_bytes, s.pids_max),
            (None, None, None)
        );
        assert!(!s.isolate_network);

        let s = build_spec(
            Path::new("/s"),
            SpecInput {
                network: Network::Bridge,
                bridge_subnet: Some("10.99.0.0/16".into()),
                ..input.clone()
            },
        )
        .unwrap()
        .sandbox;
        assert!(!s.isolate_network);
        assert_eq!(s.bridge.map(|b| b.subnet).as_deref(), Some("10.99.0.0/16"));
        // Default is Bridge where Bridge works, else None.
        for (works, bridged) in [(true, true), (false, false)] {
            let s = build_spec(
                Path::new("/s"),
                SpecInput {
                    network: Network::Default,
                    default_bridge: works,
                    ..input.clone()
                },
            )
            .unwrap()
            .sandbox;
            assert_eq!(s.bridge.is_some(), bridged);
            assert_eq!(s.isolate_network, !bridged);
        }

        let spec = build_spec(
            Path::new("/s"),
            SpecInput {
                network: Network::Http,
                domains: vec![".example.com".into()],
                request_env: vec![("HTTP_PROXY".into(), "http://elsewhere:1".into())],
                ..input.clone()
            },
        )
        .unwrap();
        assert!(!spec.sandbox.isolate_network);
        let http = spec.sandbox.http.expect("an HTTP plan");
        assert_eq!(http.domains, vec![".example.com".to_string()]);
        // The proxy's variables come after the request's: they win.
        let last = spec.env.iter().rev().find(|(k, _)| k == "HTTP_PROXY");
        assert_eq!(last.map(|(_, v)| v.as_str()), Some(http_proxy::PROXY_URL));
        let err = build_spec(
            Path::new("/s"),
            SpecInput {
                resources: Resources {
                    cpu: -1.0,
                    ..Resources::default()
                },
                ..input
            },
        )
        .unwrap_err();
        assert_eq!(err.code, executor_schema::ErrorCode::InvalidParams);
    }

    #[test]
    fn engine_env_overrides_request_env_and_ids_come_last() {
        let s = build_spec(
            Path::new("/s"),
            SpecInput {
                execution_id: "e".into(),
                job_id: "j".into(),
                request_env: vec![("A".into(), "req".into()), ("B".into(), "b".into())],
                engine_env: vec!["A=eng=x".into(), "C".into()],
                ..SpecInput::default()
            },
        )
        .unwrap();
        let env = crate::monitor::spawn::job_env(&s);
        let get = |k: &str| env.iter().find(|(ek, _)| ek == k).map(|(_, v)| v.as_str());
        assert_eq!(get("A"), Some("eng=x"));
        assert_eq!(get("B"), Some("b"));
        assert_eq!(get("C"), Some(""));
        assert_eq!(get("BACALHAU_EXECUTION_ID"), Some("e"));
        assert_eq!(get("BACALHAU_JOB_ID"), Some("j"));
        assert!(get("PATH").is_some());
    }
}
