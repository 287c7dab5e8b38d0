//! Running a job as an unprivileged user when the plugin is root: the user is resolved before
//! `fork`, and the child drops its groups, gid and uid (in that order) in `pre_exec`.

use std::io;
use std::path::PathBuf;

use nix::unistd::{Group, Uid, User};

/// The user jobs run as when the plugin is root and none is configured.
pub const DEFAULT_USER: &str = "nobody";

/// uid and gid of `nobody` on most distributions, used when the user database lacks it.
const NOBODY_ID: u32 = 65_534;

#[derive(Debug, thiserror::Error)]
pub enum UserError {
    #[error("unknown user {0:?}")]
    UnknownUser(String),
    #[error("unknown group {0:?}")]
    UnknownGroup(String),
    #[error("invalid user spec {0:?} (expected name, uid, name:group or uid:gid)")]
    Invalid(String),
    #[error("looking up {what} {name:?}: {source}")]
    Lookup {
        what: &'static str,
        name: String,
        #[source]
        source: nix::Error,
    },
}

/// The identity a job switches to, resolved before fork.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UserPlan {
    pub uid: u32,
    pub gid: u32,
    /// The user's name when the user database knows it (for `USER`/`LOGNAME`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The user's home directory when the user database has one (for `HOME`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub home: Option<PathBuf>,
    /// Set for a uid handed to this execution alone (see [`crate::sandbox::uids`]): the lock
    /// file the monitor holds for its whole life so the id is not handed out again. Absent in
    /// records written before per-execution uids, and for a configured `runAsUser`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid_lock: Option<PathBuf>,
}

fn lookup_user_by_name(name: &str) -> Result<Option<User>, UserError> {
    User::from_name(name).map_err(|source| UserError::Lookup {
        what: "user",
        name: name.to_owned(),
        source,
    })
}

fn resolve_group(spec: &str) -> Result<u32, UserError> {
    if let Ok(gid) = spec.parse::<u32>() {
        return Ok(gid);
    }
    match Group::from_name(spec) {
        Ok(Some(g)) => Ok(g.gid.as_raw()),
        Ok(None) => Err(UserError::UnknownGroup(spec.to_owned())),
        Err(source) => Err(UserError::Lookup {
            what: "group",
            name: spec.to_owned(),
            source,
        }),
    }
}

impl UserPlan {
    /// Resolves `name`, `uid`, `name:group` or `uid:gid`. A uid the user database does not know
    /// is accepted (as container runtimes do) with gid = uid unless a group is given.
    pub fn resolve(name_or_uid: &str) -> Result<UserPlan, UserError> {
        let (user, group) = match name_or_uid.split_once(':') {
            Some((u, g)) => (u, Some(g)),
            None => (name_or_uid, None),
        };
        if user.is_empty() || group == Some("") {
            return Err(UserError::Invalid(name_or_uid.to_owned()));
        }
        let mut plan = if let Ok(uid) = user.parse::<u32>() {
            match User::from_uid(Uid::from_raw(uid)) {
                Ok(Some(u)) => UserPlan::from_entry(&u),
                Ok(None) => UserPlan {
                    uid,
                    gid: uid,
                    name: None,
                    home: None,
                    uid_lock: None,
                },
                Err(source) => {
                    return Err(UserError::Lookup {
                        what: "uid",
                        name: user.to_owned(),
                        source,
                    })
                }
            }
        } else {
            match lookup_user_by_name(user)? {
                Some(u) => UserPlan::from_entry(&u),
                None => return Err(UserError::UnknownUser(user.to_owned())),
            }
        };
        if let Some(g) = group {
            plan.gid = resolve_group(g)?;
        }
        Ok(plan)
    }

    /// [`DEFAULT_USER`], or 65534:65534 where the user database has no `nobody`.
    pub fn default_unprivileged() -> Result<UserPlan, UserError> {
        match lookup_user_by_name(DEFAULT_USER)? {
            Some(u) => Ok(UserPlan::from_entry(&u)),
            None => Ok(UserPlan {
                uid: NOBODY_ID,
                gid: NOBODY_ID,
                name: None,
                home: None,
                uid_lock: None,
            }),
        }
    }

    fn from_entry(u: &User) -> UserPlan {
        UserPlan {
            uid: u.uid.as_raw(),
            gid: u.gid.as_raw(),
            name: Some(u.name.clone()),
            home: Some(u.dir.clone()),
            uid_lock: None,
        }
    }

    /// An id allocated to one execution: gid = uid, no name and no home in the user database
    /// (the job's environment gets the number as `USER`, as for any unknown uid).
    pub fn per_execution(uid: u32, uid_lock: PathBuf) -> UserPlan {
        UserPlan {
            uid,
            gid: uid,
            name: None,
            home: None,
            uid_lock: Some(uid_lock),
        }
    }

    /// The uid belongs to this execution alone.
    pub fn is_per_execution(&self) -> bool {
        self.uid_lock.is_some()
    }

    pub fn is_root(&self) -> bool {
        self.uid == 0
    }

    /// `name (uid:gid)`, or `uid:gid` for a uid the user database does not know.
    pub fn describe(&self) -> String {
        match &self.name {
            Some(n) => format!("{n} ({}:{})", self.uid, self.gid),
            None => format!("{}:{}", self.uid, self.gid),
        }
    }

    /// Clears the supplementary groups, then sets the gid, then the uid (real, effective and
    /// saved), so the process cannot switch back. Async-signal-safe: meant for
    /// `CommandExt::pre_exec`, as the last privileged step (after mounts and cgroup joins).
    pub fn apply(&self) -> io::Result<()> {
        let gid: libc::gid_t = self.gid;
        // SAFETY: an empty list; the pointer is not read.
        if unsafe { libc::setgroups(0, std::ptr::null()) } != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: plain system calls with integer arguments.
        if unsafe { libc::setresgid(gid, gid, gid) } != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: as above.
        if unsafe { libc::setresuid(self.uid, self.uid, self.uid) } != 0 {
            return Err(io::Error::last_os_error());
        }
        // If root could be regained (a kernel or seccomp quirk made the calls above partial),
        // refuse to run the job rather than run it privileged.
        // SAFETY: as above.
        if self.uid != 0 && unsafe { libc::setuid(0) } == 0 {
            return Err(io::Error::from_raw_os_error(libc::EPERM));
        }
        Ok(())
    }
}

/// Whether the plugin runs as root and so should switch jobs to an unprivileged user.
pub fn running_as_root() -> bool {
    Uid::effective().is_root()
}

/// The range each running execution gets a uid of its own from: when the plugin is root and no
/// single `runAsUser` is configured (that mode, kept for hosts that need a known user, runs
/// every job as the same uid, so jobs can see and signal each other).
pub fn job_uid_range(
    config: &executor_schema::PluginConfig,
) -> Result<Option<crate::sandbox::uids::UidRange>, executor_schema::ExecutorError> {
    let explicit = config
        .run_as_user
        .as_deref()
        .is_some_and(|u| !u.trim().is_empty());
    if !running_as_root() || explicit {
        return Ok(None);
    }
    match config.job_uid_range {
        None => Ok(Some(crate::sandbox::uids::DEFAULT_RANGE)),
        Some(r) => crate::sandbox::uids::UidRange::new(r.min, r.max)
            .map(Some)
            .map_err(|e| {
                executor_schema::ExecutorError::invalid_params(vec![
                    executor_schema::FieldProblem {
                        field: "config.jobUidRange".into(),
                        message: e.to_string(),
                    },
                ])
            }),
    }
}

/// The user jobs switch to when the plugin is root. Root itself is refused: without a pid or
/// user namespace a root job could reach the host through `/proc/1/root` and undo every mount.
pub fn job_user(configured: Option<&str>) -> Result<UserPlan, executor_schema::ExecutorError> {
    let problem = |message: String| {
        executor_schema::ExecutorError::invalid_params(vec![executor_schema::FieldProblem {
            field: "config.runAsUser".into(),
            message,
        }])
    };
    let plan = match configured.map(str::trim).filter(|u| !u.is_empty()) {
        Some(u) => UserPlan::resolve(u).map_err(|e| problem(e.to_string()))?,
        None => UserPlan::default_unprivileged().map_err(|e| problem(e.to_string()))?,
    };
    if plan.is_root() {
        return Err(problem(format!(
            "{} is root: jobs of a root plugin must run as an unprivileged user",
            plan.describe()
        )));
    }
    Ok(plan)
}
