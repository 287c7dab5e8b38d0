//! `executor_logs` notifications encoded straight from log items into one output line.
//!
//! Log data is most of what a plugin ever writes. Going through `LogEvent` and serde means a
//! base64 `String`, a JSON serializer that checks every one of its bytes for escaping, and then
//! more copies; base64 and the other fields never need escaping, so the line is assembled
//! directly. The bytes are exactly what serde and jsonrpsee produce (tested below), so the wire
//! format is unchanged.

use base64::Engine;
use jsonrpsee::types::{SubscriptionId, SubscriptionPayload, SubscriptionResponse};

use super::format::Stream;
use super::reader::LogItem;

/// Everything in a subscription's notification line before its event, computed once per
/// subscription with jsonrpsee's own types so it matches what jsonrpsee would send.
pub fn line_prefix(
    method: &str,
    subscription: SubscriptionId<'_>,
) -> Result<String, serde_json::Error> {
    let probe = serde_json::to_string(&SubscriptionResponse::new(
        method.into(),
        SubscriptionPayload {
            subscription,
            result: (),
        },
    ))?;
    // `()` serializes as `null`, the last value in the object, followed by the two closing
    // braces of `params` and of the message.
    match probe.strip_suffix("null}}") {
        Some(prefix) => Ok(prefix.to_string()),
        None => Err(serde::ser::Error::custom(format!(
            "unexpected notification shape: {probe}"
        ))),
    }
}

/// The whole notification line for `item`, newline included.
pub fn encode_line(prefix: &str, item: &LogItem) -> Vec<u8> {
    let mut out = String::new();
    match item {
        LogItem::Frame(f) => {
            let b64_len = f.data.len().div_ceil(3) * 4;
            out.reserve(prefix.len() + 160 + b64_len);
            out.push_str(prefix);
            out.push_str(r#"{"type":"data","stream":""#);
            out.push_str(match f.stream {
                Stream::Stdout => "stdout",
                Stream::Stderr => "stderr",
            });
            out.push_str(r#"","timestamp":"#);
            // Validated digits and separators when read, but cheap to escape properly anyway.
            push_json_str(&mut out, &f.timestamp);
            out.push_str(r#","data":""#);
            base64::engine::general_purpose::STANDARD.encode_string(&f.data, &mut out);
            out.push_str(r#"","offset":"#);
            out.push_str(&f.offset.to_string());
            out.push_str(r#","next":"#);
            out.push_str(&f.next.to_string());
        }
        LogItem::End { offset } => {
            out.push_str(prefix);
            out.push_str(r#"{"type":"end","offset":"#);
            out.push_str(&offset.to_string());
        }
    }
    out.push_str("}}}\n");
    out.into_bytes()
}

fn push_json_str(out: &mut String, s: &str) {
    match serde_json::to_string(s) {
        Ok(quoted) => out.push_str(&quoted),
        // Serializing a str cannot fail; an empty string keeps the line valid regardless.
        Err(_) => out.push_str("\"\""),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::logstore::LogFrame;
    use executor_schema::api::NOTIFICATION_LOGS;
    use executor_schema::{LogEvent, LogStream};

    /// What jsonrpsee's `SubscriptionMessage::new` puts on the wire for the same event.
    fn via_serde(method: &str, id: SubscriptionId<'_>, event: &LogEvent) -> String {
        serde_json::to_string(&SubscriptionResponse::new(
            method.into(),
            SubscriptionPayload {
                subscription: id,
                result: event,
            },
        ))
        .unwrap()
            + "\n"
    }

    #[test]
    fn lines_are_byte_identical_to_the_serde_path() {
        let ids = [
            SubscriptionId::Num(0),
            SubscriptionId::Num(u64::MAX),
            SubscriptionId::Str("a\"b".into()),
        ];
        let datas: [&[u8]; 5] = [b"", b"a", b"ab", b"abc\n\"\\\x00\xff", &[0xfb; 70_000]];
        for id in ids {
            let prefix = line_prefix(NOTIFICATION_LOGS, id.clone()).unwrap();
            for (i, data) in datas.iter().enumerate() {
                for stream in [Stream::Stdout, Stream::Stderr] {
                    let frame = LogFrame {
                        stream,
                        timestamp: "2026-11-27T22:07:33.123456789Z".into(),
                        data: data.to_vec(),
                        offset: i as u64 * 1000,
                        next: i as u64 * 1000 + 8 + 31 + data.len() as u64,
                    };
                    let event = LogEvent::data(
                        match stream {
                            Stream::Stdout => LogStream::Stdout,
                            Stream::Stderr => LogStream::Stderr,
                        },
                        frame.timestamp.clone(),
                        &frame.data,
                        frame.offset,
                        frame.next,
                    );
                    let ours = encode_line(&prefix, &LogItem::Frame(frame));
                    assert_eq!(
                        String::from_utf8(ours).unwrap(),
                        via_serde(NOTIFICATION_LOGS, id.clone(), &event)
                    );
                }
            }
            for offset in [0, 1, u64::MAX] {
                let ours = encode_line(&prefix, &LogItem::End { offset });
                assert_eq!(
                    String::from_utf8(ours).unwrap(),
                    via_serde(NOTIFICATION_LOGS, id.clone(), &LogEvent::End { offset })
                );
            }
        }
    }
}
