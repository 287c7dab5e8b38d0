//! The job's private filesystem and user switch, applied in `pre_exec` of real processes.

mod common;

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use executor_plugin::outputs::{hand_over, Direction};
use executor_plugin::sandbox::mounts::{Bind, FsError, FsPlan, FsSpec, RootTemplate, SourceError};
use executor_plugin::sandbox::rlimit::{RlimitConfig, RlimitPlan};
use executor_plugin::sandbox::user::{UserError, UserPlan};

/// A state root like the plugin's: `<state>/executions/x/{root,results}` plus a marker the job
/// must not see.
struct Layout {
    state: tempfile::TempDir,
}

impl Layout {
    fn new() -> Layout {
        let state = tempfile::tempdir().unwrap();
        fs::create_dir_all(state.path().join("executions/x/root")).unwrap();
        fs::create_dir_all(state.path().join("executions/x/results/out")).unwrap();
        fs::write(state.path().join("marker-secret"), "state").unwrap();
        Layout { state }
    }
    fn root(&self) -> PathBuf {
        self.state.path().join("executions/x/root")
    }
    fn results(&self) -> PathBuf {
        self.state.path().join("executions/x/results")
    }
    fn marker(&self) -> PathBuf {
        self.state.path().join("marker-secret")
    }
    fn spec(&self) -> FsSpec {
        FsSpec::new(self.root())
    }
}

fn run(
    script: &str,
    fs_plan: Option<FsPlan>,
    user: Option<UserPlan>,
    no_new_privs: bool,
) -> Output {
    let rlimits = RlimitPlan::new(&RlimitConfig {
        no_new_privs,
        ..RlimitConfig::default()
    })
    .unwrap();
    let mut cmd = Command::new("/usr/bin/sh");
    cmd.arg("-c").arg(script).stdin(Stdio::null());
    // SAFETY: the plans make only system calls in the child.
    unsafe {
        cmd.pre_exec(move || {
            if let Some(p) = &fs_plan {
                p.apply()?;
            }
            rlimits.apply()?;
            if let Some(u) = &user {
                u.apply()?;
            }
            Ok(())
        });
    }
    cmd.output().unwrap()
}

/// The plan for `spec` both ways a job gets its root: assembled by its child alone, and added
/// to a [`RootTemplate`] made ahead (kept with the plan: it must outlive the job).
fn both_ways(spec: &FsSpec) -> Vec<(&'static str, FsPlan, Option<RootTemplate>)> {
    let full = FsPlan::new(spec).unwrap();
    let template = RootTemplate::build(&spec.root_dir, &spec.system_ro).unwrap();
    let on = FsPlan::on_template(spec, &template)
        .unwrap()
        .expect("a template made for this spec fits it");
    vec![
        ("assembled", full, None),
        ("on a template", on, Some(template)),
    ]
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "{:?}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).unwrap()
}

fn mountinfo() -> Vec<String> {
    fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

#[test]
fn job_sees_system_dirs_but_not_the_state_root() {
    if common::skip_unless_mounts("job_sees_system_dirs_but_not_the_state_root") {
        return;
    }
    let l = Layout::new();
    let script = format!(
        "test -x /usr/bin/sh && echo sh-ok; ls /; ls /bin/ls >/dev/null && echo ls-ok; \
         if test -e {m}; then echo marker-visible; fi; \
         if test -e {s}; then echo state-visible; fi; \
         if test -e /work; then echo host-work-visible; fi; \
         echo hi > /dev/null && head -c 4 /dev/urandom | wc -c; \
         cat /proc/self/status | grep -c ^Pid; \
         if touch /new-file 2>/dev/null; then echo root-writable; fi; \
         if touch /usr/new-file 2>/dev/null; then echo usr-writable; fi; \
         ls /dev",
        m = l.marker().display(),
        s = l.state.path().display()
    );
    for (how, plan, _template) in both_ways(&l.spec()) {
        let out = ok(&run(&script, Some(plan), None, true));
        let lines: Vec<&str> = out.lines().collect();
        assert!(lines.contains(&"sh-ok"), "{how}: {out}");
        assert!(lines.contains(&"ls-ok"), "{how}: {out}");
        for dir in ["usr", "etc", "tmp", "proc", "dev", "bin"] {
            assert!(lines.contains(&dir), "{how}: {dir} missing in {out}");
        }
        for bad in [
            "marker-visible",
            "state-visible",
            "host-work-visible",
            "root-writable",
            "usr-writable",
        ] {
            assert!(!lines.contains(&bad), "{how}: {bad}: {out}");
        }
        assert!(lines.contains(&"4"), "{how}: /dev/urandom: {out}");
        for dev in ["null", "zero", "urandom", "shm", "fd"] {
            assert!(lines.contains(&dev), "{how}: /dev/{dev} missing: {out}");
        }
        assert!(
            !lines.contains(&"vda"),
            "{how}: host block device visible: {out}"
        );
        // The job's root is a tmpfs of its own mount namespace: its mount points and symlinks
        // (`/bin -> usr/bin`) are made there, nothing in the directory on the host.
        assert_eq!(fs::read_dir(l.root()).unwrap().count(), 0, "{how}");
    }
}

#[test]
fn inputs_are_read_only_and_outputs_land_in_results() {
    if common::skip_unless_mounts("inputs_are_read_only_and_outputs_land_in_results") {
        return;
    }
    let l = Layout::new();
    let input = tempfile::tempdir().unwrap();
    fs::write(input.path().join("data.txt"), "input-data").unwrap();
    let single = input.path().join("single.txt");
    fs::write(&single, "one-file").unwrap();
    let mut spec = l.spec();
    spec.binds = vec![
        Bind {
            source: input.path().to_owned(),
            target: "/inputs/data".into(),
            read_only: true,
            untrusted_below: None,
            ..Bind::default()
        },
        Bind {
            source: single.clone(),
            target: "/inputs/single.txt".into(),
            read_only: true,
            untrusted_below: None,
            ..Bind::default()
        },
        Bind {
            source: l.results().join("out"),
            target: "/outputs".into(),
            read_only: false,
            untrusted_below: None,
            ..Bind::default()
        },
        // Inside the job's /tmp: the mount point is made by the child in its tmpfs.
        Bind {
            source: input.path().to_owned(),
            target: "/tmp/deep/in".into(),
            read_only: true,
            untrusted_below: None,
            ..Bind::default()
        },
    ];
    spec.working_dir = Some("/outputs".into());
    for (how, plan, _template) in both_ways(&spec) {
        let out = run(
            "cat /inputs/data/data.txt; echo; cat /inputs/single.txt; echo; \
         cat /tmp/deep/in/data.txt; echo; \
         echo x > /inputs/data/new; echo x > /inputs/single.txt; \
         pwd; echo result > result.txt",
            Some(plan),
            None,
            true,
        );
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{stdout} {stderr}");
        let lines: Vec<&str> = stdout.lines().collect();
        assert_eq!(
            lines,
            ["input-data", "one-file", "input-data", "/outputs"],
            "{stderr}"
        );
        assert_eq!(
            stderr.matches("Read-only file system").count(),
            2,
            "{stderr}"
        );
        assert!(!input.path().join("new").exists());
        assert_eq!(fs::read_to_string(&single).unwrap(), "one-file");
        assert_eq!(
            fs::read_to_string(l.results().join("out/result.txt")).unwrap(),
            "result\n"
        );
        // The job's mount points were made in its own tmpfs root, not on the host.
        assert!(!l.root().join("inputs").exists(), "{how}");
        fs::remove_file(l.results().join("out/result.txt")).unwrap();
    }
}

#[test]
fn tmp_is_private_and_the_host_mount_table_is_unchanged() {
    if common::skip_unless_mounts("tmp_is_private_and_the_host_mount_table_is_unchanged") {
        return;
    }
    let l = Layout::new();
    let before = mountinfo();
    let name = format!("sandbox-fs-private-{}", std::process::id());
    let ways = both_ways(&l.spec());
    // Made ahead: the templates' namespaces are not the host's.
    let before = before.len();
    for (how, plan, _template) in ways {
        let out = ok(&run(
            &format!("echo secret > /tmp/{name} && cat /tmp/{name} && cat /proc/self/mountinfo"),
            Some(plan),
            None,
            true,
        ));
        assert!(out.starts_with("secret\n"), "{how}: {out}");
        // After pivot_root only the job's own mounts remain in its namespace.
        let jail_mounts: Vec<&str> = out
            .lines()
            .skip(1)
            .filter_map(|line| line.split(' ').nth(4))
            .collect();
        assert!(jail_mounts.contains(&"/"), "{out}");
        for host_only in ["/sys", "/sys/fs/cgroup", "/work"] {
            assert!(
                !jail_mounts.contains(&host_only),
                "{how}: {host_only}: {out}"
            );
        }
        assert!(!Path::new("/tmp").join(&name).exists());
        let after = mountinfo();
        let root = l.root().display().to_string();
        assert!(
            !after.iter().any(|line| line.contains(&root)),
            "{how}: a job mount leaked to the host"
        );
        assert_eq!(before, after.len(), "{how}: host mount table changed");
    }
}

#[test]
fn plan_validation_rejects_bad_specs() {
    // Validation happens before any privileged call, so it runs unprivileged too.
    let l = Layout::new();
    let input = tempfile::tempdir().unwrap();
    let file = input.path().join("f");
    fs::write(&file, "x").unwrap();
    let with = |binds: Vec<Bind>| {
        let mut spec = l.spec();
        spec.binds = binds;
        FsPlan::new(&spec)
    };
    let bind = |source: &Path, target: &str| Bind {
        source: source.to_owned(),
        target: target.into(),
        read_only: true,
        untrusted_below: None,
        ..Bind::default()
    };

    assert!(matches!(
        with(vec![bind(input.path(), "relative/in")]),
        Err(FsError::NotAbsolute { .. })
    ));
    assert!(matches!(
        with(vec![bind(input.path(), "/in/../etc")]),
        Err(FsError::ParentComponent { .. })
    ));
    assert!(matches!(
        with(vec![bind(&input.path().join("missing"), "/in")]),
        Err(FsError::BadSource { .. })
    ));
    // A source a job could have named or swapped: no symlink anywhere below the directory the
    // host named, and only a directory or a regular file.
    let real = input.path().join("real");
    fs::create_dir(&real).unwrap();
    std::os::unix::fs::symlink(&real, input.path().join("real-link")).unwrap();
    let below = |source: PathBuf| Bind {
        source,
        target: "/in".into(),
        read_only: true,
        untrusted_below: Some(input.path().to_owned()),
        ..Bind::default()
    };
    assert!(with(vec![below(real.clone())]).is_ok());
    assert!(matches!(
        with(vec![below(input.path().join("real-link"))]),
        Err(FsError::BadSource {
            source: SourceError::Symlink { .. },
            ..
        })
    ));
    assert!(matches!(
        with(vec![below(input.path().join("real-link/deeper"))]),
        Err(FsError::BadSource {
            source: SourceError::Symlink { .. },
            ..
        })
    ));
    assert!(matches!(
        with(vec![below(PathBuf::from("/etc"))]),
        Err(FsError::BadSource {
            source: SourceError::NotBelow { .. },
            ..
        })
    ));
    // Where the host named the whole path, its symlinks are followed, once.
    assert!(with(vec![bind(&input.path().join("real-link"), "/in")]).is_ok());
    let fifo = input.path().join("fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    assert!(matches!(
        with(vec![bind(&fifo, "/in")]),
        Err(FsError::BadSource {
            source: SourceError::Kind { found: "FIFO" },
            ..
        })
    ));
    for reserved in ["/", "/proc", "/proc/x", "/dev/null"] {
        assert!(
            matches!(
                with(vec![bind(input.path(), reserved)]),
                Err(FsError::Reserved { .. })
            ),
            "{reserved}"
        );
    }
    assert!(matches!(
        with(vec![bind(input.path(), "/in"), bind(&file, "/in")]),
        Err(FsError::DuplicateTarget { .. })
    ));
    // Inside a read-only bind whose source lacks the mount point: it would have to be created
    // in the host's directory, so it is refused.
    assert!(matches!(
        with(vec![bind(input.path(), "/in"), bind(&file, "/in/sub/f")]),
        Err(FsError::NestedTargetMissing { .. })
    ));
    assert!(matches!(
        with(vec![bind(input.path(), "/usr/no-such-dir-for-test")]),
        Err(FsError::NestedTargetMissing { .. })
    ));
    // Nested in another bind whose source has the mount point: fine, in either order.
    fs::create_dir(input.path().join("sub")).unwrap();
    assert!(with(vec![
        bind(input.path(), "/in/sub"),
        bind(input.path(), "/in")
    ])
    .is_ok());

    // A symlink in the outer source could point the mount anywhere on the host.
    std::os::unix::fs::symlink("/etc", input.path().join("link")).unwrap();
    assert!(matches!(
        with(vec![
            bind(input.path(), "/in"),
            bind(input.path(), "/in/link/x")
        ]),
        Err(FsError::Symlink { .. })
    ));

    let mut spec = l.spec();
    spec.working_dir = Some("work/dir".into());
    assert!(matches!(
        FsPlan::new(&spec),
        Err(FsError::NotAbsolute { .. })
    ));
    let mut spec = l.spec();
    spec.system_ro.push("/dev".into());
    assert!(matches!(FsPlan::new(&spec), Err(FsError::Reserved { .. })));
    let mut spec = l.spec();
    spec.root_dir = "/".into();
    assert!(matches!(FsPlan::new(&spec), Err(FsError::RootDir { .. })));
}

#[test]
fn nested_bind_is_mounted_after_its_outer_bind() {
    if common::skip_unless_mounts("nested_bind_is_mounted_after_its_outer_bind") {
        return;
    }
    let l = Layout::new();
    let outer = tempfile::tempdir().unwrap();
    fs::create_dir(outer.path().join("sub")).unwrap();
    let inner = tempfile::tempdir().unwrap();
    fs::write(inner.path().join("inner.txt"), "inner").unwrap();
    let mut spec = l.spec();
    // Listed inner first: the plan must still mount the outer one first.
    spec.binds = vec![
        Bind {
            source: inner.path().to_owned(),
            target: "/in/sub".into(),
            read_only: true,
            untrusted_below: None,
            ..Bind::default()
        },
        Bind {
            source: outer.path().to_owned(),
            target: "/in".into(),
            read_only: true,
            untrusted_below: None,
            ..Bind::default()
        },
    ];
    spec.working_dir = Some("/work/dir".into());
    for (how, plan, _template) in both_ways(&spec) {
        let out = ok(&run(
            "cat /in/sub/inner.txt; echo; pwd",
            Some(plan),
            None,
            true,
        ));
        assert_eq!(out, "inner\n/work/dir\n", "{how}");
    }
}

#[test]
fn working_dir_is_a_writable_scratch_with_binds_inside() {
    if common::skip_unless_mounts("working_dir_is_a_writable_scratch_with_binds_inside") {
        return;
    }
    let l = Layout::new();
    let user = UserPlan::default_unprivileged().unwrap();
    let input = tempfile::tempdir().unwrap();
    fs::set_permissions(input.path(), fs::Permissions::from_mode(0o755)).unwrap();
    fs::write(input.path().join("data.txt"), "in-work").unwrap();
    let mut spec = l.spec();
    spec.working_dir = Some("/job/work".into());
    spec.binds = vec![Bind {
        source: input.path().to_owned(),
        target: "/job/work/in".into(),
        read_only: true,
        untrusted_below: None,
        ..Bind::default()
    }];
    for (how, plan, _template) in both_ways(&spec) {
        let out = ok(&run(
            "pwd; echo scratch > note && cat note; cat in/data.txt",
            Some(plan),
            Some(user.clone()),
            true,
        ));
        assert_eq!(out, "/job/work\nscratch\nin-work", "{how}");
        // The scratch lived in the job's namespace only.
        assert!(!l.root().join("job/work/note").exists(), "{how}");
        assert!(!input.path().join("note").exists(), "{how}");
    }

    // Inside a bind the working directory must already exist in the source.
    let mut spec = l.spec();
    spec.working_dir = Some("/data/missing".into());
    spec.binds = vec![Bind {
        source: input.path().to_owned(),
        target: "/data".into(),
        read_only: true,
        untrusted_below: None,
        ..Bind::default()
    }];
    assert!(matches!(
        FsPlan::new(&spec),
        Err(FsError::NestedTargetMissing { .. })
    ));
}

#[test]
fn user_resolution() {
    let nobody = UserPlan::resolve("nobody");
    let Ok(nobody) = nobody else {
        eprintln!("skipping user_resolution: no `nobody` in the user database");
        return;
    };
    assert_ne!(nobody.uid, 0);
    assert_eq!(UserPlan::resolve(&nobody.uid.to_string()).unwrap(), nobody);
    assert_eq!(UserPlan::default_unprivileged().unwrap().uid, nobody.uid);
    let with_group = UserPlan::resolve(&format!("nobody:{}", 4242)).unwrap();
    assert_eq!((with_group.uid, with_group.gid), (nobody.uid, 4242));
    let unknown_uid = UserPlan::resolve("4243").unwrap();
    assert_eq!((unknown_uid.uid, unknown_uid.gid), (4243, 4243));
    assert!(matches!(
        UserPlan::resolve("no-such-user-xyz"),
        Err(UserError::UnknownUser(_))
    ));
    assert!(matches!(
        UserPlan::resolve("nobody:no-such-group-xyz"),
        Err(UserError::UnknownGroup(_))
    ));
    assert!(matches!(
        UserPlan::resolve(":1"),
        Err(UserError::Invalid(_))
    ));
}

#[test]
fn job_runs_as_the_user_and_cannot_write_root_dirs() {
    if common::skip_unless_root("job_runs_as_the_user_and_cannot_write_root_dirs") {
        return;
    }
    let user = UserPlan::default_unprivileged().unwrap();
    let private = tempfile::tempdir().unwrap();
    fs::set_permissions(private.path(), fs::Permissions::from_mode(0o700)).unwrap();
    let out = run(
        &format!(
            "id -u; id -g; id -G; touch {}/x && echo wrote-private",
            private.path().display()
        ),
        None,
        Some(user.clone()),
        true,
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines[0], user.uid.to_string(), "{stdout}");
    assert_eq!(lines[1], user.gid.to_string(), "{stdout}");
    assert_eq!(
        lines[2],
        user.gid.to_string(),
        "supplementary groups: {stdout}"
    );
    assert!(!lines.contains(&"wrote-private"), "{stdout}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Permission denied"),
        "{:?}",
        out
    );
}

#[test]
fn setuid_binaries_do_not_regain_root() {
    if common::skip_unless_root("setuid_binaries_do_not_regain_root") {
        return;
    }
    let user = UserPlan::default_unprivileged().unwrap();
    // A setuid-root copy of `id` on a filesystem that honours setuid (tmpfs /tmp may not).
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let id = dir.path().join("id-suid");
    fs::copy("/usr/bin/id", &id).unwrap();
    fs::set_permissions(&id, fs::Permissions::from_mode(0o4755)).unwrap();
    let mut parent = dir.path().parent();
    while let Some(p) = parent {
        if fs::metadata(p).unwrap().mode() & 0o001 == 0 {
            eprintln!(
                "skipping setuid_binaries_do_not_regain_root: {} is not traversable by others",
                p.display()
            );
            return;
        }
        parent = p.parent();
    }
    let script = format!("{} -u", id.display());

    // Control: without no_new_privs the setuid bit works, so the check below can fail.
    let control = ok(&run(&script, None, Some(user.clone()), false));
    if control.trim() != "0" {
        eprintln!(
            "skipping setuid_binaries_do_not_regain_root: setuid is not honoured here ({control})"
        );
        return;
    }
    let out = ok(&run(&script, None, Some(user.clone()), true));
    assert_eq!(out.trim(), user.uid.to_string());
}

#[test]
fn chowned_results_dir_is_writable_by_the_jailed_user() {
    if common::skip_unless_mounts("chowned_results_dir_is_writable_by_the_jailed_user") {
        return;
    }
    let l = Layout::new();
    let user = UserPlan::default_unprivileged().unwrap();
    fs::create_dir_all(l.results().join("out/nested")).unwrap();
    let mut spec = l.spec();
    spec.binds = vec![Bind {
        source: l.results().join("out"),
        target: "/outputs".into(),
        read_only: false,
        untrusted_below: None,
        ..Bind::default()
    }];
    let script = &format!(
        "echo a > /outputs/a && echo b > /outputs/nested/b && echo wrote; id -u; \
         if ls /proc/1/root/ >/dev/null 2>&1; then echo host-root-reachable; fi; \
         if test -e /proc/{}; then echo plugin-visible; fi; test -e /proc/self && echo self-ok",
        std::process::id()
    );

    // Control: root-owned, the user cannot write.
    let before = run(
        script,
        Some(FsPlan::new(&spec).unwrap()),
        Some(user.clone()),
        true,
    );
    assert!(!String::from_utf8_lossy(&before.stdout).contains("wrote"));

    chown_tree(&l.results(), user.uid, user.gid).unwrap();
    let meta = fs::metadata(l.results().join("out/nested")).unwrap();
    assert_eq!((meta.uid(), meta.gid()), (user.uid, user.gid));
    for (how, plan, _template) in both_ways(&spec) {
        let out = ok(&run(script, Some(plan), Some(user.clone()), true));
        // hidepid: the root-owned processes of the host (the plugin, init) are not even listed.
        assert_eq!(out, format!("wrote\n{}\nself-ok\n", user.uid), "{how}");
    }
    assert_eq!(
        fs::read_to_string(l.results().join("out/nested/b")).unwrap(),
        "b\n"
    );
}

#[test]
fn chown_tree_does_not_follow_symlinks() {
    if common::skip_unless_root("chown_tree_does_not_follow_symlinks") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    let victim = outside.path().join("victim");
    fs::write(&victim, "x").unwrap();
    std::os::unix::fs::symlink(&victim, dir.path().join("link")).unwrap();
    std::os::unix::fs::symlink(outside.path(), dir.path().join("dirlink")).unwrap();
    chown_tree(dir.path(), 4244, 4244).unwrap();
    assert_eq!(fs::metadata(&victim).unwrap().uid(), 0);
    assert_eq!(fs::metadata(outside.path()).unwrap().uid(), 0);
    assert_eq!(
        fs::symlink_metadata(dir.path().join("link")).unwrap().uid(),
        4244
    );
    assert_eq!(fs::metadata(dir.path()).unwrap().uid(), 4244);
}

/// Give `path` and everything below it to `uid:gid`, as the monitor gives a job its outputs.
fn chown_tree(path: &Path, uid: u32, gid: u32) -> std::io::Result<()> {
    use std::os::fd::AsFd;
    let parent = fs::File::open(path.parent().unwrap())?;
    let name = path.file_name().unwrap().to_str().unwrap();
    hand_over(parent.as_fd(), name, uid, gid, Direction::ToJob)
        .map(|_| ())
        .map_err(std::io::Error::other)
}

/// Unmounts on drop, so a failing assertion leaves nothing mounted on the host.
struct HostMount(PathBuf);

impl HostMount {
    /// A tmpfs mounted on the host at `at`.
    fn tmpfs(at: &Path, flags: nix::mount::MsFlags, data: Option<&str>) -> HostMount {
        nix::mount::mount(Some("tmpfs"), at, Some("tmpfs"), flags, data).unwrap();
        HostMount(at.to_owned())
    }
}

impl Drop for HostMount {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
    }
}

#[test]
fn mounts_below_a_system_dir_are_read_only_too_and_device_nodes_work() {
    if common::skip_unless_mounts("mounts_below_a_system_dir_are_read_only_too") {
        return;
    }
    let l = Layout::new();
    // A system directory outside /tmp (reserved for the job's own), with a writable tmpfs
    // mounted below it on the host: the job must get both read-only.
    let sys = tempfile::tempdir_in("/var/tmp").unwrap();
    let sub = sys.path().join("sub");
    fs::create_dir(&sub).unwrap();
    let _mounted = HostMount::tmpfs(&sub, nix::mount::MsFlags::empty(), None);
    fs::write(sub.join("seen"), "below").unwrap();
    let mut spec = l.spec();
    spec.system_ro.push(sys.path().to_owned());
    for (how, plan, _template) in both_ways(&spec) {
        let out = run(
            &format!(
                "cat {sub}/seen; echo; \
             touch {sub}/new 2>/dev/null && echo sub-writable; \
             touch {top}/new 2>/dev/null && echo top-writable; \
             echo x > /dev/null && echo null-ok; head -c 3 /dev/zero | wc -c; \
             head -c 5 /dev/urandom | wc -c; ls -l /dev/null | cut -c1-10",
                sub = sub.display(),
                top = sys.path().display()
            ),
            Some(plan),
            None,
            true,
        );
        assert_eq!(
            ok(&out).lines().collect::<Vec<_>>(),
            ["below", "null-ok", "3", "5", "crw-rw-rw-"],
            "{how}"
        );
    }
    // Only the job's view was read-only.
    fs::write(sub.join("host-can"), "yes").unwrap();
}

#[test]
fn a_bind_inside_a_shared_bind_stays_in_the_job() {
    if common::skip_unless_mounts("a_bind_inside_a_shared_bind_stays_in_the_job") {
        return;
    }
    let l = Layout::new();
    // An input on a shared mount (as most of a systemd host is): a copy of it made for the job
    // would stay its peer, and a bind mounted inside that copy would appear on the host.
    let shared = tempfile::tempdir_in("/var/tmp").unwrap();
    let _mounted = HostMount::tmpfs(shared.path(), nix::mount::MsFlags::empty(), None);
    nix::mount::mount(
        None::<&str>,
        shared.path(),
        None::<&str>,
        nix::mount::MsFlags::MS_SHARED,
        None::<&str>,
    )
    .unwrap();
    fs::create_dir(shared.path().join("sub")).unwrap();
    let inner = tempfile::tempdir().unwrap();
    fs::write(inner.path().join("inner.txt"), "inner").unwrap();
    let mut spec = l.spec();
    spec.binds = vec![
        Bind {
            source: shared.path().to_owned(),
            target: "/in".into(),
            read_only: true,
            untrusted_below: None,
            ..Bind::default()
        },
        Bind {
            source: inner.path().to_owned(),
            target: "/in/sub".into(),
            read_only: true,
            untrusted_below: None,
            ..Bind::default()
        },
    ];
    let below = shared.path().join("sub").display().to_string();
    for (how, plan, _template) in both_ways(&spec) {
        let out = ok(&run("cat /in/sub/inner.txt", Some(plan), None, true));
        assert_eq!(out, "inner", "{how}");
        assert!(
            !mountinfo().iter().any(|line| line.contains(&below)),
            "{how}: the job's bind appeared on the host at {below}"
        );
    }
}

#[test]
fn a_bind_gets_the_same_flags_either_way() {
    if common::skip_unless_mounts("a_bind_gets_the_same_flags_either_way") {
        return;
    }
    let l = Layout::new();
    // An input on a noexec mount: the job's bind is remounted with the sandbox's own flags
    // (nosuid, nodev, read-only), so a script in it runs; whichever way the root is built.
    let src = tempfile::tempdir_in("/var/tmp").unwrap();
    let _mounted = HostMount::tmpfs(src.path(), nix::mount::MsFlags::MS_NOEXEC, Some("mode=755"));
    let script = src.path().join("run.sh");
    fs::write(&script, "#!/bin/sh\necho ran\n").unwrap();
    fs::set_permissions(&script, fs::Permissions::from_mode(0o755)).unwrap();
    let mut spec = l.spec();
    spec.binds = vec![Bind {
        source: src.path().to_owned(),
        target: "/in".into(),
        read_only: true,
        untrusted_below: None,
        ..Bind::default()
    }];
    for (how, plan, _template) in both_ways(&spec) {
        let out = ok(&run(
            "/in/run.sh; grep ' /in ' /proc/self/mountinfo | cut -d' ' -f6",
            Some(plan),
            None,
            true,
        ));
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines[0], "ran", "{how}: {out}");
        let opts: Vec<&str> = lines[1].split(',').collect();
        for want in ["ro", "nosuid", "nodev", "relatime"] {
            assert!(opts.contains(&want), "{how}: {want} missing in {opts:?}");
        }
        assert!(!opts.contains(&"noexec"), "{how}: {opts:?}");
    }
}
