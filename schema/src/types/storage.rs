//! `models.InputSource`, `storage.PreparedStorage`, `storage.StorageVolume`.

use serde::{Deserialize, Serialize};

use super::spec::SpecConfig;

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(remote = "Self", default)]
pub struct InputSource {
    #[serde(rename = "Source")]
    pub source: Option<SpecConfig>,
    #[serde(rename = "Alias")]
    pub alias: String,
    #[serde(rename = "Target")]
    pub target: String,
}

go_json!(InputSource, ["Source", "Alias", "Target"]);

/// An input already staged on this host, and how to expose it to the job.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(remote = "Self", default)]
pub struct PreparedStorage {
    #[serde(rename = "InputSource")]
    pub input_source: InputSource,
    #[serde(rename = "Volume")]
    pub volume: StorageVolume,
}

go_json!(PreparedStorage, ["InputSource", "Volume"]);

/// `storage.StorageVolumeConnectorType`: a JSON number.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(transparent)]
pub struct StorageVolumeType(pub u32);

impl StorageVolumeType {
    pub const UNKNOWN: StorageVolumeType = StorageVolumeType(0);
    /// The only connector Bacalhau has.
    pub const BIND: StorageVolumeType = StorageVolumeType(1);
}

/// Note Bacalhau's lower-case keys here.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(remote = "Self", default)]
pub struct StorageVolume {
    #[serde(rename = "type")]
    pub volume_type: StorageVolumeType,
    #[serde(rename = "readOnly")]
    pub read_only: bool,
    /// Host path (file or directory).
    #[serde(rename = "source")]
    pub source: String,
    /// Path the job sees.
    #[serde(rename = "target")]
    pub target: String,
}

go_json!(StorageVolume, ["type", "readOnly", "source", "target"]);
