//! Detection of v2 / v1 / hybrid / none from sample `/proc/self/cgroup` texts and mount layouts
//! (a table standing in for statfs), and the v1 file writes, in a fake tree.

use std::fs;
use std::path::{Path, PathBuf};

use executor_plugin::sandbox::cgroup::{
    parse_proc_cgroup, CgroupConfig, CgroupLimits, CgroupManager, FsKind, FsProbe, HostView, Mode,
};
use tempfile::TempDir;

/// `/proc/self/cgroup` of this project's build machine (hybrid).
const HYBRID: &str = "9:name=systemd:/\n8:pids:/\n7:blkio:/\n6:freezer:/\n5:devices:/\n\
4:memory:/process_api/c82b\n3:cpuset:/\n2:cpuacct:/\n1:cpu:/\n0::/\n";

/// A typical systemd v1 host with `cpu,cpuacct` co-mounted and no v2 tree.
const V1_COMOUNTED: &str = "11:pids:/user.slice/user-0.slice/session-1.scope\n\
7:cpu,cpuacct:/user.slice\n5:memory:/user.slice/user-0.slice/session-1.scope\n\
3:freezer:/\n1:name=systemd:/user.slice/user-0.slice/session-1.scope\n";

fn host(root: &Path, text: &str, table: &[(&str, FsKind)]) -> HostView {
    HostView {
        mount_root: root.to_path_buf(),
        proc_self_cgroup: text.to_owned(),
        probe: FsProbe::Table(
            table
                .iter()
                .map(|(p, k)| (root.join(p), *k))
                .chain([(root.to_path_buf(), FsKind::Other)])
                .collect(),
        ),
    }
}

fn mkdirs(root: &Path, dirs: &[&str]) {
    for d in dirs {
        fs::create_dir_all(root.join(d)).unwrap();
    }
}

#[test]
fn parse_skips_named_hierarchies_and_keeps_v2_line() {
    let m = parse_proc_cgroup(HYBRID);
    assert_eq!(m.len(), 9, "name=systemd dropped: {m:?}");
    assert!(m
        .iter()
        .any(|l| l.hierarchy_id == 0 && l.controllers.is_empty() && l.path == Path::new("/")));
    let mem = m.iter().find(|l| l.controllers == ["memory"]).unwrap();
    assert_eq!(mem.path, PathBuf::from("/process_api/c82b"));
    let m = parse_proc_cgroup(V1_COMOUNTED);
    assert!(m.iter().any(|l| l.controllers == ["cpu", "cpuacct"]));
    assert!(parse_proc_cgroup("garbage\n\n3:x\n").is_empty());
}

#[test]
fn hybrid_uses_v1_for_limits_and_the_unified_tree_for_tracking() {
    let tmp = TempDir::new().unwrap();
    let root = tmp.path();
    mkdirs(
        root,
        &["memory", "cpu", "cpuacct", "pids", "freezer", "unified"],
    );
    let h = host(
        root,
        HYBRID,
        &[
            ("memory", FsKind::Cgroup1),
            ("cpu", FsKind::Cgroup1),
            ("cpuacct", FsKind::Cgroup1),
            ("pids", FsKind::Cgroup1),
            ("freezer", FsKind::Cgroup1),
            ("unified", FsKind::Cgroup2),
        ],
    );
    let m = CgroupManager::detect_in(&h, &CgroupConfig::default()).unwrap();
    assert_eq!(m.mode(), Mode::Hybrid);
    let mut bases = m.base_dirs();
    bases.sort();
    let mut want: Vec<PathBuf> = [
        "cpu/executor-plugins",
        "cpuacct/executor-plugins",
        "freezer/executor-plugins",
        "memory/process_api/c82b/executor-plugins",
        "pids/executor-plugins",
        "unified/executor-plugins",
    ]
    .iter()
    .map(|p| root.join(p))
    .collect();
    want.sort();
    assert_eq!(bases, want);
    let e = m.enforces();
    assert!(e.cpu && e.memory && e.pids && !e.swap);

    // Leaf limits, v1 style; memsw because the base says swap accounting is on.
    fs::write(
        root.join("memory/process_api/c82b/executor-plugins/memory.memsw.limit_in_bytes"),
        "",
    )
    .unwrap();
    let m = CgroupManager::detect_in(&h, &CgroupConfig::default()).unwrap();
    assert!(m.enforces().swap);
    let job = m
        .create(
            "j1",
            &CgroupLimits {
                cpu: Some(0.5),
                memory: Some(64 << 20),
                pids: Some(64),
            },
        )
        .unwrap();
    assert_eq!(job.mode(), Mode::Hybrid);
    assert_eq!(job.dirs().len(), 6);
    let read = |p: &str| fs::read_to_string(root.join(p)).unwrap();
    assert_eq!(
        read("cpu/executor-plugins/j1/cpu.cfs_period_us"),
        "100000\n"
    );
    assert_eq!(read("cpu/executor-plugins/j1/cpu.cfs_quota_us"), "50000\n");
    let mem = "memory/process_api/c82b/executor-plugins/j1";
    assert_eq!(read(&format!("{mem}/memory.limit_in_bytes")), "67108864\n");
    assert_eq!(
        read(&format!("{mem}/memory.memsw.limit_in_bytes")),
        "67108864\n"
    );
    assert_eq!(read("pids/executor-plugins/j1/pids.max"), "64\n");
    // The unified tree has no controllers: only a directory, no limit files.
    assert_eq!(
        fs::read_dir(root.join("unified/executor-plugins/j1"))
            .unwrap()
            .count(),
        0
    );

    // v1 OOM counter.
    fs::write(
        root.join(format!("{mem}/memory.oom_control")),
        "oom_kill_disable 0\nunder_oom 0\noom_kill 1\n",
    )
    .unwrap();
    assert!(job.oom_killed().unwrap());

    // v1 stats: cpuacct in ns, throttled_time in ns.
    fs::write(root.join(format!("{mem}/memory.usage_in_bytes")), "4096\n").unwrap();
    fs::write(
        root.join(format!("{mem}/memory.max_usage_in_bytes")),
        "8192\n",
    )
    .unwrap();
    fs::write(
        root.join("cpuacct/executor-plugins/j1/cpuacct.usage"),
        "2500000000\n",
    )
    .unwrap();
    fs::write(
        root.join("cpu/executor-plugins/j1/cpu.stat"),
        "nr_periods 10\nnr_throttled 4\nthrottled_time 300000000\n",
    )
    .unwrap();
    fs::write(root.join("pids/executor-plugins/j1/pids.current"), "2\n").unwrap();
    let s = job.stats().unwrap();
    assert_eq!(s.memory_current, Some(4096));
    assert_eq!(s.memory_peak, Some(8192));
    assert_eq!(s.cpu_usage_usec, Some(2_500_000));
    assert_eq!(s.nr_throttled, Some(4));
    assert_eq!(s.throttled_usec, Some(300_000));
    assert_eq!(s.pids_current, Some(2));
}

#[test]
fn v1_with_comounted_cpu_cpuacct_and_no_unified_tree() {
    let tmp = TempDir::new().unwrap();
    let root = tmp.path();
    mkdirs(root, &["cpu,cpuacct", "memory", "freezer", "pids"]);
    let h = host(
        root,
        V1_COMOUNTED,
        &[
            ("cpu,cpuacct", FsKind::Cgroup1),
            ("memory", FsKind::Cgroup1),
            ("freezer", FsKind::Cgroup1),
            // pids hierarchy listed in /proc/self/cgroup but not mounted where expected.
        ],
    );
    let m = CgroupManager::detect_in(&h, &CgroupConfig::default()).unwrap();
    assert_eq!(m.mode(), Mode::V1);
    let e = m.enforces();
    assert!(e.cpu && e.memory && !e.pids);
    let mut bases = m.base_dirs();
    bases.sort();
    assert_eq!(
        bases,
        vec![
            root.join("cpu,cpuacct/user.slice/executor-plugins"),
            root.join("freezer/executor-plugins"),
            root.join("memory/user.slice/user-0.slice/session-1.scope/executor-plugins"),
        ]
    );
    // No pids controller: no default cap is claimed, an explicit one is refused.
    let job = m.create("a", &CgroupLimits::default()).unwrap();
    assert_eq!(job.mode(), Mode::V1);
    assert!(m
        .create(
            "b",
            &CgroupLimits {
                pids: Some(10),
                ..Default::default()
            }
        )
        .is_err());
}

#[test]
fn configured_base_applies_in_every_hierarchy() {
    let tmp = TempDir::new().unwrap();
    let root = tmp.path();
    mkdirs(root, &["memory", "cpu", "unified"]);
    let h = host(
        root,
        "4:memory:/a\n1:cpu:/b\n0::/c\n",
        &[
            ("memory", FsKind::Cgroup1),
            ("cpu", FsKind::Cgroup1),
            ("unified", FsKind::Cgroup2),
        ],
    );
    let config = CgroupConfig {
        base: Some(PathBuf::from("/jobs")),
        ..Default::default()
    };
    let m = CgroupManager::detect_in(&h, &config).unwrap();
    let mut bases = m.base_dirs();
    bases.sort();
    assert_eq!(
        bases,
        vec![
            root.join("cpu/jobs"),
            root.join("memory/jobs"),
            root.join("unified/jobs")
        ]
    );
    for bad in ["/../escape", "relative", "/a/../../b"] {
        let config = CgroupConfig {
            base: Some(PathBuf::from(bad)),
            ..Default::default()
        };
        assert!(
            matches!(
                CgroupManager::detect_in(&h, &config),
                Err(executor_plugin::sandbox::cgroup::CgroupError::Config { .. })
            ),
            "{bad}"
        );
    }
    assert!(!root.join("escape").exists() && !root.join("b").exists());
}

#[test]
fn none_when_nothing_is_mounted() {
    let tmp = TempDir::new().unwrap();
    let root = tmp.path();
    // A tmpfs at /sys/fs/cgroup with empty directories and no cgroup filesystems.
    mkdirs(root, &["memory", "unified"]);
    let h = host(root, HYBRID, &[]);
    let m = CgroupManager::detect_in(&h, &CgroupConfig::default()).unwrap();
    assert_eq!(m.mode(), Mode::None);
    assert!(m.unavailable_reason().unwrap().contains("no cgroup"));

    // cgroup2 at the root but no 0:: line (v1-only /proc/self/cgroup): unusable, said so.
    let h = HostView {
        mount_root: root.to_path_buf(),
        proc_self_cgroup: "4:memory:/\n".to_owned(),
        probe: FsProbe::Table(vec![(root.to_path_buf(), FsKind::Cgroup2)]),
    };
    let m = CgroupManager::detect_in(&h, &CgroupConfig::default()).unwrap();
    assert_eq!(m.mode(), Mode::None);
}

#[test]
fn unified_only_legacy_tree_tracks_without_limits() {
    // v2 at /sys/fs/cgroup/unified and no v1 controllers mounted.
    let tmp = TempDir::new().unwrap();
    let root = tmp.path();
    mkdirs(root, &["unified"]);
    let h = host(root, "0::/\n", &[("unified", FsKind::Cgroup2)]);
    let m = CgroupManager::detect_in(&h, &CgroupConfig::default()).unwrap();
    assert_eq!(m.mode(), Mode::Hybrid);
    assert_eq!(m.enforces(), Default::default());
    assert!(m
        .create(
            "m",
            &CgroupLimits {
                memory: Some(1 << 20),
                ..Default::default()
            }
        )
        .is_err());
    assert!(m.create("ok", &CgroupLimits::default()).is_ok());
}
