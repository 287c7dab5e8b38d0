//! Results writing: a job's stdout into the results file, against the same program `> file`.

use std::process::Command;
use std::time::Instant;

use executor_schema::api::ExecutorApiClient;
use serde_json::json;

use crate::harness::Harness;
use crate::latency::check_ok;
use crate::report::Report;
use crate::{fail, Res, MIB};

pub(crate) async fn results_write(h: &Harness, bytes: u64, rep: &mut Report) -> Res<()> {
    rep.section("results writing (MiB/s, start-to-result)");
    let script = format!("head -c {bytes} /dev/zero");
    let direct = h.work.path().join("direct-out");
    let t = Instant::now();
    let st = Command::new("sh")
        .args(["-c", &script])
        .stdout(std::fs::File::create(&direct)?)
        .status()?;
    let bare = bytes as f64 / t.elapsed().as_secs_f64();
    if !st.success() || std::fs::metadata(&direct)?.len() != bytes {
        return fail("direct file write failed");
    }
    std::fs::remove_file(&direct)?;

    let limits = json!({"MaxStdoutFileLength": bytes, "MaxStderrFileLength": bytes});
    let req = h.request("results", &["sh", "-c", &script], Some(limits))?;
    let t = Instant::now();
    let r = h.client().run(req).await?;
    let plug = bytes as f64 / t.elapsed().as_secs_f64();
    check_ok("results job", &r)?;
    let out = h.work.path().join("results").join("stdout");
    let len = std::fs::metadata(&out)?.len();
    if len != bytes {
        return fail(format!(
            "results stdout holds {len} bytes, expected {bytes}"
        ));
    }
    rep.add(
        format!("executor_run writing {} MiB results", bytes >> 20),
        plug / MIB,
        "MiB/s",
        "same program > file",
        bare / MIB,
        Some((">= 0.8x", plug >= 0.8 * bare)),
    );
    let _ = std::fs::remove_dir_all(h.work.path().join("results"));
    Ok(())
}
