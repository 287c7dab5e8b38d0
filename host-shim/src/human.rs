//! Sizes, durations and CPU counts as people type them: `256MiB`, `256Mi` (as Kubernetes
//! writes it), `1.5GB`, `30s`, `2m`, `1h30m`, `0.5`, `500m`.
//!
//! Sizes are 1024-based whatever the spelling (`MB` = `MiB`), as Bacalhau's datasize reads
//! them, so a limit means the same here as in a job spec.

use std::time::Duration;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("invalid size {0:?}: write a number and a unit, such as 256MiB, 1.5GB or 512KB")]
    Size(String),
    #[error("invalid duration {0:?}: write a number and a unit, such as 30s, 2m, 1h30m or 500ms")]
    Duration(String),
    #[error("invalid CPU count {0:?}: write cores (0.5, 2) or thousandths of one (500m)")]
    Cpus(String),
}

/// Split `1.5GB` into (1.5, "GB"); `None` without a leading number.
fn number_and_unit(s: &str) -> Option<(f64, &str)> {
    let end = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let number: f64 = s[..end].parse().ok()?;
    Some((number, s[end..].trim()))
}

pub fn parse_size(input: &str) -> Result<u64, ParseError> {
    let err = || ParseError::Size(input.to_string());
    let (number, unit) = number_and_unit(input.trim()).ok_or_else(err)?;
    let shift = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "ki" | "kib" => 10,
        "m" | "mb" | "mi" | "mib" => 20,
        "g" | "gb" | "gi" | "gib" => 30,
        "t" | "tb" | "ti" | "tib" => 40,
        _ => return Err(err()),
    };
    let bytes = number * (1u64 << shift) as f64;
    if !bytes.is_finite() || bytes < 0.0 || bytes >= u64::MAX as f64 {
        return Err(err());
    }
    Ok(bytes.round() as u64)
}

/// CPU cores: `2`, `0.5`, or thousandths of a core as Kubernetes and Bacalhau write them
/// (`500m`). Must be more than zero.
pub fn parse_cpus(input: &str) -> Result<f64, ParseError> {
    let err = || ParseError::Cpus(input.to_string());
    let (number, unit) = number_and_unit(input.trim()).ok_or_else(err)?;
    let cores = match unit {
        "" => number,
        "m" => number / 1000.0,
        _ => return Err(err()),
    };
    if !cores.is_finite() || cores <= 0.0 {
        return Err(err());
    }
    Ok(cores)
}

/// One or more `<number><unit>` parts (`1h30m`); a bare number is seconds.
pub fn parse_duration(input: &str) -> Result<Duration, ParseError> {
    let err = || ParseError::Duration(input.to_string());
    let mut rest = input.trim();
    if rest.is_empty() {
        return Err(err());
    }
    if let Ok(secs) = rest.parse::<f64>() {
        return Duration::try_from_secs_f64(secs).map_err(|_| err());
    }
    let mut total = 0.0f64;
    while !rest.is_empty() {
        let end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(err)?;
        let number: f64 = rest[..end].parse().map_err(|_| err())?;
        let after = &rest[end..];
        let unit_end = after
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(after.len());
        let factor = match &after[..unit_end] {
            "ms" => 0.001,
            "s" | "sec" => 1.0,
            "m" | "min" => 60.0,
            "h" => 3600.0,
            _ => return Err(err()),
        };
        total += number * factor;
        rest = &after[unit_end..];
    }
    Duration::try_from_secs_f64(total).map_err(|_| err())
}

/// `1.5 MiB`, `512 B`.
pub fn format_size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// `0.21s`, `2m03s`.
pub fn format_duration(d: Duration) -> String {
    let secs = d.as_secs_f64();
    if secs < 60.0 {
        format!("{secs:.2}s")
    } else {
        let whole = d.as_secs();
        format!("{}m{:02}s", whole / 60, whole % 60)
    }
}

/// `text` safe to print on a terminal: control characters (escape sequences, carriage
/// returns, backspaces) and the bidirectional overrides that reorder what is shown are written
/// as `\u{..}` escapes; everything else is kept. For host-built lines that carry text from a
/// request or a plugin. Newlines are escaped too: use [`escape_lines`] where a message is
/// several lines on purpose.
pub fn escape(text: &str) -> std::borrow::Cow<'_, str> {
    let unsafe_char =
        |c: char| c.is_control() || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}');
    if !text.chars().any(unsafe_char) {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if unsafe_char(c) {
            out.push_str(&format!("\\u{{{:x}}}", c as u32));
        } else {
            out.push(c);
        }
    }
    std::borrow::Cow::Owned(out)
}

/// [`escape`] for each line of a message that is several lines on purpose.
pub fn escape_lines(text: &str) -> String {
    text.split('\n').map(escape).collect::<Vec<_>>().join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_escaped() {
        assert_eq!(escape("plain text é"), "plain text é");
        assert_eq!(escape("a\x1b[2Jb\rc"), "a\\u{1b}[2Jb\\u{d}c");
        assert_eq!(escape("x\u{202e}y"), "x\\u{202e}y");
        assert_eq!(escape_lines("one\x07\ntwo"), "one\\u{7}\ntwo");
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("256MiB"), Ok(256 << 20));
        assert_eq!(parse_size("256mb"), Ok(256 << 20));
        assert_eq!(parse_size("1.5GB"), Ok(3 << 29));
        assert_eq!(parse_size("512"), Ok(512));
        assert_eq!(parse_size("2 k"), Ok(2048));
        assert_eq!(parse_size("256Mi"), Ok(256 << 20));
        assert_eq!(parse_size("2Gi"), Ok(2 << 30));
        for bad in ["", "MB", "1.2.3GB", "12 parsecs", "-1MB"] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
        assert!(parse_size("x").unwrap_err().to_string().contains("256MiB"));
    }

    #[test]
    fn cpus() {
        assert_eq!(parse_cpus("500m"), Ok(0.5));
        assert_eq!(parse_cpus("0.25"), Ok(0.25));
        assert_eq!(parse_cpus("2"), Ok(2.0));
        for bad in ["", "0", "0m", "-1", "2 cores", "m"] {
            assert!(parse_cpus(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("45"), Ok(Duration::from_secs(45)));
        for bad in ["", "s", "3 days", "1x", "-5s"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn formatting() {
        assert_eq!(format_size(512), "512 B");
        assert_eq!(format_size(3 << 19), "1.5 MiB");
        assert_eq!(format_duration(Duration::from_millis(210)), "0.21s");
        assert_eq!(format_duration(Duration::from_secs(123)), "2m03s");
    }
}
