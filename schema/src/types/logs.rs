//! Log streaming: the subscribe request and the `executor_logs` notification items.

use serde::{Deserialize, Serialize};

use super::casefold::is_false;

/// Subscribe to an execution's stdout/stderr.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(remote = "Self", default)]
pub struct LogStreamRequest {
    #[serde(rename = "ExecutionID")]
    pub execution_id: String,
    /// Legacy, ignored by the plugin.
    #[serde(rename = "JobID", skip_serializing_if = "String::is_empty")]
    pub job_id: String,
    /// Legacy, ignored by the plugin.
    #[serde(rename = "NodeID", skip_serializing_if = "String::is_empty")]
    pub node_id: String,
    /// Start from the beginning of the log (otherwise only new output is sent).
    #[serde(rename = "Tail", skip_serializing_if = "is_false")]
    pub tail: bool,
    /// Keep streaming until the execution ends.
    #[serde(rename = "Follow", skip_serializing_if = "is_false")]
    pub follow: bool,
    /// Our extension: resume at this byte offset of the log, as the last event's `next` gave.
    #[serde(rename = "Position", skip_serializing_if = "Option::is_none")]
    pub position: Option<u64>,
}

go_json!(
    LogStreamRequest,
    [
        "ExecutionID",
        "JobID",
        "NodeID",
        "Tail",
        "Follow",
        "Position"
    ]
);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum LogStream {
    Stdout,
    Stderr,
}

impl LogStream {
    /// Bacalhau's `ExecutionLogType` numbering (1 = stdout, 2 = stderr).
    pub const fn as_u8(self) -> u8 {
        match self {
            LogStream::Stdout => 1,
            LogStream::Stderr => 2,
        }
    }

    pub const fn from_u8(v: u8) -> Option<LogStream> {
        match v {
            1 => Some(LogStream::Stdout),
            2 => Some(LogStream::Stderr),
            _ => None,
        }
    }
}

/// One item of an `executor_logs` notification.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum LogEvent {
    /// A chunk of output, exactly as the process wrote it.
    Data {
        stream: LogStream,
        /// RFC 3339 with nanoseconds, fixed width (30 characters).
        timestamp: String,
        /// Base64 of the raw bytes (output need not be UTF-8).
        #[serde(with = "base64_bytes")]
        #[schemars(with = "String")]
        data: Vec<u8>,
        /// Byte offset of this event in the log.
        offset: u64,
        /// Offset to resume from after this event (`Position`).
        next: u64,
    },
    /// The stream is over; no more events follow.
    End { offset: u64 },
}

impl LogEvent {
    /// The raw bytes of a data event; empty for `End`.
    pub fn data_bytes(&self) -> &[u8] {
        match self {
            LogEvent::Data { data, .. } => data,
            LogEvent::End { .. } => &[],
        }
    }

    pub fn is_end(&self) -> bool {
        matches!(self, LogEvent::End { .. })
    }
}

mod base64_bytes {
    use base64::engine::general_purpose::STANDARD;
    use base64::Engine as _;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&STANDARD.encode(v))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        STANDARD
            .decode(text.as_bytes())
            .map_err(serde::de::Error::custom)
    }
}
