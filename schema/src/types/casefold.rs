//! Go's `encoding/json` matches object keys case-insensitively when decoding, and Bacalhau hosts
//! rely on that (older releases sent lower-camel keys for some types). Our Go-shaped types derive
//! serde with `#[serde(remote = "Self")]`, so the derived code becomes inherent functions; the
//! [`go_json!`] macro then wraps them: encoding is unchanged, decoding first rewrites the keys of
//! *this object only* to their canonical spelling. Nested maps holding user data (`Env`,
//! `Params`) are left alone because each nested typed struct folds its own keys.

use serde::{Deserialize, Deserializer, Serializer};
use serde_json::{Map, Value};

/// Rewrites every key that matches one of `canonical` case-insensitively to that canonical
/// spelling. When several spellings of one key appear, the exact spelling wins; among inexact
/// ones the later wins, as in Go. Keys that match nothing are kept verbatim so flattened
/// "extra" maps round-trip.
pub(crate) fn fold_keys(map: Map<String, Value>, canonical: &[&'static str]) -> Map<String, Value> {
    let mut out = Map::with_capacity(map.len());
    let mut exact_seen: Vec<&'static str> = Vec::new();
    for (key, value) in map {
        match canonical.iter().find(|c| go_equal_fold(c, &key)) {
            Some(&canon) => {
                let exact = canon == key;
                if !exact && exact_seen.contains(&canon) {
                    continue;
                }
                if exact {
                    exact_seen.push(canon);
                }
                out.insert(canon.to_string(), value);
            }
            None => {
                out.insert(key, value);
            }
        }
    }
    out
}

/// Go's `bytes.EqualFold` for our ASCII field names, including its two non-ASCII folds
/// (KELVIN SIGN for `k`, LONG S for `s`).
fn go_equal_fold(canon: &str, key: &str) -> bool {
    let mut k = key.chars();
    for c in canon.chars() {
        let Some(kc) = k.next() else { return false };
        let lc = c.to_ascii_lowercase();
        let ok = kc.to_ascii_lowercase() == lc
            || (lc == 'k' && kc == '\u{212A}')
            || (lc == 's' && kc == '\u{017F}');
        if !ok {
            return false;
        }
    }
    k.next().is_none()
}

/// Implements `Serialize`/`Deserialize` for a type whose derive used `#[serde(remote = "Self")]`,
/// with case-insensitive key matching on decode. `null` decodes to `Default` (Go leaves a struct
/// at its zero value when it meets `null`).
macro_rules! go_json {
    ($ty:ident, [$($key:literal),* $(,)?]) => {
        impl $ty {
            /// The exact JSON keys of this type, as Bacalhau's Go encoder writes them.
            pub const GO_KEYS: &'static [&'static str] = &[$($key),*];
        }

        impl ::serde::Serialize for $ty {
            fn serialize<S: ::serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                $ty::serialize(self, s)
            }
        }

        impl<'de> ::serde::Deserialize<'de> for $ty {
            fn deserialize<D: ::serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                use ::serde::de::Error as _;
                let value = <::serde_json::Value as ::serde::Deserialize>::deserialize(d)?;
                match value {
                    ::serde_json::Value::Null => Ok(<$ty as Default>::default()),
                    ::serde_json::Value::Object(map) => {
                        let folded = $crate::types::casefold::fold_keys(map, Self::GO_KEYS);
                        $ty::deserialize(::serde_json::Value::Object(folded))
                            .map_err(D::Error::custom)
                    }
                    other => Err(D::Error::custom(format_args!(
                        "invalid type: {}, expected a JSON object for {}",
                        $crate::types::casefold::kind(&other),
                        stringify!($ty)
                    ))),
                }
            }
        }
    };
}

pub(crate) use go_json;

pub(crate) fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// Decodes `null` as the type's default (Go decodes `null` into a nil slice or map).
pub(crate) fn null_as_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// Encodes an empty slice as `null`, as Go encodes a nil slice.
pub(crate) fn empty_as_null<S, T>(v: &[T], s: S) -> Result<S::Ok, S::Error>
where
    S: Serializer,
    T: serde::Serialize,
{
    if v.is_empty() {
        s.serialize_none()
    } else {
        s.collect_seq(v)
    }
}

pub(crate) fn is_zero_u64(v: &u64) -> bool {
    *v == 0
}

pub(crate) fn is_zero_i64(v: &i64) -> bool {
    *v == 0
}

pub(crate) fn is_zero_f64(v: &f64) -> bool {
    *v == 0.0
}

pub(crate) fn is_false(v: &bool) -> bool {
    !*v
}
