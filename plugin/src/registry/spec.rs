//! From a validated request to the monitor's [`MonitorSpec`], in one place: where results and
//! the log go, the job's environment, its user, its binds (allow-list and layout checks), its
//! GPUs, limits and network plan. Nothing here touches the host; the monitor opens what the
//! spec names.
//!
//! What depends on the engine (its program, arguments, working directory, variables and extra
//! binds) comes in as a [`JobPlan`] from [`crate::engine::Engine::plan`]; everything else is the
//! same for any engine that runs a process tree under a monitor.

use std::path::{Path, PathBuf};

use executor_schema::{
    Capabilities, ExecutorError, FieldProblem, Network, PluginConfig, Resources, RunCommandRequest,
};

use crate::engine::JobPlan;
use crate::sandbox::allowlist::{self, AllowList};
use crate::sandbox::bridge::{BridgePlan, Publish};
use crate::sandbox::cgroup::{DEFAULT_MEMORY, DEFAULT_PIDS_MAX};
use crate::sandbox::gpu::{self, HostGpu};
use crate::sandbox::http_proxy::{self, HttpPlan};
use crate::sandbox::mounts::{self, Bind, BindFields};
use crate::sandbox::user::{self, UserPlan};
use crate::state::{self, ExecDir, FsSandbox, Limits, MonitorSpec, SandboxSpec, WORKING_DIR_FIELD};

use super::DEFAULT_KILL_GRACE;

/// What the plugin settled at `initialize` that every spec depends on.
#[derive(Debug, Clone, Copy)]
pub struct Host<'a> {
    pub state_dir: &'a Path,
    pub config: &'a PluginConfig,
    pub capabilities: &'a Capabilities,
    /// The GPUs in `capabilities`, with the device minors jobs' nodes are found by.
    pub gpus: &'a [HostGpu],
}

/// The spec of a request whose engine planned `plan` (the job's process): the plan, the
/// request's other fields and the host's configuration resolved by [`build_spec`]. `job_user` is
/// a uid leased for this execution alone, if any.
pub fn from_request(
    host: Host<'_>,
    req: &RunCommandRequest,
    plan: JobPlan,
    job_user: Option<UserPlan>,
) -> Result<MonitorSpec, ExecutorError> {
    let self_exec = plan.self_exec;
    let mut input = spec_input(req, plan, host);
    input.ports = bridge_ports(req)?;
    input.default_bridge = host.capabilities.networks.contains(&Network::Bridge);
    input.job_user = job_user;
    let mut spec = build_spec(host.state_dir, input)?;
    spec.sandbox.self_exec = self_exec;
    Ok(spec)
}

/// The plain values the monitor needs, from a validated request. Whether its inputs and
/// outputs can be mounted (and the allow-list) is decided by `build_spec`.
fn spec_input(req: &RunCommandRequest, plan: JobPlan, host: Host<'_>) -> SpecInput {
    let config = host.config;
    let limits = &req.output_limits;
    SpecInput {
        execution_id: req.execution_id.clone(),
        job_id: req.job_id.clone(),
        entrypoint: plan.argv,
        request_env: request_env(req),
        engine_env: plan.engine_env,
        working_dir: plan.working_dir,
        results_dir: Some(req.results_path()),
        execution_dir: (!req.execution_dir.is_empty()).then(|| PathBuf::from(&req.execution_dir)),
        outputs: req
            .outputs
            .iter()
            .map(|o| OutputSpec {
                name: o.name.trim().to_string(),
                path: PathBuf::from(o.path.trim()),
            })
            .collect(),
        inputs: req
            .inputs
            .iter()
            .map(|i| InputSpec {
                source: PathBuf::from(&i.volume.source),
                target: PathBuf::from(&i.volume.target),
                read_only: i.volume.read_only,
                local: i
                    .input_source
                    .source
                    .as_ref()
                    .is_some_and(|s| allowlist::is_local_type(&s.spec_type)),
            })
            .chain(plan.extra_binds)
            .collect(),
        limits: Limits {
            stdout_file: limits.max_stdout_file_length.bytes(),
            stdout_return: limits.max_stdout_return_length.bytes(),
            stderr_file: limits.max_stderr_file_length.bytes(),
            stderr_return: limits.max_stderr_return_length.bytes(),
            log: Limits::log_limit(
                limits.max_stdout_file_length.bytes(),
                limits.max_stderr_file_length.bytes(),
                config.max_log_length.unwrap_or(state::DEFAULT_LOG_LIMIT),
            ),
        },
        timeout_secs: req.execution_timeout.filter(|t| *t > 0.0),
        resources: req.resources.clone().unwrap_or_default(),
        network: plan.network.unwrap_or_else(|| {
            req.network
                .as_ref()
                .map(|n| n.network_type)
                .unwrap_or_default()
        }),
        bridge_subnet: config.bridge_subnet.clone(),
        domains: req
            .network
            .as_ref()
            .map(|n| n.domains.clone())
            .unwrap_or_default(),
        http_hosts_file: config.http_hosts_file.clone(),
        cgroup_base: config.cgroup_base.clone(),
        default_pids_max: config.default_pids_max,
        default_memory: config.default_memory.map(|b| b.bytes()),
        nofile: config.nofile_limit,
        isolate_filesystem: host.capabilities.filesystem_isolation,
        run_as_user: config.run_as_user.clone(),
        allow_listed_local_paths: config.allow_listed_local_paths.clone(),
        tmpfs_size: config.tmpfs_size,
        host_gpus: host.gpus.to_vec(),
        gpu_device_dir: config.gpu_device_dir.clone(),
        ..SpecInput::default()
    }
}

/// The request's `Env`, plus what Bacalhau's compute node would have put there for the
/// allocated GPUs and host ports, unless the host already did.
fn request_env(req: &RunCommandRequest) -> Vec<(String, String)> {
    let mut env = req.env.clone();
    let gpus: Vec<String> = req
        .resources
        .iter()
        .flat_map(|r| &r.gpus)
        .filter(|g| g.vendor.eq_ignore_ascii_case("NVIDIA"))
        .map(|g| g.index.to_string())
        .collect();
    if !gpus.is_empty() {
        for (k, v) in gpu::visible_devices_env(&gpus) {
            env.entry(k).or_insert(v);
        }
    }
    if let Some(net) = &req.network {
        if matches!(
            net.network_type,
            Network::Host | Network::Full | Network::Bridge
        ) {
            for port in net.ports.iter().filter(|p| p.static_port > 0) {
                let target = if port.target > 0 {
                    port.target
                } else {
                    port.static_port
                };
                env.entry(format!("BACALHAU_HOST_PORT_{}", port.name))
                    .or_insert_with(|| port.static_port.to_string());
                env.entry(format!("BACALHAU_PORT_{}", port.name))
                    .or_insert_with(|| target.to_string());
            }
        }
    }
    env.into_iter().collect()
}

/// Bacalhau's port mappings for Bridge: `Static` on the host (on `HostNetwork` alone when it
/// is an IPv4 address) to `Target` in the job (`Static` when no `Target`). Ports without a
/// host port are not published (Bacalhau's compute node allocates them before the executor).
fn bridge_ports(req: &RunCommandRequest) -> Result<Vec<Publish>, ExecutorError> {
    let Some(net) = req
        .network
        .as_ref()
        .filter(|n| n.network_type == Network::Bridge)
    else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    for (i, p) in net.ports.iter().enumerate() {
        let Some(port) = u16::try_from(p.static_port).ok().filter(|p| *p > 0) else {
            continue;
        };
        let target = u16::try_from(p.target)
            .ok()
            .filter(|t| *t > 0)
            .unwrap_or(port);
        let host_ip = match p.host_network.parse::<std::net::IpAddr>() {
            _ if p.host_network.is_empty() => None,
            Ok(std::net::IpAddr::V4(ip)) if ip.is_unspecified() => None,
            Ok(std::net::IpAddr::V4(ip)) => Some(ip),
            _ => {
                return Err(ExecutorError::unsupported(format!(
                    "Network.Ports[{i}].HostNetwork {:?}: Bridge ports are published on IPv4 \
                     addresses only; leave it empty for every address",
                    p.host_network
                ))
                .with_execution(req.execution_id.clone()))
            }
        };
        out.push(Publish {
            host_ip,
            port,
            target,
        });
    }
    Ok(out)
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
            None => user::job_user(input.run_as_user.as_deref())?,
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
    gpu::visible_devices_env(&list).into()
}

/// Under the state root: the mount point of every job's root. Each job mounts a tmpfs of its
/// own there in its own mount namespace, so one empty directory serves them all (no directory
/// to make and remove per execution).
pub const JOB_ROOT_DIR: &str = ".job-root";

/// The size of each of a jailed job's private tmpfs mounts (`/tmp`, `/dev/shm`) when it has no
/// memory limit and `tmpfsSize` is not configured: room for scratch files, not a way to fill
/// the host's memory (the kernel's default is half of it, per mount).
pub const DEFAULT_TMPFS_SIZE: u64 = 1 << 30;

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
        .map(|(i, v)| (input_field(i, "target"), &v.target))
        .chain(
            input
                .outputs
                .iter()
                .enumerate()
                .map(|(i, o)| (output_field(i, "Path"), &o.path)),
        );
    for (field, path) in targets {
        if let Some(message) = mounts::layout_problem(path, true) {
            problems.push(FieldProblem { field, message });
            continue;
        }
        let normal: PathBuf = path.components().collect();
        match seen.iter().find(|(p, _)| *p == normal) {
            Some((_, other)) => problems.push(FieldProblem {
                message: format!("{} is also the target of {other}", path.display()),
                field,
            }),
            None => seen.push((normal, field)),
        }
    }
    if let Some(w) = &input.working_dir {
        if let Some(message) = mounts::layout_problem(w, false) {
            problems.push(FieldProblem {
                field: WORKING_DIR_FIELD.into(),
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
                problems.push(FieldProblem {
                    field: input_field(n, "source"),
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
            fields: BindFields {
                source: input_field(i, "source"),
                target: input_field(i, "target"),
            },
        });
    }
    for (i, o) in input.outputs.iter().enumerate() {
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
            fields: BindFields {
                source: output_field(i, "Name"),
                target: output_field(i, "Path"),
            },
        });
    }
    Ok(binds)
}

/// The request field `part` of input `i`'s volume (`Inputs[0].Volume.source`).
fn input_field(i: usize, part: &str) -> String {
    format!("Inputs[{i}].Volume.{part}")
}

/// The request field `part` of output `i` (`Outputs[1].Path`).
fn output_field(i: usize, part: &str) -> String {
    format!("Outputs[{i}].{part}")
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
        return Err(ExecutorError::invalid_params(vec![FieldProblem {
            field: "Resources.CPU".into(),
            message: format!("must be a non-negative number of cores, got {cpu}"),
        }]));
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

#[cfg(test)]
mod tests;
