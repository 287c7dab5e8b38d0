//! Engine `native`: its parameters inside `EngineParams`, modelled on the docker engine spec.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::errors::FieldProblem;
use crate::types::{go_json, SpecConfig};

pub const ENGINE_NATIVE: &str = "native";

/// `EngineParams.Params` for engine `native`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(remote = "Self")]
pub struct NativeEngineSpec {
    /// The program (resolved on `PATH` when it has no `/`) and its leading arguments. Required.
    #[serde(rename = "Entrypoint", default, skip_serializing_if = "Vec::is_empty")]
    pub entrypoint: Vec<String>,
    /// Arguments after the entrypoint.
    #[serde(rename = "Parameters", default, skip_serializing_if = "Vec::is_empty")]
    pub parameters: Vec<String>,
    /// `K=V` entries; they override the request's `Env`.
    #[serde(
        rename = "EnvironmentVariables",
        default,
        skip_serializing_if = "Vec::is_empty"
    )]
    pub environment_variables: Vec<String>,
    /// Absolute working directory of the job.
    #[serde(
        rename = "WorkingDirectory",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub working_directory: String,
}
go_json!(NativeEngineSpec { "Entrypoint", "Parameters", "EnvironmentVariables", "WorkingDirectory" });

const PARAMS: &str = "EngineParams.Params";

impl NativeEngineSpec {
    /// Decode and validate a request's engine spec; every problem is reported.
    pub fn from_spec_config(spec: &SpecConfig) -> Result<Self, Vec<FieldProblem>> {
        if !spec.is_type(ENGINE_NATIVE) {
            return Err(vec![FieldProblem {
                field: "EngineParams.Type".into(),
                message: format!(
                    "invalid native engine type. expected {ENGINE_NATIVE}, but received: {}",
                    spec.spec_type
                ),
            }]);
        }
        let decoded: NativeEngineSpec = serde_json::from_value(serde_json::Value::Object(
            spec.params.clone(),
        ))
        .map_err(|e| {
            vec![FieldProblem {
                field: PARAMS.into(),
                message: format!("failed to decode native engine specs. {e}"),
            }]
        })?;
        let problems = decoded.problems();
        if problems.is_empty() {
            Ok(decoded)
        } else {
            Err(problems)
        }
    }

    pub fn problems(&self) -> Vec<FieldProblem> {
        let mut out = Vec::new();
        let mut problem =
            |field: String, message: String| out.push(FieldProblem { field, message });
        if self.entrypoint.first().is_none_or(|p| p.trim().is_empty()) {
            problem(
                format!("{PARAMS}.Entrypoint"),
                "invalid native engine param: 'Entrypoint' cannot be empty".into(),
            );
        }
        for (i, arg) in self.entrypoint.iter().chain(&self.parameters).enumerate() {
            if arg.contains('\0') {
                problem(
                    format!("{PARAMS}.{}", arg_field(i, self.entrypoint.len())),
                    "invalid native engine param: arguments cannot contain NUL bytes".into(),
                );
            }
        }
        if !self.working_directory.is_empty() && !self.working_directory.starts_with('/') {
            problem(
                format!("{PARAMS}.WorkingDirectory"),
                format!(
                    "invalid native engine param: 'WorkingDirectory' ({:?}) must contain absolute path",
                    self.working_directory
                ),
            );
        }
        // A value may be a secret, and these messages travel to the host and into its logs:
        // they name the variable (or only its index, in the field), never the value.
        for (i, entry) in self.environment_variables.iter().enumerate() {
            let field = format!("{PARAMS}.EnvironmentVariables[{i}]");
            match entry.split_once('=') {
                // Without '=' the entry may be a value pasted without its name.
                None => problem(
                    field,
                    "invalid native engine param: environment variable entries must have the form NAME=VALUE".into(),
                ),
                Some(("", _)) => problem(
                    field,
                    "invalid native engine param: environment variable entries must have the form NAME=VALUE; the name is empty".into(),
                ),
                Some((name, _)) if name.to_ascii_uppercase().starts_with("BACALHAU_") => problem(
                    field,
                    format!("invalid native engine param: environment variable '{}' cannot start with BACALHAU_", name.escape_debug()),
                ),
                Some((name, _)) if name.contains('\0') => problem(
                    field,
                    format!("invalid native engine param: environment variable name '{}' cannot contain NUL bytes", name.escape_debug()),
                ),
                Some((name, value)) if value.contains('\0') => problem(
                    field,
                    format!("invalid native engine param: the value of environment variable '{}' cannot contain NUL bytes", name.escape_debug()),
                ),
                Some(_) => {}
            }
        }
        out
    }

    /// The job's argv: entrypoint, then parameters.
    pub fn argv(&self) -> Vec<String> {
        self.entrypoint
            .iter()
            .chain(&self.parameters)
            .cloned()
            .collect()
    }
}

fn arg_field(i: usize, entrypoint_len: usize) -> String {
    if i < entrypoint_len {
        format!("Entrypoint[{i}]")
    } else {
        format!("Parameters[{}]", i - entrypoint_len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn spec(params: serde_json::Value) -> SpecConfig {
        serde_json::from_value(json!({"Type": "native", "Params": params})).unwrap()
    }

    #[test]
    fn decodes_with_any_key_case() {
        let s = NativeEngineSpec::from_spec_config(&spec(json!({
            "entrypoint": ["sh", "-c"], "PARAMETERS": ["echo hi"],
            "environmentVariables": ["A=1"], "workingdirectory": "/tmp"
        })))
        .unwrap();
        assert_eq!(s.argv(), vec!["sh", "-c", "echo hi"]);
        assert_eq!(s.environment_variables, vec!["A=1"]);
        assert_eq!(s.working_directory, "/tmp");
    }

    #[test]
    fn reports_every_problem_with_docker_style_messages() {
        let problems = NativeEngineSpec::from_spec_config(&spec(json!({
            "WorkingDirectory": "rel", "EnvironmentVariables": ["bacalhau_X=1", "NOEQUALS"]
        })))
        .unwrap_err();
        let messages: Vec<_> = problems.iter().map(|p| p.message.as_str()).collect();
        assert_eq!(
            messages,
            vec![
                "invalid native engine param: 'Entrypoint' cannot be empty",
                "invalid native engine param: 'WorkingDirectory' (\"rel\") must contain absolute path",
                "invalid native engine param: environment variable 'bacalhau_X' cannot start with BACALHAU_",
                "invalid native engine param: environment variable entries must have the form NAME=VALUE",
            ]
        );
        assert_eq!(problems[0].field, "EngineParams.Params.Entrypoint");
        assert_eq!(
            problems[3].field,
            "EngineParams.Params.EnvironmentVariables[1]"
        );
    }

    #[test]
    fn env_errors_name_the_variable_and_never_carry_its_value() {
        let secret = "s3cr3t-token-value";
        let entries = [
            format!("BACALHAU_TEST={secret}"),
            format!("={secret}"),
            format!("TOKEN={secret}\0"),
            secret.to_string(),
        ];
        let problems = NativeEngineSpec::from_spec_config(&spec(json!({
            "Entrypoint": ["true"], "EnvironmentVariables": entries
        })))
        .unwrap_err();
        assert_eq!(problems.len(), entries.len(), "{problems:?}");
        for p in &problems {
            assert!(!p.message.contains(secret), "{p:?}");
            assert!(!p.field.contains(secret), "{p:?}");
        }
        assert_eq!(
            problems[0].message,
            "invalid native engine param: environment variable 'BACALHAU_TEST' cannot start with BACALHAU_"
        );
        assert!(problems[2].message.contains("'TOKEN'"), "{:?}", problems[2]);
    }

    #[test]
    fn wrong_type_and_undecodable_params() {
        let docker: SpecConfig = serde_json::from_value(json!({"Type": "docker"})).unwrap();
        let p = NativeEngineSpec::from_spec_config(&docker).unwrap_err();
        assert_eq!(
            p[0].message,
            "invalid native engine type. expected native, but received: docker"
        );
        let p = NativeEngineSpec::from_spec_config(&spec(json!({"Entrypoint": "sh"}))).unwrap_err();
        assert!(
            p[0].message
                .starts_with("failed to decode native engine specs. "),
            "{}",
            p[0].message
        );
    }
}
