//! Peers: what a user would pick instead, timed next to us. `/bin/true` with a 256 MiB memory
//! limit through the one-shot CLI (`executor-host run`, the whole process), `runc run` and
//! `crun run` of a bundle (read-only host `/usr` and `/etc`, its own namespaces, the same
//! memory limit), `bwrap` (the same binds and namespaces; it has no cgroup support, so no
//! memory limit), and `Executor::run` through a running plugin, interleaved round by round.
//! A peer that is not installed is printed as skipped.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use executor_host::Executor;
use executor_schema::{Network, NetworkConfig, Resources};
use serde_json::json;

use crate::harness::HostHarness;
use crate::latency::{bare_true, check_ok};
use crate::report::{percentile, sorted, Report};
use crate::{fail, Res};

/// The memory limit every contender runs `/bin/true` under.
const MEMORY: u64 = 256 << 20;

/// An executable named `name` on `PATH`.
fn on_path(name: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| {
            std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

/// An OCI bundle for `/bin/true`: a root of empty mount points and the merged-`/usr` links,
/// host `/usr` and `/etc` bound read-only, its own pid, mount, network, IPC, UTS and cgroup
/// namespaces, an unprivileged user, the memory limit. What runc's and crun's `spec` makes,
/// less the terminal and capabilities a `/bin/true` has no use for.
fn make_bundle(dir: &Path) -> Res<()> {
    let root = dir.join("rootfs");
    for d in ["usr", "etc", "proc", "dev", "tmp"] {
        std::fs::create_dir_all(root.join(d))?;
    }
    for (link, to) in [
        ("bin", "usr/bin"),
        ("sbin", "usr/sbin"),
        ("lib", "usr/lib"),
        ("lib64", "usr/lib64"),
    ] {
        if Path::new("/").join(link).is_symlink() {
            std::os::unix::fs::symlink(to, root.join(link))?;
        } else {
            std::fs::create_dir_all(root.join(link))?;
        }
    }
    let mut mounts = vec![
        json!({"destination": "/proc", "type": "proc", "source": "proc"}),
        json!({"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
               "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]}),
        json!({"destination": "/tmp", "type": "tmpfs", "source": "tmpfs",
               "options": ["nosuid", "nodev", "mode=1777"]}),
    ];
    for d in ["/usr", "/etc"] {
        mounts.push(json!({"destination": d, "type": "bind", "source": d,
                           "options": ["rbind", "ro", "nosuid", "nodev"]}));
    }
    // Host directories that are not links to /usr (a non-merged layout): bound as well.
    for d in ["/bin", "/sbin", "/lib", "/lib64"] {
        if Path::new(d).is_dir() && !Path::new(d).is_symlink() {
            mounts.push(json!({"destination": d, "type": "bind", "source": d,
                               "options": ["rbind", "ro", "nosuid", "nodev"]}));
        }
    }
    let config = json!({
        "ociVersion": "1.0.2",
        "process": {
            "terminal": false,
            "user": {"uid": 65534, "gid": 65534},
            "args": ["/bin/true"],
            "env": ["PATH=/usr/bin:/bin"],
            "cwd": "/",
            "noNewPrivileges": true,
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}]
        },
        "root": {"path": "rootfs", "readonly": true},
        "hostname": "bench",
        "mounts": mounts,
        "linux": {
            "resources": {"memory": {"limit": MEMORY}},
            "namespaces": [
                {"type": "pid"}, {"type": "network"}, {"type": "ipc"},
                {"type": "uts"}, {"type": "mount"}, {"type": "cgroup"}
            ],
            "maskedPaths": ["/proc/kcore", "/proc/keys", "/proc/timer_list"],
            "readonlyPaths": ["/proc/sys", "/proc/sysrq-trigger"]
        }
    });
    std::fs::write(dir.join("config.json"), serde_json::to_vec_pretty(&config)?)?;
    Ok(())
}

/// One contender: how to run `/bin/true` once, round `i`.
struct Contender {
    name: String,
    run: Box<dyn Fn(usize) -> Res<Command>>,
}

fn timed(what: &str, mut cmd: Command) -> Res<f64> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let t = Instant::now();
    let out = cmd.output()?;
    let ms = t.elapsed().as_secs_f64() * 1e3;
    if !out.status.success() {
        return fail(format!(
            "{what}: {} ({})",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(ms)
}

pub(crate) async fn peers(exe: &Path, rounds: usize, rep: &mut Report) -> Res<()> {
    rep.section(
        "/bin/true with a 256 MiB memory limit, next to the runtimes a user might pick (ms)",
    );
    let dir = tempfile::Builder::new().prefix("bench-peers").tempdir()?;
    let out = peers_in(exe, dir.path(), rounds, rep).await;
    // Containers of an interrupted round would keep the bundle's mounts busy.
    out
}

async fn peers_in(exe: &Path, dir: &Path, rounds: usize, rep: &mut Report) -> Res<()> {
    let cli = exe.with_file_name("executor-host");
    if !cli.exists() {
        return fail(format!(
            "{} is missing: build it with `cargo build --release -p executor-host --bin \
             executor-host`",
            cli.display()
        ));
    }
    let bundle = dir.join("bundle");
    make_bundle(&bundle)?;
    let cli_state = dir.join("cli-state");
    let cli_work = dir.join("cli-work");
    std::fs::create_dir_all(&cli_work)?;
    let mut contenders = Vec::new();
    {
        let (cli, exe, state, work) = (cli.clone(), exe.to_path_buf(), cli_state, cli_work);
        contenders.push(Contender {
            name: "one-shot CLI, whole process".into(),
            run: Box::new(move |i| {
                let mut c = Command::new(&cli);
                c.arg("--plugin")
                    .arg(&exe)
                    .arg("--state-dir")
                    .arg(&state)
                    .args(["run", "--memory", "256MiB", "--results"])
                    .arg(work.join(format!("r{i}")))
                    .args(["--", "/bin/true"])
                    .current_dir(&work)
                    // Its plugin writes no timing marks into the latency section's log.
                    .env_remove(executor_plugin::timing::ENV);
                Ok(c)
            }),
        });
    }
    let mut skipped = Vec::new();
    for runtime in ["runc", "crun"] {
        let Some(bin) = on_path(runtime) else {
            skipped.push(runtime);
            continue;
        };
        let (bundle, root) = (bundle.clone(), dir.join(format!("{runtime}-root")));
        let prefix = format!("bench-{}", std::process::id());
        contenders.push(Contender {
            name: format!("{runtime} run"),
            run: Box::new(move |i| {
                let mut c = Command::new(&bin);
                c.arg("--root")
                    .arg(&root)
                    .arg("run")
                    .arg("--bundle")
                    .arg(&bundle)
                    .arg(format!("{prefix}-{i}"));
                Ok(c)
            }),
        });
    }
    match on_path("bwrap") {
        Some(bin) => contenders.push(Contender {
            name: "bwrap (no memory limit)".into(),
            run: Box::new(move |_| {
                let mut c = Command::new(&bin);
                c.args(["--ro-bind", "/usr", "/usr", "--ro-bind", "/etc", "/etc"]);
                for (link, to) in [
                    ("/bin", "usr/bin"),
                    ("/sbin", "usr/sbin"),
                    ("/lib", "usr/lib"),
                    ("/lib64", "usr/lib64"),
                ] {
                    if Path::new(link).is_symlink() {
                        c.args(["--symlink", to, link]);
                    } else if Path::new(link).is_dir() {
                        c.args(["--ro-bind", link, link]);
                    }
                }
                c.args([
                    "--proc",
                    "/proc",
                    "--dev",
                    "/dev",
                    "--tmpfs",
                    "/tmp",
                    "--unshare-all",
                    "--die-with-parent",
                    "--",
                    "/bin/true",
                ]);
                Ok(c)
            }),
        }),
        None => skipped.push("bwrap"),
    }
    let h = HostHarness::start(exe).await?;
    let out = rounds_of(&h, contenders, rounds, rep, &skipped).await;
    h.stop().await;
    out
}

async fn rounds_of(
    h: &HostHarness,
    contenders: Vec<Contender>,
    rounds: usize,
    rep: &mut Report,
    skipped: &[&str],
) -> Res<()> {
    let request = |id: &str| -> Res<_> {
        let mut req = h.request(id, &["/bin/true"])?;
        req.resources = Some(Resources {
            memory: MEMORY,
            ..Default::default()
        });
        // As the CLI asks: a network namespace with only loopback, as the bundles have.
        req.network = Some(NetworkConfig {
            network_type: Network::None,
            ..Default::default()
        });
        Ok(req)
    };
    // One warm-up round: the page cache, the runtimes' first cgroup set-up. A peer that cannot
    // run here (crun refuses hybrid cgroup hierarchies) is skipped, with its own words; ours
    // must run.
    let mut broken = Vec::new();
    let mut kept = Vec::new();
    for (k, c) in contenders.into_iter().enumerate() {
        match timed(&c.name, (c.run)(usize::MAX)?) {
            Ok(_) => kept.push(c),
            Err(e) if k > 0 => broken.push((c.name, e.to_string())),
            Err(e) => return Err(e),
        }
    }
    let contenders = kept;
    check_ok(
        "peer warm-up",
        &h.exec.run(request("peer-warm")?, None).await?,
    )?;
    let mut times: Vec<Vec<f64>> = vec![Vec::with_capacity(rounds); contenders.len()];
    let (mut bare, mut plug) = (Vec::new(), Vec::new());
    for i in 0..rounds {
        let t = Instant::now();
        bare_true()?;
        bare.push(t.elapsed().as_secs_f64() * 1e3);
        for (k, c) in contenders.iter().enumerate() {
            times[k].push(timed(&c.name, (c.run)(i)?)?);
        }
        let req = request(&format!("peer-{i}"))?;
        let t = Instant::now();
        let r = h.exec.run(req, None).await?;
        plug.push(t.elapsed().as_secs_f64() * 1e3);
        check_ok("peer Executor::run", &r)?;
    }
    let p50 = |v: &[f64]| percentile(&sorted(v.to_vec()), 0.5);
    let b50 = p50(&bare);
    let e50 = p50(&plug);
    let cli50 = p50(&times[0]);
    let peer_p50: Vec<(String, f64)> = contenders
        .iter()
        .zip(&times)
        .skip(1)
        .map(|(c, t)| (c.name.clone(), p50(t)))
        .collect();
    rep.add(
        "Executor::run /bin/true, 256 MiB, p50",
        e50,
        "ms",
        "Command::status p50",
        b50,
        None,
    );
    rep.add(
        "one-shot CLI run, whole process, p50",
        cli50,
        "ms",
        "Command::status p50",
        b50,
        None,
    );
    let runc = peer_p50.iter().find(|(n, _)| n == "runc run").map(|p| p.1);
    match runc {
        Some(r) => rep.add(
            "one-shot CLI run, whole process, p50",
            cli50,
            "ms",
            "runc run p50 (same limit)",
            r,
            Some(("<= 1.0x", cli50 <= r)),
        ),
        None => {
            let why = match broken.iter().find(|(n, _)| n == "runc run") {
                Some((_, e)) => format!("runc fails here: {e}"),
                None => "runc is not installed (apt-get install runc)".into(),
            };
            rep.skip("one-shot CLI run vs runc run", Some("<= 1.0x"), why)
        }
    }
    for (name, v) in &peer_p50 {
        rep.add(
            format!("{name} p50"),
            *v,
            "ms",
            "Command::status p50",
            b50,
            None,
        );
        if name != "runc run" {
            rep.add(
                "one-shot CLI run, whole process, p50",
                cli50,
                "ms",
                format!("{name} p50"),
                *v,
                None,
            );
        }
        rep.add(
            "Executor::run /bin/true, 256 MiB, p50",
            e50,
            "ms",
            format!("{name} p50"),
            *v,
            None,
        );
    }
    for (name, why) in broken {
        if name != "runc run" {
            rep.skip(format!("{name} p50"), None, format!("fails here: {why}"));
        }
    }
    for name in skipped.iter().filter(|n| **n != "runc") {
        rep.skip(
            format!("{name} p50"),
            None,
            format!("{name} is not installed"),
        );
    }
    rep.note("peer_rounds", json!(rounds));
    Ok(())
}
