//! RFC3339Nano UTC timestamps with exactly nine fractional digits, as Docker writes them in
//! `raw_container_logs`. Hand-rolled so the writer needs no date crate and never allocates.

use std::time::{SystemTime, UNIX_EPOCH};

/// Length of a formatted timestamp: `YYYY-MM-DDTHH:MM:SS.NNNNNNNNNZ`.
pub const TIMESTAMP_LEN: usize = 30;

/// Days since 1970-01-01 to a proleptic Gregorian (year, month, day) (Howard Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// Inverse of `civil_from_days`.
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = i64::from(month);
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn put_digits(out: &mut [u8], mut value: u64) {
    for slot in out.iter_mut().rev() {
        *slot = b'0' + (value % 10) as u8;
        value /= 10;
    }
}

/// Formats `secs`.`nanos` since the Unix epoch. Years outside 0..=9999 are clamped because the
/// format has exactly four year digits; a log timestamp there would be a broken clock anyway.
pub fn format_unix(secs: i64, nanos: u32, out: &mut [u8; TIMESTAMP_LEN]) {
    let (secs, nanos) = if secs < -62_167_219_200 {
        (-62_167_219_200, 0)
    } else if secs > 253_402_300_799 {
        (253_402_300_799, 999_999_999)
    } else {
        (secs, nanos.min(999_999_999))
    };
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400) as u64;
    let (year, month, day) = civil_from_days(days);
    put_digits(&mut out[0..4], year as u64);
    out[4] = b'-';
    put_digits(&mut out[5..7], u64::from(month));
    out[7] = b'-';
    put_digits(&mut out[8..10], u64::from(day));
    out[10] = b'T';
    put_digits(&mut out[11..13], sod / 3600);
    out[13] = b':';
    put_digits(&mut out[14..16], (sod / 60) % 60);
    out[16] = b':';
    put_digits(&mut out[17..19], sod % 60);
    out[19] = b'.';
    put_digits(&mut out[20..29], u64::from(nanos));
    out[29] = b'Z';
}

/// Formats a `SystemTime` (times before the epoch are supported down to year 0).
pub fn format_system_time(time: SystemTime, out: &mut [u8; TIMESTAMP_LEN]) {
    match time.duration_since(UNIX_EPOCH) {
        Ok(d) => format_unix(
            i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
            d.subsec_nanos(),
            out,
        ),
        Err(e) => {
            let d = e.duration();
            let secs = -i64::try_from(d.as_secs()).unwrap_or(i64::MAX);
            if d.subsec_nanos() == 0 {
                format_unix(secs, 0, out)
            } else {
                format_unix(secs - 1, 1_000_000_000 - d.subsec_nanos(), out)
            }
        }
    }
}

/// Formats the current time.
pub fn now(out: &mut [u8; TIMESTAMP_LEN]) {
    format_system_time(SystemTime::now(), out)
}

/// Parses exactly the format this module writes; returns (unix seconds, nanos).
/// Stricter than Go's RFC3339Nano parser on purpose: Docker always writes this fixed width, and
/// the fixed width is what lets a frame's data start at byte 31 of the payload.
pub fn parse(ts: &[u8]) -> Option<(i64, u32)> {
    if ts.len() != TIMESTAMP_LEN {
        return None;
    }
    let num = |range: std::ops::Range<usize>| -> Option<u64> {
        let mut v = 0u64;
        for &b in &ts[range] {
            if !b.is_ascii_digit() {
                return None;
            }
            v = v * 10 + u64::from(b - b'0');
        }
        Some(v)
    };
    let fixed = [
        (4, b'-'),
        (7, b'-'),
        (10, b'T'),
        (13, b':'),
        (16, b':'),
        (19, b'.'),
        (29, b'Z'),
    ];
    if fixed.iter().any(|&(i, c)| ts[i] != c) {
        return None;
    }
    let year = num(0..4)? as i64;
    let month = num(5..7)? as u32;
    let day = num(8..10)? as u32;
    let hour = num(11..13)?;
    let minute = num(14..16)?;
    let second = num(17..19)?;
    let nanos = num(20..29)? as u32;
    if !(1..=12).contains(&month) || hour > 23 || minute > 59 || second > 60 {
        return None;
    }
    let leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
    let month_days = [
        31,
        if leap { 29 } else { 28 },
        31,
        30,
        31,
        30,
        31,
        31,
        30,
        31,
        30,
        31,
    ];
    if day == 0 || day > month_days[(month - 1) as usize] {
        return None;
    }
    let days = days_from_civil(year, month, day);
    Some((
        days * 86_400 + (hour * 3600 + minute * 60 + second) as i64,
        nanos,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fmt(secs: i64, nanos: u32) -> String {
        let mut buf = [0u8; TIMESTAMP_LEN];
        format_unix(secs, nanos, &mut buf);
        String::from_utf8(buf.to_vec()).unwrap()
    }

    #[test]
    fn formats_known_instants() {
        assert_eq!(fmt(0, 0), "1970-01-01T00:00:00.000000000Z");
        assert_eq!(
            fmt(1_680_352_496, 123_400_000),
            "2023-04-01T12:34:56.123400000Z"
        );
        assert_eq!(fmt(951_782_400, 1), "2000-02-29T00:00:00.000000001Z");
        assert_eq!(fmt(-1, 999_999_999), "1969-12-31T23:59:59.999999999Z");
        assert_eq!(fmt(253_402_300_799, 5), "9999-12-31T23:59:59.000000005Z");
    }

    #[test]
    fn parse_inverts_format_across_days() {
        // Step by a prime number of seconds so many different days, months and leap years are hit.
        let mut secs = -2_208_988_800i64; // 1900-01-01
        while secs < 4_102_444_800 {
            let s = fmt(secs, 987_654_321);
            assert_eq!(parse(s.as_bytes()), Some((secs, 987_654_321)), "{s}");
            secs += 86_400 * 7 + 3_607;
        }
    }

    #[test]
    fn parse_rejects_malformed() {
        for bad in [
            "2023-04-01T12:34:56.1234Z",
            "2023-04-01 12:34:56.123400000Z",
            "2023-13-01T12:34:56.123400000Z",
            "2023-02-29T12:34:56.123400000Z",
            "2023-04-01T24:34:56.123400000Z",
            "2023-04-01T12:34:56.12340000aZ",
            "2023-04-01T12:34:56.123400000+",
        ] {
            assert_eq!(parse(bad.as_bytes()), None, "{bad}");
        }
    }
}
