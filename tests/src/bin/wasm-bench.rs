//! `wasm-bench`: start-to-result of a hello-world WASI module through `executor-wasm`, with a
//! warm module cache and on its first (compiling) run, next to native `/bin/true` through
//! `executor-native` in the same run (interleaved, so both see the same load).
//!
//! ```text
//! cargo build --release --workspace
//! cargo run --release -p executor-tests --bin wasm-bench [-- RUNS]
//! ```
//!
//! Both go through the host shim's `Executor` trait, as Bacalhau would call them, with
//! `Network: None`. Needs root (the wasm engine needs filesystem isolation).

use std::path::{Path, PathBuf};
use std::time::Instant;

use executor_host::{Executor, PluginExecutor, PluginSpec};
use executor_schema::{PluginConfig, RunCommandRequest, RunCommandResult};
use serde_json::json;

type Res<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// `engines/wasm/testdata/hello.wat` with a global whose value makes each module distinct
/// (a module the cache has not seen is compiled).
fn hello(salt: u32) -> Res<Vec<u8>> {
    let text = format!(
        r#"(module
  (import "wasi_snapshot_preview1" "fd_write" (func $write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (global (export "salt") i32 (i32.const {salt}))
  (data (i32.const 100) "hello\n")
  (func (export "_start")
    (i32.store (i32.const 0) (i32.const 100))
    (i32.store (i32.const 4) (i32.const 6))
    (drop (call $write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 20)))))"#
    );
    Ok(wat::parse_str(text)?)
}

struct Side {
    exec: PluginExecutor,
    _state: tempfile::TempDir,
}

async fn side(engine: &str, exe: &Path) -> Res<Side> {
    let state = tempfile::Builder::new()
        .prefix("wasm-bench-state")
        .tempdir()?;
    let mut spec = PluginSpec::new(engine, exe);
    spec.config = PluginConfig {
        state_dir: Some(state.path().to_path_buf()),
        max_retained: Some(100_000),
        ..Default::default()
    };
    let exec = PluginExecutor::new(spec);
    // Started here so no figure includes the plugin's launch.
    exec.info().await?;
    Ok(Side {
        exec,
        _state: state,
    })
}

fn request(
    work: &Path,
    id: &str,
    engine: serde_json::Value,
    inputs: serde_json::Value,
) -> Res<RunCommandRequest> {
    let results = work.join(id);
    std::fs::create_dir_all(&results)?;
    Ok(serde_json::from_value(json!({
        "JobID": "wasm-bench",
        "ExecutionID": id,
        "ResultsDir": results,
        "Network": {"Type": "None"},
        "Inputs": inputs,
        "EngineParams": engine,
    }))?)
}

fn wasm_request(work: &Path, id: &str, module: &Path) -> Res<RunCommandRequest> {
    let input = json!([{
        "InputSource": {"Source": {"Type": "inline", "Params": {}}, "Alias": "main", "Target": "/app/hello.wasm"},
        "Volume": {"type": 1, "readOnly": true, "source": module, "target": "/app/hello.wasm"},
    }]);
    request(
        work,
        id,
        json!({"Type": "wasm", "Params": {"EntryModule": "main"}}),
        input,
    )
}

fn check(what: &str, r: &RunCommandResult, stdout: &str) -> Res<()> {
    if r.exit_code != 0 || !r.error_msg.is_empty() || r.stdout != stdout {
        return Err(format!("{what}: unexpected result {r:?}").into());
    }
    Ok(())
}

fn p50(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

async fn timed(exec: &PluginExecutor, req: RunCommandRequest) -> Res<(f64, RunCommandResult)> {
    let t = Instant::now();
    let r = exec.run(req, None).await?;
    Ok((t.elapsed().as_secs_f64() * 1e3, r))
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Res<()> {
    let runs: usize = std::env::args()
        .nth(1)
        .map(|a| a.parse())
        .transpose()?
        .unwrap_or(100);
    if !nix::unistd::geteuid().is_root() {
        return Err("wasm-bench needs root: the wasm engine needs filesystem isolation".into());
    }
    let dir: PathBuf = std::env::current_exe()?
        .parent()
        .ok_or("no directory of the bench binary")?
        .to_path_buf();
    let native = side("native", &dir.join("executor-native")).await?;
    let wasm = side("wasm", &dir.join("executor-wasm")).await?;
    let work = tempfile::Builder::new()
        .prefix("wasm-bench-work")
        .tempdir()?;
    let module = work.path().join("hello.wasm");
    std::fs::write(&module, hello(0)?)?;
    let true_engine = json!({"Type": "native", "Params": {"Entrypoint": ["/bin/true"]}});
    // Warm-up: both plugins have run a job, the module is compiled and cached.
    for i in 0..5 {
        let (_, r) = timed(
            &native.exec,
            request(
                work.path(),
                &format!("nw{i}"),
                true_engine.clone(),
                json!([]),
            )?,
        )
        .await?;
        check("native warm-up", &r, "")?;
        let (_, r) = timed(
            &wasm.exec,
            wasm_request(work.path(), &format!("ww{i}"), &module)?,
        )
        .await?;
        check("wasm warm-up", &r, "hello\n")?;
    }
    let (mut t_native, mut t_warm, mut t_first) = (Vec::new(), Vec::new(), Vec::new());
    let firsts = (runs / 5).max(5);
    for i in 0..runs {
        let req = request(
            work.path(),
            &format!("n{i}"),
            true_engine.clone(),
            json!([]),
        )?;
        let (ms, r) = timed(&native.exec, req).await?;
        check("native", &r, "")?;
        t_native.push(ms);
        let (ms, r) = timed(
            &wasm.exec,
            wasm_request(work.path(), &format!("w{i}"), &module)?,
        )
        .await?;
        check("wasm warm", &r, "hello\n")?;
        t_warm.push(ms);
        if i < firsts {
            // A module never seen: the start compiles it.
            let fresh = work.path().join(format!("fresh-{i}.wasm"));
            std::fs::write(&fresh, hello(i as u32 + 1)?)?;
            let (ms, r) = timed(
                &wasm.exec,
                wasm_request(work.path(), &format!("f{i}"), &fresh)?,
            )
            .await?;
            check("wasm first", &r, "hello\n")?;
            t_first.push(ms);
        }
    }
    let (n, w, f) = (p50(t_native), p50(t_warm), p50(t_first));
    println!("start-to-result p50 over {runs} runs ({firsts} first runs), Network None, same run:");
    println!("  native /bin/true                 {n:8.2} ms  (baseline)");
    println!(
        "  wasm hello, warm module cache    {w:8.2} ms  ({:.2}x native)",
        w / n
    );
    println!(
        "  wasm hello, first run (compiles) {f:8.2} ms  ({:.2}x native)",
        f / n
    );
    println!(
        "{}",
        json!({"native_true_p50_ms": n, "wasm_warm_p50_ms": w, "wasm_first_p50_ms": f,
               "warm_over_native": w / n, "first_over_native": f / n, "runs": runs})
    );
    native.exec.shutdown(true).await;
    wasm.exec.shutdown(true).await;
    Ok(())
}
