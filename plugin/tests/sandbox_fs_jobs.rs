//! Jobs in their private root as an unprivileged user, through the registry and the real
//! `executor-native` monitor: inputs read-only at their targets, outputs at their `Path`, the
//! working directory, the state root hidden, the configured user, no way back to root, the
//! allow-list, and the refusals of a host without filesystem isolation.

mod common;

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use executor_plugin::registry::{
    build_spec, InputSpec, OutputSpec, Registry, RegistryConfig, SpecInput,
};
use executor_plugin::state::{ExecDir, ResultRecord};
use executor_schema::ErrorCode;

const EXE: &str = env!("CARGO_BIN_EXE_executor-native");

struct Env {
    tmp: tempfile::TempDir,
    state: PathBuf,
    reg: Arc<Registry>,
}

impl Env {
    async fn new() -> Env {
        let tmp = tempfile::tempdir().unwrap();
        // Bind sources must be reachable for the job's user once mounted; the tree above them
        // need not be (it stays outside the job's root).
        let state = tmp.path().join("state");
        let reg = Registry::open(RegistryConfig::new(&state, EXE))
            .await
            .unwrap();
        fs::write(state.join("marker-secret"), "state").unwrap();
        Env { tmp, state, reg }
    }

    /// A directory with `f` holding `data`, world-readable.
    fn input_dir(&self, name: &str, data: &str) -> PathBuf {
        let d = self.tmp.path().join(name);
        fs::create_dir_all(&d).unwrap();
        fs::write(d.join("f"), data).unwrap();
        fs::set_permissions(&d, fs::Permissions::from_mode(0o755)).unwrap();
        d
    }

    fn results(&self, id: &str) -> PathBuf {
        ExecDir::new(&self.state, id).dir.join("results")
    }

    async fn run(&self, input: SpecInput) -> ResultRecord {
        let id = input.execution_id.clone();
        let spec = build_spec(&self.state, input).unwrap();
        self.reg
            .start_spec(serde_json::Value::Null, spec)
            .await
            .unwrap();
        let r = tokio::time::timeout(Duration::from_secs(60), self.reg.wait_record(&id))
            .await
            .expect("no result within 60 s")
            .unwrap();
        (*r).clone()
    }
}

fn job(id: &str, script: &str) -> SpecInput {
    SpecInput {
        execution_id: id.into(),
        job_id: format!("job-{id}"),
        entrypoint: vec!["sh".into(), "-c".into()],
        parameters: vec![script.into()],
        isolate_filesystem: true,
        ..SpecInput::default()
    }
}

fn ok(r: &ResultRecord) -> &str {
    assert_eq!(
        (r.result.exit_code, r.result.error_msg.as_str()),
        (0, ""),
        "stdout: {}\nstderr: {}",
        r.result.stdout,
        r.result.stderr
    );
    &r.result.stdout
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inputs_outputs_workdir_user_and_hidden_state() {
    if common::skip_unless_mounts("inputs_outputs_workdir_user_and_hidden_state") {
        return;
    }
    let e = Env::new().await;
    let ro = e.input_dir("ro-in", "read me\n");
    let rw = e.input_dir("rw-in", "");
    fs::set_permissions(&rw, fs::Permissions::from_mode(0o777)).unwrap();
    let script = format!(
        "id -u; id -g; echo HOME=$HOME USER=$USER; pwd; cat /data/ro/f; \
         if echo x > /data/ro/f 2>/dev/null || touch /data/ro/new 2>/dev/null; \
           then echo ro-writable; else echo ro-refused; fi; \
         echo rw > /data/rw/written && echo rw-ok; \
         echo result > out.txt && echo nested > /outputs/other/deep.txt; \
         for p in {state} {marker} {tmp}; do test -e $p && echo visible:$p; done; \
         touch /new-at-root 2>/dev/null && echo root-writable; \
         echo scratch > /tmp/t && cat /tmp/t",
        state = e.state.display(),
        marker = e.state.join("marker-secret").display(),
        tmp = e.tmp.path().display(),
    );
    let mut i = job("fs-1", &script);
    i.working_dir = Some("/outputs/main".into());
    i.inputs = vec![
        InputSpec {
            source: ro.clone(),
            target: "/data/ro".into(),
            read_only: true,
            local: false,
        },
        InputSpec {
            source: rw.clone(),
            target: "/data/rw".into(),
            read_only: false,
            local: false,
        },
    ];
    i.outputs = vec![
        OutputSpec {
            name: "main".into(),
            path: "/outputs/main".into(),
        },
        OutputSpec {
            name: "other".into(),
            path: "/outputs/other".into(),
        },
    ];
    i.run_as_user = Some("12345:23456".into());
    let r = e.run(i).await;
    let out = ok(&r);
    assert_eq!(
        out,
        "12345\n23456\nHOME=/tmp USER=12345\n/outputs/main\nread me\nro-refused\nrw-ok\nscratch\n",
        "stderr: {}",
        r.result.stderr
    );
    let results = e.results("fs-1");
    assert_eq!(
        fs::read_to_string(results.join("main/out.txt")).unwrap(),
        "result\n"
    );
    assert_eq!(
        fs::read_to_string(results.join("other/deep.txt")).unwrap(),
        "nested\n"
    );
    assert_eq!(fs::read_to_string(ro.join("f")).unwrap(), "read me\n");
    assert_eq!(fs::read_to_string(rw.join("written")).unwrap(), "rw\n");
    let meta = fs::metadata(results.join("main/out.txt")).unwrap();
    assert_eq!((meta.uid(), meta.gid()), (12345, 23456));
    // Outputs belong to the job's user; the results directory (where the monitor writes
    // `exitCode` by path) does not.
    assert_eq!(fs::metadata(results.join("other")).unwrap().uid(), 12345);
    assert_eq!(fs::metadata(&results).unwrap().uid(), 0);
    assert_eq!(fs::read_to_string(results.join("stdout")).unwrap(), out);
    // The job's root is gone with the job.
    assert!(!ExecDir::new(&e.state, "fs-1").dir.join("root").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_user_cannot_regain_root_through_a_setuid_binary() {
    if common::skip_unless_mounts("default_user_cannot_regain_root_through_a_setuid_binary") {
        return;
    }
    let e = Env::new().await;
    let bin = e.input_dir("bin", "");
    // A setuid-root copy of `id`: without no_new_privs (and nosuid) it would report euid 0.
    let id_path = ["/usr/bin/id", "/bin/id"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .expect("id");
    fs::copy(id_path, bin.join("suid-id")).unwrap();
    fs::set_permissions(bin.join("suid-id"), fs::Permissions::from_mode(0o4755)).unwrap();
    let nobody = executor_plugin::sandbox::user::UserPlan::default_unprivileged().unwrap();
    let mut i = job(
        "fs-2",
        "/opt/bin/suid-id -u; grep -E '^(NoNewPrivs|CapEff)' /proc/self/status | tr -s '\\t ' ' '",
    );
    i.inputs = vec![InputSpec {
        source: bin,
        target: "/opt/bin".into(),
        read_only: true,
        local: false,
    }];
    let r = e.run(i).await;
    assert_eq!(
        ok(&r),
        format!("{}\nCapEff: 0000000000000000\nNoNewPrivs: 1\n", nobody.uid)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_program_from_an_input_runs_and_one_outside_the_root_is_not_found() {
    if common::skip_unless_mounts(
        "a_program_from_an_input_runs_and_one_outside_the_root_is_not_found",
    ) {
        return;
    }
    let e = Env::new().await;
    let tools = e.input_dir("tools", "");
    fs::write(tools.join("hello.sh"), "#!/bin/sh\necho hello from $0\n").unwrap();
    fs::set_permissions(tools.join("hello.sh"), fs::Permissions::from_mode(0o755)).unwrap();
    let mut i = job("fs-3", "");
    i.entrypoint = vec!["/tools/hello.sh".into()];
    i.parameters = vec![];
    i.inputs = vec![InputSpec {
        source: tools.clone(),
        target: "/tools".into(),
        read_only: true,
        local: false,
    }];
    let r = e.run(i.clone()).await;
    assert_eq!(ok(&r), "hello from /tools/hello.sh\n");

    // On the host, but not in the job's root.
    i.execution_id = "fs-3b".into();
    i.entrypoint = vec![tools.join("hello.sh").display().to_string()];
    let r = e.run(i).await;
    assert_eq!(r.result.exit_code, -1, "{r:?}");
    assert!(
        r.result.error_msg.contains("no such file"),
        "{}",
        r.result.error_msg
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_inputs_must_be_allow_listed() {
    if common::skip_unless_mounts("local_inputs_must_be_allow_listed") {
        return;
    }
    let e = Env::new().await;
    let allowed = e.input_dir("allowed", "ok\n");
    let other = e.input_dir("other", "secret\n");
    let local = |source: &Path, read_only: bool| InputSpec {
        source: source.to_owned(),
        target: "/in".into(),
        read_only,
        local: true,
    };
    let mut i = job("fs-4", "cat /in/f");
    i.allow_listed_local_paths = vec![allowed.clone()];

    i.inputs = vec![local(&other, true)];
    let err = build_spec(&e.state, i.clone()).unwrap_err();
    assert_eq!(err.code, ErrorCode::InvalidParams, "{err:?}");
    assert!(
        err.message.contains("Inputs[0]") && err.message.contains("not allow-listed"),
        "{}",
        err.message
    );
    assert!(
        err.message.contains(&allowed.display().to_string()),
        "{}",
        err.message
    );

    // Writable use needs a `:rw` entry.
    i.inputs = vec![local(&allowed, false)];
    let err = build_spec(&e.state, i.clone()).unwrap_err();
    assert!(err.message.contains("read-only"), "{}", err.message);

    // No list: no local input at all; an input the host staged itself is not checked.
    let mut none = i.clone();
    none.allow_listed_local_paths = vec![];
    none.inputs = vec![local(&allowed, true)];
    assert_eq!(
        build_spec(&e.state, none.clone()).unwrap_err().code,
        ErrorCode::InvalidParams
    );
    none.inputs[0].local = false;
    assert!(build_spec(&e.state, none).is_ok());

    i.inputs = vec![local(&allowed, true)];
    let r = e.run(i).await;
    assert_eq!(ok(&r), "ok\n");
}

#[test]
fn without_isolation_mounts_are_refused_and_matching_paths_accepted() {
    let state = Path::new("/state");
    let base = SpecInput {
        execution_id: "e".into(),
        entrypoint: vec!["true".into()],
        results_dir: Some("/r".into()),
        isolate_filesystem: false,
        ..SpecInput::default()
    };
    let refused = |i: SpecInput| {
        let err = build_spec(state, i).unwrap_err();
        assert_eq!(err.code, ErrorCode::Unsupported, "{err:?}");
        assert!(
            err.message.contains("no filesystem isolation"),
            "{}",
            err.message
        );
    };
    let output = |path: &str| OutputSpec {
        name: "out".into(),
        path: path.into(),
    };
    let input = |source: &str, target: &str, read_only: bool| InputSpec {
        source: source.into(),
        target: target.into(),
        read_only,
        local: false,
    };
    refused(SpecInput {
        outputs: vec![output("/outputs")],
        ..base.clone()
    });
    refused(SpecInput {
        inputs: vec![input("/a", "/b", false)],
        ..base.clone()
    });
    refused(SpecInput {
        inputs: vec![input("/a", "/a", true)],
        ..base.clone()
    });
    let s = build_spec(
        state,
        SpecInput {
            outputs: vec![output("/r/out")],
            inputs: vec![input("/a", "/a", false)],
            ..base
        },
    )
    .unwrap();
    assert!(s.sandbox.filesystem.is_none());
    assert_eq!(s.output_names, ["out"]);
    assert_eq!(s.sandbox.run_as.is_some(), nix::unistd::geteuid().is_root());
}

#[test]
fn a_root_run_as_user_is_refused() {
    if common::skip_unless_root("a_root_run_as_user_is_refused") {
        return;
    }
    for user in ["root", "0", "0:0"] {
        let err = build_spec(
            Path::new("/state"),
            SpecInput {
                execution_id: "e".into(),
                entrypoint: vec!["true".into()],
                run_as_user: Some(user.into()),
                ..SpecInput::default()
            },
        )
        .unwrap_err();
        assert_eq!(err.code, ErrorCode::InvalidParams, "{user}: {err:?}");
        assert!(err.message.contains("config.runAsUser"), "{}", err.message);
    }
}
