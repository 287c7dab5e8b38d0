//! Throughput measurement, not a pass/fail threshold: run with
//! `cargo test --release -p executor-plugin --test logstore_throughput -- --ignored --nocapture`.

use std::time::{Duration, Instant};

use executor_plugin::logstore::{follow, FollowOptions, LogItem, LogWriter, Stream};
use futures::StreamExt;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "measurement; prints MiB/s"]
async fn follow_one_gib_while_writing() {
    const TOTAL: usize = 1 << 30;
    const CHUNK: usize = 64 * 1024;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("raw_container_logs");
    let wpath = path.clone();
    let start = Instant::now();
    let writer = std::thread::spawn(move || {
        let mut w = LogWriter::create(&wpath).unwrap();
        let chunk = vec![b'x'; CHUNK];
        for _ in 0..TOTAL / CHUNK {
            w.write(Stream::Stdout, &chunk).unwrap();
        }
        w.end().unwrap();
        start.elapsed()
    });
    let o = FollowOptions {
        position: None,
        tail: false,
        follow: true,
        wait_for_file: Duration::from_secs(5),
    };
    let mut stream = Box::pin(follow(path.clone(), o.clone()));
    let mut got = 0usize;
    while let Some(item) = stream.next().await {
        match item.unwrap() {
            LogItem::Frame(f) => got += f.data.len(),
            LogItem::End { .. } => break,
        }
    }
    let follow_time = start.elapsed();
    let write_time = writer.join().unwrap();
    assert_eq!(got, TOTAL);
    // Replay of the finished file: the reader alone, without waiting on the writer.
    let replay_start = Instant::now();
    let mut replayed = 0usize;
    let mut stream = Box::pin(follow(path, o));
    while let Some(item) = stream.next().await {
        if let LogItem::Frame(f) = item.unwrap() {
            replayed += f.data.len();
        }
    }
    let replay_time = replay_start.elapsed();
    assert_eq!(replayed, TOTAL);
    let mib = (TOTAL >> 20) as f64;
    println!(
        "writer alone finished in {:?} ({:.0} MiB/s); follower done in {:?} ({:.0} MiB/s)",
        write_time,
        mib / write_time.as_secs_f64(),
        follow_time,
        mib / follow_time.as_secs_f64()
    );
    println!(
        "replay of the finished log: {:?} ({:.0} MiB/s)",
        replay_time,
        mib / replay_time.as_secs_f64()
    );
}
