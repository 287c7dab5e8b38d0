//! sha256 pinning of plugin binaries.
//!
//! The digest is computed over an open descriptor and that same descriptor is what gets
//! executed (`/proc/self/fd/N`), so swapping the file at its path after the check changes
//! nothing. Executing through the descriptor works for ELF binaries; a `#!` script cannot be
//! pinned this way (its interpreter would have to reopen the descriptor after exec closed it).

use std::fs::File;
use std::io::Read;
use std::os::fd::{AsRawFd, OwnedFd};
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
}

/// A plugin binary held open; `exec_path` runs exactly the bytes that were checked.
#[derive(Debug, Clone)]
pub struct OpenBinary {
    pub path: PathBuf,
    pub sha256: String,
    fd: Arc<OwnedFd>,
}

impl OpenBinary {
    /// Open `path` and hash it; with `pin`, refuse a binary whose digest differs.
    pub fn open(path: &Path, pin: Option<&str>) -> Result<OpenBinary, PinError> {
        let expected = match pin {
            Some(p) => {
                let p = p.trim().to_ascii_lowercase();
                if p.len() != 64 || !p.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return Err(PinError::BadPin {
                        path: path.to_path_buf(),
                        pin: p,
                    });
                }
                Some(p)
            }
            None => None,
        };
        // std opens with O_CLOEXEC: the descriptor reaches no child, yet exec of
        // /proc/self/fd/N resolves it before close-on-exec takes effect.
        let mut file = File::open(path).map_err(|source| PinError::Open {
            path: path.to_path_buf(),
            source,
        })?;
        let sha256 = hash(&mut file).map_err(|source| PinError::Read {
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
            fd: Arc::new(OwnedFd::from(file)),
        })
    }

    /// The path that executes the checked descriptor.
    pub fn exec_path(&self) -> PathBuf {
        PathBuf::from(format!("/proc/self/fd/{}", self.fd.as_raw_fd()))
    }
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
    OpenBinary::open(path, None).map(|b| b.sha256)
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
