//! Pure cgroup v2 code paths against a fake cgroupfs made of plain files in a temp dir: what gets
//! written where, base/leaf layout, relocation out of a cgroup that must delegate, parsing.

use std::fs;
use std::path::{Path, PathBuf};

use executor_plugin::sandbox::cgroup::{
    CgroupConfig, CgroupError, CgroupLimits, CgroupManager, FsKind, FsProbe, HostView, Mode,
};
use tempfile::TempDir;

const ALL_CONTROLLERS: &str = "cpuset cpu io memory hugetlb pids rdma misc\n";

/// A fake cgroup2 mount: the root plus the directories down to `own`, each with the files the
/// kernel would show. `procs` gives `cgroup.procs` contents per cgroup path.
struct Fake {
    _tmp: TempDir,
    root: PathBuf,
}

impl Fake {
    fn new(root_controllers: &str, dirs: &[(&str, &str)]) -> Fake {
        let tmp = TempDir::new().unwrap();
        let root = tmp.path().join("cgroup");
        fs::create_dir(&root).unwrap();
        fs::write(root.join("cgroup.controllers"), root_controllers).unwrap();
        fs::write(root.join("cgroup.subtree_control"), "").unwrap();
        fs::write(root.join("cgroup.procs"), "1\n").unwrap();
        for (path, procs) in dirs {
            let dir = root.join(path.trim_start_matches('/'));
            fs::create_dir_all(&dir).unwrap();
            fs::write(dir.join("cgroup.subtree_control"), "").unwrap();
            fs::write(dir.join("cgroup.procs"), procs).unwrap();
        }
        Fake { _tmp: tmp, root }
    }

    fn host(&self, own: &str) -> HostView {
        HostView {
            mount_root: self.root.clone(),
            proc_self_cgroup: format!("0::{own}\n"),
            probe: FsProbe::Table(vec![(self.root.clone(), FsKind::Cgroup2)]),
        }
    }

    fn path(&self, cgroup: &str) -> PathBuf {
        self.root.join(cgroup.trim_start_matches('/'))
    }

    fn read(&self, cgroup: &str, file: &str) -> String {
        fs::read_to_string(self.path(cgroup).join(file))
            .unwrap_or_else(|e| panic!("{cgroup}/{file}: {e}"))
    }
}

fn exists(p: &Path) -> bool {
    p.exists()
}

const OWN: &str = "/system.slice/plugin.service";
const BASE: &str = "/system.slice/plugin.service/executor-plugins";

#[test]
fn base_gets_controllers_and_own_processes_move_to_supervisor() {
    let fake = Fake::new(
        ALL_CONTROLLERS,
        &[("/system.slice", ""), (OWN, "100\n200\n")],
    );
    let m = CgroupManager::detect_in(&fake.host(OWN), &CgroupConfig::default()).unwrap();
    assert_eq!(m.mode(), Mode::V2);
    assert_eq!(m.base_dirs(), vec![fake.path(BASE)]);

    // Every cgroup from the root down to the base enables the three controllers, once.
    for cg in ["/", "/system.slice", OWN] {
        assert_eq!(
            fake.read(cg, "cgroup.subtree_control"),
            "+cpu +memory +pids\n",
            "{cg}"
        );
    }
    assert_eq!(
        fake.read(BASE, "cgroup.subtree_control"),
        "+cpu +memory +pids\n"
    );
    // The plugin's own cgroup held processes: they were moved, one pid per write.
    assert_eq!(
        fake.read(&format!("{BASE}/supervisor"), "cgroup.procs"),
        "100\n200\n"
    );
    // The root's processes are the system's and the root is exempt from the rule: untouched.
    assert_eq!(fake.read("/", "cgroup.procs"), "1\n");
    let e = m.enforces();
    assert!(e.cpu && e.memory && e.pids);
    assert!(!e.swap, "no memory.swap.max in the fake base");
}

#[test]
fn already_enabled_controllers_are_not_rewritten() {
    let fake = Fake::new(ALL_CONTROLLERS, &[("/system.slice", ""), (OWN, "")]);
    fs::write(
        fake.path("/").join("cgroup.subtree_control"),
        "cpu io memory pids\n",
    )
    .unwrap();
    CgroupManager::detect_in(&fake.host(OWN), &CgroupConfig::default()).unwrap();
    assert_eq!(
        fake.read("/", "cgroup.subtree_control"),
        "cpu io memory pids\n"
    );
    // No processes in the own cgroup: nothing to relocate, no supervisor leaf.
    assert!(!exists(&fake.path(&format!("{BASE}/supervisor"))));
}

#[test]
fn a_process_in_the_supervisor_leaf_resolves_the_same_base() {
    let sup = format!("{BASE}/supervisor");
    let fake = Fake::new(
        ALL_CONTROLLERS,
        &[
            ("/system.slice", ""),
            (OWN, ""),
            (BASE, ""),
            (&sup, "300\n"),
        ],
    );
    let m = CgroupManager::detect_in(&fake.host(&sup), &CgroupConfig::default()).unwrap();
    assert_eq!(m.base_dirs(), vec![fake.path(BASE)]);
    assert!(!exists(&fake.path(&format!("{sup}/executor-plugins"))));
    assert_eq!(fake.read(&sup, "cgroup.procs"), "300\n");
}

#[test]
fn configured_delegated_base_equal_to_own_cgroup_is_emptied_into_supervisor() {
    let own = "/system.slice/host.service";
    let fake = Fake::new(ALL_CONTROLLERS, &[("/system.slice", ""), (own, "42\n")]);
    let config = CgroupConfig {
        base: Some(PathBuf::from(own)),
        ..CgroupConfig::default()
    };
    let m = CgroupManager::detect_in(&fake.host(own), &config).unwrap();
    assert_eq!(m.base_dirs(), vec![fake.path(own)]);
    assert_eq!(
        fake.read(&format!("{own}/supervisor"), "cgroup.procs"),
        "42\n"
    );
    assert_eq!(
        fake.read(own, "cgroup.subtree_control"),
        "+cpu +memory +pids\n"
    );
}

#[test]
fn leaf_limits_are_written_as_the_kernel_expects() {
    let fake = Fake::new(
        ALL_CONTROLLERS,
        &[("/system.slice", ""), (OWN, ""), (BASE, "")],
    );
    // Swap accounting on: the kernel shows memory.swap.max in non-root cgroups.
    fs::write(fake.path(BASE).join("memory.swap.max"), "max\n").unwrap();
    let m = CgroupManager::detect_in(&fake.host(OWN), &CgroupConfig::default()).unwrap();
    assert!(m.enforces().swap);

    let limits = CgroupLimits {
        cpu: Some(0.5),
        memory: Some(64 << 20),
        pids: None,
    };
    let job = m.create("e-1", &limits).unwrap();
    assert_eq!(job.mode(), Mode::V2);
    let leaf = format!("{BASE}/e-1");
    assert_eq!(job.dirs(), vec![fake.path(&leaf).as_path()]);
    assert_eq!(fake.read(&leaf, "cpu.max"), "50000 100000\n");
    assert_eq!(fake.read(&leaf, "memory.max"), "67108864\n");
    assert_eq!(fake.read(&leaf, "memory.swap.max"), "0\n");
    assert_eq!(fake.read(&leaf, "memory.oom.group"), "1\n");
    assert_eq!(fake.read(&leaf, "pids.max"), "4096\n", "default pids cap");

    let job2 = m
        .create(
            "e-2",
            &CgroupLimits {
                cpu: Some(1.5),
                memory: None,
                pids: Some(64),
            },
        )
        .unwrap();
    let leaf2 = format!("{BASE}/e-2");
    assert_eq!(fake.read(&leaf2, "cpu.max"), "150000 100000\n");
    assert_eq!(fake.read(&leaf2, "pids.max"), "64\n");
    assert!(!exists(&fake.path(&leaf2).join("memory.max")));
    assert_eq!(job2.name(), "e-2");

    // A tiny share is raised to the kernel's 1 ms minimum rather than refused by it.
    m.create(
        "e-3",
        &CgroupLimits {
            cpu: Some(0.001),
            ..CgroupLimits::default()
        },
    )
    .unwrap();
    assert_eq!(
        fake.read(&format!("{BASE}/e-3"), "cpu.max"),
        "1000 100000\n"
    );

    // Same name twice: refused, not merged into the running job's cgroup.
    assert!(matches!(
        m.create("e-1", &CgroupLimits::default()),
        Err(CgroupError::Io { op: "mkdir", .. })
    ));
}

#[test]
fn configured_pids_default_and_no_cap() {
    let fake = Fake::new(ALL_CONTROLLERS, &[("/system.slice", ""), (OWN, "")]);
    let config = CgroupConfig {
        base: None,
        default_pids_max: Some(128),
    };
    let m = CgroupManager::detect_in(&fake.host(OWN), &config).unwrap();
    m.create("a", &CgroupLimits::default()).unwrap();
    assert_eq!(fake.read(&format!("{BASE}/a"), "pids.max"), "128\n");

    let fake = Fake::new(ALL_CONTROLLERS, &[("/system.slice", ""), (OWN, "")]);
    let config = CgroupConfig {
        base: None,
        default_pids_max: None,
    };
    let m = CgroupManager::detect_in(&fake.host(OWN), &config).unwrap();
    m.create("a", &CgroupLimits::default()).unwrap();
    assert!(!exists(&fake.path(&format!("{BASE}/a/pids.max"))));
}

#[test]
fn a_limit_without_its_controller_is_refused_not_dropped() {
    let fake = Fake::new("cpu pids\n", &[("/system.slice", ""), (OWN, "")]);
    let m = CgroupManager::detect_in(&fake.host(OWN), &CgroupConfig::default()).unwrap();
    let e = m.enforces();
    assert!(e.cpu && e.pids && !e.memory);
    assert_eq!(fake.read(BASE, "cgroup.subtree_control"), "+cpu +pids\n");
    let err = m
        .create(
            "x",
            &CgroupLimits {
                memory: Some(1 << 30),
                ..CgroupLimits::default()
            },
        )
        .unwrap_err();
    assert!(
        matches!(
            err,
            CgroupError::Unenforceable {
                limit: "memory",
                ..
            }
        ),
        "{err}"
    );
    assert!(!exists(&fake.path(&format!("{BASE}/x"))));
    // Without a memory controller there is no oom.group to set.
    m.create("y", &CgroupLimits::default()).unwrap();
    assert!(!exists(&fake.path(&format!("{BASE}/y/memory.oom.group"))));
}

#[test]
fn invalid_names_and_limits() {
    let fake = Fake::new(ALL_CONTROLLERS, &[("/system.slice", ""), (OWN, "")]);
    let m = CgroupManager::detect_in(&fake.host(OWN), &CgroupConfig::default()).unwrap();
    for name in ["", "..", "../x", "a/b", ".hidden", "supervisor", "sp ace"] {
        assert!(
            matches!(
                m.create(name, &CgroupLimits::default()),
                Err(CgroupError::InvalidName(_))
            ),
            "{name:?}"
        );
    }
    for cpu in [0.0, -1.0, f64::NAN, f64::INFINITY] {
        let limits = CgroupLimits {
            cpu: Some(cpu),
            ..CgroupLimits::default()
        };
        assert!(
            matches!(
                m.create("c", &limits),
                Err(CgroupError::InvalidLimit { limit: "cpu", .. })
            ),
            "{cpu}"
        );
    }
    let zero_mem = CgroupLimits {
        memory: Some(0),
        ..CgroupLimits::default()
    };
    assert!(matches!(
        m.create("c", &zero_mem),
        Err(CgroupError::InvalidLimit { .. })
    ));
}

/// Gives a fake leaf the files the kernel creates with it.
fn kernel_files(leaf: &Path, files: &[(&str, &str)]) {
    for (name, content) in files {
        fs::write(leaf.join(name), content).unwrap();
    }
}

#[test]
fn oom_kill_counter_not_oom_events_decides() {
    let fake = Fake::new(ALL_CONTROLLERS, &[("/system.slice", ""), (OWN, "")]);
    let m = CgroupManager::detect_in(&fake.host(OWN), &CgroupConfig::default()).unwrap();
    let job = m.create("o", &CgroupLimits::default()).unwrap();
    let leaf = fake.path(&format!("{BASE}/o"));
    kernel_files(
        &leaf,
        &[(
            "memory.events",
            "low 0\nhigh 0\nmax 12\noom 1\noom_kill 0\noom_group_kill 0\n",
        )],
    );
    assert!(!job.oom_killed().unwrap());
    kernel_files(
        &leaf,
        &[(
            "memory.events",
            "low 0\nhigh 0\nmax 40\noom 2\noom_kill 2\noom_group_kill 1\n",
        )],
    );
    assert!(job.oom_killed().unwrap());
    kernel_files(&leaf, &[("memory.events", "low 0\nhigh 0\n")]);
    assert!(matches!(job.oom_killed(), Err(CgroupError::Parse { .. })));
}

#[test]
fn kill_writes_cgroup_kill_and_join_writes_zero() {
    let fake = Fake::new(ALL_CONTROLLERS, &[("/system.slice", ""), (OWN, "")]);
    let m = CgroupManager::detect_in(&fake.host(OWN), &CgroupConfig::default()).unwrap();
    let job = m.create("k", &CgroupLimits::default()).unwrap();
    let leaf = fake.path(&format!("{BASE}/k"));
    kernel_files(&leaf, &[("cgroup.procs", ""), ("cgroup.kill", "")]);

    let join = job.join_handle().unwrap();
    join.join_self().unwrap();
    assert_eq!(fs::read_to_string(leaf.join("cgroup.procs")).unwrap(), "0");

    fs::write(leaf.join("cgroup.procs"), "").unwrap();
    job.kill_all().unwrap();
    assert_eq!(fs::read_to_string(leaf.join("cgroup.kill")).unwrap(), "1\n");
    assert!(
        !leaf.join("cgroup.freeze").exists(),
        "no freeze fallback when cgroup.kill emptied the cgroup"
    );
}

#[test]
fn stats_from_v2_files() {
    let fake = Fake::new(ALL_CONTROLLERS, &[("/system.slice", ""), (OWN, "")]);
    let m = CgroupManager::detect_in(&fake.host(OWN), &CgroupConfig::default()).unwrap();
    let job = m.create("s", &CgroupLimits::default()).unwrap();
    let leaf = fake.path(&format!("{BASE}/s"));
    kernel_files(
        &leaf,
        &[
            ("memory.current", "1048576\n"),
            ("memory.peak", "2097152\n"),
            ("pids.current", "3\n"),
            ("pids.events", "max 7\n"),
            (
                "cpu.stat",
                "usage_usec 1500000\nuser_usec 1000000\nsystem_usec 500000\nnr_periods 30\nnr_throttled 12\nthrottled_usec 700000\n",
            ),
        ],
    );
    let s = job.stats().unwrap();
    assert_eq!(s.memory_current, Some(1 << 20));
    assert_eq!(s.memory_peak, Some(2 << 20));
    assert_eq!(s.pids_current, Some(3));
    assert_eq!(s.fork_failures, Some(7));
    assert_eq!(s.cpu_usage_usec, Some(1_500_000));
    assert_eq!(s.nr_periods, Some(30));
    assert_eq!(s.nr_throttled, Some(12));
    assert_eq!(s.throttled_usec, Some(700_000));

    // memory.peak is 5.19+: absent is "unknown", not an error.
    fs::remove_file(leaf.join("memory.peak")).unwrap();
    assert_eq!(job.stats().unwrap().memory_peak, None);
    fs::write(leaf.join("pids.current"), "lots\n").unwrap();
    assert!(matches!(job.stats(), Err(CgroupError::Parse { .. })));
}

#[test]
fn no_cgroup_mount_means_mode_none_and_create_says_so() {
    let tmp = TempDir::new().unwrap();
    let host = HostView {
        mount_root: tmp.path().join("absent"),
        proc_self_cgroup: "0::/\n".to_owned(),
        probe: FsProbe::Table(Vec::new()),
    };
    let m = CgroupManager::detect_in(&host, &CgroupConfig::default()).unwrap();
    assert_eq!(m.mode(), Mode::None);
    assert!(m.unavailable_reason().unwrap().contains("does not exist"));
    assert_eq!(m.enforces(), Default::default());
    let err = m.create("x", &CgroupLimits::default()).unwrap_err();
    assert!(matches!(err, CgroupError::Unavailable(_)), "{err}");
}
