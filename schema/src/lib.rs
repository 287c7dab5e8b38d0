//! Wire contract of the executor plugins: Bacalhau's JSON types, validation, the JSON-RPC API,
//! error codes and NDJSON framing. See `PROTOCOL.md` beside this crate.

pub mod api;
pub mod errors;
pub mod framing;
pub mod jsonschema;
pub mod native;
pub mod types;
pub mod validate;
pub mod wasm;

pub use errors::{ErrorCode, ExecutorError, FieldProblem};
pub use types::*;
