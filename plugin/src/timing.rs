//! Timestamps of the steps of a start, for finding where start-to-result time goes.
//!
//! Off unless `EXECUTOR_PLUGIN_TIMING_LOG` names a file when the plugin starts (monitors inherit
//! it); then every [`mark`] appends `<pid> <step> <CLOCK_MONOTONIC ns>` to that file, one line
//! per `write(2)` on an `O_APPEND` descriptor, so plugin and monitor lines never interleave.
//! `bench --only latency --breakdown` sets it and prints the median time of each step. Each mark
//! costs an open, a write and a close; the disabled check is one atomic load.

use std::io::Write;
use std::path::PathBuf;
use std::sync::OnceLock;

/// The environment variable that turns the marks on.
pub const ENV: &str = "EXECUTOR_PLUGIN_TIMING_LOG";

fn target() -> Option<&'static PathBuf> {
    static TARGET: OnceLock<Option<PathBuf>> = OnceLock::new();
    TARGET
        .get_or_init(|| std::env::var_os(ENV).map(PathBuf::from))
        .as_ref()
}

/// Record that this process reached `step` now. Failures are ignored: timing is diagnostic.
pub fn mark(step: &str) {
    let Some(path) = target() else {
        return;
    };
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime fills the timespec it is given.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    let ns = ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64;
    let line = format!("{} {step} {ns}\n", std::process::id());
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(path)
    {
        let _ = f.write_all(line.as_bytes());
    }
}
