//! Which cgroup hierarchies this host has and where this process sits in each.

use std::path::{Path, PathBuf};

use nix::sys::statfs::{statfs, CGROUP2_SUPER_MAGIC, CGROUP_SUPER_MAGIC};

/// What is mounted at a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsKind {
    Cgroup2,
    Cgroup1,
    Other,
    Missing,
}

/// How to tell what is mounted where: the real `statfs`, or a table (for a fake tree in tests).
#[derive(Debug, Clone)]
pub enum FsProbe {
    Statfs,
    /// Paths not listed are `Other` when they exist, else `Missing`.
    Table(Vec<(PathBuf, FsKind)>),
}

impl FsProbe {
    pub fn kind(&self, path: &Path) -> FsKind {
        match self {
            FsProbe::Statfs => match statfs(path) {
                Ok(st) if st.filesystem_type() == CGROUP2_SUPER_MAGIC => FsKind::Cgroup2,
                Ok(st) if st.filesystem_type() == CGROUP_SUPER_MAGIC => FsKind::Cgroup1,
                Ok(_) => FsKind::Other,
                Err(_) => FsKind::Missing,
            },
            FsProbe::Table(table) => match table.iter().find(|(p, _)| p == path) {
                Some((_, kind)) => *kind,
                None if path.exists() => FsKind::Other,
                None => FsKind::Missing,
            },
        }
    }
}

/// The host as the cgroup code sees it. `HostView::current()` is the real one; tests build one
/// over a temp dir.
#[derive(Debug, Clone)]
pub struct HostView {
    /// Where cgroup filesystems are mounted (`/sys/fs/cgroup`).
    pub mount_root: PathBuf,
    /// The text of `/proc/self/cgroup`.
    pub proc_self_cgroup: String,
    pub probe: FsProbe,
}

impl HostView {
    pub fn current() -> std::io::Result<HostView> {
        Ok(HostView {
            mount_root: PathBuf::from("/sys/fs/cgroup"),
            proc_self_cgroup: std::fs::read_to_string("/proc/self/cgroup")?,
            probe: FsProbe::Statfs,
        })
    }
}

/// One line of `/proc/self/cgroup`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Membership {
    pub hierarchy_id: u32,
    /// Empty for the v2 hierarchy; named hierarchies (`name=systemd`) are dropped when parsing.
    pub controllers: Vec<String>,
    pub path: PathBuf,
}

/// Parses `/proc/self/cgroup`; lines that do not have the `id:controllers:path` shape are skipped
/// (the kernel never writes them, and a partial view is still useful).
pub fn parse_proc_cgroup(text: &str) -> Vec<Membership> {
    text.lines()
        .filter_map(|line| {
            let mut parts = line.splitn(3, ':');
            let id = parts.next()?.parse::<u32>().ok()?;
            let ctrls = parts.next()?;
            let path = parts.next()?;
            if ctrls.starts_with("name=") || !path.starts_with('/') {
                return None;
            }
            let controllers = if ctrls.is_empty() {
                Vec::new()
            } else {
                ctrls.split(',').map(str::to_owned).collect()
            };
            Some(Membership {
                hierarchy_id: id,
                controllers,
                path: PathBuf::from(path),
            })
        })
        .collect()
}

/// The v1 controllers this module uses.
pub const V1_CONTROLLERS: [&str; 5] = ["memory", "cpu", "cpuacct", "pids", "freezer"];

/// A mounted v1 hierarchy this process belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct V1Mount {
    pub hierarchy_id: u32,
    /// All controllers of the hierarchy (`cpu,cpuacct` may share one).
    pub controllers: Vec<String>,
    pub mount: PathBuf,
    /// This process's cgroup in it.
    pub own: PathBuf,
}

impl V1Mount {
    pub fn has(&self, controller: &str) -> bool {
        self.controllers.iter().any(|c| c == controller)
    }
}

/// What detection found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Layout {
    /// The mount root itself is cgroup2.
    Unified { mount: PathBuf, own: PathBuf },
    /// v1 controllers, plus the controller-less v2 tree when one is mounted (hybrid).
    Legacy {
        v1: Vec<V1Mount>,
        unified: Option<(PathBuf, PathBuf)>,
    },
    /// No cgroup filesystem usable by this process; the string says why.
    None(String),
}

/// The v1 `devices` hierarchy this process belongs to, where one is mounted. Kept apart from
/// [`V1_CONTROLLERS`]: only jobs on a host with GPUs get a devices cgroup.
pub fn devices_mount(host: &HostView) -> Option<V1Mount> {
    let members = parse_proc_cgroup(&host.proc_self_cgroup);
    let m = members
        .iter()
        .find(|m| m.controllers.iter().any(|c| c == "devices"))?;
    let root = &host.mount_root;
    [root.join("devices"), root.join(m.controllers.join(","))]
        .into_iter()
        .find(|p| host.probe.kind(p) == FsKind::Cgroup1)
        .map(|mount| V1Mount {
            hierarchy_id: m.hierarchy_id,
            controllers: m.controllers.clone(),
            mount,
            own: m.path.clone(),
        })
}

pub fn detect_layout(host: &HostView) -> Layout {
    let members = parse_proc_cgroup(&host.proc_self_cgroup);
    let v2_own = members
        .iter()
        .find(|m| m.hierarchy_id == 0 && m.controllers.is_empty())
        .map(|m| m.path.clone());
    let root = &host.mount_root;

    match host.probe.kind(root) {
        FsKind::Cgroup2 => {
            return match v2_own {
                Some(own) => Layout::Unified {
                    mount: root.clone(),
                    own,
                },
                None => Layout::None(format!(
                    "{} is cgroup2 but /proc/self/cgroup has no 0:: line",
                    root.display()
                )),
            }
        }
        FsKind::Missing => {
            return Layout::None(format!("{} does not exist", root.display()));
        }
        FsKind::Cgroup1 | FsKind::Other => {}
    }

    let mut v1: Vec<V1Mount> = Vec::new();
    for ctrl in V1_CONTROLLERS {
        let Some(m) = members
            .iter()
            .find(|m| m.controllers.iter().any(|c| c == ctrl))
        else {
            continue;
        };
        if v1.iter().any(|seen| seen.hierarchy_id == m.hierarchy_id) {
            continue;
        }
        // Distributions mount `cpu,cpuacct` and link `cpu` and `cpuacct` to it; try both names.
        let candidates = [root.join(ctrl), root.join(m.controllers.join(","))];
        if let Some(mount) = candidates
            .into_iter()
            .find(|p| host.probe.kind(p) == FsKind::Cgroup1)
        {
            v1.push(V1Mount {
                hierarchy_id: m.hierarchy_id,
                controllers: m.controllers.clone(),
                mount,
                own: m.path.clone(),
            });
        }
    }

    let unified_mount = root.join("unified");
    let unified = match (host.probe.kind(&unified_mount), v2_own) {
        (FsKind::Cgroup2, Some(own)) => Some((unified_mount, own)),
        _ => None,
    };

    if v1.is_empty() && unified.is_none() {
        return Layout::None(format!(
            "no cgroup v1 controller ({}) or cgroup2 tree is mounted under {}",
            V1_CONTROLLERS.join(", "),
            root.display()
        ));
    }
    Layout::Legacy { v1, unified }
}
