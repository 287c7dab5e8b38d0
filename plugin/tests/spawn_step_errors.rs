//! A step between fork and exec that fails for real (a bind source gone, a cgroup removed) is a
//! setup error naming the step, never "cannot execute the program"; a program that really cannot
//! be executed still is the job's outcome. (ENOEXEC cannot be shown: execvp runs such a file
//! with /bin/sh.)

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use executor_plugin::monitor::host_sandbox::HostSandbox;
use executor_plugin::monitor::spawn::{spawn_job, JobSandbox, SpawnError};
use executor_plugin::registry::{build_spec, InputSpec, SpecInput};
use executor_plugin::sandbox::cgroup::{CgroupConfig, CgroupManager, Mode};
use executor_plugin::state::ExecDir;

fn job(id: &str, tmp: &Path, program: &str) -> SpecInput {
    SpecInput {
        execution_id: format!("step-{}-{id}", std::process::id()),
        job_id: "j".into(),
        entrypoint: vec![program.into()],
        parameters: vec![],
        execution_dir: Some(tmp.join(format!("exec-{id}"))),
        ..SpecInput::default()
    }
}

fn spawn_error(input: SpecInput, state: &Path, between: impl FnOnce(&HostSandbox)) -> SpawnError {
    let spec = build_spec(state, input).unwrap();
    // The monitor runs in the execution's state directory, which the plugin made.
    std::fs::create_dir_all(ExecDir::new(state, &spec.execution_id).dir).unwrap();
    let mut sandbox = HostSandbox::new();
    let results = executor_plugin::monitor::open_results(&spec).unwrap();
    sandbox.prepare(&spec, &results).unwrap();
    between(&sandbox);
    let err = spawn_job(&spec, &mut sandbox).expect_err("the job must not start");
    sandbox.cleanup();
    err
}

#[test]
fn a_bind_source_gone_before_spawn_names_the_mount() {
    if common::skip_unless_mounts("a_bind_source_gone_before_spawn_names_the_mount") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let data = tmp.path().join("data");
    std::fs::create_dir(&data).unwrap();
    let mut input = job("gone", tmp.path(), "true");
    input.isolate_filesystem = true;
    input.inputs = vec![InputSpec {
        source: data.clone(),
        target: "/data".into(),
        read_only: true,
        local: false,
    }];
    let err = spawn_error(input, &tmp.path().join("state"), |_| {
        std::fs::remove_dir(&data).unwrap();
    });
    let SpawnError::Step(msg) = &err else {
        panic!("expected a step error, got {err:?}");
    };
    assert!(
        msg.starts_with("setting up the job's private root: mount ")
            && msg.contains(&data.display().to_string())
            && msg.contains("No such file or directory"),
        "{msg}"
    );
    assert!(err.to_string().contains("before exec"), "{err}");
}

#[test]
fn a_cgroup_removed_before_spawn_names_the_join() {
    if common::skip_unless_root("a_cgroup_removed_before_spawn_names_the_join") {
        return;
    }
    let m = CgroupManager::detect(&CgroupConfig::default()).unwrap();
    if m.mode() == Mode::None {
        eprintln!("skipped: no usable cgroups");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let input = job("cg", tmp.path(), "true");
    let err = spawn_error(input, &tmp.path().join("state"), |sandbox| {
        for dir in sandbox.cgroup_record().unwrap().dirs {
            std::fs::remove_dir(&dir.path).unwrap();
        }
    });
    let SpawnError::Step(msg) = &err else {
        panic!("expected a step error, got {err:?}");
    };
    assert!(msg.starts_with("joining the job's cgroup: "), "{msg}");
}

#[test]
fn a_program_the_job_may_not_execute_stays_an_exec_error() {
    if common::skip_unless_root("a_program_the_job_may_not_execute_stays_an_exec_error") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    // Executable for its owner (root) only: the job, switched to an unprivileged user after
    // every sandbox step succeeded, gets EACCES from execve.
    let prog = tmp.path().join("root-only");
    std::fs::write(&prog, "#!/bin/sh\ntrue\n").unwrap();
    std::fs::set_permissions(&prog, std::fs::Permissions::from_mode(0o700)).unwrap();
    let input = job("eacces", tmp.path(), &prog.display().to_string());
    let err = spawn_error(input, &tmp.path().join("state"), |_| {});
    let SpawnError::Exec(msg) = &err else {
        panic!("expected an exec error, got {err:?}");
    };
    assert!(msg.contains("permission denied"), "{msg}");
}
