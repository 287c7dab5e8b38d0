//! Validation of requests, with Bacalhau's messages where it has them. Every problem is
//! returned, each with the path of its field, so a user fixes them all in one go.

use std::collections::HashSet;

use crate::errors::FieldProblem;
use crate::native::NativeEngineSpec;
use crate::types::{
    Network, NetworkConfig, Resources, RunCommandRequest, SpecConfig, StorageVolume,
};

/// Longest id accepted: ids become directory and cgroup names.
pub const MAX_ID_LEN: usize = 200;
/// Largest summary a result may carry per stream: two of them, JSON-escaped at worst six bytes
/// per byte, must fit in one 16 MiB protocol message.
pub const MAX_RETURN_LENGTH: u64 = 1 << 20;
/// Result file names an output may not shadow.
const RESERVED_NAMES: [&str; 3] = ["stdout", "stderr", "exitCode"];

fn problem(out: &mut Vec<FieldProblem>, field: impl Into<String>, message: impl Into<String>) {
    out.push(FieldProblem {
        field: field.into(),
        message: message.into(),
    });
}

/// Why `id` cannot name a directory or a cgroup, if it cannot.
pub fn id_problem(id: &str) -> Option<String> {
    if id.is_empty() {
        return Some("is required".into());
    }
    if id.len() > MAX_ID_LEN {
        return Some(format!(
            "is {} bytes long; at most {MAX_ID_LEN} are allowed",
            id.len()
        ));
    }
    if let Some(c) = id
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
    {
        return Some(format!(
            "{:?} contains {c:?}; only ASCII letters, digits, '-', '_' and '.' are allowed",
            id.escape_debug().to_string()
        ));
    }
    // An id names files and directories that operators handle with shell tools: one starting
    // with '-' reads as an option (`rm -rf`), one with '.' hides.
    if !id.starts_with(|c: char| c.is_ascii_alphanumeric()) {
        return Some(format!("{id:?} must start with an ASCII letter or digit"));
    }
    None
}

/// Validate a whole `RunCommandRequest` for engine `native`; returns its decoded engine spec.
pub fn validate_run_request(
    req: &RunCommandRequest,
) -> Result<NativeEngineSpec, Vec<FieldProblem>> {
    validate_run_request_with(req, NativeEngineSpec::from_spec_config)
}

/// Validate a whole `RunCommandRequest`, its engine params with `decode` (an engine's own
/// spec decoder); returns the decoded engine spec.
pub fn validate_run_request_with<T>(
    req: &RunCommandRequest,
    decode: impl FnOnce(&SpecConfig) -> Result<T, Vec<FieldProblem>>,
) -> Result<T, Vec<FieldProblem>> {
    let mut out = Vec::new();
    if let Some(why) = id_problem(&req.execution_id) {
        problem(&mut out, "ExecutionID", format!("execution id {why}"));
    }
    if !req.job_id.is_empty() {
        if let Some(why) = id_problem(&req.job_id) {
            problem(&mut out, "JobID", format!("job id {why}"));
        }
    }
    if req.results_dir.is_empty() && req.execution_dir.is_empty() {
        problem(
            &mut out,
            "ResultsDir",
            "either ResultsDir or ExecutionDir is required",
        );
    }
    for (field, dir) in [
        ("ResultsDir", &req.results_dir),
        ("ExecutionDir", &req.execution_dir),
    ] {
        if !dir.is_empty() && !dir.starts_with('/') {
            problem(
                &mut out,
                field,
                format!("must be an absolute path, got {dir:?}"),
            );
        }
    }
    let spec = match &req.engine_params {
        None => {
            problem(&mut out, "EngineParams", "missing spec type");
            None
        }
        Some(p) if p.spec_type.trim().is_empty() => {
            problem(&mut out, "EngineParams.Type", "missing spec type");
            None
        }
        Some(p) => match decode(p) {
            Ok(s) => Some(s),
            Err(mut problems) => {
                out.append(&mut problems);
                None
            }
        },
    };
    validate_outputs(req, &mut out);
    for (i, input) in req.inputs.iter().enumerate() {
        validate_volume(&input.volume, &format!("Inputs[{i}].Volume"), &mut out);
    }
    if let Some(r) = &req.resources {
        out.extend(validate_resources(r));
    }
    if let Some(n) = &req.network {
        out.extend(validate_network(n));
    }
    for (k, v) in &req.env {
        if k.is_empty() || k.contains('=') || k.contains('\0') || v.contains('\0') {
            problem(
                &mut out,
                format!("Env.{}", k.escape_debug()),
                "environment variable names must be non-empty without '=' or NUL, values without NUL",
            );
        }
    }
    if let Some(t) = req.execution_timeout {
        if !t.is_finite() || t < 0.0 {
            problem(
                &mut out,
                "ExecutionTimeout",
                format!("must be a finite number of seconds >= 0, got {t}"),
            );
        }
    }
    let limits = &req.output_limits;
    for (key, size) in [
        ("MaxStdoutReturnLength", limits.max_stdout_return_length),
        ("MaxStderrReturnLength", limits.max_stderr_return_length),
    ] {
        if size.bytes() > MAX_RETURN_LENGTH {
            problem(
                &mut out,
                format!("OutputLimits.{key}"),
                format!(
                    "{size} cannot travel in a result (at most {} per stream); the whole output is in the result files",
                    crate::types::ByteSize(MAX_RETURN_LENGTH)
                ),
            );
        }
    }
    match spec {
        Some(s) if out.is_empty() => Ok(s),
        _ => Err(out),
    }
}

fn validate_outputs(req: &RunCommandRequest, out: &mut Vec<FieldProblem>) {
    let mut names = HashSet::new();
    let mut paths = HashSet::new();
    for (i, o) in req.outputs.iter().enumerate() {
        let name = o.name.trim();
        let path = o.path.trim();
        let at = |f: &str| format!("Outputs[{i}].{f}");
        if name.is_empty() {
            problem(out, at("Name"), "missing name");
        } else if let Some(why) = id_problem(name) {
            problem(
                out,
                at("Name"),
                format!("output name {why} (it names a directory under the results)"),
            );
        } else if RESERVED_NAMES.contains(&name) {
            problem(
                out,
                at("Name"),
                format!("output name '{name}' would overwrite the result file of that name"),
            );
        } else if !names.insert(name) {
            problem(
                out,
                at("Name"),
                format!("result path with name '{name}' already exists"),
            );
        }
        if path.is_empty() {
            problem(out, at("Path"), "missing path");
        } else if !path.starts_with('/') {
            problem(
                out,
                at("Path"),
                format!("result path `{path}` must be absolute"),
            );
        } else if !paths.insert(path) {
            problem(
                out,
                at("Path"),
                format!("result path `{path}` is used by another output"),
            );
        }
    }
}

fn validate_volume(v: &StorageVolume, at: &str, out: &mut Vec<FieldProblem>) {
    if v.volume_type != StorageVolume::BIND {
        problem(
            out,
            format!("{at}.type"),
            format!("unknown storage volume type: {}", v.volume_type),
        );
    }
    // A NUL cannot reach mount(2) or open(2): refuse it here with the field named.
    for (key, path) in [("source", &v.source), ("target", &v.target)] {
        if path.contains('\0') {
            problem(
                out,
                format!("{at}.{key}"),
                format!("input {key} path cannot contain NUL bytes"),
            );
        }
    }
    if !v.source.starts_with('/') {
        problem(
            out,
            format!("{at}.source"),
            format!("input source path must be absolute, got {:?}", v.source),
        );
    }
    if !v.target.starts_with('/') {
        problem(
            out,
            format!("{at}.target"),
            format!("input target path must be absolute, got {:?}", v.target),
        );
    }
}

pub fn validate_resources(r: &Resources) -> Vec<FieldProblem> {
    let mut out = Vec::new();
    if !r.cpu.is_finite() || r.cpu < 0.0 {
        problem(
            &mut out,
            "Resources.CPU",
            format!(
                "invalid CPU value: {}; must be a number of cores >= 0",
                r.cpu
            ),
        );
    }
    if r.gpus.len() as u64 > r.gpu {
        problem(
            &mut out,
            "Resources.GPUs",
            format!(
                "{} GPUs specified but have details for {}",
                r.gpu,
                r.gpus.len()
            ),
        );
    }
    out
}

fn valid_env_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// A host name (a leading `.` stands for any subdomain, as in Bacalhau's `DomainSet`) or an
/// IP address.
fn valid_domain(d: &str) -> bool {
    if d.parse::<std::net::IpAddr>().is_ok() {
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

pub fn validate_network(n: &NetworkConfig) -> Vec<FieldProblem> {
    let mut out = Vec::new();
    if !n.domains.is_empty() && n.network_type != Network::Http {
        problem(
            &mut out,
            "Network.Domains",
            "domains can only be set for HTTP network mode",
        );
    }
    for (i, d) in n.domains.iter().enumerate() {
        if !valid_domain(d) {
            problem(
                &mut out,
                format!("Network.Domains[{i}]"),
                format!("invalid domain {d:?}"),
            );
        }
    }
    let ports_allowed = matches!(
        n.network_type,
        Network::Host | Network::Full | Network::Bridge
    );
    if !n.ports.is_empty() && !ports_allowed {
        problem(
            &mut out,
            "Network.Ports",
            "ports can only be set for Host or Bridge network modes",
        );
    }
    let max_name = 256 - "BACALHAU_HOST_PORT_".len();
    let (mut names, mut statics, mut targets) = (HashSet::new(), HashSet::new(), HashSet::new());
    for (i, p) in n.ports.iter().enumerate() {
        let at = |f: &str| format!("Network.Ports[{i}].{f}");
        if p.name.is_empty() {
            problem(&mut out, at("Name"), "port name is required");
        } else if !valid_env_name(&p.name) {
            problem(
                &mut out,
                at("Name"),
                format!(
                    "port name '{}' must be a valid environment variable name",
                    p.name
                ),
            );
        } else if p.name.len() > max_name {
            problem(
                &mut out,
                at("Name"),
                format!("port name is longer than {max_name} characters"),
            );
        } else if !names.insert(&p.name) {
            problem(
                &mut out,
                at("Name"),
                format!("duplicate port name '{}'", p.name),
            );
        }
        if p.static_port != 0 {
            if !(1024..=65535).contains(&p.static_port) {
                problem(
                    &mut out,
                    at("Static"),
                    format!(
                        "static port {} must be between 1024 and 65535",
                        p.static_port
                    ),
                );
            } else if !statics.insert(p.static_port) {
                problem(
                    &mut out,
                    at("Static"),
                    format!("duplicate static port {}", p.static_port),
                );
            }
        }
        if p.target != 0 {
            if matches!(n.network_type, Network::Host | Network::Full) {
                problem(
                    &mut out,
                    at("Target"),
                    "target ports cannot be set for Host network mode",
                );
            } else if !(0..=65535).contains(&p.target) {
                problem(
                    &mut out,
                    at("Target"),
                    format!("target port {} must be between 0 and 65535", p.target),
                );
            } else if !targets.insert(p.target) {
                problem(
                    &mut out,
                    at("Target"),
                    format!("duplicate target port {}", p.target),
                );
            }
        }
        if !p.host_network.is_empty() && p.host_network.parse::<std::net::IpAddr>().is_err() {
            problem(
                &mut out,
                at("HostNetwork"),
                format!("invalid host network IP '{}'", p.host_network),
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn request(extra: serde_json::Value) -> RunCommandRequest {
        let mut base = json!({
            "JobID": "j-1", "ExecutionID": "e-1", "ResultsDir": "/tmp/r",
            "EngineParams": {"Type": "native", "Params": {"Entrypoint": ["true"]}}
        });
        for (k, v) in extra.as_object().unwrap() {
            base[k] = v.clone();
        }
        serde_json::from_value(base).unwrap()
    }

    fn fields(p: &[FieldProblem]) -> Vec<&str> {
        p.iter().map(|p| p.field.as_str()).collect()
    }

    #[test]
    fn a_minimal_request_is_valid() {
        let spec = validate_run_request(&request(json!({}))).unwrap();
        assert_eq!(spec.argv(), vec!["true"]);
    }

    #[test]
    fn hostile_ids_are_refused_before_they_reach_a_path() {
        for id in [
            "",
            "../x",
            "/",
            "a/b",
            "a\0b",
            ".",
            "..",
            ".hidden",
            "-rf",
            "--help",
            "_x",
            "é",
            "a b",
            &"x".repeat(10_000),
        ] {
            let p = validate_run_request(&request(json!({"ExecutionID": id}))).unwrap_err();
            assert_eq!(fields(&p), vec!["ExecutionID"], "{id:?}");
        }
        let p = validate_run_request(&request(json!({"JobID": "../../etc"}))).unwrap_err();
        assert_eq!(fields(&p), vec!["JobID"]);
        let p = validate_run_request(&request(json!({"ExecutionID": "-rf"}))).unwrap_err();
        assert_eq!(
            p[0].message,
            "execution id \"-rf\" must start with an ASCII letter or digit"
        );
        for id in ["e-1", "7f3a", "a.b_c-d", "E"] {
            assert_eq!(id_problem(id), None, "{id}");
        }
    }

    #[test]
    fn every_problem_is_reported_with_its_field() {
        let p = validate_run_request(&request(json!({
            "ResultsDir": "relative",
            "Outputs": [
                {"Name": "out", "Path": "/out"}, {"Name": "out", "Path": "rel"},
                {"Name": "../x", "Path": "/x"}, {"Name": "stdout", "Path": "/y"}, {"Name": "", "Path": ""}
            ],
            "Inputs": [{"InputSource": {}, "Volume": {"type": 2, "source": "src", "target": "/t"}}],
            "Resources": {"CPU": -1, "GPU": 0, "GPUs": [{"Index": 0}]},
            "Network": {"Type": "None", "Domains": ["a.com"], "Ports": [{"Name": "1bad", "Static": 80}]},
            "ExecutionTimeout": -3
        })))
        .unwrap_err();
        assert_eq!(
            fields(&p),
            vec![
                "ResultsDir",
                "Outputs[1].Name",
                "Outputs[1].Path",
                "Outputs[2].Name",
                "Outputs[3].Name",
                "Outputs[4].Name",
                "Outputs[4].Path",
                "Inputs[0].Volume.type",
                "Inputs[0].Volume.source",
                "Resources.CPU",
                "Resources.GPUs",
                "Network.Domains",
                "Network.Ports",
                "Network.Ports[0].Name",
                "Network.Ports[0].Static",
                "ExecutionTimeout",
            ]
        );
        let msg = |f: &str| p.iter().find(|x| x.field == f).unwrap().message.clone();
        assert_eq!(
            msg("Outputs[1].Name"),
            "result path with name 'out' already exists"
        );
        assert_eq!(msg("Outputs[1].Path"), "result path `rel` must be absolute");
        assert_eq!(msg("Outputs[4].Name"), "missing name");
        assert_eq!(msg("Outputs[4].Path"), "missing path");
        assert_eq!(
            msg("Inputs[0].Volume.type"),
            "unknown storage volume type: 2"
        );
        assert_eq!(
            msg("Resources.GPUs"),
            "0 GPUs specified but have details for 1"
        );
        assert_eq!(
            msg("Network.Domains"),
            "domains can only be set for HTTP network mode"
        );
        assert_eq!(
            msg("Network.Ports"),
            "ports can only be set for Host or Bridge network modes"
        );
    }

    #[test]
    fn return_lengths_must_fit_in_a_message() {
        let p = validate_run_request(&request(
            json!({"OutputLimits": {"MaxStdoutReturnLength": "2MB"}}),
        ))
        .unwrap_err();
        assert_eq!(fields(&p), vec!["OutputLimits.MaxStdoutReturnLength"]);
        assert!(
            p[0].message
                .starts_with("2MB cannot travel in a result (at most 1MB per stream)"),
            "{}",
            p[0].message
        );
        assert!(validate_run_request(&request(json!({"OutputLimits": {"MaxStdoutReturnLength": "1MB", "MaxStdoutFileLength": "100GB"}}))).is_ok());
    }

    #[test]
    fn missing_engine_params() {
        let mut r = request(json!({}));
        r.engine_params = None;
        let p = validate_run_request(&r).unwrap_err();
        assert_eq!(p[0].message, "missing spec type");
    }

    #[test]
    fn host_ports_rules() {
        let n: NetworkConfig = serde_json::from_value(json!({"Type": "Host", "Ports": [
            {"Name": "web", "Static": 8080, "Target": 80}, {"Name": "web", "Static": 8080}
        ]}))
        .unwrap();
        let p = validate_network(&n);
        let messages: Vec<_> = p.iter().map(|p| p.message.as_str()).collect();
        assert_eq!(
            messages,
            vec![
                "target ports cannot be set for Host network mode",
                "duplicate port name 'web'",
                "duplicate static port 8080"
            ]
        );
    }
}
