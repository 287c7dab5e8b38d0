//! Property tests over the NDJSON framer and request decoding: no panic, no hang, every line
//! accounted for, and nothing that validates can name a path outside its directory.

use bytes::BytesMut;
use executor_schema::framing::{Frame, NdjsonCodec};
use executor_schema::validate::{id_problem, validate_run_request};
use executor_schema::RunCommandRequest;
use proptest::prelude::*;
use serde_json::{json, Value};
use tokio_util::codec::{Decoder, Encoder};

/// What the framer must produce for `input`, line by line. An oversized line may report its
/// length with or without a trailing `\r` (which one depends on where the chunks split).
#[derive(Debug)]
enum Want {
    Line(Vec<u8>),
    Oversized { raw: usize, stripped: usize },
}

fn model(input: &[u8], max: usize) -> Vec<Want> {
    let blank = |l: &[u8]| l.iter().all(u8::is_ascii_whitespace);
    let mut out = Vec::new();
    let mut parts: Vec<&[u8]> = input.split(|b| *b == b'\n').collect();
    let last = parts.pop().unwrap_or_default();
    for raw in parts {
        let stripped = raw.strip_suffix(b"\r").unwrap_or(raw);
        if stripped.len() > max {
            out.push(Want::Oversized {
                raw: raw.len(),
                stripped: stripped.len(),
            });
        } else if !blank(stripped) {
            out.push(Want::Line(stripped.to_vec()));
        }
    }
    // An unterminated last line counts too (kept as is).
    let skipped = last.is_empty() || (last.len() <= max + 1 && blank(last));
    if !skipped {
        if last.len() > max {
            out.push(Want::Oversized {
                raw: last.len(),
                stripped: last.len(),
            });
        } else {
            out.push(Want::Line(last.to_vec()));
        }
    }
    out
}

fn decode_chunks(chunks: &[Vec<u8>], max: usize) -> Vec<Frame> {
    let mut codec = NdjsonCodec::new(max);
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    for c in chunks {
        buf.extend_from_slice(c);
        while let Some(f) = codec
            .decode(&mut buf)
            .expect("decode never fails on content")
        {
            out.push(f);
        }
        assert!(
            buf.len() <= max + 1,
            "the buffer holds at most one partial line"
        );
    }
    while let Some(f) = codec.decode_eof(&mut buf).expect("decode_eof") {
        out.push(f);
        assert!(
            out.len() <= chunks.iter().map(Vec::len).sum::<usize>() + 1,
            "no endless frames"
        );
    }
    out
}

/// Bytes rich in the framer's special characters.
fn wire_byte() -> impl Strategy<Value = u8> {
    prop_oneof![
        3 => Just(b'\n'),
        2 => Just(b'\r'),
        2 => Just(b' '),
        3 => Just(b'{'),
        10 => any::<u8>(),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn every_line_is_accounted_for_whatever_the_chunking(
        chunks in prop::collection::vec(prop::collection::vec(wire_byte(), 0..40), 0..12),
        max in 0usize..24,
    ) {
        let input: Vec<u8> = chunks.concat();
        let got = decode_chunks(&chunks, max);
        let want = model(&input, max);
        prop_assert_eq!(got.len(), want.len(), "frames {:?} vs model {:?}", got, want);
        for (g, w) in got.iter().zip(&want) {
            match (g, w) {
                (Frame::Line(a), Want::Line(b)) => prop_assert_eq!(a, b),
                (Frame::Oversized { len }, Want::Oversized { raw, stripped }) => {
                    prop_assert!(len == raw || len == stripped, "len {} of {}/{}", len, raw, stripped)
                }
                _ => prop_assert!(false, "frame {:?} where the model has {:?}", g, w),
            }
        }
        // One chunk or byte by byte: the same frames.
        let one = decode_chunks(std::slice::from_ref(&input), max);
        let bytes: Vec<Vec<u8>> = input.iter().map(|b| vec![*b]).collect();
        let single = decode_chunks(&bytes, max);
        prop_assert_eq!(one.len(), got.len());
        prop_assert_eq!(single.len(), got.len());
    }

    #[test]
    fn encoded_messages_decode_to_themselves(v in json_value(false)) {
        let mut codec = NdjsonCodec::new(1 << 20);
        let mut buf = BytesMut::new();
        let pretty = serde_json::to_string_pretty(&v).unwrap();
        codec.encode(pretty.as_str(), &mut buf).unwrap();
        prop_assert_eq!(buf.iter().filter(|b| **b == b'\n').count(), 1);
        match codec.decode(&mut buf).unwrap() {
            Some(Frame::Line(l)) => {
                let back: Value = serde_json::from_slice(&l).unwrap();
                prop_assert_eq!(back, v);
            }
            other => prop_assert!(false, "got {:?}", other),
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic_the_request_decoder(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
        if let Ok(req) = serde_json::from_slice::<RunCommandRequest>(&bytes) {
            check_validated(&req)?;
        }
    }

    #[test]
    fn request_shaped_json_never_panics_and_what_validates_is_safe(v in request_shaped()) {
        if let Ok(req) = serde_json::from_value::<RunCommandRequest>(v) {
            check_validated(&req)?;
        }
    }
}

fn check_validated(req: &RunCommandRequest) -> Result<(), TestCaseError> {
    if validate_run_request(req).is_ok() {
        prop_assert!(id_problem(&req.execution_id).is_none());
        let id = &req.execution_id;
        prop_assert!(
            !id.contains('/')
                && id.starts_with(|c: char| c.is_ascii_alphanumeric())
                && id.is_ascii()
        );
        for o in &req.outputs {
            let n = o.name.trim();
            prop_assert!(!n.contains('/') && !n.starts_with('.') && !n.is_empty());
        }
        prop_assert!(req
            .execution_timeout
            .is_none_or(|t| t.is_finite() && t >= 0.0));
        if let Some(r) = &req.resources {
            prop_assert!(r.cpu.is_finite() && r.cpu >= 0.0);
        }
    }
    Ok(())
}

/// `floats`: serde_json (without `float_roundtrip`) may move a float by one ulp on a round
/// trip, which is no concern of the framer's.
fn json_value(floats: bool) -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<u64>().prop_map(|n| json!(n)),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(move |f| if floats { json!(f) } else { json!(f as i32) }),
        "\\PC{0,12}".prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 40, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
            prop::collection::btree_map("[A-Za-z]{0,8}", inner, 0..5)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Strings a hostile or careless host might send.
fn nasty_string() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(json!("../x")),
        Just(json!("/")),
        Just(json!("..")),
        Just(json!("e\u{0}")),
        Just(json!("e\u{202e}1")),
        Just(json!("ok-1")),
        Just(json!("/tmp/r")),
        Just(json!("relative")),
        "[a-z0-9._/-]{0,12}".prop_map(Value::String),
        "\\PC{0,8}".prop_map(Value::String),
    ]
}

/// Objects with the request's keys in random letter case, filled with plausible, nasty or
/// arbitrary values.
fn request_shaped() -> impl Strategy<Value = Value> {
    let keys = [
        "JobID",
        "ExecutionID",
        "Resources",
        "Network",
        "Outputs",
        "Inputs",
        "ResultsDir",
        "ExecutionDir",
        "EngineParams",
        "OutputLimits",
        "Env",
        "ExecutionTimeout",
    ];
    let value = prop_oneof![
        3 => nasty_string(),
        2 => json_value(true),
        1 => Just(json!({"Type": "native", "Params": {"Entrypoint": ["true"], "WorkingDirectory": "/"}})),
        1 => prop::collection::vec(
            (nasty_string(), nasty_string()).prop_map(|(n, p)| json!({"Name": n, "Path": p})),
            0..3
        ).prop_map(Value::Array),
        1 => (any::<f64>(), any::<i64>()).prop_map(|(c, m)| json!({"CPU": c, "Memory": m})),
        1 => (any::<f64>()).prop_map(|t| json!(t)),
        1 => Just(json!({"MaxStdoutFileLength": "1GB", "MaxStdoutReturnLength": -1})),
    ];
    prop::collection::vec((0..keys.len(), any::<bool>(), value), 0..10).prop_map(move |entries| {
        let mut o = serde_json::Map::new();
        for (k, lower, v) in entries {
            let key = if lower {
                keys[k].to_lowercase()
            } else {
                keys[k].to_string()
            };
            o.insert(key, v);
        }
        Value::Object(o)
    })
}
