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
//!   writable input under a read-only entry is refused ("not granted write access");
//! - an entry with glob syntax is a doublestar pattern matched against the whole source path,
//!   as Bacalhau's `doublestar.PathMatch`: `*`, `?` and `[...]` within one component, `**` as a
//!   whole component for any number of them (`/data/**` is `/data` and everything below it),
//!   `{a,b}` alternatives, `\` to escape. A malformed pattern, or a relative one, is refused at
//!   `initialize` ([`AllowList::problems`]).
//!
//! One deliberate difference: an entry without glob syntax allows that directory and everything
//! below it (Bacalhau's would match the path alone).
//!
//! Matching is on the path as written, component by component (`..` is refused), against the
//! entry as written or with its fixed leading directories resolved. What a job can change —
//! everything below those directories — is never resolved here: the path handed on is the
//! entry's resolved directory joined with the rest, and whoever opens it (the monitor, just
//! before it mounts from the descriptor it gets) follows no symlink anywhere in it
//! ([`crate::sandbox::mounts::open_source`]). A symlink inside an allow-listed tree is therefore
//! refused, even one that stays inside it: with a job able to swap it, there is no telling
//! where it leads when the mount is made.

use std::fmt;
use std::path::{Path, PathBuf};

use crate::sandbox::mounts;

/// Source types whose host path comes from the job's spec.
const LOCAL_TYPES: [&str; 2] = ["local", "localDirectory"];

/// Whether an input of this storage type names a host path chosen by the job submitter.
pub fn is_local_type(source_type: &str) -> bool {
    LOCAL_TYPES
        .iter()
        .any(|t| t.eq_ignore_ascii_case(source_type.trim()))
}

/// One pattern of an entry (an entry with `{a,b}` has one per alternative).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Pattern {
    /// The leading components without glob syntax, unescaped.
    base: PathBuf,
    /// `base` with symlinks resolved, when it exists.
    canonical: Option<PathBuf>,
    /// The rest of the pattern, one glob per component.
    glob: Vec<String>,
    /// No glob syntax, or only a trailing `**`: `base` and everything below it.
    tree: bool,
    read_write: bool,
}

/// The parsed `allowListedLocalPaths`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AllowList {
    patterns: Vec<Pattern>,
    /// The entries as written, with their access, for messages.
    shown: Vec<(String, bool)>,
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

fn split_access(entry: &str) -> (&str, bool) {
    if let Some(p) = entry.strip_suffix(":rw") {
        (p, true)
    } else if let Some(p) = entry.strip_suffix(":ro") {
        (p, false)
    } else {
        (entry, false)
    }
}

impl AllowList {
    /// What is wrong with each entry that cannot be used, one line each naming it: checked at
    /// `initialize`, so that an entry that could never match is refused rather than silently
    /// refusing every input.
    pub fn problems(entries: &[PathBuf]) -> Vec<String> {
        entries
            .iter()
            .filter_map(|e| {
                let s = e.to_string_lossy();
                parse_entry(&s)
                    .err()
                    .map(|why| format!("entry {s:?}: {why}"))
            })
            .collect()
    }

    /// The list; entries [`problems`](Self::problems) names are left out (`initialize`
    /// refuses them).
    pub fn parse(entries: &[PathBuf]) -> AllowList {
        let mut list = AllowList::default();
        for e in entries {
            let s = e.to_string_lossy();
            if let Ok(patterns) = parse_entry(&s) {
                let (written, read_write) = split_access(&s);
                list.shown.push((written.to_owned(), read_write));
                list.patterns.extend(patterns);
            }
        }
        list
    }

    pub fn is_empty(&self) -> bool {
        self.patterns.is_empty()
    }

    /// Whether a `local` input at `source` may be used, read-only or writable: the path to open
    /// for it, every component of which the opener must take without following a symlink
    /// (the entry's directory resolved, then the rest of `source` as written). The path is
    /// opened here once too, that way, so that a missing path or a symlink in it is refused
    /// with this input's name; what counts is the opening just before the mount.
    pub fn check(&self, source: &Path, writable: bool) -> Result<PathBuf, Denied> {
        let unresolvable = |reason: String| Denied::Unresolvable {
            path: source.to_owned(),
            reason,
        };
        if super::unclean(source).is_some() {
            return Err(unresolvable(
                "it must be an absolute path without `..`".into(),
            ));
        }
        let mut read_only_match = false;
        let mut granted = None;
        for p in &self.patterns {
            let Some(walk) = p.matches(source) else {
                continue;
            };
            if !writable || p.read_write {
                granted = Some(walk);
                break;
            }
            read_only_match = true;
        }
        let Some(walk) = granted else {
            let allowed = self.to_string();
            return Err(if read_only_match {
                Denied::NotWritable {
                    path: source.to_owned(),
                    allowed,
                }
            } else {
                Denied::NotAllowListed {
                    path: source.to_owned(),
                    allowed,
                }
            });
        };
        mounts::open_source(&walk, Some(Path::new("/")))
            .map_err(|e| unresolvable(e.to_string()))?;
        Ok(walk)
    }
}

impl Pattern {
    /// The path to open for `source` when this pattern allows it.
    fn matches(&self, source: &Path) -> Option<PathBuf> {
        for base in std::iter::once(&self.base).chain(self.canonical.as_ref()) {
            let Ok(rest) = source.strip_prefix(base) else {
                continue;
            };
            let names: Vec<String> = rest
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect();
            if self.tree || glob_match(&self.glob, &names) {
                return Some(self.canonical.as_ref().unwrap_or(&self.base).join(rest));
            }
        }
        None
    }
}

/// The patterns of one entry, or why it cannot be used.
fn parse_entry(entry: &str) -> Result<Vec<Pattern>, String> {
    let (path, read_write) = split_access(entry);
    if !path.starts_with('/') {
        return Err("must be an absolute path (or pattern)".into());
    }
    let mut out = Vec::new();
    for alt in expand_braces(path)? {
        if !alt.starts_with('/') {
            return Err("every {...} alternative must leave an absolute path".into());
        }
        let parts: Vec<&str> = alt
            .split('/')
            .filter(|c| !c.is_empty() && *c != ".")
            .collect();
        if parts.contains(&"..") {
            return Err("must not contain `..`".into());
        }
        let fixed = parts.iter().take_while(|c| !has_glob(c)).count();
        let mut base = PathBuf::from("/");
        for c in &parts[..fixed] {
            base.push(unescape(c)?);
        }
        let glob: Vec<String> = parts[fixed..].iter().map(|c| c.to_string()).collect();
        for g in &glob {
            check_glob(g)?;
        }
        let tree = glob.is_empty() || glob == ["**"];
        // Entries that exist are also compared as the kernel resolves them.
        let canonical = std::fs::canonicalize(&base).ok().filter(|c| *c != base);
        out.push(Pattern {
            base,
            canonical,
            glob,
            tree,
            read_write,
        });
    }
    Ok(out)
}

fn has_glob(component: &str) -> bool {
    let mut escaped = false;
    for ch in component.chars() {
        match ch {
            _ if escaped => escaped = false,
            '\\' => escaped = true,
            '*' | '?' | '[' => return true,
            _ => {}
        }
    }
    false
}

fn unescape(component: &str) -> Result<String, String> {
    let mut out = String::new();
    let mut chars = component.chars();
    while let Some(ch) = chars.next() {
        if ch == '\\' {
            out.push(chars.next().ok_or("ends in an unfinished `\\` escape")?);
        } else {
            out.push(ch);
        }
    }
    Ok(out)
}

/// Refuses what doublestar calls a bad pattern: an unclosed `[`, a trailing `\`.
fn check_glob(component: &str) -> Result<(), String> {
    let p: Vec<char> = component.chars().collect();
    let mut i = 0;
    while i < p.len() {
        match p[i] {
            '\\' if i + 1 == p.len() => return Err("ends in an unfinished `\\` escape".into()),
            '\\' => i += 2,
            '[' => match class_end(&p, i) {
                Some(end) => i = end + 1,
                None => return Err(format!("`[` without its `]` in {component:?}")),
            },
            _ => i += 1,
        }
    }
    Ok(())
}

/// Where the class opened at `p[start]` closes.
fn class_end(p: &[char], start: usize) -> Option<usize> {
    let mut i = start + 1;
    if matches!(p.get(i), Some('!' | '^')) {
        i += 1;
    }
    // A `]` right after the opening (or its negation) is a member.
    if p.get(i) == Some(&']') {
        i += 1;
    }
    while i < p.len() {
        match p[i] {
            '\\' => i += 2,
            ']' => return Some(i),
            _ => i += 1,
        }
    }
    None
}

/// `{a,b}` alternatives expanded (nested ones too), as doublestar matches them.
fn expand_braces(s: &str) -> Result<Vec<String>, String> {
    let chars: Vec<char> = s.chars().collect();
    let mut i = 0;
    let mut open = None;
    while i < chars.len() {
        match chars[i] {
            '\\' => i += 1,
            '{' => {
                open = Some(i);
                break;
            }
            _ => {}
        }
        i += 1;
    }
    let Some(open) = open else {
        return Ok(vec![s.to_owned()]);
    };
    let mut depth = 0;
    let mut alts = Vec::new();
    let mut start = open + 1;
    let mut close = None;
    let mut j = open + 1;
    while j < chars.len() {
        match chars[j] {
            '\\' => j += 1,
            '{' => depth += 1,
            '}' if depth > 0 => depth -= 1,
            '}' => {
                alts.push(chars[start..j].iter().collect::<String>());
                close = Some(j);
                break;
            }
            ',' if depth == 0 => {
                alts.push(chars[start..j].iter().collect::<String>());
                start = j + 1;
            }
            _ => {}
        }
        j += 1;
    }
    let close = close.ok_or("`{` without its `}`")?;
    let prefix: String = chars[..open].iter().collect();
    let suffix: String = chars[close + 1..].iter().collect();
    let mut out = Vec::new();
    for alt in alts {
        out.extend(expand_braces(&format!("{prefix}{alt}{suffix}"))?);
    }
    Ok(out)
}

/// Whether the components `names` match the glob components `pats` (`**` alone: any number).
fn glob_match(pats: &[String], names: &[String]) -> bool {
    match pats.split_first() {
        None => names.is_empty(),
        Some((p, rest)) if p == "**" => (0..=names.len()).any(|k| glob_match(rest, &names[k..])),
        Some((p, rest)) => match names.split_first() {
            Some((n, more)) => {
                let p: Vec<char> = p.chars().collect();
                let n: Vec<char> = n.chars().collect();
                component_match(&p, &n) && glob_match(rest, more)
            }
            None => false,
        },
    }
}

fn component_match(p: &[char], n: &[char]) -> bool {
    let Some(&first) = p.first() else {
        return n.is_empty();
    };
    match first {
        '*' => (0..=n.len()).any(|k| component_match(&p[1..], &n[k..])),
        '?' => !n.is_empty() && component_match(&p[1..], &n[1..]),
        '[' => {
            let Some(end) = class_end(p, 0) else {
                return false;
            };
            match n.first() {
                Some(&c) => class_has(&p[1..end], c) && component_match(&p[end + 1..], &n[1..]),
                None => false,
            }
        }
        '\\' if p.len() > 1 => n.first() == Some(&p[1]) && component_match(&p[2..], &n[1..]),
        c => n.first() == Some(&c) && component_match(&p[1..], &n[1..]),
    }
}

/// Whether the class body (between `[` and `]`) admits `c`.
fn class_has(body: &[char], c: char) -> bool {
    let (negated, body) = match body.first() {
        Some('!' | '^') => (true, &body[1..]),
        _ => (false, body),
    };
    let mut i = 0;
    let mut hit = false;
    while i < body.len() {
        let mut lo = body[i];
        if lo == '\\' && i + 1 < body.len() {
            i += 1;
            lo = body[i];
        }
        if i + 2 < body.len() && body[i + 1] == '-' {
            let mut hi = body[i + 2];
            i += 2;
            if hi == '\\' && i + 1 < body.len() {
                i += 1;
                hi = body[i];
            }
            hit |= lo <= c && c <= hi;
        } else {
            hit |= lo == c;
        }
        i += 1;
    }
    hit != negated
}

impl fmt::Display for AllowList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.shown.is_empty() {
            return f.write_str("none; set config.allowListedLocalPaths");
        }
        for (i, (path, read_write)) in self.shown.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{path}{}", if *read_write { ":rw" } else { ":ro" })?;
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

    /// Bacalhau's doublestar forms, matched against the whole path as Bacalhau does.
    #[test]
    fn glob_entries_match_as_bacalhau_matches_them() {
        let tmp = tempfile::tempdir().unwrap();
        let root = std::fs::canonicalize(tmp.path()).unwrap();
        let data = root.join("data");
        for d in ["a/deep", "b", "c1", "c2", ".hidden", "x.csv", "{lit}"] {
            std::fs::create_dir_all(data.join(d)).unwrap();
        }
        let d = data.display();
        let list = |entry: String| AllowList::parse(&[PathBuf::from(entry)]);
        let ok = |l: &AllowList, p: &str| l.check(&data.join(p), false).is_ok();

        let star = list(format!("{d}/*"));
        assert!(ok(&star, "a") && ok(&star, "b") && ok(&star, ".hidden"));
        assert!(!ok(&star, "a/deep"), "`*` stays within one component");
        assert!(star.check(&data, false).is_err());

        let globstar = list(format!("{d}/**"));
        assert!(globstar.check(&data, false).is_ok());
        assert!(ok(&globstar, "a/deep"));

        let inner = list(format!("{d}/**/deep"));
        assert!(ok(&inner, "a/deep") && !ok(&inner, "a"));

        let class = list(format!("{d}/c[0-9]"));
        assert!(ok(&class, "c1") && ok(&class, "c2") && !ok(&class, "b"));
        let negated = list(format!("{d}/[!ac]*"));
        assert!(ok(&negated, "b") && !ok(&negated, "a") && !ok(&negated, "c1"));
        let one = list(format!("{d}/c?"));
        assert!(ok(&one, "c1") && !ok(&one, "a"));

        let braces = list(format!("{d}/{{a,b}}:rw"));
        assert!(braces.check(&data.join("a"), true).is_ok());
        assert!(braces.check(&data.join("b"), true).is_ok());
        assert!(braces.check(&data.join("c1"), true).is_err());
        let suffix = list(format!("{d}/*.csv"));
        assert!(ok(&suffix, "x.csv") && !ok(&suffix, "a"));
        let escaped = list(format!("{d}/\\{{lit\\}}"));
        assert!(ok(&escaped, "{lit}"), "{escaped}");

        // Read-only unless `:rw`, as for plain entries; `..` never passes.
        assert!(matches!(
            star.check(&data.join("a"), true),
            Err(Denied::NotWritable { .. })
        ));
        assert!(star.check(&data.join("a/../b"), false).is_err());
        // The message names the entries as the operator wrote them.
        let msg = star.check(&root, false).unwrap_err().to_string();
        assert!(msg.contains(&format!("{d}/*:ro")), "{msg}");
    }

    #[test]
    fn entries_that_could_never_match_are_named() {
        let problems = AllowList::problems(&[
            PathBuf::from("/data/*"),
            PathBuf::from("/data/**:rw"),
            PathBuf::from("data/*"),
            PathBuf::from("/data/[ab"),
            PathBuf::from("/data/{a,b"),
            PathBuf::from("/data/../etc"),
            PathBuf::from("/data/x\\"),
        ]);
        assert_eq!(problems.len(), 5, "{problems:?}");
        for (p, bad) in problems.iter().zip([
            "\"data/*\"",
            "/data/[ab",
            "/data/{a,b",
            "/data/../etc",
            "/data/x",
        ]) {
            assert!(p.contains(bad), "{p} should name {bad}");
        }
        assert!(AllowList::problems(&[PathBuf::from("/data:ro")]).is_empty());
    }

    #[test]
    fn local_types_are_recognised_in_any_case() {
        assert!(is_local_type("local"));
        assert!(is_local_type(" LocalDirectory "));
        assert!(!is_local_type("ipfs"));
        assert!(!is_local_type(""));
    }
}
