//! The planner: from an [`FsSpec`] to the steps the child runs. In phases — the system
//! directories, the job's binds (each source opened once), the working directory, then per mount
//! its mount point and the mount itself, outer mounts first — and the same planner serves a full
//! root, a [`RootTemplate`], and a job on a template.

use std::collections::HashSet;
use std::ffi::CString;
use std::fs;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::child::Step;
use super::dev::dev_steps;
use super::source::{check_existing, detached_bind, fd_path, open_source, BindFlags};
use super::sys::{has_mount_setattr, RO_BIND};
use super::template::{prepare_root, resolve_system_dirs, SystemHow};
use super::{
    check_clean, cstring, depth, relative, tmpfs_options, FsError, FsSpec, RootTemplate, RESERVED,
};

/// The validated, fully prepared filesystem of one job.
#[derive(Debug, Clone)]
pub struct FsPlan {
    pub(super) steps: Vec<Step>,
    /// The descriptors [`Step::EnterTemplate`] and [`Step::Attach`] name by number (the
    /// template's namespace, the detached binds of the job's inputs, outputs and device
    /// nodes): held open here.
    pub(super) _trees: Arc<Vec<OwnedFd>>,
}

/// What [`FsPlan::build`] plans.
#[derive(Clone, Copy)]
pub(super) enum Layout<'a> {
    /// Everything, in a copy of the host's mount namespace: what a job's child does alone.
    Full,
    /// Only what every job gets (system directories, `/tmp`, `/proc`, `/dev`), ending in the
    /// root: the plan of a [`RootTemplate`].
    Template,
    /// Only the job's own mounts, inside a [`RootTemplate`].
    OnTemplate(&'a RootTemplate),
}

impl Layout<'_> {
    /// Whether this layout makes `entry`'s mount: a template holds what every job has, a job
    /// on a template adds the rest.
    fn plans(self, entry: &Entry) -> bool {
        match self {
            Layout::Full => true,
            Layout::Template => entry.in_template(),
            Layout::OnTemplate(_) => !entry.in_template(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    Dir,
    File,
}

impl Kind {
    pub(super) fn name(self) -> &'static str {
        match self {
            Kind::Dir => "directory",
            Kind::File => "file",
        }
    }

    pub(super) fn of(meta: &fs::Metadata) -> Kind {
        if meta.is_dir() {
            Kind::Dir
        } else {
            Kind::File
        }
    }
}

/// What one mount in the job's tree is, before it becomes steps.
#[derive(Debug, Clone)]
pub(super) enum Entry {
    Bind {
        what: &'static str,
        source: PathBuf,
        target: PathBuf,
        kind: Kind,
        read_only: bool,
        /// System directories carry their submounts (e.g. a container's /etc/hosts).
        recursive: bool,
        /// A job's input or output: its source resolved once ([`open_source`]), mounted from
        /// this descriptor. System directories (the host's, looked up once) have none.
        held: Option<Arc<OwnedFd>>,
    },
    /// A private, writable tmpfs: `/tmp`, and the working directory when no bind provides it.
    Tmpfs(PathBuf),
    Proc,
    Dev,
}

impl Entry {
    /// Whether every job has this mount (a system directory, `/tmp`, `/proc`, `/dev`): what a
    /// [`RootTemplate`] holds. Only system directories are bound recursively.
    fn in_template(&self) -> bool {
        match self {
            Entry::Bind { recursive, .. } => *recursive,
            Entry::Tmpfs(target) => target == Path::new("/tmp"),
            Entry::Proc | Entry::Dev => true,
        }
    }

    fn target(&self) -> &Path {
        match self {
            Entry::Bind { target, .. } => target,
            Entry::Tmpfs(target) => target,
            Entry::Proc => Path::new("/proc"),
            Entry::Dev => Path::new("/dev"),
        }
    }
}

/// `path` with `link` replaced by `resolved` when it starts with it.
pub(super) fn rewrite(path: &Path, links: &[(PathBuf, PathBuf)]) -> PathBuf {
    for (link, resolved) in links {
        if let Ok(rest) = path.strip_prefix(link) {
            return resolved.join(rest);
        }
    }
    path.to_owned()
}

/// Mount points of the host below `dir` (not `dir` itself), from `/proc/self/mountinfo`.
pub(super) fn submounts(table: &str, dir: &Path) -> Vec<PathBuf> {
    table
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(|field| PathBuf::from(unescape_mountinfo(field)))
        .filter(|m| m != dir && m.starts_with(dir))
        .collect()
}

/// mountinfo writes space, tab, newline and backslash in paths as `\ooo`.
pub(super) fn unescape_mountinfo(field: &str) -> std::ffi::OsString {
    let b = field.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|d| (b'0'..=b'7').contains(d))
        {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    std::ffi::OsString::from(std::ffi::OsStr::from_bytes(&out))
}

impl FsPlan {
    /// Validates `spec`, creates the mount points that belong in `root_dir` and plans every
    /// system call the child makes.
    pub fn new(spec: &FsSpec) -> Result<FsPlan, FsError> {
        FsPlan::build(spec, Layout::Full)
    }

    /// The plan for `spec` on top of `template`: the child enters the template's namespace and
    /// adds only what is the job's own (its binds, a scratch working directory). `None` when
    /// the template was not made for this spec (another root, other system directories, or
    /// device nodes to add to its read-only `/dev`): then [`FsPlan::new`] is the plan.
    pub fn on_template(spec: &FsSpec, template: &RootTemplate) -> Result<Option<FsPlan>, FsError> {
        if !template.fits(spec) {
            return Ok(None);
        }
        FsPlan::build(spec, Layout::OnTemplate(template)).map(Some)
    }

    /// Plans `layout` of `spec`, phase by phase: what the tree holds ([`entries`]), then the
    /// steps that enter the namespace, make each mount point and mount, and enter the root.
    pub(super) fn build(spec: &FsSpec, layout: Layout<'_>) -> Result<FsPlan, FsError> {
        let root = prepare_root(&spec.root_dir)?;
        // Where the child makes its mounts: below the root directory in a copy of the host's
        // namespace, or at the job's own paths once it is inside the template.
        let base = if matches!(layout, Layout::OnTemplate(_)) {
            PathBuf::from("/")
        } else {
            root.clone()
        };
        let table = if has_mount_setattr() {
            String::new()
        } else {
            fs::read_to_string("/proc/self/mountinfo")
                .map_err(|source| FsError::MountTable { source })?
        };
        let tree = entries(spec)?;
        let mut planner = Planner {
            spec,
            base,
            table,
            steps: Vec::new(),
            trees: Vec::new(),
        };
        planner.enter(layout, &root, &tree.links)?;
        for (i, entry) in tree.entries.iter().enumerate() {
            if layout.plans(entry) {
                planner.mount_point(&tree.entries[..i], entry)?;
                planner.mount(entry)?;
            }
        }
        planner.finish(layout, &root, &tree.workdir)?;
        Ok(FsPlan {
            steps: planner.steps,
            _trees: Arc::new(planner.trees),
        })
    }
}

/// What the job's tree holds, outer mounts first, before any of it becomes steps.
struct Tree {
    entries: Vec<Entry>,
    /// System directories that are symlinks to another one: (where, the link's text).
    links: Vec<(PathBuf, PathBuf)>,
    /// Where the job starts, with those symlinks resolved.
    workdir: PathBuf,
}

/// Phase one: the system directories, the sandbox's own mounts, the job's binds (each source
/// opened once, here) and a scratch working directory, checked and in mount order.
fn entries(spec: &FsSpec) -> Result<Tree, FsError> {
    // System directories: symlinks to another bound system directory are reproduced as
    // symlinks (`/bin -> usr/bin`), everything else is bound at its own path.
    let mut entries = Vec::new();
    let mut resolved: Vec<(PathBuf, PathBuf)> = Vec::new();
    let mut links = Vec::new();
    for d in resolve_system_dirs(&spec.system_ro)? {
        match d.how {
            SystemHow::Link(text) => {
                resolved.push((d.dir.clone(), d.canon));
                links.push((d.dir, text));
            }
            SystemHow::Bind(kind) => entries.push(Entry::Bind {
                what: "system directory",
                source: d.canon,
                target: d.dir,
                kind,
                read_only: true,
                recursive: true,
                held: None,
            }),
        }
    }
    entries.push(Entry::Tmpfs(PathBuf::from("/tmp")));
    entries.push(Entry::Proc);
    entries.push(Entry::Dev);

    let mut seen = HashSet::new();
    for bind in &spec.binds {
        check_clean("bind source", &bind.source)?;
        check_clean("bind target", &bind.target)?;
        let target = rewrite(&bind.target, &resolved);
        if target == Path::new("/") || RESERVED.iter().any(|r| target.starts_with(r)) {
            return Err(FsError::Reserved {
                target: bind.target.clone(),
            });
        }
        if !seen.insert(target.clone()) {
            return Err(FsError::DuplicateTarget {
                target: bind.target.clone(),
            });
        }
        let held =
            open_source(&bind.source, bind.untrusted_below.as_deref()).map_err(|source| {
                FsError::BadSource {
                    what: "bind source",
                    path: bind.source.clone(),
                    source,
                }
            })?;
        entries.push(Entry::Bind {
            what: "bind target",
            source: bind.source.clone(),
            target,
            kind: if held.is_dir { Kind::Dir } else { Kind::File },
            read_only: bind.read_only,
            recursive: false,
            held: Some(Arc::new(held.fd)),
        });
    }
    let workdir = match &spec.working_dir {
        None => PathBuf::from("/"),
        Some(w) => {
            check_clean("working directory", w)?;
            let w = rewrite(w, &resolved);
            if let Some(scratch) = working_dir_entry(&w, &entries)? {
                entries.push(scratch);
            }
            w
        }
    };
    // Outer mounts first so that none hides one inside it; the sort is stable, so system
    // directories come before the sandbox's own mounts, which come before the job's binds.
    entries.sort_by_key(|e| depth(e.target()));
    Ok(Tree {
        entries,
        links,
        workdir,
    })
}

/// Phase two: the steps, and the descriptors they name.
struct Planner<'a> {
    spec: &'a FsSpec,
    /// Where the child makes its mounts (see [`FsPlan::build`]).
    base: PathBuf,
    /// The host's mount table, where mount_setattr(2) is missing (else empty).
    table: String,
    steps: Vec<Step>,
    trees: Vec<OwnedFd>,
}

impl Planner<'_> {
    /// Into the namespace the mounts are made in: the template's, or a private copy of the
    /// host's with a fresh tmpfs as the root (and the system directories' symlinks in it).
    fn enter(
        &mut self,
        layout: Layout<'_>,
        root: &Path,
        links: &[(PathBuf, PathBuf)],
    ) -> Result<(), FsError> {
        let steps = &mut self.steps;
        if let Layout::OnTemplate(t) = layout {
            // The plan holds its own descriptor: it may outlive the template.
            let ns =
                t.ns.try_clone()
                    .map_err(|e| FsError::Template(format!("holding its namespace: {e}")))?;
            steps.push(Step::EnterTemplate { ns: ns.as_raw_fd() });
            self.trees.push(ns);
            // The template's tmpfs mounts were made before the job was known, unsized: given
            // the job's size now (a fresh tmpfs, nothing in it yet to exceed it).
            if let Some(n) = self.spec.tmpfs_size {
                let data = CString::new(format!("size={n}")).unwrap_or_default();
                for t in ["/tmp", "/dev/shm"] {
                    steps.push(Step::Mount {
                        source: None,
                        target: cstring("sandbox mount", Path::new(t))?,
                        fstype: None,
                        flags: libc::MS_REMOUNT | libc::MS_NOSUID | libc::MS_NODEV,
                        data: Some(data.clone()),
                    });
                }
            }
            return Ok(());
        }
        steps.extend([
            Step::Unshare,
            // Nothing mounted from here on may propagate back to the host.
            Step::Mount {
                source: None,
                target: c"/".to_owned(),
                fstype: None,
                flags: libc::MS_REC | libc::MS_PRIVATE,
                data: None,
            },
            // The root is a fresh tmpfs that only this mount namespace sees: pivot_root needs
            // a mount point, and its mount points are made by the child in memory, where
            // making them costs nothing and leaves nothing to clean up, instead of as a dozen
            // inodes on the state directory's disk for every execution.
            Step::Mount {
                source: Some(c"tmpfs".to_owned()),
                target: cstring("root directory", root)?,
                fstype: Some(c"tmpfs".to_owned()),
                flags: libc::MS_NOSUID | libc::MS_NODEV,
                data: Some(c"mode=755,size=64k".to_owned()),
            },
        ]);
        for (dir, text) in links {
            steps.push(Step::Symlink {
                target: cstring("system directory", text)?,
                link: cstring("system directory", &root.join(relative(dir)))?,
            });
        }
        Ok(())
    }

    /// Where `entry`'s mount point lives: in the root or another of the child's tmpfs mounts
    /// (made by the child), or inside an earlier bind (must already exist there). `earlier`:
    /// the entries mounted before it.
    fn mount_point(&mut self, earlier: &[Entry], entry: &Entry) -> Result<(), FsError> {
        let target = entry.target();
        let outer = earlier
            .iter()
            .filter(|e| target != e.target() && target.starts_with(e.target()))
            .max_by_key(|e| depth(e.target()));
        let (what, kind) = match entry {
            Entry::Bind { what, kind, .. } => (*what, *kind),
            _ => ("sandbox mount", Kind::Dir),
        };
        let base = &self.base;
        match outer {
            None => mount_point_steps(&mut self.steps, what, base, &relative(target), kind),
            Some(Entry::Tmpfs(tmpfs)) => mount_point_steps(
                &mut self.steps,
                what,
                &base.join(relative(tmpfs)),
                &relative(target.strip_prefix(tmpfs).unwrap_or(target)),
                kind,
            ),
            Some(Entry::Bind {
                source,
                target: outer_target,
                held,
                ..
            }) => {
                let rel = target.strip_prefix(outer_target).unwrap_or(target);
                if check_existing(what, target, source, held.as_deref(), rel, kind)? {
                    Ok(())
                } else {
                    Err(FsError::NestedTargetMissing {
                        target: target.to_owned(),
                        outer: outer_target.clone(),
                        missing: source.join(rel),
                        kind: kind.name(),
                    })
                }
            }
            Some(_) => Err(FsError::Reserved {
                target: target.to_owned(),
            }),
        }
    }

    /// The mount itself, on its mount point.
    fn mount(&mut self, entry: &Entry) -> Result<(), FsError> {
        let host_target = self.base.join(relative(entry.target()));
        let host_c = cstring("bind target", &host_target)?;
        let steps = &mut self.steps;
        match entry {
            Entry::Bind {
                source,
                read_only,
                held: Some(held),
                ..
            } => {
                // Made here from the held source, detached, and attached by the child.
                let flags = BindFlags::Job {
                    read_only: *read_only,
                };
                let tree = detached_bind(source, held, flags)?;
                attach_steps(steps, (source, &tree), host_c, flags)?;
                self.trees.push(tree);
            }
            Entry::Bind {
                source,
                read_only,
                recursive,
                held: None,
                ..
            } => {
                steps.push(Step::Mount {
                    source: Some(cstring("bind source", source)?),
                    target: host_c.clone(),
                    fstype: None,
                    flags: libc::MS_BIND | if *recursive { libc::MS_REC } else { 0 },
                    data: None,
                });
                let flags = if *read_only {
                    RO_BIND
                } else {
                    RO_BIND & !libc::MS_RDONLY
                };
                if *recursive && *read_only && has_mount_setattr() {
                    steps.push(Step::ReadOnlyTree { target: host_c });
                    return Ok(());
                }
                steps.push(Step::Mount {
                    source: None,
                    target: host_c,
                    fstype: None,
                    flags,
                    data: None,
                });
                if *recursive && *read_only {
                    // A recursive bind keeps each submount's own flags; make those read-only
                    // too.
                    for sub in submounts(&self.table, source) {
                        let rel = sub.strip_prefix(source).unwrap_or(&sub);
                        steps.push(Step::Mount {
                            source: None,
                            target: cstring("system directory", &host_target.join(rel))?,
                            fstype: None,
                            flags: RO_BIND,
                            data: None,
                        });
                    }
                }
            }
            Entry::Tmpfs(_) => steps.push(Step::Mount {
                source: Some(c"tmpfs".to_owned()),
                target: host_c,
                fstype: Some(c"tmpfs".to_owned()),
                flags: libc::MS_NOSUID | libc::MS_NODEV,
                // Pages written here are charged to the job's memory cgroup; the size also
                // bounds a job without a memory limit, and a full tmpfs is ENOSPC, not OOM.
                data: Some(tmpfs_options(self.spec.tmpfs_size)),
            }),
            Entry::Proc => {
                steps.push(Step::Proc {
                    target: host_c.clone(),
                });
                // Without a pid or user namespace of its own a root job could otherwise write
                // kernel settings for the whole host.
                for p in ["sys", "sysrq-trigger"] {
                    steps.push(Step::ReadOnlyIfPresent {
                        path: cstring("sandbox mount", &host_target.join(p))?,
                    });
                }
            }
            Entry::Dev => dev_steps(
                steps,
                &mut self.trees,
                &host_target,
                &self.spec.devices,
                self.spec.tmpfs_size,
            )?,
        }
        Ok(())
    }

    /// The root made read-only and entered, and the working directory.
    fn finish(&mut self, layout: Layout<'_>, root: &Path, workdir: &Path) -> Result<(), FsError> {
        // A template's root stays writable until a job's own mount points are made in it.
        // Otherwise every mount point exists now: the root becomes read-only, so a job running
        // as root cannot leave files in it (on a template, the job's child is already inside).
        if !matches!(layout, Layout::Template) {
            self.steps.push(Step::Mount {
                source: None,
                target: cstring("root directory", &self.base)?,
                fstype: None,
                flags: RO_BIND,
                data: None,
            });
        }
        if !matches!(layout, Layout::OnTemplate(_)) {
            self.steps.push(Step::PivotRoot {
                root: cstring("root directory", root)?,
            });
        }
        self.steps.push(Step::Chdir {
            path: cstring("working directory", workdir)?,
        });
        Ok(())
    }
}

/// The scratch tmpfs the working directory needs, if any. One that no bind or system directory
/// provides gets a writable tmpfs of its own (as a container's writable layer would be, and as
/// lost at the end); one inside a bind must exist in the bind's source.
pub(super) fn working_dir_entry(w: &Path, entries: &[Entry]) -> Result<Option<Entry>, FsError> {
    if w == Path::new("/") {
        return Ok(None);
    }
    let outer = entries
        .iter()
        .filter(|e| w.starts_with(e.target()))
        .max_by_key(|e| depth(e.target()));
    match outer {
        None => Ok(Some(Entry::Tmpfs(w.to_owned()))),
        Some(e) if e.target() == w => Ok(None),
        Some(Entry::Tmpfs(_)) => Ok(Some(Entry::Tmpfs(w.to_owned()))),
        Some(Entry::Bind {
            source,
            target,
            held,
            ..
        }) => {
            let rel = w.strip_prefix(target).unwrap_or(w);
            let held = held.as_deref();
            if check_existing("working directory", w, source, held, rel, Kind::Dir)? {
                Ok(None)
            } else {
                Err(FsError::NestedTargetMissing {
                    target: w.to_owned(),
                    outer: target.clone(),
                    missing: source.join(rel),
                    kind: Kind::Dir.name(),
                })
            }
        }
        Some(_) => Err(FsError::Reserved {
            target: w.to_owned(),
        }),
    }
}

/// Steps that make the mount point `base/rel` (and its parents) in a tmpfs of the child's own:
/// directories, and a file for the last component when `kind` is one.
pub(super) fn mount_point_steps(
    steps: &mut Vec<Step>,
    what: &'static str,
    base: &Path,
    rel: &Path,
    kind: Kind,
) -> Result<(), FsError> {
    let mut p = base.to_owned();
    let n = rel.components().count();
    for (j, c) in rel.components().enumerate() {
        p.push(c);
        let path = cstring(what, &p)?;
        if j + 1 == n && kind == Kind::File {
            steps.push(Step::Touch { path });
        } else {
            steps.push(Step::Mkdir { path, mode: 0o755 });
        }
    }
    Ok(())
}

/// The child's steps that attach a [`detached_bind`] at `target`. Without mount_setattr its
/// flags and propagation are set right after, through the tree's own descriptor (the mount
/// just attached, whatever the target's path names by then), before anything is mounted
/// inside it.
pub(super) fn attach_steps(
    steps: &mut Vec<Step>,
    (source, tree): (&Path, &OwnedFd),
    target: CString,
    flags: BindFlags,
) -> Result<(), FsError> {
    steps.push(Step::Attach {
        tree: tree.as_raw_fd(),
        target,
        source: cstring("bind source", source)?,
    });
    if has_mount_setattr() {
        return Ok(());
    }
    for flags in [libc::MS_PRIVATE, flags.remount()] {
        steps.push(Step::Mount {
            source: None,
            target: fd_path(tree),
            fstype: None,
            flags,
            data: None,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_escapes_are_decoded() {
        assert_eq!(unescape_mountinfo(r"/a\040b\134c"), "/a b\\c");
        assert_eq!(unescape_mountinfo(r"/plain\04"), r"/plain\04");
    }

    #[test]
    fn submounts_are_strictly_below() {
        let table = "1 0 0:1 / / rw - ext4 x rw\n\
                     2 1 0:2 / /etc rw - ext4 x rw\n\
                     3 1 0:3 /h /etc/hosts rw - ext4 x rw\n\
                     4 1 0:4 / /etcetera rw - ext4 x rw\n";
        assert_eq!(
            submounts(table, Path::new("/etc")),
            vec![PathBuf::from("/etc/hosts")]
        );
    }
}
