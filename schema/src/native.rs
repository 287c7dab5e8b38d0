//! The `native` engine's params (`EngineParams = {"Type": "native", "Params": {...}}`),
//! modelled on Bacalhau's docker `EngineSpec` without the image.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::errors::FieldProblem;
use crate::types::casefold::{go_json, null_as_default};
use crate::types::SpecConfig;

/// The engine name this crate's plugin serves.
pub const ENGINE_NATIVE: &str = "native";

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(remote = "Self", default)]
pub struct NativeEngineSpec {
    /// Program and leading arguments; the program is looked up in `PATH` when not a path.
    #[serde(
        rename = "Entrypoint",
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "null_as_default"
    )]
    pub entrypoint: Vec<String>,
    /// Arguments after the entrypoint.
    #[serde(
        rename = "Parameters",
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "null_as_default"
    )]
    pub parameters: Vec<String>,
    /// `KEY=VALUE` entries.
    #[serde(
        rename = "EnvironmentVariables",
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "null_as_default"
    )]
    pub environment_variables: Vec<String>,
    /// Absolute; empty means the execution's own directory.
    #[serde(rename = "WorkingDirectory", skip_serializing_if = "String::is_empty")]
    pub working_directory: String,
}

go_json!(
    NativeEngineSpec,
    [
        "Entrypoint",
        "Parameters",
        "EnvironmentVariables",
        "WorkingDirectory",
    ]
);

const PARAMS: &str = "EngineParams.Params";

fn problem(field: impl Into<String>, message: impl Into<String>) -> FieldProblem {
    FieldProblem {
        field: field.into(),
        message: message.into(),
    }
}

impl NativeEngineSpec {
    /// Decodes and validates the engine params, returning every problem found (field paths
    /// are rooted at `EngineParams`).
    pub fn from_spec_config(spec: &SpecConfig) -> Result<Self, Vec<FieldProblem>> {
        if !spec.is_type(ENGINE_NATIVE) {
            return Err(vec![problem(
                "EngineParams.Type",
                format!(
                    "invalid native engine type. expected {ENGINE_NATIVE}, but received: {}",
                    spec.spec_type
                ),
            )]);
        }
        let decoded: NativeEngineSpec = serde_json::from_value(Value::Object(spec.params.clone()))
            .map_err(|e| {
                vec![problem(
                    PARAMS,
                    format!("failed to decode native engine specs. {e}"),
                )]
            })?;
        let problems = decoded.validate();
        if problems.is_empty() {
            Ok(decoded)
        } else {
            Err(problems)
        }
    }

    /// Every problem with these params, docker's messages adapted.
    pub fn validate(&self) -> Vec<FieldProblem> {
        let mut problems = Vec::new();
        if self.entrypoint.first().is_none_or(|p| p.trim().is_empty()) {
            problems.push(problem(
                format!("{PARAMS}.Entrypoint"),
                "invalid native engine param: 'Entrypoint' cannot be empty",
            ));
        }
        // execve takes C strings: a NUL would silently cut an argument short.
        for (name, list) in [
            ("Entrypoint", &self.entrypoint),
            ("Parameters", &self.parameters),
        ] {
            for (i, arg) in list.iter().enumerate() {
                if arg.contains('\0') {
                    problems.push(problem(
                        format!("{PARAMS}.{name}[{i}]"),
                        format!("invalid native engine param: '{name}' entries cannot contain a NUL byte"),
                    ));
                }
            }
        }
        if !self.working_directory.is_empty() && !self.working_directory.starts_with('/') {
            problems.push(problem(
                format!("{PARAMS}.WorkingDirectory"),
                format!(
                    "invalid native engine param: 'WorkingDirectory' ({:?}) must contain absolute path",
                    self.working_directory
                ),
            ));
        }
        for (i, kv) in self.environment_variables.iter().enumerate() {
            let field = format!("{PARAMS}.EnvironmentVariables[{i}]");
            if kv
                .get(..9)
                .is_some_and(|p| p.eq_ignore_ascii_case("BACALHAU_"))
            {
                problems.push(problem(
                    field,
                    format!("invalid native engine param: environment variable '{kv}' cannot start with BACALHAU_"),
                ));
                continue;
            }
            match kv.split_once('=') {
                Some((key, _)) if !key.is_empty() && !kv.contains('\0') => {}
                _ => problems.push(problem(
                    field,
                    format!("invalid native engine param: environment variable '{kv}' must have the form KEY=VALUE (non-empty KEY, no NUL byte)"),
                )),
            }
        }
        problems
    }

    /// The full argument vector: entrypoint then parameters.
    pub fn argv(&self) -> Vec<String> {
        self.entrypoint
            .iter()
            .chain(self.parameters.iter())
            .cloned()
            .collect()
    }

    /// The environment entries as `(key, value)` pairs (entries without `=` are skipped; they
    /// do not pass validation).
    pub fn env_pairs(&self) -> impl Iterator<Item = (&str, &str)> {
        self.environment_variables
            .iter()
            .filter_map(|kv| kv.split_once('='))
    }

    /// Wraps these params as the request's `EngineParams`.
    pub fn to_spec_config(&self) -> SpecConfig {
        let params = match serde_json::to_value(self) {
            Ok(Value::Object(map)) => map,
            // Serializing plain strings cannot fail or produce a non-object.
            _ => serde_json::Map::new(),
        };
        SpecConfig::new(ENGINE_NATIVE).with_params(params)
    }
}
