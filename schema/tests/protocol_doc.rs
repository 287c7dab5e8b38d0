//! `PROTOCOL.md` cannot drift silently from the code: every method, error code and schema file is
//! in it, and every wire example line in it (`-> ` host line, `<- ` plugin line) is valid JSON-RPC
//! whose params and results decode into the Rust types (and whose results re-encode byte-for-byte,
//! since the plugin's encoder wrote them). Params the doc shows being refused with `Invalid params`
//! must really fail to decode.

use std::collections::BTreeMap;
use std::path::Path;

use executor_schema::api::{self, ALL_METHODS};
use executor_schema::errors::ErrorData;
use executor_schema::*;
use serde::de::DeserializeOwned;
use serde_json::Value;

fn doc() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("PROTOCOL.md");
    std::fs::read_to_string(path).expect("schema/PROTOCOL.md")
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Dir {
    /// `-> `: a request or notification the host writes.
    Host,
    /// `<- `: a response or notification the plugin writes.
    Plugin,
    /// `-! `: a deliberately malformed host line.
    Bad,
}

struct WireLine {
    line_no: usize,
    dir: Dir,
    text: String,
}

/// The wire lines of each fenced code block, in order.
fn blocks(doc: &str) -> Vec<Vec<WireLine>> {
    let mut out = Vec::new();
    let mut current: Option<Vec<WireLine>> = None;
    for (i, raw) in doc.lines().enumerate() {
        let line = raw.trim_start();
        if line.starts_with("```") {
            match current.take() {
                Some(block) => out.push(block),
                None => current = Some(Vec::new()),
            }
            continue;
        }
        let Some(block) = current.as_mut() else {
            continue;
        };
        for (marker, dir) in [("-> ", Dir::Host), ("<- ", Dir::Plugin), ("-! ", Dir::Bad)] {
            if let Some(text) = line.strip_prefix(marker) {
                block.push(WireLine {
                    line_no: i + 1,
                    dir,
                    text: text.to_string(),
                });
            }
        }
    }
    assert!(current.is_none(), "PROTOCOL.md has an unclosed code fence");
    out
}

fn wire_lines(doc: &str) -> Vec<WireLine> {
    blocks(doc).into_iter().flatten().collect()
}

#[test]
fn every_method_is_documented_with_a_wire_example() {
    let doc = doc();
    let requested: Vec<String> = wire_lines(&doc)
        .iter()
        .filter(|l| l.dir == Dir::Host)
        .filter_map(|l| serde_json::from_str::<Value>(&l.text).ok())
        .filter_map(|v| v["method"].as_str().map(str::to_string))
        .collect();
    for method in ALL_METHODS.iter().chain([&api::NOTIFICATION_LOGS]) {
        assert!(
            doc.contains(&format!("`{method}`")),
            "PROTOCOL.md does not mention `{method}`"
        );
    }
    for method in ALL_METHODS {
        assert!(
            requested.iter().any(|m| m == method),
            "PROTOCOL.md has no `-> ` wire example calling {method}"
        );
    }
}

#[test]
fn every_error_code_is_in_the_table() {
    let doc = doc();
    for code in ErrorCode::ALL {
        let row = doc.lines().find(|l| {
            l.starts_with(&format!("| {} |", code.rpc_code()))
                && l.contains(&format!("`{}`", code.name()))
        });
        let row = row.unwrap_or_else(|| {
            panic!(
                "PROTOCOL.md has no table row `| {} | `{}` |`",
                code.rpc_code(),
                code.name()
            )
        });
        if let Some(sentinel) = code.sentinel() {
            assert!(
                row.contains(&format!("`{sentinel}`")),
                "row of {code} lacks its message `{sentinel}`: {row}"
            );
        }
    }
}

#[test]
fn every_schema_file_is_mentioned() {
    let doc = doc();
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("json");
    let mut seen = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let name = entry.unwrap().file_name().to_string_lossy().into_owned();
        assert!(
            doc.contains(&format!("`{name}`")),
            "PROTOCOL.md does not mention schema/json/{name}"
        );
        seen += 1;
    }
    assert!(seen > 0, "schema/json is empty");
}

fn decode<T: DeserializeOwned>(v: &Value) -> Result<T, String> {
    serde_json::from_value(v.clone()).map_err(|e| e.to_string())
}

/// Params as the plugin's generated code takes them: by position (array) or by name (object).
fn args(params: &Value, names: &[&str]) -> Result<Vec<Value>, String> {
    match params {
        Value::Null => Ok(vec![Value::Null; names.len()]),
        Value::Array(items) => {
            if items.len() > names.len() {
                return Err(format!("{} params, at most {}", items.len(), names.len()));
            }
            let mut v = items.clone();
            v.resize(names.len(), Value::Null);
            Ok(v)
        }
        Value::Object(map) => Ok(names
            .iter()
            .map(|n| map.get(*n).cloned().unwrap_or(Value::Null))
            .collect()),
        other => Err(format!("params must be an array or an object, not {other}")),
    }
}

fn required<T: DeserializeOwned>(v: &Value, name: &str) -> Result<(), String> {
    if v.is_null() {
        return Err(format!("missing param {name}"));
    }
    decode::<T>(v)
        .map(|_| ())
        .map_err(|e| format!("{name}: {e}"))
}

fn optional<T: DeserializeOwned>(v: &Value, name: &str) -> Result<(), String> {
    decode::<Option<T>>(v)
        .map(|_| ())
        .map_err(|e| format!("{name}: {e}"))
}

/// Decode a request's params into the method's argument types.
fn check_params(method: &str, params: &Value) -> Result<(), String> {
    let a = |names: &[&str]| args(params, names);
    match method {
        api::METHOD_INITIALIZE => {
            let v = a(&["protocolVersions", "host", "config"])?;
            required::<Vec<String>>(&v[0], "protocolVersions")?;
            optional::<HostInfo>(&v[1], "host")?;
            optional::<PluginConfig>(&v[2], "config")
        }
        api::METHOD_SHUTDOWN => optional::<bool>(&a(&["cancelRunning"])?[0], "cancelRunning"),
        api::METHOD_IS_INSTALLED | api::METHOD_LIST => Ok(()),
        api::METHOD_SHOULD_BID => required::<BidStrategyRequest>(&a(&["request"])?[0], "request"),
        api::METHOD_SHOULD_BID_USAGE => {
            let v = a(&["request", "usage"])?;
            required::<BidStrategyRequest>(&v[0], "request")?;
            required::<Resources>(&v[1], "usage")
        }
        api::METHOD_START | api::METHOD_RUN => {
            required::<RunCommandRequest>(&a(&["request"])?[0], "request")
        }
        api::METHOD_WAIT | api::METHOD_CANCEL | api::METHOD_STATS => {
            required::<String>(&a(&["executionId"])?[0], "executionId")
        }
        api::METHOD_SUBSCRIBE_LOGS => required::<LogStreamRequest>(&a(&["request"])?[0], "request"),
        // jsonrpsee's unsubscribe takes the subscription id by position only.
        api::METHOD_UNSUBSCRIBE_LOGS => match params {
            Value::Array(items) if items.len() == 1 => required::<u64>(&items[0], "subscription"),
            _ => Err("unsubscribe takes [subscriptionId]".into()),
        },
        other => Err(format!("not a method of the API: {other}")),
    }
}

/// Decode a success result into the method's result type; it must re-encode to the same JSON.
fn check_result(method: &str, result: &Value) -> Result<(), String> {
    fn exact<T: DeserializeOwned + serde::Serialize>(v: &Value) -> Result<(), String> {
        let t: T = decode(v)?;
        let again = serde_json::to_value(&t).map_err(|e| e.to_string())?;
        if &again == v {
            Ok(())
        } else {
            Err(format!("re-encodes as {again}"))
        }
    }
    match method {
        api::METHOD_INITIALIZE => exact::<InitializeResult>(result),
        api::METHOD_SHUTDOWN | api::METHOD_START | api::METHOD_CANCEL => exact::<()>(result),
        api::METHOD_IS_INSTALLED | api::METHOD_UNSUBSCRIBE_LOGS => exact::<bool>(result),
        api::METHOD_SHOULD_BID | api::METHOD_SHOULD_BID_USAGE => {
            exact::<BidStrategyResponse>(result)
        }
        api::METHOD_RUN | api::METHOD_WAIT => exact::<RunCommandResult>(result),
        api::METHOD_LIST => exact::<Vec<ExecutionSummary>>(result),
        api::METHOD_STATS => exact::<ExecutionStats>(result),
        api::METHOD_SUBSCRIBE_LOGS => exact::<u64>(result),
        other => Err(format!("no result type known for {other}")),
    }
}

const PROTOCOL_CODES: [i64; 6] = [-32700, -32600, -32601, -32602, -32006, -32008];

fn check_error(error: &Value) -> Result<(), String> {
    let code = error["code"]
        .as_i64()
        .ok_or("error without an integer code")?;
    error["message"]
        .as_str()
        .ok_or("error without a string message")?;
    match &error["data"] {
        Value::Object(_) => {
            let data: ErrorData = decode(&error["data"])?;
            let named = ErrorCode::from_name(&data.code)
                .ok_or_else(|| format!("unknown data.code {}", data.code))?;
            if i64::from(named.rpc_code()) != code {
                return Err(format!("data.code {} but code {code}", data.code));
            }
            if data.component != errors::COMPONENT {
                return Err(format!("component {}", data.component));
            }
            if let Some(sentinel) = named.sentinel() {
                if error["message"] != sentinel {
                    return Err(format!("{named} must carry the message {sentinel:?}"));
                }
            }
            Ok(())
        }
        Value::Null | Value::String(_) if PROTOCOL_CODES.contains(&code) => Ok(()),
        _ => Err(format!(
            "code {code} without an executor data object is not a protocol error"
        )),
    }
}

fn is_valid_id(id: &Value) -> bool {
    id.is_u64() || id.is_string()
}

#[test]
fn wire_examples_are_valid_json_rpc_that_decodes_into_the_types() {
    let doc = doc();
    let mut checked = 0;
    for block in blocks(&doc) {
        // Requests of this block by id, to pair responses with them.
        let mut requests: BTreeMap<String, (usize, String, Value)> = BTreeMap::new();
        let mut responses: BTreeMap<String, Value> = BTreeMap::new();
        // Ids of malformed lines the plugin still echoes in its error.
        let mut refused_ids: Vec<String> = Vec::new();
        for l in &block {
            let at = format!("PROTOCOL.md:{}", l.line_no);
            let parsed = serde_json::from_str::<Value>(&l.text);
            if l.dir == Dir::Bad {
                // Must really be something the plugin refuses as a request.
                let valid_request = parsed.as_ref().is_ok_and(|v| {
                    v["jsonrpc"] == "2.0" && v["method"].is_string() && is_valid_id(&v["id"])
                });
                assert!(
                    !valid_request,
                    "{at}: marked malformed (-!) but is a valid request"
                );
                if let Some(id) = parsed.ok().as_ref().and_then(|v| v.get("id")) {
                    refused_ids.push(id.to_string());
                }
                continue;
            }
            let v = parsed.unwrap_or_else(|e| panic!("{at}: not JSON: {e}"));
            assert!(
                !l.text.contains('\n') && serde_json::to_string(&v).unwrap().len() <= l.text.len(),
                "{at}: not compact"
            );
            assert_eq!(v["jsonrpc"], "2.0", "{at}");
            checked += 1;
            match l.dir {
                Dir::Host => {
                    let method = v["method"]
                        .as_str()
                        .unwrap_or_else(|| panic!("{at}: request without method"));
                    assert!(is_valid_id(&v["id"]), "{at}: bad id {}", v["id"]);
                    let key = v["id"].to_string();
                    assert!(
                        !requests.contains_key(&key),
                        "{at}: id {key} used twice in one example"
                    );
                    requests.insert(key, (l.line_no, method.to_string(), v["params"].clone()));
                }
                Dir::Plugin if v.get("method").is_some() => {
                    assert_eq!(v["method"], api::NOTIFICATION_LOGS, "{at}");
                    assert!(v.get("id").is_none(), "{at}: notification with an id");
                    let p = &v["params"];
                    assert!(p["subscription"].is_u64(), "{at}");
                    match (p.get("result"), p.get("error")) {
                        (Some(ev), None) => {
                            let ev: LogEvent =
                                decode(ev).unwrap_or_else(|e| panic!("{at}: LogEvent: {e}"));
                            assert_eq!(serde_json::to_value(&ev).unwrap(), p["result"], "{at}");
                        }
                        (None, Some(e)) => assert!(e.is_string(), "{at}"),
                        _ => panic!("{at}: needs exactly one of result and error"),
                    }
                }
                Dir::Plugin => {
                    let id = v
                        .get("id")
                        .unwrap_or_else(|| panic!("{at}: response without id"));
                    assert!(id.is_null() || is_valid_id(id), "{at}: bad id {id}");
                    assert!(
                        v.get("result").is_some() != v.get("error").is_some(),
                        "{at}: needs exactly one of result and error"
                    );
                    if let Some(error) = v.get("error") {
                        check_error(error).unwrap_or_else(|e| panic!("{at}: {e}"));
                    }
                    if refused_ids.contains(&id.to_string()) {
                        assert_eq!(
                            v["error"]["code"], -32600,
                            "{at}: a malformed line's answer"
                        );
                    } else if !id.is_null() {
                        let key = id.to_string();
                        assert!(
                            requests.contains_key(&key),
                            "{at}: answers id {key}, which no request before it in this example has"
                        );
                        assert!(
                            responses.insert(key, v.clone()).is_none(),
                            "{at}: id {id} answered twice"
                        );
                    }
                }
                Dir::Bad => unreachable!(),
            }
        }
        for (key, (line_no, method, params)) in &requests {
            let at = format!("PROTOCOL.md:{line_no}");
            let response = responses.get(key);
            let known = ALL_METHODS.contains(&method.as_str());
            let refused_params = response.is_some_and(|r| {
                r["error"]["code"] == -32602 && r["error"]["message"] == "Invalid params"
            });
            let unsubscribe_refused = method == api::METHOD_UNSUBSCRIBE_LOGS
                && response.is_some_and(|r| r["result"] == false);
            if unsubscribe_refused {
                // jsonrpsee answers `false` for an unknown id and for params it cannot read alike.
            } else if !known {
                assert_eq!(
                    response.map(|r| &r["error"]["code"]),
                    Some(&Value::from(-32601)),
                    "{at}: {method} is not a method; its example must show -32601"
                );
            } else if refused_params {
                assert!(
                    check_params(method, params).is_err(),
                    "{at}: the doc shows these params refused, but they decode"
                );
            } else {
                check_params(method, params).unwrap_or_else(|e| panic!("{at}: {method}: {e}"));
            }
            if let Some(result) = response.and_then(|r| r.get("result")) {
                check_result(method, result)
                    .unwrap_or_else(|e| panic!("{at}: result of {method}: {e}"));
            }
        }
    }
    assert!(
        checked > 40,
        "only {checked} wire lines found; the markers changed?"
    );
}

#[test]
fn documented_limits_match_the_code() {
    let doc = doc();
    let max = framing::MAX_MESSAGE_SIZE;
    assert_eq!(max, 16 << 20);
    assert!(doc.contains("16 MiB") && doc.contains(&max.to_string()));
    assert!(
        doc.contains(&format!("`{}`", PROTOCOL_VERSION))
            || doc.contains(&format!("\"{PROTOCOL_VERSION}\""))
    );
    assert!(doc.contains(&format!(
        "{}={}",
        "EXECUTOR_PLUGIN_COOKIE", "executor-plugin"
    )));
    for name in Network::ALL.map(Network::as_str) {
        assert!(doc.contains(&format!("`\"{name}\"`")), "Network {name}");
    }
    let limits = OutputLimits::default();
    assert_eq!(limits.max_stdout_file_length.to_string(), "1GB");
    assert_eq!(limits.max_stdout_return_length.to_string(), "2KB");
    assert!(doc.contains("`1GB` per file and `2KB` returned"));
}
