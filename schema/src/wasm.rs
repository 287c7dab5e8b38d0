//! Engine `wasm`: its parameters inside `EngineParams`, Bacalhau's wasm `EngineSpec`
//! (`pkg/executor/wasm/models/types.go`), run with WASI preview 1.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::errors::FieldProblem;
use crate::types::{go_json, SpecConfig};

pub const ENGINE_WASM: &str = "wasm";

/// The function a module is started at when the spec names none (WASI's command entry).
pub const DEFAULT_ENTRYPOINT: &str = "_start";

/// The most linear memory a wasm32 module can address: 65536 pages of 64 KiB (Bacalhau's
/// `WasmMaxPagesLimit`). A request for more `Memory` is refused.
pub const WASM_MAX_MEMORY: u64 = 1 << 32;

/// `EngineParams.Params` for engine `wasm`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(remote = "Self")]
pub struct WasmEngineSpec {
    /// The module to run: the `Target` or `Alias` of an input that is the module file, or a
    /// path inside an input's `Target`. Required.
    #[serde(rename = "EntryModule", default)]
    pub entry_module: String,
    /// The exported function to call; default `_start`.
    #[serde(
        rename = "Entrypoint",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub entrypoint: String,
    /// The program's arguments (its `argv[1..]`; `argv[0]` is empty, as in Bacalhau).
    #[serde(rename = "Parameters", default, skip_serializing_if = "Vec::is_empty")]
    pub parameters: Vec<String>,
    /// `K=V` entries; they override the request's `Env`.
    #[serde(
        rename = "EnvironmentVariables",
        default,
        skip_serializing_if = "Vec::is_empty"
    )]
    pub environment_variables: Vec<String>,
    /// Modules instantiated first and linked by name (their name section's module name, else
    /// the file name without `.wasm`) for the entry module's imports; named like `EntryModule`.
    #[serde(
        rename = "ImportModules",
        default,
        skip_serializing_if = "Vec::is_empty"
    )]
    pub import_modules: Vec<String>,
}
go_json!(WasmEngineSpec { "EntryModule", "Entrypoint", "Parameters", "EnvironmentVariables", "ImportModules" });

const PARAMS: &str = "EngineParams.Params";

impl WasmEngineSpec {
    /// Decode and validate a request's engine spec; every problem is reported.
    pub fn from_spec_config(spec: &SpecConfig) -> Result<Self, Vec<FieldProblem>> {
        if !spec.is_type(ENGINE_WASM) {
            return Err(vec![FieldProblem {
                field: "EngineParams.Type".into(),
                message: format!(
                    "invalid wasm engine type. expected {ENGINE_WASM}, but received: {}",
                    spec.spec_type
                ),
            }]);
        }
        let decoded: WasmEngineSpec = serde_json::from_value(serde_json::Value::Object(
            spec.params.clone(),
        ))
        .map_err(|e| {
            vec![FieldProblem {
                field: PARAMS.into(),
                message: format!("failed to decode wasm engine specs. {e}"),
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
        if self.entry_module.trim().is_empty() {
            problem(
                format!("{PARAMS}.EntryModule"),
                "invalid wasm engine entry module. target path cannot be empty".into(),
            );
        }
        for (i, m) in self.import_modules.iter().enumerate() {
            if m.trim().is_empty() {
                problem(
                    format!("{PARAMS}.ImportModules[{i}]"),
                    "invalid wasm engine import module. target path cannot be empty".into(),
                );
            }
        }
        let strings = std::iter::once(("EntryModule".to_string(), &self.entry_module))
            .chain(std::iter::once((
                "Entrypoint".to_string(),
                &self.entrypoint,
            )))
            .chain(
                self.parameters
                    .iter()
                    .enumerate()
                    .map(|(i, p)| (format!("Parameters[{i}]"), p)),
            )
            .chain(
                self.import_modules
                    .iter()
                    .enumerate()
                    .map(|(i, p)| (format!("ImportModules[{i}]"), p)),
            );
        for (field, s) in strings {
            if s.contains('\0') {
                problem(
                    format!("{PARAMS}.{field}"),
                    "invalid wasm engine param: values cannot contain NUL bytes".into(),
                );
            }
        }
        // As for native: a value may be a secret; messages name the variable, never the value.
        for (i, entry) in self.environment_variables.iter().enumerate() {
            let field = format!("{PARAMS}.EnvironmentVariables[{i}]");
            match entry.split_once('=') {
                None | Some(("", _)) => problem(
                    field,
                    "invalid wasm engine param: environment variable entries must have the form NAME=VALUE".into(),
                ),
                Some((name, _)) if name.to_ascii_uppercase().starts_with("BACALHAU_") => problem(
                    field,
                    format!("invalid wasm engine param: environment variable '{}' cannot start with BACALHAU_", name.escape_debug()),
                ),
                Some((name, value)) if name.contains('\0') || value.contains('\0') => problem(
                    field,
                    format!("invalid wasm engine param: environment variable '{}' cannot contain NUL bytes", name.escape_debug()),
                ),
                Some(_) => {}
            }
        }
        out
    }

    /// The entrypoint to call: `Entrypoint`, or `_start` when empty.
    pub fn entrypoint(&self) -> &str {
        match self.entrypoint.trim() {
            "" => DEFAULT_ENTRYPOINT,
            e => e,
        }
    }
}

/// Bacalhau's refusal of a `Memory` above what wasm32 can address, or `None`.
pub fn memory_problem(memory: u64) -> Option<String> {
    const GB: f64 = (1u64 << 30) as f64;
    (memory > WASM_MAX_MEMORY).then(|| {
        format!(
            "requested memory exceeds the wasm limit - {:.2} GB > {:.2} GB",
            memory as f64 / GB,
            WASM_MAX_MEMORY as f64 / GB
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn spec(params: serde_json::Value) -> SpecConfig {
        serde_json::from_value(json!({"Type": "wasm", "Params": params})).unwrap()
    }

    #[test]
    fn decodes_with_defaults_and_any_key_case() {
        let s = WasmEngineSpec::from_spec_config(&spec(json!({
            "entrymodule": "/in/main.wasm", "PARAMETERS": ["a"], "importModules": ["/in/lib.wasm"]
        })))
        .unwrap();
        assert_eq!(s.entry_module, "/in/main.wasm");
        assert_eq!(s.entrypoint(), "_start");
        assert_eq!(s.parameters, vec!["a"]);
        assert_eq!(s.import_modules, vec!["/in/lib.wasm"]);
    }

    #[test]
    fn bacalhau_messages() {
        let p = WasmEngineSpec::from_spec_config(&spec(json!({
            "EnvironmentVariables": ["BACALHAU_X=1", "NOEQ"], "ImportModules": [" "]
        })))
        .unwrap_err();
        let m: Vec<_> = p.iter().map(|p| p.message.as_str()).collect();
        assert_eq!(
            m,
            vec![
                "invalid wasm engine entry module. target path cannot be empty",
                "invalid wasm engine import module. target path cannot be empty",
                "invalid wasm engine param: environment variable 'BACALHAU_X' cannot start with BACALHAU_",
                "invalid wasm engine param: environment variable entries must have the form NAME=VALUE",
            ]
        );
        assert_eq!(p[0].field, "EngineParams.Params.EntryModule");
        let native: SpecConfig = serde_json::from_value(json!({"Type": "native"})).unwrap();
        assert_eq!(
            WasmEngineSpec::from_spec_config(&native).unwrap_err()[0].message,
            "invalid wasm engine type. expected wasm, but received: native"
        );
    }

    #[test]
    fn memory_over_4_gib_is_refused_with_bacalhaus_text() {
        assert_eq!(memory_problem(WASM_MAX_MEMORY), None);
        assert_eq!(
            memory_problem(5 << 30).as_deref(),
            Some("requested memory exceeds the wasm limit - 5.00 GB > 4.00 GB")
        );
    }
}
