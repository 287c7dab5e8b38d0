//! Wire types. Bacalhau's types keep the exact keys Go's `encoding/json` writes and decode any
//! letter case of a key, as Go's decoder does (see [`go_json!`]); the plugin protocol's own types
//! use camelCase keys.

mod bacalhau;
mod datasize;
mod plugin;

pub use bacalhau::*;
pub use datasize::{ByteSize, ParseByteSizeError};
pub use plugin::*;

/// Decode like Go's `encoding/json`: object keys match field names in any letter case (an exact
/// match wins), a `null` value leaves the field at its zero value, unknown keys are ignored.
/// Encoding is serde's, with the exact keys from the `rename` attributes.
///
/// The type must derive `Serialize`/`Deserialize` with `#[serde(remote = "Self")]`; the macro adds
/// the trait impls. Only the type's own keys are folded: nested maps (`Env`, `Params`) hold user
/// data whose keys keep their case.
macro_rules! go_json {
    ($ty:ident { $($key:literal),* $(,)? }) => {
        $crate::types::go_json!(@impl $ty, false, $($key),*);
    };
    // For types with a `#[serde(flatten)]` catch-all: unknown keys are kept for it.
    ($ty:ident keep_unknown { $($key:literal),* $(,)? }) => {
        $crate::types::go_json!(@impl $ty, true, $($key),*);
    };
    (@impl $ty:ident, $keep:expr, $($key:literal),*) => {
        impl $ty {
            /// The exact JSON keys of this type.
            pub const JSON_KEYS: &'static [&'static str] = &[$($key),*];
        }

        impl serde::Serialize for $ty {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                $ty::serialize(self, s)
            }
        }

        impl<'de> serde::Deserialize<'de> for $ty {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let map = <serde_json::Map<String, serde_json::Value> as serde::Deserialize>::deserialize(d)?;
                let folded = $crate::types::fold_keys(map, $ty::JSON_KEYS, $keep);
                $ty::deserialize(serde_json::Value::Object(folded)).map_err(serde::de::Error::custom)
            }
        }
    };
}
pub(crate) use go_json;

/// Map each key to the canonical spelling in `keys` (exact match first, then ASCII
/// case-insensitive) and drop `null` values, as Go leaves a field untouched for `null`.
pub(crate) fn fold_keys(
    map: serde_json::Map<String, serde_json::Value>,
    keys: &[&str],
    keep_unknown: bool,
) -> serde_json::Map<String, serde_json::Value> {
    let mut exact = serde_json::Map::new();
    let mut folded = serde_json::Map::new();
    for (k, v) in map {
        if v.is_null() {
            continue;
        }
        if keys.contains(&k.as_str()) {
            exact.insert(k, v);
        } else if let Some(canon) = keys.iter().find(|c| c.eq_ignore_ascii_case(&k)) {
            folded.insert((*canon).to_string(), v);
        } else if keep_unknown {
            exact.insert(k, v);
        }
    }
    for (k, v) in folded {
        exact.entry(k).or_insert(v);
    }
    exact
}
