//! `models.NetworkConfig`, `models.Network`, `models.Port`.

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::casefold::{is_zero_i64, null_as_default};

/// Network mode; travels as its name (Go `MarshalText`), never as a number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Network {
    #[default]
    Default,
    None,
    Host,
    /// Deprecated alias of `Host`.
    Full,
    HTTP,
    Bridge,
}

impl Network {
    pub const ALL: [Network; 6] = [
        Network::Default,
        Network::None,
        Network::Host,
        Network::Full,
        Network::HTTP,
        Network::Bridge,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            Network::Default => "Default",
            Network::None => "None",
            Network::Host => "Host",
            Network::Full => "Full",
            Network::HTTP => "HTTP",
            Network::Bridge => "Bridge",
        }
    }

    /// Go's `UnmarshalText`: trims whitespace, ignores case.
    pub fn parse(text: &str) -> Result<Network, UnknownNetwork> {
        let t = text.trim();
        Network::ALL
            .into_iter()
            .find(|n| n.as_str().eq_ignore_ascii_case(t))
            .ok_or_else(|| UnknownNetwork(t.to_string()))
    }

    /// Go's `Disabled()`.
    pub fn disabled(self) -> bool {
        self == Network::None
    }

    /// Go's `SupportPortAllocation()`.
    pub fn supports_port_allocation(self) -> bool {
        matches!(self, Network::Host | Network::Bridge | Network::Full)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("models.Network: unknown type '{0}'")]
pub struct UnknownNetwork(pub String);

impl fmt::Display for Network {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for Network {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Network {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Network;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a network type name such as \"None\" or \"Host\"")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Network, E> {
                Network::parse(v).map_err(E::custom)
            }
        }
        d.deserialize_str(V)
    }
}

impl schemars::JsonSchema for Network {
    fn schema_name() -> Cow<'static, str> {
        "Network".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "description": "Network mode; decoding ignores case and surrounding whitespace.",
            "type": "string",
            "enum": ["Default", "None", "Host", "Full", "HTTP", "Bridge"]
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(remote = "Self", default)]
pub struct NetworkConfig {
    #[serde(rename = "Type")]
    pub network_type: Network,
    /// Only for `HTTP` mode; a leading `.` is a wildcard.
    #[serde(
        rename = "Domains",
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "null_as_default"
    )]
    pub domains: Vec<String>,
    #[serde(
        rename = "Ports",
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "null_as_default"
    )]
    pub ports: Vec<Port>,
}

go_json!(NetworkConfig, ["Type", "Domains", "Ports"]);

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(remote = "Self", default)]
pub struct Port {
    /// Also names the env var `BACALHAU_HOST_PORT_<Name>`.
    #[serde(rename = "Name")]
    pub name: String,
    /// Host port.
    #[serde(rename = "Static", skip_serializing_if = "is_zero_i64")]
    pub static_port: i64,
    /// Port inside the job (bridge mode).
    #[serde(rename = "Target", skip_serializing_if = "is_zero_i64")]
    pub target: i64,
    /// Host IP to bind.
    #[serde(rename = "HostNetwork", skip_serializing_if = "String::is_empty")]
    pub host_network: String,
}

go_json!(Port, ["Name", "Static", "Target", "HostNetwork"]);
