//! Wire types: Bacalhau's Go-shaped models (exact Go keys out, any key case in) and the
//! plugin protocol's own camelCase messages.

#[macro_use]
pub(crate) mod casefold;

pub mod bid;
pub mod datasize;
pub mod executions;
pub mod handshake;
pub mod logs;
pub mod network;
pub mod request;
pub mod resources;
pub mod result;
pub mod spec;
pub mod storage;

pub use bid::{BidStrategyRequest, BidStrategyResponse, Job, Task, TimeoutConfig};
pub use datasize::{ByteSize, ByteSizeError};
pub use executions::{ExecutionState, ExecutionStats, ExecutionSummary};
pub use handshake::{
    Capabilities, CgroupMode, EnforcedLimits, HostInfo, InitializeParams, InitializeResult,
    PluginConfig, PluginInfo, ShutdownParams, PROTOCOL_VERSION, SUPPORTED_PROTOCOL_VERSIONS,
};
pub use logs::{LogEvent, LogStream, LogStreamRequest};
pub use network::{Network, NetworkConfig, Port, UnknownNetwork};
pub use request::{OutputLimits, RunCommandRequest};
pub use resources::{Gpu, Resources, ResourcesConfig};
pub use result::RunCommandResult;
pub use spec::{ResultPath, SpecConfig};
pub use storage::{InputSource, PreparedStorage, StorageVolume, StorageVolumeType};

// Re-exported here so the crate root's `pub use types::*` reaches them.
pub use crate::native::{NativeEngineSpec, ENGINE_NATIVE};
pub use crate::validate::{validate_network, validate_resources, validate_run_request};
