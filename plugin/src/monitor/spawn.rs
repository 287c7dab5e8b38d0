//! Spawning the job: program resolution, environment, its own session, pipes, and the hooks a
//! sandbox plugs in (extra `pre_exec` steps, a whole-tree kill, an OOM check).

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{ChildStderr, ChildStdout};

use crate::fds::pipe2;
use crate::sandbox::cgroup::CgroupRecord;
use crate::sandbox::seccomp::{self, JobFilter};
use crate::state::{FsSandbox, MonitorSpec};

/// The search path when the job's environment sets none (as execvp's default).
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Where inside a step it failed: an index the step's `detail` can name (e.g. which mount), and
/// the errno.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StepFailure {
    pub at: u32,
    pub errno: i32,
}

impl StepFailure {
    /// Async-signal-safe: an errno is copied, nothing allocated.
    pub fn new(at: u32, e: &io::Error) -> StepFailure {
        StepFailure {
            at,
            errno: e.raw_os_error().unwrap_or(libc::EIO),
        }
    }
}

type StepFn = Box<dyn FnMut() -> Result<(), StepFailure> + Send + Sync>;
type DetailFn = Box<dyn Fn(u32) -> String + Send + Sync>;

/// A step run in the job between fork and exec. `run` must be async-signal-safe: no allocation,
/// no locks; only raw syscalls on data prepared before the fork. When it fails, the monitor
/// names it in the start error (`what`, and `detail` of the failing sub-step), so a setup failure
/// is never mistaken for the job's program failing to execute.
pub struct PreExecStep {
    what: String,
    run: StepFn,
    detail: Option<DetailFn>,
}

impl PreExecStep {
    pub fn new(
        what: impl Into<String>,
        mut run: impl FnMut() -> io::Result<()> + Send + Sync + 'static,
    ) -> PreExecStep {
        PreExecStep {
            what: what.into(),
            run: Box::new(move || run().map_err(|e| StepFailure::new(0, &e))),
            detail: None,
        }
    }

    /// A step made of sub-steps; `detail` names the one at an index `run` reports.
    pub fn detailed(
        what: impl Into<String>,
        run: impl FnMut() -> Result<(), StepFailure> + Send + Sync + 'static,
        detail: impl Fn(u32) -> String + Send + Sync + 'static,
    ) -> PreExecStep {
        PreExecStep {
            what: what.into(),
            run: Box::new(run),
            detail: Some(Box::new(detail)),
        }
    }
}

/// What names a step once its `run` has moved into the command.
struct StepName {
    what: String,
    detail: Option<DetailFn>,
}

impl StepName {
    /// The start error for a failure of this step.
    fn describe(&self, failure: StepFailure) -> String {
        let err = io::Error::from_raw_os_error(failure.errno);
        match self.detail.as_ref().map(|d| d(failure.at)) {
            Some(detail) if !detail.is_empty() => format!("{}: {detail}: {err}", self.what),
            _ => format!("{}: {err}", self.what),
        }
    }
}

/// Why a sandbox could not be set up for a job.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// The request needs something this host cannot do (a start error `Unsupported`).
    #[error("{0}")]
    Unsupported(String),
    /// The request cannot be laid out as given, the caller's fault (a start error
    /// `InvalidParams` on `field`).
    #[error("{field}: {message}")]
    InvalidParams { field: String, message: String },
    #[error("{0}")]
    Setup(String),
}

/// What a sandbox (cgroups, rlimits, namespaces) adds to the plain process-tree monitor.
/// Every method has a default that does nothing, so the monitor works without one.
pub trait JobSandbox {
    /// Descriptors made before the monitor started (by a spare, ahead of its request) that it
    /// must keep when it closes everything it inherited.
    fn kept_fds(&self) -> Vec<std::os::fd::RawFd> {
        Vec::new()
    }
    /// Everything that can fail, done before the fork (e.g. create the cgroup). `results` is the
    /// results directory the monitor opened, checked and locked, with `results/<Name>` made for
    /// every output. After an error the monitor still calls [`cleanup`](Self::cleanup).
    fn prepare(
        &mut self,
        _spec: &MonitorSpec,
        _results: &crate::results::CheckedDir,
    ) -> Result<(), SandboxError> {
        Ok(())
    }
    /// The job's cgroup, to record in `monitor.json` once prepared.
    fn cgroup_record(&self) -> Option<CgroupRecord> {
        None
    }
    /// Steps to run in the child after it has become a session leader, before exec.
    fn pre_exec_steps(&mut self) -> Vec<PreExecStep> {
        Vec::new()
    }
    /// Kill every process of the job at once (e.g. `cgroup.kill`). Returns true when that
    /// reached the whole job (a cgroup holds every descendant, whatever group or session it
    /// moved to), so the monitor can skip its `/proc` walk; false and the monitor walks its
    /// descendants as well.
    fn kill_all(&mut self) -> bool {
        false
    }
    /// The job's totals from its cgroup, read once everything of it has exited and before
    /// cleanup removes the cgroup (none without one).
    fn final_usage(&self) -> Option<crate::state::FinalUsage> {
        None
    }
    /// Whether the kernel's OOM killer killed a process of the job.
    fn oom_killed(&self) -> bool {
        false
    }
    /// Once everything of the job has been reaped, before the result is reported: give what the
    /// job wrote back to the monitor's user (the job's uid is still held).
    fn reclaim_outputs(&mut self) {}
    /// Called once everything of the job has been reaped (after the result is reported).
    fn cleanup(&mut self) {}
}

/// No sandbox: process group + subreaper only.
#[derive(Debug, Default)]
pub struct NoSandbox;
impl JobSandbox for NoSandbox {}

/// The running job.
#[derive(Debug)]
pub struct SpawnedJob {
    pub pid: i32,
    pub stdout: ChildStdout,
    pub stderr: ChildStderr,
}

/// Why the job could not be started. A program that cannot be executed is part of the job's
/// outcome (a failed result), not a setup error of the plugin.
#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    #[error("{0}")]
    Exec(String),
    #[error("spawning the job: {0}")]
    Setup(io::Error),
    /// A step between fork and exec (cgroup, namespaces, mounts, user switch) failed; the
    /// message names the step. A setup error of the sandbox, not the job's outcome.
    #[error("setting up the job failed before exec: {0}")]
    Step(String),
}

/// The monitor's own image, which [`crate::state::SandboxSpec::self_exec`] jobs run.
pub const SELF_EXE: &str = "/proc/self/exe";

/// The job's environment: a PATH default, then the spec's entries in order (later wins).
pub fn job_env(spec: &MonitorSpec) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = vec![("PATH".into(), DEFAULT_PATH.into())];
    for (k, v) in &spec.env {
        if let Some(slot) = env.iter_mut().find(|(ek, _)| ek == k) {
            slot.1 = v.clone();
        } else {
            env.push((k.clone(), v.clone()));
        }
    }
    env
}

/// Resolve the program as execvp does: a name with a slash is used as is, otherwise the first
/// executable regular file of that name in PATH.
pub fn resolve_program(program: &str, path_var: &str) -> Result<PathBuf, String> {
    resolve_program_in(program, path_var, |p| Some(p.to_path_buf()))
}

/// [`resolve_program`] for a job with a filesystem of its own: `view` maps a path as the job
/// will see it to the host path that will be there (`None`: nothing will be). The result is the
/// path as the job sees it.
pub fn resolve_program_in(
    program: &str,
    path_var: &str,
    view: impl Fn(&Path) -> Option<PathBuf>,
) -> Result<PathBuf, String> {
    let metadata = |p: &Path| match view(p) {
        Some(host) => std::fs::metadata(host),
        None => Err(io::Error::from(io::ErrorKind::NotFound)),
    };
    if program.is_empty() {
        return Err("exec: no command".into());
    }
    if program.contains('/') {
        let p = Path::new(program);
        return match metadata(p) {
            Ok(m) if m.is_dir() => Err(format!("exec: {program:?}: is a directory")),
            Ok(m) if m.permissions().mode() & 0o111 == 0 => {
                Err(format!("exec: {program:?}: permission denied"))
            }
            Ok(_) => Ok(p.to_path_buf()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                Err(format!("exec: {program:?}: no such file or directory"))
            }
            Err(e) => Err(format!("exec: {program:?}: {e}")),
        };
    }
    for dir in path_var.split(':') {
        // An empty PATH entry means the current directory, as execvp.
        let dir = if dir.is_empty() { "." } else { dir };
        let candidate = Path::new(dir).join(program);
        if let Ok(m) = metadata(&candidate) {
            if m.is_file() && m.permissions().mode() & 0o111 != 0 {
                return Ok(candidate);
            }
        }
    }
    Err(format!(
        "exec: {program:?}: executable file not found in $PATH"
    ))
}

/// Where a path of the job's private root comes from on the host: the deepest bind containing
/// it, else a system directory (bound at the same path), else nowhere (the job's own tmpfs).
fn host_path(fs: &FsSandbox, system: &[PathBuf], p: &Path) -> Option<PathBuf> {
    // `..` is taken lexically first: in the job's root `/usr/../root` is the job's `/root`
    // (nothing), and looking it up on the host as root would tell a request whether the host's
    // `/root/...` exists.
    if !p.is_absolute() {
        return None;
    }
    let mut normal = PathBuf::from("/");
    for c in p.components() {
        match c {
            std::path::Component::ParentDir => {
                normal.pop();
            }
            std::path::Component::Normal(n) => normal.push(n),
            _ => {}
        }
    }
    let p = normal.as_path();
    if let Some(b) = fs
        .binds
        .iter()
        .filter(|b| p.starts_with(&b.target))
        .max_by_key(|b| b.target.components().count())
    {
        let rel = p.strip_prefix(&b.target).ok()?;
        return Some(if rel.as_os_str().is_empty() {
            b.source.clone()
        } else {
            b.source.join(rel)
        });
    }
    system
        .iter()
        .any(|d| p.starts_with(d))
        .then(|| p.to_path_buf())
}

/// Spawn the job in its own session and process group with stdin on /dev/null and stdout/stderr
/// on fresh pipes. All of the monitor's own descriptors are close-on-exec, so none leaks in.
pub fn spawn_job(
    spec: &MonitorSpec,
    sandbox: &mut dyn JobSandbox,
) -> Result<SpawnedJob, SpawnError> {
    let program = spec
        .argv
        .first()
        .ok_or_else(|| SpawnError::Exec("exec: no command".into()))?;
    let env = job_env(spec);
    let path_var = env
        .iter()
        .rev()
        .find(|(k, _)| k == "PATH")
        .map(|(_, v)| v.as_str())
        .unwrap_or(DEFAULT_PATH);
    let jail = spec.sandbox.filesystem.as_ref();
    let resolved = match jail {
        // A magic link: in the job's root too it reaches the image the child shares with us.
        _ if spec.sandbox.self_exec => Ok(PathBuf::from(SELF_EXE)),
        Some(fs) => {
            let system = crate::sandbox::mounts::default_system_dirs();
            resolve_program_in(program, path_var, |p| host_path(fs, &system, p))
        }
        None => resolve_program(program, path_var),
    }
    .map_err(SpawnError::Exec)?;
    // In a private root the sandbox validates the working directory and changes into it
    // itself; the child's chdir would run before the root exists.
    if let Some(wd) = spec.working_dir.as_ref().filter(|_| jail.is_none()) {
        if !wd.is_dir() {
            return Err(SpawnError::Exec(format!(
                "chdir to working directory {}: no such directory",
                wd.display()
            )));
        }
    }

    let cwd = spec.working_dir.as_ref().filter(|_| jail.is_none());
    let mut steps = vec![PreExecStep::new(
        "preparing the job's session and signal mask",
        || {
            // The monitor blocks the signals it reads from its signalfd and ignores SIGPIPE:
            // the job must start with none blocked (or it could not be stopped with SIGTERM)
            // and SIGPIPE at its default.
            let mut set = std::mem::MaybeUninit::<libc::sigset_t>::uninit();
            // SAFETY: sigemptyset, sigprocmask, signal and setsid are async-signal-safe; the set
            // lives on the child's stack.
            unsafe {
                libc::sigemptyset(set.as_mut_ptr());
                if libc::sigprocmask(libc::SIG_SETMASK, set.as_ptr(), std::ptr::null_mut()) < 0 {
                    return Err(io::Error::last_os_error());
                }
                libc::signal(libc::SIGPIPE, libc::SIG_DFL);
                if libc::setsid() < 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            Ok(())
        },
    )];
    // A session keyring of the job's own, before the sandbox's steps: the user switch comes
    // later, so it is made while still root (see `join_fresh_session_keyring`).
    if seccomp::keyrings_reachable() {
        steps.push(PreExecStep::new(
            "giving the job a session keyring of its own",
            seccomp::join_fresh_session_keyring,
        ));
    }
    steps.extend(sandbox.pre_exec_steps());
    // Last before exec, after every step that needs the calls it refuses (mounts, namespaces,
    // the keyring above).
    if seccomp::supported() {
        let filter = JobFilter::new().map_err(|e| SpawnError::Setup(io::Error::other(e)))?;
        steps.push(PreExecStep::new(
            "installing the job's system-call filter",
            move || filter.apply(),
        ));
    } else {
        eprintln!("monitor: this kernel takes no seccomp filters: the job runs without one");
    }
    let mut names = Vec::with_capacity(steps.len());
    let mut runs = Vec::with_capacity(steps.len());
    for step in steps {
        names.push(StepName {
            what: step.what,
            detail: step.detail,
        });
        runs.push(step.run);
    }
    let exec = ExecPlan::new(
        program,
        &resolved,
        &spec.argv[1..],
        &env,
        cwd.map(|w| w.as_path()),
    )
    .map_err(SpawnError::Setup)?;
    let report = StepReport::new().map_err(SpawnError::Setup)?;
    match vfork_exec(&exec, &mut runs, &report).map_err(SpawnError::Setup)? {
        CloneOutcome::Running {
            pid,
            stdout,
            stderr,
        } => Ok(SpawnedJob {
            pid,
            stdout: ChildStdout::from(stdout),
            stderr: ChildStderr::from(stderr),
        }),
        CloneOutcome::Failed { errno } => Err(match report.received() {
            Some((index, failure)) => match names.get(index as usize) {
                Some(step) => SpawnError::Step(step.describe(failure)),
                None => SpawnError::Setup(io::Error::from_raw_os_error(errno)),
            },
            None if errno == ERRNO_CHDIR_MARK => SpawnError::Exec(format!(
                "chdir to working directory {}: {}",
                cwd.map(|w| w.display().to_string()).unwrap_or_default(),
                io::Error::from_raw_os_error(libc::ENOENT)
            )),
            None => classify_spawn_error(program, io::Error::from_raw_os_error(errno)),
        }),
    }
}

/// Everything the child needs, made before it exists: it may only make system calls.
struct ExecPlan {
    path: CString,
    /// NUL-terminated strings and the null-terminated pointer arrays into them.
    _argv: Vec<CString>,
    argv_ptrs: Vec<*const libc::c_char>,
    _envp: Vec<CString>,
    envp_ptrs: Vec<*const libc::c_char>,
    cwd: Option<CString>,
}

impl ExecPlan {
    fn new(
        arg0: &str,
        path: &Path,
        args: &[String],
        env: &[(String, String)],
        cwd: Option<&Path>,
    ) -> io::Result<ExecPlan> {
        let nul = |what: &str| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("the job's {what} contains a NUL byte"),
            )
        };
        let path = CString::new(path.as_os_str().as_bytes()).map_err(|_| nul("program"))?;
        let argv = std::iter::once(arg0)
            .chain(args.iter().map(String::as_str))
            .map(|a| CString::new(a).map_err(|_| nul("arguments")))
            .collect::<io::Result<Vec<_>>>()?;
        let envp = env
            .iter()
            .map(|(k, v)| CString::new(format!("{k}={v}")).map_err(|_| nul("environment")))
            .collect::<io::Result<Vec<_>>>()?;
        let cwd = cwd
            .map(|w| CString::new(w.as_os_str().as_bytes()).map_err(|_| nul("working directory")))
            .transpose()?;
        let ptrs = |v: &[CString]| {
            v.iter()
                .map(|c| c.as_ptr())
                .chain(std::iter::once(std::ptr::null()))
                .collect::<Vec<_>>()
        };
        Ok(ExecPlan {
            path,
            argv_ptrs: ptrs(&argv),
            _argv: argv,
            envp_ptrs: ptrs(&envp),
            _envp: envp,
            cwd,
        })
    }
}

/// An errno no system call returns: the child could not change into the working directory
/// (it would otherwise read as the program missing, ENOENT).
const ERRNO_CHDIR_MARK: i32 = -2;

enum CloneOutcome {
    Running {
        pid: i32,
        stdout: OwnedFd,
        stderr: OwnedFd,
    },
    /// Nothing runs (the child failed before or at exec and was reaped): why.
    Failed { errno: i32 },
}

/// What the child reads, by pointer, from the monitor's memory it shares until exec.
struct ChildArgs<'a> {
    exec: &'a ExecPlan,
    runs: &'a mut [StepFn],
    report_fd: i32,
    /// Close-on-exec: the errno of a failure is written here; end-of-file means exec worked.
    fail_fd: i32,
    stdio: [i32; 3],
}

/// The child: standard descriptors, working directory, the steps, exec. It runs on its own
/// stack in the monitor's memory (`CLONE_VM`) while the monitor waits (`CLONE_VFORK`), so it
/// may only make system calls and write to its own stack.
extern "C" fn child_main(arg: *mut libc::c_void) -> libc::c_int {
    // SAFETY: `arg` points at the ChildArgs the suspended parent keeps alive.
    let a = unsafe { &mut *(arg as *mut ChildArgs) };
    let fail = |errno: i32| -> ! {
        let b = errno.to_ne_bytes();
        // SAFETY: a write of a stack buffer and _exit: async-signal-safe.
        unsafe {
            libc::write(a.fail_fd, b.as_ptr().cast(), b.len());
            libc::_exit(127)
        }
    };
    for (target, fd) in a.stdio.iter().enumerate() {
        // SAFETY: dup2 of descriptors the parent opened for us; the copies lose close-on-exec.
        if unsafe { libc::dup2(*fd, target as i32) } < 0 {
            fail(
                io::Error::last_os_error()
                    .raw_os_error()
                    .unwrap_or(libc::EIO),
            );
        }
    }
    if let Some(cwd) = &a.exec.cwd {
        // SAFETY: a NUL-terminated path prepared before the clone.
        if unsafe { libc::chdir(cwd.as_ptr()) } < 0 {
            fail(ERRNO_CHDIR_MARK);
        }
    }
    for (index, run) in a.runs.iter_mut().enumerate() {
        if let Err(f) = run() {
            StepReport::send(a.report_fd, index as u32, f);
            fail(f.errno);
        }
    }
    // SAFETY: the path and both arrays are NUL-terminated and null-terminated, prepared before
    // the clone and kept alive by the suspended parent.
    unsafe {
        libc::execve(
            a.exec.path.as_ptr(),
            a.exec.argv_ptrs.as_ptr(),
            a.exec.envp_ptrs.as_ptr(),
        )
    };
    fail(
        io::Error::last_os_error()
            .raw_os_error()
            .unwrap_or(libc::EIO),
    )
}

/// The child's stack. Generous for the steps (raw system calls over prepared data), with a
/// guard page below it.
const CHILD_STACK: usize = 256 * 1024;

/// Start the job the way `posix_spawn` does: `clone(CLONE_VM | CLONE_VFORK)` on a stack of its
/// own, instead of std's `fork` (the steps between fork and exec rule out `posix_spawn`
/// itself). No page tables are copied, and neither side takes copy-on-write faults while the
/// child sets up: on this host that halved a fork/exec/wait from a process the monitor's size.
fn vfork_exec(
    exec: &ExecPlan,
    runs: &mut [StepFn],
    report: &StepReport,
) -> io::Result<CloneOutcome> {
    let pipe = || pipe2(libc::O_CLOEXEC);
    let null = std::fs::File::open("/dev/null")?;
    let (out_r, out_w) = pipe()?;
    let (err_r, err_w) = pipe()?;
    let (fail_r, fail_w) = pipe()?;
    // SAFETY: an anonymous private mapping, unmapped below.
    let stack = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            CHILD_STACK,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_STACK,
            -1,
            0,
        )
    };
    if stack == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    struct Unmap(*mut libc::c_void);
    impl Drop for Unmap {
        fn drop(&mut self) {
            // SAFETY: the mapping made above; the child has exec'd or exited by now.
            unsafe { libc::munmap(self.0, CHILD_STACK) };
        }
    }
    let _unmap = Unmap(stack);
    // SAFETY: the lowest page of our own mapping becomes the guard.
    if unsafe { libc::mprotect(stack, 4096, libc::PROT_NONE) } != 0 {
        // Without the guard an overflow of the child's stack would write below the mapping.
        return Err(io::Error::last_os_error());
    }
    let mut args = ChildArgs {
        exec,
        runs,
        report_fd: report.write_fd(),
        fail_fd: fail_w.as_raw_fd(),
        stdio: [null.as_raw_fd(), out_w.as_raw_fd(), err_w.as_raw_fd()],
    };
    // SAFETY: the child runs `child_main` on its own stack; with CLONE_VFORK this thread is
    // suspended until the child has exec'd or exited, so `args` and everything it points at
    // outlive the child's use of them. The monitor is single-threaded.
    let pid = unsafe {
        libc::clone(
            child_main,
            (stack as *mut u8).add(CHILD_STACK).cast(),
            libc::CLONE_VM | libc::CLONE_VFORK | libc::SIGCHLD,
            (&mut args as *mut ChildArgs).cast(),
        )
    };
    if pid < 0 {
        return Err(io::Error::last_os_error());
    }
    drop((null, out_w, err_w, fail_w));
    let mut buf = [0u8; 4];
    let n = loop {
        // SAFETY: reading into our own buffer; every write end is closed (ours above, the
        // child's by exec or exit), so this returns at once.
        let n = unsafe { libc::read(fail_r.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if n >= 0 || io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
            break n;
        }
    };
    if n == 0 {
        return Ok(CloneOutcome::Running {
            pid,
            stdout: out_r,
            stderr: err_r,
        });
    }
    // The child is gone (it exits right after writing): reap it here.
    let mut status = 0;
    // SAFETY: our own child.
    unsafe { libc::waitpid(pid, &mut status, 0) };
    Ok(CloneOutcome::Failed {
        errno: if n == 4 {
            i32::from_ne_bytes(buf)
        } else {
            libc::EIO
        },
    })
}

/// A close-on-exec pipe from the job's child side to the monitor: a failing pre_exec step writes
/// its index, sub-step and errno there before the child reports the errno. Nothing is written when
/// everything before exec worked, and the job never inherits the descriptors.
struct StepReport {
    read: OwnedFd,
    write: OwnedFd,
}

const REPORT_LEN: usize = 12;

impl StepReport {
    fn new() -> io::Result<StepReport> {
        let (read, write) = pipe2(libc::O_CLOEXEC | libc::O_NONBLOCK)?;
        Ok(StepReport { read, write })
    }

    fn write_fd(&self) -> i32 {
        self.write.as_raw_fd()
    }

    /// In the child: async-signal-safe, one write(2) of a stack buffer (atomic: under PIPE_BUF).
    fn send(fd: i32, index: u32, f: StepFailure) {
        let mut buf = [0u8; REPORT_LEN];
        buf[..4].copy_from_slice(&index.to_ne_bytes());
        buf[4..8].copy_from_slice(&f.at.to_ne_bytes());
        buf[8..].copy_from_slice(&f.errno.to_ne_bytes());
        // SAFETY: `fd` is open in the child (inherited, closed only by exec); the buffer is ours.
        unsafe { libc::write(fd, buf.as_ptr().cast(), REPORT_LEN) };
    }

    /// In the monitor, after spawn failed: which step failed, if one said so. The child has
    /// written its report before its errno, which spawn has already read.
    fn received(&self) -> Option<(u32, StepFailure)> {
        let mut buf = [0u8; REPORT_LEN];
        // SAFETY: reading into our own buffer from our own non-blocking descriptor.
        let n = unsafe { libc::read(self.read.as_raw_fd(), buf.as_mut_ptr().cast(), REPORT_LEN) };
        if n != REPORT_LEN as isize {
            return None;
        }
        let word = |i: usize| [buf[i], buf[i + 1], buf[i + 2], buf[i + 3]];
        Some((
            u32::from_ne_bytes(word(0)),
            StepFailure {
                at: u32::from_ne_bytes(word(4)),
                errno: i32::from_ne_bytes(word(8)),
            },
        ))
    }
}

/// The errno of a child that failed at exec (and has been reaped). Errors that mean "this
/// program cannot run" become the job's outcome; anything else failed in our own setup.
fn classify_spawn_error(program: &str, e: io::Error) -> SpawnError {
    match e.raw_os_error() {
        Some(libc::ENOENT) => SpawnError::Exec(format!(
            "exec: {program:?}: no such file or directory (or its interpreter is missing)"
        )),
        Some(libc::EACCES) | Some(libc::EPERM) => {
            SpawnError::Exec(format!("exec: {program:?}: permission denied"))
        }
        Some(libc::ENOEXEC) => SpawnError::Exec(format!("exec: {program:?}: exec format error")),
        Some(libc::ETXTBSY) => SpawnError::Exec(format!("exec: {program:?}: text file busy")),
        Some(libc::EISDIR) => SpawnError::Exec(format!("exec: {program:?}: is a directory")),
        _ => SpawnError::Setup(e),
    }
}

#[cfg(test)]
mod tests;
