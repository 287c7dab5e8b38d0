//! Every validation message, with its field path.

use executor_schema::native::{NativeEngineSpec, ENGINE_NATIVE};
use executor_schema::validate::{
    validate_network, validate_resources, validate_run_request, MAX_ID_LEN,
};
use executor_schema::*;
use serde_json::json;

fn valid() -> RunCommandRequest {
    serde_json::from_value(json!({
        "JobID": "j-1",
        "ExecutionID": "e-1",
        "Resources": {"CPU": 1, "Memory": 1048576, "GPU": 1,
                      "GPUs": [{"Index": 0, "Name": "g", "Vendor": "NVIDIA", "Memory": 1, "PCIAddress": "0000:00:00.0"}]},
        "Network": {"Type": "Host", "Ports": [{"Name": "http", "Static": 20000}]},
        "Outputs": [{"Name": "out", "Path": "/outputs"}, {"Name": "logs", "Path": "/logs"}],
        "Inputs": [{"InputSource": {"Alias": "", "Target": "/in"},
                    "Volume": {"type": 1, "readOnly": true, "source": "/data", "target": "/in"}}],
        "ResultsDir": "/results",
        "EngineParams": {"Type": "native", "Params": {
            "Entrypoint": ["/bin/sh", "-c"], "Parameters": ["echo hi"],
            "EnvironmentVariables": ["A=1", "EMPTY="], "WorkingDirectory": "/tmp"}},
        "Env": {"X": "1"},
        "ExecutionTimeout": 30
    }))
    .unwrap()
}

fn problems(req: &RunCommandRequest) -> Vec<(String, String)> {
    match validate_run_request(req) {
        Ok(_) => Vec::new(),
        Err(p) => p.into_iter().map(|p| (p.field, p.message)).collect(),
    }
}

#[track_caller]
fn assert_problem(req: &RunCommandRequest, field: &str, message: &str) {
    let got = problems(req);
    assert!(
        got.iter().any(|(f, m)| f == field && m.contains(message)),
        "expected {field}: {message}\ngot {got:#?}"
    );
}

fn native(params: serde_json::Value) -> RunCommandRequest {
    let mut req = valid();
    req.engine_params =
        Some(serde_json::from_value(json!({"Type": "native", "Params": params})).unwrap());
    req
}

#[test]
fn a_valid_request_yields_its_engine_spec() {
    let spec = validate_run_request(&valid()).unwrap();
    assert_eq!(spec.argv(), vec!["/bin/sh", "-c", "echo hi"]);
    assert_eq!(spec.environment_variables, vec!["A=1", "EMPTY="]);
    assert_eq!(spec.working_directory, "/tmp");
    // ExecutionDir alone is enough.
    let mut req = valid();
    req.results_dir.clear();
    req.execution_dir = "/exec".into();
    validate_run_request(&req).unwrap();
}

#[test]
fn every_problem_is_reported_at_once() {
    let mut req = valid();
    req.execution_id.clear();
    req.outputs[0].path = "rel".into();
    req.engine_params = None;
    req.execution_timeout = Some(-1.0);
    let got = problems(&req);
    let fields: Vec<&str> = got.iter().map(|(f, _)| f.as_str()).collect();
    assert_eq!(
        fields,
        vec![
            "ExecutionID",
            "EngineParams",
            "Outputs[0].Path",
            "ExecutionTimeout"
        ],
        "{got:#?}"
    );
}

#[test]
fn ids_must_be_safe_path_components() {
    let mut req = valid();
    req.execution_id.clear();
    assert_problem(&req, "ExecutionID", "execution id is required");
    let cases = [
        ("a/b", "contains '/'"),
        ("a\0b", "contains '\\0'"),
        (".", "must start with an ASCII letter or digit"),
        ("..", "must start with an ASCII letter or digit"),
        (".hidden", "must start with an ASCII letter or digit"),
        ("-rf", "\"-rf\" must start with an ASCII letter or digit"),
        ("_x", "must start with an ASCII letter or digit"),
        ("a b", "contains ' '; only ASCII letters, digits"),
        ("é", "contains 'é'"),
    ];
    for (id, msg) in cases {
        let mut req = valid();
        req.execution_id = id.into();
        assert_problem(&req, "ExecutionID", msg);
        let mut req = valid();
        req.job_id = id.into();
        assert_problem(&req, "JobID", msg);
    }
    let mut req = valid();
    req.execution_id = "x".repeat(MAX_ID_LEN + 1);
    assert_problem(
        &req,
        "ExecutionID",
        &format!("is {} bytes long; at most {MAX_ID_LEN}", MAX_ID_LEN + 1),
    );
    req.execution_id = "x".repeat(MAX_ID_LEN);
    assert!(problems(&req).is_empty());
    // JobID is optional (LogStreamRequest-era hosts may leave it out), but checked when given.
    let mut req = valid();
    req.job_id.clear();
    assert!(problems(&req).is_empty());
    let mut req = valid();
    req.execution_id = "e-1_A.b".into();
    assert!(problems(&req).is_empty());
}

#[test]
fn native_engine_messages() {
    let mut req = valid();
    req.engine_params = None;
    assert_problem(&req, "EngineParams", "missing spec type");
    let mut req = valid();
    req.engine_params.as_mut().unwrap().spec_type = " ".into();
    assert_problem(&req, "EngineParams.Type", "missing spec type");

    let mut req = valid();
    req.engine_params = Some(serde_json::from_value(json!({"Type": "docker"})).unwrap());
    assert_problem(
        &req,
        "EngineParams.Type",
        "invalid native engine type. expected native, but received: docker",
    );
    // The type compares case-insensitively after trimming, as Go's IsType.
    let mut req = valid();
    req.engine_params.as_mut().unwrap().spec_type = " Native ".into();
    assert!(problems(&req).is_empty());

    assert_problem(
        &native(json!({"Entrypoint": "ls"})),
        "EngineParams.Params",
        "failed to decode native engine specs. ",
    );
    assert_problem(
        &native(json!({})),
        "EngineParams.Params.Entrypoint",
        "invalid native engine param: 'Entrypoint' cannot be empty",
    );
    assert_problem(
        &native(json!({"Entrypoint": [""]})),
        "EngineParams.Params.Entrypoint",
        "'Entrypoint' cannot be empty",
    );
    assert_problem(
        &native(json!({"Entrypoint": ["ls"], "WorkingDirectory": "tmp"})),
        "EngineParams.Params.WorkingDirectory",
        "invalid native engine param: 'WorkingDirectory' (\"tmp\") must contain absolute path",
    );
    for (bad, name) in [
        ("BACALHAU_X=1", "BACALHAU_X"),
        ("bacalhau_node=2", "bacalhau_node"),
        ("Bacalhau_=3", "Bacalhau_"),
    ] {
        assert_problem(
            &native(json!({"Entrypoint": ["ls"], "EnvironmentVariables": ["OK=1", bad]})),
            "EngineParams.Params.EnvironmentVariables[1]",
            &format!("invalid native engine param: environment variable '{name}' cannot start with BACALHAU_"),
        );
    }
    assert_problem(
        &native(json!({"Entrypoint": ["ls"], "EnvironmentVariables": ["A=b\0c"]})),
        "EngineParams.Params.EnvironmentVariables[0]",
        "the value of environment variable 'A' cannot contain NUL bytes",
    );
    for bad in ["NOEQUALS", "=value"] {
        assert_problem(
            &native(json!({"Entrypoint": ["ls"], "EnvironmentVariables": [bad]})),
            "EngineParams.Params.EnvironmentVariables[0]",
            "must have the form NAME=VALUE",
        );
    }
    assert_problem(
        &native(json!({"Entrypoint": ["ls"], "Parameters": ["a", "b\0"]})),
        "EngineParams.Params.Parameters[1]",
        "invalid native engine param: arguments cannot contain NUL bytes",
    );
    assert_problem(
        &native(json!({"Entrypoint": ["l\0s"]})),
        "EngineParams.Params.Entrypoint[0]",
        "arguments cannot contain NUL bytes",
    );
    // Params decode case-insensitively, as Go would.
    let spec =
        validate_run_request(&native(json!({"entrypoint": ["ls"], "PARAMETERS": ["-l"]}))).unwrap();
    assert_eq!(spec.argv(), vec!["ls", "-l"]);
}

#[test]
fn native_spec_round_trips_through_spec_config() {
    let spec = NativeEngineSpec {
        entrypoint: vec!["/bin/echo".into()],
        parameters: vec!["hi".into()],
        ..Default::default()
    };
    let sc = SpecConfig {
        spec_type: ENGINE_NATIVE.into(),
        params: serde_json::to_value(&spec)
            .unwrap()
            .as_object()
            .unwrap()
            .clone(),
    };
    assert_eq!(
        serde_json::to_value(&sc).unwrap(),
        json!({"Type": "native", "Params": {"Entrypoint": ["/bin/echo"], "Parameters": ["hi"]}})
    );
    assert_eq!(NativeEngineSpec::from_spec_config(&sc).unwrap(), spec);
}

#[test]
fn result_path_messages() {
    let set = |name: &str, path: &str| {
        let mut req = valid();
        req.outputs[1] = ResultPath {
            name: name.into(),
            path: path.into(),
        };
        req
    };
    assert_problem(&set("", "/x"), "Outputs[1].Name", "missing name");
    assert_problem(&set("  ", "/x"), "Outputs[1].Name", "missing name");
    assert_problem(&set("x", ""), "Outputs[1].Path", "missing path");
    assert_problem(
        &set("x", "rel/p"),
        "Outputs[1].Path",
        "result path `rel/p` must be absolute",
    );
    assert_problem(
        &set("out", "/y"),
        "Outputs[1].Name",
        "result path with name 'out' already exists",
    );
    assert_problem(
        &set("x", "/outputs"),
        "Outputs[1].Path",
        "result path `/outputs` is used by another output",
    );
    for bad in ["../x", "/", "a/b", ".", ".."] {
        assert_problem(
            &set(bad, "/y"),
            "Outputs[1].Name",
            "(it names a directory under the results)",
        );
    }
    for reserved in ["stdout", "stderr", "exitCode"] {
        assert_problem(
            &set(reserved, "/y"),
            "Outputs[1].Name",
            "would overwrite the result file of that name",
        );
    }
    // Bacalhau trims before checking.
    assert!(problems(&set(" x ", " /y ")).is_empty());
}

#[test]
fn resources_messages() {
    for cpu in [-0.5, f64::NAN, f64::INFINITY] {
        let r = Resources {
            cpu,
            ..Default::default()
        };
        let got = validate_resources(&r);
        assert_eq!(got.len(), 1, "{cpu}");
        assert_eq!(got[0].field, "Resources.CPU");
        assert!(
            got[0].message.contains("invalid CPU value"),
            "{}",
            got[0].message
        );
    }
    let r = Resources {
        gpu: 1,
        gpus: vec![Gpu::default(), Gpu::default()],
        ..Default::default()
    };
    let got = validate_resources(&r);
    assert_eq!(got[0].field, "Resources.GPUs");
    assert_eq!(got[0].message, "1 GPUs specified but have details for 2");
    assert!(validate_resources(&Resources::default()).is_empty());

    let mut req = valid();
    req.resources.as_mut().unwrap().cpu = -1.0;
    assert_problem(&req, "Resources.CPU", "invalid CPU value");
}

fn net(v: serde_json::Value) -> Vec<(String, String)> {
    let n: NetworkConfig = serde_json::from_value(v).unwrap();
    validate_network(&n)
        .into_iter()
        .map(|p| (p.field, p.message))
        .collect()
}

#[track_caller]
fn assert_net(v: serde_json::Value, field: &str, message: &str) {
    let got = net(v.clone());
    assert!(
        got.iter().any(|(f, m)| f == field && m.contains(message)),
        "{v}: expected {field}: {message}\ngot {got:#?}"
    );
}

#[test]
fn network_messages() {
    assert!(net(json!({"Type": "None"})).is_empty());
    assert!(net(
        json!({"Type": "HTTP", "Domains": ["example.com", ".github.com", "10.0.0.1", "::1"]})
    )
    .is_empty());
    assert!(net(json!({"Type": "Bridge", "Ports": [{"Name": "a", "Static": 1024, "Target": 80}, {"Name": "b", "Target": 81}]})).is_empty());
    assert!(net(json!({"Type": "Host", "Ports": [{"Name": "_a1", "Static": 65535, "HostNetwork": "0.0.0.0"}]})).is_empty());

    assert_net(
        json!({"Type": "Host", "Domains": ["a.com"]}),
        "Network.Domains",
        "domains can only be set for HTTP network mode",
    );
    assert_net(
        json!({"Type": "HTTP", "Domains": ["a.com", "bad domain"]}),
        "Network.Domains[1]",
        "invalid domain \"bad domain\"",
    );
    assert_net(
        json!({"Type": "HTTP", "Domains": ["-a.com"]}),
        "Network.Domains[0]",
        "invalid domain",
    );
    assert_net(
        json!({"Type": "HTTP", "Domains": [""]}),
        "Network.Domains[0]",
        "invalid domain",
    );
    assert_net(
        json!({"Type": "None", "Ports": [{"Name": "a"}]}),
        "Network.Ports",
        "ports can only be set for Host or Bridge network modes",
    );
    assert_net(
        json!({"Type": "HTTP", "Ports": [{"Name": "a"}]}),
        "Network.Ports",
        "ports can only be set for Host or Bridge network modes",
    );
    assert_net(
        json!({"Type": "Host", "Ports": [{"Static": 2000}]}),
        "Network.Ports[0].Name",
        "port name is required",
    );
    assert_net(
        json!({"Type": "Host", "Ports": [{"Name": "1a"}]}),
        "Network.Ports[0].Name",
        "must be a valid environment variable name",
    );
    assert_net(
        json!({"Type": "Host", "Ports": [{"Name": "a-b"}]}),
        "Network.Ports[0].Name",
        "must be a valid environment variable name",
    );
    let long = "a".repeat(238);
    assert_net(
        json!({"Type": "Host", "Ports": [{"Name": long}]}),
        "Network.Ports[0].Name",
        "port name is longer than 237 characters",
    );
    assert!(net(json!({"Type": "Host", "Ports": [{"Name": "a".repeat(237)}]})).is_empty());
    assert_net(
        json!({"Type": "Host", "Ports": [{"Name": "a"}, {"Name": "a"}]}),
        "Network.Ports[1].Name",
        "duplicate port name 'a'",
    );
    assert_net(
        json!({"Type": "Host", "Ports": [{"Name": "a", "Static": 80}]}),
        "Network.Ports[0].Static",
        "static port 80 must be between 1024 and 65535",
    );
    assert_net(
        json!({"Type": "Host", "Ports": [{"Name": "a", "Static": 70000}]}),
        "Network.Ports[0].Static",
        "must be between 1024 and 65535",
    );
    assert_net(
        json!({"Type": "Host", "Ports": [{"Name": "a", "Static": 2000}, {"Name": "b", "Static": 2000}]}),
        "Network.Ports[1].Static",
        "duplicate static port 2000",
    );
    assert_net(
        json!({"Type": "Bridge", "Ports": [{"Name": "a", "Target": -1}]}),
        "Network.Ports[0].Target",
        "target port -1 must be between 0 and 65535",
    );
    assert_net(
        json!({"Type": "Bridge", "Ports": [{"Name": "a", "Target": 65536}]}),
        "Network.Ports[0].Target",
        "must be between 0 and 65535",
    );
    assert_net(
        json!({"Type": "Bridge", "Ports": [{"Name": "a", "Target": 80}, {"Name": "b", "Target": 80}]}),
        "Network.Ports[1].Target",
        "duplicate target port 80",
    );
    assert_net(
        json!({"Type": "Host", "Ports": [{"Name": "a", "Target": 80}]}),
        "Network.Ports[0].Target",
        "target ports cannot be set for Host network mode",
    );
    assert_net(
        json!({"Type": "Full", "Ports": [{"Name": "a", "Target": 80}]}),
        "Network.Ports[0].Target",
        "target ports cannot be set for Host network mode",
    );
    assert_net(
        json!({"Type": "Host", "Ports": [{"Name": "a", "HostNetwork": "localhost"}]}),
        "Network.Ports[0].HostNetwork",
        "invalid host network IP 'localhost'",
    );

    let mut req = valid();
    req.network =
        Some(serde_json::from_value(json!({"Type": "None", "Ports": [{"Name": "a"}]})).unwrap());
    assert_problem(&req, "Network.Ports", "ports can only be set");
}

#[test]
fn input_volume_messages() {
    let vol = |t: u32, source: &str, target: &str| {
        let mut req = valid();
        req.inputs[0].volume = StorageVolume {
            volume_type: t,
            read_only: false,
            source: source.into(),
            target: target.into(),
        };
        req
    };
    assert_problem(
        &vol(0, "/a", "/b"),
        "Inputs[0].Volume.type",
        "unknown storage volume type: 0",
    );
    assert_problem(
        &vol(2, "/a", "/b"),
        "Inputs[0].Volume.type",
        "unknown storage volume type: 2",
    );
    assert_problem(
        &vol(1, "a", "/b"),
        "Inputs[0].Volume.source",
        "input source path must be absolute, got \"a\"",
    );
    assert_problem(
        &vol(1, "/a", "b"),
        "Inputs[0].Volume.target",
        "input target path must be absolute, got \"b\"",
    );
    assert_problem(
        &vol(1, "", "/b"),
        "Inputs[0].Volume.source",
        "input source path must be absolute, got \"\"",
    );
    assert_problem(
        &vol(1, "/a", ""),
        "Inputs[0].Volume.target",
        "input target path must be absolute, got \"\"",
    );
    assert_problem(&vol(1, "/a\0", "/b"), "Inputs[0].Volume.source", "NUL");
}

#[test]
fn timeout_dirs_and_env_messages() {
    for t in [-0.1, f64::NAN, f64::INFINITY] {
        let mut req = valid();
        req.execution_timeout = Some(t);
        assert_problem(
            &req,
            "ExecutionTimeout",
            "must be a finite number of seconds >= 0, got ",
        );
    }
    let mut req = valid();
    req.execution_timeout = Some(0.0);
    assert!(problems(&req).is_empty());

    let mut req = valid();
    req.results_dir.clear();
    assert_problem(
        &req,
        "ResultsDir",
        "either ResultsDir or ExecutionDir is required",
    );
    let mut req = valid();
    req.results_dir = "results".into();
    assert_problem(
        &req,
        "ResultsDir",
        "must be an absolute path, got \"results\"",
    );
    let mut req = valid();
    req.execution_dir = "exec".into();
    assert_problem(
        &req,
        "ExecutionDir",
        "must be an absolute path, got \"exec\"",
    );

    for (k, v) in [("", "x"), ("A=B", "x"), ("A", "x\0y")] {
        let mut req = valid();
        req.env.insert(k.into(), v.into());
        assert_problem(
            &req,
            &format!("Env.{}", k.escape_debug()),
            "environment variable names must be non-empty",
        );
    }
}

#[test]
fn problems_become_one_invalid_params_error() {
    let mut req = valid();
    req.execution_id.clear();
    req.outputs[0].name.clear();
    let err = ExecutorError::invalid_params(validate_run_request(&req).unwrap_err());
    assert_eq!(err.code, ErrorCode::InvalidParams);
    assert_eq!(
        err.message,
        "ExecutionID: execution id is required; Outputs[0].Name: missing name"
    );
    assert_eq!(err.problems.len(), 2);
}
