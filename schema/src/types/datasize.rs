//! `datasize.ByteSize` from `github.com/c2h5oh/datasize`, as Bacalhau's `OutputLimits` use it.

use std::borrow::Cow;
use std::fmt;
use std::str::FromStr;

use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A byte count that travels as Go's `datasize.ByteSize` text (`"1GB"`, `"2KB"`, `"1500B"`);
/// decoding also takes a plain JSON integer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct ByteSize(pub u64);

const KB: u64 = 1 << 10;
const MB: u64 = 1 << 20;
const GB: u64 = 1 << 30;
const TB: u64 = 1 << 40;
const PB: u64 = 1 << 50;
const EB: u64 = 1 << 60;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ByteSizeError {
    #[error("datasize: invalid syntax in {0:?}")]
    Syntax(String),
    #[error("datasize: {0:?} overflows 64 bits")]
    Overflow(String),
    #[error("datasize: {0:?} uses a bit unit (b); only byte units (B) are accepted")]
    Bits(String),
}

impl ByteSize {
    pub const B: ByteSize = ByteSize(1);
    pub const KB: ByteSize = ByteSize(KB);
    pub const MB: ByteSize = ByteSize(MB);
    pub const GB: ByteSize = ByteSize(GB);
    pub const TB: ByteSize = ByteSize(TB);
    pub const PB: ByteSize = ByteSize(PB);
    pub const EB: ByteSize = ByteSize(EB);

    pub const fn bytes(self) -> u64 {
        self.0
    }

    /// Parses as `ByteSize.UnmarshalText` does: decimal digits, then an optional unit
    /// (surrounding spaces allowed), case-insensitive, 1024-based; `Kb`, `Mb`, ... are refused
    /// as bit spellings.
    pub fn parse(text: &str) -> Result<ByteSize, ByteSizeError> {
        let digits_end = text
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.len());
        if digits_end == 0 {
            return Err(ByteSizeError::Syntax(text.to_string()));
        }
        let mut value: u64 = 0;
        for b in text[..digits_end].bytes() {
            value = value
                .checked_mul(10)
                .and_then(|v| v.checked_add(u64::from(b - b'0')))
                .ok_or_else(|| ByteSizeError::Overflow(text.to_string()))?;
        }
        let unit = text[digits_end..].trim();
        if matches!(unit, "Kb" | "Mb" | "Gb" | "Tb" | "Pb" | "Eb") {
            return Err(ByteSizeError::Bits(text.to_string()));
        }
        let multiplier = match unit.to_ascii_lowercase().as_str() {
            "" | "b" | "byte" => 1,
            "k" | "kb" | "kib" | "kilo" | "kilobyte" | "kilobytes" => KB,
            "m" | "mb" | "mib" | "mega" | "megabyte" | "megabytes" => MB,
            "g" | "gb" | "gib" | "giga" | "gigabyte" | "gigabytes" => GB,
            "t" | "tb" | "tib" | "tera" | "terabyte" | "terabytes" => TB,
            "p" | "pb" | "pib" | "peta" | "petabyte" | "petabytes" => PB,
            "e" | "eb" | "eib" | "exa" | "exabyte" | "exabytes" => EB,
            _ => return Err(ByteSizeError::Syntax(text.to_string())),
        };
        value
            .checked_mul(multiplier)
            .map(ByteSize)
            .ok_or_else(|| ByteSizeError::Overflow(text.to_string()))
    }
}

/// Go's `ByteSize.String()`/`MarshalText`: the largest unit that divides exactly.
impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        let units = [
            (EB, "EB"),
            (PB, "PB"),
            (TB, "TB"),
            (GB, "GB"),
            (MB, "MB"),
            (KB, "KB"),
        ];
        if b == 0 {
            return f.write_str("0B");
        }
        for (size, name) in units {
            if b.is_multiple_of(size) {
                return write!(f, "{}{}", b / size, name);
            }
        }
        write!(f, "{b}B")
    }
}

impl FromStr for ByteSize {
    type Err = ByteSizeError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ByteSize::parse(s)
    }
}

impl From<u64> for ByteSize {
    fn from(v: u64) -> Self {
        ByteSize(v)
    }
}

impl Serialize for ByteSize {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = ByteSize;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a data size such as \"1GB\" or a non-negative integer")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<ByteSize, E> {
                ByteSize::parse(v).map_err(E::custom)
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<ByteSize, E> {
                Ok(ByteSize(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<ByteSize, E> {
                u64::try_from(v)
                    .map(ByteSize)
                    .map_err(|_| E::custom(format_args!("data size {v} is negative")))
            }
        }
        d.deserialize_any(V)
    }
}

impl schemars::JsonSchema for ByteSize {
    fn schema_name() -> Cow<'static, str> {
        "ByteSize".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "description": "A byte count: Go datasize text (\"1GB\", \"2KB\", \"1500B\"; 1024-based) or, on input, a non-negative integer.",
            "anyOf": [
                { "type": "string", "pattern": "^[0-9]+ *([A-Za-z]*) *$" },
                { "type": "integer", "minimum": 0 }
            ]
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_as_c2h5oh_datasize() {
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
            ("3 MB", 3 << 20),
            ("3mib", 3 << 20),
            ("3megabytes", 3 << 20),
            ("1GB", 1 << 30),
            ("1 gigabyte ", 1 << 30),
            ("1TB", 1 << 40),
            ("1PB", 1 << 50),
            ("1EB", 1 << 60),
            ("15EB", 15 << 60),
            ("18446744073709551615", u64::MAX),
        ];
        for &(text, want) in table {
            assert_eq!(ByteSize::parse(text), Ok(ByteSize(want)), "{text:?}");
        }
    }

    #[test]
    fn rejects_what_datasize_rejects() {
        for text in [
            "", "GB", " 1GB", "-1", "1.5GB", "1 XB", "1bytes", "1GBs", "0x10",
        ] {
            assert!(
                matches!(ByteSize::parse(text), Err(ByteSizeError::Syntax(_))),
                "{text:?}"
            );
        }
        for text in ["1Kb", "1Mb", "2Gb", "1Tb", "1Pb", "1Eb", "1 Mb "] {
            assert!(
                matches!(ByteSize::parse(text), Err(ByteSizeError::Bits(_))),
                "{text:?}"
            );
        }
        for text in [
            "16EB",
            "18446744073709551616",
            "99999999999999999999999",
            "17179869184GB",
        ] {
            assert!(
                matches!(ByteSize::parse(text), Err(ByteSizeError::Overflow(_))),
                "{text:?}"
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
            assert_eq!(ByteSize::parse(want), Ok(ByteSize(n)));
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
}
