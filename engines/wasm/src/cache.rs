//! Compiled modules by content: `<stateDir>/wasm-cache/<key>.cwasm`, where the key hashes the
//! module's bytes and the compiler's settings, so a repeated job does not compile again. Only
//! the plugin writes here (the state root is private to it); what it reads back it checks
//! first: a regular file of its own, writable by nobody else.

use std::fs::File;
use std::hash::{Hash, Hasher};
use std::io::Write;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::runner::{hex, read_file_capped};

pub const CACHE_DIR: &str = "wasm-cache";

/// A compiled module in the cache and the SHA-256 of its bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Artifact {
    pub path: PathBuf,
    pub sha256: String,
    /// Compiled by this call (not found in the cache).
    pub compiled: bool,
}

pub struct Cache {
    dir: PathBuf,
}

impl Cache {
    /// The cache under `state_dir`, made (0700) when missing.
    pub fn open(state_dir: &Path) -> std::io::Result<Cache> {
        let dir = state_dir.join(CACHE_DIR);
        executor_plugin::state::create_private_dir_all(&dir)?;
        Ok(Cache { dir })
    }

    /// The artifact of `wasm`, compiled and stored when missing (or when what is stored cannot
    /// be trusted).
    pub fn get_or_compile(
        &self,
        engine: &wasmtime::Engine,
        wasm: &[u8],
    ) -> Result<Artifact, String> {
        let mut settings = std::collections::hash_map::DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut settings);
        let mut key = Sha256::new();
        key.update(env!("CARGO_PKG_VERSION").as_bytes());
        key.update(settings.finish().to_le_bytes());
        key.update(wasm);
        let path = self.dir.join(format!("{}.cwasm", hex(&key.finalize())));
        if let Some(sha256) = self.trusted(&path) {
            return Ok(Artifact {
                path,
                sha256,
                compiled: false,
            });
        }
        let bytes = engine.precompile_module(wasm).map_err(|e| format!("{e}"))?;
        let sha256 = hex(&Sha256::digest(&bytes));
        self.store(&path, &bytes)
            .map_err(|e| format!("storing the compiled module in {}: {e}", path.display()))?;
        Ok(Artifact {
            path,
            sha256,
            compiled: true,
        })
    }

    /// The hash of a stored artifact that is a regular file of ours that nobody else may
    /// write; `None` when there is none or it is not such a file.
    fn trusted(&self, path: &Path) -> Option<String> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
            .open(path)
            .ok()?;
        let meta = file.metadata().ok()?;
        if meta.uid() != nix::unistd::geteuid().as_raw() || meta.mode() & 0o022 != 0 {
            tracing::warn!(path = %path.display(), "ignoring a cached module that is not the plugin's own");
            return None;
        }
        let bytes = read_file_capped(file, path, u64::MAX).ok()?;
        Some(hex(&Sha256::digest(&bytes)))
    }

    /// Write atomically: a fresh file beside it, then a rename over whatever was there.
    fn store(&self, path: &Path, bytes: &[u8]) -> std::io::Result<()> {
        let tmp = self.dir.join(format!(
            ".tmp-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos())
        ));
        // Readable by jobs (it is bound into their roots read-only), written by us alone.
        let mut f: File = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&tmp)?;
        let written = f.write_all(bytes).and_then(|()| f.sync_all());
        if let Err(e) = written.and_then(|()| std::fs::rename(&tmp, path)) {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compiles_once_and_refuses_a_file_others_can_write() {
        let state = tempfile::tempdir().unwrap();
        let cache = Cache::open(state.path()).unwrap();
        let engine = crate::runner::engine().unwrap();
        let wasm = wat::parse_str("(module (func (export \"_start\")))").unwrap();
        let first = cache.get_or_compile(&engine, &wasm).unwrap();
        assert!(first.compiled);
        let again = cache.get_or_compile(&engine, &wasm).unwrap();
        assert_eq!(
            (again.path.clone(), again.compiled),
            (first.path.clone(), false)
        );
        assert_eq!(again.sha256, first.sha256);
        // Writable by others: not trusted, compiled and stored anew.
        std::fs::set_permissions(
            &first.path,
            std::os::unix::fs::PermissionsExt::from_mode(0o666),
        )
        .unwrap();
        let third = cache.get_or_compile(&engine, &wasm).unwrap();
        assert!(third.compiled);
        let mode = std::fs::metadata(&third.path).unwrap().mode() & 0o777;
        assert_eq!(mode, 0o644);
        // Another module, another file.
        let other = wat::parse_str("(module)").unwrap();
        assert_ne!(
            cache.get_or_compile(&engine, &other).unwrap().path,
            first.path
        );
    }
}
