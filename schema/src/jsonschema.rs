//! JSON Schema (draft 2020-12) of every wire message, generated from the Rust types.
//!
//! The schemas describe the *encoded* form: the keys and value shapes this crate writes, which
//! are Bacalhau's. Decoders are more lenient than the schemas say (any key case and `null` for
//! Bacalhau's types, missing keys as zero values); `PROTOCOL.md` spells that out. The committed
//! files under `schema/json/` are checked against this output by `tests/json_schema_files.rs`.

use schemars::generate::SchemaSettings;
use schemars::JsonSchema;

use crate::errors::{ErrorData, FieldProblem};
use crate::native::NativeEngineSpec;
use crate::types::*;

fn schema_for<T: JsonSchema>(name: &str) -> (String, serde_json::Value) {
    let generator = SchemaSettings::draft2020_12()
        .for_serialize()
        .into_generator();
    (
        name.to_string(),
        generator.into_root_schema_for::<T>().to_value(),
    )
}

/// One schema per message type, named as its file stem (`RunCommandRequest` ->
/// `schema/json/RunCommandRequest.json`), sorted by name.
pub fn generate_all() -> Vec<(String, serde_json::Value)> {
    let mut all = vec![
        // Bacalhau's types (Go keys).
        schema_for::<RunCommandRequest>("RunCommandRequest"),
        schema_for::<RunCommandResult>("RunCommandResult"),
        schema_for::<Resources>("Resources"),
        schema_for::<Gpu>("Gpu"),
        schema_for::<NetworkConfig>("NetworkConfig"),
        schema_for::<Network>("Network"),
        schema_for::<Port>("Port"),
        schema_for::<ResultPath>("ResultPath"),
        schema_for::<SpecConfig>("SpecConfig"),
        schema_for::<InputSource>("InputSource"),
        schema_for::<PreparedStorage>("PreparedStorage"),
        schema_for::<StorageVolume>("StorageVolume"),
        schema_for::<OutputLimits>("OutputLimits"),
        schema_for::<ByteSize>("ByteSize"),
        schema_for::<LogStreamRequest>("LogStreamRequest"),
        schema_for::<BidStrategyRequest>("BidStrategyRequest"),
        schema_for::<BidStrategyResponse>("BidStrategyResponse"),
        schema_for::<Job>("Job"),
        schema_for::<Task>("Task"),
        schema_for::<ResourcesConfig>("ResourcesConfig"),
        schema_for::<TimeoutConfig>("TimeoutConfig"),
        schema_for::<NativeEngineSpec>("NativeEngineSpec"),
        // The protocol's own types (camelCase keys).
        schema_for::<InitializeParams>("InitializeParams"),
        schema_for::<InitializeResult>("InitializeResult"),
        schema_for::<HostInfo>("HostInfo"),
        schema_for::<PluginInfo>("PluginInfo"),
        schema_for::<PluginConfig>("PluginConfig"),
        schema_for::<Capabilities>("Capabilities"),
        schema_for::<ShutdownParams>("ShutdownParams"),
        schema_for::<LogEvent>("LogEvent"),
        schema_for::<ExecutionSummary>("ExecutionSummary"),
        schema_for::<ExecutionStats>("ExecutionStats"),
        schema_for::<ErrorData>("ErrorData"),
        schema_for::<FieldProblem>("FieldProblem"),
    ];
    all.sort_by(|a, b| a.0.cmp(&b.0));
    all
}

/// The text of a schema file: pretty-printed, with a trailing newline.
pub fn file_text(schema: &serde_json::Value) -> String {
    // A `Value` always serializes: its map keys are strings.
    let mut text = serde_json::to_string_pretty(schema).unwrap_or_default();
    text.push('\n');
    text
}
