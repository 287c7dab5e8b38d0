//! JSON Schema (2020-12) of every message, describing the encoded form (exact Bacalhau keys).
//!
//! Decoders accept more than the schemas say (any key case and `null` for Bacalhau's types,
//! missing keys as zero values or defaults); `PROTOCOL.md` spells that out. The committed files
//! under `schema/json/` are checked against this output by `tests/json_schema_files.rs`.

use schemars::generate::SchemaSettings;
use schemars::JsonSchema;
use serde_json::Value;

use crate::errors::{ErrorData, FieldProblem};
use crate::native::NativeEngineSpec;
use crate::types::*;
use crate::wasm::WasmEngineSpec;

fn schema_for<T: JsonSchema>() -> (String, Value) {
    let generator = SchemaSettings::draft2020_12()
        .for_serialize()
        .into_generator();
    let schema = generator.into_root_schema_for::<T>();
    (format!("{}.json", T::schema_name()), schema.to_value())
}

/// One `(file name, schema)` per message type, in a stable order.
pub fn generate_all() -> Vec<(String, Value)> {
    vec![
        schema_for::<RunCommandRequest>(),
        schema_for::<RunCommandResult>(),
        schema_for::<Resources>(),
        schema_for::<NetworkConfig>(),
        schema_for::<ResultPath>(),
        schema_for::<SpecConfig>(),
        schema_for::<PreparedStorage>(),
        schema_for::<OutputLimits>(),
        schema_for::<LogStreamRequest>(),
        schema_for::<LogEvent>(),
        schema_for::<BidStrategyRequest>(),
        schema_for::<BidStrategyResponse>(),
        schema_for::<InitializeParams>(),
        schema_for::<InitializeResult>(),
        schema_for::<ShutdownParams>(),
        schema_for::<ExecutionSummary>(),
        schema_for::<ExecutionStats>(),
        schema_for::<NativeEngineSpec>(),
        schema_for::<WasmEngineSpec>(),
        schema_for::<ErrorData>(),
        // Types nested in the messages above, each on its own so a reader (and the key-list
        // test) finds every object with its exact keys.
        schema_for::<Gpu>(),
        schema_for::<Port>(),
        schema_for::<InputSource>(),
        schema_for::<StorageVolume>(),
        schema_for::<Job>(),
        schema_for::<Task>(),
        schema_for::<ResourcesConfig>(),
        schema_for::<TimeoutConfig>(),
        schema_for::<HostInfo>(),
        schema_for::<PluginConfig>(),
        schema_for::<PluginInfo>(),
        schema_for::<Capabilities>(),
        schema_for::<EnforcedLimits>(),
        schema_for::<FieldProblem>(),
    ]
}
