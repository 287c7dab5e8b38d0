use std::io::Write;

use executor_plugin::logstore::{
    decode, stdcopy_frame, FrameError, LogItem, LogReader, LogWriter, Stream,
};

/// Deterministic xorshift so failures reproduce.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn random_chunks(seed: u64, count: usize) -> Vec<(Stream, Vec<u8>)> {
    let mut rng = Rng(seed);
    (0..count)
        .map(|i| {
            let stream = if rng.below(3) == 0 {
                Stream::Stderr
            } else {
                Stream::Stdout
            };
            let len = match i % 7 {
                0 => 0,
                1 => rng.below(70_000) as usize,
                _ => rng.below(300) as usize,
            };
            // Full byte range, so invalid UTF-8 and NULs are common.
            let data = (0..len).map(|_| rng.next() as u8).collect();
            (stream, data)
        })
        .collect()
}

fn write_log(path: &std::path::Path, chunks: &[(Stream, Vec<u8>)], end: bool) {
    let mut w = LogWriter::create(path).unwrap();
    for (s, d) in chunks {
        w.write(*s, d).unwrap();
    }
    if end {
        w.end().unwrap();
    }
}

fn read_all(path: &std::path::Path, from: u64) -> Vec<LogItem> {
    let mut r = LogReader::open(path, from).unwrap();
    let mut items = Vec::new();
    while let Some(item) = r.next_item().unwrap() {
        items.push(item);
    }
    items
}

#[test]
fn round_trip_random_chunks() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("raw_container_logs");
    let chunks = random_chunks(0x9e37_79b9_7f4a_7c15, 400);
    write_log(&path, &chunks, true);
    let items = read_all(&path, 0);
    assert_eq!(items.len(), chunks.len() + 1);
    let mut expected_offset = 0;
    for (item, (stream, data)) in items.iter().zip(&chunks) {
        let LogItem::Frame(f) = item else {
            panic!("expected frame, got {item:?}")
        };
        assert_eq!(f.stream, *stream);
        assert_eq!(&f.data, data);
        assert_eq!(f.offset, expected_offset);
        assert_eq!(f.next, f.offset + 8 + 31 + data.len() as u64);
        assert_eq!(f.timestamp.len(), 30);
        expected_offset = f.next;
    }
    let file_len = std::fs::metadata(&path).unwrap().len();
    assert_eq!(
        items.last(),
        Some(&LogItem::End {
            offset: expected_offset
        })
    );
    assert_eq!(expected_offset + 8, file_len);
}

#[test]
fn resume_from_next_offset_neither_misses_nor_repeats() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("raw_container_logs");
    let chunks = random_chunks(42, 50);
    write_log(&path, &chunks, true);
    let all = read_all(&path, 0);
    for cut in [0usize, 1, 17, 49] {
        let LogItem::Frame(f) = &all[cut] else {
            panic!()
        };
        let rest = read_all(&path, f.next);
        assert_eq!(&all[cut + 1..], &rest[..], "resume after frame {cut}");
    }
    // Resuming at the End offset yields just the End again.
    let LogItem::End { offset } = all.last().unwrap() else {
        panic!()
    };
    assert_eq!(
        read_all(&path, *offset),
        vec![LogItem::End { offset: *offset }]
    );
}

#[test]
fn nothing_is_read_after_end_frame() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("raw_container_logs");
    write_log(&path, &[(Stream::Stdout, b"a".to_vec())], true);
    // Garbage after END must not be looked at.
    std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .unwrap()
        .write_all(b"\x09junk")
        .unwrap();
    let items = read_all(&path, 0);
    assert_eq!(items.len(), 2);
    assert!(matches!(items[1], LogItem::End { .. }));
}

#[test]
fn partial_trailing_frame_is_not_an_error_and_completes_later() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("raw_container_logs");
    write_log(&path, &[(Stream::Stdout, b"first\n".to_vec())], false);
    let whole_len = std::fs::metadata(&path).unwrap().len();

    let other = dir.path().join("other");
    write_log(
        &other,
        &[(Stream::Stderr, b"second frame data\n".to_vec())],
        true,
    );
    let second = std::fs::read(&other).unwrap();

    let mut r = LogReader::open(&path, 0).unwrap();
    assert!(matches!(r.next_item().unwrap(), Some(LogItem::Frame(_))));
    assert_eq!(r.next_item().unwrap(), None);
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .unwrap();
    // Torn at every interesting place: inside the header, inside the timestamp, inside data.
    let mut written = 0;
    for cut in [3usize, 8, 20, 40, second.len()] {
        f.write_all(&second[written..cut]).unwrap();
        written = cut;
        let item = r.next_item().unwrap();
        if cut < second.len() - 8 {
            assert_eq!(item, None, "cut at {cut}");
            assert_eq!(r.offset(), whole_len);
        } else {
            let Some(LogItem::Frame(frame)) = item else {
                panic!("{item:?}")
            };
            assert_eq!(frame.data, b"second frame data\n");
            assert_eq!(frame.offset, whole_len);
            assert!(matches!(r.next_item().unwrap(), Some(LogItem::End { .. })));
        }
    }
}

#[test]
fn every_prefix_of_a_valid_log_decodes_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("raw_container_logs");
    write_log(&path, &random_chunks(7, 5), true);
    let bytes = std::fs::read(&path).unwrap();
    for len in 0..bytes.len() {
        let mut at = 0;
        while let Some((_, used)) = decode(&bytes[at..len], at as u64).unwrap() {
            at += used;
        }
    }
}

fn corrupt(bytes: &[u8]) -> FrameError {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("raw_container_logs");
    write_log(&path, &[(Stream::Stdout, b"good\n".to_vec())], false);
    let good_len = std::fs::metadata(&path).unwrap().len();
    std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .unwrap()
        .write_all(bytes)
        .unwrap();
    let mut r = LogReader::open(&path, 0).unwrap();
    assert!(matches!(r.next_item().unwrap(), Some(LogItem::Frame(_))));
    let err = r.next_item().unwrap_err();
    let inner = err
        .get_ref()
        .and_then(|e| e.downcast_ref::<FrameError>())
        .cloned()
        .unwrap();
    assert_eq!(inner.offset(), good_len);
    assert!(
        err.to_string().contains(&format!("offset {good_len}")),
        "{err}"
    );
    inner
}

#[test]
fn corrupt_frames_error_with_offset() {
    let mut too_short = vec![1, 0, 0, 0, 0, 0, 0, 30];
    too_short.extend_from_slice(&[b'x'; 30]);
    let e = corrupt(&too_short);
    assert!(matches!(e, FrameError::TooShort { size: 30, .. }));
    assert!(e.to_string().contains("log frame is too short"));

    let mut bad_ts = vec![2, 0, 0, 0, 0, 0, 0, 33];
    bad_ts.extend_from_slice(b"2023-04-01T12:34:56.12340000xZ hi");
    assert!(matches!(corrupt(&bad_ts), FrameError::BadTimestamp { .. }));

    // An unknown stream byte fails even before the header is complete.
    assert!(matches!(
        corrupt(&[9]),
        FrameError::UnknownStream { byte: 9, .. }
    ));

    let mut daemon = vec![3, 0, 0, 0, 0, 0, 0, 35];
    daemon.extend_from_slice(b"2023-04-01T12:34:56.123400000Z oops");
    let e = corrupt(&daemon);
    assert!(e.to_string().contains("error from daemon in stream"), "{e}");
    assert!(e.to_string().contains("oops"));
}

#[test]
fn position_beyond_end_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("raw_container_logs");
    write_log(&path, &[(Stream::Stdout, b"a".to_vec())], false);
    assert!(LogReader::open(&path, 1000).is_err());
}

#[test]
fn stdcopy_framing_matches_docker() {
    let mut out = Vec::new();
    stdcopy_frame(Stream::Stdout, b"hello\n", &mut out);
    stdcopy_frame(Stream::Stderr, b"", &mut out);
    assert_eq!(
        out,
        [
            &[1, 0, 0, 0, 0, 0, 0, 6][..],
            b"hello\n",
            &[2, 0, 0, 0, 0, 0, 0, 0]
        ]
        .concat()
    );
}
