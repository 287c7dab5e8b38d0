//! Resource limits and `no_new_privs` for a job, planned before `fork` and applied in
//! `pre_exec` with nothing but system calls.

use std::io;

use nix::sys::resource::{getrlimit, setrlimit, Resource};

/// Default open-file limit for jobs (capped at the plugin's hard limit).
pub const DEFAULT_NOFILE: u64 = 65_536;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RlimitConfig {
    /// `RLIMIT_NOFILE` soft limit; capped at the current hard limit.
    pub nofile: u64,
    /// `RLIMIT_AS`. Off by default: JVMs and Go runtimes reserve far more address space than they
    /// use and fail under it.
    pub address_space: Option<u64>,
    /// `PR_SET_NO_NEW_PRIVS`: setuid binaries and file capabilities no longer grant anything.
    pub no_new_privs: bool,
}

impl Default for RlimitConfig {
    fn default() -> Self {
        RlimitConfig {
            nofile: DEFAULT_NOFILE,
            address_space: None,
            no_new_privs: true,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RlimitError {
    #[error("reading the current {resource} limit: {source}")]
    Get {
        resource: &'static str,
        #[source]
        source: nix::Error,
    },
    #[error("invalid {resource} limit: {detail}")]
    Invalid {
        resource: &'static str,
        detail: String,
    },
}

/// One `setrlimit` call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlannedLimit {
    pub resource: Resource,
    pub soft: u64,
    pub hard: u64,
}

/// The limits to set in the child, computed in the parent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RlimitPlan {
    limits: Vec<PlannedLimit>,
    no_new_privs: bool,
}

fn current(resource: Resource, name: &'static str) -> Result<(u64, u64), RlimitError> {
    getrlimit(resource).map_err(|source| RlimitError::Get {
        resource: name,
        source,
    })
}

impl RlimitPlan {
    pub fn new(config: &RlimitConfig) -> Result<RlimitPlan, RlimitError> {
        let mut limits = vec![PlannedLimit {
            // No core dumps: they would land in the job's working directory, unaccounted.
            resource: Resource::RLIMIT_CORE,
            soft: 0,
            hard: 0,
        }];

        if config.nofile == 0 {
            return Err(RlimitError::Invalid {
                resource: "RLIMIT_NOFILE",
                detail: "0 files".to_owned(),
            });
        }
        let (_, nofile_hard) = current(Resource::RLIMIT_NOFILE, "RLIMIT_NOFILE")?;
        limits.push(PlannedLimit {
            resource: Resource::RLIMIT_NOFILE,
            soft: config.nofile.min(nofile_hard),
            hard: nofile_hard,
        });

        if let Some(bytes) = config.address_space {
            if bytes == 0 {
                return Err(RlimitError::Invalid {
                    resource: "RLIMIT_AS",
                    detail: "0 bytes".to_owned(),
                });
            }
            let (_, as_hard) = current(Resource::RLIMIT_AS, "RLIMIT_AS")?;
            let value = bytes.min(as_hard);
            limits.push(PlannedLimit {
                resource: Resource::RLIMIT_AS,
                soft: value,
                hard: value,
            });
        }

        Ok(RlimitPlan {
            limits,
            no_new_privs: config.no_new_privs,
        })
    }

    pub fn limits(&self) -> &[PlannedLimit] {
        &self.limits
    }

    /// Applies the plan to the calling process. Async-signal-safe (no allocation): meant for
    /// `CommandExt::pre_exec`.
    pub fn apply(&self) -> io::Result<()> {
        for l in &self.limits {
            setrlimit(l.resource, l.soft, l.hard)
                .map_err(|e| io::Error::from_raw_os_error(e as i32))?;
        }
        if self.no_new_privs {
            nix::sys::prctl::set_no_new_privs()
                .map_err(|e| io::Error::from_raw_os_error(e as i32))?;
        }
        Ok(())
    }
}
