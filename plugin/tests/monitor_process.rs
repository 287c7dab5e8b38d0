//! The monitor binary on its own: the report line, and what it inherits.

use std::io::{BufRead, BufReader, Read};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::Instant;

use executor_plugin::monitor::MonitorReport;
use executor_plugin::state::{self, ExecDir, Limits, MonitorSpec, RequestRecord, ResultRecord};

const EXE: &str = env!("CARGO_BIN_EXE_executor-native");

#[test]
fn the_monitor_closes_descriptors_it_inherits() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = ExecDir::at(tmp.path().join("exec"));
    std::fs::create_dir_all(&dir.dir).unwrap();
    let spec = MonitorSpec {
        execution_id: "fd".into(),
        job_id: "j".into(),
        argv: vec!["sleep".into(), "3".into()],
        env: vec![],
        working_dir: None,
        results_dir: tmp.path().join("results"),
        output_names: vec![],
        log_path: tmp.path().join("log"),
        limits: Limits::default(),
        timeout_secs: None,
        kill_grace_ms: 1000,
        sandbox: Default::default(),
    };
    let record = RequestRecord {
        request: serde_json::Value::Null,
        monitor: spec,
        created_at_ms: 0,
    };
    state::write_json_atomic(&dir.request(), &record).unwrap();

    // A pipe whose write end the monitor inherits without close-on-exec, as a careless parent
    // (or the plugin's protocol descriptor) would leave it.
    let mut fds = [0; 2];
    // SAFETY: pipe writes two descriptors into an array of two.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    // SAFETY: two fresh descriptors owned by nothing else.
    let (read_end, write_end) =
        unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    let raw_write = write_end.as_raw_fd();
    let mut cmd = Command::new(EXE);
    cmd.arg("__monitor")
        .arg(&dir.dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped());
    // SAFETY: the hook makes one async-signal-safe system call on a descriptor the child
    // inherits.
    unsafe {
        cmd.pre_exec(move || {
            libc::fcntl(raw_write, libc::F_SETFD, 0);
            Ok(())
        });
    }
    let mut child = cmd.spawn().unwrap();
    drop(write_end);
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let report: MonitorReport = serde_json::from_str(line.trim()).unwrap();
    assert!(matches!(report, MonitorReport::Running { .. }), "{line}");

    // EOF while the job (sleep 3) still runs: neither the monitor nor the job holds the pipe.
    let t = Instant::now();
    let mut buf = Vec::new();
    std::fs::File::from(read_end).read_to_end(&mut buf).unwrap();
    let held = t.elapsed();
    let still_running = child.try_wait().unwrap().is_none();
    let status = child.wait().unwrap();
    println!("inherited pipe at EOF after {held:?}");
    assert!(
        still_running,
        "the inherited pipe stayed open until the monitor exited"
    );
    assert!(status.success());
    let r: ResultRecord = state::read_json(&dir.result()).unwrap();
    assert_eq!(r.result.exit_code, 0);
}
