//! Request validation: every problem at once, each with its field path, in Bacalhau's words
//! where Bacalhau has words for it.

use std::collections::HashSet;
use std::net::IpAddr;

use crate::errors::FieldProblem;
use crate::native::NativeEngineSpec;
use crate::types::{
    Network, NetworkConfig, PreparedStorage, Resources, ResultPath, RunCommandRequest,
    StorageVolumeType,
};

/// Longest id we accept: the limit of one path component (NAME_MAX) and of a cgroup name.
pub const MAX_ID_LEN: usize = 255;
/// Bacalhau's port range for static (host) ports.
pub const MIN_STATIC_PORT: i64 = 1024;
pub const MAX_PORT: i64 = 65535;
/// Port names become `BACALHAU_HOST_PORT_<Name>`; Bacalhau caps the whole name at 256.
pub const MAX_PORT_NAME_LEN: usize = 256 - "BACALHAU_HOST_PORT_".len();
/// Names of the files Bacalhau writes into the results directory; an output of the same name
/// would collide with them.
pub const RESERVED_RESULT_NAMES: [&str; 3] = ["stdout", "stderr", "exitCode"];

fn problem(field: impl Into<String>, message: impl Into<String>) -> FieldProblem {
    FieldProblem {
        field: field.into(),
        message: message.into(),
    }
}

/// Checks a whole `RunCommandRequest` for the native engine; returns its decoded engine params
/// when there is nothing wrong, else every problem found.
pub fn validate_run_request(
    req: &RunCommandRequest,
) -> Result<NativeEngineSpec, Vec<FieldProblem>> {
    let mut problems = Vec::new();

    if req.execution_id.is_empty() {
        problems.push(problem("ExecutionID", "execution id is required"));
    } else if let Some(why) = id_problem(&req.execution_id) {
        problems.push(problem("ExecutionID", format!("execution id {why}")));
    }
    if let Some(why) = id_problem(&req.job_id) {
        problems.push(problem("JobID", format!("job id {why}")));
    }

    let spec = match &req.engine_params {
        None => {
            problems.push(problem(
                "EngineParams",
                "engine params are required (Type \"native\" with Entrypoint)",
            ));
            None
        }
        Some(sc) => match NativeEngineSpec::from_spec_config(sc) {
            Ok(spec) => Some(spec),
            Err(p) => {
                problems.extend(p);
                None
            }
        },
    };

    problems.extend(validate_outputs(&req.outputs));
    if let Some(resources) = &req.resources {
        problems.extend(validate_resources(resources));
    }
    if let Some(network) = &req.network {
        problems.extend(validate_network(network));
    }
    for (i, input) in req.inputs.iter().enumerate() {
        problems.extend(validate_input(i, input));
    }
    if let Some(t) = req.execution_timeout {
        if !t.is_finite() || t < 0.0 {
            problems.push(problem(
                "ExecutionTimeout",
                format!("execution timeout must be a finite number of seconds >= 0, got {t}"),
            ));
        }
    }
    problems.extend(validate_dirs(req));
    problems.extend(validate_env(req));

    match spec {
        Some(spec) if problems.is_empty() => Ok(spec),
        _ => Err(problems),
    }
}

/// Why `id` cannot name a directory and a cgroup, or `None` when it can.
fn id_problem(id: &str) -> Option<String> {
    if id.is_empty() {
        return Some("must not be empty".into());
    }
    if id.len() > MAX_ID_LEN {
        return Some(format!(
            "is {} bytes long, more than {MAX_ID_LEN}",
            id.len()
        ));
    }
    if id.contains('/') {
        return Some(format!("{id:?} must not contain '/'"));
    }
    if id.contains('\0') {
        return Some(format!("{id:?} must not contain a NUL byte"));
    }
    if id == "." || id == ".." {
        return Some(format!("must not be {id:?}"));
    }
    if let Some(c) = id
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
    {
        return Some(format!(
            "{id:?} contains {c:?}; only ASCII letters, digits, '-', '_' and '.' are allowed"
        ));
    }
    None
}

fn validate_outputs(outputs: &[ResultPath]) -> Vec<FieldProblem> {
    let mut problems = Vec::new();
    let mut names = HashSet::new();
    let mut paths = HashSet::new();
    for (i, out) in outputs.iter().enumerate() {
        // Bacalhau's Normalize trims both before validating.
        let name = out.name.trim();
        let path = out.path.trim();
        let name_field = format!("Outputs[{i}].Name");
        let path_field = format!("Outputs[{i}].Path");
        if name.is_empty() {
            problems.push(problem(&name_field, "missing name"));
        } else if name == "." || name == ".." || name.contains('/') || name.contains('\0') {
            problems.push(problem(
                &name_field,
                format!("result path name '{name}' must be a single path component (no '/', not '.' or '..')"),
            ));
        } else if RESERVED_RESULT_NAMES.contains(&name) {
            problems.push(problem(
                &name_field,
                format!("result path name '{name}' collides with the result file of the same name"),
            ));
        } else if !names.insert(name) {
            problems.push(problem(
                &name_field,
                format!("result path with name '{name}' already exists"),
            ));
        }
        if path.is_empty() {
            problems.push(problem(&path_field, "missing path"));
        } else if !path.starts_with('/') {
            problems.push(problem(
                &path_field,
                format!("result path `{path}` must be absolute"),
            ));
        } else if !paths.insert(path) {
            problems.push(problem(
                &path_field,
                format!("result path `{path}` is already used by another output"),
            ));
        }
    }
    problems
}

/// Checks allocated resources (field paths rooted at `Resources`).
pub fn validate_resources(r: &Resources) -> Vec<FieldProblem> {
    let mut problems = Vec::new();
    if !r.cpu.is_finite() || r.cpu < 0.0 {
        problems.push(problem(
            "Resources.CPU",
            format!(
                "invalid CPU value: {} (must be a finite number of cores >= 0)",
                r.cpu
            ),
        ));
    }
    if r.gpus.len() as u64 > r.gpu {
        problems.push(problem(
            "Resources.GPUs",
            format!(
                "{} GPUs specified but have details for {}",
                r.gpu,
                r.gpus.len()
            ),
        ));
    }
    problems
}

/// Checks a network config as Bacalhau's `NetworkConfig.Validate` does (field paths rooted at
/// `Network`). `Full`, Bacalhau's deprecated alias of `Host`, is treated as `Host`.
pub fn validate_network(n: &NetworkConfig) -> Vec<FieldProblem> {
    let mut problems = Vec::new();
    let host_like = matches!(n.network_type, Network::Host | Network::Full);

    if !n.domains.is_empty() && n.network_type != Network::HTTP {
        problems.push(problem(
            "Network.Domains",
            "domains can only be set for HTTP network mode",
        ));
    }
    for (i, d) in n.domains.iter().enumerate() {
        if !valid_domain(d) {
            problems.push(problem(
                format!("Network.Domains[{i}]"),
                format!("invalid domain {d:?}"),
            ));
        }
    }

    let ports_allowed = host_like || n.network_type == Network::Bridge;
    if !n.ports.is_empty() && !ports_allowed {
        problems.push(problem(
            "Network.Ports",
            "ports can only be set for Host or Bridge network modes",
        ));
    }
    let mut names = HashSet::new();
    let mut statics = HashSet::new();
    let mut targets = HashSet::new();
    for (i, p) in n.ports.iter().enumerate() {
        let at = |f: &str| format!("Network.Ports[{i}].{f}");
        if p.name.is_empty() {
            problems.push(problem(at("Name"), "port name is required"));
        } else if !valid_env_name(&p.name) {
            problems.push(problem(
                at("Name"),
                format!("port name '{}' must be a valid environment variable name (^[A-Za-z_][A-Za-z0-9_]*$)", p.name),
            ));
        } else if p.name.len() > MAX_PORT_NAME_LEN {
            problems.push(problem(
                at("Name"),
                format!(
                    "port name '{}' is longer than {MAX_PORT_NAME_LEN} characters",
                    p.name
                ),
            ));
        } else if !names.insert(p.name.as_str()) {
            problems.push(problem(
                at("Name"),
                format!("duplicate port name '{}'", p.name),
            ));
        }
        if p.static_port != 0 {
            if !(MIN_STATIC_PORT..=MAX_PORT).contains(&p.static_port) {
                problems.push(problem(
                    at("Static"),
                    format!(
                        "static port {} must be between {MIN_STATIC_PORT} and {MAX_PORT}",
                        p.static_port
                    ),
                ));
            } else if !statics.insert(p.static_port) {
                problems.push(problem(
                    at("Static"),
                    format!("duplicate static port {}", p.static_port),
                ));
            }
        }
        if !(0..=MAX_PORT).contains(&p.target) {
            problems.push(problem(
                at("Target"),
                format!("target port {} must be between 0 and {MAX_PORT}", p.target),
            ));
        } else if p.target != 0 && host_like {
            problems.push(problem(
                at("Target"),
                "target ports cannot be set for Host network mode",
            ));
        } else if p.target != 0 && n.network_type == Network::Bridge && !targets.insert(p.target) {
            problems.push(problem(
                at("Target"),
                format!("duplicate target port {}", p.target),
            ));
        }
        if !p.host_network.is_empty() && p.host_network.parse::<IpAddr>().is_err() {
            problems.push(problem(
                at("HostNetwork"),
                format!(
                    "invalid host network {:?}: must be an IP address",
                    p.host_network
                ),
            ));
        }
    }
    problems
}

fn valid_env_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// A host name (a leading `.` is a wildcard for subdomains) or an IP address.
fn valid_domain(d: &str) -> bool {
    if d.parse::<IpAddr>().is_ok() {
        return true;
    }
    let name = d.strip_prefix('.').unwrap_or(d);
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        })
}

fn validate_input(i: usize, input: &PreparedStorage) -> Vec<FieldProblem> {
    let mut problems = Vec::new();
    let v = &input.volume;
    if v.volume_type != StorageVolumeType::BIND {
        problems.push(problem(
            format!("Inputs[{i}].Volume.type"),
            format!("unknown storage volume type: {}", v.volume_type.0),
        ));
    }
    for (key, value) in [("source", &v.source), ("target", &v.target)] {
        let field = format!("Inputs[{i}].Volume.{key}");
        if value.is_empty() {
            problems.push(problem(field, format!("missing volume {key}")));
        } else if !value.starts_with('/') {
            problems.push(problem(
                field,
                format!("volume {key} `{value}` must be an absolute path"),
            ));
        } else if value.contains('\0') {
            problems.push(problem(
                field,
                format!("volume {key} must not contain a NUL byte"),
            ));
        }
    }
    problems
}

fn validate_dirs(req: &RunCommandRequest) -> Vec<FieldProblem> {
    let mut problems = Vec::new();
    if req.results_dir.is_empty() && req.execution_dir.is_empty() {
        problems.push(problem(
            "ResultsDir",
            "ResultsDir or ExecutionDir is required",
        ));
    }
    for (field, value) in [
        ("ResultsDir", &req.results_dir),
        ("ExecutionDir", &req.execution_dir),
    ] {
        if !value.is_empty() && !value.starts_with('/') {
            problems.push(problem(
                field,
                format!("{field} `{value}` must be an absolute path"),
            ));
        }
    }
    problems
}

/// Env entries must survive execve: a key without `=`/NUL, a value without NUL.
fn validate_env(req: &RunCommandRequest) -> Vec<FieldProblem> {
    req.env
        .iter()
        .filter(|(k, v)| k.is_empty() || k.contains(['=', '\0']) || v.contains('\0'))
        .map(|(k, _)| {
            problem(
                format!("Env[{k:?}]"),
                "environment variable names must be non-empty without '=' or NUL, values without NUL",
            )
        })
        .collect()
}
