//! sha256 pinning of plugin binaries, and the ownership rules every plugin file obeys.
//!
//! A pinned binary is copied into a sealed `memfd` (no write, no grow, no shrink, no further
//! seal changes), the digest is computed over that copy, and that copy is what gets executed
//! (`/proc/self/fd/N` of the memfd). Nothing anyone does to the file afterwards, a rename or an
//! in-place rewrite, can change the bytes that run: they are the bytes that were hashed.
//! Executing through the descriptor works for ELF binaries; a `#!` script cannot be pinned this
//! way (its interpreter would have to reopen the descriptor after exec closed it).
//!
//! Independently of pins, a plugin file, and every directory above it, must be owned by root or
//! by the user running the host, and not writable by group or others: whoever can write it can
//! run code as the host (a sticky directory such as `/tmp` may be world-writable above an entry
//! root or the host's user owns, because only that owner can replace the entry).

use std::ffi::CString;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use sha2::{Digest, Sha256};

#[derive(Debug, thiserror::Error)]
pub enum PinError {
    #[error("cannot open plugin {path} to check its checksum: {source}")]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot read plugin {path} to check its checksum: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "plugin {path} has sha256 {actual}, but the configuration pins {expected}; it was not \
         started. If the binary was upgraded on purpose, update the pin"
    )]
    Mismatch {
        path: PathBuf,
        expected: String,
        actual: String,
    },
    #[error("the sha256 pin for {path} is not 64 hex digits: {pin:?}")]
    BadPin { path: PathBuf, pin: String },
    #[error(
        "plugin {path} is not trusted: {why}; only root or the user running the host may be \
         able to change a plugin or a directory above it (chmod go-w, chown)"
    )]
    Untrusted { path: PathBuf, why: String },
    #[error("cannot make a sealed in-memory copy of plugin {path}: {source}")]
    Seal {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// A pinned plugin binary, copied into a sealed memfd; `exec_path` runs exactly the bytes that
/// were hashed.
#[derive(Debug, Clone)]
pub struct OpenBinary {
    pub path: PathBuf,
    pub sha256: String,
    fd: Arc<OwnedFd>,
}

fn parse_pin(path: &Path, pin: &str) -> Result<String, PinError> {
    let p = pin.trim().to_ascii_lowercase();
    if p.len() != 64 || !p.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(PinError::BadPin {
            path: path.to_path_buf(),
            pin: p,
        });
    }
    Ok(p)
}

/// Check a pin's syntax without touching any file.
pub fn check_pin_syntax(path: &Path, pin: &str) -> Result<(), PinError> {
    parse_pin(path, pin).map(drop)
}

impl OpenBinary {
    /// Copy `path` into a sealed memfd and hash the copy; with `pin`, refuse a binary whose
    /// digest differs. The file and its directories must pass [`check_trusted`].
    pub fn open(path: &Path, pin: Option<&str>) -> Result<OpenBinary, PinError> {
        let expected = pin.map(|p| parse_pin(path, p)).transpose()?;
        let mut file = open_trusted(path)?;
        let memfd = sealed_copy(path, &mut file)?;
        let mut copy = File::from(memfd);
        let sha256 = copy
            .seek(SeekFrom::Start(0))
            .and_then(|_| hash(&mut copy))
            .map_err(|source| PinError::Read {
                path: path.to_path_buf(),
                source,
            })?;
        if let Some(expected) = expected {
            if expected != sha256 {
                return Err(PinError::Mismatch {
                    path: path.to_path_buf(),
                    expected,
                    actual: sha256,
                });
            }
        }
        Ok(OpenBinary {
            path: path.to_path_buf(),
            sha256,
            fd: Arc::new(OwnedFd::from(copy)),
        })
    }

    /// The path that executes the sealed copy.
    pub fn exec_path(&self) -> PathBuf {
        PathBuf::from(format!("/proc/self/fd/{}", self.fd.as_raw_fd()))
    }
}

/// A close-on-exec memfd holding the rest of `file`, sealed against any change.
fn sealed_copy(path: &Path, file: &mut File) -> Result<OwnedFd, PinError> {
    let err = |source| PinError::Seal {
        path: path.to_path_buf(),
        source,
    };
    let name = path
        .file_name()
        .and_then(|n| CString::new(n.as_encoded_bytes()).ok())
        .unwrap_or_else(|| c"executor-plugin".to_owned());
    // close-on-exec: exec of /proc/self/fd/N resolves the descriptor before it is closed, and
    // no child inherits it. MFD_EXEC asks for an executable memfd where the kernel knows the
    // flag (vm.memfd_noexec may otherwise refuse); older kernels refuse the flag itself.
    let base = libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING;
    let mut raw = -1;
    for flags in [base | libc::MFD_EXEC, base] {
        // SAFETY: `name` is a NUL-terminated string that outlives the call.
        raw = unsafe { libc::memfd_create(name.as_ptr(), flags) };
        if raw >= 0 || std::io::Error::last_os_error().raw_os_error() != Some(libc::EINVAL) {
            break;
        }
    }
    if raw < 0 {
        return Err(err(std::io::Error::last_os_error()));
    }
    // SAFETY: memfd_create just returned this descriptor and nothing else owns it.
    let memfd = unsafe { OwnedFd::from_raw_fd(raw) };
    let mut copy = File::from(memfd);
    std::io::copy(file, &mut copy).map_err(|source| PinError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let seals = libc::F_SEAL_WRITE | libc::F_SEAL_GROW | libc::F_SEAL_SHRINK | libc::F_SEAL_SEAL;
    // SAFETY: fcntl on a descriptor we own; F_ADD_SEALS takes an int argument.
    if unsafe { libc::fcntl(copy.as_raw_fd(), libc::F_ADD_SEALS, seals) } != 0 {
        return Err(err(std::io::Error::last_os_error()));
    }
    Ok(OwnedFd::from(copy))
}

/// Whether `uid` may own a plugin or a directory above one: root or the host's own user.
fn trusted_owner(uid: u32) -> bool {
    uid == 0 || uid == nix::unistd::geteuid().as_raw()
}

const GROUP_OTHER_WRITE: u32 = 0o022;

/// Why a file or directory another user could change is not trusted: owned by someone other
/// than root or us, or writable by group or others.
fn owner_and_mode(meta: &std::fs::Metadata) -> Result<(), String> {
    if !trusted_owner(meta.uid()) {
        return Err(format!("it is owned by uid {}", meta.uid()));
    }
    if meta.mode() & GROUP_OTHER_WRITE != 0 {
        return Err(format!(
            "it is writable by group or others (mode {:o})",
            meta.mode() & 0o7777
        ));
    }
    Ok(())
}

/// Open `path` read-only and check what was opened: a regular file owned by root or the host's
/// user, writable by nobody else, in directories that pass the same rule.
pub fn open_trusted(path: &Path) -> Result<File, PinError> {
    let file = File::open(path).map_err(|source| PinError::Open {
        path: path.to_path_buf(),
        source,
    })?;
    let untrusted = |why: String| PinError::Untrusted {
        path: path.to_path_buf(),
        why,
    };
    let meta = file.metadata().map_err(|source| PinError::Open {
        path: path.to_path_buf(),
        source,
    })?;
    if !meta.is_file() {
        return Err(untrusted("it is not a regular file".into()));
    }
    owner_and_mode(&meta).map_err(untrusted)?;
    // The directories of the file actually opened, whatever links led there.
    let real =
        std::fs::read_link(format!("/proc/self/fd/{}", file.as_raw_fd())).map_err(|source| {
            PinError::Open {
                path: path.to_path_buf(),
                source,
            }
        })?;
    check_ancestors(path, &real, meta.uid())?;
    Ok(file)
}

/// Every directory above `real` (an absolute path without links): owned by root or the host's
/// user, and not writable by group or others unless sticky above an entry a trusted user owns.
fn check_ancestors(path: &Path, real: &Path, mut child_uid: u32) -> Result<(), PinError> {
    for dir in real.ancestors().skip(1) {
        let meta = std::fs::metadata(dir).map_err(|source| PinError::Open {
            path: dir.to_path_buf(),
            source,
        })?;
        let why = if !trusted_owner(meta.uid()) {
            Some(format!(
                "its directory {} is owned by uid {}",
                dir.display(),
                meta.uid()
            ))
        } else if meta.mode() & GROUP_OTHER_WRITE != 0
            && !(meta.mode() & libc::S_ISVTX != 0 && trusted_owner(child_uid))
        {
            Some(format!(
                "its directory {} is writable by group or others (mode {:o})",
                dir.display(),
                meta.mode() & 0o7777
            ))
        } else {
            None
        };
        if let Some(why) = why {
            return Err(PinError::Untrusted {
                path: path.to_path_buf(),
                why,
            });
        }
        child_uid = meta.uid();
    }
    Ok(())
}

/// A directory searched for plugins: nobody but root or the host's user may add files to it,
/// sticky or not (anyone could otherwise drop an `executor-*` there), nor above it.
pub fn check_trusted_dir(dir: &Path) -> Result<(), PinError> {
    let real = std::fs::canonicalize(dir).map_err(|source| PinError::Open {
        path: dir.to_path_buf(),
        source,
    })?;
    let meta = std::fs::metadata(&real).map_err(|source| PinError::Open {
        path: dir.to_path_buf(),
        source,
    })?;
    let untrusted = |why: String| PinError::Untrusted {
        path: dir.to_path_buf(),
        why,
    };
    owner_and_mode(&meta).map_err(untrusted)?;
    check_ancestors(dir, &real, meta.uid())
}

fn hash(file: &mut File) -> std::io::Result<String> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

/// The sha256 of a file, hex (for `executor-host plugins` and for writing pins).
pub fn sha256_file(path: &Path) -> Result<String, PinError> {
    let mut file = File::open(path).map_err(|source| PinError::Open {
        path: path.to_path_buf(),
        source,
    })?;
    hash(&mut file).map_err(|source| PinError::Read {
        path: path.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_matches_a_known_value_and_pins_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        std::fs::write(&p, b"abc").unwrap();
        let want = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
        assert_eq!(sha256_file(&p).unwrap(), want);
        assert!(OpenBinary::open(&p, Some(&want.to_uppercase())).is_ok());
        let wrong = "0".repeat(64);
        assert!(matches!(
            OpenBinary::open(&p, Some(&wrong)),
            Err(PinError::Mismatch { .. })
        ));
        assert!(matches!(
            OpenBinary::open(&p, Some("abc")),
            Err(PinError::BadPin { .. })
        ));
    }
}
