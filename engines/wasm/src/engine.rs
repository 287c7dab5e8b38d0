//! Engine `wasm`: a request becomes the plugin's own binary in run mode
//! ([`crate::runner`]) inside the job's sandbox, with the modules compiled by the plugin (and
//! cached) bound read-only into the job's root.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use executor_plugin::engine::{Engine, JobPlan, PlanContext};
use executor_plugin::registry::InputSpec;
use executor_plugin::sandbox::allowlist::{is_local_type, AllowList};
use executor_schema::validate::validate_run_request_with;
use executor_schema::wasm::{memory_problem, WasmEngineSpec, ENGINE_WASM};
use executor_schema::{
    BidStrategyRequest, BidStrategyResponse, Capabilities, ExecutorError, FieldProblem, Network,
    RunCommandRequest, RunCommandResult,
};
use jsonrpsee::core::async_trait;

use crate::cache::{Artifact, Cache};
use crate::runner::{read_file_capped, ModuleRef, Preopen, RunConfig, MAX_MODULE_SIZE, RUN_ARG};

pub const PLUGIN_NAME: &str = "executor-wasm";

/// Where the engine's own files appear in the job's root.
const JOB_DIR: &str = "/.executor-wasm";

/// Under the state root: one file per execution that the job reports a trap or a load
/// failure through (bound read-write into its root at `JOB_DIR/status`).
const STATUS_DIR: &str = "wasm-status";

/// The most of a status file that becomes `ErrorMsg`.
const MAX_STATUS: u64 = 16 * 1024;

/// How often a start looks for status files of executions that are gone.
const SWEEP_EVERY_MS: u64 = 10 * 60 * 1000;

pub struct Wasm {
    compiler: OnceLock<wasmtime::Engine>,
    last_sweep_ms: AtomicU64,
}

impl Default for Wasm {
    fn default() -> Self {
        Self::new()
    }
}

impl Wasm {
    pub fn new() -> Self {
        Wasm {
            compiler: OnceLock::new(),
            last_sweep_ms: AtomicU64::new(0),
        }
    }

    fn compiler(&self) -> Result<wasmtime::Engine, ExecutorError> {
        if let Some(e) = self.compiler.get() {
            return Ok(e.clone());
        }
        let e = crate::runner::engine()
            .map_err(|e| ExecutorError::internal(format!("cannot set up wasmtime: {e}")))?;
        Ok(self.compiler.get_or_init(|| e).clone())
    }
}

fn invalid(execution_id: &str, field: &str, message: String) -> ExecutorError {
    ExecutorError::invalid_params(vec![FieldProblem {
        field: field.into(),
        message,
    }])
    .with_execution(execution_id.to_string())
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// A module named by the spec: the input it is in, and the path below that input's target.
struct Located<'a> {
    source: &'a Path,
    /// Relative path inside the input (empty: the input is the module file).
    rel: PathBuf,
    job_path: PathBuf,
    local: bool,
    read_only: bool,
}

/// Bacalhau resolves a module against the inputs by name: an input whose `Alias` or `Target`
/// is the name, else one whose `Target` directory holds the path.
fn locate<'a>(req: &'a RunCommandRequest, name: &str) -> Option<Located<'a>> {
    let name = name.trim();
    let local = |i: &executor_schema::PreparedStorage| {
        i.input_source
            .source
            .as_ref()
            .is_some_and(|s| is_local_type(&s.spec_type))
    };
    for input in &req.inputs {
        let v = &input.volume;
        let alias = input.input_source.alias.trim();
        if (!alias.is_empty() && alias == name) || Path::new(&v.target) == Path::new(name) {
            return Some(Located {
                source: Path::new(&v.source),
                rel: PathBuf::new(),
                job_path: PathBuf::from(&v.target),
                local: local(input),
                read_only: v.read_only,
            });
        }
    }
    let path = Path::new(name);
    if path.components().any(|c| c == Component::ParentDir) {
        return None;
    }
    req.inputs
        .iter()
        .filter_map(|input| {
            let rel = path.strip_prefix(&input.volume.target).ok()?;
            Some((input, rel))
        })
        .max_by_key(|(i, _)| Path::new(&i.volume.target).components().count())
        .map(|(input, rel)| Located {
            source: Path::new(&input.volume.source),
            rel: rel.to_path_buf(),
            job_path: path.to_path_buf(),
            local: local(input),
            read_only: input.volume.read_only,
        })
}

/// Open the module file without leaving the input: the input's source itself (not through a
/// final symlink), or a path inside it resolved beneath it.
fn open_module(l: &Located) -> std::io::Result<std::fs::File> {
    let flags = libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC;
    if l.rel.as_os_str().is_empty() {
        return std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
            .open(l.source);
    }
    let dir = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW)
        .open(l.source)?;
    let rel = std::ffi::CString::new(l.rel.as_os_str().as_encoded_bytes())
        .map_err(|_| std::io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: zeroed is a valid open_how (no flags, no mode, no resolve restrictions).
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = flags as u64;
    how.resolve = libc::RESOLVE_BENEATH | libc::RESOLVE_NO_MAGICLINKS;
    // SAFETY: a directory descriptor we own, a NUL-terminated path and an open_how of the size
    // passed; the returned descriptor is owned by nothing else.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            dir.as_raw_fd(),
            rel.as_ptr(),
            &how as *const libc::open_how,
            std::mem::size_of::<libc::open_how>(),
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: openat2 returned a fresh descriptor.
    Ok(std::fs::File::from(unsafe {
        OwnedFd::from_raw_fd(fd as i32)
    }))
}

impl Wasm {
    /// Find, read and compile (or find compiled) the module the spec calls `name`.
    async fn module(
        &self,
        req: &RunCommandRequest,
        ctx: &PlanContext<'_>,
        name: &str,
        what: &str,
        field: &str,
    ) -> Result<(PathBuf, Artifact), ExecutorError> {
        let id = req.execution_id.as_str();
        let fail = |why: String| invalid(id, field, format!("failed to load {what} {name}: {why}"));
        let located = locate(req, name).ok_or_else(|| {
            fail("no input has it as its Target or Alias, nor holds it under its Target".into())
        })?;
        if located.local {
            // Read nothing that the start would refuse to mount.
            AllowList::parse(&ctx.config.allow_listed_local_paths)
                .check(located.source, !located.read_only)
                .map_err(|denied| fail(format!("{denied}")))?;
        }
        let compiler = self.compiler()?;
        let cache = Cache::open(ctx.state_dir)
            .map_err(|e| ExecutorError::internal(format!("cannot make the module cache: {e}")))?;
        let job_path = located.job_path.clone();
        let source = located.source.to_path_buf();
        let file = open_module(&located).map_err(|e| fail(format!("{e}")))?;
        let artifact = tokio::task::spawn_blocking(move || {
            let wasm = read_file_capped(file, &source, MAX_MODULE_SIZE)?;
            cache.get_or_compile(&compiler, &wasm)
        })
        .await
        .map_err(|e| ExecutorError::internal(format!("compiling the module: {e}")))?
        .map_err(fail)?;
        Ok((job_path, artifact))
    }

    /// The file the job reports through, made for this execution and handed to its uid.
    fn status_file(
        &self,
        ctx: &PlanContext<'_>,
        execution_id: &str,
    ) -> Result<PathBuf, ExecutorError> {
        let internal = |e: std::io::Error| {
            ExecutorError::internal(format!("cannot make the wasm status file: {e}"))
        };
        let dir = ctx.state_dir.join(STATUS_DIR);
        executor_plugin::state::create_private_dir_all(&dir).map_err(internal)?;
        self.sweep(ctx.state_dir, &dir);
        let path = dir.join(execution_id);
        let exec_dir = ctx.state_dir.join("executions").join(execution_id);
        let open = || {
            std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .custom_flags(libc::O_NOFOLLOW)
                .open(&path)
        };
        let file = match open() {
            Ok(f) => f,
            // A start of an execution that exists: the registry refuses it; leave its file.
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && exec_dir.exists() => {
                return Ok(path)
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                std::fs::remove_file(&path).map_err(internal)?;
                open().map_err(internal)?
            }
            Err(e) => return Err(internal(e)),
        };
        let uid = match ctx.job_uid {
            Some(uid) => Some(uid),
            None if nix::unistd::geteuid().is_root() => Some(
                executor_plugin::sandbox::user::job_user(ctx.config.run_as_user.as_deref())?.uid,
            ),
            None => None,
        };
        if let Some(uid) = uid {
            nix::unistd::fchown(&file, Some(nix::unistd::Uid::from_raw(uid)), None)
                .map_err(|e| internal(e.into()))?;
        }
        Ok(path)
    }

    /// Remove status files of executions whose state is gone (evicted), now and then.
    fn sweep(&self, state_dir: &Path, dir: &Path) {
        let now = now_ms();
        let last = self.last_sweep_ms.load(Ordering::Relaxed);
        if now.saturating_sub(last) < SWEEP_EVERY_MS
            || self
                .last_sweep_ms
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
        {
            return;
        }
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            // A start in progress has made its file before its execution directory.
            let old = entry
                .metadata()
                .is_ok_and(|m| now.saturating_sub(m.mtime().max(0) as u64 * 1000) > 60_000);
            if old && !state_dir.join("executions").join(&name).exists() {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }
}

/// `<stateDir>/wasm-status/<id>` from `<stateDir>/executions/<id>`.
fn status_path(exec_dir: &Path) -> Option<PathBuf> {
    let id = exec_dir.file_name()?;
    Some(exec_dir.parent()?.parent()?.join(STATUS_DIR).join(id))
}

#[async_trait]
impl Engine for Wasm {
    fn name(&self) -> &'static str {
        ENGINE_WASM
    }

    fn plugin_name(&self) -> &'static str {
        PLUGIN_NAME
    }

    fn validate(&self, request: &RunCommandRequest) -> Result<(), Vec<FieldProblem>> {
        let mut problems = validate_run_request_with(request, WasmEngineSpec::from_spec_config)
            .map(drop)
            .err()
            .unwrap_or_default();
        if let Some(why) = request
            .resources
            .as_ref()
            .and_then(|r| memory_problem(r.memory))
        {
            problems.push(FieldProblem {
                field: "Resources.Memory".into(),
                message: why,
            });
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems)
        }
    }

    async fn plan(
        &self,
        req: &RunCommandRequest,
        ctx: PlanContext<'_>,
    ) -> Result<JobPlan, ExecutorError> {
        let id = req.execution_id.clone();
        let params = req.engine_params.clone().unwrap_or_default();
        let spec = WasmEngineSpec::from_spec_config(&params)
            .map_err(|p| ExecutorError::invalid_params(p).with_execution(id.clone()))?;
        let network = req
            .network
            .as_ref()
            .map_or(Network::Default, |n| n.network_type);
        if !matches!(network, Network::None | Network::Default) {
            return Err(ExecutorError::unsupported(format!(
                "network type {network}: {PLUGIN_NAME} runs modules without a network; ask for None"
            ))
            .with_execution(id));
        }
        if !ctx.capabilities.filesystem_isolation {
            return Err(ExecutorError::unsupported(
                "the wasm engine needs filesystem isolation (a root plugin and mount \
                 namespaces): its modules come from inputs mounted in the job's root",
            )
            .with_execution(id));
        }
        let mut extra_binds = Vec::new();
        let mut module_ref = |spec_name: &str, job_path: PathBuf, a: Artifact, i: usize| {
            let target = PathBuf::from(format!("{JOB_DIR}/{i}.cwasm"));
            extra_binds.push(InputSpec {
                source: a.path,
                target: target.clone(),
                read_only: true,
                local: false,
            });
            ModuleRef {
                spec_name: spec_name.to_string(),
                path: job_path,
                link_name: String::new(),
                artifact: Some(target),
                artifact_sha256: Some(a.sha256),
            }
        };
        let mut imports = Vec::new();
        for (i, name) in spec.import_modules.iter().enumerate() {
            let field = format!("EngineParams.Params.ImportModules[{i}]");
            let (path, a) = self
                .module(req, &ctx, name, "import module", &field)
                .await?;
            imports.push(module_ref(name, path, a, i + 1));
        }
        let (path, a) = self
            .module(
                req,
                &ctx,
                &spec.entry_module,
                "entry module",
                "EngineParams.Params.EntryModule",
            )
            .await?;
        let entry = module_ref(&spec.entry_module, path, a, 0);
        let status = self.status_file(&ctx, &id)?;
        let status_target = PathBuf::from(format!("{JOB_DIR}/status"));
        extra_binds.push(InputSpec {
            source: status,
            target: status_target.clone(),
            read_only: false,
            local: false,
        });
        let preopens = req
            .inputs
            .iter()
            .map(|i| Preopen {
                path: PathBuf::from(&i.volume.target),
                read_only: i.volume.read_only,
            })
            .chain(req.outputs.iter().map(|o| Preopen {
                path: PathBuf::from(o.path.trim()),
                read_only: false,
            }))
            .collect();
        let config = RunConfig {
            entry,
            imports,
            entrypoint: spec.entrypoint().to_string(),
            args: std::iter::once(String::new())
                .chain(spec.parameters.iter().cloned())
                .collect(),
            preopens,
            memory: req.resources.as_ref().map(|r| r.memory).filter(|m| *m > 0),
            status: Some(status_target),
        };
        let config = serde_json::to_string(&config)
            .map_err(|e| ExecutorError::internal(format!("encoding the run mode's config: {e}")))?;
        Ok(JobPlan {
            argv: vec![PLUGIN_NAME.to_string(), RUN_ARG.to_string(), config],
            engine_env: spec.environment_variables,
            working_dir: None,
            extra_binds,
            self_exec: true,
            network: Some(Network::None),
        })
    }

    fn should_bid(
        &self,
        request: &BidStrategyRequest,
        caps: &Capabilities,
        allow_listed: &[PathBuf],
    ) -> BidStrategyResponse {
        let (task, engine) =
            match executor_plugin::bid::task_engine(request, ENGINE_WASM, PLUGIN_NAME) {
                Ok(t) => t,
                Err(decline) => return decline,
            };
        if let Err(problems) = WasmEngineSpec::from_spec_config(engine) {
            let why: Vec<String> = problems.iter().map(ToString::to_string).collect();
            return BidStrategyResponse::new(
                false,
                format!("accept this wasm engine spec: {}", why.join("; ")),
            );
        }
        let network = task
            .network
            .as_ref()
            .map_or(Network::Default, |n| n.network_type);
        if !matches!(network, Network::None | Network::Default) {
            return BidStrategyResponse::new(
                false,
                format!(
                    "give wasm jobs a {network} network ({PLUGIN_NAME} runs modules without \
                     a network: ask for None)"
                ),
            );
        }
        if !caps.filesystem_isolation {
            return BidStrategyResponse::new(
                false,
                "mount the modules of wasm jobs (no filesystem isolation on this node: it \
                 needs a root plugin and mount namespaces)",
            );
        }
        if let Some(decline) = executor_plugin::bid::mounts(task, caps, allow_listed) {
            return decline;
        }
        let wanted = &task.resources;
        for (what, asked, enforced) in [
            ("CPU", &wanted.cpu, caps.limits.cpu),
            ("memory", &wanted.memory, caps.limits.memory),
        ] {
            if !asked.trim().is_empty() && !enforced {
                return BidStrategyResponse::new(
                    false,
                    format!(
                        "enforce {what} limits (cgroup mode {:?}); run the plugin as root on a \
                         host with cgroups",
                        caps.cgroup_mode
                    ),
                );
            }
        }
        if wanted.gpu.trim().parse::<u64>().is_ok_and(|n| n > 0) {
            return BidStrategyResponse::new(false, "give wasm jobs GPUs");
        }
        BidStrategyResponse::new(true, "run WASI modules with wasmtime")
    }

    fn capabilities(&self, mut detected: Capabilities) -> Capabilities {
        detected.networks.retain(|n| *n == Network::None);
        detected.gpus.clear();
        detected.gpu_device_control.clear();
        // Notes about what this engine never offers (Bridge networks) would only mislead.
        detected.notes.retain(|n| !n.contains("Bridge"));
        detected.notes.push(format!(
            "{PLUGIN_NAME}: WASI preview 1 modules run with wasmtime; Network None only; \
             Resources.Memory also caps linear memory (at most 4 GiB)"
        ));
        detected
    }

    fn finish(&self, exec_dir: &Path, mut result: RunCommandResult) -> RunCommandResult {
        if !result.error_msg.is_empty() || result.exit_code != 1 {
            return result;
        }
        let Some(path) = status_path(exec_dir) else {
            return result;
        };
        let Ok(file) = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
            .open(&path)
        else {
            return result;
        };
        if !file.metadata().is_ok_and(|m| m.is_file()) {
            return result;
        }
        let mut text = Vec::new();
        let _ = std::io::Read::read_to_end(&mut std::io::Read::take(file, MAX_STATUS), &mut text);
        result.error_msg = String::from_utf8_lossy(&text).trim_end().to_string();
        result
    }
}

/// The engine, shared.
pub fn engine() -> Arc<dyn Engine> {
    Arc::new(Wasm::new())
}
