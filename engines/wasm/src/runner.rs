//! The job's process: `executor-wasm __wasm-run <config>` runs one WASI preview 1 module with
//! wasmtime, inside the sandbox the monitor made for it. Its stdout and stderr are the job's;
//! an error that is not the program's own exit (a trap, a module that does not load) goes to
//! the status file, which the plugin turns into the result's `ErrorMsg`.

use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use wasmtime::{Config, Engine, Linker, Module, Store, StoreLimits, StoreLimitsBuilder};
use wasmtime_wasi::p1::{self, WasiP1Ctx};
use wasmtime_wasi::{FsPerms, I32Exit, WasiCtxBuilder};

/// `argv[1]` that selects the run mode in `executor-wasm`.
pub const RUN_ARG: &str = "__wasm-run";

/// The most a module file may hold: what is read and compiled is bounded.
pub const MAX_MODULE_SIZE: u64 = 256 << 20;

/// Environment variables the plugin runtime gives every job process that are not the job's
/// own: the guest sees the request's `Env` and the engine's variables, not these.
const RUNTIME_ENV: [&str; 4] = ["PATH", "HOME", "USER", "LOGNAME"];

/// What the run mode is told, as one JSON argument.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RunConfig {
    pub entry: ModuleRef,
    /// Instantiated first, in order, and linked under their names.
    #[serde(default)]
    pub imports: Vec<ModuleRef>,
    pub entrypoint: String,
    /// The guest's argv (`argv[0]` included).
    #[serde(default)]
    pub args: Vec<String>,
    /// Directories (or files, through their directory) the guest sees at the same paths.
    #[serde(default)]
    pub preopens: Vec<Preopen>,
    /// Linear memory cap in bytes for all of the store's memories together (`None`: wasm's).
    #[serde(default)]
    pub memory: Option<u64>,
    /// Where an error that is not the program's exit is written for the plugin.
    #[serde(default)]
    pub status: Option<PathBuf>,
}

/// A module: its `.wasm` (as the job sees it) and, when the plugin compiled it, the artifact
/// and the SHA-256 of the artifact's bytes, which are checked before it is loaded.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ModuleRef {
    /// How the spec named it (for messages).
    pub spec_name: String,
    pub path: PathBuf,
    /// The name it is linked under (import modules).
    #[serde(default)]
    pub link_name: String,
    #[serde(default)]
    pub artifact: Option<PathBuf>,
    #[serde(default)]
    pub artifact_sha256: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Preopen {
    pub path: PathBuf,
    pub read_only: bool,
}

/// How the module ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub exit_code: i32,
    /// A trap or a load failure: the result's `ErrorMsg`.
    pub error: Option<String>,
}

impl Outcome {
    fn failed(error: String) -> Outcome {
        Outcome {
            exit_code: 1,
            error: Some(error),
        }
    }
}

/// The compiler settings the plugin compiles with and the run mode loads with: an artifact
/// made under other settings is refused by wasmtime's own check.
pub fn engine() -> wasmtime::Result<Engine> {
    // The crate is built without parallel compilation: one thread compiles.
    Engine::new(&Config::new())
}

/// The run mode's `main`: `argv` = `[exe, RUN_ARG, config-json]`.
pub fn main_from_args(argv: Vec<std::ffi::OsString>) -> i32 {
    let Some(config) = argv.get(2).and_then(|a| a.to_str()) else {
        eprintln!("usage: executor-wasm {RUN_ARG} <config-json>");
        return 2;
    };
    let config: RunConfig = match serde_json::from_str(config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("executor-wasm {RUN_ARG}: bad configuration: {e}");
            return 2;
        }
    };
    let outcome = run(&config);
    if let (Some(error), Some(status)) = (&outcome.error, &config.status) {
        // The file was made for us; never follow a link to somewhere else.
        let written = std::fs::OpenOptions::new()
            .write(true)
            .truncate(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(status)
            .and_then(|mut f| std::io::Write::write_all(&mut f, error.as_bytes()));
        if let Err(e) = written {
            eprintln!("executor-wasm: cannot report {error:?}: {e}");
        }
    }
    outcome.exit_code
}

struct Host {
    wasi: WasiP1Ctx,
    limits: StoreLimits,
}

/// Run the module of `config` to its end.
pub fn run(config: &RunConfig) -> Outcome {
    let engine = match engine() {
        Ok(e) => e,
        Err(e) => return Outcome::failed(format!("cannot set up wasmtime: {e}")),
    };
    let wasi = match wasi_ctx(config) {
        Ok(w) => w,
        Err(e) => return Outcome::failed(e),
    };
    let mut limits = StoreLimitsBuilder::new();
    if let Some(bytes) = config.memory.filter(|b| *b > 0) {
        limits = limits.memory_size(usize::try_from(bytes).unwrap_or(usize::MAX));
    }
    let mut store = Store::new(
        &engine,
        Host {
            wasi,
            limits: limits.build(),
        },
    );
    store.limiter(|h| &mut h.limits);
    let mut linker: Linker<Host> = Linker::new(&engine);
    if let Err(e) = p1::add_to_linker_sync(&mut linker, |h: &mut Host| &mut h.wasi) {
        return Outcome::failed(format!("cannot link WASI: {e}"));
    }
    for import in &config.imports {
        let module = match load(&engine, import) {
            Ok(m) => m,
            Err(e) => {
                return Outcome::failed(format!(
                    "failed to load import module {}: {e}",
                    import.spec_name
                ))
            }
        };
        let name = if import.link_name.is_empty() {
            link_name(&module, &import.path)
        } else {
            import.link_name.clone()
        };
        let linked = linker
            .instantiate(&mut store, &module)
            .and_then(|instance| linker.instance(&mut store, &name, instance).map(drop));
        if let Err(e) = linked {
            return Outcome::failed(format!(
                "failed to load import module {}: {}",
                import.spec_name,
                describe(&e)
            ));
        }
    }
    let module = match load(&engine, &config.entry) {
        Ok(m) => m,
        Err(e) => {
            return Outcome::failed(format!(
                "failed to load entry module {}: {e}",
                config.entry.spec_name
            ))
        }
    };
    let instance = match linker.instantiate(&mut store, &module) {
        Ok(i) => i,
        Err(e) => {
            return exited(&e).unwrap_or_else(|| {
                Outcome::failed(format!(
                    "failed to load entry module {}: {}",
                    config.entry.spec_name,
                    describe(&e)
                ))
            })
        }
    };
    let Some(func) = instance.get_func(&mut store, &config.entrypoint) else {
        return Outcome::failed(format!(
            "unable to find the entrypoint '{}' in the WASM module",
            config.entrypoint
        ));
    };
    let ty = func.ty(&store);
    if ty.params().len() > 0 {
        return Outcome::failed(format!(
            "the entrypoint '{}' takes {} parameters; it must take none",
            config.entrypoint,
            ty.params().len()
        ));
    }
    let mut results: Vec<wasmtime::Val> = ty
        .results()
        .map(|t| t.default_value().unwrap_or(wasmtime::Val::I32(0)))
        .collect();
    match func.call(&mut store, &[], &mut results) {
        // Returning from the entrypoint without `proc_exit` is success, as for a C or Rust
        // program whose `main` returned 0 (Bacalhau reports -1).
        Ok(()) => Outcome {
            exit_code: 0,
            error: None,
        },
        Err(e) => exited(&e).unwrap_or_else(|| Outcome::failed(describe(&e))),
    }
}

/// `proc_exit(n)`: the process exits `n` (as any process, its low 8 bits reach the monitor).
fn exited(e: &wasmtime::Error) -> Option<Outcome> {
    e.downcast_ref::<I32Exit>().map(|I32Exit(code)| Outcome {
        exit_code: *code,
        error: None,
    })
}

/// A trap by its name ("wasm trap: ..."), anything else as wasmtime says it.
fn describe(e: &wasmtime::Error) -> String {
    match e.downcast_ref::<wasmtime::Trap>() {
        // Its text names it: "wasm trap: ...".
        Some(trap) => format!("{trap}"),
        None => format!("{e}"),
    }
}

/// The name an import module is linked under: its name section's, else its file name without
/// `.wasm`.
pub fn link_name(module: &Module, path: &Path) -> String {
    match module.name() {
        Some(n) if !n.is_empty() => n.to_string(),
        _ => path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default(),
    }
}

fn load(engine: &Engine, m: &ModuleRef) -> Result<Module, String> {
    match (&m.artifact, &m.artifact_sha256) {
        (Some(artifact), Some(sha)) => {
            let bytes = read_capped(artifact, u64::MAX)?;
            let got = hex(&Sha256::digest(&bytes));
            if &got != sha {
                return Err(format!(
                    "the compiled module {} is not the one the plugin made (sha256 {got}, \
                     expected {sha})",
                    artifact.display()
                ));
            }
            // SAFETY: the bytes are the artifact the plugin's own `Engine::precompile_module`
            // wrote into its private state directory (checked by hash above, so nothing changed
            // them since), and `deserialize` checks that they were made by this wasmtime with
            // these settings.
            unsafe { Module::deserialize(engine, &bytes) }.map_err(|e| format!("{e}"))
        }
        _ => {
            let bytes = read_capped(&m.path, MAX_MODULE_SIZE)?;
            Module::new(engine, &bytes).map_err(|e| format!("{e}"))
        }
    }
}

/// Read a regular file, refusing one larger than `max`.
pub fn read_capped(path: &Path, max: u64) -> Result<Vec<u8>, String> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    read_file_capped(file, path, max)
}

/// Read an open regular file, refusing one larger than `max`.
pub fn read_file_capped(file: std::fs::File, path: &Path, max: u64) -> Result<Vec<u8>, String> {
    let meta = file
        .metadata()
        .map_err(|e| format!("{}: {e}", path.display()))?;
    if !meta.is_file() {
        return Err(format!("{}: not a regular file", path.display()));
    }
    if meta.len() > max {
        return Err(format!(
            "{}: {} bytes, more than the {max} a module may have",
            path.display(),
            meta.len()
        ));
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    file.take(max.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    if bytes.len() as u64 > max {
        return Err(format!("{}: grew past {max} bytes", path.display()));
    }
    Ok(bytes)
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn wasi_ctx(config: &RunConfig) -> Result<WasiP1Ctx, String> {
    let mut b = WasiCtxBuilder::new();
    b.inherit_stdout().inherit_stderr().args(&config.args);
    let mut env: Vec<(String, String)> = std::env::vars_os()
        .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
        .filter(|(k, _)| !RUNTIME_ENV.contains(&k.as_str()))
        .collect();
    env.sort();
    b.envs(&env);
    let mut seen: Vec<PathBuf> = Vec::new();
    for p in &config.preopens {
        // WASI preopens directories: a file is reached through its directory, which then
        // shows the guest only what the job's root has there.
        let dir = match std::fs::metadata(&p.path) {
            Ok(m) if m.is_dir() => p.path.clone(),
            Ok(_) => match p.path.parent() {
                Some(parent) => parent.to_path_buf(),
                None => continue,
            },
            Err(e) => return Err(format!("preopening {}: {e}", p.path.display())),
        };
        if seen.contains(&dir) {
            continue;
        }
        seen.push(dir.clone());
        let perms = if p.read_only {
            FsPerms::ReadOnly
        } else {
            FsPerms::ReadWrite
        };
        let guest = dir.to_string_lossy().into_owned();
        b.preopened_dir(&dir, &guest, perms)
            .map_err(|e| format!("preopening {}: {e}", dir.display()))?;
    }
    Ok(b.build_p1())
}

#[cfg(test)]
mod tests;
