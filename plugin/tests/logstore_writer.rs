use executor_plugin::logstore::{append_end_frame, LogWriter, Stream};

fn check_frame(bytes: &[u8], stream: u8, data: &[u8]) -> usize {
    assert_eq!(bytes[0], stream);
    assert_eq!(&bytes[1..4], &[0, 0, 0]);
    let size = u32::from_be_bytes(bytes[4..8].try_into().unwrap()) as usize;
    assert_eq!(size, 31 + data.len());
    let ts = std::str::from_utf8(&bytes[8..38]).unwrap();
    assert_eq!(ts.len(), 30);
    assert!(ts.ends_with('Z') && ts.as_bytes()[19] == b'.', "{ts}");
    assert_eq!(bytes[38], b' ');
    assert_eq!(&bytes[39..39 + data.len()], data);
    8 + size
}

#[test]
fn writes_frames_and_end_in_docker_layout() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a/b/logs/raw_container_logs");
    let mut w = LogWriter::create(&path).unwrap();
    w.write(Stream::Stdout, b"hello\n").unwrap();
    w.write(Stream::Stderr, b"\xff\xfe").unwrap();
    w.write(Stream::Stdout, b"").unwrap();
    w.end().unwrap();
    w.end().unwrap();
    let bytes = std::fs::read(&path).unwrap();
    let mut at = 0;
    at += check_frame(&bytes[at..], 1, b"hello\n");
    at += check_frame(&bytes[at..], 2, b"\xff\xfe");
    at += check_frame(&bytes[at..], 1, b"");
    assert_eq!(&bytes[at..], &[4, 0, 0, 0, 0, 0, 0, 0]);
}

#[test]
fn create_truncates_and_append_end_frame_appends() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("raw_container_logs");
    std::fs::write(&path, b"old junk").unwrap();
    let mut w = LogWriter::create(&path).unwrap();
    w.write(Stream::Stdout, b"x").unwrap();
    drop(w);
    append_end_frame(&path).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    let at = check_frame(&bytes, 1, b"x");
    assert_eq!(&bytes[at..], &[4, 0, 0, 0, 0, 0, 0, 0]);
    assert!(append_end_frame(&dir.path().join("missing")).is_err());
}

#[test]
fn large_write_is_split_into_capped_frames() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("raw_container_logs");
    let data: Vec<u8> = (0..(2 << 20) + 5).map(|i| (i % 251) as u8).collect();
    let mut w = LogWriter::create(&path).unwrap();
    w.write(Stream::Stdout, &data).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    let mut at = 0;
    let mut got = Vec::new();
    while at < bytes.len() {
        let size = u32::from_be_bytes(bytes[at + 4..at + 8].try_into().unwrap()) as usize;
        assert!(size - 31 <= 1 << 20);
        got.extend_from_slice(&bytes[at + 39..at + 8 + size]);
        at += 8 + size;
    }
    assert_eq!(got, data);
}

#[test]
fn a_bounded_log_stops_with_one_marker_and_counts_the_rest() {
    use executor_plugin::logstore::LogStop;
    use executor_plugin::results::CheckedDir;
    let dir = tempfile::tempdir().unwrap();
    let checked = CheckedDir::open(dir.path()).unwrap();
    // Room for one 100-byte frame (39 bytes of header and timestamp each) and part of another.
    let mut w = LogWriter::create_in(&checked, "raw_container_logs", 200).unwrap();
    let data = [b'x'; 100];
    for _ in 0..5 {
        w.write(Stream::Stdout, &data).unwrap();
    }
    w.end().unwrap();
    assert_eq!(w.stopped(), Some((LogStop::Limit(200), 500 - 100 - 22)));
    let bytes = std::fs::read(dir.path().join("raw_container_logs")).unwrap();
    let mut at = check_frame(&bytes, 1, &data);
    at += check_frame(&bytes[at..], 1, &data[..22]);
    assert_eq!(at, 200, "the frames fill the bound exactly");
    let size = u32::from_be_bytes(bytes[at + 4..at + 8].try_into().unwrap()) as usize;
    let marker = String::from_utf8_lossy(&bytes[at + 39..at + 8 + size]).into_owned();
    assert_eq!(bytes[at], 2, "the marker is on stderr");
    assert!(marker.contains("limit of 200 bytes"), "{marker}");
    at += 8 + size;
    assert_eq!(&bytes[at..], &[4, 0, 0, 0, 0, 0, 0, 0]);
}
