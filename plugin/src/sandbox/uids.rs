//! A uid of its own for every running execution, so that one job cannot see, trace or signal
//! another (with a shared uid, `kill -9 -1` in one job kills every other job, and
//! `/proc/<pid>/root` of another job is reachable under same-uid ptrace rules).
//!
//! An id is taken while a shared `flock` is held on `<lock_dir>/<uid>`: by the plugin from
//! allocation until it has seen the execution end (and again after a restart, from the
//! request record), and by the execution's monitor for its whole life. Allocation probes a
//! candidate with an exclusive lock, which fails while anybody holds a shared one. The lock
//! file, not the plugin's memory, is the truth, so a restarted plugin, or a second plugin
//! instance on another state root, never hands out an id whose job still runs. The files live
//! on `/run` (a tmpfs: after a reboot no job of an old id can be alive) and are never removed:
//! removing a lock file races with its next user.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::unistd::{Gid, Group, Uid, User};

/// Where the id locks live on a host.
pub const DEFAULT_LOCK_DIR: &str = "/run/executor-plugins/job-uids";

/// 70000-79999 (gid = uid), 10000 ids, enough for the 1000 concurrent executions the project
/// is sized for with room for round-robin reuse. Chosen to collide with no common allocation:
/// - login.defs users end at `UID_MAX` 60000; systemd keeps 60001-60513 for homed, 61184-65519
///   for `DynamicUser=` services, 65534 is `nobody`, 65535 is invalid in 16-bit APIs;
/// - `/etc/subuid` ranges for user namespaces start at `SUB_UID_MIN` 100000 (100000-165535 for
///   the first user) and systemd-nspawn's automatic ranges at 524288;
/// - Nomad's dynamic workload users default to 80000-89999, so a Nomad client on the same host
///   does not overlap.
///
/// nsjail and bubblewrap avoid the question with user namespaces, which these jobs do not use.
/// Ids the user or group database knows are skipped anyway.
pub const DEFAULT_RANGE: UidRange = UidRange {
    min: 70_000,
    max: 79_999,
};

/// Ids at or above this are refused: many tools treat uids as signed 32-bit numbers, and
/// `u32::MAX` is `(uid_t)-1`, "no change" to `setresuid`.
const MAX_ID: u32 = (1 << 31) - 1;

#[derive(Debug, thiserror::Error)]
pub enum UidError {
    #[error("{0}")]
    BadRange(String),
    #[error("the job uid lock directory {path}: {source}")]
    LockDir { path: PathBuf, source: io::Error },
    #[error("the job uid lock {path}: {source}")]
    Lock { path: PathBuf, source: io::Error },
    #[error(
        "no free job uid: all of {range} are in use by running executions or known to the user \
         database; wait for executions to end or widen jobUidRange"
    )]
    Exhausted { range: UidRange },
}

/// An inclusive range of ids (used as uids and as gids).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UidRange {
    min: u32,
    max: u32,
}

impl UidRange {
    /// `min..=max`; it must not be empty, include root, or reach the ids tools treat as special.
    pub fn new(min: u32, max: u32) -> Result<UidRange, UidError> {
        if min > max {
            return Err(UidError::BadRange(format!("min {min} is above max {max}")));
        }
        if min == 0 {
            return Err(UidError::BadRange(
                "it includes 0 (root); jobs of a root plugin never run as root".into(),
            ));
        }
        if max > MAX_ID {
            return Err(UidError::BadRange(format!(
                "max {max} is above {MAX_ID} (ids from 2^31 on are not handled by many tools)"
            )));
        }
        Ok(UidRange { min, max })
    }

    pub fn min(&self) -> u32 {
        self.min
    }

    pub fn max(&self) -> u32 {
        self.max
    }

    pub fn contains(&self, id: u32) -> bool {
        (self.min..=self.max).contains(&id)
    }

    /// How many ids the range holds.
    pub fn size(&self) -> u64 {
        u64::from(self.max - self.min) + 1
    }

    fn after(&self, id: u32) -> u32 {
        if id >= self.max || id < self.min {
            self.min
        } else {
            id + 1
        }
    }
}

impl std::fmt::Display for UidRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.min, self.max)
    }
}

/// The lock file of `uid` under `dir`.
pub fn lock_path(dir: &Path, uid: u32) -> PathBuf {
    dir.join(uid.to_string())
}

/// A shared hold on an id's lock: the id stays taken while this (or any other hold) lives.
#[derive(Debug)]
pub struct UidLease {
    uid: u32,
    path: PathBuf,
    _file: File,
}

impl UidLease {
    pub fn uid(&self) -> u32 {
        self.uid
    }

    /// The lock file, recorded in the request so the monitor and a restarted plugin can hold
    /// the same id.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Holds an id that is already taken (by a live monitor), waiting out a concurrent
    /// allocation probe. For the monitor at start and the plugin after a restart.
    pub fn hold(uid: u32, path: &Path) -> Result<UidLease, UidError> {
        let lock_err = |source| UidError::Lock {
            path: path.to_owned(),
            source,
        };
        let file = crate::fds::open_lock(path).map_err(lock_err)?;
        crate::fds::flock(&file, libc::LOCK_SH).map_err(lock_err)?;
        Ok(UidLease {
            uid,
            path: path.to_owned(),
            _file: file,
        })
    }
}

/// Hands out ids from a range, round-robin so that a released id is reused as late as
/// possible (files a job left where others can reach them stay with an idle id longer).
#[derive(Debug)]
pub struct UidPool {
    range: UidRange,
    lock_dir: PathBuf,
    /// The next candidate.
    next: u32,
    /// The lock directory was made (or found) by this pool; made again if it disappears.
    dir_ready: bool,
    /// When each id was last looked up in the user and group databases, and the verdict. A
    /// lookup goes through NSS (files, systemd-userdb, perhaps a directory service): about a
    /// hundred system calls, more than the rest of an allocation. A verdict is trusted for
    /// [`VERDICT_TTL`], so a user added to the database meanwhile is noticed within that time
    /// (the look-ahead covers bursts of starts; a lone start looks its id up afresh).
    verdicts: HashMap<u32, (Instant, bool)>,
}

/// How long a user-database verdict on an id is reused.
pub const VERDICT_TTL: Duration = Duration::from_secs(10);

/// `id`'s verdict (unknown to the databases?) when it is younger than [`VERDICT_TTL`].
fn fresh_verdict(verdicts: &HashMap<u32, (Instant, bool)>, id: u32, now: Instant) -> Option<bool> {
    verdicts
        .get(&id)
        .filter(|(at, _)| now.duration_since(*at) < VERDICT_TTL)
        .map(|(_, unknown)| *unknown)
}

impl UidPool {
    pub fn new(range: UidRange, lock_dir: impl Into<PathBuf>) -> UidPool {
        UidPool {
            range,
            lock_dir: lock_dir.into(),
            next: range.min,
            dir_ready: false,
            verdicts: HashMap::new(),
        }
    }

    pub fn range(&self) -> UidRange {
        self.range
    }

    /// Like [`UidPool::allocate`], without consulting the user databases: `None` when the walk
    /// reaches an id with no fresh verdict (the caller then allocates where lookups may block).
    pub fn allocate_cached(&mut self) -> Option<Result<UidLease, UidError>> {
        let now = Instant::now();
        let fresh = |id: u32| fresh_verdict(&self.verdicts, id, now);
        let mut candidate = self.next;
        for _ in 0..self.range.size() {
            match fresh(candidate)? {
                false => candidate = self.range.after(candidate),
                true => break,
            }
        }
        let verdicts = std::mem::take(&mut self.verdicts);
        let lease = self.allocate_where(|id| fresh_verdict(&verdicts, id, now) == Some(true));
        self.verdicts = verdicts;
        match lease {
            // Ids without a verdict were passed over: only a full lookup can say.
            Err(UidError::Exhausted { .. }) => None,
            other => Some(other),
        }
    }

    /// Up to `n` ids the next allocations will try, whose verdict is missing or stale: to be
    /// looked up ahead of time ([`unknown_to_system`]) and given to [`UidPool::record_verdicts`].
    pub fn unchecked_ahead(&self, n: usize) -> Vec<u32> {
        let now = Instant::now();
        let mut out = Vec::new();
        let mut candidate = self.next;
        for _ in 0..self.range.size().min(n as u64 * 4) {
            if fresh_verdict(&self.verdicts, candidate, now).is_none() {
                out.push(candidate);
                if out.len() == n {
                    break;
                }
            }
            candidate = self.range.after(candidate);
        }
        out
    }

    /// Verdicts looked up elsewhere: `(id, unknown_to_system(id))`.
    pub fn record_verdicts(&mut self, verdicts: impl IntoIterator<Item = (u32, bool)>) {
        let now = Instant::now();
        for (id, unknown) in verdicts {
            self.verdicts.insert(id, (now, unknown));
        }
    }

    /// A free id that the user and group databases do not know.
    pub fn allocate(&mut self) -> Result<UidLease, UidError> {
        let mut verdicts = std::mem::take(&mut self.verdicts);
        let now = Instant::now();
        // Bounded by the range's size; stale entries are only dropped when the map grows, so
        // the common case never walks it.
        if verdicts.len() > 4096 {
            verdicts.retain(|_, (at, _)| now.duration_since(*at) < VERDICT_TTL);
        }
        let lease = self.allocate_where(|id| match fresh_verdict(&verdicts, id, now) {
            Some(unknown) => unknown,
            None => {
                let unknown = unknown_to_system(id);
                verdicts.insert(id, (now, unknown));
                unknown
            }
        });
        self.verdicts = verdicts;
        lease
    }

    /// A free id for which `usable` holds. Free: nobody holds its lock.
    pub fn allocate_where(
        &mut self,
        mut usable: impl FnMut(u32) -> bool,
    ) -> Result<UidLease, UidError> {
        if !self.dir_ready {
            self.make_lock_dir()?;
        }
        let count = self.range.size();
        let mut candidate = self.next;
        for _ in 0..count {
            let uid = candidate;
            candidate = self.range.after(uid);
            if !usable(uid) {
                continue;
            }
            let taken = match try_take(&self.lock_dir, uid) {
                // Someone removed the directory since it was made: make it again.
                Err(UidError::Lock { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
                    self.make_lock_dir()?;
                    try_take(&self.lock_dir, uid)?
                }
                other => other?,
            };
            if let Some(lease) = taken {
                self.next = candidate;
                return Ok(lease);
            }
        }
        Err(UidError::Exhausted { range: self.range })
    }

    fn make_lock_dir(&mut self) -> Result<(), UidError> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.lock_dir)
            .map_err(|source| UidError::LockDir {
                path: self.lock_dir.clone(),
                source,
            })?;
        self.dir_ready = true;
        Ok(())
    }
}

/// `uid` when nobody holds it: an exclusive probe, then turned into a shared hold. The turn is
/// not atomic (flock(2)); a prober that slips into the gap wins, and this id is passed over.
fn try_take(dir: &Path, uid: u32) -> Result<Option<UidLease>, UidError> {
    let path = lock_path(dir, uid);
    let lock_err = |source| UidError::Lock {
        path: path.clone(),
        source,
    };
    let file = crate::fds::open_lock(&path).map_err(lock_err)?;
    for op in [libc::LOCK_EX, libc::LOCK_SH] {
        match crate::fds::flock(&file, op | libc::LOCK_NB) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(None),
            Err(e) => return Err(lock_err(e)),
        }
    }
    Ok(Some(UidLease {
        uid,
        path,
        _file: file,
    }))
}

/// The id names no user and no group: a job given it gets no one's files or group rights. A
/// failed lookup counts as known (an unreachable directory service may know it).
pub fn unknown_to_system(id: u32) -> bool {
    matches!(User::from_uid(Uid::from_raw(id)), Ok(None))
        && matches!(Group::from_gid(Gid::from_raw(id)), Ok(None))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(dir: &Path, min: u32, max: u32) -> UidPool {
        UidPool::new(UidRange::new(min, max).unwrap(), dir.join("locks"))
    }

    #[test]
    fn ranges_refuse_root_empty_and_signed_overflow() {
        assert!(UidRange::new(0, 10).is_err());
        assert!(UidRange::new(10, 9).is_err());
        assert!(UidRange::new(10, 1 << 31).is_err());
        let r = UidRange::new(5, 5).unwrap();
        assert_eq!(r.to_string(), "5-5");
        assert!(r.contains(5) && !r.contains(6));
        let d = DEFAULT_RANGE;
        assert!(UidRange::new(d.min(), d.max()).is_ok());
        // Clear of nobody, systemd's dynamic users and the first subuid range.
        for taken in [65_534, 61_184, 65_519, 100_000, 165_535, 80_000] {
            assert!(!d.contains(taken), "{taken}");
        }
    }

    #[test]
    fn live_ids_are_never_handed_out_twice_and_released_ids_come_back_last() {
        let tmp = tempfile::tempdir().unwrap();
        let mut p = pool(tmp.path(), 100, 102);
        let a = p.allocate_where(|_| true).unwrap();
        let b = p.allocate_where(|_| true).unwrap();
        let c = p.allocate_where(|_| true).unwrap();
        assert_eq!([a.uid(), b.uid(), c.uid()], [100, 101, 102]);
        assert!(matches!(
            p.allocate_where(|_| true),
            Err(UidError::Exhausted { .. })
        ));
        drop(b);
        assert_eq!(p.allocate_where(|_| true).unwrap().uid(), 101);
    }

    #[test]
    fn round_robin_reuses_a_released_id_only_after_the_others() {
        let tmp = tempfile::tempdir().unwrap();
        let mut p = pool(tmp.path(), 100, 104);
        let mut seen = Vec::new();
        for _ in 0..7 {
            // Released at once, as a job that ends before the next starts.
            seen.push(p.allocate_where(|_| true).unwrap().uid());
        }
        assert_eq!(seen, [100, 101, 102, 103, 104, 100, 101]);
    }

    #[test]
    fn a_restarted_plugin_skips_the_ids_its_live_executions_hold() {
        let tmp = tempfile::tempdir().unwrap();
        let mut before = pool(tmp.path(), 100, 103);
        let taken: Vec<UidLease> = (0..2)
            .map(|_| before.allocate_where(|_| true).unwrap())
            .collect();
        // The monitors of those executions hold their ids for their whole lives...
        let monitors: Vec<UidLease> = taken
            .iter()
            .map(|l| UidLease::hold(l.uid(), l.path()).unwrap())
            .collect();
        // ...while the plugin dies (its holds go with it) and a new one starts from scratch.
        drop(taken);
        drop(before);
        let mut after = pool(tmp.path(), 100, 103);
        let fresh = after.allocate_where(|_| true).unwrap();
        assert_eq!(fresh.uid(), 102);
        assert_eq!(after.allocate_where(|_| true).unwrap().uid(), 103);
        // Re-held from the request records, the ids stay taken after the monitors end too.
        let reheld: Vec<UidLease> = monitors
            .iter()
            .map(|m| UidLease::hold(m.uid(), m.path()).unwrap())
            .collect();
        drop(monitors);
        drop(fresh);
        assert_eq!(after.allocate_where(|_| true).unwrap().uid(), 102);
        drop(reheld);
        let mut all: Vec<u32> = (0..4)
            .map(|_| after.allocate_where(|_| true).unwrap())
            .collect::<Vec<_>>()
            .iter()
            .map(UidLease::uid)
            .collect();
        all.sort();
        assert_eq!(all, [100, 101, 102, 103]);
    }

    #[test]
    fn a_second_pool_on_the_same_locks_sees_the_first_ones_ids() {
        let tmp = tempfile::tempdir().unwrap();
        let mut one = pool(tmp.path(), 100, 101);
        let mut two = pool(tmp.path(), 100, 101);
        let a = one.allocate_where(|_| true).unwrap();
        let b = two.allocate_where(|_| true).unwrap();
        assert_ne!(a.uid(), b.uid());
        assert!(two.allocate_where(|_| true).is_err());
    }

    #[test]
    fn ids_the_system_knows_are_skipped() {
        let tmp = tempfile::tempdir().unwrap();
        let mut p = pool(tmp.path(), 100, 103);
        let got = p.allocate_where(|id| id % 2 == 1).unwrap();
        assert_eq!(got.uid(), 101);
        assert!(!unknown_to_system(0), "root is known");
        // The lock directory is root's alone: a job must not take or drop id locks.
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &fs::metadata(tmp.path().join("locks"))
                .unwrap()
                .permissions(),
        );
        assert_eq!(mode & 0o777, 0o700);
    }

    #[test]
    fn a_removed_lock_directory_is_made_again() {
        let tmp = tempfile::tempdir().unwrap();
        let mut p = pool(tmp.path(), 100, 103);
        let a = p.allocate_where(|_| true).unwrap();
        drop(a);
        fs::remove_dir_all(tmp.path().join("locks")).unwrap();
        let b = p.allocate_where(|_| true).unwrap();
        assert!(tmp.path().join("locks").join(b.uid().to_string()).exists());
    }

    #[test]
    fn database_verdicts_are_looked_up_once_per_id_and_trusted_for_a_while() {
        let tmp = tempfile::tempdir().unwrap();
        let mut p = pool(tmp.path(), 100, 101);
        // Pretend 100 was found known a moment ago and 101 unknown long ago: 100 is skipped
        // without a lookup; 101's verdict is stale, so it is looked up again (and 101 is
        // really unknown here only if the test host says so).
        let now = Instant::now();
        p.verdicts.insert(100, (now, false));
        let stale = now.checked_sub(VERDICT_TTL * 2).unwrap_or(now);
        p.verdicts.insert(101, (stale, true));
        match p.allocate() {
            Ok(l) => assert_eq!(l.uid(), 101),
            Err(UidError::Exhausted { .. }) => assert!(!unknown_to_system(101)),
            Err(e) => panic!("{e}"),
        }
        assert!(
            p.verdicts[&101].0 > stale || stale == now,
            "101 was looked up again"
        );
        assert_eq!(p.verdicts[&100], (now, false), "a fresh verdict is reused");
    }
}
