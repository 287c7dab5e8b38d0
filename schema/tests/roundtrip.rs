//! Wire round trips against JSON written as Bacalhau's Go encoder writes it, and decoding with
//! odd key case as Go's decoder accepts it.

use executor_schema::native::{NativeEngineSpec, ENGINE_NATIVE};
use executor_schema::*;
use serde_json::{json, Value};

fn decode<T: serde::de::DeserializeOwned>(v: Value) -> T {
    serde_json::from_value(v).unwrap()
}

fn encode<T: serde::Serialize>(t: &T) -> Value {
    serde_json::to_value(t).unwrap()
}

/// Decoding then encoding Go's JSON gives Go's JSON back, and decoding that gives the same value.
fn assert_round_trip<T>(go: Value) -> T
where
    T: serde::Serialize + serde::de::DeserializeOwned + PartialEq + std::fmt::Debug,
{
    let t: T = decode(go.clone());
    let wire = encode(&t);
    assert_eq!(wire, go);
    assert_eq!(
        decode::<T>(wire),
        t,
        "decode -> encode -> decode changed the value"
    );
    t
}

/// A request as an older Go host (ResultsDir, no ExecutionDir/Env) JSON-encodes it.
fn go_request() -> Value {
    json!({
        "JobID": "j-1",
        "ExecutionID": "e-1",
        "Resources": {
            "CPU": 0.5, "Memory": 536870912, "Disk": 1073741824, "GPU": 1,
            "GPUs": [{"Index": 0, "Name": "Tesla T4", "Vendor": "NVIDIA", "Memory": 15360,
                      "PCIAddress": "0000:00:1e.0"}]
        },
        "Network": {"Type": "None"},
        "Outputs": [{"Name": "out", "Path": "/outputs"}],
        "Inputs": [{
            "InputSource": {"Source": {"Type": "local", "Params": {"SourcePath": "/data", "ReadWrite": false}},
                            "Alias": "data", "Target": "/inputs/data"},
            "Volume": {"type": 1, "readOnly": true, "source": "/data", "target": "/inputs/data"}
        }],
        "ResultsDir": "/var/lib/bacalhau/results/e-1",
        "EngineParams": {"Type": "native", "Params": {"Entrypoint": ["/bin/echo", "hi"]}},
        "OutputLimits": {
            "MaxStdoutFileLength": "1GB", "MaxStdoutReturnLength": "2KB",
            "MaxStderrFileLength": "1GB", "MaxStderrReturnLength": "2KB"
        }
    })
}

#[test]
fn run_command_request_round_trips_go_json() {
    let req: RunCommandRequest = assert_round_trip(go_request());
    assert_eq!(req.execution_id, "e-1");
    assert_eq!(
        req.resources.as_ref().unwrap().gpus[0].pci_address,
        "0000:00:1e.0"
    );
    assert_eq!(req.network.as_ref().unwrap().network_type, Network::None);
    assert_eq!(req.inputs[0].volume.volume_type, StorageVolume::BIND);
    assert!(req.inputs[0].volume.read_only);
    assert_eq!(req.output_limits, OutputLimits::default());
    assert_eq!(req.output_limits.max_stdout_file_length.bytes(), 1 << 30);
    assert_eq!(req.output_limits.max_stderr_return_length.bytes(), 2048);
    assert_eq!(
        req.results_path(),
        std::path::PathBuf::from("/var/lib/bacalhau/results/e-1")
    );
    assert_eq!(req.logs_path(), None);
}

#[test]
fn go_nil_pointers_and_slices_are_null() {
    let go = json!({
        "JobID": "j", "ExecutionID": "e", "Resources": null, "Network": null,
        "Outputs": null, "Inputs": null, "ResultsDir": "/r", "EngineParams": null,
        "OutputLimits": {"MaxStdoutFileLength": "0B", "MaxStdoutReturnLength": "0B",
                         "MaxStderrFileLength": "1500B", "MaxStderrReturnLength": "3MB"}
    });
    let req: RunCommandRequest = assert_round_trip(go);
    assert!(req.outputs.is_empty() && req.inputs.is_empty() && req.resources.is_none());
    assert_eq!(req.output_limits.max_stdout_file_length, ByteSize(0));
    assert_eq!(req.output_limits.max_stderr_file_length, ByteSize(1500));
    assert_eq!(
        req.output_limits.max_stderr_return_length,
        ByteSize(3 << 20)
    );
}

#[test]
fn newer_request_fields_are_emitted_only_when_set() {
    let mut go = go_request();
    let obj = go.as_object_mut().unwrap();
    obj.insert("ExecutionDir".into(), json!("/var/lib/bacalhau/output/e-1"));
    obj.insert(
        "Env".into(),
        json!({"BACALHAU_JOB_ID": "j-1", "myVar": "x", "lower": "y"}),
    );
    obj.insert("ExecutionTimeout".into(), json!(2.5));
    let req: RunCommandRequest = assert_round_trip(go);
    assert_eq!(req.env["myVar"], "x", "Env keys keep their case");
    assert_eq!(req.env["lower"], "y");
    assert_eq!(req.execution_timeout, Some(2.5));
    assert_eq!(
        req.results_path(),
        std::path::PathBuf::from("/var/lib/bacalhau/output/e-1/results")
    );
    assert_eq!(
        req.logs_path().unwrap(),
        std::path::PathBuf::from("/var/lib/bacalhau/output/e-1/logs/raw_container_logs")
    );

    let plain = encode(&RunCommandRequest::default());
    let keys: Vec<&str> = plain
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    for absent in ["ExecutionDir", "Env", "ExecutionTimeout"] {
        assert!(
            !keys.contains(&absent),
            "{absent} emitted when empty: {plain}"
        );
    }
}

#[test]
fn output_limits_defaults_and_integers() {
    let mut go = go_request();
    go.as_object_mut().unwrap().remove("OutputLimits");
    let req: RunCommandRequest = decode(go.clone());
    assert_eq!(req.output_limits, OutputLimits::default());

    go["OutputLimits"] = Value::Null;
    let req: RunCommandRequest = decode(go.clone());
    assert_eq!(req.output_limits, OutputLimits::default());

    go["OutputLimits"] = json!({"MaxStdoutReturnLength": 0, "MaxStderrFileLength": 4096});
    let req: RunCommandRequest = decode(go.clone());
    assert_eq!(req.output_limits.max_stdout_return_length, ByteSize(0));
    assert_eq!(req.output_limits.max_stderr_file_length, ByteSize(4096));
    assert_eq!(req.output_limits.max_stdout_file_length, ByteSize(1 << 30));
    assert_eq!(req.output_limits.max_stderr_return_length, ByteSize(2048));
    assert_eq!(encode(&req.output_limits)["MaxStderrFileLength"], "4KB");

    go["OutputLimits"] = json!({"MaxStdoutFileLength": "10Mb"});
    let err = serde_json::from_value::<RunCommandRequest>(go.clone()).unwrap_err();
    assert!(err.to_string().contains("bit"), "{err}");
    go["OutputLimits"] = json!({"MaxStdoutFileLength": -1});
    assert!(serde_json::from_value::<RunCommandRequest>(go).is_err());
}

#[test]
fn decoding_accepts_any_key_case() {
    let req: RunCommandRequest = decode(json!({
        "EXECUTIONID": "e-2",
        "jobid": "j-2",
        "outputs": [{"NAME": "o", "path": "/o"}],
        "inputs": [{"inputsource": {"alias": "a"}, "VOLUME": {"TYPE": 1, "readonly": true, "Source": "/s", "TARGET": "/t"}}],
        "resultsdir": "/r",
        "engineparams": {"type": "native", "PARAMS": {"Entrypoint": ["x"], "keepCase": 1}},
        "outputlimits": {"maxstdoutfilelength": "5kb"},
        "env": {"MiXeD": "v"},
        "network": {"TYPE": "host", "ports": [{"name": "http", "STATIC": 2000}]},
        "resources": {"cpu": 1.5, "gpus": null}
    }));
    assert_eq!(req.execution_id, "e-2");
    assert_eq!(req.job_id, "j-2");
    assert_eq!(
        req.outputs[0],
        ResultPath {
            name: "o".into(),
            path: "/o".into()
        }
    );
    assert_eq!(req.inputs[0].input_source.alias, "a");
    let v = &req.inputs[0].volume;
    assert!(
        v.read_only && v.volume_type == StorageVolume::BIND && v.source == "/s" && v.target == "/t"
    );
    assert_eq!(req.results_dir, "/r");
    let params = &req.engine_params.as_ref().unwrap().params;
    assert!(
        params.contains_key("keepCase"),
        "Params keys are user data: {params:?}"
    );
    assert!(params.contains_key("Entrypoint"));
    assert_eq!(req.output_limits.max_stdout_file_length, ByteSize(5 * 1024));
    assert!(req.env.contains_key("MiXeD"));
    let net = req.network.as_ref().unwrap();
    assert_eq!(net.network_type, Network::Host);
    assert_eq!(net.ports[0].static_port, 2000);
    assert_eq!(req.resources.as_ref().unwrap().cpu, 1.5);
    // Encoding always uses the exact keys.
    let out = encode(&req);
    assert_eq!(out["Inputs"][0]["Volume"]["readOnly"], true);
    assert_eq!(out["ExecutionID"], "e-2");
}

#[test]
fn exact_key_wins_over_other_spellings() {
    for go in [
        json!({"exitcode": 1, "ExitCode": 2}),
        json!({"ExitCode": 2, "exitcode": 1}),
        json!({"EXITCODE": 1, "ExitCode": 2, "exitCode": 3}),
    ] {
        let r: RunCommandResult = decode(go.clone());
        assert_eq!(r.exit_code, 2, "{go}");
    }
}

#[test]
fn run_command_result_keys_are_bacalhaus() {
    let go = json!({
        "Stdout": "hello\n", "StdoutTruncated": false, "stderr": "oops", "StderrTruncated": true,
        "ExitCode": 137, "ErrorMsg": ""
    });
    let r: RunCommandResult = assert_round_trip(go);
    assert_eq!(r.stderr, "oops");
    assert!(!r.is_error());

    let r: RunCommandResult = decode(json!({"STDERR": "e", "exitcode": -1, "errormsg": "boom"}));
    assert_eq!((r.stderr.as_str(), r.exit_code), ("e", -1));
    assert!(r.is_error());

    let failed = RunCommandResult::failed("memory limit exceeded");
    assert_eq!(
        encode(&failed),
        json!({"Stdout": "", "StdoutTruncated": false, "stderr": "", "StderrTruncated": false,
               "ExitCode": -1, "ErrorMsg": "memory limit exceeded"})
    );
    // Bacalhau's wasm cancel code does not fit in 32 bits.
    let r: RunCommandResult = decode(json!({"ExitCode": 4294967295u64}));
    assert_eq!(r.exit_code, 4294967295);
    assert!(serde_json::from_value::<RunCommandResult>(json!([1])).is_err());
}

#[test]
fn resources_omit_zero_fields() {
    assert_eq!(encode(&Resources::default()), json!({}));
    assert_round_trip::<Resources>(json!({"CPU": 0.1, "Memory": 1024}));
    assert_round_trip::<Gpu>(
        json!({"Index": 0, "Name": "", "Vendor": "", "Memory": 0, "PCIAddress": ""}),
    );
}

#[test]
fn network_type_is_a_case_insensitive_string() {
    for (text, net) in [
        ("None", Network::None),
        ("none", Network::None),
        (" HTTP ", Network::Http),
        ("bridge", Network::Bridge),
        ("Full", Network::Full),
        ("default", Network::Default),
        ("HOST\n", Network::Host),
    ] {
        let cfg: NetworkConfig = decode(json!({"Type": text}));
        assert_eq!(cfg.network_type, net, "{text:?}");
    }
    let err = serde_json::from_value::<NetworkConfig>(json!({"Type": "Wifi"})).unwrap_err();
    assert!(
        err.to_string()
            .contains("models.Network: unknown type 'Wifi'"),
        "{err}"
    );
    assert!(serde_json::from_value::<NetworkConfig>(json!({"Type": 1})).is_err());

    assert_round_trip::<NetworkConfig>(json!({"Type": "None"}));
    assert_round_trip::<NetworkConfig>(
        json!({"Type": "HTTP", "Domains": ["example.com", ".github.com"]}),
    );
    let cfg: NetworkConfig = assert_round_trip(json!({
        "Type": "Bridge",
        "Ports": [{"Name": "http", "Static": 20001, "Target": 80, "HostNetwork": "127.0.0.1"}, {"Name": "x"}]
    }));
    assert_eq!(
        cfg.ports[1],
        Port {
            name: "x".into(),
            ..Default::default()
        }
    );
}

#[test]
fn storage_volume_keys_are_lower_case_and_type_is_a_number() {
    let go = json!({
        "InputSource": {"Source": null, "Alias": "", "Target": "/in"},
        "Volume": {"type": 1, "readOnly": false, "source": "/tmp/x", "target": "/in"}
    });
    let p: PreparedStorage = assert_round_trip(go);
    assert!(p.input_source.source.is_none());
    let empty: PreparedStorage = decode(json!({}));
    assert_eq!(
        encode(&empty),
        json!({"InputSource": {"Source": null, "Alias": "", "Target": ""},
               "Volume": {"type": 0, "readOnly": false, "source": "", "target": ""}})
    );
}

#[test]
fn spec_config_params_are_omitted_when_empty() {
    assert_round_trip::<SpecConfig>(json!({"Type": "native"}));
    let s: SpecConfig = decode(json!({"type": " Native ", "params": null}));
    assert!(s.is_type("native") && s.params.is_empty());
}

fn go_job() -> Value {
    json!({
        "ID": "j-1", "Name": "hello", "Namespace": "default", "Type": "batch", "Priority": 0,
        "Count": 1, "Constraints": [], "Meta": {"bacalhau.org/requester.id": "n"},
        "Labels": {"a": "b"}, "State": {"StateType": "Pending", "Message": ""},
        "Version": 0, "Revision": 1, "CreateTime": 1700000000, "ModifyTime": 1700000001,
        "Tasks": [{
            "Name": "main",
            "Engine": {"Type": "native", "Params": {"Entrypoint": ["/bin/true"]}},
            "Publisher": {"Type": "local"},
            "Env": {"A": "1"},
            "Meta": {"x": "y"},
            "InputSources": [{"Source": {"Type": "local", "Params": {"SourcePath": "/d"}}, "Alias": "", "Target": "/d"}],
            "ResultPaths": [{"Name": "out", "Path": "/out"}],
            "Resources": {"CPU": "500m", "Memory": "512Mb"},
            "Network": {"Type": "None"},
            "Timeouts": {"ExecutionTimeout": 600, "TotalTimeout": 1800}
        }]
    })
}

#[test]
fn bid_strategy_request_preserves_untyped_job_keys() {
    let req: BidStrategyRequest = assert_round_trip(json!({"Job": go_job()}));
    let task = req.job.task().unwrap();
    assert_eq!(task.resources.cpu, "500m");
    assert_eq!(task.timeouts.as_ref().unwrap().execution_timeout, 600);
    assert_eq!(task.extra["Publisher"], json!({"Type": "local"}));
    assert_eq!(req.job.extra["Labels"], json!({"a": "b"}));

    // Older Bacalhau sent NodeID and no tags; odd case still types the known keys.
    let old: BidStrategyRequest = decode(
        json!({"NodeID": "n-1", "job": {"id": "j", "tasks": [{"name": "t", "resources": {"gpu": "1"}}], "Meta": {}}}),
    );
    assert_eq!(old.node_id, "n-1");
    assert_eq!(old.job.id, "j");
    assert_eq!(old.job.task().unwrap().resources.gpu, "1");
    assert!(old.job.extra.contains_key("Meta"));
    assert_eq!(encode(&old)["NodeID"], "n-1");
}

#[test]
fn bid_strategy_response_texts() {
    let yes = BidStrategyResponse::new(true, "not place additional requirements on native jobs");
    assert_eq!(
        encode(&yes),
        json!({"ShouldBid": true, "Reason": "this node does not place additional requirements on native jobs"})
    );
    let no = BidStrategyResponse::new(false, "have cgroup memory limits");
    assert_eq!(no.reason, "this node does not have cgroup memory limits");
    // Bacalhau before v1.5.2 used lower-camel tags and ShouldWait.
    let old: BidStrategyResponse =
        decode(json!({"shouldBid": true, "shouldWait": true, "reason": "r"}));
    assert!(old.should_bid && old.should_wait);
    assert_eq!(encode(&old)["ShouldWait"], true);
}

#[test]
fn log_stream_request_round_trips() {
    assert_round_trip::<LogStreamRequest>(
        json!({"ExecutionID": "e", "Tail": true, "Follow": true, "Position": 4096}),
    );
    assert_round_trip::<LogStreamRequest>(
        json!({"ExecutionID": "e", "JobID": "j", "NodeID": "n", "Tail": false, "Follow": false}),
    );
    let r: LogStreamRequest = decode(json!({"executionId": "e", "follow": true}));
    assert!(r.follow && !r.tail && r.position.is_none());
}

#[test]
fn log_events_carry_exact_bytes() {
    let bytes = vec![0xff, 0xfe, b'\n', 0, 0xc3, 0x28, b'x'];
    let ev = LogEvent::data(
        LogStream::Stderr,
        "2024-01-02T03:04:05.123456789Z".into(),
        &bytes,
        10,
        17,
    );
    let wire = encode(&ev);
    assert_eq!(
        wire,
        json!({"type": "data", "stream": "stderr", "timestamp": "2024-01-02T03:04:05.123456789Z",
               "data": "//4KAMMoeA==", "offset": 10, "next": 17})
    );
    let back: LogEvent = decode(wire);
    assert_eq!(back.data_bytes(), &bytes[..]);
    assert_eq!(back, ev);

    let end: LogEvent = assert_round_trip(json!({"type": "end", "offset": 17}));
    assert!(matches!(end, LogEvent::End { offset: 17 }) && end.data_bytes().is_empty());
    assert_eq!(
        (LogStream::Stdout.as_u8(), LogStream::Stderr.as_u8()),
        (1, 2)
    );
}

#[test]
fn handshake_types_are_camel_case() {
    let p: InitializeParams = decode(json!({"protocolVersions": ["1"]}));
    assert_eq!(p.protocol_versions, vec!["1"]);
    assert_eq!(p.config, None);

    let p: InitializeParams = assert_round_trip(json!({
        "protocolVersions": ["1", "2"],
        "host": {"name": "bacalhau", "version": "v1.7.0"},
        "config": {"stateDir": "/var/lib/x", "retention": 3600.5, "maxRetained": 10,
                   "cgroupBase": "/sys/fs/cgroup/x", "runAsUser": "nobody", "defaultPidsMax": 512,
                   "nofileLimit": 1024, "allowListedLocalPaths": ["/data"], "gpuMode": "none"}
    }));
    assert_eq!(p.config.as_ref().unwrap().retention, Some(3600.5));
    assert_eq!(p.config.as_ref().unwrap().extra["gpuMode"], "none");
    // Our own messages are exact-case: a Go-style key is not ours, it is an engine extra.
    let p: InitializeParams = decode(json!({"protocolVersions": [], "config": {"StateDir": "/x"}}));
    let c = p.config.unwrap();
    assert!(c.state_dir.is_none() && c.extra.contains_key("StateDir"));

    let r = InitializeResult {
        protocol_version: PROTOCOL_VERSION.into(),
        engine: ENGINE_NATIVE.into(),
        plugin: PluginInfo {
            name: "executor-native".into(),
            version: "0.1.0".into(),
        },
        capabilities: Capabilities {
            cgroup_mode: CgroupMode::Hybrid,
            limits: EnforcedLimits {
                cpu: true,
                memory: true,
                pids: true,
                disk: false,
            },
            network_isolation: false,
            networks: vec![],
            filesystem_isolation: false,
            run_as_user: None,
            gpus: vec![],
            gpu_device_control: vec![executor_schema::GpuDeviceControl::DevicesCgroup],
            notes: vec!["disk limits are not enforced".into()],
        },
    };
    let wire = assert_round_trip::<InitializeResult>(encode(&r));
    assert_eq!(wire, r);
    assert_eq!(
        encode(&r)["capabilities"],
        json!({"cgroupMode": "hybrid", "limits": {"cpu": true, "memory": true, "pids": true, "disk": false},
               "networkIsolation": false, "filesystemIsolation": false, "gpus": [],
               "gpuDeviceControl": ["devicesCgroup"], "notes": ["disk limits are not enforced"]})
    );
    assert!(SUPPORTED_PROTOCOL_VERSIONS.contains(&PROTOCOL_VERSION));

    let s: ShutdownParams = decode(json!({}));
    assert!(!s.cancel_running);
    assert_round_trip::<ShutdownParams>(json!({"cancelRunning": true}));
}

#[test]
fn execution_summaries_and_stats() {
    let s: ExecutionSummary = assert_round_trip(json!({
        "executionId": "e", "jobId": "j", "state": "completed",
        "startedAt": "2024-01-02T03:04:05Z", "finishedAt": "2024-01-02T03:04:06Z", "exitCode": 0
    }));
    assert_eq!(s.state, ExecutionState::Completed);
    assert_round_trip::<ExecutionSummary>(
        json!({"executionId": "e", "jobId": "j", "state": "running"}),
    );
    let st: ExecutionStats = assert_round_trip(json!({
        "executionId": "e", "memoryCurrentBytes": 1, "memoryPeakBytes": 2, "cpuSeconds": 0.5,
        "pids": 3, "throttledPeriods": null, "throttledSeconds": null
    }));
    assert_eq!(st.throttled_periods, None);
}

/// Every key a fully populated value emits is one of its `JSON_KEYS`, and every `JSON_KEYS` entry
/// is emitted: the case-folding table cannot drift from the serde attributes.
#[test]
fn go_key_tables_match_the_encoders() {
    fn check<T: serde::Serialize>(value: &T, keys: &[&str]) {
        let wire = encode(value);
        let got: std::collections::BTreeSet<&str> = wire
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        let want: std::collections::BTreeSet<&str> = keys.iter().copied().collect();
        assert_eq!(got, want, "{wire}");
    }
    let mut full_req: RunCommandRequest = decode(go_request());
    full_req.execution_dir = "/x".into();
    full_req.env.insert("A".into(), "B".into());
    full_req.execution_timeout = Some(1.0);
    check(&full_req, RunCommandRequest::JSON_KEYS);
    check(&full_req.resources.clone().unwrap(), Resources::JSON_KEYS);
    check(&full_req.resources.clone().unwrap().gpus[0], Gpu::JSON_KEYS);
    check(&full_req.inputs[0], PreparedStorage::JSON_KEYS);
    check(&full_req.inputs[0].volume, StorageVolume::JSON_KEYS);
    check(&full_req.inputs[0].input_source, InputSource::JSON_KEYS);
    check(&full_req.output_limits, OutputLimits::JSON_KEYS);
    check(&RunCommandResult::default(), RunCommandResult::JSON_KEYS);
    check(&ResultPath::default(), ResultPath::JSON_KEYS);
    check(
        &decode::<SpecConfig>(json!({"Type": "x", "Params": {"a": 1}})),
        SpecConfig::JSON_KEYS,
    );
    check(
        &NetworkConfig {
            network_type: Network::Http,
            domains: vec!["a".into()],
            ports: vec![Port::default()],
        },
        NetworkConfig::JSON_KEYS,
    );
    check(
        &Port {
            name: "a".into(),
            static_port: 1,
            target: 2,
            host_network: "h".into(),
        },
        Port::JSON_KEYS,
    );
    let job: BidStrategyRequest = decode(
        json!({"NodeID": "n", "Job": {"ID": "j", "Namespace": "default", "Tasks": [{"Name": "t", "Env": {"a": "b"}, "InputSources": [{}], "ResultPaths": [{}], "Network": {"Type": "None"}}]}}),
    );
    check(&job, BidStrategyRequest::JSON_KEYS);
    check(&job.job, Job::JSON_KEYS);
    check(&job.job.tasks[0], Task::JSON_KEYS);
    check(
        &ResourcesConfig {
            cpu: "1".into(),
            memory: "1".into(),
            disk: "1".into(),
            gpu: "1".into(),
        },
        ResourcesConfig::JSON_KEYS,
    );
    check(
        &TimeoutConfig {
            execution_timeout: 1,
            queue_timeout: 1,
            total_timeout: 1,
        },
        TimeoutConfig::JSON_KEYS,
    );
    check(
        &BidStrategyResponse {
            should_bid: true,
            should_wait: true,
            reason: String::new(),
        },
        BidStrategyResponse::JSON_KEYS,
    );
    check(
        &LogStreamRequest {
            execution_id: "e".into(),
            job_id: "j".into(),
            node_id: "n".into(),
            tail: true,
            follow: true,
            position: Some(1),
        },
        LogStreamRequest::JSON_KEYS,
    );
    check(
        &NativeEngineSpec {
            entrypoint: vec!["a".into()],
            parameters: vec!["b".into()],
            environment_variables: vec!["c=d".into()],
            working_directory: "/w".into(),
        },
        NativeEngineSpec::JSON_KEYS,
    );
}

#[test]
fn unknown_keys_are_ignored_outside_job_and_task() {
    let mut go = go_request();
    let obj = go.as_object_mut().unwrap();
    obj.insert("FutureField".into(), json!({"x": 1}));
    obj.insert("Labels".into(), json!(["a"]));
    obj["Network"]
        .as_object_mut()
        .unwrap()
        .insert("Mode".into(), json!(7));
    let req: RunCommandRequest = decode(go);
    assert_eq!(
        encode(&req),
        go_request(),
        "unknown keys are dropped, not kept"
    );

    let r: RunCommandResult = decode(json!({"ExitCode": 3, "RunnerID": "x"}));
    assert_eq!(r.exit_code, 3);
    let v: StorageVolume = decode(json!({"type": 1, "Mode": "rw"}));
    assert_eq!(v.volume_type, StorageVolume::BIND);
}

#[test]
fn env_and_params_keys_keep_their_case_through_a_round_trip() {
    let mut go = go_request();
    go["Env"] = json!({"path": "a", "PATH": "b", "Path": "c"});
    go["EngineParams"]["Params"] = json!({"Entrypoint": ["/bin/x"], "entrypoint": ["/bin/y"]});
    let req: RunCommandRequest = assert_round_trip(go);
    assert_eq!(req.env.len(), 3, "{:?}", req.env);
    assert_eq!(req.engine_params.unwrap().params.len(), 2);
}

/// A `go_json!` type's key table (used for case folding) is exactly the property list of its
/// generated schema, which serde's attributes produce: adding a field without adding its key to
/// the table (so odd-case spellings of it would be dropped) fails here.
#[test]
fn go_key_tables_match_the_schema_properties() {
    let schemas = executor_schema::jsonschema::generate_all();
    let props = |name: &str| -> std::collections::BTreeSet<String> {
        let (_, schema) = schemas
            .iter()
            .find(|(n, _)| n == &format!("{name}.json"))
            .unwrap_or_else(|| panic!("no schema/json/{name}.json"));
        schema["properties"]
            .as_object()
            .unwrap_or_else(|| panic!("{name}.json has no properties"))
            .keys()
            .cloned()
            .collect()
    };
    let tables: [(&str, &[&str]); 19] = [
        ("RunCommandRequest", RunCommandRequest::JSON_KEYS),
        ("RunCommandResult", RunCommandResult::JSON_KEYS),
        ("Resources", Resources::JSON_KEYS),
        ("Gpu", Gpu::JSON_KEYS),
        ("NetworkConfig", NetworkConfig::JSON_KEYS),
        ("Port", Port::JSON_KEYS),
        ("ResultPath", ResultPath::JSON_KEYS),
        ("SpecConfig", SpecConfig::JSON_KEYS),
        ("InputSource", InputSource::JSON_KEYS),
        ("PreparedStorage", PreparedStorage::JSON_KEYS),
        ("StorageVolume", StorageVolume::JSON_KEYS),
        ("OutputLimits", OutputLimits::JSON_KEYS),
        ("LogStreamRequest", LogStreamRequest::JSON_KEYS),
        ("ResourcesConfig", ResourcesConfig::JSON_KEYS),
        ("TimeoutConfig", TimeoutConfig::JSON_KEYS),
        ("Task", Task::JSON_KEYS),
        ("Job", Job::JSON_KEYS),
        ("BidStrategyRequest", BidStrategyRequest::JSON_KEYS),
        ("BidStrategyResponse", BidStrategyResponse::JSON_KEYS),
    ];
    for (name, keys) in tables {
        let want: std::collections::BTreeSet<String> = keys.iter().map(|k| k.to_string()).collect();
        assert_eq!(want.len(), keys.len(), "{name}: a key is listed twice");
        assert_eq!(
            props(name),
            want,
            "{name}::JSON_KEYS vs schema/json/{name}.json"
        );
    }
    let native: std::collections::BTreeSet<String> = NativeEngineSpec::JSON_KEYS
        .iter()
        .map(|k| k.to_string())
        .collect();
    assert_eq!(props("NativeEngineSpec"), native);
}
