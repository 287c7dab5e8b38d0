use super::*;

#[test]
fn resolves_like_execvp() {
    assert_eq!(
        resolve_program("sh", DEFAULT_PATH)
            .unwrap()
            .file_name()
            .unwrap(),
        "sh"
    );
    let err = resolve_program("no-such-program-xyz", DEFAULT_PATH).unwrap_err();
    assert!(
        err.contains("no-such-program-xyz") && err.contains("not found"),
        "{err}"
    );
    let err = resolve_program("/etc/passwd", DEFAULT_PATH).unwrap_err();
    assert!(err.contains("permission denied"), "{err}");
    let err = resolve_program("/nonexistent/x", DEFAULT_PATH).unwrap_err();
    assert!(err.contains("no such file"), "{err}");
    let err = resolve_program("/tmp", DEFAULT_PATH).unwrap_err();
    assert!(err.contains("directory"), "{err}");
}

#[test]
fn later_env_entries_win_and_path_has_a_default() {
    let spec = MonitorSpec {
        execution_id: "e".into(),
        job_id: "j".into(),
        argv: vec!["true".into()],
        env: vec![
            ("A".into(), "request".into()),
            ("B".into(), "b".into()),
            ("A".into(), "engine".into()),
        ],
        working_dir: None,
        results_dir: "/nonexistent".into(),
        output_names: vec![],
        log_path: "/nonexistent/log".into(),
        limits: Default::default(),
        timeout_secs: None,
        kill_grace_ms: 2000,
        sandbox: Default::default(),
    };
    let env = job_env(&spec);
    assert_eq!(
        env,
        vec![
            ("PATH".into(), DEFAULT_PATH.into()),
            ("A".into(), "engine".into()),
            ("B".into(), "b".into())
        ]
    );
}
