//! Which host paths a job's `local` inputs may come from: Bacalhau's
//! `Compute.AllowListedLocalPaths`, applied by the plugin as well so that a host which forwards a
//! job submitter's path unchecked still cannot hand the job an arbitrary host directory.
//!
//! Semantics follow Bacalhau's `local` storage provider:
//! - only inputs whose source type is `local` (or its old name `localDirectory`) are checked:
//!   their host path was chosen by whoever submitted the job. Inputs the host staged itself
//!   (`ipfs`, `s3`, `urlDownload`, `inline`, ... downloaded under its own storage directory) and
//!   inputs without a source type (a host that does not say, such as the `executor-host` CLI,
//!   where the operator writes the request) are not;
//! - an empty list allows no `local` input at all (Bacalhau's provider is then not installed);
//! - an entry `PATH` or `PATH:ro` allows read-only use, `PATH:rw` read-write use as well; a
//!   writable input under a read-only entry is refused ("not granted write access").
//!
//! One deliberate difference: Bacalhau matches entries as doublestar globs (`/data/**`); here an
//! entry allows that directory and everything below it (a trailing `/**` is accepted and means
//! the same), compared component by component after resolving symlinks, so `/data/../etc` or a
//! symlink out of `/data` does not pass.

use std::fmt;
use std::path::{Path, PathBuf};

/// Source types whose host path comes from the job's spec.
const LOCAL_TYPES: [&str; 2] = ["local", "localDirectory"];

/// Whether an input of this storage type names a host path chosen by the job submitter.
pub fn is_local_type(source_type: &str) -> bool {
    LOCAL_TYPES
        .iter()
        .any(|t| t.eq_ignore_ascii_case(source_type.trim()))
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    path: PathBuf,
    read_write: bool,
}

/// The parsed `allowListedLocalPaths`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AllowList {
    entries: Vec<Entry>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    #[error("local path {path} is not allow-listed on this node (allow-listed: {allowed})")]
    NotAllowListed { path: PathBuf, allowed: String },
    #[error(
        "local path {path} is allow-listed read-only on this node, but the input is writable \
         (allow-listed: {allowed})"
    )]
    NotWritable { path: PathBuf, allowed: String },
    #[error("local path {path} cannot be used: {reason}")]
    Unresolvable { path: PathBuf, reason: String },
}

impl AllowList {
    pub fn parse(entries: &[PathBuf]) -> AllowList {
        let entries = entries
            .iter()
            .map(|e| {
                let s = e.to_string_lossy();
                let (path, read_write) = if let Some(p) = s.strip_suffix(":rw") {
                    (p, true)
                } else if let Some(p) = s.strip_suffix(":ro") {
                    (p, false)
                } else {
                    (&*s, false)
                };
                let path = path.strip_suffix("/**").unwrap_or(path);
                let path = if path.is_empty() { "/" } else { path };
                let path = PathBuf::from(path);
                // Entries that exist are compared as the kernel will resolve them.
                let path = std::fs::canonicalize(&path).unwrap_or(path);
                Entry { path, read_write }
            })
            .collect();
        AllowList { entries }
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Whether a `local` input at `source` may be used, read-only or writable.
    pub fn check(&self, source: &Path, writable: bool) -> Result<(), Denied> {
        let resolved = std::fs::canonicalize(source).map_err(|e| Denied::Unresolvable {
            path: source.to_owned(),
            reason: e.to_string(),
        })?;
        let mut read_only_match = false;
        for e in &self.entries {
            if e.path.is_absolute() && resolved.starts_with(&e.path) {
                if !writable || e.read_write {
                    return Ok(());
                }
                read_only_match = true;
            }
        }
        let allowed = self.to_string();
        Err(if read_only_match {
            Denied::NotWritable {
                path: source.to_owned(),
                allowed,
            }
        } else {
            Denied::NotAllowListed {
                path: source.to_owned(),
                allowed,
            }
        })
    }
}

impl fmt::Display for AllowList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.entries.is_empty() {
            return f.write_str("none; set config.allowListedLocalPaths");
        }
        for (i, e) in self.entries.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(
                f,
                "{}{}",
                e.path.display(),
                if e.read_write { ":rw" } else { ":ro" }
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_allow_their_tree_with_their_access() {
        let tmp = tempfile::tempdir().unwrap();
        let ro = tmp.path().join("ro");
        let rw = tmp.path().join("rw");
        let other = tmp.path().join("other");
        for d in [&ro, &rw, &other] {
            std::fs::create_dir_all(d.join("sub")).unwrap();
        }
        std::os::unix::fs::symlink(&other, ro.join("escape")).unwrap();
        let list =
            AllowList::parse(&[ro.clone(), PathBuf::from(format!("{}/**:rw", rw.display()))]);
        assert!(list.check(&ro.join("sub"), false).is_ok());
        assert!(matches!(
            list.check(&ro.join("sub"), true),
            Err(Denied::NotWritable { .. })
        ));
        assert!(list.check(&rw.join("sub"), true).is_ok());
        assert!(list.check(&rw, true).is_ok());
        assert!(matches!(
            list.check(&other, false),
            Err(Denied::NotAllowListed { .. })
        ));
        // Through a symlink or `..` out of an allowed tree.
        assert!(list.check(&ro.join("escape"), false).is_err());
        assert!(list.check(&ro.join("sub/../../other"), false).is_err());
        assert!(matches!(
            list.check(&ro.join("missing"), false),
            Err(Denied::Unresolvable { .. })
        ));
        let msg = list.check(&other, false).unwrap_err().to_string();
        assert!(msg.contains(":rw") && msg.contains(":ro"), "{msg}");

        let empty = AllowList::parse(&[]);
        let msg = empty.check(&ro, false).unwrap_err().to_string();
        assert!(msg.contains("allowListedLocalPaths"), "{msg}");
    }

    #[test]
    fn local_types_are_recognised_in_any_case() {
        assert!(is_local_type("local"));
        assert!(is_local_type(" LocalDirectory "));
        assert!(!is_local_type("ipfs"));
        assert!(!is_local_type(""));
    }
}
