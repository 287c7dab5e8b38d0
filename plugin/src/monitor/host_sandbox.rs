//! The real sandbox around a job: its own cgroup (limits, whole-tree kill, OOM detection),
//! rlimits with `no_new_privs`, an isolated network namespace for `Network: None`, a private
//! root with the inputs and outputs mounted, and an unprivileged user.
//!
//! In the child the steps run in this order: join the cgroup (needs the host's
//! `/sys/fs/cgroup`), enter the network and IPC namespaces, build and enter the private root
//! (needs root), rlimits and `no_new_privs`, and last the user switch (drops the privilege
//! everything before it needed).
//!
//! Where cgroups cannot be used, a job still runs with rlimits and the process-group kill, but
//! only when it asked for no limit that needs them: a requested limit is never dropped.
//!
//! Longer than most files here because it is the one place the monitor sequences every part of
//! the sandbox (what is made ahead, prepare, the child's steps, cleanup in reverse); each part
//! itself lives in `sandbox/`.

use crate::outputs::{self, Direction};
use crate::results::CheckedDir;
use crate::sandbox::cgroup::{
    self, AheadDirs, CgroupConfig, CgroupError, CgroupLimits, CgroupManager, CgroupRecord,
    JobCgroup, Mode,
};
use crate::sandbox::gpu;
use crate::sandbox::mounts::{self, FsError, FsPlan, FsSpec, RootTemplate};
use crate::sandbox::rlimit::{RlimitConfig, RlimitPlan, DEFAULT_NOFILE};
use crate::sandbox::uids::UidLease;
use crate::sandbox::{bridge, http_proxy, netns};
use crate::state::{FsSandbox, MonitorSpec, WORKING_DIR_FIELD};

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use super::spawn::{JobSandbox, PreExecStep, SandboxError, StepFailure};

#[derive(Default)]
pub struct HostSandbox {
    cgroup: Option<JobCgroup>,
    steps: Vec<PreExecStep>,
    /// The job's root directory, removed at cleanup.
    /// The job's own uid, held while anything of the job may run, and the outputs given to it
    /// (handed back to root at cleanup, so a later job given the same uid cannot alter them).
    own_uid: Option<(UidLease, HandBack)>,
    /// Outputs of a job without a uid of its own: swept in place at the end (see
    /// [`Direction::InPlace`]).
    sweep: Option<HandBack>,
    /// What was made before the request came.
    ahead: Ahead,
    /// The template the job's root was built on: its namespace lives until cleanup, so its
    /// teardown comes after the report, not in the job's exit.
    template: Option<RootTemplate>,
    /// A Bridge job's network: removed at cleanup.
    net: Option<bridge::JobNet>,
    /// An HTTP job's namespace and the proxy serving it: stopped at cleanup.
    http: Option<(std::os::fd::OwnedFd, http_proxy::Proxy)>,
}

/// The job root a spare monitor can make before its request: the root directory and system
/// directories of the executions the fork server has seen (the fork server learns them from
/// the first start, and spares forked after that inherit them).
static TEMPLATE_FOR: Mutex<Option<(PathBuf, Vec<PathBuf>)>> = Mutex::new(None);

/// The cgroup configuration of the executions the fork server has seen, for the same reason.
static CGROUP_FOR: Mutex<Option<CgroupConfig>> = Mutex::new(None);

/// What a spare monitor makes while it waits for its request, for whichever job it gets.
#[derive(Default)]
pub struct Ahead {
    root: Option<RootTemplate>,
    /// Why no root could be made ahead, for the monitor's log.
    problem: Option<String>,
    cgroup: Option<AheadDirs>,
}

fn learnt<T: Clone>(what: &Mutex<Option<T>>) -> Option<T> {
    what.lock().unwrap_or_else(|p| p.into_inner()).clone()
}

/// The usable cgroup layout the fork server learnt, if it did.
fn learnt_cgroups() -> Option<CgroupManager> {
    let (m, _) = CgroupManager::detect_cached(&learnt(&CGROUP_FOR)?).ok()?;
    (m.mode() != Mode::None).then_some(m)
}

impl Ahead {
    /// Make what this process knows how to make ahead (nothing before [`HostSandbox::warm`]).
    pub fn prepare() -> Ahead {
        let mut ahead = Ahead {
            cgroup: learnt_cgroups().map(|m| m.make_ahead(std::process::id() as i32)),
            ..Ahead::default()
        };
        if let Some((root_dir, system_ro)) = learnt(&TEMPLATE_FOR) {
            match RootTemplate::build(&root_dir, &system_ro) {
                Ok(t) => ahead.root = Some(t),
                Err(e) => ahead.problem = Some(e.to_string()),
            }
        }
        ahead
    }

    /// In the fork server, once `pid` (a spare, or the monitor it became) has exited: remove
    /// what it made ahead and did not use (it was killed before it could).
    pub fn remove_left(pid: i32) {
        if let Some(m) = learnt_cgroups() {
            m.remove_ahead(pid);
        }
    }

    /// Whether making it again would be worth it: something was made (and may go stale), or
    /// nothing failed. A failure (no privilege, an old kernel) would only fail again.
    pub fn renewable(&self) -> bool {
        self.problem.is_none()
    }
}

impl HostSandbox {
    pub fn new() -> Self {
        HostSandbox::default()
    }

    /// A sandbox that uses what was made ahead for its job, where that fits.
    pub fn with_ahead(ahead: Ahead) -> Self {
        HostSandbox {
            ahead,
            ..HostSandbox::default()
        }
    }

    /// Learn, in this process, what every monitor of an execution like `spec` would otherwise
    /// look up again: the fork server calls it so that the monitors it forks inherit the answer.
    pub fn warm(spec: &MonitorSpec) {
        let config = cgroup_config(spec);
        let mut known = CGROUP_FOR.lock().unwrap_or_else(|p| p.into_inner());
        if known.is_none() {
            if let Ok((m, _)) = CgroupManager::detect_cached(&config) {
                if m.mode() != Mode::None {
                    // What spares of a plugin that was killed made ahead and left.
                    m.sweep_ahead();
                    // Only usable cgroups are remembered: "none" is not cached, and would be
                    // detected afresh for every spare and every reaped monitor.
                    *known = Some(config);
                }
            }
        }
        drop(known);
        if let Some(fs) = &spec.sandbox.filesystem {
            let system_ro = mounts::default_system_dirs();
            mounts::warm(&system_ro, &fs.root_dir);
            *TEMPLATE_FOR.lock().unwrap_or_else(|p| p.into_inner()) =
                Some((fs.root_dir.clone(), system_ro));
        }
    }

    /// Whether [`warm`](Self::warm) has learnt all it can: usable cgroups and a private root.
    /// Until then the fork server keeps learning from the executions it sees.
    pub fn learnt_all() -> bool {
        learnt(&CGROUP_FOR).is_some() && learnt(&TEMPLATE_FOR).is_some()
    }
}

fn cgroup_config(spec: &MonitorSpec) -> CgroupConfig {
    CgroupConfig {
        base: spec.sandbox.cgroup_base.clone(),
        default_pids_max: None,
    }
}

/// The cgroup name for an execution: its id where that is a valid name, else the id with the
/// odd bytes replaced and this monitor's pid appended (the name is recorded, never re-derived).
fn cgroup_name(execution_id: &str) -> String {
    if cgroup::is_valid_name(execution_id) {
        return execution_id.to_owned();
    }
    let clean: String = execution_id
        .chars()
        .take(150)
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("x{}-{}", clean, std::process::id())
}

/// The requested limits that need a cgroup, by name.
fn requested(spec: &MonitorSpec) -> Vec<&'static str> {
    let s = &spec.sandbox;
    let mut v = Vec::new();
    if s.cpu_cores.is_some() {
        v.push("cpu");
    }
    if s.memory_bytes.is_some() {
        v.push("memory");
    }
    v
}

fn cgroup_error(e: CgroupError) -> SandboxError {
    match e {
        CgroupError::Unenforceable { .. } | CgroupError::InvalidLimit { .. } => {
            SandboxError::Unsupported(e.to_string())
        }
        other => SandboxError::Setup(format!("creating the job's cgroup: {other}")),
    }
}

impl HostSandbox {
    /// A fresh root directory and the plan that mounts the job's filesystem in it.
    fn filesystem(
        &mut self,
        job: &MonitorSpec,
        fs: &FsSandbox,
        devices: Vec<PathBuf>,
    ) -> Result<FsPlan, SandboxError> {
        let working_dir = job.working_dir.as_deref();
        let setup = |what: &str, e: io::Error| {
            SandboxError::Setup(format!("{what} {}: {e}", fs.root_dir.display()))
        };
        // Shared by every job (each mounts its own tmpfs on it, in its own mount namespace),
        // so it is made once and never removed.
        match std::fs::create_dir(&fs.root_dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && fs.root_dir.is_dir() => {}
            Err(e) => return Err(setup("creating the job root", e)),
        }
        let spec = FsSpec {
            root_dir: fs.root_dir.clone(),
            system_ro: mounts::default_system_dirs(),
            binds: fs.binds.clone(),
            working_dir: working_dir.map(Path::to_path_buf),
            devices,
            tmpfs_size: fs.tmpfs_size,
        };
        let planned = match self.ahead.root.take() {
            Some(template) => match FsPlan::on_template(&spec, &template) {
                Ok(Some(plan)) => {
                    self.template = Some(template);
                    Ok(plan)
                }
                Ok(None) => FsPlan::new(&spec),
                Err(FsError::Template(why)) => {
                    // The host refused something of the fast path: the full plan may still work.
                    eprintln!("monitor: the job root made ahead cannot be used ({why}); assembling it now");
                    FsPlan::new(&spec)
                }
                Err(e) => Err(e),
            },
            None => {
                if let Some(problem) = self.ahead.problem.take() {
                    eprintln!("monitor: no job root was made ahead ({problem}); assembling it now");
                }
                FsPlan::new(&spec)
            }
        };
        planned.map_err(|e| fs_error(e, job))
    }
}

/// The request's inputs, outputs or working directory cannot be laid out as asked: the caller's
/// fault, refused as `InvalidParams` on the field at fault. A failure of the host itself is a
/// setup error.
fn fs_error(e: FsError, spec: &MonitorSpec) -> SandboxError {
    let path = match &e {
        FsError::RootDir { .. }
        | FsError::Prepare { .. }
        | FsError::MountTable { .. }
        | FsError::Template(_) => {
            return SandboxError::Setup(format!("assembling the job's filesystem: {e}"));
        }
        FsError::NotAbsolute { path, .. }
        | FsError::ParentComponent { path, .. }
        | FsError::Nul { path, .. }
        | FsError::Source { path, .. }
        | FsError::BadSource { path, .. } => path.clone(),
        FsError::Reserved { target }
        | FsError::DuplicateTarget { target }
        | FsError::NestedTargetMissing { target, .. }
        | FsError::KindMismatch { target, .. }
        | FsError::Symlink { target, .. } => target.clone(),
    };
    SandboxError::InvalidParams {
        field: field_of(spec, &path),
        message: format!("cannot assemble the job's filesystem: {e}"),
    }
}

/// The request field a path of the job's layout came from: the working directory, or the bind
/// whose target (else source) it is, as the spec recorded it.
fn field_of(spec: &MonitorSpec, path: &Path) -> String {
    if spec.working_dir.as_deref() == Some(path) {
        return WORKING_DIR_FIELD.into();
    }
    let binds = spec
        .sandbox
        .filesystem
        .as_ref()
        .map(|f| f.binds.as_slice())
        .unwrap_or_default();
    let by_target = binds.iter().find(|b| b.target == path);
    let field = match by_target {
        Some(b) => &b.fields.target,
        None => match binds.iter().find(|b| b.source == path) {
            Some(b) => &b.fields.source,
            None => "",
        },
    };
    match field {
        "" => "Inputs".into(),
        f => f.to_owned(),
    }
}

/// What a per-execution uid's outputs need to be handed back: where they are, and whose.
#[derive(Debug)]
struct HandBack {
    results: PathBuf,
    /// The results directory as it was checked when the outputs were made: the walk back goes
    /// through this descriptor, not the path, which whoever can rename entries beside it may
    /// have pointed at another directory since.
    dir: Option<CheckedDir>,
    names: Vec<String>,
    job_uid: u32,
    /// The writable inputs (source, and where it stops being the host's path; see
    /// [`mounts::Bind`]): what the job's uid made setuid or setgid in them is cleared.
    writable_inputs: Vec<(PathBuf, Option<PathBuf>)>,
}

/// Moves the calling process into a new IPC namespace (needs `CAP_SYS_ADMIN`, so before the
/// user switch). Async-signal-safe: one system call.
fn enter_private_ipc() -> io::Result<()> {
    // SAFETY: plain system call with a constant flag.
    if unsafe { libc::unshare(libc::CLONE_NEWIPC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Give every output of `results` (by its descriptor, see [`outputs::hand_over`]) over; the
/// walk of each goes to its end, and the first failure is returned.
fn hand_over_all(
    results: &CheckedDir,
    names: &[String],
    uid: u32,
    gid: u32,
    direction: Direction,
) -> Result<(), outputs::HandOverError> {
    let mut first = None;
    for name in names {
        if let Err(e) = outputs::hand_over(results.as_fd(), name, uid, gid, direction) {
            first.get_or_insert(e);
        }
    }
    first.map_or(Ok(()), Err)
}

/// A job's uid goes back to the pool: a setuid or setgid file it left in a writable input (host
/// data, often on a filesystem mounted with setuid allowed) would let any local user become the
/// next job given that uid. Where the job ran under its system-call filter it could make no
/// such file (see `seccomp::MODE_ARG`), and this is not needed. Each input is resolved again as it was for the mount (a racer can
/// at most point the walk at another tree it may write, where only the job uid's files are
/// touched).
fn strip_writable_inputs(back: &mut HandBack) {
    use std::os::fd::AsFd;
    for (source, below) in std::mem::take(&mut back.writable_inputs) {
        let held = match mounts::open_source(&source, below.as_deref()) {
            Ok(h) => h,
            Err(e) => {
                eprintln!(
                    "monitor: clearing setuid bits in the writable input {}: {e}",
                    source.display()
                );
                continue;
            }
        };
        if let Err(e) = outputs::strip(held.fd.as_fd(), back.job_uid) {
            eprintln!(
                "monitor: clearing setuid bits in the writable input {}: {e}",
                source.display()
            );
        }
    }
}

impl JobSandbox for HostSandbox {
    fn prepare(&mut self, spec: &MonitorSpec, results: &CheckedDir) -> Result<(), SandboxError> {
        let s = &spec.sandbox;
        if s.isolate_network && !netns::supported() {
            return Err(SandboxError::Unsupported(
                "the job's own network (None, and Default or no Network, which mean it here) \
                 is not supported on this host: creating a network namespace needs root; run \
                 the plugin as root, or ask for the host's network (Network Host; \
                 executor-host run --network host)"
                    .into(),
            ));
        }
        let config = cgroup_config(spec);
        // A host whose cgroups cannot be prepared is treated as one without cgroups: jobs that
        // need no limit still run; the others are refused below with the reason.
        let (manager, unusable, cached) = match CgroupManager::detect_cached(&config) {
            Ok((m, cached)) if m.mode() == Mode::None => {
                let why = m.unavailable_reason().unwrap_or("no cgroups").to_owned();
                (None, Some(why), cached)
            }
            Ok((m, cached)) => (Some(m), None, cached),
            Err(e) => (None, Some(e.to_string()), false),
        };
        match manager {
            None => {
                let wanted = requested(spec);
                if !wanted.is_empty() {
                    return Err(SandboxError::Unsupported(format!(
                        "the {} limit{} cannot be enforced on this host: cgroups are not usable ({})",
                        wanted.join(" and "),
                        if wanted.len() > 1 { "s" } else { "" },
                        unusable.unwrap_or_default()
                    )));
                }
                eprintln!(
                    "monitor: running without a cgroup ({}): rlimits and process-group kill only",
                    unusable.unwrap_or_default()
                );
            }
            Some(m) => {
                let limits = CgroupLimits {
                    cpu: s.cpu_cores,
                    // The request's own limit wins; the plugin's default only where it can be
                    // enforced (a requested limit that cannot be is refused above).
                    memory: s
                        .memory_bytes
                        .or(s.default_memory_bytes.filter(|_| m.enforces().memory)),
                    // A guard, not a requirement: only where a pids controller exists.
                    pids: s.pids_max.filter(|_| m.enforces().pids),
                };
                let name = cgroup_name(&spec.execution_id);
                let ahead = self.ahead.cgroup.as_mut();
                let (m, created) = match m.create_replacing_with(&name, &limits, ahead) {
                    // The layout was detected by the fork server, perhaps long ago: the host
                    // may have changed since (a base removed). Once more, looking afresh.
                    Err(_) if cached => {
                        CgroupManager::forget_cached();
                        match CgroupManager::detect_cached(&config) {
                            Ok((fresh, _)) => {
                                let created = fresh.create_replacing(&name, &limits);
                                (fresh, created)
                            }
                            Err(e) => (m, Err(e)),
                        }
                    }
                    created => (m, created),
                };
                let job = created.map_err(cgroup_error)?;
                crate::timing::mark("m.cgroup_made");
                // Kept before anything else can fail, so cleanup removes it.
                let job = self.cgroup.insert(job);
                if let Some(g) = s.gpu.as_ref().filter(|_| m.has_devices()) {
                    let confine = |what: String| {
                        SandboxError::Setup(format!(
                            "confining the job to its allocated GPUs: {what}"
                        ))
                    };
                    let proc_devices = std::fs::read_to_string("/proc/devices")
                        .map_err(|e| confine(format!("reading /proc/devices: {e}")))?;
                    let rules = gpu::device_allow_rules(&g.allowed_minors, &proc_devices);
                    m.restrict_devices(job, &rules)
                        .map_err(|e| confine(e.to_string()))?;
                }
                let join = job.join_handle().map_err(cgroup_error)?;
                self.steps
                    .push(PreExecStep::new("joining the job's cgroup", move || {
                        join.join_self()
                    }));
            }
        }
        if s.isolate_network {
            self.steps.push(PreExecStep::new(
                "entering the job's network namespace",
                netns::enter_isolated_network,
            ));
        }
        if let Some(plan) = &s.bridge {
            self.steps
                .push(bridge_step(self.net.insert(bridge_net(plan)?)));
        }
        if let Some(plan) = &s.http {
            self.steps
                .push(http_step(self.http.insert(http_net(plan)?)));
        }
        // A jailed job (root plugin) gets an IPC namespace of its own: in the host's, SysV
        // segments, queues and semaphores and POSIX message queues a job makes outlive it
        // (memory no cgroup holds any more), stay readable by the next job given the same uid,
        // and the host's own objects with loose modes are the job's to read. A namespace's
        // objects go with its last process.
        if s.filesystem.is_some() || s.run_as.is_some() {
            self.steps.push(PreExecStep::new(
                "entering the job's own IPC namespace",
                enter_private_ipc,
            ));
        }
        // The job writes its outputs as its own user. The results directory itself stays the
        // monitor's: a job that owned it could swap its outputs for symlinks between the
        // hand-back walks (the files in it are made by descriptor, so they are safe anyway).
        let results = (s.filesystem.is_some() || s.run_as.is_some()).then_some(results);
        if let Some(user) = s.run_as.as_ref().filter(|_| results.is_some()) {
            if let Some(path) = &user.uid_lock {
                let lease = UidLease::hold(user.uid, path).map_err(|e| {
                    SandboxError::Setup(format!("holding the job's uid {}: {e}", user.uid))
                })?;
                // Inputs come first in the binds, then one per output.
                let writable_inputs = s
                    .filesystem
                    .as_ref()
                    .map(|fs| {
                        let inputs = fs.binds.len().saturating_sub(spec.output_names.len());
                        fs.binds[..inputs]
                            .iter()
                            .filter(|b| !b.read_only)
                            .map(|b| (b.source.clone(), b.untrusted_below.clone()))
                            .collect()
                    })
                    .unwrap_or_default();
                let back = HandBack {
                    results: spec.results_dir.clone(),
                    dir: results.as_ref().and_then(|r| r.try_clone().ok()),
                    names: spec.output_names.clone(),
                    job_uid: user.uid,
                    writable_inputs,
                };
                self.own_uid = Some((lease, back));
            }
        }
        if self.own_uid.is_none() && !spec.output_names.is_empty() {
            self.sweep = Some(HandBack {
                results: spec.results_dir.clone(),
                dir: results.as_ref().and_then(|r| r.try_clone().ok()),
                names: spec.output_names.clone(),
                job_uid: 0,
                writable_inputs: Vec::new(),
            });
        }
        if let (Some(user), Some(results)) = (&s.run_as, &results) {
            hand_over_all(
                results,
                &spec.output_names,
                user.uid,
                user.gid,
                Direction::ToJob,
            )
            .map_err(|e| {
                SandboxError::Setup(format!(
                    "giving the outputs in {} to {}: {e}",
                    spec.results_dir.display(),
                    user.describe()
                ))
            })?;
        }
        if let Some(fs) = &s.filesystem {
            let devices = s.gpu.as_ref().map(|g| g.nodes.clone()).unwrap_or_default();
            crate::timing::mark("m.before_fsplan");
            let plan = std::sync::Arc::new(self.filesystem(spec, fs, devices)?);
            crate::timing::mark("m.fsplan");
            let described = plan.clone();
            self.steps.push(PreExecStep::detailed(
                "setting up the job's private root",
                move || {
                    plan.apply_at()
                        .map_err(|(i, e)| StepFailure::new(i as u32, &e))
                },
                move |i| described.describe_step(i as usize),
            ));
        }
        let plan = RlimitPlan::new(&RlimitConfig {
            nofile: s.nofile.unwrap_or(DEFAULT_NOFILE),
            ..RlimitConfig::default()
        })
        .map_err(|e| SandboxError::Setup(format!("planning the job's rlimits: {e}")))?;
        // no_new_privs must not get in the way of the steps before it; it does not stop the
        // user switch after it (that only drops privileges).
        self.steps.push(PreExecStep::new(
            "setting the job's rlimits and no_new_privs",
            move || plan.apply(),
        ));
        if let Some(user) = s.run_as.clone() {
            self.steps.push(PreExecStep::new(
                format!("switching to the job's user {}", user.describe()),
                move || user.apply(),
            ));
        }
        Ok(())
    }

    fn kept_fds(&self) -> Vec<std::os::fd::RawFd> {
        use std::os::fd::{AsFd, AsRawFd};
        self.ahead
            .root
            .iter()
            .map(|t| t.as_fd().as_raw_fd())
            .collect()
    }

    fn cgroup_record(&self) -> Option<CgroupRecord> {
        self.cgroup.as_ref().map(JobCgroup::record)
    }

    fn pre_exec_steps(&mut self) -> Vec<PreExecStep> {
        std::mem::take(&mut self.steps)
    }

    fn kill_all(&mut self) -> bool {
        let Some(cg) = &self.cgroup else {
            return false;
        };
        match cg.kill_all() {
            Ok(()) => true,
            Err(e) => {
                eprintln!("monitor: killing the job's cgroup: {e}");
                false
            }
        }
    }

    fn final_usage(&self) -> Option<crate::state::FinalUsage> {
        match self.cgroup.as_ref()?.final_stats() {
            Ok(s) => Some(crate::state::FinalUsage {
                memory_peak_bytes: s.memory_peak,
                cpu_usec: s.cpu_usage_usec,
                pids: s.pids_current,
                throttled_periods: s.nr_throttled,
                throttled_usec: s.throttled_usec,
            }),
            Err(e) => {
                eprintln!("monitor: reading the job's final usage: {e}");
                None
            }
        }
    }

    fn oom_killed(&self) -> bool {
        match self.cgroup.as_ref().map(JobCgroup::oom_killed) {
            Some(Ok(killed)) => killed,
            Some(Err(e)) => {
                eprintln!("monitor: reading the job's OOM events: {e}");
                false
            }
            None => false,
        }
    }

    fn cleanup(&mut self) {
        self.steps.clear();
        if let Some(cg) = self.cgroup.take() {
            let removed = cg.kill_all().and_then(|()| cg.remove());
            if let Err(e) = removed {
                eprintln!("monitor: removing the job's cgroup: {e}");
            }
        }
        self.reclaim_outputs();
        // Under the job's system-call filter no mode with those bits can be set: the walk is
        // for kernels without seccomp only (a large writable input costs a walk per job).
        if !crate::sandbox::seccomp::supported() {
            if let Some((_, back)) = self.own_uid.as_mut() {
                strip_writable_inputs(back);
            }
        }
        // Only now may the uid go to another job.
        self.own_uid = None;
        // The job is gone: its veth and published ports go, then its address is free. After
        // the uid: it is not the job's any more, and a next job of that uid need not wait.
        self.net = None;
        self.http = None;
        // Every process of the job is gone: the last hold on its mount namespace.
        self.template = None;
        self.ahead = Ahead::default();
    }

    fn reclaim_outputs(&mut self) {
        let (back, direction) = match (self.own_uid.as_mut(), self.sweep.as_mut()) {
            (Some((_, back)), _) => {
                let job_uid = back.job_uid;
                (back, Direction::ToHost { job_uid })
            }
            (None, Some(back)) => (back, Direction::InPlace),
            (None, None) => return,
        };
        let names = std::mem::take(&mut back.names);
        if names.is_empty() {
            return;
        }
        let results = match back
            .dir
            .take()
            .map_or_else(|| CheckedDir::open(&back.results), Ok)
        {
            Ok(r) => r,
            Err(e) => {
                eprintln!("monitor: handing the outputs back: {e}");
                return;
            }
        };
        let (uid, gid) = (nix::unistd::geteuid(), nix::unistd::getegid());
        if let Err(e) = hand_over_all(&results, &names, uid.as_raw(), gid.as_raw(), direction) {
            eprintln!(
                "monitor: handing the outputs in {} back: {e}",
                back.results.display()
            );
        }
    }
}

/// Connect a Bridge job's namespace (see [`bridge`]).
fn bridge_net(plan: &bridge::BridgePlan) -> Result<bridge::JobNet, SandboxError> {
    if let Some(why) = bridge::unavailable() {
        return Err(SandboxError::Unsupported(format!(
            "network type Bridge is not supported on this host: {why}"
        )));
    }
    let net = bridge::JobNet::setup(plan, std::process::id()).map_err(|e| match e {
        bridge::NetError::Unsupported(why) => SandboxError::Unsupported(why),
        e => SandboxError::Setup(format!("the job's bridge network: {e}")),
    })?;
    crate::timing::mark("m.bridge");
    Ok(net)
}

/// An HTTP job's namespace with the proxy in it (see [`http_proxy`]).
fn http_net(
    plan: &http_proxy::HttpPlan,
) -> Result<(std::os::fd::OwnedFd, http_proxy::Proxy), SandboxError> {
    if !netns::supported() {
        return Err(SandboxError::Unsupported(
            "network type HTTP is not supported on this host: creating a network namespace \
             needs root"
                .into(),
        ));
    }
    http_proxy::start(plan).map_err(|e| {
        SandboxError::Setup(format!(
            "starting the job's HTTP proxy in its namespace: {e}"
        ))
    })
}

fn http_step(net: &(std::os::fd::OwnedFd, http_proxy::Proxy)) -> PreExecStep {
    use std::os::fd::AsRawFd;
    let fd = net.0.as_raw_fd();
    PreExecStep::new("entering the job's HTTP network namespace", move || {
        bridge::enter(fd)
    })
}

fn bridge_step(net: &bridge::JobNet) -> PreExecStep {
    let fd = net.netns_fd();
    PreExecStep::new("entering the job's bridge network namespace", move || {
        bridge::enter(fd)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn odd_execution_ids_still_name_a_cgroup() {
        assert_eq!(cgroup_name("e-1f2a.b_c"), "e-1f2a.b_c");
        for odd in ["supervisor", "a b", "é", "x:y"] {
            let n = cgroup_name(odd);
            assert!(cgroup::is_valid_name(&n), "{odd:?} -> {n:?}");
        }
        let long = "ü".repeat(200);
        assert!(cgroup::is_valid_name(&cgroup_name(&long)));
    }
}
