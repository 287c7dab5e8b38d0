//! `models.SpecConfig` and `models.ResultPath`.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::casefold::null_as_default;

/// An engine or storage spec: a type name and free-form params.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(remote = "Self", default)]
pub struct SpecConfig {
    #[serde(rename = "Type")]
    pub spec_type: String,
    /// User data: its keys are not case-folded here.
    #[serde(
        rename = "Params",
        skip_serializing_if = "Map::is_empty",
        deserialize_with = "null_as_default"
    )]
    pub params: Map<String, Value>,
}

go_json!(SpecConfig, ["Type", "Params"]);

impl SpecConfig {
    pub fn new(spec_type: impl Into<String>) -> Self {
        SpecConfig {
            spec_type: spec_type.into(),
            params: Map::new(),
        }
    }

    pub fn with_params(mut self, params: Map<String, Value>) -> Self {
        self.params = params;
        self
    }

    /// Go's `IsType`: case-insensitive after trimming.
    pub fn is_type(&self, t: &str) -> bool {
        self.spec_type.trim().eq_ignore_ascii_case(t.trim())
    }
}

/// A path inside the job whose contents are published as a named result.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(remote = "Self", default)]
pub struct ResultPath {
    #[serde(rename = "Name")]
    pub name: String,
    #[serde(rename = "Path")]
    pub path: String,
}

go_json!(ResultPath, ["Name", "Path"]);

impl ResultPath {
    pub fn new(name: impl Into<String>, path: impl Into<String>) -> Self {
        ResultPath {
            name: name.into(),
            path: path.into(),
        }
    }
}
