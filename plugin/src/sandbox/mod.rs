//! Isolation and resource limits for a job: cgroups (v2, v1, hybrid), rlimits, a private
//! network namespace, a private filesystem and an unprivileged user. Everything a job needs at
//! fork time is prepared before `fork` so that the `pre_exec` steps only make raw system calls
//! (no allocation, no locks).

use std::path::{Component, Path};

pub mod allowlist;
pub mod bridge;
pub mod cgroup;
pub mod gpu;
pub mod http_proxy;
pub mod mounts;
pub mod netns;
pub mod rlimit;
pub mod seccomp;
pub mod uids;
pub mod user;

/// Why a path from a request cannot name a place on the host or in the job's root as written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unclean {
    NotAbsolute,
    /// A `..` in it, which could lead out of where it is meant to be.
    ParentComponent,
}

/// The one check of a path's cleanliness every part of the sandbox makes: absolute, and no
/// `..` in it. `None`: clean.
pub fn unclean(path: &Path) -> Option<Unclean> {
    if !path.is_absolute() {
        Some(Unclean::NotAbsolute)
    } else if path.components().any(|c| c == Component::ParentDir) {
        Some(Unclean::ParentComponent)
    } else {
        None
    }
}
