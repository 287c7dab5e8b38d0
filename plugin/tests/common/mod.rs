//! What the test files of this crate share: the checks that skip a test, with the reason
//! printed, on a host without root, usable cgroups or mount namespaces.

// Each test file is its own crate and uses only some of these.
#![allow(dead_code)]

use executor_plugin::sandbox::cgroup::{CgroupConfig, CgroupManager, Mode};
use executor_plugin::sandbox::mounts;

/// Whether `test` must be skipped because this process is not root (the reason printed).
pub fn skip_unless_root(test: &str) -> bool {
    if nix::unistd::geteuid().is_root() {
        return false;
    }
    eprintln!("skipping {test}: needs root");
    true
}

/// Whether `test` must be skipped for want of root or mount namespaces (the reason printed).
pub fn skip_unless_mounts(test: &str) -> bool {
    if skip_unless_root(test) {
        return true;
    }
    if !mounts::supported() {
        eprintln!("skipping {test}: mount namespaces are not available here");
        return true;
    }
    false
}

/// Root and usable cgroups: the host's cgroup manager, or `None` with the reason printed.
pub fn cgroups_or_skip(test: &str) -> Option<CgroupManager> {
    if skip_unless_root(test) {
        return None;
    }
    let m = CgroupManager::detect(&CgroupConfig::default()).unwrap();
    if m.mode() == Mode::None {
        eprintln!(
            "skipping {test}: no usable cgroups ({})",
            m.unavailable_reason().unwrap_or("?")
        );
        return None;
    }
    Some(m)
}
