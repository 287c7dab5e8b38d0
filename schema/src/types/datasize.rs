//! Byte sizes as Bacalhau sends them: `datasize.ByteSize` text (`"1GB"`, `"2KB"`, 1024-based) or
//! a plain integer.

use std::fmt;
use std::str::FromStr;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ByteSize(pub u64);

const UNITS: [(&str, u64); 7] = [
    ("EB", 1 << 60),
    ("PB", 1 << 50),
    ("TB", 1 << 40),
    ("GB", 1 << 30),
    ("MB", 1 << 20),
    ("KB", 1 << 10),
    ("B", 1),
];

impl ByteSize {
    pub const KB: u64 = 1 << 10;
    pub const MB: u64 = 1 << 20;
    pub const GB: u64 = 1 << 30;

    pub fn bytes(self) -> u64 {
        self.0
    }
}

impl fmt::Display for ByteSize {
    /// As Go's `datasize.ByteSize.String`: the largest unit that divides exactly.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0 == 0 {
            return f.write_str("0B");
        }
        for (name, size) in UNITS {
            if self.0.is_multiple_of(size) {
                return write!(f, "{}{}", self.0 / size, name);
            }
        }
        write!(f, "{}B", self.0)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseByteSizeError {
    #[error("invalid byte size {0:?}: expected a number with an optional unit such as 512KB, 1GB or 2MiB")]
    Invalid(String),
    #[error("invalid byte size {0:?}: {1} is a unit of bits; use bytes (B, KB, MB, ...)")]
    Bits(String, String),
    #[error("byte size {0:?} is too large")]
    Overflow(String),
}

impl FromStr for ByteSize {
    type Err = ParseByteSizeError;

    /// Accepts what c2h5oh/datasize accepts: digits, optional spaces, then `b`, `k`/`kb`/`kib`,
    /// `m`..., any case, except bit spellings such as `Kb` or `Mb`.
    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let invalid = || ParseByteSizeError::Invalid(input.to_string());
        // Go trims around the unit only: a leading space is a syntax error there too.
        let s = input;
        let digits_end = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
        if digits_end == 0 {
            return Err(invalid());
        }
        let number: u64 = s[..digits_end]
            .parse()
            .map_err(|_| ParseByteSizeError::Overflow(input.to_string()))?;
        let unit = s[digits_end..].trim();
        // Lower-case `b` after an upper-case prefix letter means bits (Kb, Mb, ...).
        if unit.len() == 2
            && unit.ends_with('b')
            && unit.starts_with(|c: char| c.is_ascii_uppercase())
            && unit != "Bb"
        {
            return Err(ParseByteSizeError::Bits(
                input.to_string(),
                unit.to_string(),
            ));
        }
        let multiplier = match unit.to_ascii_lowercase().as_str() {
            "" | "b" | "byte" => 1,
            "k" | "kb" | "kib" | "kilo" | "kilobyte" | "kilobytes" => 1 << 10,
            "m" | "mb" | "mib" | "mega" | "megabyte" | "megabytes" => 1 << 20,
            "g" | "gb" | "gib" | "giga" | "gigabyte" | "gigabytes" => 1 << 30,
            "t" | "tb" | "tib" | "tera" | "terabyte" | "terabytes" => 1 << 40,
            "p" | "pb" | "pib" | "peta" | "petabyte" | "petabytes" => 1 << 50,
            "e" | "eb" | "eib" | "exa" | "exabyte" | "exabytes" => 1 << 60,
            _ => return Err(invalid()),
        };
        number
            .checked_mul(multiplier)
            .map(ByteSize)
            .ok_or_else(|| ParseByteSizeError::Overflow(input.to_string()))
    }
}

impl serde::Serialize for ByteSize {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for ByteSize {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = ByteSize;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a byte size: a string such as \"1GB\" or a non-negative integer")
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<ByteSize, E> {
                Ok(ByteSize(v))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<ByteSize, E> {
                u64::try_from(v)
                    .map(ByteSize)
                    .map_err(|_| E::custom(format!("byte size cannot be negative: {v}")))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<ByteSize, E> {
                v.parse().map_err(E::custom)
            }
        }
        d.deserialize_any(Visitor)
    }
}

impl schemars::JsonSchema for ByteSize {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "ByteSize".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "description": "A byte size: datasize text as Go's datasize.ByteSize writes it (\"1GB\", \"2KB\", \"0B\", \"1500B\"; units 1024-based; decoding also accepts kib/mib/..., any case) or a non-negative integer.",
            "oneOf": [
                {"type": "string", "pattern": "^[0-9]+ *[A-Za-z]* *$"},
                {"type": "integer", "minimum": 0}
            ]
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_like_go_datasize() {
        for (n, s) in [
            (0, "0B"),
            (1 << 30, "1GB"),
            (2048, "2KB"),
            (1500, "1500B"),
            (3 << 20, "3MB"),
            (1 << 60, "1EB"),
        ] {
            assert_eq!(ByteSize(n).to_string(), s);
        }
    }

    #[test]
    fn parses_datasize_text() {
        for (s, n) in [
            ("1GB", 1u64 << 30),
            ("2KB", 2048),
            ("2kb", 2048),
            ("2kib", 2048),
            ("2KiB", 2048),
            ("2K", 2048),
            ("0B", 0),
            ("1500", 1500),
            ("10 MB ", 10 << 20),
            ("1500B", 1500),
        ] {
            assert_eq!(s.parse::<ByteSize>(), Ok(ByteSize(n)), "{s}");
        }
        for s in ["", "GB", "1.5GB", "-1KB", "1XB", "99999999999999999999"] {
            assert!(s.parse::<ByteSize>().is_err(), "{s}");
        }
        assert!(matches!(
            "1Kb".parse::<ByteSize>(),
            Err(ParseByteSizeError::Bits(..))
        ));
        assert!(matches!(
            "1Mb".parse::<ByteSize>(),
            Err(ParseByteSizeError::Bits(..))
        ));
        assert!(matches!(
            "20000EB".parse::<ByteSize>(),
            Err(ParseByteSizeError::Overflow(..))
        ));
    }

    #[test]
    fn json_accepts_text_and_integers() {
        assert_eq!(
            serde_json::from_str::<ByteSize>("\"1GB\"").unwrap(),
            ByteSize(1 << 30)
        );
        assert_eq!(
            serde_json::from_str::<ByteSize>("4096").unwrap(),
            ByteSize(4096)
        );
        assert!(serde_json::from_str::<ByteSize>("-1").is_err());
        assert!(serde_json::from_str::<ByteSize>("1.5").is_err());
        assert_eq!(serde_json::to_string(&ByteSize(2048)).unwrap(), "\"2KB\"");
    }
}
