use super::*;

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
