//! Isolation and resource limits for a job: cgroups (v2, v1, hybrid), rlimits, a private
//! network namespace, a private filesystem and an unprivileged user. Everything a job needs at fork time is prepared before `fork` so that the
//! `pre_exec` steps only make raw system calls (no allocation, no locks).

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
