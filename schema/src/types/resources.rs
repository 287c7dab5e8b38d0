//! `models.Resources`, `models.GPU` and the user-facing `models.ResourcesConfig`.

use serde::{Deserialize, Serialize};

use super::casefold::{is_zero_f64, is_zero_u64};

/// Allocated totals for one execution.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(remote = "Self", default)]
pub struct Resources {
    /// Cores (0.1 = 100m).
    #[serde(rename = "CPU", skip_serializing_if = "is_zero_f64")]
    pub cpu: f64,
    /// Bytes.
    #[serde(rename = "Memory", skip_serializing_if = "is_zero_u64")]
    pub memory: u64,
    /// Bytes.
    #[serde(rename = "Disk", skip_serializing_if = "is_zero_u64")]
    pub disk: u64,
    /// GPU count.
    #[serde(rename = "GPU", skip_serializing_if = "is_zero_u64")]
    pub gpu: u64,
    /// The concrete devices allocated.
    #[serde(
        rename = "GPUs",
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "super::casefold::null_as_default"
    )]
    pub gpus: Vec<Gpu>,
}

go_json!(Resources, ["CPU", "Memory", "Disk", "GPU", "GPUs"]);

/// One GPU device (no JSON tags in Go: field names are the keys).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(remote = "Self", default)]
pub struct Gpu {
    #[serde(rename = "Index")]
    pub index: u64,
    #[serde(rename = "Name")]
    pub name: String,
    /// `NVIDIA`, `AMD/ATI` or `Intel`.
    #[serde(rename = "Vendor")]
    pub vendor: String,
    /// MiB.
    #[serde(rename = "Memory")]
    pub memory: u64,
    /// `AAAA:BB:CC.C`.
    #[serde(rename = "PCIAddress")]
    pub pci_address: String,
}

go_json!(Gpu, ["Index", "Name", "Vendor", "Memory", "PCIAddress"]);

/// Resources as a user writes them in a job (strings such as `"500m"`, `"512Mb"`).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(remote = "Self", default)]
pub struct ResourcesConfig {
    #[serde(rename = "CPU", skip_serializing_if = "String::is_empty")]
    pub cpu: String,
    #[serde(rename = "Memory", skip_serializing_if = "String::is_empty")]
    pub memory: String,
    #[serde(rename = "Disk", skip_serializing_if = "String::is_empty")]
    pub disk: String,
    #[serde(rename = "GPU", skip_serializing_if = "String::is_empty")]
    pub gpu: String,
}

go_json!(ResourcesConfig, ["CPU", "Memory", "Disk", "GPU"]);
