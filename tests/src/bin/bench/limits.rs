//! Host limits a large run needs, raised for the run only: the descriptor limit this process
//! (and so the plugin it starts) gets, and the kernel's `pid_max`, restored afterwards.

use std::path::Path;

use nix::sys::resource::{getrlimit, setrlimit, Resource};

const PID_MAX: &str = "/proc/sys/kernel/pid_max";
const NR_OPEN: &str = "/proc/sys/fs/nr_open";

fn read_u64(path: &str) -> Option<u64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// Raise this process's `RLIMIT_NOFILE` to `want` (soft and hard) where it is lower, as far as
/// the kernel's `nr_open` and our privileges allow; plugins started afterwards inherit it.
/// Returns the (soft, hard) limit in force.
pub(crate) fn raise_nofile(want: u64) -> (u64, u64) {
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return (0, 0);
    };
    let ceiling = read_u64(NR_OPEN).unwrap_or(hard);
    let new_hard = hard.max(want.min(ceiling));
    let new_soft = new_hard;
    if (new_soft, new_hard) != (soft, hard)
        // Raising the hard limit needs CAP_SYS_RESOURCE; without it, the soft one up to it.
        && setrlimit(Resource::RLIMIT_NOFILE, new_soft, new_hard).is_err()
    {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
    }
    getrlimit(Resource::RLIMIT_NOFILE).unwrap_or((soft, hard))
}

/// The kernel's `pid_max`, raised for as long as this lives and then put back.
pub(crate) struct PidMax {
    /// The value to restore, when it was raised.
    restore: Option<u64>,
    pub(crate) now: u64,
}

impl PidMax {
    /// At least `want` pids, where we may write the setting (root); else as it is.
    pub(crate) fn at_least(want: u64) -> PidMax {
        let old = read_u64(PID_MAX).unwrap_or(0);
        if old >= want || !Path::new(PID_MAX).exists() {
            return PidMax {
                restore: None,
                now: old,
            };
        }
        // The kernel's ceiling for pid_max on 64-bit (PID_MAX_LIMIT).
        let new = want.min(4 << 20);
        match std::fs::write(PID_MAX, new.to_string()) {
            Ok(()) => PidMax {
                restore: Some(old),
                now: read_u64(PID_MAX).unwrap_or(new),
            },
            Err(_) => PidMax {
                restore: None,
                now: old,
            },
        }
    }

    pub(crate) fn raised(&self) -> bool {
        self.restore.is_some()
    }
}

impl Drop for PidMax {
    fn drop(&mut self) {
        if let Some(old) = self.restore {
            if let Err(e) = std::fs::write(PID_MAX, old.to_string()) {
                eprintln!("bench: cannot restore {PID_MAX} to {old}: {e}; set it by hand");
            }
        }
    }
}
