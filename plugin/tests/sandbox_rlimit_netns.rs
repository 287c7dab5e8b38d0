//! rlimits, `no_new_privs` and the private network namespace, applied in `pre_exec` of real
//! processes.

mod common;

use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};

use executor_plugin::sandbox::netns;
use executor_plugin::sandbox::rlimit::{RlimitConfig, RlimitError, RlimitPlan};
use nix::sys::resource::{getrlimit, Resource};

fn run_with(
    script: &str,
    pre: impl FnMut() -> std::io::Result<()> + Send + Sync + 'static,
) -> String {
    let mut cmd = Command::new("sh");
    cmd.arg("-c").arg(script).stdin(Stdio::null());
    // SAFETY: the hooks under test make only system calls.
    unsafe {
        cmd.pre_exec(pre);
    }
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{script}: {:?} {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn job_gets_no_core_dumps_capped_nofile_and_no_new_privs() {
    let plan = RlimitPlan::new(&RlimitConfig {
        nofile: 1000,
        ..RlimitConfig::default()
    })
    .unwrap();
    let out = run_with(
        "ulimit -c; ulimit -n; grep NoNewPrivs /proc/self/status; ulimit -v",
        move || plan.apply(),
    );
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "0", "{out}");
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    assert_eq!(lines[1], 1000u64.min(hard).to_string(), "{out}");
    assert_eq!(lines[2].split_whitespace().last(), Some("1"), "{out}");
    // No address-space limit by default: JVMs and Go reserve huge virtual ranges.
    assert_eq!(lines[3], "unlimited", "{out}");
}

#[test]
fn nofile_is_capped_at_the_hard_limit_and_as_is_opt_in() {
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    let plan = RlimitPlan::new(&RlimitConfig {
        nofile: u64::MAX,
        address_space: Some(1 << 40),
        no_new_privs: false,
    })
    .unwrap();
    let nofile = plan
        .limits()
        .iter()
        .find(|l| l.resource == Resource::RLIMIT_NOFILE)
        .unwrap();
    assert_eq!((nofile.soft, nofile.hard), (hard, hard));
    let out = run_with("ulimit -v; grep NoNewPrivs /proc/self/status", move || {
        plan.apply()
    });
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], ((1u64 << 40) / 1024).to_string(), "{out}");
    assert_eq!(lines[1].split_whitespace().last(), Some("0"), "{out}");

    assert!(matches!(
        RlimitPlan::new(&RlimitConfig {
            nofile: 0,
            ..RlimitConfig::default()
        }),
        Err(RlimitError::Invalid { .. })
    ));
}

#[test]
fn no_new_privs_stops_setuid_from_granting_root() {
    if common::skip_unless_root("setuid check") {
        return;
    }
    // A setuid-root copy of `id`, run as nobody: with no_new_privs it reports euid 65534.
    let dir = tempfile::TempDir::new().unwrap();
    let id = dir.path().join("id");
    let Some(src) = ["/usr/bin/id", "/bin/id"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
    else {
        eprintln!("skipping setuid check: no id binary");
        return;
    };
    std::fs::copy(src, &id).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&id, std::fs::Permissions::from_mode(0o4755)).unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();

    let euid_as_nobody = |nnp: bool| {
        let plan = RlimitPlan::new(&RlimitConfig {
            no_new_privs: nnp,
            ..RlimitConfig::default()
        })
        .unwrap();
        let mut cmd = Command::new(&id);
        cmd.arg("-u").uid(65534).gid(65534);
        // SAFETY: apply makes only system calls.
        unsafe {
            cmd.pre_exec(move || plan.apply());
        }
        // Just written: another test's fork may briefly hold it open for writing (ETXTBSY).
        let mut tries = 0;
        let out = loop {
            match cmd.output() {
                Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) && tries < 50 => {
                    tries += 1;
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                other => break other.unwrap(),
            }
        };
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    };
    let without = euid_as_nobody(false);
    if without != "0" {
        eprintln!(
            "skipping setuid check: setuid has no effect here (nosuid mount?): euid {without}"
        );
        return;
    }
    assert_eq!(euid_as_nobody(true), "65534");
}

#[test]
fn network_none_sees_only_a_working_loopback() {
    if !netns::supported() {
        eprintln!("skipping netns: needs root");
        return;
    }
    let out = run_with("cat /proc/net/dev", netns::enter_isolated_network);
    let ifaces: Vec<&str> = out
        .lines()
        .skip(2)
        .filter_map(|l| l.split(':').next())
        .map(str::trim)
        .collect();
    assert_eq!(ifaces, vec!["lo"], "{out}");

    // Loopback is up: a TCP connection to 127.0.0.1 inside the namespace works.
    if Command::new("python3").arg("-V").output().is_ok() {
        let out = run_with(
            "exec python3 -c 'import socket; s = socket.socket(); s.bind((\"127.0.0.1\", 0)); \
             s.listen(); c = socket.create_connection(s.getsockname()); print(\"connected\")'",
            netns::enter_isolated_network,
        );
        assert_eq!(out.trim(), "connected");
    } else {
        eprintln!("no python3: loopback connect not checked");
    }

    // Without the step the job sees the host's interfaces.
    let host = run_with("cat /proc/net/dev", || Ok(()));
    assert!(host.lines().skip(2).count() >= 1);
    let host_ifaces = host.lines().skip(2).count();
    if host_ifaces > 1 {
        assert_ne!(host_ifaces, ifaces.len());
    }
}
