use std::path::Path;
use std::time::Duration;

use executor_plugin::logstore::{
    append_end_frame, follow, FollowOptions, LogItem, LogWriter, Stream,
};
use futures::StreamExt;

const GENEROUS: Duration = Duration::from_secs(60);

fn opts(position: Option<u64>, tail: bool, follow: bool) -> FollowOptions {
    FollowOptions {
        position,
        tail,
        follow,
        wait_for_file: Duration::from_secs(5),
    }
}

async fn collect(path: &Path, o: FollowOptions) -> Vec<LogItem> {
    let items = tokio::time::timeout(GENEROUS, follow(path.to_path_buf(), o).collect::<Vec<_>>())
        .await
        .expect("follow finished");
    items.into_iter().map(|r| r.unwrap()).collect()
}

fn data_of(items: &[LogItem]) -> (Vec<u8>, Vec<u8>) {
    let (mut out, mut err) = (Vec::new(), Vec::new());
    for item in items {
        if let LogItem::Frame(f) = item {
            match f.stream {
                Stream::Stdout => out.extend_from_slice(&f.data),
                Stream::Stderr => err.extend_from_slice(&f.data),
            }
        }
    }
    (out, err)
}

fn assert_single_end_last(items: &[LogItem]) {
    let ends = items
        .iter()
        .filter(|i| matches!(i, LogItem::End { .. }))
        .count();
    assert_eq!(ends, 1);
    assert!(matches!(items.last(), Some(LogItem::End { .. })));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writer_and_follower_see_every_byte_once_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("logs/raw_container_logs");
    let writer_path = path.clone();
    // The follower starts first and has to wait for the file to appear.
    let follower = tokio::spawn(collect_owned(path.clone(), opts(None, false, true)));
    let writer = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(100));
        let mut w = LogWriter::create(&writer_path).unwrap();
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let mut seed = 12345u64;
        for i in 0..3000u32 {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let len = (seed >> 33) as usize % if i % 100 == 0 { 3 << 20 } else { 2000 };
            let chunk: Vec<u8> = (0..len).map(|j| (j as u32 ^ i) as u8).collect();
            if i % 3 == 0 {
                w.write(Stream::Stderr, &chunk).unwrap();
                err.extend_from_slice(&chunk);
            } else {
                w.write(Stream::Stdout, &chunk).unwrap();
                out.extend_from_slice(&chunk);
            }
            if i % 500 == 0 {
                std::thread::sleep(Duration::from_millis(60));
            }
        }
        w.end().unwrap();
        (out, err)
    });
    let items = follower.await.unwrap();
    let (out, err) = writer.join().unwrap();
    assert_single_end_last(&items);
    let (got_out, got_err) = data_of(&items);
    assert_eq!(got_out.len(), out.len());
    assert!(got_out == out && got_err == err);
    // Offsets chain with no gap or overlap.
    let mut at = 0;
    for item in &items {
        match item {
            LogItem::Frame(f) => {
                assert_eq!(f.offset, at);
                at = f.next;
            }
            LogItem::End { offset } => assert_eq!(*offset, at),
        }
    }
}

async fn collect_owned(path: std::path::PathBuf, o: FollowOptions) -> Vec<LogItem> {
    collect(&path, o).await
}

#[tokio::test]
async fn history_without_follow_ends_at_eof_and_resume_continues() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("raw_container_logs");
    let mut w = LogWriter::create(&path).unwrap();
    for i in 0..10u8 {
        w.write(Stream::Stdout, &[i; 5]).unwrap();
    }
    let first = collect(&path, opts(None, false, false)).await;
    assert_eq!(first.len(), 11);
    assert_single_end_last(&first);
    let LogItem::Frame(fourth) = &first[3] else {
        panic!()
    };

    for i in 10..15u8 {
        w.write(Stream::Stderr, &[i; 5]).unwrap();
    }
    w.end().unwrap();
    let resumed = collect(&path, opts(Some(fourth.next), false, true)).await;
    assert_single_end_last(&resumed);
    let frames: Vec<_> = resumed
        .iter()
        .filter_map(|i| match i {
            LogItem::Frame(f) => Some(f.data[0]),
            _ => None,
        })
        .collect();
    assert_eq!(frames, (4..15u8).collect::<Vec<_>>());

    // The End offset of a stop at EOF is itself a resume point.
    let LogItem::End { offset } = first.last().unwrap() else {
        panic!()
    };
    let after = collect(&path, opts(Some(*offset), false, false)).await;
    let LogItem::Frame(f) = &after[0] else {
        panic!()
    };
    assert_eq!(f.data, [10u8; 5]);
}

#[tokio::test]
async fn tail_starts_at_the_end() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("raw_container_logs");
    let mut w = LogWriter::create(&path).unwrap();
    w.write(Stream::Stdout, b"old\n").unwrap();
    let old_len = std::fs::metadata(&path).unwrap().len();

    let only_end = collect(&path, opts(None, true, false)).await;
    assert_eq!(only_end, vec![LogItem::End { offset: old_len }]);

    let mut stream = Box::pin(follow(path.clone(), opts(Some(0), true, true)));
    // Nothing old arrives; wait long enough that the follower has opened the file at its end.
    assert!(
        tokio::time::timeout(Duration::from_millis(300), stream.next())
            .await
            .is_err()
    );
    w.write(Stream::Stdout, b"new\n").unwrap();
    w.end().unwrap();
    let rest: Vec<_> = tokio::time::timeout(GENEROUS, stream.collect::<Vec<_>>())
        .await
        .unwrap();
    let rest: Vec<_> = rest.into_iter().map(|r| r.unwrap()).collect();
    assert_eq!(rest.len(), 2);
    let LogItem::Frame(f) = &rest[0] else {
        panic!()
    };
    assert_eq!((f.offset, f.data.as_slice()), (old_len, &b"new\n"[..]));
    assert_single_end_last(&rest);
}

#[tokio::test]
async fn follow_without_end_frame_waits_until_append_end_frame() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("raw_container_logs");
    let mut w = LogWriter::create(&path).unwrap();
    w.write(Stream::Stdout, b"still running\n").unwrap();
    drop(w); // as if the monitor died without ending the log

    let mut stream = Box::pin(follow(path.clone(), opts(None, false, true)));
    let first = stream.next().await.unwrap().unwrap();
    assert!(matches!(first, LogItem::Frame(_)));
    assert!(
        tokio::time::timeout(Duration::from_millis(400), stream.next())
            .await
            .is_err(),
        "follow ended without an END frame"
    );
    append_end_frame(&path).unwrap();
    let end = tokio::time::timeout(GENEROUS, stream.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(matches!(end, LogItem::End { .. }));
    assert!(stream.next().await.is_none());
}

#[tokio::test]
async fn follow_without_follow_drops_partial_frame_into_end_offset() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("raw_container_logs");
    let mut w = LogWriter::create(&path).unwrap();
    w.write(Stream::Stdout, b"whole").unwrap();
    let whole = std::fs::metadata(&path).unwrap().len();
    drop(w);
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .unwrap();
    f.write_all(&[1, 0, 0, 0, 0, 0, 0, 40, b'2', b'0']).unwrap();
    let items = collect(&path, opts(None, false, false)).await;
    assert_eq!(items.len(), 2);
    assert_eq!(items[1], LogItem::End { offset: whole });
}

#[tokio::test]
async fn corrupt_data_ends_the_stream_with_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("raw_container_logs");
    std::fs::write(&path, [1, 0, 0, 0, 0, 0, 0, 5, 1, 2, 3, 4, 5]).unwrap();
    let items: Vec<_> = follow(path, opts(None, false, true)).collect().await;
    assert_eq!(items.len(), 1);
    let err = items[0].as_ref().unwrap_err();
    assert!(
        err.to_string()
            .contains("log frame is too short at offset 0"),
        "{err}"
    );
}

#[tokio::test]
async fn missing_file_times_out() {
    let dir = tempfile::tempdir().unwrap();
    let o = FollowOptions {
        wait_for_file: Duration::from_millis(100),
        ..opts(None, false, true)
    };
    let items: Vec<_> = follow(dir.path().join("never"), o).collect().await;
    assert_eq!(items.len(), 1);
    let err = items[0].as_ref().unwrap_err();
    assert!(
        err.to_string()
            .contains("timeout while waiting for execution logs"),
        "{err}"
    );
}
