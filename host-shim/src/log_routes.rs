//! Log notifications delivered straight from the transport to the log stream that asked for
//! them, past jsonrpsee.
//!
//! Through jsonrpsee, each `executor_logs` line (tens of KiB of base64) is parsed three times:
//! as a possible response, as a subscription notification (copying the event out), and as the
//! event itself. A routed line is parsed once, into the event. jsonrpsee still makes and ends
//! the subscription; only its data events take the short way.
//!
//! Ordering: the transport hands lines to jsonrpsee one at a time, and jsonrpsee puts each into
//! its subscription's buffer before it asks for the next one. So when a routed event is queued,
//! every earlier event of that subscription is already in jsonrpsee's buffer, and a reader that
//! drains that buffer first sees the events in log order.
//!
//! Memory: a route holds at most its byte budget of events (plus the one that found it empty),
//! counted as the notification lines' sizes, whatever their number. A reader that falls behind
//! does not make the transport wait (every other call on the plugin would wait with it): its
//! route closes and it resumes from its last position once it has drained what it holds, so the
//! plugin only sends more when the reader is ready for it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use executor_schema::LogEvent;
use jsonrpsee::core::client::{Subscription, SubscriptionKind};
use tokio::sync::mpsc;

/// How every `executor_logs` notification line starts: jsonrpsee's field order, as the plugin
/// assembles it (`plugin/src/logstore/notification.rs` holds it byte-identical to jsonrpsee).
/// A byte literal cannot be built from `NOTIFICATION_LOGS`; a test holds the two in step.
pub(crate) const LOG_NOTIFICATION_PREFIX: &[u8] =
    br#"{"jsonrpc":"2.0","method":"executor_logs","params":{"subscription":"#;

const RESULT_KEY: &[u8] = br#","result":"#;

/// Subscriptions whose events the transport delivers itself, by subscription id as it appears
/// on the wire (its JSON text).
#[derive(Clone)]
pub struct LogRouter {
    routes: Arc<Mutex<Routes>>,
    budget: usize,
    next_token: Arc<AtomicU64>,
}

/// The sending side of a route and the bytes it has queued.
#[derive(Clone)]
struct RouteTx {
    tx: mpsc::UnboundedSender<(LogEvent, usize)>,
    queued: Arc<AtomicUsize>,
}

/// A route without a sender has closed for falling behind: its lines are dropped until its
/// reader is gone, because handing them to jsonrpsee instead would put them ahead of the
/// routed ones still queued.
type Routes = HashMap<Vec<u8>, (u64, Option<RouteTx>)>;

/// The receiving end of one route; removed from the router when dropped. It closes early when
/// its reader fell its byte budget behind (like a lagging jsonrpsee subscription).
pub struct LogRoute {
    rx: mpsc::UnboundedReceiver<(LogEvent, usize)>,
    queued: Arc<AtomicUsize>,
    key: Vec<u8>,
    token: u64,
    routes: Arc<Mutex<Routes>>,
}

impl LogRouter {
    /// Routes that each hold at most `budget` bytes of events.
    pub fn new(budget: usize) -> Self {
        LogRouter {
            routes: Arc::default(),
            budget: budget.max(1),
            next_token: Arc::default(),
        }
    }

    /// Deliver the data of `sub` through a route from now on. `None` when the subscription has
    /// no id to route by (then jsonrpsee keeps delivering everything).
    pub fn route<T>(&self, sub: &Subscription<T>) -> Option<LogRoute> {
        let SubscriptionKind::Subscription(id) = sub.kind() else {
            return None;
        };
        self.route_id(serde_json::to_vec(id).ok()?)
    }

    /// A route for the subscription whose id is `key` (JSON text).
    fn route_id(&self, key: Vec<u8>) -> Option<LogRoute> {
        // Unbounded in events: the byte count bounds it.
        let (tx, rx) = mpsc::unbounded_channel();
        let queued = Arc::new(AtomicUsize::new(0));
        let token = self.next_token.fetch_add(1, Ordering::Relaxed);
        self.routes.lock().ok()?.insert(
            key.clone(),
            (
                token,
                Some(RouteTx {
                    tx,
                    queued: queued.clone(),
                }),
            ),
        );
        Some(LogRoute {
            rx,
            queued,
            key,
            token,
            routes: self.routes.clone(),
        })
    }

    /// Hand a protocol line to its route. `Err(line)` gives back what is not a routed log
    /// notification, for jsonrpsee. A line that is one but does not parse as an event is given
    /// back too: jsonrpsee then reports it as it would any other broken message.
    pub fn deliver(&self, line: Vec<u8>) -> Result<(), Vec<u8>> {
        let Some((key, event)) = split_notification(&line) else {
            return Err(line);
        };
        let route = match self.routes.lock() {
            Ok(routes) => routes.get(key).cloned(),
            Err(_) => None,
        };
        let Some((token, sender)) = route else {
            return Err(line);
        };
        let Some(route) = sender else {
            return Ok(());
        };
        let size = line.len();
        let queued = route.queued.load(Ordering::Acquire);
        // One event always fits an empty route, however large (the frame limit bounds it).
        let fits = queued == 0 || queued.saturating_add(size) <= self.budget;
        let sent = fits && {
            let Ok(event) = serde_json::from_slice::<LogEvent>(event) else {
                return Err(line);
            };
            route.queued.fetch_add(size, Ordering::AcqRel);
            route.tx.send((event, size)).is_ok()
        };
        if !sent {
            // Full: the reader is behind, and the transport must not wait for one reader.
            // Closing the route tells it to resume from its last position. Closed: it is
            // going away anyway.
            if let Ok(mut routes) = self.routes.lock() {
                if let Some(entry) = routes.get_mut(key).filter(|(t, _)| *t == token) {
                    entry.1 = None;
                }
            }
        }
        Ok(())
    }
}

impl LogRoute {
    pub async fn recv(&mut self) -> Option<LogEvent> {
        let (event, size) = self.rx.recv().await?;
        self.queued.fetch_sub(size, Ordering::AcqRel);
        Some(event)
    }

    /// An event already queued, without waiting.
    pub fn try_recv(&mut self) -> Option<LogEvent> {
        let (event, size) = self.rx.try_recv().ok()?;
        self.queued.fetch_sub(size, Ordering::AcqRel);
        Some(event)
    }
}

impl Drop for LogRoute {
    fn drop(&mut self) {
        if let Ok(mut routes) = self.routes.lock() {
            // Only this route's own entry: a newer route under the same id is not ours to end.
            if routes
                .get(&self.key)
                .is_some_and(|(token, _)| *token == self.token)
            {
                routes.remove(&self.key);
            }
        }
    }
}

/// The subscription id (JSON text) and the event (JSON text) of a log notification line in
/// the plugin's layout: prefix, id, `,"result":`, event, `}}`.
fn split_notification(line: &[u8]) -> Option<(&[u8], &[u8])> {
    let rest = line.strip_prefix(LOG_NOTIFICATION_PREFIX)?;
    let id_len = match rest.first()? {
        // Ids are plain tokens; one with an escape takes jsonrpsee's way.
        b'"' => memchr_quote(&rest[1..])? + 2,
        b'0'..=b'9' => rest.iter().take_while(|b| b.is_ascii_digit()).count(),
        _ => return None,
    };
    let (id, rest) = rest.split_at(id_len);
    let event = rest.strip_prefix(RESULT_KEY)?.strip_suffix(b"}}")?;
    Some((id, event))
}

/// Offset of the closing quote of a string body without escapes.
fn memchr_quote(body: &[u8]) -> Option<usize> {
    let end = body.iter().position(|&b| b == b'"' || b == b'\\')?;
    (body[end] == b'"').then_some(end)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_prefix_names_the_schema_notification() {
        let expected = format!(
            r#"{{"jsonrpc":"2.0","method":"{}","params":{{"subscription":"#,
            executor_schema::api::NOTIFICATION_LOGS
        );
        assert_eq!(LOG_NOTIFICATION_PREFIX, expected.as_bytes());
    }

    #[test]
    fn a_notification_splits_into_id_and_event() {
        let line = br#"{"jsonrpc":"2.0","method":"executor_logs","params":{"subscription":"ab1","result":{"type":"end","offset":2}}}"#;
        let (id, event) = split_notification(line).unwrap();
        assert_eq!(id, br#""ab1""#);
        assert_eq!(event, br#"{"type":"end","offset":2}"#);
        let line = br#"{"jsonrpc":"2.0","method":"executor_logs","params":{"subscription":42,"result":{}}}"#;
        assert_eq!(split_notification(line).unwrap(), (&b"42"[..], &b"{}"[..]));
    }

    #[test]
    fn other_shapes_are_not_split() {
        for line in [
            &br#"{"jsonrpc":"2.0","method":"executor_logs","params":{"subscription":"a","error":{}}}"#[..],
            br#"{"jsonrpc":"2.0","method":"executor_logs","params":{"subscription":"a\"b","result":{}}}"#,
            br#"{"jsonrpc":"2.0","id":1,"result":"a"}"#,
        ] {
            assert_eq!(split_notification(line), None, "{}", String::from_utf8_lossy(line));
        }
    }

    fn note(id: &str, event: &str) -> Vec<u8> {
        let mut line = LOG_NOTIFICATION_PREFIX.to_vec();
        line.extend_from_slice(format!(r#"{id},"result":{event}}}}}"#).as_bytes());
        line
    }

    #[test]
    fn routed_events_arrive_others_are_given_back_and_a_full_route_closes() {
        let end = |o: u64| note(r#""a""#, &format!(r#"{{"type":"end","offset":{o}}}"#));
        // Room for two such lines.
        let router = LogRouter::new(end(1).len() * 2);
        let mut route = router.route_id(br#""a""#.to_vec()).unwrap();
        assert!(router.deliver(end(1)).is_ok());
        // Another subscription's, and one that is not an event: jsonrpsee's to handle.
        assert!(router
            .deliver(note(r#""b""#, r#"{"type":"end","offset":1}"#))
            .is_err());
        assert!(router
            .deliver(note(r#""a""#, r#"{"type":"nope"}"#))
            .is_err());
        assert_eq!(route.try_recv(), Some(LogEvent::End { offset: 1 }));
        // Two fit; the third finds the reader behind and ends the route after those two.
        for o in 2..5 {
            assert!(router.deliver(end(o)).is_ok());
        }
        assert_eq!(route.try_recv(), Some(LogEvent::End { offset: 2 }));
        assert_eq!(route.try_recv(), Some(LogEvent::End { offset: 3 }));
        assert_eq!(route.try_recv(), None);
        assert!(route.rx.is_closed());
        // Dropped until the reader is gone (it resumes from its position), then jsonrpsee's.
        assert!(router.deliver(end(5)).is_ok());
        assert_eq!(route.try_recv(), None);
        drop(route);
        assert!(router.deliver(end(6)).is_err());
    }

    #[test]
    fn a_route_is_bounded_in_bytes_not_events() {
        let router = LogRouter::new(4096);
        let mut route = router.route_id(b"9".to_vec()).unwrap();
        let big = |o: u64| {
            let data = "A".repeat(64 * 1024);
            note(
                "9",
                &format!(
                    r#"{{"type":"data","stream":"stdout","timestamp":"t","data":"{data}","offset":{o},"next":{}}}"#,
                    o + 1
                ),
            )
        };
        // Larger than the budget: it fits only because the route is empty.
        assert!(router.deliver(big(0)).is_ok());
        assert!(router.deliver(big(1)).is_ok());
        assert!(matches!(
            route.try_recv(),
            Some(LogEvent::Data { offset: 0, .. })
        ));
        assert_eq!(route.try_recv(), None);
        assert!(route.rx.is_closed(), "the second event closed the route");
    }

    #[test]
    fn a_dropped_route_leaves_a_newer_one_under_the_same_id_alone() {
        let router = LogRouter::new(1 << 20);
        let old = router.route_id(b"7".to_vec()).unwrap();
        let mut new = router.route_id(b"7".to_vec()).unwrap();
        drop(old);
        assert!(router
            .deliver(note("7", r#"{"type":"end","offset":0}"#))
            .is_ok());
        assert_eq!(new.try_recv(), Some(LogEvent::End { offset: 0 }));
        drop(new);
        assert!(router.routes.lock().unwrap().is_empty());
    }
}
