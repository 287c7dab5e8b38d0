//! Trivial jobs per second at several concurrencies, against as many threads spawning bare.

use std::time::Instant;

use executor_host::Executor;
use executor_schema::RunCommandRequest;
use futures::StreamExt;
use serde_json::json;

use crate::harness::HostHarness;
use crate::latency::{bare_true, check_ok};
use crate::report::Report;
use crate::Res;

pub(crate) async fn throughput(h: &HostHarness, jobs: usize, rep: &mut Report) -> Res<()> {
    rep.section("throughput of trivial jobs (jobs/s)");
    for conc in [1usize, 8, 64] {
        let t = Instant::now();
        let threads: Vec<_> = (0..conc)
            .map(|k| {
                let mine = (jobs + conc - 1 - k) / conc;
                std::thread::spawn(move || -> Result<(), String> {
                    for _ in 0..mine {
                        bare_true().map_err(|e| e.to_string())?;
                    }
                    Ok(())
                })
            })
            .collect();
        for th in threads {
            th.join().map_err(|_| "bare spawn thread panicked")??;
        }
        let bare = jobs as f64 / t.elapsed().as_secs_f64();

        let reqs: Vec<RunCommandRequest> = (0..jobs)
            .map(|i| h.request(&format!("tp{conc}-{i}"), &["/bin/true"]))
            .collect::<Res<_>>()?;
        let t = Instant::now();
        let results: Vec<_> = futures::stream::iter(reqs)
            .map(|r| h.exec.run(r, None))
            .buffer_unordered(conc)
            .collect()
            .await;
        let plug = jobs as f64 / t.elapsed().as_secs_f64();
        for r in results {
            check_ok("throughput run", &r?)?;
        }
        rep.add(
            format!("Executor::run at concurrency {conc}"),
            plug,
            "jobs/s",
            format!("{conc} threads of Command::status"),
            bare,
            // The goal is set at concurrency 8; the others show how it scales.
            (conc == 8).then_some((">= 0.4x", plug >= 0.4 * bare)),
        );
    }
    rep.note("throughput_jobs_per_level", json!(jobs));
    Ok(())
}
