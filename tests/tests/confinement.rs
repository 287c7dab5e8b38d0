//! Issue 12, items 2 and 6: what a job can reach of the kernel. Jobs get a session keyring of
//! their own (no key of the host's, none of another job's) and run under a system-call filter
//! that refuses new namespaces, the keyrings and other kernel attack surface, while ordinary
//! programs (threads, fork, subprocesses) still work.

use std::path::Path;
use std::time::Duration;

use executor_tests::RawPlugin;
use serde_json::{json, Value};

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

fn request(results: &Path, exec: &str, argv: &[&str], env: Value) -> Value {
    json!({
        "JobID": "j-proc", "ExecutionID": exec, "ResultsDir": results.join(exec),
        "EngineParams": {"Type": "native", "Params": {"Entrypoint": argv}},
        "Env": env,
    })
}

/// Runs `argv` to completion; its stdout.
fn run(
    p: &mut RawPlugin,
    id: u64,
    results: &Path,
    exec: &str,
    argv: &[&str],
    env: Value,
) -> String {
    let r = p.call(
        id,
        "executor_run",
        json!([request(results, exec, argv, env)]),
    );
    assert_eq!(r["result"]["ErrorMsg"], "", "{r}");
    assert_eq!(r["result"]["ExitCode"], 0, "{r}");
    std::fs::read_to_string(results.join(exec).join("stdout")).unwrap()
}

/// The system-call numbers the probes use, for the job's python.
const PY_PRELUDE: &str = r#"
import ctypes, json, os, platform
libc = ctypes.CDLL(None, use_errno=True)
NR = {
    "x86_64": dict(keyctl=250, add_key=248, unshare=272, clone3=435, userfaultfd=323, io_uring_setup=425, openat2=437),
    "aarch64": dict(keyctl=219, add_key=217, unshare=97, clone3=435, userfaultfd=282, io_uring_setup=425, openat2=437),
}[platform.machine()]
def call(name, *args):
    ctypes.set_errno(0)
    rc = libc.syscall(ctypes.c_long(NR[name]), *[a if isinstance(a, (bytes, ctypes.Array)) else ctypes.c_long(a) for a in args])
    return rc, (ctypes.get_errno() if rc < 0 else 0)
SESSION = -3
"#;

fn python_job(body: &str) -> Vec<String> {
    vec![
        "python3".into(),
        "-c".into(),
        format!("{PY_PRELUDE}\n{body}"),
    ]
}

/// Adds a `user` key to this thread's session keyring (a fresh one, so no other test sees it);
/// `None` where this kernel or a filter of ours refuses keyrings.
fn host_key(description: &str, payload: &[u8]) -> Option<i64> {
    use std::ffi::CString;
    // SAFETY: keyctl with a null name; add_key with NUL-terminated strings and a buffer of the
    // given length, all alive for the calls.
    unsafe {
        if libc::syscall(
            libc::SYS_keyctl,
            libc::KEYCTL_JOIN_SESSION_KEYRING as libc::c_long,
            std::ptr::null::<libc::c_char>(),
        ) < 0
        {
            eprintln!(
                "skipped: keyrings are not available here: {}",
                std::io::Error::last_os_error()
            );
            return None;
        }
        let ty = CString::new("user").unwrap();
        let desc = CString::new(description).unwrap();
        let id = libc::syscall(
            libc::SYS_add_key,
            ty.as_ptr(),
            desc.as_ptr(),
            payload.as_ptr(),
            payload.len(),
            libc::KEY_SPEC_SESSION_KEYRING as libc::c_long,
        );
        if id < 0 {
            eprintln!(
                "skipped: cannot add a key: {}",
                std::io::Error::last_os_error()
            );
            return None;
        }
        Some(id)
    }
}

#[test]
fn a_job_sees_no_key_of_the_host_and_none_of_another_job() {
    if !is_root() {
        eprintln!("skipped: needs root (jobs run as their own user)");
        return;
    }
    let desc = format!("proc-host-secret-{}", std::process::id());
    let planted = format!("proc-planted-{}", std::process::id());
    let Some(key) = host_key(&desc, b"s3cret-payload") else {
        return;
    };
    // The probe can see a key: ours, from this thread, which the plugin below inherits.
    let ours = std::fs::read_to_string("/proc/keys").unwrap();
    assert!(ours.contains(&desc), "the probe cannot see keys: {ours}");

    let state = tempfile::tempdir().unwrap();
    let results = tempfile::tempdir().unwrap();
    let mut p = RawPlugin::spawn();
    p.initialize(state.path());

    // Job A: look for the host's key, read it by id, plant one of its own.
    let body = r#"
buf = ctypes.create_string_buffer(256)
read = call("keyctl", 11, int(os.environ["KEY"]), buf, 256)
plant = call("add_key", b"user", os.environ["PLANT"].encode(), b"x", 1, SESSION)
seen = os.environ["DESC"] in open("/proc/keys").read()
print(json.dumps({"read": read, "payload": buf.value.decode(errors="replace"), "plant": plant, "seen": seen}))
"#;
    let argv = python_job(body);
    let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
    let env = json!({"KEY": key.to_string(), "PLANT": planted, "DESC": desc});
    let out = run(&mut p, 1, results.path(), "proc-keys-a", &argv, env);
    let a: Value = serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{out:?}: {e}"));
    assert_eq!(a["seen"], false, "the job sees the host's key: {a}");
    assert!(
        a["read"][0].as_i64().unwrap() < 0 && !a["payload"].as_str().unwrap().contains("s3cret"),
        "the job read the host's key: {a}"
    );
    assert!(
        a["plant"][0].as_i64().unwrap() < 0,
        "the job added a key: {a}"
    );

    // Jobs B and C (started from a spare monitor and a job root made ahead, where the first
    // one had neither): nothing of A's in their keyrings, nothing of the host's.
    for (id, exec) in [(2, "proc-keys-b"), (3, "proc-keys-c")] {
        let out = run(
            &mut p,
            id,
            results.path(),
            exec,
            &[
                "sh",
                "-c",
                "grep -c -e \"$PLANT\" -e \"$DESC\" /proc/keys || true",
            ],
            json!({"PLANT": planted, "DESC": desc}),
        );
        assert_eq!(out.trim(), "0", "{exec} sees job A's key or the host's");
    }
    p.call(4, "shutdown", json!([]));
    p.wait_exit(Duration::from_secs(10));
}

#[test]
fn the_filter_refuses_namespaces_keyrings_and_kernel_surface_and_programs_still_work() {
    let state = tempfile::tempdir().unwrap();
    let results = tempfile::tempdir().unwrap();
    let mut p = RawPlugin::spawn();
    p.initialize(state.path());
    let body = r#"
import subprocess, threading
out = {}
out["keyctl"] = call("keyctl", 0, SESSION, 0)
out["add_key"] = call("add_key", b"user", b"proc-filter-probe", b"x", 1, SESSION)
out["unshare_user"] = call("unshare", 0x10000000)
out["unshare_net"] = call("unshare", 0x40000000)
args = ctypes.create_string_buffer(64)
ctypes.c_uint64.from_buffer(args, 32).value = 17  # exit_signal = SIGCHLD
rc, err = call("clone3", args, 64)
if rc == 0:
    os._exit(0)
if rc > 0:
    os.waitpid(rc, 0)
out["clone3"] = [rc, err]
out["userfaultfd"] = call("userfaultfd", 1)
params = ctypes.create_string_buffer(120)
out["io_uring"] = call("io_uring_setup", 1, params)
# No setuid or setgid mode, by any of the calls that set one; openat2 hides its mode.
def errno_of(f):
    try:
        f()
        return 0
    except OSError as e:
        return e.errno
open("/tmp/f", "w").close()
os.mkdir("/tmp/d")
out["chmod_suid"] = errno_of(lambda: os.chmod("/tmp/f", 0o4755))
out["chmod_sgid_dir"] = errno_of(lambda: os.chmod("/tmp/d", 0o2775))
out["open_suid"] = errno_of(lambda: os.open("/tmp/g", os.O_CREAT | os.O_WRONLY, 0o6755))
out["mknod_suid"] = errno_of(lambda: os.mknod("/tmp/h", 0o100000 | 0o4755))
how = ctypes.create_string_buffer(24)
out["openat2"] = call("openat2", -100, b"/tmp/f", how, 24)
# Ordinary modes still work.
out["chmod_plain"] = errno_of(lambda: (os.chmod("/tmp/f", 0o755), os.chmod("/tmp/d", 0o1777)))
# Ordinary work: threads (glibc tries clone3 first), fork, a subprocess, a pipe.
t = threading.Thread(target=lambda: out.__setitem__("thread", True)); t.start(); t.join()
pid = os.fork()
if pid == 0:
    os._exit(7)
out["fork"] = os.WEXITSTATUS(os.waitpid(pid, 0)[1])
out["subprocess"] = subprocess.run(["sh", "-c", "echo hi | tr h H"], capture_output=True, text=True).stdout
print(json.dumps(out))
"#;
    let argv = python_job(body);
    let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
    let out = run(&mut p, 1, results.path(), "proc-filter", &argv, json!({}));
    let o: Value = serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{out:?}: {e}"));
    let errno = |k: &str| (o[k][0].as_i64().unwrap(), o[k][1].as_i64().unwrap());
    let eperm = (-1, libc::EPERM as i64);
    for k in [
        "keyctl",
        "add_key",
        "unshare_user",
        "unshare_net",
        "userfaultfd",
        "io_uring",
    ] {
        assert_eq!(errno(k), eperm, "{k}: {o}");
    }
    assert_eq!(errno("clone3"), (-1, libc::ENOSYS as i64), "{o}");
    assert_eq!(errno("openat2"), (-1, libc::ENOSYS as i64), "{o}");
    for k in ["chmod_suid", "chmod_sgid_dir", "open_suid", "mknod_suid"] {
        assert_eq!(o[k], libc::EPERM, "{k}: {o}");
    }
    assert_eq!(o["chmod_plain"], 0, "{o}");
    assert_eq!(o["thread"], true, "{o}");
    assert_eq!(o["fork"], 7, "{o}");
    assert_eq!(o["subprocess"], "Hi\n", "{o}");

    // The util-linux tool, where installed, says why.
    if Path::new("/usr/bin/unshare").exists() {
        let r = p.call(
            2,
            "executor_run",
            json!([request(
                results.path(),
                "proc-unshare",
                &["unshare", "-U", "true"],
                json!({})
            )]),
        );
        assert_ne!(r["result"]["ExitCode"], 0, "{r}");
        let stderr = r["result"]["stderr"].as_str().unwrap();
        assert!(stderr.contains("Operation not permitted"), "{r}");
    }
    p.call(3, "shutdown", json!([]));
    p.wait_exit(Duration::from_secs(10));
}

/// `request.json` holds the job's `Env`: the state directory, every execution's directory and
/// every record in it are the plugin's alone, from the moment they are made.
#[test]
fn the_state_directory_and_its_records_are_private() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("state");
    let results = tempfile::tempdir().unwrap();
    let mut p = RawPlugin::spawn();
    p.initialize(&state);
    let exec = "proc-private-state";
    run(
        &mut p,
        1,
        results.path(),
        exec,
        &["true"],
        json!({"API_TOKEN": "proc-secret-value"}),
    );
    let mode = |path: &Path| {
        std::fs::metadata(path)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
            .permissions()
            .mode()
            & 0o7777
    };
    let dir = state.join("executions").join(exec);
    for d in [state.clone(), state.join("executions"), dir.clone()] {
        assert_eq!(mode(&d), 0o700, "{}", d.display());
    }
    let request = std::fs::read_to_string(dir.join("request.json")).unwrap();
    assert!(request.contains("proc-secret-value"), "{request}");
    for f in ["request.json", "monitor.json", "result.json", "monitor.log"] {
        assert_eq!(mode(&dir.join(f)), 0o600, "{f}");
    }
    p.call(2, "shutdown", json!([]));
    p.wait_exit(Duration::from_secs(10));
}

/// A request without a `Network`, or with `Default`, never gets the host's network: a server
/// on the host's loopback is out of its reach (it was reachable when `Default` meant `Host`),
/// while a job that asks for `Host` by name reaches it.
#[test]
fn the_default_network_is_never_the_hosts() {
    if !is_root() {
        eprintln!("skipped: needs root for network namespaces");
        return;
    }
    let server = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = server.local_addr().unwrap().port();
    // Accept (and drop) connections so a job that can reach the server sees it answer.
    std::thread::spawn(move || for _ in server.incoming() {});
    let state = tempfile::tempdir().unwrap();
    let results = tempfile::tempdir().unwrap();
    let mut p = RawPlugin::spawn();
    p.initialize(state.path());
    let probe = format!(
        "import socket\ntry:\n    socket.create_connection(('127.0.0.1', {port}), 3).close()\n    print('reached')\nexcept OSError as e:\n    print('unreachable', e)\n"
    );
    let argv = ["python3", "-c", probe.as_str()];
    for (n, (exec, network)) in [
        ("net-missing", Value::Null),
        ("net-default", json!({"Type": "Default"})),
        ("net-host", json!({"Type": "Host"})),
    ]
    .into_iter()
    .enumerate()
    {
        let mut req = request(results.path(), exec, &argv, json!({}));
        req["Network"] = network;
        let r = p.call(100 + n as u64, "executor_run", json!([req]));
        assert_eq!(r["result"]["ExitCode"], 0, "{exec}: {r}");
        let out = std::fs::read_to_string(results.path().join(exec).join("stdout")).unwrap();
        let reached = out.starts_with("reached");
        assert_eq!(reached, exec == "net-host", "{exec}: {out}");
    }
    p.call(199, "shutdown", json!([]));
}
