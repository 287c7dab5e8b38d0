//! `ByteSize` against c2h5oh/datasize's `UnmarshalText` and `String` (the version Bacalhau pins).

use executor_schema::{ByteSize, ParseByteSizeError};

fn parse(s: &str) -> Result<ByteSize, ParseByteSizeError> {
    s.parse()
}

#[test]
fn parses_what_datasize_parses() {
    let table: &[(&str, u64)] = &[
        ("0", 0),
        ("0B", 0),
        ("1024", 1024),
        ("1500B", 1500),
        ("1b", 1),
        ("7byte", 7),
        ("2KB", 2048),
        ("2kb", 2048),
        ("2kB", 2048),
        ("2K", 2048),
        ("2k", 2048),
        ("2KiB", 2048),
        ("2kib", 2048),
        ("2 kilobytes", 2048),
        ("3 MB", 3 << 20),
        ("3mib", 3 << 20),
        ("3megabytes", 3 << 20),
        ("1GB", 1 << 30),
        ("1 gigabyte ", 1 << 30),
        ("1giga", 1 << 30),
        ("1TB", 1 << 40),
        ("1tera", 1 << 40),
        ("1PB", 1 << 50),
        ("1EB", 1 << 60),
        ("1exa", 1 << 60),
        ("15EB", 15 << 60),
        ("18446744073709551615", u64::MAX),
    ];
    for &(text, want) in table {
        assert_eq!(parse(text), Ok(ByteSize(want)), "{text:?}");
    }
}

#[test]
fn rejects_what_datasize_rejects() {
    for text in [
        "", "GB", " 1GB", "-1", "1.5GB", "1 XB", "1bytes", "1GBs", "0x10", "1 Bb",
    ] {
        assert!(
            matches!(parse(text), Err(ParseByteSizeError::Invalid(_))),
            "{text:?}: {:?}",
            parse(text)
        );
    }
    for text in ["1Kb", "1Mb", "2Gb", "1Tb", "1Pb", "1Eb", "1 Mb "] {
        assert!(
            matches!(parse(text), Err(ParseByteSizeError::Bits(..))),
            "{text:?}: {:?}",
            parse(text)
        );
    }
    for text in [
        "16EB",
        "18446744073709551616",
        "99999999999999999999999",
        "17179869184GB",
    ] {
        assert!(
            matches!(parse(text), Err(ParseByteSizeError::Overflow(_))),
            "{text:?}: {:?}",
            parse(text)
        );
    }
}

#[test]
fn formats_as_go_marshal_text() {
    let table: &[(u64, &str)] = &[
        (0, "0B"),
        (1, "1B"),
        (1023, "1023B"),
        (1024, "1KB"),
        (1500, "1500B"),
        (2048, "2KB"),
        (1536 * 1024, "1536KB"),
        (1 << 20, "1MB"),
        (1 << 30, "1GB"),
        (3 << 40, "3TB"),
        (1 << 50, "1PB"),
        (1 << 60, "1EB"),
        (u64::MAX, "18446744073709551615B"),
    ];
    for &(n, want) in table {
        assert_eq!(ByteSize(n).to_string(), want);
        assert_eq!(parse(want), Ok(ByteSize(n)));
        assert_eq!(
            serde_json::to_value(ByteSize(n)).unwrap(),
            serde_json::json!(want)
        );
    }
}

#[test]
fn json_accepts_strings_and_integers() {
    let s: ByteSize = serde_json::from_str("\"2KB\"").unwrap();
    assert_eq!(s, ByteSize(2048));
    let n: ByteSize = serde_json::from_str("4096").unwrap();
    assert_eq!(serde_json::to_string(&n).unwrap(), "\"4KB\"");
    assert!(serde_json::from_str::<ByteSize>("-5").is_err());
    assert!(serde_json::from_str::<ByteSize>("1.5").is_err());
    assert!(serde_json::from_str::<ByteSize>("\"2Kb\"").is_err());
}
