//! The host's trust boundary (issue 19): pins that cannot be beaten, plugin files nobody else
//! can change, results directories nobody else made, and plugins that cannot hang or flood the
//! host.

use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use executor_host::pin::{OpenBinary, PinError};
use executor_host::process::{PluginProcess, SpawnOptions};
use executor_host::{
    ConfigError, Executor, Host, HostConfig, HostError, PluginExecutor, PluginSpec,
};
use executor_schema::PluginConfig;
use executor_tests::bin_path;

const GOOD: &[u8] = b"PIN-TRAILER:GOOD";
const EVIL: &[u8] = b"PIN-TRAILER:EVIL";

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn write_exe(path: &Path, bytes: &[u8]) {
    std::fs::write(path, bytes).unwrap();
    chmod(path, 0o755);
}

/// A racer rewrites the pinned file in place (the same length, only its trailer differs)
/// between the host's hash and its exec. Whatever starts must be the hashed bytes.
#[tokio::test]
async fn an_in_place_rewrite_never_runs_instead_of_the_pinned_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let probe = std::fs::read(bin_path("pin-race-probe")).unwrap();
    let plugin = dir.path().join("executor-pinrace");
    let good = [&probe[..], GOOD].concat();
    write_exe(&plugin, &good);
    let pin = executor_host::pin::sha256_file(&plugin).unwrap();
    let marker = PathBuf::from(format!("{}.evil", plugin.display()));

    let stop = Arc::new(AtomicBool::new(false));
    let rewrites = Arc::new(AtomicUsize::new(0));
    let racer = {
        let (stop, rewrites, plugin) = (stop.clone(), rewrites.clone(), plugin.clone());
        let at = probe.len() as u64;
        std::thread::spawn(move || {
            let rewrite = |bytes: &[u8]| {
                // ETXTBSY while a probe runs from the file itself (the old way): skip a turn.
                // The descriptor is closed at once, so an exec of the file can find it closed.
                if let Ok(f) = std::fs::OpenOptions::new().write(true).open(&plugin) {
                    let _ = f.write_all_at(bytes, at);
                }
            };
            let mut turn = 0u32;
            while !stop.load(Ordering::Relaxed) {
                rewrite(EVIL);
                for _ in 0..turn % 64 {
                    std::thread::yield_now();
                }
                rewrite(GOOD);
                std::thread::yield_now();
                turn = turn.wrapping_add(7);
                rewrites.fetch_add(1, Ordering::Relaxed);
            }
        })
    };

    let (mut started, mut refused) = (0, 0);
    for _ in 0..100 {
        let binary = match OpenBinary::open(&plugin, Some(&pin)) {
            Ok(b) => b,
            // A copy taken mid-rewrite: refused, so never run.
            Err(PinError::Mismatch { .. }) => {
                refused += 1;
                continue;
            }
            Err(e) => panic!("{e}"),
        };
        let mut opts = SpawnOptions::new(&plugin);
        opts.binary = Some(binary);
        // Executing the file itself fails with ETXTBSY while the racer holds it open for
        // writing; that start simply did not happen.
        let Ok(mut process) = PluginProcess::spawn(opts).await else {
            refused += 1;
            continue;
        };
        let status = tokio::time::timeout(Duration::from_secs(30), process.wait_exit())
            .await
            .expect("the probe exits");
        assert!(status.contains("exit status: 0"), "{status}");
        started += 1;
    }
    stop.store(true, Ordering::Relaxed);
    racer.join().unwrap();
    let evil_runs = std::fs::read_to_string(&marker)
        .map(|s| s.lines().count())
        .unwrap_or(0);
    eprintln!(
        "{started} started, {refused} refused or not executable mid-rewrite, {} rewrites, {evil_runs} ran the \
         other bytes",
        rewrites.load(Ordering::Relaxed)
    );
    assert!(started > 0, "nothing started: the test proves nothing");
    assert!(rewrites.load(Ordering::Relaxed) > 0, "the racer never ran");
    assert_eq!(evil_runs, 0, "the unpinned bytes ran {evil_runs} times");
    // Sanity: the evil bytes, run, do leave the marker (so the count above can be non-zero).
    let evil = dir.path().join("executor-evil");
    write_exe(&evil, &[&probe[..], EVIL].concat());
    let status = std::process::Command::new(&evil).status().unwrap();
    assert!(status.success());
    assert!(Path::new(&format!("{}.evil", evil.display())).exists());
}

/// A script plugin that only records that it ran.
fn marking_plugin(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    let marker = dir.join(format!("{name}.ran"));
    let plugin = dir.join(name);
    write_exe(
        &plugin,
        format!("#!/bin/sh\ntouch {}\nexit 1\n", marker.display()).as_bytes(),
    );
    (plugin, marker)
}

fn copy_native(dir: &Path) -> PathBuf {
    let to = dir.join("executor-native");
    std::fs::copy(executor_tests::native_plugin(), &to).unwrap();
    to
}

fn config(dirs: &[&Path], state: &Path) -> HostConfig {
    let mut config = HostConfig {
        plugin_dirs: dirs.iter().map(|d| d.to_path_buf()).collect(),
        ..HostConfig::default()
    };
    config.engines.insert(
        "native".into(),
        PluginConfig {
            state_dir: Some(state.to_path_buf()),
            ..Default::default()
        },
    );
    config
}

#[tokio::test]
async fn with_pins_configured_unpinned_and_disabled_files_never_run() {
    let dir = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    let native = copy_native(dir.path());
    let (stray, stray_ran) = marking_plugin(dir.path(), "executor-stray");
    let mut cfg = config(&[dir.path()], state.path());
    cfg.pins.insert(
        native.clone(),
        executor_host::pin::sha256_file(&native).unwrap(),
    );
    let host = Host::from_config(&cfg).await.unwrap();
    assert!(host.plugin("native").is_some());
    let listed = host.plugins.iter().find(|p| p.path == stray).unwrap();
    assert!(
        listed.error.as_deref().unwrap_or("").contains("not pinned"),
        "{listed:?}"
    );
    host.shutdown().await;
    assert!(
        !stray_ran.exists(),
        "an unpinned plugin ran although pins are configured"
    );

    // Disabled by name: not run either, pins or not.
    let mut cfg = config(&[dir.path()], state.path());
    cfg.disabled = vec!["Stray".into()];
    let host = Host::from_config(&cfg).await.unwrap();
    let listed = host.plugins.iter().find(|p| p.path == stray).unwrap();
    assert!(listed.disabled, "{listed:?}");
    host.shutdown().await;
    assert!(!stray_ran.exists(), "a disabled plugin ran");
}

#[tokio::test]
async fn a_pin_naming_no_plugin_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    copy_native(dir.path());
    let mut cfg = config(&[dir.path()], state.path());
    let typo = dir.path().join("executor-natvie");
    cfg.pins.insert(typo.clone(), "ab".repeat(32));
    let err = Host::from_config(&cfg).await.err().expect("refused");
    assert!(matches!(err, ConfigError::UnmatchedPin { .. }), "{err}");
    assert!(err.to_string().contains("executor-natvie"), "{err}");
}

#[tokio::test]
async fn plugins_or_directories_others_can_write_are_refused() {
    if !nix::unistd::geteuid().is_root() {
        // As another user the tempdir tree is ours all the same; the modes decide.
        eprintln!("note: running unprivileged; ownership checks see our own uid");
    }
    let state = tempfile::tempdir().unwrap();
    // A plugin directory anyone can write to.
    let open_dir = tempfile::tempdir().unwrap();
    let (_, ran) = marking_plugin(open_dir.path(), "executor-open");
    chmod(open_dir.path(), 0o777);
    let err = Host::from_config(&config(&[open_dir.path()], state.path()))
        .await
        .err()
        .expect("refused");
    assert!(matches!(err, ConfigError::UntrustedDir(_)), "{err}");
    assert!(
        err.to_string().contains("writable by group or others"),
        "{err}"
    );
    assert!(!ran.exists(), "a plugin in a world-writable directory ran");
    chmod(open_dir.path(), 0o700);

    // A group-writable plugin file, found in a directory or named explicitly.
    let dir = tempfile::tempdir().unwrap();
    let (plugin, ran) = marking_plugin(dir.path(), "executor-loose");
    chmod(&plugin, 0o775);
    let host = Host::from_config(&config(&[dir.path()], state.path()))
        .await
        .unwrap();
    let error = host.plugins[0].error.clone().unwrap_or_default();
    assert!(error.contains("not trusted"), "{error}");
    let direct = PluginExecutor::new(PluginSpec::new("loose", &plugin));
    let err = direct.is_installed().await.unwrap_err();
    assert!(
        matches!(err, HostError::Pin(PinError::Untrusted { .. })),
        "{err}"
    );
    assert!(!ran.exists(), "a group-writable plugin ran");
    // Sanity: the same file with sane modes does run.
    chmod(&plugin, 0o755);
    let _ = PluginExecutor::new(PluginSpec::new("loose", &plugin))
        .is_installed()
        .await;
    assert!(ran.exists());
}

/// `executor-host` in `cwd` with its own state root; stdout and stderr collected.
fn host_cli(cwd: &Path, state: &Path, args: &[&str]) -> std::process::Output {
    std::process::Command::new(bin_path("executor-host"))
        .current_dir(cwd)
        .arg("--state-dir")
        .arg(state)
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A directory someone else prepared, with `stdout` a symlink to a file they want written.
fn booby_trapped(dir: &Path, victim: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    std::os::unix::fs::symlink(victim, dir.join("stdout")).unwrap();
    std::os::unix::fs::symlink(victim, dir.join("exitCode")).unwrap();
}

#[test]
fn results_never_go_to_a_directory_someone_else_made() {
    let cwd = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    let victim = cwd.path().join("victim");
    std::fs::write(&victim, "untouched").unwrap();

    // The name the results directory would have had for this id, made beforehand.
    booby_trapped(&cwd.path().join("trust-results-guess"), &victim);
    let out = host_cli(
        cwd.path(),
        state.path(),
        &["run", "--id", "trust-results-guess", "--", "echo", "owned"],
    );
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let results = stderr
        .lines()
        .find_map(|l| l.strip_prefix("--- results: "))
        .map(PathBuf::from)
        .unwrap_or_else(|| panic!("{stderr}"));
    assert_ne!(results, cwd.path().join("trust-results-guess"));
    assert!(results.starts_with(cwd.path()), "{}", results.display());
    let meta = std::fs::symlink_metadata(&results).unwrap();
    assert!(meta.is_dir());
    assert_eq!(meta.permissions().mode() & 0o777, 0o700);
    assert_eq!(std::fs::read(results.join("stdout")).unwrap(), b"owned\n");
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "untouched");

    // An existing --results is refused, symlinks inside or not.
    let given = cwd.path().join("given");
    booby_trapped(&given, &victim);
    let out = host_cli(
        cwd.path(),
        state.path(),
        &[
            "run",
            "--id",
            "trust-results-given",
            "--results",
            given.to_str().unwrap(),
            "--",
            "echo",
            "owned",
        ],
    );
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("already exists"), "{stderr}");
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "untouched");
}

#[test]
fn an_id_that_climbs_out_is_refused_before_anything_is_made() {
    let root = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    let cwd = root.path().join("a/b");
    std::fs::create_dir_all(&cwd).unwrap();
    for id in ["../../x", "-x", ".x", "a/b"] {
        let arg = format!("--id={id}");
        let out = host_cli(&cwd, state.path(), &["run", &arg, "--", "true"]);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{id}: {stderr}");
        assert!(stderr.contains("execution id"), "{id}: {stderr}");
    }
    let made: Vec<_> = walk(root.path());
    assert_eq!(made, vec![root.path().join("a"), cwd.clone()], "{made:?}");
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        out.push(e.path());
        if e.file_type().unwrap().is_dir() {
            out.extend(walk(&e.path()));
        }
    }
    out.sort();
    out
}

/// A fake plugin: `/bin/sh` answering `initialize` (as `engine`), `shutdown` and
/// `executor_isInstalled`, plus the `case` arms in `arms` (each sees the request as `$line` and
/// its id as `$id`). `DONE` in the arms is a file the test waits for.
fn fake_plugin(dir: &Path, engine: &str, arms: &str) -> PathBuf {
    let init = executor_schema::InitializeResult {
        protocol_version: "1".into(),
        engine: engine.into(),
        plugin: executor_schema::PluginInfo {
            name: format!("fake-{engine}"),
            version: "0".into(),
        },
        ..Default::default()
    };
    let init = serde_json::to_string(&init).unwrap();
    let path = dir.join(format!("executor-{engine}"));
    let script = format!(
        r#"#!/bin/sh
INIT='{init}'
DONE='{done}'
answer() {{ printf '{{"jsonrpc":"2.0","id":%s,"result":%s}}\n' "$1" "$2"; }}
while IFS= read -r line; do
  id=$(printf '%s\n' "$line" | sed -n 's/^{{"jsonrpc":"2.0","id":\([0-9]*\).*/\1/p')
  case "$line" in
{arms}
    *'"method":"initialize"'*) answer "$id" "$INIT" ;;
    *'"method":"shutdown"'*) answer "$id" null; exit 0 ;;
    *'"method":"executor_isInstalled"'*) answer "$id" true ;;
  esac
done
"#,
        done = dir.join("DONE").display(),
    );
    write_exe(&path, script.as_bytes());
    path
}

/// The largest resident size `pid` has had, in bytes.
fn peak_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kib * 1024
}

/// Run `executor-host` with `plugin` and `args` until the plugin touches `DONE`; the host's
/// peak resident size then. Its stdout is never read (a reader that stopped).
fn host_peak_until_done(plugin: &Path, args: &[&str]) -> u64 {
    let dir = plugin.parent().unwrap();
    let state = tempfile::tempdir().unwrap();
    let mut child = std::process::Command::new(bin_path("executor-host"))
        .current_dir(dir)
        .arg("--state-dir")
        .arg(state.path())
        .arg("--plugin")
        .arg(plugin)
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while !dir.join("DONE").exists() {
        if std::time::Instant::now() > deadline || child.try_wait().unwrap().is_some() {
            let _ = child.kill();
            panic!("the fake plugin never finished: {:?}", child.wait());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let peak = peak_rss(child.id());
    let _ = child.kill();
    let _ = child.wait();
    peak
}

const MIB: u64 = 1 << 20;

#[test]
fn a_plugin_flooding_stderr_without_newlines_costs_the_host_little_memory() {
    let dir = tempfile::tempdir().unwrap();
    // 512 MiB in one "line".
    let plugin = fake_plugin(
        dir.path(),
        "stderrflood",
        r#"    *'"method":"initialize"'*)
      head -c 536870912 /dev/zero | tr '\0' x >&2
      touch "$DONE"; exec sleep 60 ;;"#,
    );
    let peak = host_peak_until_done(&plugin, &["plugins"]);
    eprintln!("host peak RSS {} MiB", peak / MIB);
    assert!(peak < 200 * MIB, "host peak RSS {} MiB", peak / MIB);
}

#[test]
fn huge_log_events_to_a_slow_reader_cost_the_host_bounded_memory() {
    let dir = tempfile::tempdir().unwrap();
    // 96 events of 8 MiB each for a reader that never reads.
    let plugin = fake_plugin(
        dir.path(),
        "logflood",
        r#"    *'"method":"executor_subscribeLogs"'*)
      answer "$id" 7
      i=0
      while [ $i -lt 96 ]; do
        printf '{"jsonrpc":"2.0","method":"executor_logs","params":{"subscription":7,"result":{"type":"data","stream":"stdout","timestamp":"t","data":"'
        head -c 8388608 /dev/zero | tr '\0' A
        printf '","offset":%d,"next":%d}}}\n' $((i * 6291456)) $(((i + 1) * 6291456))
        i=$((i + 1))
      done
      touch "$DONE" ;;"#,
    );
    let peak = host_peak_until_done(&plugin, &["logs", "--engine", "logflood", "-f", "e1"]);
    eprintln!("host peak RSS {} MiB", peak / MIB);
    assert!(peak < 200 * MIB, "host peak RSS {} MiB", peak / MIB);
}

#[tokio::test]
async fn a_plugin_that_never_answers_fails_prompt_calls_in_bounded_time_and_is_restarted() {
    let dir = tempfile::tempdir().unwrap();
    let result = serde_json::to_string(&executor_schema::RunCommandResult::default()).unwrap();
    // isInstalled and list are never answered; wait is, after a while.
    let plugin = fake_plugin(
        dir.path(),
        "silent",
        &format!(
            r#"    *'"method":"executor_isInstalled"'*|*'"method":"executor_list"'*) ;;
    *'"method":"executor_wait"'*) ( sleep 3; answer "$id" '{result}' ) & ;;"#
        ),
    );
    let mut spec = PluginSpec::new("silent", &plugin);
    spec.supervision.call_timeout = Duration::from_secs(1);
    let executor = PluginExecutor::new(spec);
    executor.info().await.unwrap();
    let pid = executor.pid().await.unwrap();
    // Far beyond the limit: only an unbounded call gets here.
    let err = tokio::time::timeout(Duration::from_secs(20), executor.is_installed())
        .await
        .expect("isInstalled fails instead of hanging")
        .unwrap_err();
    assert!(matches!(err, HostError::Timeout { .. }), "{err}");
    let text = err.to_string();
    assert!(
        text.contains("did not answer executor_isInstalled within 1s"),
        "{text}"
    );
    let err = tokio::time::timeout(Duration::from_secs(20), executor.list())
        .await
        .expect("list fails instead of hanging")
        .unwrap_err();
    assert!(matches!(err, HostError::Timeout { .. }), "{err}");
    // A wait is as long as the job: longer than the limit is fine.
    executor.wait("e1").await.expect("an unbounded wait");
    // On a new plugin: the silent one was stopped.
    assert_ne!(executor.pid().await, Some(pid));
    executor.shutdown(false).await;
}

#[test]
fn plugin_and_request_text_reaches_the_terminal_escaped() {
    let dir = tempfile::tempdir().unwrap();
    let esc = "\u{1b}]0;pwned\u{7}\u{1b}[2J";
    let json_esc = serde_json::to_string(esc).unwrap();
    let json_esc = json_esc.trim_matches('"');
    let list = format!(
        r#"[{{"executionId":"x{json_esc}","jobId":"j","state":"failed","exitCode":1,"errorMsg":"boom{json_esc}"}}]"#
    );
    let plugin = fake_plugin(
        dir.path(),
        "loud",
        &format!(
            r#"    *'"method":"executor_list"'*) printf 'listing \033[2J now\n' >&2; answer "$id" '{list}' ;;
    *'"method":"executor_cancel"'*) printf '{{"jsonrpc":"2.0","id":%s,"error":{{"code":-32001,"message":"no{json_esc}"}}}}\n' "$id" ;;"#
        ),
    );
    // The plugin's name and version in `plugins`, too.
    let script = std::fs::read_to_string(&plugin).unwrap();
    write_exe(
        &plugin,
        script
            .replace("\"fake-loud\"", &format!("\"fake{json_esc}\""))
            .as_bytes(),
    );
    let state = tempfile::tempdir().unwrap();
    let p = plugin.to_str().unwrap();
    for args in [
        vec!["--plugin", p, "plugins"],
        vec!["--plugin", p, "list", "--engine", "loud"],
        vec!["--plugin", p, "cancel", "--engine", "loud", "e1"],
        vec!["-v", "--plugin", p, "list", "--engine", "loud"],
    ] {
        let out = host_cli(dir.path(), state.path(), &args);
        let all = [out.stdout, out.stderr].concat();
        let shown = text(&all);
        assert!(
            !all.contains(&0x1b) && !all.contains(&0x07),
            "{args:?} printed control characters: {shown:?}"
        );
        assert!(shown.contains("\\u{1b}"), "{args:?}: {shown}");
        if args[0] == "-v" {
            assert!(shown.contains("listing \\u{1b}[2J now"), "{shown}");
        }
    }
}

#[test]
fn non_utf8_plugin_stderr_does_not_stop_the_drain() {
    let dir = tempfile::tempdir().unwrap();
    let plugin = fake_plugin(
        dir.path(),
        "garbled",
        r#"    *'"method":"initialize"'*)
      printf 'bad \377\376 bytes\n' >&2
      printf 'still draining\n' >&2
      exit 3 ;;"#,
    );
    let state = tempfile::tempdir().unwrap();
    let out = host_cli(
        dir.path(),
        state.path(),
        &["--plugin", plugin.to_str().unwrap(), "plugins"],
    );
    // The probe's error carries the plugin's last stderr lines, read past the bad bytes.
    let shown = text(&out.stdout);
    assert!(shown.contains("still draining"), "{shown}");
    assert!(shown.contains("bad \u{fffd}\u{fffd} bytes"), "{shown}");
}

#[test]
fn a_plugin_name_without_a_slash_is_not_looked_up_on_path() {
    let dir = tempfile::tempdir().unwrap();
    let bin = dir.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    let (_, ran) = marking_plugin(&bin, "executor-pathy");
    let state = tempfile::tempdir().unwrap();
    let path = format!("{}:/usr/bin:/bin", bin.display());
    let out = std::process::Command::new(bin_path("executor-host"))
        .current_dir(dir.path())
        .env("PATH", path)
        .args(["--state-dir", state.path().to_str().unwrap()])
        .args(["--plugin", "executor-pathy", "plugins"])
        .output()
        .unwrap();
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("not looked up on PATH"), "{stderr}");
    assert!(!ran.exists(), "a plugin was found on PATH and run");
}

#[test]
fn plugins_get_a_clean_environment() {
    let dir = tempfile::tempdir().unwrap();
    let dump = dir.path().join("env");
    let plugin = fake_plugin(
        dir.path(),
        "envdump",
        &format!(
            r#"    *'"method":"initialize"'*) env > {} ; answer "$id" "$INIT" ;;"#,
            dump.display()
        ),
    );
    let state = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(bin_path("executor-host"))
        .current_dir(dir.path())
        .env("LD_PRELOAD", "/nonexistent/preload.so")
        .env("SECRET_TOKEN", "hunter2")
        .env("EXECUTOR_PLUGIN_LOG", "debug")
        .env("PATH", format!("{}:/usr/bin:/bin", dir.path().display()))
        .args(["--state-dir", state.path().to_str().unwrap()])
        .args(["--plugin", plugin.to_str().unwrap(), "plugins"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let env = std::fs::read_to_string(&dump).unwrap();
    let vars: Vec<&str> = env.lines().filter_map(|l| l.split('=').next()).collect();
    assert!(!vars.contains(&"LD_PRELOAD"), "{env}");
    assert!(!vars.contains(&"SECRET_TOKEN"), "{env}");
    assert!(
        env.lines()
            .any(|l| l == format!("PATH={}", executor_host::process::PLUGIN_PATH)),
        "{env}"
    );
    assert!(
        env.lines().any(|l| l == "EXECUTOR_PLUGIN_LOG=debug"),
        "{env}"
    );
    assert!(
        env.lines()
            .any(|l| l == "EXECUTOR_PLUGIN_COOKIE=executor-plugin"),
        "{env}"
    );
}

#[test]
fn a_plugin_hanging_in_its_handshake_delays_a_command_only_by_the_call_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let plugin = fake_plugin(
        dir.path(),
        "mute",
        r#"    *'"method":"initialize"'*) exec sleep 600 ;;"#,
    );
    let state = tempfile::tempdir().unwrap();
    let mut child = std::process::Command::new(bin_path("executor-host"))
        .current_dir(dir.path())
        .args(["--state-dir", state.path().to_str().unwrap()])
        .args(["--call-timeout", "1s", "--plugin", plugin.to_str().unwrap()])
        .arg("plugins")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Far beyond the limit: only a probe that waits its whole default handshake gets here.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("executor-host plugins still waits for the mute plugin");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().unwrap();
    let shown = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(
        shown.contains("initialize did not answer within 1s"),
        "{shown}"
    );
}

/// Children of `pid`, from /proc.
fn children_of(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(p) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{p}/stat")) else {
            continue;
        };
        // pid (comm) state ppid ...: comm may hold spaces, so from the last ')'.
        let ppid = stat
            .rfind(')')
            .and_then(|i| stat[i + 1..].split_whitespace().nth(1))
            .and_then(|s| s.parse::<u32>().ok());
        if ppid == Some(pid) {
            out.push(p);
        }
    }
    out
}

/// A pinned plugin runs from a memfd; when its fork server is gone it starts monitors by
/// re-executing itself, which must work from a memfd too. It does once the plugin execs
/// `/proc/self/exe` instead of the path `current_exe()` reads from it (`/memfd:... (deleted)`
/// names no file): a change in plugin/src/rpc.rs, outside the host.
#[tokio::test]
async fn a_pinned_plugin_still_starts_monitors_without_its_fork_server() {
    let dir = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let plugin = copy_native(dir.path());
    let mut spec = PluginSpec::new("native", &plugin);
    spec.sha256 = Some(executor_host::pin::sha256_file(&plugin).unwrap());
    spec.config.state_dir = Some(state.path().to_path_buf());
    let exec = PluginExecutor::new(spec);
    let req = |id: &str| executor_tests::host::sh_request(work.path(), id, "echo ok");
    exec.run(req("trust-fallback-0"), None).await.unwrap();
    // The fork server is the plugin's only child; the spare it made ahead serves one start.
    for child in children_of(exec.pid().await.unwrap()) {
        executor_tests::host::kill9(child);
    }
    for i in 1..4 {
        let r = exec
            .run(req(&format!("trust-fallback-{i}")), None)
            .await
            .unwrap_or_else(|e| panic!("start {i} without the fork server: {e}"));
        assert_eq!(r.stdout, "ok\n");
    }
    exec.shutdown(false).await;
}
