//! Handing an execution's outputs (`results/<Name>`) to the job's user before it runs, and back
//! to the plugin's user once nothing of the job runs.
//!
//! Everything below an output is the job's: a racer still running as the job's uid can swap any
//! directory for a symlink at any moment. The walk therefore never uses a path: every entry is
//! opened relative to the descriptor of the directory holding it with `O_PATH|O_NOFOLLOW`,
//! checked with `fstat` on what was opened, changed through that descriptor
//! (`fchownat(fd, "", AT_EMPTY_PATH)` changes a symlink itself, never its target), and a
//! directory is entered by opening `"."` relative to the descriptor that was checked. A swap
//! after the check changes nothing: the walk holds the inode, not the name.
//!
//! The depth is bounded only by the filesystem: the walk keeps an explicit stack, with at most
//! [`OPEN_LEVELS`] directories open; a directory whose descriptor was closed is reopened as
//! `".."` of its child and must be the same inode (device and inode number), else the walk
//! restarts from the top (a few times at most). Nesting past `PATH_MAX` is walked like any other.
//!
//! On the way the walk also drops what a host must not be handed: FIFOs, sockets and device
//! nodes are unlinked (after their inode has been given to the target owner, so a racer that
//! renames one keeps nothing of the job's), and setuid/setgid bits are cleared on files and
//! directories (on the way back to the host, group and others' write bits too). Symlinks are left as symlinks (owned by the target owner), never followed.
//! Nothing on another filesystem (a mount below an output) is touched. A failure on one entry
//! is counted and the walk goes on; the caller gets all of it walked that could be, and an error
//! naming the first failure.

use std::ffi::{CStr, CString};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use crate::results::fstat;

/// Directories the walk keeps open at most (the rest are reopened through `..`).
pub const OPEN_LEVELS: usize = 32;
/// Walks of one output at most when the tree keeps moving under the walk.
const PASSES: usize = 3;

/// Which way the outputs go. A file with more than one link may be a hard link to a file
/// outside the outputs (where `protected_hardlinks` is off): it is never given to a job, and
/// taken back only when it is the job's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// To the job's user, before it runs.
    ToJob,
    /// Back to the plugin's user, once the job (running as `job_uid`) has ended.
    ToHost { job_uid: u32 },
    /// Owners unchanged (a job without a uid of its own, whose outputs stay its user's): only
    /// the dropping and clearing.
    InPlace,
    /// A writable input, once the job (running as `job_uid`) has ended: only the setuid and
    /// setgid bits of what `job_uid` owns are cleared. Nothing else changes: the tree is the
    /// host's data, which the job was allowed to change.
    Strip { job_uid: u32 },
}

/// What a walk did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct HandOver {
    /// Entries visited (the output itself included).
    pub entries: u64,
    /// FIFOs, sockets and device nodes unlinked.
    pub dropped: u64,
    /// Files with setuid/setgid bits cleared (write bits for others, also cleared on the way to
    /// the host, are not counted).
    pub cleared: u64,
    /// Hard-linked files left as they were (see [`Direction`]).
    pub kept_linked: u64,
}

#[derive(Debug, thiserror::Error)]
#[error("{failed} entries of {output} could not be handed over (the rest were); first: {first}")]
pub struct HandOverError {
    pub output: String,
    pub failed: u64,
    pub first: String,
    pub done: HandOver,
}

/// Give the output `name` of the results directory `results` (a checked descriptor, see
/// [`crate::results::CheckedDir`]) and everything below it to `uid:gid`. A missing output is
/// nothing to do.
pub fn hand_over(
    results: BorrowedFd<'_>,
    name: &str,
    uid: u32,
    gid: u32,
    direction: Direction,
) -> Result<HandOver, HandOverError> {
    let mut walk = Walk {
        uid,
        gid,
        direction,
        done: HandOver::default(),
        failed: 0,
        first: None,
        root_dev: 0,
    };
    let Ok(cname) = CString::new(name) else {
        walk.fail(name, io::Error::from_raw_os_error(libc::EINVAL));
        return walk.result(name);
    };
    for _ in 0..PASSES {
        // A pass that ends has seen the whole tree: what an abandoned one found is moot.
        walk.done = HandOver::default();
        walk.failed = 0;
        walk.first = None;
        match walk.run(results, &cname) {
            Ok(()) => return walk.result(name),
            Err(Moved) => continue,
        }
    }
    walk.fail(
        name,
        io::Error::other(format!(
            "its directories kept moving during {PASSES} walks; the last one stopped part-way"
        )),
    );
    walk.result(name)
}

/// Clear the setuid and setgid bits of everything `job_uid` owns in the tree held by `held` (a
/// writable input the job has finished with, resolved once, see
/// [`crate::sandbox::mounts::open_source`]): a job's uid goes back to the pool, and a setuid
/// copy of a shell the job left in host data would let any local user run as the next job
/// given that uid. Walked as [`hand_over`] walks an output.
pub fn strip(held: BorrowedFd<'_>, job_uid: u32) -> Result<HandOver, HandOverError> {
    let direction = Direction::Strip { job_uid };
    let mut walk = Walk {
        uid: job_uid,
        gid: 0,
        direction,
        done: HandOver::default(),
        failed: 0,
        first: None,
        root_dev: 0,
    };
    const SHOWN: &str = "the writable input";
    let st = match fstat(held) {
        Ok(st) => st,
        Err(e) => {
            walk.fail(SHOWN, e);
            return walk.result(SHOWN);
        }
    };
    if st.st_mode & libc::S_IFMT != libc::S_IFDIR {
        // A file bind: only that file.
        if st.st_mode & libc::S_IFMT == libc::S_IFREG && st.st_uid == job_uid {
            let fd = match held.try_clone_to_owned() {
                Ok(fd) => fd,
                Err(e) => {
                    walk.fail(SHOWN, e);
                    return walk.result(SHOWN);
                }
            };
            if let Err(e) = walk.clear_special_bits(&fd, None) {
                walk.fail(SHOWN, e);
            }
        }
        return walk.result(SHOWN);
    }
    for _ in 0..PASSES {
        walk.done = HandOver::default();
        walk.failed = 0;
        walk.first = None;
        // "." of the held directory: the walk enters exactly what was resolved.
        match walk.run(held, c".") {
            Ok(()) => return walk.result(SHOWN),
            Err(Moved) => continue,
        }
    }
    walk.fail(
        SHOWN,
        io::Error::other(format!(
            "its directories kept moving during {PASSES} walks; the last one stopped part-way"
        )),
    );
    walk.result(SHOWN)
}

/// The tree moved under the walk: a directory closed to save descriptors is no longer where it
/// was (its child's `..` is another inode).
struct Moved;

struct Level {
    /// `None` while closed to save descriptors.
    fd: Option<OwnedFd>,
    dev: u64,
    ino: u64,
    /// Subdirectories not visited yet.
    subdirs: Vec<CString>,
}

struct Walk {
    uid: u32,
    gid: u32,
    direction: Direction,
    done: HandOver,
    failed: u64,
    first: Option<String>,
    root_dev: u64,
}

enum Visit {
    Done,
    /// A directory, to be entered later.
    Subdir,
    Enter(Level),
}

impl Walk {
    fn fail(&mut self, what: &str, e: io::Error) {
        self.failed += 1;
        self.first.get_or_insert_with(|| format!("{what}: {e}"));
    }

    fn result(self, name: &str) -> Result<HandOver, HandOverError> {
        match self.first {
            None => Ok(self.done),
            Some(first) => Err(HandOverError {
                output: name.to_string(),
                failed: self.failed,
                first,
                done: self.done,
            }),
        }
    }

    fn run(&mut self, results: BorrowedFd<'_>, name: &CStr) -> Result<(), Moved> {
        self.root_dev = 0;
        let root = match self.visit(results, name, true, true) {
            Visit::Enter(level) => level,
            Visit::Done | Visit::Subdir => return Ok(()),
        };
        let mut stack = vec![root];
        // Levels below this index have their descriptors closed.
        let mut first_open = 0;
        loop {
            let Some(top) = stack.last_mut() else {
                return Ok(());
            };
            if let Some(child) = top.subdirs.pop() {
                let Some(fd) = top.fd.as_ref() else {
                    // Never: the top level is always open. Reopening would need its child.
                    return Err(Moved);
                };
                if let Visit::Enter(level) = self.visit(fd.as_fd(), &child, true, false) {
                    stack.push(level);
                    if stack.len() - first_open > OPEN_LEVELS {
                        stack[first_open].fd = None;
                        first_open += 1;
                    }
                }
                continue;
            }
            let Some(done) = stack.pop() else {
                return Ok(());
            };
            let Some(parent) = stack.last_mut() else {
                return Ok(());
            };
            if parent.fd.is_none() {
                let Some(child_fd) = done.fd.as_ref() else {
                    return Err(Moved);
                };
                let up = open_at(
                    child_fd.as_fd(),
                    c"..",
                    libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW,
                )
                .map_err(|_| Moved)?;
                let st = fstat(up.as_fd()).map_err(|_| Moved)?;
                if st.st_dev != parent.dev || st.st_ino != parent.ino {
                    return Err(Moved);
                }
                parent.fd = Some(up);
                first_open = stack.len() - 1;
            }
        }
    }

    /// Visit the entry `name` of `parent`: give it to the target owner and drop or clean it as
    /// the module says. A directory is entered (its own entries visited, its subdirectories
    /// listed) when `enter`, else only reported.
    fn visit(&mut self, parent: BorrowedFd<'_>, name: &CStr, enter: bool, root: bool) -> Visit {
        let shown = || String::from_utf8_lossy(name.to_bytes()).into_owned();
        let fd = match open_at(parent, name, libc::O_PATH | libc::O_NOFOLLOW) {
            Ok(fd) => fd,
            // Gone meanwhile (the job's own doing): nothing of it is left to hand over.
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Visit::Done,
            Err(e) => {
                self.fail(&shown(), e);
                return Visit::Done;
            }
        };
        let st = match fstat(fd.as_fd()) {
            Ok(st) => st,
            Err(e) => {
                self.fail(&shown(), e);
                return Visit::Done;
            }
        };
        if root {
            self.root_dev = st.st_dev;
        } else if st.st_dev != self.root_dev {
            // Another filesystem mounted below the output: not the job's to hand over.
            return Visit::Done;
        }
        let kind = st.st_mode & libc::S_IFMT;
        if kind == libc::S_IFDIR && !enter {
            return Visit::Subdir;
        }
        self.done.entries += 1;
        if kind == libc::S_IFDIR {
            return self.enter(fd, &st, &shown());
        }
        let linked = kind != libc::S_IFLNK && st.st_nlink > 1;
        let ours = match self.direction {
            Direction::ToJob | Direction::InPlace => !linked,
            Direction::ToHost { job_uid } => !linked || st.st_uid == job_uid,
            // Hard-linked or not: a file the job's uid owns is the job's doing.
            Direction::Strip { job_uid } => st.st_uid == job_uid,
        };
        if !ours {
            self.done.kept_linked += 1;
        }
        match kind {
            // A writable input's FIFOs and sockets are the host's data: left as they are.
            libc::S_IFIFO | libc::S_IFSOCK | libc::S_IFCHR | libc::S_IFBLK
                if matches!(self.direction, Direction::Strip { .. }) => {}
            libc::S_IFIFO | libc::S_IFSOCK | libc::S_IFCHR | libc::S_IFBLK => {
                // Taken back first, so if a racer renames it out of our way, what it keeps
                // is no longer the job's; never given to a job.
                if ours && matches!(self.direction, Direction::ToHost { .. }) {
                    if let Err(e) = self.chown(fd.as_fd(), &st) {
                        self.fail(&shown(), e);
                    }
                }
                // SAFETY: unlinkat relative to a directory we hold, with a NUL-terminated name;
                // flags 0 never removes a directory.
                if unsafe { libc::unlinkat(parent.as_raw_fd(), name.as_ptr(), 0) } == 0 {
                    self.done.dropped += 1;
                } else {
                    let e = io::Error::last_os_error();
                    if e.raw_os_error() != Some(libc::ENOENT) {
                        self.fail(&shown(), e);
                    }
                }
            }
            _ if !ours => {}
            _ => {
                if let Err(e) = self.chown(fd.as_fd(), &st) {
                    self.fail(&shown(), e);
                }
                if kind == libc::S_IFREG {
                    if let Err(e) = self.clear_special_bits(&fd, None) {
                        self.fail(&shown(), e);
                    }
                }
            }
        }
        Visit::Done
    }

    /// A directory held as `path_fd`: give it over, clear its setgid bit, visit what is in it.
    fn enter(&mut self, path_fd: OwnedFd, st: &libc::stat, shown: &str) -> Visit {
        // The same inode, now readable: "." relative to the descriptor that was checked.
        let dir = match open_at(
            path_fd.as_fd(),
            c".",
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW,
        ) {
            Ok(d) => d,
            Err(e) => {
                self.fail(shown, e);
                return Visit::Done;
            }
        };
        drop(path_fd);
        if let Err(e) = self.chown(dir.as_fd(), st) {
            self.fail(shown, e);
        }
        let clear = match self.direction {
            Direction::Strip { job_uid } => st.st_uid == job_uid,
            _ => true,
        };
        if clear {
            if let Err(e) = self.clear_special_bits(&dir, Some(&dir)) {
                self.fail(shown, e);
            }
        }
        let mut level = Level {
            fd: None,
            dev: st.st_dev,
            ino: st.st_ino,
            subdirs: Vec::new(),
        };
        match read_names(dir.as_fd()) {
            Ok(names) => {
                for n in names {
                    if let Visit::Subdir = self.visit(dir.as_fd(), &n, false, false) {
                        level.subdirs.push(n);
                    }
                }
            }
            Err(e) => self.fail(shown, e),
        }
        level.fd = Some(dir);
        Visit::Enter(level)
    }

    fn chown(&self, fd: BorrowedFd<'_>, st: &libc::stat) -> io::Result<()> {
        let same = st.st_uid == self.uid && st.st_gid == self.gid;
        if same || matches!(self.direction, Direction::InPlace | Direction::Strip { .. }) {
            return Ok(());
        }
        // SAFETY: fchownat on a descriptor we hold with an empty path: it changes exactly that
        // inode (a symlink itself when the descriptor is an O_PATH one of a symlink).
        let rc = unsafe {
            libc::fchownat(
                fd.as_raw_fd(),
                c"".as_ptr(),
                self.uid,
                self.gid,
                libc::AT_EMPTY_PATH | libc::AT_SYMLINK_NOFOLLOW,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Clear setuid/setgid on the inode held by `fd`, and on the way to the host the write bits
    /// of group and others (read after the chown, which may have
    /// cleared them already). `readable`: a descriptor `fchmod` accepts; else (an `O_PATH` one)
    /// the inode is reached through `/proc/self/fd`, which resolves to exactly what `fd` holds.
    fn clear_special_bits(&mut self, fd: &OwnedFd, readable: Option<&OwnedFd>) -> io::Result<()> {
        let st = fstat(fd.as_fd())?;
        let set_id = libc::S_ISUID | libc::S_ISGID;
        // Handed back to the host, nothing stays writable by other local users: a 0777
        // directory the job left would let any of them swap its outputs for symlinks to the
        // host's files before whoever publishes the results reads them as root.
        let others_write = match self.direction {
            Direction::ToHost { .. } => 0o022,
            _ => 0,
        };
        let special = set_id | others_write;
        if st.st_mode & special == 0 {
            return Ok(());
        }
        let mode = st.st_mode & 0o7777 & !special;
        let rc = match readable {
            // SAFETY: fchmod on a descriptor we hold.
            Some(d) => unsafe { libc::fchmod(d.as_raw_fd(), mode) },
            None => {
                let path = CString::new(format!("/proc/self/fd/{}", fd.as_raw_fd()))
                    .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
                // SAFETY: chmod of the magic link of a descriptor we hold, a regular file.
                unsafe { libc::chmod(path.as_ptr(), mode) }
            }
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        if st.st_mode & set_id != 0 {
            self.done.cleared += 1;
        }
        Ok(())
    }
}

fn open_at(dir: BorrowedFd<'_>, name: &CStr, flags: libc::c_int) -> io::Result<OwnedFd> {
    // SAFETY: openat relative to a descriptor we hold with a NUL-terminated name.
    let fd = unsafe { libc::openat(dir.as_raw_fd(), name.as_ptr(), flags | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a descriptor we just opened and nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The names in the directory `dir` (without `.` and `..`), read through a descriptor of its
/// own so `dir` keeps its offset and stays usable.
fn read_names(dir: BorrowedFd<'_>) -> io::Result<Vec<CString>> {
    let own = open_at(
        dir,
        c".",
        libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW,
    )?;
    let raw = own.as_raw_fd();
    // SAFETY: fdopendir takes over a descriptor we own; on success it is closed by closedir
    // below, so ownership is given up first.
    let dirp = unsafe { libc::fdopendir(raw) };
    if dirp.is_null() {
        return Err(io::Error::last_os_error());
    }
    std::mem::forget(own);
    let mut names = Vec::new();
    let result = loop {
        // SAFETY: errno is thread-local; reset so end of directory and an error differ.
        unsafe { *libc::__errno_location() = 0 };
        // SAFETY: readdir on the stream opened above, not yet closed.
        let ent = unsafe { libc::readdir64(dirp) };
        if ent.is_null() {
            let e = io::Error::last_os_error();
            break if e.raw_os_error().unwrap_or(0) == 0 {
                Ok(())
            } else {
                Err(e)
            };
        }
        // SAFETY: d_name of a valid entry is a NUL-terminated string inside the entry.
        let name = unsafe { CStr::from_ptr((*ent).d_name.as_ptr()) };
        let bytes = name.to_bytes();
        if bytes != b"." && bytes != b".." {
            names.push(name.to_owned());
        }
    };
    // SAFETY: closing the stream opened above (and its descriptor) once.
    unsafe { libc::closedir(dirp) };
    result.map(|()| names)
}
